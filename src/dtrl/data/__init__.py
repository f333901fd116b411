"""Offline data: the Trajectory type, D4RL HDF5 read/write, Minari, the local builder, samplers."""

from dtrl.data.trajectory import Trajectory, split_episodes

__all__ = ["Trajectory", "split_episodes"]
