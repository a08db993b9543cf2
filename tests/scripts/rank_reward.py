"""A reward that depends only on the process: 1.0 on rank 0, 3.0 on rank 1, ... (for aggregation tests)."""

import os


def by_rank(prompts, completions, **_):
    return [1.0 + 2.0 * int(os.environ.get("RANK", "0"))] * len(completions)


def length_bonus(prompts, completions, **_):
    return [0.01 * len(c) for c in completions]
