"""State normalisation: (s - mean) / std with statistics from the offline data, saved with every policy
so that online rollouts and evaluation feed the model exactly what it was trained on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dtrl.data.trajectory import Trajectory
from dtrl.errors import DtrlError


@dataclass
class StateNormalizer:
    mean: np.ndarray
    """[obs_dim] float32 per-dimension mean of the dataset's observations"""
    std: np.ndarray
    """[obs_dim] float32 per-dimension standard deviation, floored at ``min_std``"""

    DEFAULT_MIN_STD = 1e-3
    """A dimension that is (nearly) constant in the data would otherwise blow up any online value that
    differs from it; 1e-3 keeps such dims bounded while leaving real scales (>= 1e-2) untouched."""

    @classmethod
    def from_trajectories(cls, trajectories: Sequence[Trajectory], min_std: float = DEFAULT_MIN_STD) -> StateNormalizer:
        if not trajectories:
            raise DtrlError("cannot compute state statistics from an empty list of trajectories")
        observations = np.concatenate([t.observations for t in trajectories], axis=0).astype(np.float64)
        return cls.from_array(observations, min_std)

    @classmethod
    def from_array(cls, observations: np.ndarray, min_std: float = DEFAULT_MIN_STD) -> StateNormalizer:
        observations = np.asarray(observations, dtype=np.float64)
        mean = observations.mean(axis=0)
        std = np.maximum(observations.std(axis=0), min_std)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    @classmethod
    def identity(cls, obs_dim: int) -> StateNormalizer:
        return cls(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))

    @property
    def obs_dim(self) -> int:
        return int(self.mean.shape[0])

    def normalize(self, x):
        """Works on numpy arrays and torch tensors ([..., obs_dim]); returns the same kind."""
        if isinstance(x, np.ndarray):
            return ((x - self.mean) / self.std).astype(np.float32, copy=False)
        import torch

        mean = torch.as_tensor(self.mean, device=x.device, dtype=x.dtype)
        std = torch.as_tensor(self.std, device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def denormalize(self, x):
        if isinstance(x, np.ndarray):
            return (x * self.std + self.mean).astype(np.float32, copy=False)
        import torch

        mean = torch.as_tensor(self.mean, device=x.device, dtype=x.dtype)
        std = torch.as_tensor(self.std, device=x.device, dtype=x.dtype)
        return x * std + mean

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: float lists (float32 values round-trip exactly through Python floats)."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StateNormalizer:
        try:
            mean = np.asarray(data["mean"], dtype=np.float32)
            std = np.asarray(data["std"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise DtrlError(f"state normaliser data is malformed: {exc}") from None
        if mean.ndim != 1 or mean.shape != std.shape:
            raise DtrlError(f"state normaliser mean {mean.shape} and std {std.shape} must be equal 1-D shapes")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise DtrlError("state normaliser holds non-finite values or a non-positive std")
        return cls(mean, std)
