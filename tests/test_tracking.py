"""TensorBoard output of a real run: legacy tag names, global aggregation, one writer, extras."""

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ppo_dist.config import Config, ConfigError
from ppo_dist.runtime.tracking import check_trackers, flat_hparams, sample_table
from tests.launch import REPO, TINY_ARGS, launch

LEGACY_TAGS = [
    "env/reward_mean",
    "env/reward_std",
    "objective/kl",
    "objective/kl_coef",
    "objective/entropy",
    "ppo/loss/policy",
    "ppo/loss/value",
    "ppo/loss/total",
    "ppo/policy/approxkl",
    "ppo/policy/policykl",
    "ppo/policy/clipfrac",
    "ppo/policy/entropy",
    "ppo/val/vpred",
    "ppo/val/error",
    "ppo/val/clipfrac",
    "ppo/returns/mean",
    "ppo/mean_non_score_reward",
    "ppo/learning_rate",
    "tokens/queries_len_mean",
    "tokens/responses_len_mean",
]
EXTRA_TAGS = [
    "time/rollout",
    "time/reward",
    "time/optimize",
    "time/step",
    "throughput/tokens_per_s",
    "throughput/samples_per_s",
    "memory/peak_gb",
    "env/reward/by_rank",
    "env/reward/length_bonus",
]


def _events(run_dir):
    files = sorted(run_dir.glob("*/events.out.tfevents.*"))
    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return files, acc


@pytest.mark.distributed
def test_two_process_run_logs_global_statistics_once(tmp_path):
    reward_file = REPO / "tests/scripts/rank_reward.py"
    launch(
        [
            *TINY_ARGS,
            "--train.output_dir",
            str(tmp_path),
            "--log.samples_every",
            "2",
            "--reward.functions",
            f"['{reward_file}:by_rank', '{reward_file}:length_bonus']",
            "--reward.weights",
            "[1.0, 0.0]",
        ],
        num_processes=2,
    )
    files, ev = _events(tmp_path)
    assert len({f.name.rsplit(".", 1)[0] for f in files}) == 1, files  # one writer: the main process
    tags = ev.Tags()
    for tag in LEGACY_TAGS + EXTRA_TAGS:
        values = [e.value for e in ev.Scalars(tag)]
        assert [e.step for e in ev.Scalars(tag)] == [1, 2, 3], tag
        assert all(math.isfinite(v) for v in values), tag
    # Rank 0 scores 1.0, rank 1 scores 3.0 (2 samples each): the global mean is 2.0, rank 0 alone would say 1.0.
    assert [e.value for e in ev.Scalars("env/reward_mean")] == pytest.approx([2.0] * 3)
    assert [e.value for e in ev.Scalars("env/reward_std")] == pytest.approx([math.sqrt(4 / 3)] * 3)
    assert [e.value for e in ev.Scalars("env/reward/by_rank")] == pytest.approx([2.0] * 3)
    assert set(tags["histograms"]) >= {"env/reward_dist", "tokens/responses_len_dist"}
    hist = ev.Histograms("env/reward_dist")[0].histogram_value
    assert (hist.num, hist.min, hist.max, hist.sum) == (4, 1.0, 3.0, 8.0)  # all 4 samples of both ranks
    assert [e.step for e in ev.Tensors("samples/text_summary")] == [2]
    assert (
        "| prompt | completion | reward |" in ev.Tensors("samples/text_summary")[0].tensor_proto.string_val[0].decode()
    )
    plugins = ev.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins and "_hparams_/experiment" in plugins
    assert b"ppo.cliprange" in plugins["_hparams_/session_start_info"]


def test_resumed_run_continues_the_same_event_log_without_repeating_steps(tmp_path):
    import shutil

    args = [*TINY_ARGS, "--train.output_dir", str(tmp_path), "--checkpoint.every", "1", "--checkpoint.keep", "3"]
    launch(args)
    # As if the run had been killed after logging step 3 but before checkpointing it.
    shutil.rmtree(tmp_path / "checkpoints" / "step_3")
    launch([*args, "--checkpoint.resume", "auto"])  # resumes at step 2, logs step 3 again
    files, ev = _events(tmp_path)
    assert len(files) == 2
    assert [e.step for e in ev.Scalars("env/reward_mean")] == [1, 2, 3]


def test_hparams_are_flat_scalars():
    flat = flat_hparams(Config().flat())
    assert flat["ppo.cliprange"] == 0.2 and flat["reward.functions"] == "['chinese_rule']"
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


def test_unknown_or_missing_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'"):
        check_trackers(["tensorbord"])
    check_trackers(["tensorboard"])


def test_sample_table_escapes_and_truncates():
    table = sample_table({"prompt": ["a|b"], "completion": ["x\ny" * 200], "reward": [0.5]})
    row = table.splitlines()[2]
    assert "a\\|b" in row and "\n" not in row and row.endswith("| 0.500 |") and "…" in row
