"""Settings whose effect is easy to break unnoticed, each pinned on a real update or by hand:
``ppo.shuffle: false``, ``model.ref_name_or_path``, ``ppo.whiten_advantages``, ``train.min_entropy`` and
``log.entropy_every``."""

import pytest
import torch

from ppo_dist.config import ModelConfig, parse_args
from ppo_dist.models import build_tiny_gpt2, load_tokenizer
from ppo_dist.rl.rollout import Rollout, left_pad, right_pad
from ppo_dist.runtime.guards import KLGuard, KLGuardError

from .learners import tiny_learner


def _learner(extra):
    return tiny_learner(extra, batch_size=4)


def _rollout(tok) -> Rollout:
    eos = tok.eos_token_id
    q, qm = left_pad([torch.tensor([5, 6]), torch.tensor([7]), torch.tensor([8, 9, 10]), torch.tensor([11])], 1)
    r, rm = right_pad([torch.tensor([12, eos]), torch.tensor([13, 14, eos]), torch.tensor([15]), torch.tensor([16])], 1)
    return Rollout(q, qm, r, rm)


def _micro_batch_order(learner) -> list[list[int]]:
    seen, step = [], learner.update._micro_step

    def recording(exp, micro, *args):
        seen.append(micro.idx.tolist())
        return step(exp, micro, *args)

    learner.update._micro_step = recording
    learner.step(_rollout(learner.experience.tokenizer), torch.tensor([1.0, 0.0, 0.5, 0.2]))
    return seen


@pytest.mark.parametrize("shuffle", [False, True])
def test_shuffle_false_takes_the_mini_batches_in_rollout_order_every_epoch(shuffle):
    extra = ["--ppo.ppo_epochs", "3", "--ppo.mini_batch_size", "2", "--ppo.shuffle", str(shuffle).lower()]
    learner, _ = _learner(extra)
    order = _micro_batch_order(learner)
    if shuffle:  # seeded per step and epoch: a permutation each epoch, not the plain order
        epochs = [sorted(order[2 * e] + order[2 * e + 1]) for e in range(3)]
        assert epochs == [[0, 1, 2, 3]] * 3 and order != [[0, 1], [2, 3]] * 3
    else:
        assert order == [[0, 1], [2, 3]] * 3


def test_ref_name_or_path_loads_the_reference_from_that_directory(tmp_path):
    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(123)  # weights unlike the policy's
    other = build_tiny_gpt2(ModelConfig(), tokenizer)
    other.save_pretrained(tmp_path / "ref")
    tokenizer.save_pretrained(tmp_path / "ref")
    learner, _ = _learner(["--model.ref_name_or_path", str(tmp_path / "ref")])
    ref = dict(learner.reference.model.pretrained_model.named_parameters())
    policy = dict(learner.policy.unwrapped.pretrained_model.named_parameters())
    for name, p in other.named_parameters():
        assert torch.equal(ref[name].detach().cpu(), p.detach()), name
    assert not torch.equal(ref["transformer.wte.weight"].cpu(), policy["transformer.wte.weight"].detach().cpu())


@pytest.mark.parametrize("whiten", [True, False])
def test_whiten_advantages_flag(whiten):
    learner, tok = _learner(["--ppo.whiten_advantages", str(whiten).lower(), "--ppo.ppo_epochs", "1"])
    exp = learner.experience.from_rollout(_rollout(tok), torch.tensor([1.0, 0.0, 0.5, 0.2]), None, step=1)
    mask = exp.response_mask.float()
    mean = (exp.advantages * mask).sum() / mask.sum()
    var = ((exp.advantages - mean) ** 2 * mask).sum() / (mask.sum() - 1)
    if whiten:  # over every valid token: mean 0, unbiased variance 1
        assert float(mean) == pytest.approx(0.0, abs=1e-5) and float(var) == pytest.approx(1.0, rel=1e-4)
    else:
        assert abs(float(mean)) > 1e-3 or abs(float(var) - 1.0) > 1e-2


def test_min_entropy_guard_stops_or_warns(tmp_path, caplog):
    cfg = parse_args(["--train.min_entropy", "2.5", "--train.kl_guard", "stop"]).train
    guard = KLGuard(cfg, tmp_path)
    guard.check({"objective/kl": 0.1, "objective/entropy": 2.6}, step=3)  # above: nothing
    with pytest.raises(KLGuardError, match=r"objective/entropy=2.4 < train.min_entropy=2.5"):
        guard.check({"objective/kl": 0.1, "objective/entropy": 2.4}, step=4)
    warn = KLGuard(parse_args(["--train.min_entropy", "2.5", "--train.kl_guard", "warn"]).train, tmp_path)
    warn.check({"objective/kl": 0.1, "objective/entropy": 2.4}, step=4)
    assert "going on (train.kl_guard=warn)" in caplog.text


@pytest.mark.parametrize("whiten", [True, False])
def test_whiten_rewards_normalises_the_token_rewards_before_gae_keeping_their_mean(whiten):
    """No KL, gamma = lam = 1: a response's return at its first token is the sum of its token rewards,
    which are its score on its last token and 0 elsewhere; whitened over all valid tokens with the mean
    added back, ``(r - m) / s + m`` each."""
    extra = ["--ppo.whiten_rewards", str(whiten).lower(), "--ppo.whiten_advantages", "false"]
    extra += ["--ppo.kl_coef", "0", "--ppo.gamma", "1", "--ppo.lam", "1", "--ppo.ppo_epochs", "1"]
    learner, tok = _learner(extra)
    scores = torch.tensor([1.0, 0.0, 0.5, 0.2])
    exp = learner.experience.from_rollout(_rollout(tok), scores, None, step=1)
    lengths = torch.tensor([2.0, 3.0, 1.0, 1.0])  # response tokens of _rollout
    assert exp.response_mask.sum(1).tolist() == lengths.tolist()
    if whiten:
        n = lengths.sum()
        m = scores.sum() / n
        s = torch.sqrt(((scores - m) ** 2 + (lengths - 1) * m**2).sum() / (n - 1))  # zeros elsewhere
        expected = (scores - lengths * m) / s + lengths * m
    else:
        expected = scores
    torch.testing.assert_close(exp.returns[:, 0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("every", "coef", "expected"),
    [("2", "0", [False, True, False, True]), ("0", "0", [False] * 4), ("0", "0.01", [True] * 4)],
)
def test_entropy_is_computed_only_at_the_steps_that_ask_for_it(every, coef, expected):
    """``log.entropy_every``: the update's forwards compute the full-vocabulary entropy at multiples of
    N only (its metric is absent elsewhere); an entropy bonus needs it, and has it, at every step."""
    learner, tok = _learner(["--log.entropy_every", every, "--ppo.entropy_coef", coef])
    seen = []
    score = learner.policy.score

    def recording(part, *, entropy, **kwargs):
        seen.append(entropy)
        return score(part, entropy=entropy, **kwargs)

    learner.policy.score = recording
    logged = []
    for _ in range(4):
        seen.clear()
        stats = learner.step(_rollout(tok), torch.tensor([1.0, 0.0, 0.5, 0.2]))
        assert len(set(seen)) == 1  # every forward of a step alike
        logged.append("ppo/policy/entropy" in stats)
        assert seen[0] == ("grad" if coef != "0" else "metric" if logged[-1] else "none")
    assert logged == expected
