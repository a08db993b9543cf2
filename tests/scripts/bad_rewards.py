"""Rewards that misbehave on one process (RANK 1) or after some calls, for fault tests."""

import os
import time

_calls = {"n": 0}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def raises_on_rank1(prompts, completions, **_):
    if _rank() == 1:
        raise ValueError("scoring service exploded")
    return [1.0] * len(completions)


def nan_on_rank1(prompts, completions, **_):
    return [float("nan") if _rank() == 1 else 1.0 for _ in completions]


def sleeps_on_rank1(prompts, completions, **_):
    if _rank() == 1:
        time.sleep(600)
    return [1.0] * len(completions)


def huge_after_two_steps(prompts, completions, **_):
    """A reward-scale bug from step 3 on: finite, but its square overflows float32."""
    _calls["n"] += 1
    return [1e30 if _calls["n"] > 2 else 1.0] * len(completions)
