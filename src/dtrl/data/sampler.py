"""Context windows for Decision Transformer training, sampled from a fixed set of trajectories.

All trajectories are concatenated once into flat arrays (normalised states, actions, rewards,
scaled returns-to-go, episode timesteps); a batch is then a single fancy-index gather, so sampling
costs O(B*K) numpy work with no Python loop over the batch.

Window choice: a trajectory is drawn with probability proportional to its length, then the window's
*last* step uniformly within it, and the window covers the K steps ending there. Every dataset step is
therefore equally likely to be the last (fully-conditioned) position, and windows shorter than K occur
exactly where a rollout also has a short history: at the start of an episode. Short windows are
left-padded (mask False, zeros), matching how the rollout cache fills up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dtrl.data.normalizer import StateNormalizer
from dtrl.data.trajectory import Trajectory
from dtrl.errors import DtrlError


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted g_t = sum_{t' >= t} r_t' (float64 accumulation)."""
    return np.cumsum(np.asarray(rewards, dtype=np.float64)[::-1])[::-1]


def sample_proportional_to_length(lengths, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``count`` trajectories drawn with replacement, p(τ) = |τ| / Σ|τ'| (ODT's replay
    sampling; Algorithm 1/2 line 3)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return rng.choice(len(lengths), size=count, replace=True, p=lengths / lengths.sum())


class SequenceSampler:
    def __init__(
        self,
        trajectories: Sequence[Trajectory],
        context_length: int,
        reward_scale: float,
        normalizer: StateNormalizer | None,
        rng: np.random.Generator | int | None = None,
    ):
        """``reward_scale``: returns-to-go are divided by it (the model's RTG input scale).
        ``normalizer``: applied to states once here (None: states as stored).
        ``rng``: a numpy Generator (or a seed) that owns all sampling randomness."""
        trajectories = [t for t in trajectories if len(t) > 0]
        if not trajectories:
            raise DtrlError("SequenceSampler needs at least one non-empty trajectory")
        if context_length < 1:
            raise DtrlError(f"context length must be >= 1, got {context_length}")
        if reward_scale <= 0:
            raise DtrlError(f"reward scale must be > 0, got {reward_scale}")
        self.context_length = int(context_length)
        self.reward_scale = float(reward_scale)
        self.normalizer = normalizer
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

        self.lengths = np.array([len(t) for t in trajectories], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        observations = np.concatenate([t.observations for t in trajectories]).astype(np.float32)
        self.states = normalizer.normalize(observations) if normalizer is not None else observations
        self.actions = np.concatenate([t.actions for t in trajectories]).astype(np.float32)
        self.rewards = np.concatenate([t.rewards for t in trajectories]).astype(np.float32)
        self.rtg = (np.concatenate([returns_to_go(t.rewards) for t in trajectories]) / self.reward_scale).astype(
            np.float32)
        self.timesteps = np.concatenate([np.arange(n, dtype=np.int64) for n in self.lengths])

    @property
    def n_trajectories(self) -> int:
        return len(self.lengths)

    @property
    def n_transitions(self) -> int:
        return int(self.lengths.sum())

    def sample_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(trajectory index [B], window end step within it [B])."""
        traj = sample_proportional_to_length(self.lengths, batch_size, self.rng)
        end = (self.rng.random(batch_size) * self.lengths[traj]).astype(np.int64)
        return traj, np.minimum(end, self.lengths[traj] - 1)

    def sample(self, batch_size: int) -> dict:
        """A batch of windows as torch tensors: states [B,K,O] (normalised), actions [B,K,A],
        returns_to_go [B,K] (scaled), rewards [B,K], timesteps [B,K] (long), mask [B,K] (bool, True valid)."""
        traj, end = self.sample_indices(batch_size)
        return self.gather(traj, end)

    def gather(self, traj: np.ndarray, end: np.ndarray) -> dict:
        """Windows of K steps ending at step ``end[b]`` of trajectory ``traj[b]`` (left-padded)."""
        import torch

        K = self.context_length
        local = np.asarray(end)[:, None] - K + 1 + np.arange(K)[None, :]  # [B, K] step within the trajectory
        mask = local >= 0
        flat = self.starts[np.asarray(traj)][:, None] + np.maximum(local, 0)
        batch = {
            "states": self.states[flat],
            "actions": self.actions[flat],
            "returns_to_go": self.rtg[flat],
            "rewards": self.rewards[flat],
            "timesteps": self.timesteps[flat],
        }
        for value in batch.values():  # padding is zero, never a neighbour's data
            value[~mask] = 0
        out = {key: torch.from_numpy(value) for key, value in batch.items()}
        out["mask"] = torch.from_numpy(mask)
        return out
