"""slurm/ templates submitted, unmodified, to a real two-node SLURM cluster on localhost."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.launch import READY, REPO, TINY_ARGS, Output, _free_port, wait_for_text
from tests.slurm_cluster import local_slurm_cluster, missing_binaries

pytestmark = pytest.mark.slurm

TEMPLATE = REPO / "slurm" / "multinode.sbatch"


@pytest.fixture(scope="module")
def cluster():
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)}); .ci/run installs slurm-wlm and munge")
    with local_slurm_cluster(cpus_per_node=2) as c:
        yield c


def _submit(cluster, out_dir, extra_args, log, accel_config=None):
    env = {
        "GPUS_PER_NODE": "1",
        "RUN_CONFIG": "",
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
        "MAIN_PORT": str(_free_port()),
        "PYTHONPATH": str(REPO),
        "EXTRA_ARGS": " ".join([*TINY_ARGS, "--train.output_dir", str(out_dir), *extra_args]),
    }
    if accel_config:  # a DeepSpeed config: ACCELERATE_USE_CPU would turn it into plain multi-CPU
        del env["ACCELERATE_USE_CPU"]
        env["ACCEL_CONFIG"] = str(REPO / accel_config)
    # Only what a user may set at submission: variables, node count, where the log goes, and no GPUs here.
    return cluster.sbatch(
        "-N",
        "2",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        f"--chdir={REPO}",
        f"--output={log}",
        str(TEMPLATE),
        env=env,
    )


def test_multinode_template_trains_on_both_nodes(cluster, tmp_path):
    log = tmp_path / "job.log"
    job = _submit(cluster, tmp_path / "run", [], log)
    info = cluster.wait_finished(job, timeout=240)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-4000:]
    assert "node n1: machine_rank 0" in text and "node n2: machine_rank 1" in text
    assert "MULTI_CPU on 2 process(es)" in text
    assert (tmp_path / "run" / "final_model" / "config.json").exists()
    assert (tmp_path / "run" / "checkpoints" / "step_3" / "COMPLETE").exists()


def test_multinode_template_runs_zero2_across_both_nodes(cluster, tmp_path):
    # A DeepSpeed config across nodes: one launcher per node (deepspeed_multinode_launcher: standard in
    # accelerate_configs/zero*.yaml), not DeepSpeed's pdsh launcher, which would ignore the machine ranks.
    log = tmp_path / "job.log"
    job = _submit(cluster, tmp_path / "run", [], log, accel_config="accelerate_configs/zero2.yaml")
    info = cluster.wait_finished(job, timeout=300)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-4000:]
    assert "node n1: machine_rank 0" in text and "node n2: machine_rank 1" in text
    assert "DEEPSPEED on 2 process(es)" in text and "ZeRO stage 2" in text
    assert (tmp_path / "run" / "checkpoints" / "step_3" / "COMPLETE").exists()


def test_preemption_checkpoints_requeues_and_resumes(cluster, tmp_path):
    log, run = tmp_path / "job.log", tmp_path / "run"
    total = 40
    job = _submit(cluster, run, ["--train.total_steps", str(total), "--log.log_every", "1"], log)
    wait_for_text(log, READY, count=2)  # both nodes' trainers have their checkpoint-and-stop handlers
    # What SLURM does before the time limit with --signal=B:USR1@N.
    cluster.run("scancel", "--batch", f"--signal={signal.SIGUSR1.name[3:]}", str(job))
    cluster.wait_for(job, lambda i: i.get("Restarts") == "1" and i.get("JobState") == "PENDING", 120, "requeued")
    # SLURM holds a requeued job for ~2 minutes before it is eligible again; release it once the nodes
    # have cleaned up the first run. Started within the same second as the requeue, slurmd refuses it
    # ("Job credential revoked") and the job fails.
    deadline = time.monotonic() + 60
    while set(cluster.node_states().values()) != {"idle"}:
        assert time.monotonic() < deadline, cluster.node_states()
        time.sleep(0.5)
    time.sleep(2)
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = cluster.wait_for(job, lambda i: i.get("JobState") == "COMPLETED", 240, "resumed and completed")
    text = log.read_text()
    assert "got SIGUSR1" in text and "requeueing job" in text, text[-4000:]
    assert "(restart 1)" in text
    stopped = [line for line in text.splitlines() if "stopping on signal after step" in line]
    assert stopped, text[-4000:]
    step = int(stopped[0].split("after step")[1].split(";")[0])
    assert 0 < step < total
    assert f"resumed from step {step}" in text
    assert (run / "checkpoints" / f"step_{total}" / "COMPLETE").exists()
    assert info["ExitCode"] == "0:0"


def test_shellcheck_passes_on_every_script():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed; .ci/run installs it")
    scripts = sorted(str(p) for p in (REPO / "slurm").iterdir() if p.suffix in (".sh", ".sbatch"))
    assert scripts
    proc = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_single_node_template_runs_two_processes(cluster, tmp_path):
    log = tmp_path / "job.log"
    env = {
        "GPUS_PER_NODE": "2",
        "RUN_CONFIG": "",
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "EXTRA_ARGS": " ".join([*TINY_ARGS, "--train.output_dir", str(tmp_path / "run")]),
    }
    job = cluster.sbatch(
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        f"--chdir={REPO}",
        f"--output={log}",
        str(REPO / "slurm" / "single_node.sbatch"),
        env=env,
    )
    info = cluster.wait_finished(job, timeout=240)
    assert info["JobState"] == "COMPLETED", log.read_text()[-4000:]
    assert "MULTI_CPU on 2 process(es)" in log.read_text()
    assert (tmp_path / "run" / "final_model" / "config.json").exists()


def test_launch_script_without_slurm_stops_with_75_and_resumes(tmp_path):
    run, total = tmp_path / "run", 40
    env = {
        **os.environ,
        "NUM_PROCESSES": "2",
        "RUN_CONFIG": "",
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
    }
    cmd = [
        "bash",
        str(REPO / "slurm" / "launch_single_node.sh"),
        *TINY_ARGS,
        "--train.total_steps",
        str(total),
        "--train.output_dir",
        str(run),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    output.wait_for(READY, count=2)  # both trainers have their checkpoint-and-stop handlers
    proc.send_signal(signal.SIGTERM)
    out = output.finish(timeout=120)
    assert proc.returncode == 75, out[-4000:]
    saved = sorted(run.glob("checkpoints/step_*/COMPLETE"))
    assert saved, out[-4000:]
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "resumed from step" in again.stdout + again.stderr
    assert (run / "checkpoints" / f"step_{total}" / "COMPLETE").exists()


def test_launch_script_relaunches_after_usr1_when_asked(tmp_path):
    run, total = tmp_path / "run", 40
    env = {
        **os.environ,
        "NUM_PROCESSES": "2",
        "RUN_CONFIG": "",
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "MAX_RESTARTS": "1",
    }
    cmd = [
        "bash",
        str(REPO / "slurm" / "launch_single_node.sh"),
        *TINY_ARGS,
        "--train.total_steps",
        str(total),
        "--train.output_dir",
        str(run),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    output.wait_for(READY, count=2)
    proc.send_signal(signal.SIGUSR1)
    out = output.finish(timeout=240)
    assert proc.returncode == 0, out[-4000:]
    # Each of the 2 processes logs the stop once, at the same step.
    stopped = {
        int(line.split("after step")[1].split(";")[0])
        for line in out.splitlines()
        if "stopping on signal after step" in line
    }
    assert len(stopped) == 1, out[-4000:]
    (step,) = stopped
    assert 0 < step < total
    assert out.count("relaunching (1 of 1)") == 1 and f"resumed from step {step}" in out
    assert (run / "checkpoints" / f"step_{total}" / "COMPLETE").exists()
    assert (run / "final_model" / "config.json").exists()
