"""In-process learners on the embedded model, for tests that drive real updates by hand."""

from accelerate.utils import set_seed

from ppo_dist.config import parse_args, validate
from ppo_dist.models import load_tokenizer
from ppo_dist.rl.learner import build_learner
from ppo_dist.runtime import distributed

from .launch import TINY_ARGS


def tiny_learner(extra: list[str], batch_size: int = 2):
    """A learner (and its tokenizer) for ``TINY_ARGS`` plus ``extra``, on one process, seeded; no
    prompt stream or reward: samples go to ``Learner.step``."""
    cfg = parse_args([*TINY_ARGS, "--log.trackers", "[]", "--rollout.batch_size", str(batch_size), *extra])
    plan = validate(cfg, 1)
    acc = distributed.build_accelerator(cfg, plan)
    set_seed(0)
    tokenizer = load_tokenizer(cfg.model)
    return build_learner(cfg, acc, tokenizer, plan), tokenizer
