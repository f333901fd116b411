"""Environments: make(), exact snapshot/restore per env family, batched envs that branch from snapshots."""

from __future__ import annotations

_registered = False


def register_all() -> None:
    """Register gymnasium-robotics envs (AntMaze, Adroit) with gymnasium, once."""
    global _registered
    if _registered:
        return
    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    _registered = True
