"""``make()``: a task's env with a flat float32 observation, its time limit, and exact snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dtrl.errors import DtrlError
from dtrl.tasks import ROBOTICS_HINT, Task, get_task, gymnasium_robotics_installed, register_all

from .snapshot import MujocoStateKeeper, PhysicsSnapshot, pack_array, unpack_array

# AntMaze (dict observation) is flattened in this order; the data loader does the same to Minari data.
GOAL_OBSERVATION_KEYS = ("observation", "achieved_goal", "desired_goal")


def flatten_observation(task: Task, obs: Any) -> np.ndarray:
    """A task's observation as a float32 array; goal dicts become concat(observation, achieved, desired).

    Works on one observation or on stacked ones (``[T, d]`` arrays in the dict): concatenation is
    along the last axis.
    """
    if isinstance(obs, dict):
        missing = [key for key in GOAL_OBSERVATION_KEYS if key not in obs]
        if missing:
            raise DtrlError(f"{task.name}: goal observation lacks keys {missing} (has {sorted(obs)})")
        return np.concatenate([np.asarray(obs[key], dtype=np.float32) for key in GOAL_OBSERVATION_KEYS], axis=-1)
    return np.asarray(obs, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class EnvSnapshot:
    """Everything needed to put any env of the same task into exactly this state. Picklable."""

    task_name: str
    """task it was taken from"""
    physics: PhysicsSnapshot
    """simulator state, changed model fields, env attributes and RNG states"""
    elapsed_steps: int
    """steps taken in the episode (the time limit counts on from here)"""
    episode_over: bool
    """the episode had terminated or been truncated (stepping on is refused)"""
    observation: np.ndarray
    """the observation the env last returned (restore returns it again)"""

    def __reduce__(self):
        return _unpickle_snapshot, (self.task_name, self.physics, self.elapsed_steps, self.episode_over,
                                    pack_array(self.observation))


def _unpickle_snapshot(task_name, physics, elapsed_steps, episode_over, observation) -> EnvSnapshot:
    return EnvSnapshot(task_name, physics, elapsed_steps, episode_over, unpack_array(observation))


def _env_kwargs(task: Task) -> dict[str, Any]:
    kwargs = dict(task.env_kwargs)
    # AntMaze v5 builds on Ant-v5, which renamed v4's `use_contact_forces` to
    # `include_cfrc_ext_in_observation` (and rejects the old name with a TypeError).
    if task.env_id.startswith("AntMaze") and task.env_id.endswith("-v5") and "use_contact_forces" in kwargs:
        kwargs["include_cfrc_ext_in_observation"] = kwargs.pop("use_contact_forces")
    return kwargs


class BranchableEnv(gym.Wrapper):
    """A task's MuJoCo env with a flat float32 observation, the task's time limit (truncation),
    and exact ``snapshot()`` / ``restore()``. Build it with :func:`make`.

    It wraps the raw gymnasium env directly (``env.unwrapped``), without gymnasium's TimeLimit,
    OrderEnforcing and checker wrappers: the time limit is kept here so that its counter is part
    of the snapshot, and stepping before reset or after the episode's end is refused here.
    """

    def __init__(self, task: Task, seed: int | None = None, render_mode: str | None = None):
        register_all()
        self.task = task
        try:
            raw = gym.make(task.env_id, disable_env_checker=True, render_mode=render_mode,
                           **_env_kwargs(task)).unwrapped
        except gym.error.Error as exc:
            hint = "" if gymnasium_robotics_installed() else f" ({ROBOTICS_HINT})"
            raise DtrlError(f"cannot make env {task.env_id} for task {task.name}: {exc}{hint}") from None
        except TypeError as exc:
            raise DtrlError(f"env {task.env_id} rejects the kwargs of task {task.name} {task.env_kwargs}: "
                            f"{exc}") from None
        super().__init__(raw)
        self._raw = raw
        self._keeper = MujocoStateKeeper(raw, task.env_id, task.family)
        self.max_episode_steps = task.max_episode_steps
        self.elapsed_steps = 0
        self._needs_reset = True
        self._episode_over = False
        self._seed = seed
        self._last_obs: np.ndarray | None = None
        self._derived_outdated = False  # restore() leaves derived quantities for render() to refresh

        probe = raw.observation_space
        obs_dim = sum(probe[key].shape[0] for key in GOAL_OBSERVATION_KEYS) if isinstance(probe, spaces.Dict) \
            else int(np.prod(probe.shape))
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
        if seed is not None:
            self.action_space.seed(seed)

    @property
    def spec(self) -> None:
        """None: not a registered gymnasium env (``dtrl.envs.make`` builds it from the task)."""
        return None

    @property
    def unwrapped_env(self) -> gym.Env:
        """The raw gymnasium env underneath (model, data, goal attributes...)."""
        return self._raw

    @property
    def obs_dim(self) -> int:
        return self.observation_space.shape[0]

    @property
    def act_dim(self) -> int:
        return self.action_space.shape[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None  # make(seed=...) seeds the first reset
        obs, info = self._raw.reset(seed=seed, options=options)
        self._derived_outdated = False
        self._keeper.note_reset()
        self.elapsed_steps = 0
        self._needs_reset = False
        self._episode_over = False
        self._last_obs = flatten_observation(self.task, obs)
        return self._last_obs.copy(), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._check_can_step()
        if not np.all(np.isfinite(action)):
            raise self._non_finite_action(action)
        obs, reward, terminated, truncated, info = self._raw.step(action)
        terminated, truncated = self._record_step(flatten_observation(self.task, obs), bool(terminated),
                                                  bool(truncated))
        return self._last_obs.copy(), float(reward), terminated, truncated, info

    # The checks and bookkeeping of step(), shared with BatchedEnv's fast path (fast.py), which steps
    # the physics itself and must leave this wrapper exactly as step() would.
    def _check_can_step(self) -> None:
        if self._needs_reset:
            raise DtrlError(f"{self.task.name}: step() before reset() or restore()")
        if self._episode_over:
            raise DtrlError(f"{self.task.name}: step() after the episode ended (reset or restore first)")

    def _non_finite_action(self, action: np.ndarray) -> DtrlError:
        # MuJoCo would warn and silently reset the simulation on the resulting bad accelerations.
        return DtrlError(f"{self.task.name}: non-finite action {np.asarray(action).tolist()}")

    def _record_step(self, observation: np.ndarray, terminated: bool, truncated: bool) -> tuple[bool, bool]:
        """Count the step against the time limit and keep its observation (float32, owned by the
        wrapper from now on); returns (terminated, truncated) with the time limit applied."""
        self._derived_outdated = False
        self.elapsed_steps += 1
        truncated = truncated or self.elapsed_steps >= self.max_episode_steps
        self._episode_over = terminated or truncated
        self._last_obs = observation
        return terminated, truncated

    def snapshot(self) -> EnvSnapshot:
        """The exact current state, picklable; ``restore`` puts any env of this task into it."""
        if self._needs_reset:
            raise DtrlError(f"{self.task.name}: snapshot() before reset()")
        return EnvSnapshot(
            task_name=self.task.name, physics=self._keeper.capture(), elapsed_steps=self.elapsed_steps,
            episode_over=self._episode_over, observation=self._last_obs.copy(),
        )

    def restore(self, snapshot: EnvSnapshot) -> np.ndarray:
        """Put this env into the snapshot's state; returns the observation at that state."""
        if not isinstance(snapshot, EnvSnapshot):
            raise DtrlError(f"restore() needs an EnvSnapshot, got {type(snapshot).__name__}")
        if snapshot.physics.env_id != self.task.env_id or snapshot.observation.shape != (self.obs_dim,):
            raise DtrlError(
                f"snapshot of task {snapshot.task_name} ({snapshot.physics.env_id}) cannot be restored "
                f"into task {self.task.name} ({self.task.env_id})"
            )
        self._keeper.restore(snapshot.physics)
        self.elapsed_steps = snapshot.elapsed_steps
        self._episode_over = snapshot.episode_over
        self._needs_reset = False
        self._last_obs = snapshot.observation.copy()
        self._derived_outdated = True
        return self._last_obs.copy()

    def render(self):
        if self._derived_outdated:
            self._keeper.refresh_derived()
            self._derived_outdated = False
        return self._raw.render()

    def close(self) -> None:
        self._raw.close()

    def __str__(self) -> str:
        return repr(self)

    def __repr__(self) -> str:
        return f"<BranchableEnv {self.task.name}: {self.task.env_id}, obs {self.obs_dim}, act {self.act_dim}, " \
               f"horizon {self.max_episode_steps}>"


def make(task_or_env_id: str | Task, seed: int | None = None, render_mode: str | None = None) -> BranchableEnv:
    """The env for a task name (``hopper-medium``), a ``Task``, or any gymnasium MuJoCo env id.

    ``seed`` seeds the first ``reset()`` (and the action space); later resets continue its stream.
    ``render_mode``: gymnasium's (``"rgb_array"`` for videos), None to not render.
    """
    task = task_or_env_id if isinstance(task_or_env_id, Task) else get_task(task_or_env_id)
    return BranchableEnv(task, seed=seed, render_mode=render_mode)
