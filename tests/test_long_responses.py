"""Long responses: a run with 1024 new tokens completes on the embedded model, truncated responses
are marked and penalised, and the token-budget split is used."""

import pytest

from ppo_dist.plot import read_scalars

from .launch import TINY_ARGS, launch


def test_a_run_with_1024_new_tokens_completes_and_marks_truncated_responses(tmp_path):
    launch([*TINY_ARGS, "--train.total_steps", "1", "--rollout.max_new_tokens", "1024",
            "--model.tiny_n_positions", "1100", "--reward.no_eos_penalty", "-1", "--ppo.micro_batch_tokens", "1500",
            "--rollout.forward_tokens", "3000", "--train.output_dir", str(tmp_path)], timeout=600)  # fmt: skip
    scalars = {tag: values[0] for tag, (_, values) in read_scalars(tmp_path).items()}
    # An untrained model over 512 tokens rarely says EOS: most responses run to the limit and are truncated.
    assert scalars["tokens/responses_len_mean"] > 300
    finished = scalars["tokens/responses_finished_frac"]
    assert finished < 1
    # Each unfinished response got reward.no_eos_penalty (-1) on top of its rule score.
    assert scalars["env/score_mean"] == pytest.approx(scalars["env/reward_mean"] - (1 - finished), abs=1e-5)
    assert scalars["time/advantages"] < 0.01 * scalars["time/step"]
    assert (tmp_path / "final_model" / "config.json").is_file()
