"""The experience of one PPO step, and its one owner.

:meth:`ExperienceMaker.make` goes from a step number to everything the update needs::

    1. prompts      this process's prompts of the step (data.PromptStream), each repeated for its group
    2. rollout      the rollout engine samples responses (rl.engines), seeded per step and process
    3. reward       decode the responses, score them (rewards.Reward), agree on a failure across processes
    4. scoring      old logprobs and values (policy), reference logprobs, in micro-batches; then gather
    5. shaping      scores post-processed on the global batch (EOS penalty, scale, normalise, clip)
    6. advantages   token rewards (score + per-token KL penalty) -> the estimator (algos.ADVANTAGE_ESTIMATORS)

:meth:`ExperienceMaker.from_rollout` runs steps 4-6 on a rollout and scores from elsewhere (the legacy
``PPOTrainer.step``). Everything after the gather (4) is computed on the global batch, identically on
every process, so running statistics and advantages do not depend on the number of processes.

The result is one :class:`Experience`; the update (:mod:`.update`) and the tracker both take it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from .. import algos
from ..config import BatchPlan, Config
from ..data import PromptStream
from ..rewards import Reward, RewardError, RewardNormalizer
from ..runtime import distributed
from .batching import equal_counts, plan_micro_batches
from .engines import RolloutEngine, Sampling, agreed
from .roles import Policy, Reference
from .rollout import Rollout, decode_responses, ends_with_eos
from .sampling import GatheredRound, Sampled, choose_groups, local_share

logger = logging.getLogger(__name__)


@dataclass
class Experience:
    """One step's experience on the global batch: every tensor is ``(B, ...)`` on every process, in
    the global sample order (process ``r`` sampled ``[r * local, (r + 1) * local)``)."""

    step: int  # 1-based PPO step this experience is for
    rollout: Rollout  # gathered
    logprobs: torch.Tensor | None  # (B, T) old logprobs; None until the update fills them (on-policy shortcut)
    ref_logprobs: torch.Tensor | None  # (B, T); None without a reference (ppo.kl_coef = 0)
    values: torch.Tensor | None  # (B, T); None without a critic
    scores: torch.Tensor  # (B,) after post-processing (EOS penalty, scale, normalisation, clip); 0 where invalid
    raw_scores: torch.Tensor  # (B,) as the reward functions returned them; NaN where invalid
    valid: torch.Tensor  # (B,) bool: samples with a reward: advantages, baselines and statistics use them
    finished: torch.Tensor  # (B,) bool: the response ended with EOS
    group: torch.Tensor  # (B,) long: samples of the same prompt share an id
    advantages: torch.Tensor  # (B, T)
    returns: torch.Tensor  # (B, T)
    non_score_rewards: torch.Tensor  # (B, T): the per-token KL penalty (0 when the KL is not in the reward)
    kl_coef: float  # the KL coefficient of this step (rewards and loss)
    trained: torch.Tensor | None = None  # (B,) bool: samples in the loss (valid, less truncated ones with
    # rollout.mask_truncated); None = the valid ones
    samples: dict = field(default_factory=dict)  # this process's prompts, completions and rewards (make only)
    extra_stats: dict[str, torch.Tensor | float] = field(default_factory=dict)  # reward components, sampling
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def response_mask(self) -> torch.Tensor:
        """Valid response tokens of valid samples, ``(B, T)``."""
        return self.rollout.response_mask * self.valid.unsqueeze(1)

    @property
    def loss_mask(self) -> torch.Tensor:
        """Response tokens that enter the loss, ``(B, T)``."""
        trained = self.valid if self.trained is None else self.trained
        return self.rollout.response_mask * trained.unsqueeze(1)

    def histograms(self) -> dict[str, torch.Tensor]:
        """TensorBoard histograms of the global batch."""
        return {
            "env/reward_dist": self.raw_scores[self.valid],
            "tokens/responses_len_dist": self.response_mask.sum(1)[self.valid],
        }

    def sample_table(self) -> dict[str, list]:
        """This process's samples as table columns (prompt, completion, reward)."""
        return {k: v.tolist() if isinstance(v, torch.Tensor) else list(v) for k, v in self.samples.items()}


def score_agreed(accelerator, reward: Reward, step: int, prompts: list[str], completions: list[str], columns: dict):
    """The reward's components of this process's samples; a failure on any process raises on all."""
    error = components = None
    try:
        components = reward(prompts, completions, **columns)
    except RewardError as e:
        error = e
        if "completion" not in str(e):
            error = RewardError(f"{e} (first completion of the batch: {completions[0][:80]!r})")
    failures = distributed.failures_everywhere(accelerator, error)
    if failures is not None:  # every process raises the same, full message
        failed = "; ".join(f"process {rank}: {m}" for rank, m in enumerate(failures) if m)
        raise RewardError(f"reward failed at step {step} on {failed}") from error
    return components


class ExperienceMaker:
    """Owns a step's experience: the prompt stream, the rollout engine and the reward (for
    :meth:`make`), the policy and reference roles (scoring), and the reward shaping state (score
    normaliser, KL controller)."""

    def __init__(
        self,
        cfg: Config,
        accelerator,
        policy: Policy,
        reference: Reference | None,
        tokenizer,
        plan: BatchPlan,
        *,
        prompts: PromptStream | None = None,
        engine: RolloutEngine | None = None,
        reward: Reward | None = None,
    ):
        self.cfg, self.accelerator, self.plan, self.tokenizer = cfg, accelerator, plan, tokenizer
        self.policy, self.reference = policy, reference
        self.prompts, self.engine, self.reward = prompts, engine, reward
        p = cfg.ppo
        if algos.ADVANTAGE_ESTIMATORS[p.advantage_estimator].needs_critic and not policy.has_critic:
            raise ValueError(f"ppo.advantage_estimator={p.advantage_estimator} needs a value head on the policy")
        self.kl_in_reward = reference is not None and p.kl_placement == "reward"
        # One optimiser step per rollout and nothing to compute before it: the update's own forward
        # gives the old logprobs (the ratio is 1 at that step), so the separate pass is skipped.
        self.on_policy_shortcut = p.on_policy_shortcut and (
            p.ppo_epochs == 1 and plan.num_mini_batches == 1 and not policy.has_critic and not self.kl_in_reward
        )
        kl_ctl = algos.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.adaptive_kl else None
        self.kl_ctl = kl_ctl or algos.FixedKLController(p.kl_coef)
        self.normalizer = RewardNormalizer.from_config(cfg.reward, cfg.rollout.max_new_tokens)
        self.sampling = Sampling.from_config(cfg.rollout, tokenizer)
        self.skipped_samples = 0
        self.prompt_position = 0  # prompts drawn by dynamic sampling (which runs past the steps' own slices)

    # ------------------------------------------------------------------ 1-3. prompts, rollout, reward

    def make(self, step: int) -> Experience:
        """The experience of PPO step ``step`` (1-based): this process samples and scores its share.

        With ``rollout.dynamic_sampling`` the step samples further batches of prompts until
        ``rollout.batch_size`` groups have rewards that differ (:mod:`.sampling`)."""
        if self.prompts is None or self.engine is None or self.reward is None:
            raise RuntimeError("make() needs the prompt stream, rollout engine and reward it was built without")
        if self.cfg.rollout.dynamic_sampling:
            sampled, stats = self._sample_informative(step)
        else:
            sampled, stats = self._sample(step, (step - 1) * self.plan.num_prompts), {}
        experience = self.from_rollout(
            sampled.rollout, sampled.components["score"], sampled.components.get("valid"), step=step,
            trained=sampled.trained,
        )  # fmt: skip
        experience.timings = {**sampled.timings, **experience.timings}
        experience.samples = {
            "prompt": sampled.prompts,
            "completion": sampled.completions,
            "reward": sampled.components["score"],
        }
        experience.extra_stats = {**self._component_means(sampled.components), **stats}
        return experience

    def _sample(self, step: int, position: int, round_: int = 0) -> Sampled:
        """This process's share of the ``rollout.batch_size`` prompts from stream ``position`` on:
        sampled (seeded by step, process and round) and scored."""
        acc = self.accelerator
        batch = self.prompts.local_batch_at(
            position, acc.process_index, acc.num_processes, self.plan.n_samples_per_prompt
        )
        t0 = time.perf_counter()
        seed_parts = (self.cfg.train.seed, step - 1, acc.process_index) + ((round_,) if round_ else ())
        first = acc.process_index * len(batch.input_ids)  # global index of this process's first sample
        sample_seeds = tuple(
            distributed.seed_for(self.cfg.train.seed, step - 1, -1 - round_, first + i)
            for i in range(len(batch.input_ids))
        )
        sampling = self.sampling.with_seed(distributed.seed_for(*seed_parts), step=step, sample_seeds=sample_seeds)
        rollout = agreed(acc, self.engine.generate, batch.input_ids, sampling)
        timings = {"time/rollout": time.perf_counter() - t0}
        t0 = time.perf_counter()
        completions = self.decode(rollout)
        components = self._score(step, batch.texts, completions, batch.columns)
        timings["time/reward"] = time.perf_counter() - t0
        return Sampled(batch.texts, rollout, completions, components, timings)

    def _sample_informative(self, step: int) -> tuple[Sampled, dict[str, float]]:
        """Dynamic sampling (DAPO, Yu et al. 2025, sec. 3.2): whole batches of further prompts until
        ``rollout.batch_size`` groups have rewards that are not all equal (a group whose rewards tie has
        zero advantage, so no gradient), at most ``rollout.max_sampling_rounds`` batches. The groups are
        chosen on the gathered rewards, identically on every process; when too few are found, the
        batch is filled with tied groups that stay out of the loss, and a warning says so."""
        acc, plan, r = self.accelerator, self.plan, self.cfg.rollout
        rounds: list[GatheredRound] = []
        for round_ in range(r.max_sampling_rounds):
            position = self.prompt_position
            sampled = self._sample(step, position, round_)
            self.prompt_position += plan.num_prompts
            pad = self.tokenizer.pad_token_id
            rounds.append(GatheredRound.of(acc, sampled, self.prompts, position, plan.n_samples_per_prompt, pad))
            if sum(int(g.informative.sum()) for g in rounds) >= plan.num_prompts:
                break
        chosen, informative = choose_groups(rounds, plan.num_prompts)
        if informative < plan.num_prompts:
            logger.warning(
                "dynamic sampling at step %d: %d of %d groups have rewards that differ after %d rounds "
                "(rollout.max_sampling_rounds); training on those, the other %d groups stay out of the loss",
                step, informative, plan.num_prompts, len(rounds), plan.num_prompts - informative,
            )  # fmt: skip
        local = local_share(rounds, chosen, informative, acc.process_index, acc.num_processes, self.tokenizer)
        local.timings = {k: sum(g.timings[k] for g in rounds) for k in rounds[0].timings}
        stats = {
            "rollout/sampling_rounds": float(len(rounds)),
            "rollout/zero_std_groups": float(sum(int((~g.informative).sum()) for g in rounds)),
            "rollout/informative_groups": float(informative),
            # every response sampled this step, tied groups included (env/reward_mean is over the trained ones)
            "rollout/sampled_reward_mean": torch.cat(
                [g.components["score"][g.components["valid"]] for g in rounds]
            ).mean(),
        }
        return local, stats

    def decode(self, rollout: Rollout) -> list[str]:
        return decode_responses(self.tokenizer, rollout)

    def _score(self, step: int, prompts: list[str], completions: list[str], columns: dict) -> dict:
        return score_agreed(self.accelerator, self.reward, step, prompts, completions, columns)

    def _component_means(self, components: dict) -> dict[str, torch.Tensor]:
        """``env/reward/<name>``: the global mean of each reward function's values (with several)."""
        names = [k for k in components if k not in ("score", "valid")]
        if len(names) < 2:  # one function: its value is the score
            return {}
        acc = self.accelerator
        local = torch.stack([components[k].float() for k in names], dim=1).to(acc.device)  # (B_local, n)
        means = distributed.gather_1d(acc, local).nanmean(0)
        return {f"env/reward/{k}": means[i] for i, k in enumerate(names)}

    # ------------------------------------------------------------------ 4-6. scoring, shaping, advantages

    @torch.no_grad()
    def from_rollout(
        self,
        rollout: Rollout,
        scores: torch.Tensor,
        valid: torch.Tensor | None = None,
        *,
        step: int,
        trained: torch.Tensor | None = None,
    ) -> Experience:
        """Steps 4-6 on this process's ``rollout`` and ``scores`` ``(B_local,)``; ``valid`` marks the
        samples that take part (``reward.on_invalid: skip_sample``: the others get an empty response
        mask); ``trained`` (default: all) the samples that enter the loss."""
        t0 = time.perf_counter()
        exp = self._gather_scored(rollout, scores, valid, step, trained)
        t1 = time.perf_counter()
        exp.advantages, exp.returns, exp.non_score_rewards = self._advantages(exp)
        exp.timings = {"time/logprobs": t1 - t0, "time/advantages": time.perf_counter() - t1}
        return exp

    def _micro_batches(self, rollout: Rollout) -> list[torch.Tensor]:
        r = self.cfg.rollout
        q_len, r_len = rollout.lengths()
        micro = plan_micro_batches(
            q_len, r_len, max_samples=r.forward_batch_size, max_tokens=r.forward_tokens, packed=self.cfg.ppo.packing
        )
        return equal_counts(self.accelerator, micro)

    def _gather_scored(self, rollout: Rollout, scores, valid, step: int, trained) -> Experience:
        """Logprob/value passes on this process's samples, then the global batch (advantages to come)."""
        acc = self.accelerator
        micro = self._micro_batches(rollout)
        logprobs = values = ref_logprobs = None
        self.policy.model.eval()
        with acc.autocast():
            if not self.on_policy_shortcut:
                logprobs, values = self.policy.logprobs_and_values(rollout, micro)
            if self.reference is not None:
                ref_logprobs = self.reference.logprobs(rollout, micro)
        pad = self.tokenizer.pad_token_id

        def gather(t, value=0, first=False):
            return None if t is None else distributed.gather_padded(acc, t, value, first)

        valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.bool()
        raw = distributed.gather_1d(acc, scores.to(acc.device).float())
        valid = distributed.gather_1d(acc, valid.to(acc.device))
        finished = ends_with_eos(rollout.responses, rollout.response_mask, self.tokenizer.eos_token_id)
        finished = distributed.gather_1d(acc, finished.to(acc.device))
        lengths = distributed.gather_1d(acc, rollout.response_mask.sum(1).to(acc.device))
        processed = torch.where(valid, self.normalizer(raw, finished, lengths), torch.zeros_like(raw))
        self.skipped_samples += int((~valid).sum())
        gathered = Rollout(
            gather(rollout.queries, pad, True),
            gather(rollout.query_mask, 0, True),
            gather(rollout.responses, pad),
            gather(rollout.response_mask),
            gather(rollout.engine_logprobs),
        )
        # Process r holds global samples [r * local, (r + 1) * local): the gathered order is global.
        group = torch.arange(len(raw), device=raw.device) // self.plan.n_samples_per_prompt
        empty = torch.zeros(0)
        return Experience(
            step=step,
            rollout=gathered,
            logprobs=gather(logprobs),
            ref_logprobs=gather(ref_logprobs),
            values=gather(values),
            scores=processed,
            raw_scores=raw,
            valid=valid,
            finished=finished,
            group=group,
            advantages=empty,
            returns=empty,
            non_score_rewards=empty,
            kl_coef=self.kl_ctl.value,
            trained=self._trained(valid, finished, trained),
        )

    def _trained(self, valid: torch.Tensor, finished: torch.Tensor, trained: torch.Tensor | None):
        """Samples of the global batch that enter the loss, or None when they are the valid ones."""
        if trained is not None:
            valid = valid & distributed.gather_1d(self.accelerator, trained.to(self.accelerator.device).bool())
        if self.cfg.rollout.mask_truncated:
            return valid & finished
        return valid if trained is not None else None

    def kl(self, exp: Experience) -> torch.Tensor | None:
        """Per-token KL of the sampling policy to the reference (``ppo.kl_estimator``), 0 on padding."""
        if exp.ref_logprobs is None or exp.logprobs is None:
            return None
        return algos.kl_penalty(exp.logprobs, exp.ref_logprobs, self.cfg.ppo.kl_estimator) * exp.response_mask

    def _advantages(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(advantages, returns, non_score_rewards)``, each ``(B, T)``, on the global batch."""
        p = self.cfg.ppo
        mask = exp.response_mask.float()
        rewards, non_score = algos.token_rewards(
            exp.scores, self.kl(exp) if self.kl_in_reward else None, mask, exp.kl_coef
        )
        if p.whiten_rewards:
            rewards = algos.masked_whiten(rewards, mask, shift_mean=False)
        inputs = algos.AdvantageInputs(
            scores=exp.scores,
            token_rewards=rewards,
            mask=mask,
            group=exp.group,
            valid=exp.valid,
            values=exp.values,
            gamma=p.gamma,
            lam=p.lam,
            whiten=p.whiten_advantages,
            scale=p.scale_rewards,
        )
        advantages, returns = algos.compute_advantages(p.advantage_estimator, inputs)
        return advantages.detach(), returns.detach(), non_score

    # ------------------------------------------------------------------ statistics and KL control

    def statistics(self, exp: Experience) -> dict[str, torch.Tensor | float]:
        """Statistics of the experience (after the update, which may have filled the logprobs): 0-d
        tensors, which the caller turns into floats with the update's in one host sync, and floats."""
        mask = exp.response_mask.float()
        q_len = exp.rollout.query_mask.sum(1).float()
        r_len = exp.rollout.response_mask.sum(1).float()
        s = exp.raw_scores[exp.valid]
        if s.numel() == 0:
            raise RewardError(f"every sample of step {exp.step} was invalid (reward.on_invalid=skip_sample)")
        zero_ = torch.zeros((), device=s.device)
        values = {
            "env/reward_mean": s.mean(),
            "env/reward_std": s.std() if s.numel() > 1 else zero_,
            "env/reward_min": s.min(),
            "env/reward_max": s.max(),
            "env/score_mean": exp.scores[exp.valid].mean(),
            "objective/entropy": (-exp.logprobs * mask).sum(1)[exp.valid].mean(),
            "ppo/mean_scores": exp.scores[exp.valid].mean(),
            "ppo/returns/mean": algos.masked_mean(exp.returns, mask),
            "ppo/returns/var": algos.masked_var(exp.returns, mask),
            "ppo/advantages/mean": algos.masked_mean(exp.advantages, mask),
            "tokens/queries_len_mean": q_len.mean(),
            "tokens/responses_len_mean": r_len.mean(),
            "tokens/responses_finished_frac": exp.finished.float().mean(),
            **exp.extra_stats,
        }
        kl = self.kl(exp)
        if kl is not None:
            values["objective/kl"] = kl.sum(1)[exp.valid].mean()
        if self.kl_in_reward:
            values["ppo/mean_non_score_reward"] = exp.non_score_rewards.sum(1)[exp.valid].mean()
        if exp.values is not None:
            values["ppo/val/explained_var"] = algos.explained_variance(exp.values, exp.returns, mask)
        if self.plan.n_samples_per_prompt > 1:
            _, std, count = algos.group_stats(exp.raw_scores.nan_to_num(), exp.group, exp.valid)
            first = torch.ones_like(exp.group, dtype=torch.bool)
            first[1:] = exp.group[1:] != exp.group[:-1]  # one entry per group (groups are contiguous)
            groups = first & (count > 1)
            values["env/group_reward_std_mean"] = std[groups].mean() if groups.any() else zero_
            values["env/zero_std_group_frac"] = (std[groups] == 0).float().mean() if groups.any() else zero_
        if exp.rollout.engine_logprobs is not None:
            values.update(self._engine_statistics(exp, mask))
        if self.cfg.rollout.mask_truncated:
            values["rollout/truncated_masked_frac"] = (exp.valid & ~exp.finished).float().mean()
        if self.reference is not None:
            values["objective/kl_coef"] = exp.kl_coef
        values["env/skipped_samples"] = float(self.skipped_samples)
        return values

    def _engine_statistics(self, exp: Experience, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """How far the engine's sampler was from the trainer's old policy (its own forward on the same
        weights): |logprob difference| per token, and the importance weights the correction uses."""
        r = self.cfg.rollout
        engine = exp.rollout.engine_logprobs
        valid = mask > 0
        diff = (exp.logprobs - engine).abs()
        weights, ratio = algos.engine_is_weights(
            exp.logprobs, engine, mask, r.engine_correction, r.engine_correction_cap, r.engine_correction_level
        )
        zero_ = torch.zeros((), device=mask.device)
        values = {
            "rollout/engine_logprob_diff_mean": algos.masked_mean(diff, mask),
            "rollout/engine_logprob_diff_max": diff[valid].max() if valid.any() else zero_,
            "rollout/is_ratio_mean": algos.masked_mean(ratio, mask),
            "rollout/is_ratio_max": ratio[valid].max() if valid.any() else zero_,
        }
        if r.engine_correction == "tis":
            values["rollout/is_capped_frac"] = algos.masked_mean((ratio > r.engine_correction_cap).float(), mask)
        if r.engine_correction == "mis":
            values["rollout/is_masked_frac"] = algos.masked_mean((weights == 0).float(), mask)
        return values

    def observe(self, stats: dict[str, float]) -> None:
        """After the update: the adaptive KL controller sees the step's KL (a bad step's is ignored)."""
        kl = stats.get("objective/kl")
        if kl is not None and math.isfinite(kl):  # a bad step must not poison the coefficient
            self.kl_ctl.update(kl, self.plan.batch_size)

    def state_dict(self) -> dict:
        return {
            "kl_ctl": self.kl_ctl.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "skipped_samples": self.skipped_samples,
            "prompt_position": self.prompt_position,
        }

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.skipped_samples = int(state["skipped_samples"])
        self.prompt_position = int(state.get("prompt_position", 0))  # checkpoints from before dynamic sampling
