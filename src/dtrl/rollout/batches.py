"""Token histories, sampled segments and the training batches built from them.

``TokenHistory`` is the context a model sees, ``Segment`` a sampled sub-trajectory with the context
before it. ``segments_to_batch`` turns segments into padded tensors (a ``SegmentBatch``) on which
``model.forward`` reproduces the sampling-time log-probs (history prefix marked as context only),
which is what makes the importance ratio of the first update exactly 1. ``_pad_tokens`` is the one
left-padding routine, also used to prefill a rollout's KV cache (``dtrl.rollout.stepping``), so a
training batch feeds the model bit-identical tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dtrl.errors import DtrlError


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


def _check_context_length(context_length: int | None) -> None:
    if context_length is not None and context_length < 1:
        raise DtrlError(f"context length must be >= 1, got {context_length}")
