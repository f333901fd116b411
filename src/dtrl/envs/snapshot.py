"""Exact, picklable snapshots of a gymnasium MuJoCo environment's state.

GRPO restarts groups of rollouts from one saved simulator state, so a restored env must step
*bit-identically* to the original. ``qpos``/``qvel`` are not enough. What else the next steps read:

1. MuJoCo integration state (``mj_getState`` with ``mjSTATE_INTEGRATION``): positions, velocities,
   actuator activations, controls, applied forces, mocap, user data, time and the constraint
   solver's warm start ``qacc_warmstart``. ``mjSTATE_FULLPHYSICS`` lacks the warm start: the solver
   then starts from another guess and results differ in the last bits (measured: Hopper's first
   reward by 1e-16, Walker2d after a few steps, Ant and AntMaze in the tests).
2. *Stale* derived quantities. After ``mj_step``, kinematic outputs such as ``xpos`` describe the
   state at the start of the last substep, not the current ``qpos``. Some envs read them before
   stepping: Ant's forward reward is ``(xpos_after - xpos_before) / dt``, Humanoid uses ``xipos``,
   Reacher/Pusher use ``xpos``. Recomputing them with ``mj_forward`` after a restore gives the
   *current* kinematics instead, one substep (0.01 s) ahead, which shifts Ant's first reward by
   about 0.2 x its velocity: the likely cause of the 5e-4 mismatch an earlier prototype saw. We
   copy the stale arrays verbatim.
3. Model fields an env writes at reset (Adroit door position ``body_pos``, pen target
   ``body_quat``, AntMaze goal marker ``site_pos``). Found automatically: after each reset we diff
   the model against its state at construction.
4. Plain Python attributes of the env and of envs nested in it (AntMaze's goal and reset position,
   the inner ant env's ``init_qpos``, the pen's lengths), again only those that differ from
   construction time, and every ``np_random`` generator so future randomness matches too.

The episode time counter and the last observation live in ``BranchableEnv`` (see ``env.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

_MUJOCO_WARNINGS_SEEN: set[str] = set()


def _mujoco_warning(message: str) -> None:
    """MuJoCo's warnings (an unstable simulation: "Nan, Inf or huge value in QACC") on stderr, each kind
    once per process; without a handler MuJoCo appends them to MUJOCO_LOG.TXT in the current folder."""
    kind = message.split(" Time = ", 1)[0].strip()
    if kind not in _MUJOCO_WARNINGS_SEEN:
        _MUJOCO_WARNINGS_SEEN.add(kind)
        print(f"dtrl: warning: MuJoCo: {kind}", file=sys.stderr)


if mujoco.get_mju_user_warning() is None:  # keep a handler the user installed
    mujoco.set_mju_user_warning(_mujoco_warning)


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


@dataclass(frozen=True, slots=True)
class PhysicsSnapshot:
    """The simulator part of an env snapshot: everything except the wrapper's counters.

    Stored compactly (rollouts may keep one per step and copy): the integration state without its
    zeros (applied forces are usually all zero), model fields as the entries that differ from
    construction time, RNG states as plain tuples.
    """

    env_id: str
    """gymnasium id of the env it came from (a restore into another task is refused)"""
    state_nonzero: bytes
    """``np.packbits`` mask of the nonzero entries of ``mj_getState(..., mjSTATE_INTEGRATION)``"""
    state_values: np.ndarray
    """those nonzero entries"""
    stale_derived: tuple[tuple[str, np.ndarray], ...]
    """derived ``MjData`` arrays as the last step left them (not recomputed at the current state)"""
    model_fields: tuple[tuple[str, np.ndarray, np.ndarray], ...]
    """(``MjModel`` field, flat indices, values) where the model differs from construction time"""
    attributes: tuple[tuple[int, str, Any], ...]
    """(env index in the nested-env list, attribute name, value) for changed plain attributes"""
    rng_states: tuple[tuple | None, ...]
    """each nested env's ``np_random`` as (bit generator name, state dict items); None: unseeded"""

    def __reduce__(self):
        # numpy's own array pickling costs ~10 us per array; raw bytes cost well under 1 us, and
        # snapshots cross worker pipes at every recorded rollout step.
        return _unpickle_physics, (
            self.env_id, self.state_nonzero, pack_array(self.state_values),
            tuple((name, pack_array(a)) for name, a in self.stale_derived),
            tuple((name, pack_array(i), pack_array(v)) for name, i, v in self.model_fields),
            tuple((k, name, True, pack_array(v)) if isinstance(v, np.ndarray) else (k, name, False, v)
                  for k, name, v in self.attributes),
            self.rng_states,
        )


def pack_array(array: np.ndarray) -> tuple[str, tuple, bytes]:
    """(dtype, shape, bytes): a plain tuple pickles fast (a tuple subclass would not)."""
    return array.dtype.str, array.shape, array.tobytes()


def unpack_array(packed: tuple[str, tuple, bytes]) -> np.ndarray:
    """A read-only array over the pickled bytes (snapshots are immutable; users copy on restore)."""
    dtype, shape, data = packed
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _unpickle_physics(env_id, state_nonzero, state_values, stale_derived, model_fields, attributes, rng_states):
    return PhysicsSnapshot(
        env_id=env_id, state_nonzero=state_nonzero, state_values=unpack_array(state_values),
        stale_derived=tuple((name, unpack_array(a)) for name, a in stale_derived),
        model_fields=tuple((name, unpack_array(i), unpack_array(v)) for name, i, v in model_fields),
        attributes=tuple((k, name, unpack_array(v) if is_array else v) for k, name, is_array, v in attributes),
        rng_states=rng_states,
    )


def _is_plain(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype != object
    return isinstance(value, _PLAIN_SCALARS)


def _fingerprint(value: Any) -> tuple:
    """A cheap exact-equality key: comparing raw bytes is bitwise (what "exact" means here) and
    much faster than ``np.array_equal`` on the small arrays envs keep."""
    if isinstance(value, np.ndarray):
        return (np.ndarray, value.dtype.str, value.shape, value.tobytes())
    return (type(value), value)


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
            {name: (_fingerprint(v), _copy(v)) for name, v in vars(env).items() if _is_plain(v)} for env in self.envs
        ]
        # Attributes worth checking at each snapshot: plain or None (set later) values. A full scan
        # of every attribute runs at construction, after each reset and whenever an env gains or
        # loses attributes; in between only these names are compared (snapshots are frequent).
        self._attr_candidates: list[tuple[str, ...]] = [()] * len(self.envs)
        self._attr_counts: list[int] = [-1] * len(self.envs)
        self._scan_attributes()
        # Names observed to change (model fields: checked after each reset, which is where envs
        # write them; attributes: compared at every snapshot, they are few).
        self.dirty_model_fields: set[str] = set()

    def _scan_attributes(self) -> None:
        for index, env in enumerate(self.envs):
            attributes = vars(env)
            self._attr_candidates[index] = tuple(
                name for name, value in attributes.items() if value is None or _is_plain(value)
            )
            self._attr_counts[index] = len(attributes)

    def note_reset(self) -> None:
        """Find model fields the env's reset wrote (full model diff; resets are rare)."""
        self._scan_attributes()
        for name, view in self._model_views.items():
            if name not in self.dirty_model_fields and not np.array_equal(
                view, self._model_baseline[name], equal_nan=True
            ):
                self.dirty_model_fields.add(name)

    def capture(self) -> PhysicsSnapshot:
        mujoco.mj_getState(self.model, self.data, self._state_buffer, _STATE_SIGNATURE)
        nonzero = self._state_buffer != 0
        model_fields = []
        for name in sorted(self.dirty_model_fields):
            view, baseline = self._model_views[name], self._model_baseline[name]
            changed = np.flatnonzero(view != baseline)
            if changed.size:
                model_fields.append((name, changed.astype(np.int32), view.reshape(-1)[changed]))
        attributes = []
        if any(len(vars(env)) != count for env, count in zip(self.envs, self._attr_counts)):
            self._scan_attributes()
        for index, (env, baseline) in enumerate(zip(self.envs, self._attr_baseline)):
            attributes_now = vars(env)
            for name in self._attr_candidates[index]:
                value = attributes_now.get(name)
                if not _is_plain(value):
                    continue
                if name in baseline and _fingerprint(value) == baseline[name][0]:
                    continue
                attributes.append((index, name, _copy(value)))
        return PhysicsSnapshot(
            env_id=self.env_id,
            state_nonzero=np.packbits(nonzero).tobytes(),
            state_values=self._state_buffer[nonzero],
            stale_derived=tuple((name, getattr(self.data, name).copy()) for name in self.stale_fields),
            model_fields=tuple(model_fields),
            attributes=tuple(attributes),
            rng_states=tuple(_rng_state(env._np_random) for env in self.envs),
        )

    def restore(self, snap: PhysicsSnapshot) -> None:
        # Model fields: back to construction time, then the snapshot's changes.
        for name in self.dirty_model_fields:
            self._model_views[name][...] = self._model_baseline[name]
        for name, indices, values in snap.model_fields:
            self._model_views[name].reshape(-1)[indices] = values
            self.dirty_model_fields.add(name)

        changed = {(index, name) for index, name, _ in snap.attributes}
        for index, (env, baseline) in enumerate(zip(self.envs, self._attr_baseline)):
            for name, (fingerprint, value) in baseline.items():
                if (index, name) not in changed and _fingerprint(getattr(env, name, None)) != fingerprint:
                    _set_attribute(env, name, value)
        for index, name, value in snap.attributes:
            _set_attribute(self.envs[index], name, value)

        for env, state in zip(self.envs, snap.rng_states):
            env._np_random = _rng_from_state(env._np_random, state)

        nonzero = np.unpackbits(np.frombuffer(snap.state_nonzero, np.uint8), count=self._state_buffer.size)
        self._state_buffer[...] = 0
        self._state_buffer[nonzero.view(bool)] = snap.state_values
        # No mj_forward: the next mj_step recomputes every derived quantity from the integration
        # state, and the ones read before it are the stale arrays, which mj_forward would *change*
        # (it computes them at the current state). It is also the costliest part (~100 us on Adroit).
        # Rendering calls refresh_derived() first.
        mujoco.mj_setState(self.model, self.data, self._state_buffer, _STATE_SIGNATURE)
        for name, value in snap.stale_derived:
            getattr(self.data, name)[...] = value

    def refresh_derived(self) -> None:
        """Recompute derived quantities (body poses, contacts, sensors) after a restore, e.g. to
        render, while keeping the stale arrays the next step reads and the integration state."""
        stale = {name: getattr(self.data, name).copy() for name in self.stale_fields}
        mujoco.mj_getState(self.model, self.data, self._state_buffer, _STATE_SIGNATURE)
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_setState(self.model, self.data, self._state_buffer, _STATE_SIGNATURE)
        for name, value in stale.items():
            getattr(self.data, name)[...] = value


def _rng_state(generator: np.random.Generator | None) -> tuple | None:
    if generator is None:
        return None
    state = generator.bit_generator.state
    return state["bit_generator"], tuple(state.items())


def _rng_from_state(current: np.random.Generator | None, saved: tuple | None) -> np.random.Generator | None:
    """A generator in the saved state, reusing ``current`` when it has the same bit generator."""
    if saved is None:
        return None
    bit_generator_name, items = saved
    if current is None or type(current.bit_generator).__name__ != bit_generator_name:
        current = np.random.Generator(getattr(np.random, bit_generator_name)())
    current.bit_generator.state = dict(items)
    return current


def _set_attribute(env: gym.Env, name: str, value: Any) -> None:
    current = getattr(env, name, None)
    if isinstance(value, np.ndarray) and isinstance(current, np.ndarray) \
            and current.shape == value.shape and current.dtype == value.dtype and current.flags.writeable:
        # In place: the attribute may be a view other code holds on to.
        current[...] = value
    else:
        setattr(env, name, _copy(value))
