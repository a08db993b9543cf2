"""The critic-free recipe's features on real runs and real updates: dynamic sampling (its group choice,
refills, exact resume), truncated responses out of the loss, sampling with dropout, and evaluation
during training."""

import dataclasses

import pytest
import torch

from ppo_dist.config import parse_args
from ppo_dist.models import load_tokenizer
from ppo_dist.plot import read_scalars
from ppo_dist.rl.engines.hf import HFEngine
from ppo_dist.rl.rollout import Rollout, left_pad, right_pad
from ppo_dist.rl.sampling import GatheredRound, choose_groups, local_share

from .launch import TINY_ARGS, launch
from .learners import tiny_learner

# A reward that ties often: with 2 samples a group's rewards are equal about half of the time.
TIE_REWARD = "def score(prompts, completions):\n    return [float(len(c) % 3 == 0) for c in completions]\n"


def _round(scores, groups_informative, n=2):
    B = len(scores)
    return GatheredRound(
        prompts=[f"p{i // n}" for i in range(B)],
        queries=[torch.tensor([5, 6 + i]) for i in range(B)],
        responses=[torch.tensor([7 + i] * (1 + i % 3)) for i in range(B)],
        engine_logprobs=None,
        components={"score": torch.tensor(scores), "valid": torch.ones(B, dtype=torch.bool)},
        informative=torch.tensor(groups_informative),
        group_size=n,
        timings={"time/rollout": 0.0, "time/reward": 0.0},
    )


def test_dynamic_sampling_chooses_informative_groups_in_order_and_shards_them_like_one_process():
    tokenizer = load_tokenizer(parse_args([]).model)
    rounds = [_round([1.0, 1.0, 0.0, 1.0], [False, True]), _round([0.0, 1.0, 2.0, 2.0], [True, False])]
    chosen, informative = choose_groups(rounds, 2)
    assert chosen == [(0, 1), (1, 0)] and informative == 2
    chosen, informative = choose_groups(rounds[:1], 2)  # one informative group: a tied one fills the batch
    assert chosen == [(0, 1), (0, 0)] and informative == 1
    whole = local_share(rounds, [(0, 1), (1, 0)], 2, 0, 1, tokenizer)
    halves = [local_share(rounds, [(0, 1), (1, 0)], 2, rank, 2, tokenizer) for rank in (0, 1)]
    assert whole.components["score"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert sum((h.components["score"].tolist() for h in halves), []) == whole.components["score"].tolist()
    assert sum((h.completions for h in halves), []) == whole.completions
    assert sum((h.prompts for h in halves), []) == whole.prompts == ["p1", "p1", "p0", "p0"]
    filled = local_share(rounds[:1], [(0, 1), (0, 0)], 1, 0, 1, tokenizer)
    assert filled.trained.tolist() == [True, True, False, False]  # the tied group stays out of the loss


@pytest.fixture(scope="module")
def dynamic_runs(tmp_path_factory):
    """Dynamic sampling with a reward that ties often: uninterrupted, and stopped at step 2 then resumed."""
    root = tmp_path_factory.mktemp("dynamic")
    reward = root / "tie_reward.py"
    reward.write_text(TIE_REWARD)
    args = [
        *TINY_ARGS,
        "--reward.functions", f"[{reward}:score]",
        "--ppo.advantage_estimator", "grpo",
        "--rollout.n_samples_per_prompt", "2",
        "--rollout.dynamic_sampling", "true",
        "--rollout.max_sampling_rounds", "4",
        "--eval.every", "2",
        "--eval.prompts", "[今天, 我喜欢]",
        "--eval.n_samples", "3",
        "--eval.do_sample", "true",
        "--eval.pass_threshold", "1",
        "--checkpoint.keep", "5",
    ]  # fmt: skip
    full, part = root / "full", root / "part"
    launch([*args, "--train.total_steps", "4", "--train.output_dir", str(full)])
    launch([*args, "--train.total_steps", "2", "--train.output_dir", str(part)])
    resumed = launch(
        [*args, "--train.total_steps", "4", "--train.output_dir", str(part), "--checkpoint.resume", "auto"]
    )
    return full, part, resumed.stderr


def test_dynamic_sampling_refills_and_resumes_exactly(dynamic_runs):
    full, part, log = dynamic_runs
    assert "resumed from step 2" in log
    a, b = read_scalars(full), read_scalars(part)
    rounds = a["rollout/sampling_rounds"][1]
    assert rounds.max() > 1, rounds  # some steps drew further prompts: the position after them was restored
    assert (a["rollout/informative_groups"][1] <= 4).all()
    for tag in a:
        if not tag.startswith(("time/", "throughput/", "memory/")):
            assert list(a[tag][1]) == list(b[tag][1]), tag


def test_evaluation_logs_reward_and_pass_at_k_on_its_steps(dynamic_runs):
    s = read_scalars(dynamic_runs[0])
    assert list(s["eval/reward_mean"][0]) == list(s["eval/pass@3"][0]) == [2, 4]
    # 2 prompts: pass@3 is 0, 1/2 or 1; every response scores 0 or 1, so the mean is a multiple of 1/6
    assert set(s["eval/pass@3"][1]) <= {0.0, 0.5, 1.0}
    assert all(abs(v * 6 - round(v * 6)) < 1e-6 for v in s["eval/reward_mean"][1])


def _learner(extra):
    return tiny_learner(extra)


@pytest.mark.parametrize("mask_truncated", [True, False])
def test_a_truncated_response_leaves_the_loss_with_mask_truncated(mask_truncated):
    """Two batches that differ only in the tokens of a response that never reached EOS: the update is the
    same with ``rollout.mask_truncated`` (that response is not in the loss), and not without it."""
    extra = ["--ppo.advantage_estimator", "grpo", "--rollout.n_samples_per_prompt", "2", "--ppo.kl_coef", "0"]
    extra += ["--ppo.mini_batch_size", "4", "--ppo.ppo_epochs", "1", "--rollout.max_new_tokens", "4"]
    extra += ["--rollout.mask_truncated", str(mask_truncated).lower()]
    params = []
    for cut in ([9, 10, 11, 12], [13, 14, 15, 16]):
        learner, tok = _learner(extra)
        eos = tok.eos_token_id
        q, qm = left_pad([torch.tensor([5, 6])] * 4, tok.pad_token_id)
        r, rm = right_pad(
            [torch.tensor([7, eos]), torch.tensor(cut), torch.tensor([8, eos]), torch.tensor([9, eos])], 1
        )
        stats = learner.step(Rollout(q, qm, r, rm), torch.tensor([1.0, 0.0, 0.5, 0.0]))
        params.append([p.detach().clone() for p in learner.policy.unwrapped.parameters()])
        if mask_truncated:
            assert stats["rollout/truncated_masked_frac"] == pytest.approx(0.25)
    same = all(torch.equal(a, b) for a, b in zip(*params, strict=True))
    assert same == mask_truncated


def test_policy_mode_train_samples_with_dropout_active():
    learner, tok = _learner(["--model.disable_dropout", "false", "--rollout.policy_mode", "train"])
    engine = HFEngine(learner.policy.accelerator, learner.policy, tok)
    prompts = [torch.tensor([5, 6, 7])] * 4
    sampling = dataclasses.replace(learner.experience.sampling, max_new_tokens=12, min_new_tokens=12)
    train = engine.generate(prompts, sampling.with_seed(3)).responses
    evals = [engine.generate(prompts, dataclasses.replace(sampling, policy_mode="eval").with_seed(3)) for _ in "ab"]
    assert torch.equal(evals[0].responses, evals[1].responses)  # seeded: the same samples in eval mode
    assert not torch.equal(train, evals[0].responses)  # dropout changed the distribution sampled from
