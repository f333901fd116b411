"""``load_dataset(source, task)``: one entry point for every offline dataset dtrl trains on.

``source`` is any of
  * a D4RL-layout ``.hdf5`` / ``.h5`` file (D4RL's own downloads, or ``dtrl data build`` output),
  * a Minari dataset id such as ``mujoco/hopper/medium-v0`` (local store, else downloaded),
  * a path to a local Minari dataset directory (the folder holding ``data/``).

Whatever the source, the result is checked against the task's environment (observation and action
dimensions), for finite values and for at least one transition, and every failure is a one-line
``DtrlError`` naming the problem.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.data.hdf5 import read_attrs, read_d4rl
from dtrl.data.trajectory import Trajectory, split_episodes
from dtrl.errors import DtrlError
from dtrl.tasks import Task, get_task

HDF5_SUFFIXES = (".hdf5", ".h5")


@dataclass
class Dataset:
    """An offline dataset as a list of trajectories, checked against its task."""

    trajectories: list[Trajectory]
    """episodes (or episode fragments at the end of the data), in file order"""
    obs_dim: int
    """flat observation size (AntMaze: observation + achieved_goal + desired_goal)"""
    act_dim: int
    """action size"""
    source: str
    """where it came from: the file path, Minari id or Minari directory as given"""
    attrs: dict[str, Any] = field(default_factory=dict)
    """source metadata: HDF5 root attributes, or a Minari dataset's metadata"""

    @property
    def n_transitions(self) -> int:
        return int(sum(len(t) for t in self.trajectories))

    @property
    def n_episodes(self) -> int:
        return len(self.trajectories)

    def returns(self) -> np.ndarray:
        """Return of each trajectory (float64)."""
        return np.array([t.episode_return for t in self.trajectories], dtype=np.float64)


@dataclass(frozen=True)
class _EnvSpaces:
    obs_dim: int
    act_dim: int
    act_low: np.ndarray
    act_high: np.ndarray


_SPACES_CACHE: dict[tuple[str, str, str], _EnvSpaces] = {}


def _env_spaces(task: Task) -> _EnvSpaces:
    """Observation/action sizes the task's environment produces (what a policy trained on the data
    will be fed online). Uses ``dtrl.envs.make`` so the flattening is the one the rollouts use."""
    key = (task.name, task.env_id, repr(sorted(task.env_kwargs.items())))
    if key not in _SPACES_CACHE:
        _SPACES_CACHE[key] = _make_env_spaces(task)
    return _SPACES_CACHE[key]


def _make_env_spaces(task: Task) -> _EnvSpaces:
    from dtrl.envs import make

    env = make(task)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        return _EnvSpaces(int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)),
                          np.asarray(act_space.low, dtype=np.float32), np.asarray(act_space.high, dtype=np.float32))
    finally:
        env.close()


def _flatten_observations(task: Task, observations: Any) -> np.ndarray:
    """Minari stores AntMaze observations as a dict of arrays; dtrl policies see the flat vector
    (``dtrl.envs.flatten_observation``: concat(observation, achieved_goal, desired_goal))."""
    from dtrl.envs import flatten_observation

    return flatten_observation(task, observations)


def _resolve_task(task: Task | str) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def looks_like_minari_id(source: str) -> bool:
    """``namespace/name-vN`` style ids: not an existing path, no HDF5 suffix, has a '/' and a version."""
    return (not os.path.exists(source) and not source.endswith(HDF5_SUFFIXES) and "/" in source
            and "-v" in source.rsplit("/", 1)[-1])


def load_dataset(source: str | os.PathLike, task: Task | str) -> Dataset:
    """Load and validate an offline dataset for ``task`` (see the module docstring for ``source``)."""
    task = _resolve_task(task)
    source_str = str(source)
    path = Path(source_str)
    if source_str.endswith(HDF5_SUFFIXES) or path.is_file():
        trajectories, attrs = _load_hdf5(path)
    elif path.is_dir():
        trajectories, attrs = _load_minari_dir(path, task)
        check_dataset_env(task, attrs, source_str)
    elif looks_like_minari_id(source_str):
        trajectories, attrs = _load_minari_id(source_str, task)
        check_dataset_env(task, attrs, source_str)
    else:
        raise DtrlError(f"dataset {source_str!r} is neither an existing .hdf5 file, a Minari dataset directory "
                        "nor a Minari id (like mujoco/hopper/medium-v0)")
    return validate(trajectories, task, source_str, attrs)


def minari_env_id(attrs: dict[str, Any]) -> str | None:
    """The gymnasium env id in a Minari dataset's metadata (its ``env_spec``), if it has one."""
    spec = attrs.get("env_spec")
    if not spec:
        return None
    try:
        return str(json.loads(spec)["id"]) if isinstance(spec, str) else str(getattr(spec, "id", None) or spec["id"])
    except (ValueError, KeyError, TypeError):
        return None


def _env_family(env_id: str) -> str:
    """``AntMaze_Medium_Diverse_GR-v4`` -> ``AntMaze_Medium``: Minari's D4RL datasets name older versions
    and goal-sampling variants of the envs dtrl runs (same observation layout), so versions and the
    ``_Diverse`` / ``_GR`` / ``_G`` suffixes are not compared; the robot and the maze are."""
    parts = env_id.rsplit("-v", 1)[0].split("_")
    return "_".join(parts[:2]) if parts[0].endswith("Maze") and len(parts) > 1 else parts[0]


def check_dataset_env(task: Task, attrs: dict[str, Any], source: str) -> None:
    """A Minari dataset recorded in another env than ``task``'s is refused (one line)."""
    recorded = minari_env_id(attrs)
    if recorded is not None and _env_family(recorded) != _env_family(task.env_id):
        raise DtrlError(f"dataset {source} was recorded in {recorded}, but task {task.name} runs {task.env_id}")


def minari_metadata(source: str) -> dict[str, Any] | None:
    """The metadata of a Minari dataset on this machine (a dataset directory, or an id in the local
    store; nothing is downloaded), or None when ``source`` is no such dataset."""
    import minari

    path = Path(source)
    try:
        if path.is_dir():
            from minari import MinariDataset

            dataset = MinariDataset(path / "data" if (path / "data").is_dir() else path)
        elif looks_like_minari_id(source):
            dataset = minari.load_dataset(source, download=False)
        else:
            return None
    except Exception:  # not a Minari dataset, or not stored locally
        return None
    return dict(getattr(dataset.storage, "metadata", {}) or {})


def _load_hdf5(path: Path) -> tuple[list[Trajectory], dict[str, Any]]:
    arrays = read_d4rl(path)
    check_d4rl_arrays(arrays, path)
    trajectories = split_episodes(arrays["observations"], arrays["actions"], np.reshape(arrays["rewards"], -1),
                                  np.reshape(arrays["terminals"], -1), np.reshape(arrays["timeouts"], -1))
    return trajectories, read_attrs(path)


MAX_ABS_VALUE = 1e15
"""observations, actions and rewards beyond this magnitude are refused: no MuJoCo quantity is that large,
and squares and sums of them (state statistics, returns-to-go) overflow float32 near 1.8e19"""


def check_d4rl_arrays(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """One-line DtrlError for D4RL arrays that cannot be split into episodes: ragged lengths, an
    observation or action array that is not [N, dim], a reward, terminal or timeout array that is not
    one value per transition ([N] or [N, 1]), or values that are not real numbers."""
    lengths = {key: len(arrays[key]) if np.ndim(arrays[key]) else 0
               for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for key in lengths:
        kind = np.asarray(arrays[key]).dtype.kind
        if kind not in "biuf":
            raise DtrlError(f"dataset file {path}: {key} must hold numbers, got dtype {arrays[key].dtype}")
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise DtrlError(f"dataset file {path} has arrays of different lengths ({detail})")
    for key in ("observations", "actions"):
        if arrays[key].ndim != 2:
            raise DtrlError(f"dataset file {path}: {key} must be 2-D [N, dim], got shape {arrays[key].shape}")
    n = lengths["rewards"]
    for key in ("rewards", "terminals", "timeouts"):
        if np.size(arrays[key]) != n:
            raise DtrlError(f"dataset file {path}: {key} must hold one value per transition ([{n}] or [{n}, 1]), "
                            f"got shape {arrays[key].shape}")


def _load_minari_id(dataset_id: str, task: Task) -> tuple[list[Trajectory], dict[str, Any]]:
    import minari

    try:
        dataset = minari.load_dataset(dataset_id, download=False)
    except FileNotFoundError:
        _check_minari_remote_reachable(dataset_id)
        try:
            dataset = minari.load_dataset(dataset_id, download=True)
        except Exception as exc:  # network, unknown id, remote errors: all mean "cannot get it"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DtrlError(f"Minari dataset {dataset_id} is not stored locally and could not be downloaded: "
                            f"{reason}") from None
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DtrlError(f"Minari dataset {dataset_id} could not be read from the local store: {reason}") from None
    return _minari_trajectories(dataset, task, dataset_id)


def _check_minari_remote_reachable(dataset_id: str) -> None:
    """Fail at once when the Minari remote's host does not even resolve (offline machine), instead of
    after huggingface_hub's ~25 s of retries."""
    import socket

    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    host = {"hf": "huggingface.co", "gcs": "storage.googleapis.com"}.get(remote.split("://", 1)[0])
    if host is None:
        return
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise DtrlError(f"Minari dataset {dataset_id} is not stored locally and could not be downloaded: "
                        f"no network ({host} does not resolve: {exc})") from None


def _load_minari_dir(path: Path, task: Task) -> tuple[list[Trajectory], dict[str, Any]]:
    from minari import MinariDataset

    data_path = path / "data" if (path / "data").is_dir() else path
    try:
        dataset = MinariDataset(data_path)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DtrlError(f"{path} is not a readable Minari dataset directory: {reason}") from None
    return _minari_trajectories(dataset, task, str(path))


def _minari_trajectories(dataset: Any, task: Task, name: str) -> tuple[list[Trajectory], dict[str, Any]]:
    trajectories = []
    try:
        episodes = list(dataset.iterate_episodes())
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DtrlError(f"Minari dataset {name} could not be read (corrupt?): {reason}") from None
    for episode in episodes:
        # Minari keeps T+1 observations (the final one after the last action); D4RL rows keep T.
        observations = _flatten_observations(task, episode.observations)[:-1]
        terminated = bool(np.any(episode.terminations))
        trajectories.append(Trajectory(
            observations=observations,
            actions=np.asarray(episode.actions, dtype=np.float32).reshape(len(episode.actions), -1),
            rewards=np.asarray(episode.rewards, dtype=np.float32).reshape(-1),
            terminated=terminated,
            truncated=not terminated,
        ))
    metadata = getattr(dataset, "storage", None)
    attrs: dict[str, Any] = {"minari_id": getattr(dataset, "id", None) or name}
    if metadata is not None and hasattr(metadata, "metadata"):
        for key in ("dataset_id", "algorithm_name", "ref_min_score", "ref_max_score", "env_spec", "minari_version",
                    "dtrl_task"):
            if key in metadata.metadata and metadata.metadata[key] is not None:
                attrs[key] = metadata.metadata[key] if not isinstance(metadata.metadata[key], (dict, list)) else str(
                    metadata.metadata[key])
    return trajectories, attrs


ACTION_SLACK = 0.1
"""how far outside the action box (as a fraction of its half-width) dataset actions may lie and be
clipped; farther is refused"""


def validate(trajectories: list[Trajectory], task: Task | str, source: str, attrs: dict[str, Any] | None = None,
             ) -> Dataset:
    """Check trajectories against the task's env and wrap them in a ``Dataset`` (one-line DtrlError on
    any problem). Actions slightly outside the env's action box (D4RL/Minari human data has some, which
    the simulator clips anyway and a tanh policy cannot represent) are clipped into it with a warning;
    actions far outside it (more than ``ACTION_SLACK`` of the box's half-width) are refused: the data
    is scaled for another action space."""
    task = _resolve_task(task)
    trajectories = [t for t in trajectories if len(t) > 0]
    if not trajectories:
        raise DtrlError(f"dataset {source} is empty (no transitions)")
    spaces = _env_spaces(task)
    first = trajectories[0]
    obs_dim = first.observations.shape[-1] if first.observations.ndim == 2 else -1
    act_dim = first.actions.shape[-1] if first.actions.ndim == 2 else -1
    if obs_dim != spaces.obs_dim:
        raise DtrlError(f"dataset {source} has observations of dimension {obs_dim} but task {task.name} "
                        f"({task.env_id}) expects {spaces.obs_dim}")
    if act_dim != spaces.act_dim:
        raise DtrlError(f"dataset {source} has actions of dimension {act_dim} but task {task.name} "
                        f"({task.env_id}) expects {spaces.act_dim}")
    for index, traj in enumerate(trajectories):
        if traj.observations.shape != (len(traj), obs_dim) or traj.actions.shape != (len(traj), act_dim):
            raise DtrlError(f"dataset {source}: episode {index} has inconsistent shapes "
                            f"(observations {traj.observations.shape}, actions {traj.actions.shape}, "
                            f"rewards {traj.rewards.shape})")
        for key in ("observations", "actions", "rewards"):
            values = getattr(traj, key)
            if not np.all(np.isfinite(values)):
                raise DtrlError(f"dataset {source} has non-finite (NaN or inf) {key} in episode {index}")
            largest = float(np.max(np.abs(values))) if values.size else 0.0
            if largest > MAX_ABS_VALUE:
                raise DtrlError(f"dataset {source} has {key} up to {largest:.3g} in episode {index} (beyond "
                                f"±{MAX_ABS_VALUE:g}: corrupt, or not in the units the task's env uses)")
    half_width = (np.asarray(spaces.act_high) - np.asarray(spaces.act_low)) / 2.0
    beyond = max(float(np.max(np.maximum(t.actions - spaces.act_high, spaces.act_low - t.actions) / half_width))
                 for t in trajectories)
    if beyond > ACTION_SLACK:
        raise DtrlError(f"dataset {source} has actions up to {beyond:.0%} of the action box's half-width outside "
                        f"[{np.min(spaces.act_low):g}, {np.max(spaces.act_high):g}]: scaled for another action space?")
    if beyond > 0:
        clipped = sum(int(np.count_nonzero((t.actions < spaces.act_low) | (t.actions > spaces.act_high)))
                      for t in trajectories)
        print(f"dtrl: warning: dataset {source}: {clipped} action value(s) up to {beyond:.1%} outside the action box "
              "were clipped into it", file=sys.stderr)
        for traj in trajectories:
            traj.actions = np.clip(traj.actions, spaces.act_low, spaces.act_high)
    return Dataset(trajectories=trajectories, obs_dim=obs_dim, act_dim=act_dim, source=source, attrs=dict(attrs or {}))
