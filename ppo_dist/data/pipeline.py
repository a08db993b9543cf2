"""The embedded datasets of the sft, rm and dpo stages: small, Chinese, built offline from templates.

They teach what the seed reward (``rewards.chinese_rule``) prefers, so that the whole pipeline
(SFT -> reward model -> PPO, and DPO) runs and learns on the embedded tiny model with no download:

* preferred completions have 10-50 characters, contain positive words (好 棒 喜欢 开心 快乐 有趣
  学习 成长) and do not repeat themselves;
* rejected completions are repetitive, too short, too long, or of the right length but without a
  positive word (neutral);
* SFT demonstrations are half preferred and half neutral: SFT teaches the format (a sentence of the
  right length that ends), and the later stages (RM + PPO, or DPO) teach the preference.

The prompts are the PPO default prompts (``config.SEED_PROMPTS``), so the PPO stage continues from
what SFT saw. Generation is a pure function of a fixed seed: the data is the same on every machine
and every process. Nothing here imports torch or datasets.
"""

from __future__ import annotations

import random

from ..config import SEED_PROMPTS

SEED = 20240611
SFT_PER_PROMPT = 16
PAIRS_PER_PROMPT = 24

# Preferred: a positive clause and a positive tail, 11-20 characters.
POSITIVE_HEADS = tuple("真的很好 感觉很棒 让我很开心 每天都很快乐 非常有趣 我很喜欢 让人快乐 是一件好事".split())
POSITIVE_TAILS = tuple(
    "，我们一起学习，一起成长。 ，生活中有很多美好的事情。 ，每天都有新的收获。 "
    "，明天继续努力。 ，大家都很喜欢。 ，我觉得很开心。 ，好好学习，天天向上。 "
    "，未来会更好。".split()
)
# Neutral: the right length (10-15 characters) but no positive word.
NEUTRAL_HEADS = ("是一个问题", "在北京", "有很多人", "需要时间", "和以前一样", "是中国的", "在上海", "要看情况")
NEUTRAL_TAILS = tuple(
    "，我们可以一起讨论。 ，时间过得真快。 ，请告诉我你的想法。 ，一年又过去了。 "
    "，这个问题很简单。 ，文化很丰富。 ，科技让生活更方便。 ，历史很悠久。".split()
)
REPEATED_UNITS = ("好", "哈", "我", "的", "今天", "学习", "很好", "是是")
SHORT = ("嗯。", "好。", "还行。", "不知道。", "是的。", "没有。", "可以。", "随便。")
LONG_CLAUSES = tuple(
    "这是一个问题 那也是一个问题 我们还要再看看 中国的历史很悠久 北京是中国的首都 "
    "上海是一个大城市 时间过得真快 一年又过去了 请告诉我你的想法 科技让生活更方便 "
    "这个问题很简单 我来回答".split()
)


def _positive(rng: random.Random) -> str:
    return rng.choice(POSITIVE_HEADS) + rng.choice(POSITIVE_TAILS)


def _neutral(rng: random.Random) -> str:
    return rng.choice(NEUTRAL_HEADS) + rng.choice(NEUTRAL_TAILS)


def _repetitive(rng: random.Random) -> str:
    unit = rng.choice(REPEATED_UNITS)
    return unit * (rng.randint(12, 24) // len(unit)) + "。"


def _short(rng: random.Random) -> str:
    return rng.choice(SHORT)


def _long(rng: random.Random) -> str:
    clauses: list[str] = []
    while sum(map(len, clauses)) + len(clauses) <= 55:
        clauses.append(rng.choice(LONG_CLAUSES))
    return "，".join(clauses) + "。"


REJECTED_KINDS = {"neutral": _neutral, "repetitive": _repetitive, "short": _short, "long": _long}


def sft_examples(per_prompt: int = SFT_PER_PROMPT) -> dict[str, list[str]]:
    """``{"prompt": [...], "completion": [...]}``: half preferred, half neutral completions."""
    rng = random.Random(SEED)
    prompts, completions = [], []
    for prompt in SEED_PROMPTS:
        for i in range(per_prompt):
            prompts.append(prompt)
            completions.append(_positive(rng) if i % 2 == 0 else _neutral(rng))
    return {"prompt": prompts, "completion": completions}


def preference_pairs(per_prompt: int = PAIRS_PER_PROMPT) -> dict[str, list[str]]:
    """``{"prompt", "chosen", "rejected"}``: a preferred completion against one of ``REJECTED_KINDS``
    (cycling through the kinds, so each is a quarter of the pairs)."""
    rng = random.Random(SEED + 1)
    kinds = list(REJECTED_KINDS.values())
    out: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for prompt in SEED_PROMPTS:
        for i in range(per_prompt):
            out["prompt"].append(prompt)
            out["chosen"].append(_positive(rng))
            out["rejected"].append(kinds[i % len(kinds)](rng))
    return out
