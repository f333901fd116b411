"""What both rollout loops share: the ``Policy`` they run, the model's inputs, its KV caches and one
step of the env copies.

- ``_act``: one batched, KV-cached model call for the running rows (states normalised, RTGs scaled in
  float64); ``_fed_returns``: the raw RTG the model actually consumed (a Reinformer's own prediction).
- ``_prefilled_cache``: a cache loaded with left-padded token histories in one ``model.prefill``;
  ``_ShortContext``: a cache rebuilt every step from the last ``context_length - 1`` steps;
  ``_RunningRows``: the cache of the copies still running only (``cache.select_rows``).
- ``_step_envs``: step the active copies and do the RTG / length / termination bookkeeping in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from dtrl.rollout.batches import TokenHistory, _pad_tokens


class Policy(Protocol):
    """What the rollout engine needs from a policy (``dtrl.models.checkpoint.LoadedPolicy`` fits)."""

    model: Any
    """a DecisionTransformer / Reinformer with ``new_cache``, ``act``, ``append_action``, ``forward``"""
    normalizer: Any
    """a StateNormalizer (``normalize(x)`` on numpy arrays)"""
    reward_scale: float
    """returns-to-go are divided by this before entering the model"""


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
