"""GRPO-DT: online finetuning of a Decision Transformer with GRPO on sub-trajectories (paper Algorithm 1).

    dtrl finetune --algo grpo --task hopper-random --init runs/pretrain-hopper-random --preset cpu

One iteration, in the order of Algorithm 1 (line numbers in the comments below):

  2  roll out ``trajectories_per_iteration`` full episodes with the current policy, conditioned on the
     online target RTG, recording env snapshots; push them into a FIFO buffer of full trajectories.
  3  sample ``trajectories_per_batch`` of them with p(τ) ∝ |τ|.
  5  in each, sample K reset points from softmax(per-step action variance) (active sampling).
  6  from each reset point, restore G env copies to that exact state and roll out G sub-trajectories
     of L_traj sampled steps, then L_eval mean-action steps; score = discounted return of all of them.
  7  advantages by Eq. (2) inside each group, groups whose scores deviate less than ε_GRPO dropped.
  8  push (sub-trajectory, advantage) pairs into a FIFO sub-trajectory buffer.
  9  a few epochs of minibatch updates of the clipped surrogate with the sequence-level ratio, Eq. (3).

No hindsight relabeling: a sub-trajectory is trained with exactly the RTG tokens it was sampled with
(the RTG at the reset point, decreased by rewards received), and its log-probs are recomputed with the
same context (``model.receptive_field`` steps of history before the reset point), so the importance
ratio of a fresh sub-trajectory is exactly 1 before the first update.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dtrl import objectives
from dtrl.algos.dt_finetune import (
    build_dt_optimizers,
    dt_video,
    evaluate_dt_policy,
    online_targets,
    optimizer_step,
    prepare_policy,
    saved_dt_policy,
    segment_history_length,
    temperature_step,
)
from dtrl.algos.grpo_config import PRESETS, GRPOConfig, cpu_preset, paper_preset, paper_small_preset
from dtrl.algos.run_loop import (
    RunLoop,
    StageTimer,
    episode_seeds,
    evaluate_policy,
    scheduled_learning_rate,
    set_learning_rate,
)
from dtrl.config import parse_config, resolve_device
from dtrl.data import sample_proportional_to_length
from dtrl.envs import BatchedEnv
from dtrl.errors import DtrlError
from dtrl.rollout import Segment, TokenHistory, rollout_episodes, rollout_from_snapshots, segments_to_batch
from dtrl.runs import seed_everything
from dtrl.tasks import get_task

# the config and presets (dtrl.algos.grpo_config) are part of this module's interface
__all__ = ["ALGO", "PRESETS", "GRPOConfig", "cpu_preset", "main", "paper_preset", "paper_small_preset", "parse",
           "train"]

ALGO = "grpo"

# ----------------------------------------------------------------------------------------------
# the pieces of one iteration


@dataclass
class GroupBatch:
    """The output of lines 5-7 for one iteration: sub-trajectories, their scores and advantages."""

    segments: list
    """[N*G] dtrl.rollout.Segment, group-major (members of group n are n*G .. n*G+G-1)"""
    scores: np.ndarray
    """[N, G] discounted returns over L_traj + L_eval steps"""
    advantages: np.ndarray
    """[N, G] Eq. (2) advantages (0 in dropped groups)"""
    valid: np.ndarray
    """[N] bool: the group passed the ε_GRPO rule"""
    env_steps: int
    """env steps spent rolling the groups out"""
    branch_rewards: list
    """[N*G] each member's rewards from its reset point to the end of what was rolled out (L_traj +
    L_eval steps, or the whole episode in full-trajectory mode): the hindsight relabeling ablation's
    achieved returns"""


def reset_distribution(trajectory, uniform: bool, temperature: float, variance: str = "pre_tanh") -> np.ndarray:
    """Line 5's distribution over the steps of ``trajectory``: softmax(action variance / temperature),
    or uniform. ``variance='current'`` reads ``trajectory.current_variance`` (``with_current_variance``)."""
    if uniform:  # no variance is read (nor, for 'current', computed)
        recorded = np.zeros(len(trajectory.action_variance))
    else:
        recorded = {"pre_tanh": trajectory.action_variance,
                    "squashed": getattr(trajectory, "squashed_action_variance", None),
                    "current": getattr(trajectory, "current_variance", None)}[variance]
    if recorded is None and variance == "current":
        raise ValueError("active_sampling_variance='current' needs the trajectory from with_current_variance")
    if recorded is None:
        raise DtrlError("this trajectory was recorded without squashed action variances (an older checkpoint): "
                        "resume it with --active-sampling-variance pre_tanh")
    variances = torch.as_tensor(recorded, dtype=torch.float64)
    probs = objectives.active_sampling_probs(variances, temperature=temperature, uniform=uniform).numpy()
    return probs / probs.sum()


def reset_entropy(trajectories: list, config: GRPOConfig) -> float:
    """Mean entropy of the reset-point distributions of ``trajectories`` relative to uniform's (1:
    uniform over the steps, 0: one step certain): how sharply active sampling concentrates."""
    ratios = []
    for trajectory in trajectories:
        probs = reset_distribution(trajectory, config.reset_sampling == "uniform", config.active_sampling_temperature,
                                   config.active_sampling_variance)
        if len(probs) > 1:
            ratios.append(float(-(probs * np.log(np.clip(probs, 1e-300, None))).sum() / np.log(len(probs))))
    return float(np.mean(ratios)) if ratios else 1.0


def sample_reset_points(trajectory, count: int, rng: np.random.Generator, uniform: bool,
                        temperature: float, variance: str = "pre_tanh") -> np.ndarray:
    """Line 5: ``count`` distinct steps of ``trajectory`` (fewer distinct ones if it is shorter) drawn
    from softmax(action variance / temperature), or uniformly."""
    probs = reset_distribution(trajectory, uniform, temperature, variance)
    replace = count > len(probs)
    return np.sort(rng.choice(len(probs), size=count, replace=replace, p=probs))


def branch_starts(trajectories: list, config: GRPOConfig, history_length: int, rng: np.random.Generator) -> list:
    """Lines 4-5: the G starts of every group, group-major. With ``consistent_group_states`` a
    group is G copies of one reset point; without it each member has its own reset point."""
    per_group = 1 if config.consistent_group_states else config.group_size
    starts = []
    for trajectory in trajectories:
        points = sample_reset_points(trajectory, config.reset_points_per_trajectory * per_group, rng,
                                     uniform=config.reset_sampling == "uniform",
                                     temperature=config.active_sampling_temperature,
                                     variance=config.active_sampling_variance)
        if not config.consistent_group_states:
            rng.shuffle(points)  # members of a group come from unrelated steps
        for k in range(config.reset_points_per_trajectory):
            if config.consistent_group_states:
                start = trajectory.branch_start(int(points[k]), history_length)
                starts.extend([start] * config.group_size)
            else:
                for t in points[k * per_group:(k + 1) * per_group]:
                    starts.append(trajectory.branch_start(int(t), history_length))
    return starts


def rollout_groups(policy, envs, starts: list, config: GRPOConfig, gamma: float,
                   device) -> tuple[list, np.ndarray, list, int]:
    """Line 6: every start rolled out for L_traj sampled + L_eval mean steps, in chunks of whole
    groups no larger than the env batch. Returns (segments, scores [len(starts)], each branch's
    rewards, env steps)."""
    groups_per_chunk = max(1, envs.num_envs // config.group_size)
    chunk = groups_per_chunk * config.group_size
    segments: list = []
    scores: list[np.ndarray] = []
    branch_rewards: list[np.ndarray] = []
    env_steps = 0
    for begin in range(0, len(starts), chunk):
        result = rollout_from_snapshots(policy, envs, starts[begin:begin + chunk], config.sub_trajectory_length,
                                        config.eval_steps, gamma, device=device, context_length=config.context_length)
        segments.extend(result.segments)
        scores.append(result.scores)
        branch_rewards.extend(rewards[:length] for rewards, length in zip(result.step_rewards, result.lengths))
        env_steps += result.env_steps
    return segments, np.concatenate(scores), branch_rewards, env_steps


def full_trajectory_groups(policy, envs, task, config: GRPOConfig, target_rtg: float, gamma: float,
                           seeds: list[int], device) -> GroupBatch:
    """Ablation (Fig. 1b), naive GRPO: each group is G whole episodes from one reset seed (one initial
    state), scored by their discounted return and trained on from the first step (no history)."""
    group_seeds = [seed for seed in seeds for _ in range(config.group_size)]  # group-major
    episodes = rollout_episodes(policy, envs, task, target_rtg, group_seeds, mode="sample", device=device,
                                context_length=config.context_length)
    segments, scores = [], []
    for ep in episodes:
        empty = TokenHistory.empty(ep.observations.shape[1], ep.actions.shape[1])
        segments.append(Segment(empty, ep.observations, ep.actions, ep.returns_to_go, ep.timesteps,
                                ep.log_probs, ep.rewards))
        scores.append(float(objectives.discounted_return(torch.as_tensor(ep.rewards, dtype=torch.float64), gamma)))
    env_steps = sum(len(ep) for ep in episodes)
    return group_batch(segments, np.asarray(scores).reshape(len(seeds), config.group_size), config, env_steps,
                       [ep.rewards.astype(np.float64) for ep in episodes])


def group_batch(segments: list, scores: np.ndarray, config: GRPOConfig, env_steps: int,
                branch_rewards: list) -> GroupBatch:
    """Line 7: Eq. (2) within each group with the ε_GRPO rule."""
    advantages, valid = objectives.group_advantages(
        torch.as_tensor(scores, dtype=torch.float64), min_std=config.advantage_std_floor,
        min_deviation=config.min_group_deviation, deviation_rule=config.deviation_rule,
    )
    return GroupBatch(segments, scores, advantages.numpy(), valid.numpy(), env_steps, branch_rewards)


def relabel_with_achieved_return(segment, branch_rewards: np.ndarray):
    """Ablation (Fig. 1a): hindsight relabeling of a sub-trajectory's RTG tokens, as ODT relabels.

    The RTG token of segment step j becomes the undiscounted return the branch achieved from j on,
    ``sum(branch_rewards[j:])`` (ODT's g_t = Σ_{t' >= t} r_t'; a branch is observed for L_traj +
    L_eval steps, or to its episode's end); the history tokens before the reset point are shifted
    by the same amount as the first segment token, which is what relabeling the whole trajectory
    gives them. The sampling-time log-probs are kept: they were computed with the original RTGs,
    which is exactly the mismatch the paper's Section 3.1 describes.
    """
    rewards = np.asarray(branch_rewards, np.float64)
    achieved = np.cumsum(rewards[::-1])[::-1][:len(segment)]  # return-to-go from each segment step
    shift = achieved[0] - float(segment.returns_to_go[0]) if len(segment) else 0.0
    history = segment.history
    history = TokenHistory(history.observations, history.actions,
                           (history.returns_to_go + shift).astype(np.float32), history.timesteps)
    return dataclasses.replace(segment, history=history, returns_to_go=achieved.astype(np.float32))


def sub_buffer_capacity(config: GRPOConfig) -> int:
    """T_sub's capacity. In full-trajectory mode (Fig. 1b) it holds as many *iterations* of data as the
    sub-trajectory mode does (the paper: 2048 / 512 = 4), not 2048 whole episodes, which at G
    episodes per iteration would keep hundreds of iterations of stale episodes."""
    if not config.full_trajectories:
        return config.sub_trajectory_buffer_size
    per_iteration = config.trajectories_per_batch * config.reset_points_per_trajectory * config.group_size
    iterations_kept = max(1, round(config.sub_trajectory_buffer_size / per_iteration))
    return config.trajectories_per_iteration * config.group_size * iterations_kept


class SubTrajectoryBuffer:
    """T_sub (line 8): FIFO of (sub-trajectory, advantage, iteration it was sampled in); oldest dropped
    when full."""

    def __init__(self, capacity: int):
        self.items: deque = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, segment, advantage: float, iteration: int = 0) -> None:
        if len(segment):
            self.items.append((segment, float(advantage), int(iteration)))

    def state_dict(self) -> dict:
        return {"capacity": self.items.maxlen, "items": list(self.items)}

    def load_state_dict(self, state: dict) -> None:
        # checkpoints written before items carried their iteration hold (segment, advantage) pairs
        items = [item if len(item) == 3 else (*item, 0) for item in state["items"]]
        self.items = deque(items, maxlen=state["capacity"])


def policy_outputs(model, batch, context_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute log-probs [B, T] and entropy estimates [B, T] (0 outside ``train_mask``) of the batch's
    sub-trajectory steps, with the context they were sampled with (``SegmentBatch.step_distributions``)."""
    dist = batch.step_distributions(model, context_length)
    log_probs = torch.zeros(batch.train_mask.shape, dtype=dist.mu.dtype, device=batch.states.device)
    entropy = torch.zeros_like(log_probs)
    log_probs[batch.train_mask] = dist.log_prob(batch.train_actions())
    entropy[batch.train_mask] = dist.entropy()
    return log_probs, entropy


@torch.no_grad()
def with_current_variance(policy, trajectories: list, context_length: int | None, device) -> list:
    """The trajectories with ``current_variance``: each step's pre-tanh action variance under the
    policy as it is now, from the context the step was rolled out with."""
    updated = []
    for trajectory in trajectories:
        empty = TokenHistory.empty(trajectory.observations.shape[1], trajectory.actions.shape[1])
        whole = Segment(empty, trajectory.observations, trajectory.actions, trajectory.returns_to_go,
                        trajectory.timesteps, trajectory.log_probs, trajectory.rewards)
        batch = segments_to_batch([whole], policy.normalizer, policy.reward_scale, device=device)
        refreshed = dataclasses.replace(trajectory)  # a shallow copy: the buffer keeps the original
        variance = batch.step_distributions(policy.model, context_length).variance
        refreshed.current_variance = variance.float().cpu().numpy()
        updated.append(refreshed)
    return updated


def push_groups(sub_buffer: SubTrajectoryBuffer, groups: GroupBatch, config: GRPOConfig, iteration: int) -> None:
    """Line 8: the members of the groups that carry a signal enter T_sub with their advantages (FIFO)."""
    for n in np.flatnonzero(groups.valid):
        for i in range(config.group_size):
            index = n * config.group_size + i
            segment = groups.segments[index]
            if config.hindsight_relabel:
                segment = relabel_with_achieved_return(segment, groups.branch_rewards[index])
            sub_buffer.add(segment, groups.advantages[n, i], iteration)


def group_metrics(groups: GroupBatch, sub_buffer_size: int) -> dict[str, Any]:
    """What the iteration's groups looked like: scores, their spread, dropped groups, advantages."""
    valid_advantages = groups.advantages[groups.valid]
    return {
        "grpo/mean_group_score": float(groups.scores.mean()),
        "grpo/score_std_within_group": float(groups.scores.std(axis=1, ddof=1).mean()),
        "grpo/groups_total": int(len(groups.valid)),
        "grpo/groups_dropped": int((~groups.valid).sum()),
        "grpo/advantage_abs_mean": float(np.abs(valid_advantages).mean()) if valid_advantages.size else 0.0,
        "grpo/advantage_max": float(valid_advantages.max()) if valid_advantages.size else 0.0,
        "grpo/advantage_min": float(valid_advantages.min()) if valid_advantages.size else 0.0,
        "grpo/group_env_steps": int(groups.env_steps),
        "grpo/sub_buffer_size": sub_buffer_size,
    }


def make_envs(task, config: GRPOConfig) -> tuple[BatchedEnv, BatchedEnv]:
    """(the env copies groups are branched in, the env copies full trajectories are collected in)."""
    if config.full_trajectories:  # G copies per initial state, all episodes of an iteration at once
        branch_envs = BatchedEnv(task, config.trajectories_per_iteration * config.group_size,
                                 num_workers=config.num_workers, seed=config.seed,
                                 num_threads=config.env_threads)
    else:  # the iteration's groups, in chunks of at most max_parallel_branches (whole groups)
        branches = config.trajectories_per_batch * config.reset_points_per_trajectory * config.group_size
        branch_envs = BatchedEnv(task, min(branches, max(config.max_parallel_branches, config.group_size)),
                                 num_workers=config.num_workers, seed=config.seed,
                                 num_threads=config.env_threads)
    return branch_envs, BatchedEnv(task, config.trajectories_per_iteration, num_workers=0, seed=config.seed,
                                   num_threads=config.env_threads)


def average_of_weights(model, decay: float):
    """``torch.optim.swa_utils.AveragedModel`` keeping an EMA of ``model``'s parameters (None for
    decay 0). Its first update copies the weights; buffers are constant in a DT, so they are not averaged."""
    if decay <= 0:
        return None
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    averaged.update_parameters(model)  # start at the pretrained weights
    return averaged.eval()


# ages (iterations since a sub-trajectory was sampled) the diagnostics group T_sub's items by
AGE_BUCKETS = ((0, 0, "0"), (1, 1, "1"), (2, 3, "2-3"), (4, None, "4+"))


def update_policy(policy, sub_buffer: SubTrajectoryBuffer, optimizer, temperature_optimizer, config: GRPOConfig,
                  rng: np.random.Generator, device, iteration: int | None = None) -> dict:
    """Line 9: ``epochs`` passes over T_sub in random minibatches. Loss = clipped surrogate (at
    ``ratio_level``) + β·KL - α·entropy; α is then stepped towards the target entropy (ODT's rule).

    With ``iteration`` (the current one), the sub-trajectories' sequence-level ratios are also
    reported by age (``diagnostics/clipfrac_age*``: the fraction outside the clip range;
    ``diagnostics/abs_log_ratio_age*``): how much of T_sub old data the clip throws away."""
    model = policy.model
    items = list(sub_buffer.items)
    if config.old_log_probs == "refresh":
        items = refresh_log_probs(policy, items, config.minibatch_size, device, config.context_length)
    sums: dict[str, float] = {}
    age_sums: dict[str, list[float]] = {}
    updates = 0
    first_ratio_deviation = None
    for _ in range(config.epochs):
        order = rng.permutation(len(items))
        for begin in range(0, len(order), config.minibatch_size):
            chosen = [items[i] for i in order[begin:begin + config.minibatch_size]]
            batch = segments_to_batch([seg for seg, _, _ in chosen], policy.normalizer, policy.reward_scale,
                                      device=device)
            advantages = torch.tensor([adv for _, adv, _ in chosen], dtype=torch.float32, device=device)
            log_probs, entropy = policy_outputs(model, batch, config.context_length)
            logp_old = batch.log_probs_old
            surrogate = objectives.clipped_surrogate(log_probs, logp_old, advantages, batch.train_mask,
                                                     config.ratio_level, config.clip_eps, config.clip_eps_high)
            kl = objectives.approx_kl(log_probs, logp_old, batch.train_mask)
            mean_entropy = objectives.masked_mean(entropy, batch.train_mask)
            loss = surrogate + config.kl_beta * kl - model.temperature.detach() * mean_entropy
            grad_norm = optimizer_step(loss, optimizer, config.grad_clip)
            temperature_step(model, mean_entropy, temperature_optimizer)  # α towards entropy -dim(A)

            stats = objectives.surrogate_stats(log_probs.detach(), logp_old, batch.train_mask, config.ratio_level,
                                               config.clip_eps, config.clip_eps_high)
            if first_ratio_deviation is None:
                first_ratio_deviation = max(abs(stats.ratio_max - 1.0), abs(stats.ratio_min - 1.0))
            for key, value in (("losses/policy", surrogate.item()), ("losses/approx_kl", kl.item()),
                               ("losses/entropy", mean_entropy.item()), ("losses/clipfrac", stats.clip_fraction),
                               ("losses/ratio_mean", stats.ratio_mean), ("losses/grad_norm", float(grad_norm))):
                sums[key] = sums.get(key, 0.0) + value
            sums["losses/ratio_max"] = max(sums.get("losses/ratio_max", 0.0), stats.ratio_max)
            sums["losses/ratio_min"] = min(sums.get("losses/ratio_min", math.inf), stats.ratio_min)
            if iteration is not None:
                ages = np.array([iteration - sampled_in for _, _, sampled_in in chosen])
                accumulate_ratio_by_age(age_sums, log_probs.detach(), logp_old, batch.train_mask, ages, config)
            updates += 1
    if updates == 0:  # every group so far was dropped by the ε_GRPO rule: nothing to train on yet
        sums = {key: None for key in ("losses/policy", "losses/approx_kl", "losses/entropy", "losses/clipfrac",
                                      "losses/ratio_mean", "losses/grad_norm", "losses/ratio_max", "losses/ratio_min")}
    out: dict[str, Any] = {"updates": updates}
    for key, value in sums.items():
        out[key] = value if value is None or key in ("losses/ratio_max", "losses/ratio_min") else value / updates
    # max |ratio - 1| before the first step of this iteration: 0 up to float rounding in iteration 1
    # (only fresh sub-trajectories) and in every iteration with old_log_probs='refresh'
    out["losses/first_update_ratio_max_dev"] = first_ratio_deviation
    out.update({key: total / count for key, (total, count) in age_sums.items() if count})
    return out


def accumulate_ratio_by_age(age_sums: dict, log_probs: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor,
                            ages: np.ndarray, config: GRPOConfig) -> None:
    """Add one minibatch's sequence-level log-ratios, grouped by the age of their sub-trajectory, to
    ``age_sums`` (key -> [sum, count]): clipped fraction and mean |log ratio| per AGE_BUCKETS."""
    log_ratio = objectives.log_importance_ratio(log_probs, logp_old, mask, "sequence").cpu().numpy()
    high = config.clip_eps if config.clip_eps_high is None else config.clip_eps_high
    clipped = (log_ratio < math.log1p(-min(config.clip_eps, 1 - 1e-12))) | (log_ratio > math.log1p(high))
    for low, top, name in AGE_BUCKETS:
        rows = (ages >= low) & (ages <= (top if top is not None else np.inf))
        for key, values in ((f"diagnostics/clipfrac_age{name}", clipped), (f"diagnostics/abs_log_ratio_age{name}",
                                                                            np.abs(log_ratio))):
            total, count = age_sums.get(key, [0.0, 0])
            age_sums[key] = [total + float(values[rows].sum()), count + int(rows.sum())]


@torch.no_grad()
def refresh_log_probs(policy, items: list, chunk: int, device, context_length: int | None = None) -> list:
    """``old_log_probs='refresh'``: the buffer's sub-trajectories with log-probs recomputed under the
    current policy (same context), to serve as π_old for this iteration's updates."""
    refreshed = []
    for begin in range(0, len(items), chunk):
        part = items[begin:begin + chunk]
        batch = segments_to_batch([seg for seg, _, _ in part], policy.normalizer, policy.reward_scale, device=device)
        log_probs, _ = policy_outputs(policy.model, batch, context_length)
        for row, (segment, advantage, sampled_in) in enumerate(part):
            new = log_probs[row][batch.train_mask[row]].float().cpu().numpy()
            refreshed.append((dataclasses.replace(segment, log_probs=new), advantage, sampled_in))
    return refreshed


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass
class GroupSource:
    """Where an iteration's groups come from: the policy rolled out at g_online, the env copies full
    trajectories are collected in and groups are branched in, and the buffer T_replay."""

    policy: Any
    task: Any
    config: GRPOConfig
    online_rtg: float
    gamma: float
    history_length: int
    device: Any
    branch_envs: BatchedEnv
    collect_envs: BatchedEnv
    trajectory_buffer: deque


def groups_from_buffer(source: GroupSource, trajectory_count: int,
                       rng: np.random.Generator) -> tuple[GroupBatch, float]:
    """Lines 3-7 for ``trajectory_count`` trajectories of T_replay: (the groups with their advantages,
    the entropy of the reset-point distribution)."""
    policy, config, device, buffer = source.policy, source.config, source.device, source.trajectory_buffer
    # line 3: a minibatch of full trajectories, p(τ) ∝ |τ|
    chosen = sample_proportional_to_length([len(ep) for ep in buffer], trajectory_count, rng)
    # lines 4-5: K reset points in each, from softmax(action variance) (active sampling)
    trajectories = [buffer[i] for i in chosen]
    if config.active_sampling_variance == "current" and config.reset_sampling == "active":
        # refreshed under today's policy (uniform reset points do not read it)
        trajectories = with_current_variance(policy, trajectories, config.context_length, device)
    starts = branch_starts(trajectories, config, source.history_length, rng)
    entropy = reset_entropy(trajectories, config)
    # line 6: G sub-trajectories per reset point, L_traj sampled + L_eval mean-action steps
    segments, scores, rewards, steps = rollout_groups(policy, source.branch_envs, starts, config, source.gamma,
                                                      device)
    # line 7: advantages by Eq. (2) within each group, ε_GRPO rule
    return group_batch(segments, scores.reshape(-1, config.group_size), config, steps, rewards), entropy


def refill_dropped_groups(source: GroupSource, groups: GroupBatch, rng: np.random.Generator) -> tuple[GroupBatch, int]:
    """Dynamic sampling: more groups, from fresh trajectories and reset points, until ``groups`` holds
    as many kept groups as it has groups, or ``dynamic_sampling_rounds`` rounds were rolled out.
    Returns (the groups, the rounds)."""
    config = source.config
    target, rounds = len(groups.valid), 0
    while int(groups.valid.sum()) < target and rounds < config.dynamic_sampling_rounds:
        missing = target - int(groups.valid.sum())
        extra, _ = groups_from_buffer(source, -(-missing // config.reset_points_per_trajectory), rng)
        groups = append_groups(groups, extra, missing, config.group_size)
        rounds += 1
    return groups, rounds


def append_groups(groups: GroupBatch, extra: GroupBatch, wanted: int, group_size: int) -> GroupBatch:
    """``groups`` followed by ``extra``'s groups up to the one that brings ``wanted`` kept groups (all
    of them when it has fewer); the env steps of all of ``extra`` count."""
    kept_so_far = np.cumsum(extra.valid)
    count = int(np.searchsorted(kept_so_far, wanted) + 1) if kept_so_far[-1] >= wanted else len(extra.valid)
    members = count * group_size
    return GroupBatch(groups.segments + extra.segments[:members],
                      np.concatenate([groups.scores, extra.scores[:count]]),
                      np.concatenate([groups.advantages, extra.advantages[:count]]),
                      np.concatenate([groups.valid, extra.valid[:count]]), groups.env_steps + extra.env_steps,
                      groups.branch_rewards + extra.branch_rewards[:members])


def collect_groups(source: GroupSource, seeds: list[int], rng: np.random.Generator,
                   timer: StageTimer) -> tuple[GroupBatch, dict[str, float], int]:
    """Lines 2-7 of Algorithm 1 (or, with ``full_trajectories``, the ablation of Fig. 1b: groups of
    whole episodes replace them). Returns (the groups with their advantages, charts, the env steps
    of the full trajectories)."""
    policy, config, device = source.policy, source.config, source.device
    if config.full_trajectories:
        with timer("group_rollouts"):
            groups = full_trajectory_groups(policy, source.branch_envs, source.task, config, source.online_rtg,
                                            source.gamma, seeds, device)
        return groups, {"charts/rollout_return": float(np.mean([s.rewards.sum() for s in groups.segments]))}, 0
    # line 2: full trajectories with the current policy from s_1 and g_online; FIFO update
    with timer("full_rollouts"):
        episodes = rollout_episodes(policy, source.collect_envs, source.task, source.online_rtg, seeds,
                                    mode="sample", record_snapshots=True, device=device,
                                    context_length=config.context_length)
    source.trajectory_buffer.extend(episodes)
    charts = {"charts/rollout_return": float(np.mean([ep.episode_return for ep in episodes])),
              "charts/rollout_length": float(np.mean([len(ep) for ep in episodes]))}
    with timer("group_rollouts"):
        groups, charts["grpo/reset_entropy"] = groups_from_buffer(source, config.trajectories_per_batch, rng)
        if config.dynamic_sampling:
            groups, charts["grpo/refill_rounds"] = refill_dropped_groups(source, groups, rng)
    return groups, charts, sum(len(ep) for ep in episodes)


def evaluation_of(policy, averaged, task, config: GRPOConfig, device, eval_rtg: float):
    """The in-run evaluation: the policy (or its weight average), and with an average also the
    iterate it smooths (``eval_iterate_*``), which is what the average buys."""
    evaluated = policy if averaged is None else dataclasses.replace(policy, model=averaged.module)

    def evaluate_now() -> dict:
        evaluation = evaluate_dt_policy(evaluated, task, config, device, eval_rtg)
        if averaged is not None:
            iterate = evaluate_policy(policy, task, config, device, eval_rtg, config.context_length)
            evaluation.update({key.replace("eval_", "eval_iterate_", 1): value for key, value in iterate.items()})
        return evaluation

    return evaluated, evaluate_now


def train(config: GRPOConfig) -> dict:
    """Run Algorithm 1 as ``config`` says, writing the run directory ``config.out``; returns the
    final evaluation."""
    task, device = get_task(config.task), resolve_device(config.device)
    online_rtg, eval_rtg = online_targets(config, task)
    gamma = task.gamma if config.gamma is None else config.gamma
    rng = seed_everything(config.seed)
    policy = prepare_policy(config, task, device)  # ETPR set, dropout off (eval mode; gradients flow)
    model = policy.model
    optimizer, temperature_optimizer = build_dt_optimizers(config, model)
    averaged = average_of_weights(model, config.policy_averaging)
    evaluated, evaluate_now = evaluation_of(policy, averaged, task, config, device, eval_rtg)
    trajectory_buffer: deque = deque(maxlen=config.trajectory_buffer_size)  # T_replay
    sub_buffer = SubTrajectoryBuffer(sub_buffer_capacity(config))  # T_sub
    components = dict(model=model, optimizer=optimizer, temperature_optimizer=temperature_optimizer,
                      sub_buffer=sub_buffer, averaged_model=averaged)
    with RunLoop(config, ALGO, rng, components, init=policy, rng_key="numpy_generator", evaluate=evaluate_now,
                 initial_evaluation=lambda: evaluate_dt_policy(policy, task, config, device, eval_rtg),
                 saved_policy=saved_dt_policy(ALGO, policy, evaluated.model, task, config, eval_rtg),
                 extra_state=lambda: {"trajectory_buffer": list(trajectory_buffer)},
                 keep_best=config.keep_best_policy,
                 video=dt_video(evaluated, task, config, device, eval_rtg)) as loop:
        if loop.state is not None:
            trajectory_buffer.extend(loop.state["trajectory_buffer"])
        branch_envs, collect_envs = make_envs(task, config)
        source = GroupSource(policy, task, config, online_rtg, gamma,
                             segment_history_length(model, config.context_length),  # context before a reset point
                             device, loop.closing(branch_envs), loop.closing(collect_envs), trajectory_buffer)
        for iteration in loop:  # line 1
            learning_rate = set_learning_rate(optimizer, scheduled_learning_rate(config, iteration))
            timer = StageTimer()
            # lines 2-7: full trajectories, reset points, groups and their advantages
            groups, charts, full_steps = collect_groups(
                source, episode_seeds(config, iteration, config.trajectories_per_iteration), rng, timer)
            loop.clock.env_steps += full_steps + groups.env_steps
            # line 8: the sub-trajectory buffer takes the groups that carry a signal (FIFO)
            push_groups(sub_buffer, groups, config, iteration)
            # line 9: finetune on T_sub with the clipped surrogate at `ratio_level` (Eq. 3 by default)
            with timer("update"):
                losses = update_policy(policy, sub_buffer, optimizer, temperature_optimizer, config, rng, device,
                                       iteration)
                if averaged is not None:
                    averaged.update_parameters(model)
            loop.clock.grad_updates += losses.pop("updates")
            loop.end_iteration({**charts, **timer.metrics, **group_metrics(groups, len(sub_buffer)),
                                "charts/temperature": model.temperature.item(), "charts/learning_rate": learning_rate,
                                **losses})
        return loop.finish()


def parse(argv: list[str]) -> GRPOConfig:
    """The run's config from the command line (a preset, then the overrides); validated, nothing run."""
    return parse_config(GRPOConfig, argv, PRESETS, description=__doc__.split("\n\n")[0],
                        prog="dtrl finetune --algo grpo")


def main(argv: list[str]) -> int:
    train(parse(argv))
    return 0
