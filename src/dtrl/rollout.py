"""The batched rollout engine every online algorithm uses.

Two entry points, both stepping all N env copies together with one batched, KV-cached model call
per step under ``torch.inference_mode``:

- ``rollout_episodes``: N full episodes from env resets (data collection, GRPO's full trajectories,
  evaluation with the mean action). Records everything the algorithms need per step: observations,
  actions, rewards, raw returns-to-go, timesteps, log-probs of the taken action, the action
  variance (GRPO's active sampling) and, when asked, env snapshots (GRPO's reset points).
- ``rollout_from_snapshots``: GRPO's groups (Algorithm 1, line 6). Copy i is restored to the
  snapshot of ``starts[i]`` and its model cache is prefilled with the token history before that
  reset point, so the model sees exactly the context it saw when the trajectory was sampled. Then
  L sampled steps (the sub-trajectory that training re-evaluates, a ``Segment``) and M mean-action
  steps (only to score it): score_i = discounted return over the L + M steps.

``segments_to_batch`` turns segments into padded tensors on which ``model.forward`` reproduces the
sampling-time log-probs (history prefix marked as context only), which is what makes the importance
ratio of the first update exactly 1.

RTG bookkeeping (raw units, float64): g_0 = target, g_{t+1} = g_t - r_t; the model gets
g_t / reward_scale. States are normalised with the policy's normaliser before entering the model;
everything recorded here is raw (unnormalised observations, unscaled RTGs). A Reinformer conditions
on its own max-return prediction instead of g_t; that prediction is what gets recorded as its RTG,
because it is what ``forward`` must be fed to reproduce the log-probs.

Beyond the model contract's ``new_cache`` / ``act`` / ``append_action``, branching uses
``model.prefill(cache, states, actions, returns_to_go, timesteps, mask)`` to load left-padded
histories of different lengths into one cache in a single pass, and the loops call the model on the
copies still running only (``cache.select_rows`` drops the others; ``new_cache(B, max_steps)`` sizes
a short-context cache). A row's actions then differ from a full-batch call only by float rounding
(the kernels' blocking depends on the batch size), so runs stay bit-reproducible on one machine but
are not bit-equal to runs of dtrl before this change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from dtrl.data.trajectory import Trajectory
from dtrl.errors import DtrlError


class Policy(Protocol):
    """What the rollout engine needs from a policy (``dtrl.models.checkpoint.LoadedPolicy`` fits)."""

    model: Any
    """a DecisionTransformer / Reinformer with ``new_cache``, ``act``, ``append_action``, ``forward``"""
    normalizer: Any
    """a StateNormalizer (``normalize(x)`` on numpy arrays)"""
    reward_scale: float
    """returns-to-go are divided by this before entering the model"""


# ----------------------------------------------------------------------------------------------
# data types


@dataclass
class TokenHistory:
    """The (rtg, state, action, timestep) tokens of consecutive steps: the context a model sees."""

    observations: np.ndarray
    """[H, obs_dim] float32 raw observations"""
    actions: np.ndarray
    """[H, act_dim] float32 actions taken"""
    returns_to_go: np.ndarray
    """[H] float64 raw returns-to-go as fed to the model (divided by reward_scale on the way in)"""
    timesteps: np.ndarray
    """[H] int64 episode timesteps"""

    def __len__(self) -> int:
        return len(self.timesteps)

    def last(self, length: int) -> TokenHistory:
        """The last ``length`` steps (all of them if there are fewer)."""
        if len(self) <= length:
            return self
        cut = len(self) - length
        return TokenHistory(self.observations[cut:], self.actions[cut:], self.returns_to_go[cut:],
                            self.timesteps[cut:])

    @staticmethod
    def empty(obs_dim: int, act_dim: int) -> TokenHistory:
        return TokenHistory(
            np.zeros((0, obs_dim), np.float32), np.zeros((0, act_dim), np.float32),
            np.zeros(0, np.float64), np.zeros(0, np.int64),
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
class Segment:
    """A sampled sub-trajectory: exactly what training re-evaluates, plus the context before it."""

    history: TokenHistory
    """context-only prefix (not trained on)"""
    observations: np.ndarray
    """[L, obs_dim] raw observations"""
    actions: np.ndarray
    """[L, act_dim] sampled actions"""
    returns_to_go: np.ndarray
    """[L] float64 raw returns-to-go fed to the model"""
    timesteps: np.ndarray
    """[L] int64 episode timesteps"""
    log_probs: np.ndarray
    """[L] float32 sampling-time log-probs (the 'old' policy of the importance ratio)"""
    rewards: np.ndarray
    """[L] float32 rewards of the sampled steps"""

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def tokens(self) -> TokenHistory:
        """The sampled steps as tokens (e.g. the history of a later segment)."""
        return TokenHistory(self.observations, self.actions, self.returns_to_go, self.timesteps)


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


@dataclass
class SegmentBatch:
    """Left-padded training tensors built from segments (the layout of ``SequenceSampler``)."""

    states: torch.Tensor
    """[B, T, obs_dim] normalised states"""
    actions: torch.Tensor
    """[B, T, act_dim]"""
    returns_to_go: torch.Tensor
    """[B, T] scaled returns-to-go (g / reward_scale)"""
    timesteps: torch.Tensor
    """[B, T] long"""
    mask: torch.Tensor
    """[B, T] bool: a real token (history or segment); False on padding"""
    train_mask: torch.Tensor
    """[B, T] bool: a segment step the loss is computed on (history is context only)"""
    log_probs_old: torch.Tensor
    """[B, T] sampling-time log-probs on the train_mask positions, 0 elsewhere"""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def train_step_windows(self, context_length: int) -> SegmentBatch:
        """The input a rollout with a short context (``context_length``) gave the model for each trained
        step: one row per ``train_mask`` position (row-major order), that step last, the
        ``context_length - 1`` steps before it in front (left-padded where the row has fewer)."""
        _check_context_length(context_length)
        rows, cols = self.train_mask.nonzero(as_tuple=True)
        offsets = torch.arange(1 - context_length, 1, device=cols.device)
        index = cols[:, None] + offsets  # [N, context_length]
        inside = index >= 0
        index = index.clamp(min=0)
        rows = rows[:, None].expand_as(index)
        mask = self.mask[rows, index] & inside
        last = torch.zeros_like(mask)
        last[:, -1] = True

        def take(x: torch.Tensor) -> torch.Tensor:
            values = x[rows, index]
            keep = mask.view(*mask.shape, *([1] * (values.dim() - 2)))
            return torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))

        return SegmentBatch(states=take(self.states), actions=take(self.actions),
                            returns_to_go=take(self.returns_to_go), timesteps=take(self.timesteps), mask=mask,
                            train_mask=last, log_probs_old=take(self.log_probs_old) * last)

    def step_distributions(self, model, context_length: int | None = None):
        """The model's action distribution at every ``train_mask`` step (``[N]``, row-major), computed
        from the context the step was sampled with: the batch's whole rows (``context_length`` None,
        the model's own sliding window), or each step's last ``context_length`` steps."""
        if context_length is None:
            return model(self.states, self.actions, self.returns_to_go, self.timesteps, self.mask)[self.train_mask]
        windows = self.train_step_windows(context_length)
        return model(windows.states, windows.actions, windows.returns_to_go, windows.timesteps, windows.mask)[:, -1]

    def train_actions(self) -> torch.Tensor:
        """[N, act_dim] the actions at the ``train_mask`` steps (the order of ``step_distributions``)."""
        return self.actions[self.train_mask]

    def log_probs(self, model) -> torch.Tensor:
        """[B, T] log-probs of the batch's actions under ``model`` (0 outside ``train_mask``)."""
        dist = model.forward(self.states, self.actions, self.returns_to_go, self.timesteps, self.mask)
        return torch.where(self.train_mask, dist.log_prob(self.actions), torch.zeros((), device=self.states.device))


# ----------------------------------------------------------------------------------------------
# helpers


def _model_inputs(policy: Policy, observations: np.ndarray, returns_to_go: np.ndarray, device):
    states = torch.as_tensor(policy.normalizer.normalize(observations), dtype=torch.float32, device=device)
    # RTGs are kept in float64 everywhere and scaled in float64 here and in ``_pad_tokens``, so a
    # training batch feeds the model bit-identical RTG tokens.
    scaled = np.asarray(returns_to_go, np.float64) / policy.reward_scale
    rtg = torch.as_tensor(scaled, dtype=torch.float32, device=device)
    return states, rtg


def _fed_returns(dist, given: torch.Tensor, bookkeeping: np.ndarray, reward_scale: float) -> np.ndarray:
    """The raw RTG the model actually consumed at this step.

    A DT consumes the RTG it is given (``dist.returns_to_go is given``): the bookkeeping g_t. A
    Reinformer replaces it by its own max-return prediction; that prediction is what a later
    ``forward`` must be fed, so it is what gets recorded (float64 * scale: the round trip through
    ``/ reward_scale`` gives back the float32 prediction exactly).
    """
    fed = getattr(dist, "returns_to_go", None)
    if fed is None or fed is given:
        return bookkeeping
    return fed.double().cpu().numpy() * reward_scale


class _eval_mode:
    """Dropout off during rollouts; the caller's train/eval mode is restored afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _prefilled_cache(policy: Policy, histories: Sequence[TokenHistory], device, max_steps: int | None = None):
    """A model cache in which row i holds ``histories[i]`` (rows may differ in length, down to 0),
    so the next ``act`` sees exactly the context it saw when those steps were sampled.
    ``max_steps``: the cache will never hold more steps (see ``new_cache``)."""
    model = policy.model
    cache = model.new_cache(len(histories), max_steps=max_steps)
    if max(len(h) for h in histories) > 0:
        reference = next(h for h in histories if len(h))
        nothing = TokenHistory.empty(reference.observations.shape[1], reference.actions.shape[1])
        batch = _pad_tokens(histories, [nothing] * len(histories), None, policy.normalizer, policy.reward_scale,
                            device)
        model.prefill(cache, batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
    return cache


def _check_context_length(context_length: int | None) -> None:
    if context_length is not None and context_length < 1:
        raise DtrlError(f"context length must be >= 1, got {context_length}")


class _ShortContext:
    """A rollout in which the model sees only the last ``context_length`` timesteps (the current one
    included), as ODT-style code truncates the model's input online (T_eval in the paper's Table 6).

    The KV cache is rebuilt every step from each row's last ``context_length - 1`` complete steps,
    kept here in small rolling arrays (with length 1 the cache is simply fresh every step).
    """

    def __init__(self, policy: Policy, device, context_length: int, num_rows: int,
                 histories: Sequence[TokenHistory] | None = None):
        self.policy, self.device, self.num_rows = policy, device, num_rows
        self.keep = context_length - 1
        self.arrays: tuple[np.ndarray, ...] | None = None  # (obs, actions, rtg, timesteps), allocated lazily
        self.counts = np.zeros(num_rows, np.int64)
        if histories and self.keep > 0:
            self._allocate(histories[0].observations.shape[1], histories[0].actions.shape[1])
            for row, history in enumerate(histories):
                history = history.last(self.keep)
                n = len(history)
                for array, values in zip(self.arrays, (history.observations, history.actions,
                                                       history.returns_to_go, history.timesteps)):
                    array[row, self.keep - n:] = values
                self.counts[row] = n

    def _allocate(self, obs_dim: int, act_dim: int) -> None:
        self.arrays = (np.zeros((self.num_rows, self.keep, obs_dim), np.float32),
                       np.zeros((self.num_rows, self.keep, act_dim), np.float32),
                       np.zeros((self.num_rows, self.keep), np.float64),
                       np.zeros((self.num_rows, self.keep), np.int64))

    def push(self, rows, observations: np.ndarray, actions: np.ndarray, returns_to_go: np.ndarray, timesteps) -> None:
        """Append one complete step (observation, action taken, RTG fed, timestep) to ``rows``."""
        if self.keep == 0:
            return
        if self.arrays is None:
            self._allocate(observations.shape[1], actions.shape[1])
        rows = np.asarray(rows, np.int64)
        timesteps = np.broadcast_to(np.asarray(timesteps, np.int64), (self.num_rows,))
        for array, values in zip(self.arrays, (observations, actions, returns_to_go, timesteps)):
            array[rows, :-1] = array[rows, 1:]
            array[rows, -1] = values[rows]
        self.counts[rows] = np.minimum(self.counts[rows] + 1, self.keep)

    def cache(self, rows: np.ndarray):
        """A fresh model cache of ``rows`` (ascending), each holding its kept steps."""
        # Sized for keep + 1 steps (the history and the step about to be acted on), not the model's
        # whole window: the attention over slots that can never be filled was most of an act's cost
        # at context 1, for the same actions up to float rounding (tests/test_models.py).
        if self.arrays is None or not self.counts[rows].any():
            return self.policy.model.new_cache(len(rows), max_steps=self.keep + 1)
        obs, actions, rtg, timesteps = self.arrays
        histories = [TokenHistory(obs[i, self.keep - n:], actions[i, self.keep - n:], rtg[i, self.keep - n:],
                                  timesteps[i, self.keep - n:]) for i, n in zip(rows, self.counts[rows])]
        return _prefilled_cache(self.policy, histories, self.device, max_steps=self.keep + 1)


# ----------------------------------------------------------------------------------------------
# full episodes



class _RunningRows:
    """The model runs only on the copies whose episode is still going: an ended copy's action is
    never used, and with L_eval = 100 most branches of a weak policy end early (a third of the model
    calls were for ended copies). Rows leave a full-window KV cache when their episode ends; a
    short-context cache is rebuilt for the running rows every step anyway. A row mixed up here would
    break the tests that recompute recorded log-probs from the trajectories (tests/test_rollout.py)."""

    def __init__(self, short: _ShortContext | None, cache, rows: np.ndarray, device):
        self.short, self.cache, self.rows, self.device = short, cache, rows, device

    def cache_for(self, rows: np.ndarray):
        """The model cache for ``rows`` (ascending, a subset of the previous step's rows)."""
        if self.short is not None:
            return self.short.cache(rows)
        if len(rows) < len(self.rows):
            kept = torch.as_tensor(np.searchsorted(self.rows, rows), device=self.device)
            self.cache, self.rows = self.cache.select_rows(kept), rows
        return self.cache


def _expand_rows(values: torch.Tensor, rows: np.ndarray, num_rows: int) -> np.ndarray:
    """[len(rows), ...] model output -> [num_rows, ...] numpy array, zeros in the other rows."""
    values = values.float().cpu().numpy()
    full = np.zeros((num_rows, *values.shape[1:]), values.dtype)
    full[rows] = values
    return full


def _step_envs(envs, actions: np.ndarray, active: np.ndarray, rows, rtg: np.ndarray, lengths: np.ndarray,
               terminated: np.ndarray, truncated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step the active copies and do the per-step bookkeeping both rollout loops share, in place:
    RTG g_{t+1} = g_t - r_t, lengths, termination flags, the active mask. Returns (next obs, rewards)."""
    next_obs, reward, term, trunc = envs.step(actions, active)
    # rounded to float32 as recorded, so g_{t+1} = g_t - r_t holds exactly for the stored rewards
    reward = np.asarray(reward, np.float32).astype(np.float64)
    rtg[rows] -= reward[rows]
    lengths[rows] += 1
    terminated[rows] = np.asarray(term, bool)[rows]
    truncated[rows] = np.asarray(trunc, bool)[rows]
    active &= ~(terminated | truncated)
    return np.asarray(next_obs, dtype=np.float32), reward

def _act(policy: Policy, cache, obs: np.ndarray, rtg: np.ndarray, rows: np.ndarray, timesteps: torch.Tensor,
         device):
    """One batched, KV-cached model call for the running ``rows``: (action distribution, RTG tokens fed)."""
    states, rtg_t = _model_inputs(policy, obs[rows], rtg[rows], device)
    return policy.model.act(cache, rtg_t, states, timesteps), rtg_t


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


# ----------------------------------------------------------------------------------------------
# branches from snapshots (GRPO groups)


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


# ----------------------------------------------------------------------------------------------
# training batches


def segments_to_batch(
    segments: Sequence[Segment],
    normalizer,
    reward_scale: float,
    device: str | torch.device = "cpu",
    history_length: int | None = None,
) -> SegmentBatch:
    """Pad segments (history prefix + sampled steps) into one left-padded batch.

    ``history_length`` trims each history to its last ``history_length`` steps (default: keep
    what the segment carries, normally ``model.receptive_field``). With the full receptive field
    kept, ``batch.log_probs(model)`` equals the sampling-time log-probs on ``train_mask``.
    """
    if not segments:
        raise DtrlError("segments_to_batch needs at least one segment")
    histories = [s.history for s in segments]
    if history_length is not None:
        histories = [h.last(history_length) for h in histories]
    return _pad_tokens(histories, [s.tokens for s in segments], [s.log_probs for s in segments], normalizer,
                       reward_scale, device)


def _pad_tokens(
    prefixes: Sequence[TokenHistory],
    bodies: Sequence[TokenHistory],
    body_log_probs: Sequence[np.ndarray] | None,
    normalizer,
    reward_scale: float,
    device,
) -> SegmentBatch:
    """Row i = prefixes[i] (context only) then bodies[i] (trained on), left-padded to a common width."""
    total = [len(p) + len(b) for p, b in zip(prefixes, bodies)]
    rows, width = len(total), max(total)
    obs_dim = bodies[0].observations.shape[1]
    act_dim = bodies[0].actions.shape[1]
    obs = np.zeros((rows, width, obs_dim), np.float32)
    actions = np.zeros((rows, width, act_dim), np.float32)
    rtg = np.zeros((rows, width), np.float64)
    timesteps = np.zeros((rows, width), np.int64)
    mask = np.zeros((rows, width), bool)
    train_mask = np.zeros((rows, width), bool)
    logp_old = np.zeros((rows, width), np.float32)
    for i, (prefix, body) in enumerate(zip(prefixes, bodies)):
        start = width - total[i]
        mid = start + len(prefix)
        for target, before, after in ((obs, prefix.observations, body.observations),
                                      (actions, prefix.actions, body.actions),
                                      (rtg, prefix.returns_to_go, body.returns_to_go),
                                      (timesteps, prefix.timesteps, body.timesteps)):
            target[i, start:mid] = before
            target[i, mid:] = after
        mask[i, start:] = True
        train_mask[i, mid:] = True
        if body_log_probs is not None:
            logp_old[i, mid:] = body_log_probs[i]
    # Normalise only real tokens so padding stays exactly 0 (as SequenceSampler pads).
    states = np.zeros_like(obs)
    states[mask] = normalizer.normalize(obs[mask])
    scaled_rtg = rtg / reward_scale  # float64, as in the rollout's _model_inputs

    def tensor(x, dtype):
        return torch.as_tensor(x, dtype=dtype, device=device)

    return SegmentBatch(
        states=tensor(states, torch.float32), actions=tensor(actions, torch.float32),
        returns_to_go=tensor(scaled_rtg, torch.float32), timesteps=tensor(timesteps, torch.long),
        mask=tensor(mask, torch.bool), train_mask=tensor(train_mask, torch.bool),
        log_probs_old=tensor(logp_old, torch.float32),
    )
