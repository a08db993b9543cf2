"""Tasks of the GRPO race (bench/grpo_race.py): prompts and rule rewards that no issue names.

Importable by both sides of the race: ppo_dist takes a reward as ``reward.functions:
[bench/race_tasks.py:digits]`` (a file.py:function spec), TRL's GRPOTrainer takes the same function
as a ``reward_funcs`` entry. Every reward is in [0, 1] and reads only the completion text.

    digits   share of the completion's non-space characters that are ASCII digits
    brief    1 for a non-empty completion of at most 6 characters, falling linearly to 0 at 30
    latin    share of the completion's non-space characters that are ASCII letters a-z
"""

from __future__ import annotations

from collections.abc import Sequence

PROMPTS: list[str] = [
    "Count with me:",
    "The answer is",
    "Write a short note",
    "My phone number",
    "Tell me a story",
    "The year was",
    "List the steps",
    "A quick reply:",
    "Once upon a time",
    "The total comes to",
    "Say something kind",
    "In the morning",
    "Call me at",
    "Here is the plan",
    "The recipe needs",
    "Describe the sea",
]


def _chars(text: str) -> str:
    return "".join(text.split())


def digits(prompts: Sequence[str] = (), completions: Sequence[str] = (), **_: object) -> list[float]:
    """Share of the completion's non-space characters that are ASCII digits (0 for an empty one)."""
    out = []
    for text in completions:
        chars = _chars(text)
        out.append(sum(c in "0123456789" for c in chars) / len(chars) if chars else 0.0)
    return out


def brief(prompts: Sequence[str] = (), completions: Sequence[str] = (), **_: object) -> list[float]:
    """1 for 1-6 non-space characters, then linearly down to 0 at 30; 0 for an empty completion."""
    out = []
    for text in completions:
        n = len(_chars(text))
        out.append(0.0 if n == 0 else 1.0 if n <= 6 else max(0.0, (30 - n) / 24))
    return out


def latin(prompts: Sequence[str] = (), completions: Sequence[str] = (), **_: object) -> list[float]:
    """Share of the completion's non-space characters that are ASCII letters a-z (either case)."""
    out = []
    for text in completions:
        chars = _chars(text)
        out.append(sum(c.isascii() and c.isalpha() for c in chars) / len(chars) if chars else 0.0)
    return out


REWARDS = {"digits": digits, "brief": brief, "latin": latin}
