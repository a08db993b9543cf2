"""Rewards: functions and their loading (:mod:`.sources`, :mod:`.builtin`), the reward model
(:mod:`.model`), the HTTP client (:mod:`.http`), safe calling and validation (:mod:`.safety`), their
weighted sum (:mod:`.reward`) and score post-processing on the global batch (:mod:`.normalizer`).

Data flow (one PPO step)::

    reward = build_reward(cfg.reward)                         # once, on every process
    components = reward(local_prompts, local_completions, **local_columns)   # per process, local shard
    scores = gather(components["score"]); finished = gather(local_finished)  # rl.experience
    scores = normalizer(scores, finished)                     # RewardNormalizer, on the global batch

``reward.functions`` entries (each becomes one component, keyed by a short unique display name):

  ``chinese_rule`` | ``length`` | ``contains_any``   built-ins below; their parameters are reward.* fields
                                                     (``length`` -> ``reward.length_target``,
                                                     ``contains_any`` -> ``reward.words``); no columns
  ``package.module:function``                        imported with importlib          (name: ``function``)
  ``path/to/file.py:function``                       loaded from the file (relative to the working dir)
  ``reward_model``                                   ``RewardModelScorer`` on ``reward.model_path``
  ``http``                                           ``HttpReward`` on ``reward.url``
  ``http://host:port/path`` / ``https://...``        ``HttpReward`` on that URL       (name: ``http``)

Repeated display names get ``_2``, ``_3`` ... (``score`` and ``valid`` are reserved).
``build_reward`` also takes Python callables in the list (programmatic use; name: ``fn.__name__``).

Calling convention of a user function: ``fn(prompts, completions, **columns) -> list[float]`` with
one value per completion; ``columns`` are the other dataset columns (lists, one entry per sample).
A function without ``**kwargs`` receives only the columns its signature names. A function with
exactly one positional parameter and no ``**kwargs`` is the legacy form ``fn(texts)`` and receives
the completions only. ``async def`` functions (or functions returning an awaitable) are run to
completion with ``asyncio.run`` in the call's worker thread. Values may be a list/tuple, a tensor or
an array; each must be a real number (``bool`` is not accepted) that is finite in float32.

Time limits: every user-function, built-in and HTTP call runs in a fresh daemon thread and is waited
for at most ``reward.timeout`` seconds; past that, ``RewardError`` is raised and the thread is
abandoned (Python cannot kill a thread: it keeps running in the background until it returns, and,
being a daemon, never keeps the process alive). ``reward_model`` runs in the calling thread instead:
it is a local forward pass (a full copy of the model on every process, also under ZeRO), bounded by
the compute itself.

Loading failures (a file, module, function or reward model that does not exist, a module that
raises on import) are ``RewardSpecError``: a ``RewardError`` and a ``ConfigError``, raised by
``build_reward`` before any call, so that ``train.py`` reports them as ``config error:`` before the
policy loads.

Call failures (``RewardError``, message names the function; for bad values also the sample index and the
start of the completion):

  * call-level: the function raised, timed out, returned a non-list or the wrong number of values.
    Always raised, whatever ``reward.on_invalid`` says: such a failure says nothing about a sample.
  * value-level: NaN, +-inf, ``None``, a non-number. ``reward.on_invalid``:
      ``error`` (default): raised.
      ``skip_sample``: the value becomes NaN in its component and in ``"score"``, a warning is logged,
      and the returned dict carries ``"valid"``: a bool ``(B,)`` tensor, False for those samples. The
      experience (:mod:`ppo_dist.rl.experience`) drops invalid samples from the update and counts them.
      ``"valid"`` is present in every call in this mode (all True when nothing was invalid), so all
      processes return the same keys.

All functions are called even after one has failed, and the failures are raised together at the end,
so one message names every function that failed. Agreeing on a failure across processes is not this
package's job: :mod:`ppo_dist.rl.experience` shares every rank's error and all of them raise it.
"""

from .builtin import BUILTIN_REWARDS, POSITIVE_WORDS, chinese_rule, contains_any, length
from .errors import RewardError, RewardSpecError, RewardTimeoutError
from .http import HttpReward
from .model import RewardModelScorer
from .normalizer import RewardNormalizer
from .reward import Reward, build_reward
from .safety import validate_rewards
from .sources import RewardSource, load_reward_fn

__all__ = [
    "BUILTIN_REWARDS",
    "POSITIVE_WORDS",
    "HttpReward",
    "Reward",
    "RewardError",
    "RewardModelScorer",
    "RewardNormalizer",
    "RewardSource",
    "RewardSpecError",
    "RewardTimeoutError",
    "build_reward",
    "chinese_rule",
    "contains_any",
    "length",
    "load_reward_fn",
    "validate_rewards",
]
