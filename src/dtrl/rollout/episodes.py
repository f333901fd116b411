"""Full episodes from env resets: ``rollout_episodes`` and the ``RolloutTrajectory`` it returns.

Used for data collection, GRPO's full trajectories and evaluation with the mean action. Records
everything the algorithms need per step: observations, actions, rewards, raw returns-to-go,
timesteps, log-probs of the taken action, the action variance (GRPO's active sampling) and, when
asked, env snapshots (GRPO's reset points, ``RolloutTrajectory.branch_start``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from dtrl.data.trajectory import Trajectory
from dtrl.errors import DtrlError
from dtrl.rollout.batches import TokenHistory, _check_context_length
from dtrl.rollout.branches import BranchStart
from dtrl.rollout.stepping import (
    Policy,
    _act,
    _eval_mode,
    _expand_rows,
    _fed_returns,
    _RunningRows,
    _ShortContext,
    _step_envs,
)


@dataclass
class RolloutTrajectory:
    """One episode collected by ``rollout_episodes``; arrays are indexed by step t = 0..T-1."""

    observations: np.ndarray
    """[T, obs_dim] float32 raw observation s_t before action a_t"""
    actions: np.ndarray
    """[T, act_dim] float32 action a_t taken"""
    rewards: np.ndarray
    """[T] float32 reward r_t"""
    returns_to_go: np.ndarray
    """[T] float64 raw g_t fed (scaled) to the model at step t: target - sum of earlier rewards
    (a Reinformer's own max-return prediction instead, since that is what it consumed)"""
    timesteps: np.ndarray
    """[T] int64 episode timestep t"""
    log_probs: np.ndarray
    """[T] float32 log pi(a_t | context) under the sampling distribution (0 in mean mode)"""
    action_variance: np.ndarray
    """[T] float32 per-step action variance (``ActionDistribution.variance``), for active sampling"""
    terminated: bool
    """the episode ended in a terminal state"""
    truncated: bool
    """the episode was cut by the time limit"""
    target_rtg: float
    """g_0, the target return the episode was conditioned on"""
    seed: int | None = None
    """the env reset seed"""
    squashed_action_variance: np.ndarray | None = None
    """[T] float32 per-step variance of the squashed action (``ActionDistribution.squashed_variance``)"""
    snapshots: list | None = None
    """env snapshot taken before step t (``len == T``), when ``record_snapshots`` was asked"""

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    def to_trajectory(self) -> Trajectory:
        """The plain (obs, action, reward) episode, e.g. for a replay buffer with hindsight relabelling."""
        return Trajectory(self.observations, self.actions, self.rewards, self.terminated, self.truncated)

    def history(self, t: int, length: int) -> TokenHistory:
        """The tokens of the (at most) ``length`` steps before step t."""
        start = max(0, t - length)
        return TokenHistory(
            self.observations[start:t], self.actions[start:t], self.returns_to_go[start:t], self.timesteps[start:t]
        )

    def branch_start(self, t: int, history_length: int) -> BranchStart:
        """A reset point at step t (needs ``snapshots``): its env state, RTG and token history."""
        if self.snapshots is None:
            raise DtrlError("this trajectory was collected without record_snapshots=True: cannot branch from it")
        if not 0 <= t < len(self):
            raise IndexError(f"reset step {t} outside the trajectory (length {len(self)})")
        return BranchStart(
            snapshot=self.snapshots[t],
            observation=self.observations[t],
            return_to_go=float(self.returns_to_go[t]),
            timestep=int(self.timesteps[t]),
            history=self.history(t, history_length),
        )


class _EpisodeRecords:
    """What ``rollout_episodes`` records: preallocated [N, horizon, ...] arrays, filled column by
    column (no per-step Python lists), cut into one ``RolloutTrajectory`` per copy at the end."""

    def __init__(self, num_envs: int, horizon: int, obs_dim: int, record_snapshots: bool):
        self.num_envs, self.horizon = num_envs, horizon
        self.observations = np.zeros((num_envs, horizon, obs_dim), np.float32)
        self.actions: np.ndarray | None = None  # allocated at the first step, when the action size is known
        self.rewards = np.zeros((num_envs, horizon), np.float32)
        self.returns_to_go = np.zeros((num_envs, horizon), np.float64)
        self.log_probs = np.zeros((num_envs, horizon), np.float32)
        self.variances = np.zeros((num_envs, horizon), np.float32)
        self.squashed_variances = np.zeros((num_envs, horizon), np.float32)
        self.snapshots: list[list] | None = [[] for _ in range(num_envs)] if record_snapshots else None
        self.lengths = np.zeros(num_envs, np.int64)
        self.terminated = np.zeros(num_envs, bool)
        self.truncated = np.zeros(num_envs, bool)

    def record_inputs(self, envs, rows: np.ndarray, t: int, obs: np.ndarray, action_np: np.ndarray,
                      fed_returns: np.ndarray) -> None:
        """Step t of ``rows``: the env snapshot before it (when asked), observation, action, RTG fed."""
        if self.actions is None:
            self.actions = np.zeros((self.num_envs, self.horizon, action_np.shape[1]), np.float32)
        if self.snapshots is not None:
            for row, snap in zip(rows, envs.snapshot(rows.tolist())):
                self.snapshots[row].append(snap)
        self.observations[rows, t] = obs[rows]
        self.actions[rows, t] = action_np[rows]
        self.returns_to_go[rows, t] = fed_returns

    def record_distribution(self, rows: np.ndarray, t: int, dist, action: torch.Tensor, sampled: bool) -> None:
        """Step t of ``rows``: log-prob of the sampled action (0 in mean mode) and the action variances."""
        if sampled:
            self.log_probs[rows, t] = dist.log_prob(action).float().cpu().numpy()
        self.variances[rows, t] = dist.variance.float().cpu().numpy()
        self.squashed_variances[rows, t] = dist.squashed_variance.float().cpu().numpy()

    def trajectories(self, target_rtg: float, seeds: Sequence[int]) -> list[RolloutTrajectory]:
        self.truncated |= ~self.terminated & (self.lengths == self.horizon)  # cut by max_steps below the env's limit
        trajectories = []
        for i in range(self.num_envs):
            n = int(self.lengths[i])
            trajectories.append(RolloutTrajectory(
                observations=self.observations[i, :n].copy(), actions=self.actions[i, :n].copy(),
                rewards=self.rewards[i, :n].copy(), returns_to_go=self.returns_to_go[i, :n].copy(),
                timesteps=np.arange(n, dtype=np.int64), log_probs=self.log_probs[i, :n].copy(),
                action_variance=self.variances[i, :n].copy(),
                squashed_action_variance=self.squashed_variances[i, :n].copy(),
                terminated=bool(self.terminated[i]),
                truncated=bool(self.truncated[i]), target_rtg=float(target_rtg), seed=int(seeds[i]),
                snapshots=self.snapshots[i] if self.snapshots is not None else None,
            ))
        return trajectories


def _check_episode_arguments(mode: str, exploration_noise: float, num_seeds: int, envs,
                             context_length: int | None) -> None:
    _check_context_length(context_length)
    if mode not in ("sample", "mean"):
        raise DtrlError(f"rollout mode must be 'sample' or 'mean', got {mode!r}")
    if exploration_noise < 0 or (exploration_noise > 0 and mode != "mean"):
        raise DtrlError("exploration noise is >= 0 and goes with mode 'mean' (it perturbs the mean action)")
    if num_seeds != envs.num_envs:
        raise DtrlError(f"{num_seeds} seeds for a BatchedEnv of {envs.num_envs} copies: give one seed per copy")


def _episode_action(dist, mode: str, exploration_noise: float) -> torch.Tensor:
    """a ~ pi (``'sample'``) or the mean action, plus clipped N(0, σ²) noise when σ > 0."""
    action = dist.mean if mode == "mean" else dist.sample()
    if exploration_noise > 0:
        action = (action + exploration_noise * torch.randn_like(action)).clamp(-1.0, 1.0)
    return action


def rollout_episodes(
    policy: Policy,
    envs,
    task,
    target_rtg: float,
    seeds: Sequence[int],
    mode: Literal["sample", "mean"] = "sample",
    record_snapshots: bool = False,
    device: str | torch.device = "cpu",
    max_steps: int | None = None,
    context_length: int | None = None,
    exploration_noise: float = 0.0,
) -> list[RolloutTrajectory]:
    """Run ``len(seeds)`` episodes (one per env copy, ``len(seeds) == envs.num_envs``) to the end.

    ``mode='sample'`` draws a ~ pi (data collection), ``'mean'`` takes the mean action
    (evaluation, deterministic given the seeds); with ``exploration_noise`` σ > 0 the mean action plus
    N(0, σ²) noise, clipped to [-1, 1] (TD3's exploration, for a deterministic actor). ``max_steps``
    caps the episode length (default: the task's time limit, which the env itself also enforces
    through ``truncated``).
    ``context_length``: the model sees only the last that many timesteps (the current one included),
    as in the paper's evaluation context T_eval (Table 6); None: the model's own sliding window.
    """
    _check_episode_arguments(mode, exploration_noise, len(seeds), envs, context_length)
    num_envs = len(seeds)
    model = policy.model
    horizon = int(max_steps or task.max_episode_steps)
    obs = np.asarray(envs.reset(list(seeds)), dtype=np.float32)
    records = _EpisodeRecords(num_envs, horizon, obs.shape[1], record_snapshots)

    rtg = np.full(num_envs, float(target_rtg), np.float64)
    active = np.ones(num_envs, bool)
    with torch.inference_mode(), _eval_mode(model):
        short = None if context_length is None else _ShortContext(policy, device, context_length, num_envs)
        running = _RunningRows(short, model.new_cache(num_envs) if short is None else None, np.arange(num_envs),
                               device)
        for t in range(horizon):
            rows = np.flatnonzero(active)
            cache = running.cache_for(rows)
            timesteps = torch.full((len(rows),), t, dtype=torch.long, device=device)
            dist, rtg_t = _act(policy, cache, obs, rtg, rows, timesteps, device)
            action = _episode_action(dist, mode, exploration_noise)
            model.append_action(cache, action)
            action_np = _expand_rows(action, rows, num_envs)
            records.record_inputs(envs, rows, t, obs, action_np,
                                  _fed_returns(dist, rtg_t, rtg[rows], policy.reward_scale))
            if short is not None:
                short.push(rows, obs, action_np, records.returns_to_go[:, t], t)
            records.record_distribution(rows, t, dist, action, sampled=mode == "sample")

            obs, reward = _step_envs(envs, action_np, active, rows, rtg, records.lengths, records.terminated,
                                     records.truncated)
            records.rewards[rows, t] = reward[rows]
            if not active.any():
                break
    return records.trajectories(target_rtg, seeds)
