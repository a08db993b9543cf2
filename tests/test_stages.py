"""The RLHF pipeline's TRL stages (sft, rm, dpo) on PPO's launch path, end to end on the embedded tiny model.

Each stage runs its shipped config (``configs/rlhf/<stage>.yaml``) twice through
``slurm/launch_single_node.sh`` on 2 CPU processes:

* DDP, stopped by SIGUSR1 as soon as both processes train: every process checkpoints and exits 75,
  the script relaunches (``MAX_RESTARTS=1``) and the run resumes to its configured step count;
* DeepSpeed ZeRO-2, uninterrupted: the same step count, the same logged curve and held-out metrics.

The stages chain as the README says: SFT -> RM -> PPO scored by that reward model, and SFT -> DPO.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ppo_dist import plot
from ppo_dist.config import ConfigError, from_dict, validate

from .launch import REPO, _free_port, cpu_env, launch

SCRIPT = REPO / "slurm" / "launch_single_node.sh"
READY = re.compile(r"\(pid \d+\): training from step (\d+) to (\d+)")


@dataclass
class StageRuns:
    stage: str
    ddp: Path  # stopped by SIGUSR1, then resumed by the launch script
    zero2: Path
    ddp_log: str
    zero2_log: str

    @property
    def total(self) -> int:
        return int(READY.search(self.zero2_log).group(2))


def _run_script(stage: str, out: Path, extra: list[str], zero2: bool) -> str:
    """``launch_single_node.sh`` with ``RUN_CONFIG=configs/rlhf/<stage>.yaml`` on 2 processes; returns the output.

    DDP runs get SIGUSR1 once both processes have printed that they train (the handlers are in place).
    """
    env = {**cpu_env(), "NUM_PROCESSES": "2", "RUN_CONFIG": f"configs/rlhf/{stage}.yaml"}
    if zero2:
        env.pop("ACCELERATE_USE_CPU")  # it would turn the DeepSpeed config into plain multi-CPU
        env["ACCEL_CONFIG"] = "accelerate_configs/zero2.yaml"
    else:
        env["MAX_RESTARTS"] = "1"
    cmd = ["bash", str(SCRIPT), "--train.output_dir", str(out), "--log.progress_bar", "false", *extra]
    # A session of its own, so the watchdog ends the launcher and its trainers too: killing only bash
    # would leave them holding stdout open, and the read below would wait for ever.
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    watchdog = threading.Timer(600, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    lines, ready = [], 0
    try:
        for line in proc.stdout:
            lines.append(line)
            started = [m for m in READY.finditer(line) if m.group(1) == "0"]
            ready += len(started)
            if not zero2 and started and ready == 2:
                proc.send_signal(signal.SIGUSR1)
        proc.wait()
    finally:
        watchdog.cancel()
    out_text = "".join(lines)
    assert proc.returncode == 0, out_text[-6000:]
    return out_text


def _run_stage(stage: str, tmp_path_factory, extra: list[str]) -> StageRuns:
    root = tmp_path_factory.mktemp(stage)
    ddp_log = _run_script(stage, root / "ddp", extra, zero2=False)
    # What a run killed while writing a checkpoint leaves: a checkpoint directory without the marker.
    leftover = root / "zero2" / "checkpoints" / "checkpoint-3"
    leftover.mkdir(parents=True)
    (leftover / "trainer_state.json").write_text('{"global_step": 3, "log_hi')
    zero2_log = _run_script(stage, root / "zero2", extra, zero2=True)
    return StageRuns(stage, root / "ddp", root / "zero2", ddp_log, zero2_log)


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    return _run_stage("sft", tmp_path_factory, [])


@pytest.fixture(scope="module")
def rm(sft, tmp_path_factory):
    return _run_stage("rm", tmp_path_factory, ["--model.name_or_path", str(sft.ddp / "final_model")])


@pytest.fixture(scope="module")
def dpo(sft, tmp_path_factory):
    return _run_stage("dpo", tmp_path_factory, ["--model.name_or_path", str(sft.ddp / "final_model")])


def _results(run: Path) -> dict:
    return json.loads((run / "eval_results.json").read_text())


def _final_step(run: Path) -> int:
    ckpts = sorted(run.glob("checkpoints/checkpoint-*/COMPLETE"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads((ckpts[-1].parent / "trainer_state.json").read_text())["global_step"]


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_stage_stops_on_sigusr1_resumes_and_matches_zero2(stage, request):
    runs: StageRuns = request.getfixturevalue(stage)
    total, log = runs.total, runs.ddp_log
    # Both processes stopped after the same step, saved it and exited 75; the script relaunched.
    stopped = {int(s) for s in re.findall(r"stopping on signal after step (\d+)", log)}
    assert len(stopped) == 1 and len(re.findall(r"stopping on signal after step", log)) == 2, log[-4000:]
    (step,) = stopped
    assert 0 < step < total
    # torch elastic's table of exit codes: the first process to leave exited 75; once one has left, the
    # launcher SIGTERMs the others, which may still be tearing down (after the checkpoint) when it arrives.
    codes = re.findall(r"exitcode\s+: (-?\d+) \(pid", log)
    root_cause = log[log.index("Root Cause") :]
    assert re.search(r"exitcode\s+: 75 \(pid", root_cause) and set(codes) <= {"75", "-15"}, log[-4000:]
    assert "relaunching (1 of 1)" in log
    assert [m.group(1) for m in READY.finditer(log)] == ["0", "0", str(step), str(step)]
    # The resumed run finished with the step count of the uninterrupted ZeRO-2 run.
    assert _final_step(runs.ddp) == _final_step(runs.zero2) == total
    assert (runs.ddp / "final_model" / "config.json").is_file() and (runs.zero2 / "final_model").is_dir()
    assert "ZeRO stage 2" in runs.zero2_log and "ZeRO stage 0" in log
    # The ZeRO-2 run (--checkpoint.resume auto) found only an unmarked, half-written checkpoint: it
    # removed it and started from step 0.
    assert len(list((runs.ddp / "checkpoints").glob("checkpoint-*"))) <= 2  # checkpoint.keep: 2
    assert "removing incomplete checkpoint" in runs.zero2_log
    assert not (runs.zero2 / "checkpoints" / "checkpoint-3").exists()
    assert [m.group(1) for m in READY.finditer(runs.zero2_log)] == ["0", "0"]
    # ... and logged the same curve (TensorBoard dropped nothing twice) and the same held-out metrics.
    ddp, zero2 = plot.read_scalars(runs.ddp), plot.read_scalars(runs.zero2)
    steps, losses = ddp["train/loss"]
    assert list(steps) == list(zero2["train/loss"][0]) and steps[-1] == total
    assert losses == pytest.approx(zero2["train/loss"][1], rel=2e-3)
    r_ddp, r_zero2 = _results(runs.ddp), _results(runs.zero2)
    assert r_ddp["held_out"]["loss"] == pytest.approx(r_zero2["held_out"]["loss"], rel=2e-3)


@pytest.mark.distributed
def test_sft_learns_the_demonstrations(sft):
    r = _results(sft.ddp)
    print(f"sft: train loss {r['train_first']['loss']:.3f} -> {r['train_last']['loss']:.3f}, held-out {r['held_out']}")
    assert r["train_first"]["loss"] > 4.0  # ~ln(512): the embedded model starts untrained
    assert r["held_out"]["loss"] < 1.0 and r["held_out"]["mean_token_accuracy"] > 0.7


@pytest.mark.distributed
def test_rerun_after_the_final_checkpoint_trains_no_further_step(sft, tmp_path):
    """Stopped between the last checkpoint and the final model: the rerun writes the model, nothing more."""
    total = sft.total
    shutil.copytree(sft.ddp / "checkpoints" / f"checkpoint-{total}", tmp_path / "checkpoints" / f"checkpoint-{total}")
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/rlhf/sft.yaml", "--train.output_dir", str(tmp_path)]
        + ["--checkpoint.resume", "auto", "--log.progress_bar", "false"],
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing left to train" in proc.stderr and f"sft: {total} steps" in proc.stdout
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [f"checkpoint-{total}"]
    final = load_file(str(tmp_path / "final_model" / "model.safetensors"))
    trained = load_file(str(sft.ddp / "final_model" / "model.safetensors"))
    assert final.keys() == trained.keys() and all(torch.equal(final[k], trained[k]) for k in final)


@pytest.mark.distributed
def test_reward_model_ranks_held_out_pairs_as_ppo_scores_them(rm):
    """The rm stage's output is a valid reward.model_path: PPO's scorer ranks the held-out pairs."""
    import datasets

    from ppo_dist.data.pipeline import preference_pairs
    from ppo_dist.rewards import RewardModelScorer
    from ppo_dist.stages.runner import split_held_out

    _, held_out = split_held_out(datasets.Dataset.from_dict(preference_pairs()), 0.15, seed=42)
    scorer = RewardModelScorer(str(rm.ddp / "final_model"), max_length=128)
    chosen = scorer(held_out["prompt"], held_out["chosen"])
    rejected = scorer(held_out["prompt"], held_out["rejected"])
    accuracy = (chosen > rejected).float().mean().item()
    reported = _results(rm.ddp)["held_out"]
    print(f"rm: held-out pairwise accuracy {accuracy:.3f} on {len(held_out)} pairs (reported {reported})")
    assert accuracy > 0.8
    # Trained on exactly the text PPO scores: the trainer's held-out accuracy is the scorer's.
    assert reported["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert reported["margin"] == pytest.approx((chosen - rejected).mean().item(), rel=1e-3)
    assert torch.isfinite(chosen).all()


@pytest.mark.distributed
def test_ppo_with_the_reward_model_raises_its_score(sft, rm, tmp_path):
    out = tmp_path / "ppo"
    launch(
        [
            "--config",
            "configs/rlhf/ppo.yaml",
            "--model.name_or_path",
            str(sft.ddp / "final_model"),
            "--reward.model_path",
            str(rm.ddp / "final_model"),
            "--train.total_steps",
            "20",
            "--train.output_dir",
            str(out),
            "--log.progress_bar",
            "false",
        ]
    )
    _, reward = plot.read_scalars(out)["env/reward_mean"]
    first, last = reward[:5].mean(), reward[-5:].mean()
    print(f"ppo: mean reward-model score of the samples, first 5 steps {first:.3f} -> last 5 steps {last:.3f}")
    assert last > first + 1.0


@pytest.mark.distributed
def test_dpo_raises_preference_accuracy_and_margin(dpo):
    r = _results(dpo.ddp)
    steps, margins = plot.read_scalars(dpo.ddp)["train/rewards/margins"]
    print(f"dpo: train margin {margins[0]:.3f} (step 1) -> {margins[-1]:.3f}; held-out {r['held_out']}")
    assert steps[0] == 1 and margins[0] == pytest.approx(0.0, abs=1e-6)  # the reference is the starting policy
    assert margins[-1] > 1.0
    assert r["held_out"]["rewards/accuracies"] > 0.8 and r["held_out"]["rewards/margins"] > 1.0


@pytest.mark.distributed
def test_plot_follows_each_stages_tags(sft, rm, dpo, tmp_path):
    titles = {
        name: [p.title for p in plot._panels_for(plot.read_scalars(run.zero2), None)]
        for name, run in (("sft", sft), ("rm", rm), ("dpo", dpo))
    }
    assert titles["sft"] == ["损失 loss", "熵 entropy", "词元准确率 token accuracy"]
    assert titles["rm"] == ["损失 loss", "偏好准确率 preference accuracy", "奖励差 reward margin (chosen − rejected)"]
    assert titles["dpo"][:4] == [
        "损失 loss",
        "熵 entropy",
        "偏好准确率 preference accuracy",
        "词元准确率 token accuracy",
    ]
    assert "奖励差 reward margin (chosen − rejected)" in titles["dpo"]
    written = plot.plot_run(rm.zero2, tmp_path / "rm.png")
    assert written.stat().st_size > 10_000


# ------------------------------------------------------------------ fast: config and data checks


def test_embedded_pairs_follow_the_seed_reward():
    from ppo_dist.data.pipeline import preference_pairs, sft_examples
    from ppo_dist.rewards import chinese_rule

    pairs = preference_pairs()
    chosen = chinese_rule(pairs["prompt"], pairs["chosen"])
    rejected = chinese_rule(pairs["prompt"], pairs["rejected"])
    assert len(chosen) == 384 and all(c > r for c, r in zip(chosen, rejected, strict=True))
    assert all(10 <= len(c) <= 50 for c in pairs["chosen"])
    demos = sft_examples()["completion"]
    assert len(demos) == 256 and all(10 <= len(c) <= 50 for c in demos)


def test_stage_settings_are_checked_before_anything_loads():
    with pytest.raises(ConfigError, match=r"rollout.batch_size is set, but only stage ppo reads it.*stage is sft"):
        validate(from_dict({"stage": "sft", "rollout": {"batch_size": 8}}))
    with pytest.raises(ConfigError, match=r"dpo.beta is set, but only stage dpo reads it.*stage is ppo"):
        validate(from_dict({"dpo": {"beta": 0.2}}))
    with pytest.raises(ConfigError, match=r"stage must be one of ppo, sft, rm, dpo; got 'rl'"):
        validate(from_dict({"stage": "rl"}))
    with pytest.raises(
        ConfigError, match=r"rm.batch_size=16 must be divisible by the world size x rm.gradient_accumulation_steps"
    ):
        validate(from_dict({"stage": "rm", "rm": {"gradient_accumulation_steps": 3}}), world_size=2)
    with pytest.raises(ConfigError, match=r"sft.max_length=512 does not fit the embedded model's model.tiny_n_pos"):
        validate(from_dict({"stage": "sft", "sft": {"max_length": 512}}))
    with pytest.raises(ConfigError, match=r"unknown key 'sft.batchsize'. Did you mean: batch_size"):
        from_dict({"sft": {"batchsize": 8}})
    plan = validate(from_dict({"stage": "dpo", "dpo": {"batch_size": 8, "gradient_accumulation_steps": 2}}), 2)
    assert plan.local_micro_batch_size == 2


def test_missing_column_is_a_one_line_error_before_the_model_loads(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "你好", "chosen": "很好"}\n', encoding="utf-8")
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/rlhf/rm.yaml",
            "--model.name_or_path",
            "",
            "--data.path",
            str(data),
            "--train.output_dir",
            str(out),
        ],
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors == [
        f"config error: data: stage rm needs the columns prompt, chosen, rejected; data.path {str(data)!r} has "
        "prompt, chosen (missing: rejected)"
    ]
    assert not (out / "checkpoints").exists()


@pytest.mark.distributed
def test_sft_under_zero3_saves_a_loadable_final_model(sft, tmp_path):
    # ZeRO-3 holds each parameter in shards; accelerate_configs/zero3.yaml has the final model gathered
    # (zero3_save_16bit_model), so the next stage can load it like the DDP run's.
    env = cpu_env()
    env.pop("ACCELERATE_USE_CPU")  # it would turn the DeepSpeed config into plain multi-CPU
    args = ["--config", "configs/rlhf/sft.yaml", "--train.output_dir", str(tmp_path), "--train.total_steps", "2"]
    args += ["--log.progress_bar", "false"]
    launch(args, num_processes=2, config_file="accelerate_configs/zero3.yaml", env=env)
    zero3 = load_file(str(tmp_path / "final_model" / "model.safetensors"))
    ddp = load_file(str(sft.ddp / "final_model" / "model.safetensors"))
    assert zero3.keys() == ddp.keys() and all(zero3[k].shape == ddp[k].shape for k in ddp)


@pytest.mark.distributed
def test_a_stage_checkpoint_failing_on_one_process_stops_every_process_with_one_error(tmp_path):
    """Files over 64 KiB fail (EFBIG, like a full disk): the main process cannot write the model into
    checkpoint-2 while the other writes only its small RNG state. Both stop with the same error (none
    waits in the next collective) and no half-written checkpoint is left."""

    def disk_full():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    args = ["--config", "configs/rlhf/sft.yaml", "--train.output_dir", str(tmp_path), "--train.total_steps", "4"]
    args += ["--checkpoint.every", "2", "--log.progress_bar", "false", "--train.collective_timeout", "60"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--main_process_port", str(_free_port()), "train.py", *args]
    proc = subprocess.run(
        cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300, preexec_fn=disk_full
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "writing stage checkpoint" in line]
    assert len(errors) >= 2 and "File too large" in errors[0], proc.stderr[-4000:]
    assert len({e[e.index("writing stage checkpoint") :] for e in errors}) == 1  # the same one line on both
    assert not list(tmp_path.glob("checkpoint-*"))


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_rm_and_dpo_under_zero3_save_models_that_score_as_the_trained_one(stage, sft, tmp_path):
    """configs/rlhf/<stage>.yaml with the ZeRO-3 accelerate config on 2 processes: the saved final model
    loads and gives the outputs the trained, sharded model gave in memory (reward scores for rm, text
    logprobs for dpo)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from .scripts import stage_probe

    env = cpu_env()
    env.pop("ACCELERATE_USE_CPU")  # it would turn the DeepSpeed config into plain multi-CPU
    args = ["--config", f"configs/rlhf/{stage}.yaml", "--model.name_or_path", str(sft.ddp / "final_model")]
    args += ["--train.output_dir", str(tmp_path), "--train.total_steps", "3", "--log.progress_bar", "false"]
    launch([str(tmp_path / "probe.json"), *args], num_processes=2, config_file="accelerate_configs/zero3.yaml",
           script="tests/scripts/stage_probe.py", env=env)  # fmt: skip
    in_memory = json.loads((tmp_path / "probe.json").read_text())
    final = tmp_path / "final_model"
    model_class = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
    saved = model_class.from_pretrained(final).eval()
    reloaded = stage_probe.probe_outputs(saved, AutoTokenizer.from_pretrained(final), stage)
    assert reloaded == pytest.approx(in_memory, rel=1e-4, abs=1e-4)
    # ... and training changed it: the starting model (the sft result) scores differently.
    start = model_class.from_pretrained(sft.ddp / "final_model").eval()
    assert stage_probe.probe_outputs(start, AutoTokenizer.from_pretrained(final), stage) != pytest.approx(in_memory)
