"""Seeding and the global RNG states a checkpoint captures and a resume restores."""

from __future__ import annotations

import random
from typing import Any

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and every CUDA device); return the
    numpy Generator a training loop draws its own samples from (checkpointed by the loop)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices
    return np.random.default_rng(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU, CUDA if initialised), for a checkpoint."""
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    # Only when CUDA is in use: get_rng_state_all() would otherwise initialise a CUDA context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put the global RNGs back to a ``capture_rng_state()`` result; the next draws repeat exactly."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
