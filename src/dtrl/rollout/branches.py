"""GRPO's groups (Algorithm 1, line 6): ``rollout_from_snapshots`` and its records.

Copy i is restored to the snapshot of ``starts[i]`` (a ``BranchStart``) and its model cache is
prefilled with the token history before that reset point, so the model sees exactly the context it
saw when the trajectory was sampled. Then L sampled steps (the sub-trajectory that training
re-evaluates, a ``Segment``) and M mean-action steps (only to score it): score_i = discounted return
over the L + M steps, returned in a ``BranchResult``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dtrl.errors import DtrlError
from dtrl.rollout.batches import Segment, TokenHistory, _check_context_length
from dtrl.rollout.stepping import (
    Policy,
    _act,
    _eval_mode,
    _expand_rows,
    _fed_returns,
    _prefilled_cache,
    _RunningRows,
    _ShortContext,
    _step_envs,
)


@dataclass
class BranchStart:
    """A reset point: where a GRPO group starts, with the context the model had there."""

    snapshot: Any
    """env snapshot taken before the step (``env.snapshot()``)"""
    observation: np.ndarray
    """[obs_dim] the observation at the reset point"""
    return_to_go: float
    """raw g at the reset point"""
    timestep: int
    """episode timestep of the reset point"""
    history: TokenHistory
    """the tokens of the steps before the reset point (at most ``model.receptive_field`` of them)"""


@dataclass
class BranchResult:
    """Output of ``rollout_from_snapshots`` for N starts."""

    segments: list[Segment]
    """the sampled part (length <= L: shorter when the episode ended) of each branch"""
    scores: np.ndarray
    """[N] float64 discounted return over the L + M steps (the GRPO score R(tau_sub))"""
    step_rewards: np.ndarray
    """[N, L + M] float64 reward of every branch step (0 after the branch ended)"""
    lengths: np.ndarray
    """[N] int64 env steps taken by each branch (sampled + mean), <= L + M"""
    terminated: np.ndarray
    """[N] bool: the branch hit a terminal state"""
    truncated: np.ndarray
    """[N] bool: the branch hit the time limit"""

    @property
    def env_steps(self) -> int:
        return int(self.lengths.sum())


class _SegmentRecords:
    """What ``rollout_from_snapshots`` records of the L sampled steps of each branch, preallocated
    [N, L, ...] and filled column by column; cut into one ``Segment`` per branch at the end."""

    def __init__(self, num_starts: int, sampled_steps: int, obs_dim: int):
        self.num_starts, self.sampled_steps = num_starts, sampled_steps
        self.observations = np.zeros((num_starts, sampled_steps, obs_dim), np.float32)
        self.actions: np.ndarray | None = None  # allocated at the first step, when the action size is known
        self.returns_to_go = np.zeros((num_starts, sampled_steps), np.float64)
        self.log_probs = np.zeros((num_starts, sampled_steps), np.float32)
        self.lengths = np.zeros(num_starts, np.int64)

    def record(self, rows: np.ndarray, j: int, obs: np.ndarray, action_np: np.ndarray, fed: np.ndarray, dist,
               action: torch.Tensor) -> None:
        """Sampled step j of ``rows``: observation, action, RTG fed, log-prob of the action."""
        if self.actions is None:
            self.actions = np.zeros((self.num_starts, self.sampled_steps, action_np.shape[1]), np.float32)
        self.observations[rows, j] = obs[rows]
        self.actions[rows, j] = action_np[rows]
        self.returns_to_go[rows, j] = fed[rows]
        self.log_probs[rows, j] = dist.log_prob(action).float().cpu().numpy()
        self.lengths[rows] += 1

    def segments(self, starts: Sequence[BranchStart], timestep0: np.ndarray, step_rewards: np.ndarray) -> list[Segment]:
        segments = []
        for i, start in enumerate(starts):
            n = int(self.lengths[i])
            segments.append(Segment(
                history=start.history, observations=self.observations[i, :n].copy(),
                actions=self.actions[i, :n].copy(), returns_to_go=self.returns_to_go[i, :n].copy(),
                timesteps=timestep0[i] + np.arange(n, dtype=np.int64), log_probs=self.log_probs[i, :n].copy(),
                rewards=step_rewards[i, :n].astype(np.float32),
            ))
        return segments


def _check_branch_arguments(num_starts: int, envs, sampled_steps: int, mean_steps: int,
                            context_length: int | None) -> None:
    _check_context_length(context_length)
    if num_starts == 0:
        raise DtrlError("rollout_from_snapshots needs at least one start")
    if num_starts > envs.num_envs:
        raise DtrlError(f"{num_starts} branch starts for a BatchedEnv of {envs.num_envs} copies")
    if sampled_steps < 1 or mean_steps < 0:
        raise DtrlError(f"need sampled_steps >= 1 and mean_steps >= 0, got {sampled_steps} and {mean_steps}")


def _branch_caches(policy: Policy, starts: Sequence[BranchStart], num_envs: int, device,
                   context_length: int | None) -> tuple[_ShortContext | None, _RunningRows]:
    """The model caches of the branches, each prefilled with its start's token history (the spare
    copies, beyond ``len(starts)``, never run)."""
    num_starts = len(starts)
    histories = [s.history for s in starts]
    if context_length is None:
        return None, _RunningRows(None, _prefilled_cache(policy, histories, device), np.arange(num_starts), device)
    spare = num_envs - num_starts
    short = _ShortContext(policy, device, context_length, num_envs, histories + [starts[0].history] * spare)
    return short, _RunningRows(short, None, np.arange(num_starts), device)


def rollout_from_snapshots(
    policy: Policy,
    envs,
    starts: Sequence[BranchStart],
    sampled_steps: int,
    mean_steps: int,
    gamma: float,
    device: str | torch.device = "cpu",
    context_length: int | None = None,
) -> BranchResult:
    """Branch copy i from ``starts[i]``: L = ``sampled_steps`` sampled steps (recorded as a
    ``Segment``), then M = ``mean_steps`` mean-action steps; score_i = sum_j gamma^j r_j over the
    L + M steps, stopping early when the branch terminates or hits the time limit.

    ``len(starts) <= envs.num_envs``; spare copies stay idle. A GRPO group is G equal starts.
    ``context_length``: the model sees only the last that many timesteps (see ``rollout_episodes``),
    the history before the reset point included.
    """
    num_starts = len(starts)
    _check_branch_arguments(num_starts, envs, sampled_steps, mean_steps, context_length)
    model = policy.model
    spare = envs.num_envs - num_starts
    snapshots = [s.snapshot for s in starts] + [starts[0].snapshot] * spare
    obs = np.asarray(envs.restore(snapshots), dtype=np.float32)

    total_steps = sampled_steps + mean_steps
    records = _SegmentRecords(num_starts, sampled_steps, obs.shape[1])
    step_rewards = np.zeros((envs.num_envs, total_steps), np.float64)

    rtg = np.array([s.return_to_go for s in starts] + [0.0] * spare, np.float64)
    timestep0 = np.array([s.timestep for s in starts] + [0] * spare, np.int64)
    lengths = np.zeros(envs.num_envs, np.int64)
    terminated = np.zeros(envs.num_envs, bool)
    truncated = np.zeros(envs.num_envs, bool)
    active = np.zeros(envs.num_envs, bool)
    active[:num_starts] = True

    with torch.inference_mode(), _eval_mode(model):
        short, running = _branch_caches(policy, starts, envs.num_envs, device, context_length)
        for j in range(total_steps):
            rows = np.flatnonzero(active)
            cache = running.cache_for(rows)
            dist, rtg_t = _act(policy, cache, obs, rtg, rows, torch.as_tensor(timestep0[rows] + j, device=device),
                               device)
            sampling = j < sampled_steps
            action = dist.sample() if sampling else dist.mean
            model.append_action(cache, action)
            action_np = _expand_rows(action, rows, envs.num_envs)
            fed = np.zeros(envs.num_envs, np.float64)
            fed[rows] = _fed_returns(dist, rtg_t, rtg[rows], policy.reward_scale)
            if short is not None:
                short.push(rows, obs, action_np, fed, timestep0 + j)
            if sampling:
                records.record(rows, j, obs, action_np, fed, dist, action)

            obs, reward = _step_envs(envs, action_np, active, rows, rtg, lengths, terminated, truncated)
            step_rewards[rows, j] = reward[rows]
            if not active.any():
                break

    # Rewards after a branch ended are 0, so this is the discounted sum up to its end.
    scores = step_rewards @ (gamma ** np.arange(total_steps, dtype=np.float64))
    return BranchResult(segments=records.segments(starts, timestep0, step_rewards), scores=scores[:num_starts],
                        step_rewards=step_rewards[:num_starts], lengths=lengths[:num_starts],
                        terminated=terminated[:num_starts], truncated=truncated[:num_starts])
