"""Offline data: the Trajectory type, D4RL HDF5 read/write, Minari, the local builder, samplers."""

from dtrl.data.dataset import Dataset, load_dataset, validate
from dtrl.data.hdf5 import read_attrs, read_d4rl, write_d4rl
from dtrl.data.normalizer import StateNormalizer
from dtrl.data.sampler import SequenceSampler, returns_to_go, sample_proportional_to_length
from dtrl.data.trajectory import Trajectory, split_episodes

__all__ = [
    "Dataset", "SequenceSampler", "StateNormalizer", "Trajectory", "load_dataset", "read_attrs", "read_d4rl",
    "returns_to_go", "sample_proportional_to_length", "split_episodes", "validate", "write_d4rl",
]
