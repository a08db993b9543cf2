"""Run train.py (or any script) for real: one process, or several through ``accelerate launch`` on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What Trainer.train() logs once its SIGUSR1/SIGTERM/SIGINT handlers are installed: signal only after it.
READY = "ready: training from step"

# A tiny, fast run: a few PPO steps of the embedded model.
TINY_ARGS = [
    "--train.total_steps",
    "3",
    "--rollout.batch_size",
    "4",
    "--ppo.mini_batch_size",
    "2",
    "--rollout.max_new_tokens",
    "8",
    "--ppo.ppo_epochs",
    "2",
    "--log.progress_bar",
    "false",
]


def cpu_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    env["PYTHON"] = sys.executable  # the slurm/ scripts run accelerate with it, not from PATH
    env.update(extra)
    return env


def launch(
    args: list[str],
    num_processes: int = 1,
    config_file: str | Path | None = None,
    script: str | Path = "train.py",
    timeout: float = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``accelerate launch`` ``script`` with ``args``; CPU processes talk over gloo.

    With ``config_file`` the accelerate YAML decides the mode; otherwise ``--multi_gpu`` plus
    ``ACCELERATE_USE_CPU`` gives ``num_processes`` real CPU processes (see the CPU notes in README).
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        cmd += ["--config_file", str(config_file), "--num_processes", str(num_processes)]
    elif num_processes > 1:
        cmd += [
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    else:
        cmd += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(_free_port())] if num_processes > 1 else []
    cmd += [str(REPO / script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or cpu_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- "
            f"stderr\n{proc.stderr[-8000:]}"
        )
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Output:
    """Reads a ``Popen``'s stdout (text mode; stderr merged into it) in a background thread, so that a test
    can wait for a line while the process runs and the pipe never fills up."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self._chunks = proc, []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._chunks.append(line)

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    def wait_for(self, needle: str, count: int = 1, timeout: float = 120) -> None:
        """Until ``needle`` has appeared ``count`` times; fails if the process exits first or on timeout."""
        deadline = time.monotonic() + timeout
        while self.text.count(needle) < count:
            if self.proc.poll() is not None:
                self._thread.join(10)
                if self.text.count(needle) >= count:
                    return
                raise AssertionError(f"exited {self.proc.returncode} before {needle!r}:\n{self.text[-4000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no {needle!r} within {timeout:g}s:\n{self.text[-4000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> str:
        """Wait for the process to exit; everything it wrote."""
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout)
        return self.text


def wait_for_text(path: Path, needle: str, count: int = 1, timeout: float = 120) -> str:
    """Until the file ``path`` (a job log) holds ``needle`` ``count`` times; returns its text."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if text.count(needle) >= count:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"no {needle!r} x{count} in {path} within {timeout:g}s:\n{text[-4000:]}")
        time.sleep(0.2)
