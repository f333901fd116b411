"""Exact, picklable snapshots of a gymnasium MuJoCo environment's state.

GRPO restarts groups of rollouts from one saved simulator state, so a restored env must step
*bit-identically* to the original. ``qpos``/``qvel`` are not enough. What else the next steps read:

1. MuJoCo integration state (``mj_getState`` with ``mjSTATE_INTEGRATION``): positions, velocities,
   actuator activations, controls, applied forces, mocap, user data, time and the constraint
   solver's warm start ``qacc_warmstart`` (``mjSTATE_FULLPHYSICS`` lacks the warm start, which is
   why it is exact for Hopper but not for Walker2d/HalfCheetah).
2. *Stale* derived quantities. After ``mj_step``, kinematic outputs such as ``xpos`` describe the
   state at the start of the last substep, not the current ``qpos``. Some envs read them before
   stepping: Ant's forward reward is ``(xpos_after - xpos_before) / dt``, Humanoid uses ``xipos``,
   Reacher/Pusher use ``xpos``. Recomputing them with ``mj_forward`` after a restore gives the
   *current* kinematics instead, which shifted Ant's first reward (the 5e-4 mismatch an earlier
   prototype saw). We copy the stale arrays verbatim.
3. Model fields an env writes at reset (Adroit door position ``body_pos``, pen target
   ``body_quat``, AntMaze goal marker ``site_pos``). Found automatically: after each reset we diff
   the model against its state at construction.
4. Plain Python attributes of the env and of envs nested in it (AntMaze's goal and reset position,
   the inner ant env's ``init_qpos``, the pen's lengths), again only those that differ from
   construction time, and every ``np_random`` generator so future randomness matches too.

The episode time counter and the last observation live in ``BranchableEnv`` (see ``env.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

# Everything mj_step needs to be deterministic (MuJoCo docs, "mjtState").
_STATE_SIGNATURE = int(mujoco.mjtState.mjSTATE_INTEGRATION)

# Stale derived arrays (point 2 above) that each family's step() reads before mj_step.
# "generic" covers every gymnasium MuJoCo env: Ant/Reacher/Pusher read xpos, Humanoid reads xipos.
STALE_DERIVED_FIELDS: dict[str, tuple[str, ...]] = {
    "hopper": (),
    "walker2d": (),
    "ant": ("xpos",),
    "antmaze": ("xpos",),
    "door": (),
    "hammer": (),
    "pen": (),
    "generic": ("xpos", "xipos"),
}

_PLAIN_SCALARS = (bool, int, float, np.generic)


@dataclass(frozen=True)
class PhysicsSnapshot:
    """The simulator part of an env snapshot: everything except the wrapper's counters."""

    env_id: str
    """gymnasium id of the env it came from (a restore into another task is refused)"""
    integration_state: np.ndarray
    """``mj_getState(..., mjSTATE_INTEGRATION)``"""
    stale_derived: dict[str, np.ndarray]
    """derived ``MjData`` arrays as the last step left them (not recomputed at the current state)"""
    model_fields: dict[str, np.ndarray]
    """``MjModel`` arrays that differ from construction time (written at reset)"""
    attributes: tuple[tuple[int, str, Any], ...]
    """(env index in the nested-env list, attribute name, value) for changed plain attributes"""
    rng_states: tuple[dict | None, ...]
    """``np_random.bit_generator.state`` of each nested env (None: never seeded)"""


def _is_plain(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype != object
    return isinstance(value, _PLAIN_SCALARS)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape \
            and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    return type(a) is type(b) and a == b


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value


def _nested_envs(root: gym.Env) -> list[gym.Env]:
    """The env and every gymnasium env held in its attributes (AntMaze keeps an inner AntEnv)."""
    found: list[gym.Env] = []
    stack = [root]
    while stack:
        env = stack.pop()
        if any(env is seen for seen in found):
            continue
        found.append(env)
        stack.extend(v for v in vars(env).values() if isinstance(v, gym.Env))
    return found


def _model_arrays(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Every numeric array field of an ``MjModel`` (views, not copies)."""
    arrays = {}
    for name in dir(model):
        if name.startswith("_"):
            continue
        try:
            value = getattr(model, name)
        except Exception:  # some properties raise on models without the feature
            continue
        if isinstance(value, np.ndarray) and value.dtype != object and value.size:
            arrays[name] = value
    return arrays


class MujocoStateKeeper:
    """Captures and restores the exact state of one raw (unwrapped) gymnasium MuJoCo env.

    Create it right after the env is constructed, before any reset: construction-time values
    are the baseline against which changed model fields and attributes are found.
    """

    def __init__(self, raw_env: gym.Env, env_id: str, family: str):
        if not hasattr(raw_env, "model") or not hasattr(raw_env, "data"):
            raise TypeError(f"{env_id} is not a MuJoCo env (no .model/.data)")
        self.env = raw_env
        self.env_id = env_id
        self.model: mujoco.MjModel = raw_env.model
        self.data: mujoco.MjData = raw_env.data
        self.envs = _nested_envs(raw_env)
        self.stale_fields = STALE_DERIVED_FIELDS.get(family, STALE_DERIVED_FIELDS["generic"])
        self._state_buffer = np.empty(mujoco.mj_stateSize(self.model, _STATE_SIGNATURE))
        self._model_views = _model_arrays(self.model)
        self._model_baseline = {name: a.copy() for name, a in self._model_views.items()}
        self._attr_baseline = [
            {name: _copy(v) for name, v in vars(env).items() if _is_plain(v)} for env in self.envs
        ]
        # Names observed to change (model fields: checked after each reset, which is where envs
        # write them; attributes: compared at every snapshot, they are few).
        self.dirty_model_fields: set[str] = set()

    def note_reset(self) -> None:
        """Find model fields the env's reset wrote (full model diff; resets are rare)."""
        for name, view in self._model_views.items():
            if name not in self.dirty_model_fields and not np.array_equal(
                view, self._model_baseline[name], equal_nan=True
            ):
                self.dirty_model_fields.add(name)

    def capture(self) -> PhysicsSnapshot:
        mujoco.mj_getState(self.model, self.data, self._state_buffer, _STATE_SIGNATURE)
        attributes = []
        for index, (env, baseline) in enumerate(zip(self.envs, self._attr_baseline)):
            for name, value in vars(env).items():
                if not _is_plain(value):
                    continue
                if name in baseline and _equal(value, baseline[name]):
                    continue
                attributes.append((index, name, _copy(value)))
        rng_states = tuple(
            None if env._np_random is None else env._np_random.bit_generator.state for env in self.envs
        )
        return PhysicsSnapshot(
            env_id=self.env_id,
            integration_state=self._state_buffer.copy(),
            stale_derived={name: getattr(self.data, name).copy() for name in self.stale_fields},
            model_fields={name: self._model_views[name].copy() for name in sorted(self.dirty_model_fields)},
            attributes=tuple(attributes),
            rng_states=rng_states,
        )

    def restore(self, snap: PhysicsSnapshot) -> None:
        # Model fields first: mj_forward below must see the snapshot's model.
        for name in self.dirty_model_fields - snap.model_fields.keys():
            self._model_views[name][...] = self._model_baseline[name]
        for name, value in snap.model_fields.items():
            self._model_views[name][...] = value
        self.dirty_model_fields |= snap.model_fields.keys()

        changed = {(index, name) for index, name, _ in snap.attributes}
        for index, (env, baseline) in enumerate(zip(self.envs, self._attr_baseline)):
            for name, value in baseline.items():
                if (index, name) not in changed and not _equal(getattr(env, name, None), value):
                    _set_attribute(env, name, value)
        for index, name, value in snap.attributes:
            _set_attribute(self.envs[index], name, value)

        for env, state in zip(self.envs, snap.rng_states):
            if state is None:
                env._np_random = None
                continue
            if env._np_random is None or type(env._np_random.bit_generator).__name__ != state["bit_generator"]:
                env._np_random = np.random.Generator(getattr(np.random, state["bit_generator"])())
            env._np_random.bit_generator.state = state

        mujoco.mj_setState(self.model, self.data, snap.integration_state, _STATE_SIGNATURE)
        # Recompute derived quantities (sensors, contacts, site positions) for anything that reads
        # them before stepping; then put back the integration state in case mj_forward touched it,
        # and the stale arrays the original env had.
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_setState(self.model, self.data, snap.integration_state, _STATE_SIGNATURE)
        for name, value in snap.stale_derived.items():
            getattr(self.data, name)[...] = value


def _set_attribute(env: gym.Env, name: str, value: Any) -> None:
    current = getattr(env, name, None)
    if isinstance(value, np.ndarray) and isinstance(current, np.ndarray) \
            and current.shape == value.shape and current.dtype == value.dtype and current.flags.writeable:
        # In place: the attribute may be a view other code holds on to.
        current[...] = value
    else:
        setattr(env, name, _copy(value))
