"""Write dtrl's trajectories as a Minari dataset (``dtrl data export FILE --minari-id NS/NAME-v0``):
where the field keeps its offline data now, readable with ``minari.load_dataset`` by anyone.

Minari stores T + 1 observations per episode (the one after the last action too); a D4RL-layout file
keeps T rows, plus ``next_observations`` when it has them. The final observation comes from there;
without it the last observation is repeated, and the dataset's description says so. dtrl's loader
drops the final observation, so D4RL -> Minari -> D4RL gives back the same arrays either way.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from dtrl.data.dataset import Dataset
from dtrl.data.task_of import TASK_ATTR
from dtrl.errors import DtrlError
from dtrl.tasks import Task


def unflatten_goal_observations(flat: np.ndarray, space) -> dict[str, np.ndarray]:
    """dtrl's flat goal observation concat(observation, achieved_goal, desired_goal) as the env's dict."""
    from dtrl.envs.env import GOAL_OBSERVATION_KEYS

    parts, start = {}, 0
    for key in GOAL_OBSERVATION_KEYS:
        size = int(np.prod(space[key].shape))
        parts[key] = np.asarray(flat[:, start:start + size], dtype=space[key].dtype)
        start += size
    if start != flat.shape[1]:
        raise DtrlError(f"flat observations of {flat.shape[1]} dims do not split into the env's goal dict ({start})")
    return parts


def export_minari(dataset: Dataset, task: Task, dataset_id: str, next_observations: np.ndarray | None = None,
                  algorithm_name: str | None = None, description: str | None = None,
                  store: str | os.PathLike | None = None, dtrl_task: str | None = None):
    """Create Minari dataset ``dataset_id`` (``namespace/name-vN``) from ``dataset``, with the task's
    env spec and reference scores; ``store`` is the Minari datasets folder (default: Minari's own,
    ``MINARI_DATASETS_PATH``); ``dtrl_task``: the dtrl task the data is, kept in the metadata
    (``dtrl_task``) so that ``--dataset`` without ``--task`` trains on it. Returns the ``minari.MinariDataset``."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    if "/" not in dataset_id or "-v" not in dataset_id.rsplit("/", 1)[-1]:
        raise DtrlError(f"--minari-id {dataset_id!r} must look like namespace/name-v0")
    if store is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(store).absolute())
    if dataset_id in minari.list_local_datasets():
        raise DtrlError(f"Minari dataset {dataset_id} already exists in the local store (choose another id)")
    buffers, row, repeated = [], 0, 0
    for index, trajectory in enumerate(dataset.trajectories):
        n = len(trajectory)
        if next_observations is not None:
            final = next_observations[row + n - 1]
        else:
            final = trajectory.observations[-1]
            repeated += 1
        row += n
        terminations = np.zeros(n, bool)
        terminations[-1] = trajectory.terminated
        buffers.append(EpisodeBuffer(
            id=index, observations=np.concatenate([trajectory.observations, np.asarray(final)[None]]),
            actions=trajectory.actions, rewards=trajectory.rewards.astype(np.float64).tolist(),
            terminations=terminations.tolist(), truncations=(~terminations & (np.arange(n) == n - 1)).tolist()))
    note = (f" The final observation of {repeated} episode(s) is their last one repeated (the source file has no "
            "next_observations)." if repeated else "")
    env = gym.make(task.env_id, max_episode_steps=task.max_episode_steps, **task.env_kwargs)
    if isinstance(env.observation_space, gym.spaces.Dict):  # goal envs: back to the env's own dict layout
        buffers = [dataclasses.replace(buffer, observations=unflatten_goal_observations(buffer.observations,
                                                                                        env.observation_space))
                   for buffer in buffers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari's notes about eval_env and missing optional metadata
            exported = minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, algorithm_name=algorithm_name or "unknown",
                ref_min_score=task.ref_min_score, ref_max_score=task.ref_max_score,
                description=(description or f"{task.name} data exported by dtrl from {dataset.source}.") + note)
        if dtrl_task:
            exported.storage.update_metadata({TASK_ATTR: dtrl_task})
        return exported
    finally:
        env.close()
