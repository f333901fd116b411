"""Environments: make(), exact snapshot/restore per env family, batched envs that branch from snapshots."""

from dtrl.tasks import register_all

from .batched import BatchedEnv, default_num_workers
from .env import BranchableEnv, EnvSnapshot, flatten_observation, make

__all__ = ["register_all", "make", "BranchableEnv", "EnvSnapshot", "flatten_observation", "BatchedEnv",
           "default_num_workers"]
