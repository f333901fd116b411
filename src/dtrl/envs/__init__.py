"""Environments: make(), exact snapshot/restore per env family, batched envs that branch from snapshots."""

from __future__ import annotations

_registered = False


def register_all() -> None:
    """Register gymnasium-robotics envs (AntMaze, Adroit) with gymnasium, once."""
    global _registered
    if _registered:
        return
    import contextlib
    import io

    import gymnasium as gym

    # gymnasium-robotics 1.4.2 prints a notice on import: the dense rewards of the Adroit door and
    # hammer v1 envs changed in 1.2.1 without a version bump (v2 ids come with 1.4.3). Known and
    # noted in docs; kept off stderr because every BatchedEnv worker process would repeat it.
    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    _registered = True


from .batched import BatchedEnv, default_num_workers  # noqa: E402
from .env import BranchableEnv, EnvSnapshot, flatten_observation, make  # noqa: E402

__all__ = ["register_all", "make", "BranchableEnv", "EnvSnapshot", "flatten_observation", "BatchedEnv",
           "default_num_workers"]
