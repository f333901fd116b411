"""BatchedEnv's fast path: N copies of a gymnasium v5 locomotion env stepped with ``mj_step`` directly,
their observations, rewards and flags computed for all copies at once with numpy.

``BranchableEnv.step`` goes through gymnasium's ``env.step`` in Python: ~15 small numpy calls and a
dict per step, which cost about as much as Hopper's physics (BatchedEnv reached ~0.4-0.6 of the bare
``mj_step`` rate, benchmarks/results/envs.md). Here the per-copy Python work is what gymnasium's
``MujocoEnv._step_mujoco_simulation`` does (``data.ctrl[:] = action``, ``mj_step(nstep=frame_skip)``,
``mj_rnePostConstraint``) plus one ``mj_getState`` into a preallocated row; everything else is
vectorised over the copies.

Exactness: the results are bit-identical to ``BranchableEnv.step`` (tests/test_fast_envs.py). The
formulas are gymnasium v5's (``HopperEnv.step``, ``_get_obs``, ``_get_rew``, ``is_healthy``...) with
the same operand order and dtypes: numpy's elementwise operations round the same in an array as in a
scalar, the float32 cast of the observation is the one ``flatten_observation`` does, and the control
cost keeps the action's dtype (float32 actions give float32 squares and sums, as in gymnasium). The
one operation whose rounding depends on how it is vectorised is a sum; ``_sums_of_squares`` adds in
numpy's own order and checks that once per dtype and shape. The env's settings are read from the env
itself (``_ctrl_cost_weight``, ``_healthy_z_range``...), so a task's ``env_kwargs`` are respected;
the physics runs in each copy's own ``MjData``, so snapshot/restore/reset work unchanged.

Not covered (``fast_stepper`` returns None, BatchedEnv keeps the per-env path): other envs or
subclasses, ``render_mode="human"`` (gymnasium renders inside step), settings that are not plain
numbers; and, call by call, actions that are not float32/float64 (``FastStepper.accepts``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

from .env import BranchableEnv

# Exact classes only: a subclass may change step().
FAST_FAMILIES: dict[type, str] = {HopperEnv: "hopper", Walker2dEnv: "walker2d", HalfCheetahEnv: "halfcheetah",
                                  AntEnv: "ant"}

# qpos then qvel, i.e. gymnasium's state_vector(), in one call per copy.
_QPOS_QVEL = int(mujoco.mjtState.mjSTATE_QPOS | mujoco.mjtState.mjSTATE_QVEL)

_ACTION_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class StepRules:
    """One env's step() formulas' settings, read from the gymnasium env (its defaults or the task's
    env_kwargs). Copies stepped together must have equal rules."""

    family: str
    """one of hopper, walker2d, halfcheetah, ant"""
    frame_skip: int
    dt: float
    """gymnasium's ``env.dt``: ``model.opt.timestep * frame_skip`` (these envs never change the timestep)"""
    skipped_qpos: int
    """leading qpos entries left out of the observation (x; Ant: x and y)"""
    velocity_clip: int | float | None
    """qvel in the observation is clipped to +-this (Hopper, Walker2d)"""
    forward_reward_weight: int | float
    ctrl_cost_weight: int | float
    healthy_reward: int | float | None
    """None: the family has no health (HalfCheetah)"""
    terminate_when_unhealthy: bool
    healthy_z_range: tuple | None
    healthy_angle_range: tuple | None
    """Hopper, Walker2d: range of qpos[2]"""
    healthy_state_range: tuple | None
    """Hopper: range of state_vector()[2:]"""
    main_body: int | None
    """Ant: body id whose x position gives the forward velocity"""
    contact_cost_weight: int | float | None
    contact_force_range: tuple | None
    include_cfrc_ext: bool


def _number(value) -> int | float:
    """A setting used in arithmetic: Python int/float only, where numpy's scalar and array results agree
    (NEP 50 treats them as weak); anything else is not supported here."""
    if type(value) not in (int, float):
        raise TypeError(f"setting {value!r} is not a plain number")
    return value


def _range(value) -> tuple:
    low, high = value
    return _number(low), _number(high)


def step_rules(raw) -> StepRules | None:
    """The rules of a raw gymnasium env, or None where the fast path does not cover it."""
    family = FAST_FAMILIES.get(type(raw))
    if family is None or raw.render_mode == "human":
        return None
    try:
        healthy = family != "halfcheetah"
        exclude = bool(raw._exclude_current_positions_from_observation)
        return StepRules(
            family=family,
            frame_skip=int(raw.frame_skip),
            dt=float(raw.dt),
            skipped_qpos=(2 if family == "ant" else 1) if exclude else 0,
            velocity_clip=10 if family in ("hopper", "walker2d") else None,
            forward_reward_weight=_number(raw._forward_reward_weight),
            ctrl_cost_weight=_number(raw._ctrl_cost_weight),
            healthy_reward=_number(raw._healthy_reward) if healthy else None,
            terminate_when_unhealthy=bool(raw._terminate_when_unhealthy) if healthy else False,
            healthy_z_range=_range(raw._healthy_z_range) if healthy else None,
            healthy_angle_range=_range(raw._healthy_angle_range) if family in ("hopper", "walker2d") else None,
            healthy_state_range=_range(raw._healthy_state_range) if family == "hopper" else None,
            main_body=int(raw.model.body(raw._main_body).id) if family == "ant" else None,
            contact_cost_weight=_number(raw._contact_cost_weight) if family == "ant" else None,
            contact_force_range=_range(raw._contact_force_range) if family == "ant" else None,
            include_cfrc_ext=family == "ant" and bool(raw._include_cfrc_ext_in_observation),
        )
    except (AttributeError, TypeError, ValueError, KeyError):  # a gymnasium version with other attributes
        return None


@functools.cache
def _numpy_adds_left_to_right(dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Whether ``np.sum`` of a contiguous array of this dtype and shape adds its entries one after
    another from the first (numpy's pairwise summation does below 8 entries). Checked on squares of
    values spread over 12 orders of magnitude, where another order of additions rounds differently
    in most rows."""
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((256, *shape)) * 10.0 ** rng.integers(-6, 7, (256, *shape))).astype(dtype)
    squares = np.square(values)
    expected = np.array([np.sum(square) for square in squares], dtype=dtype)
    return bool(np.array_equal(_left_to_right(squares), expected))


def _left_to_right(rows: np.ndarray) -> np.ndarray:
    flat = rows.reshape(len(rows), -1)
    total = flat[:, 0].copy()
    for j in range(1, flat.shape[1]):
        total += flat[:, j]
    return total


def _sums_of_squares(rows: np.ndarray) -> np.ndarray:
    """``np.sum(np.square(rows[k]))`` for each k, bit for bit: vectorised where numpy's order of
    additions is known to be left to right, else numpy's own sum row by row (Ant's 84 contact forces)."""
    squares = np.square(rows)
    if len(squares) and squares[0].size and _numpy_adds_left_to_right(squares.dtype, squares.shape[1:]):
        return _left_to_right(squares)
    return np.array([np.sum(square) for square in squares], dtype=squares.dtype)


class FastStepper:
    """Steps copies of one supported env (see the module docstring) and keeps their ``BranchableEnv``
    wrappers as ``BranchableEnv.step`` would. Build it with :func:`fast_stepper`.

    ``num_threads`` > 1 runs the per-copy MuJoCo calls on that many threads (``mj_step`` releases the
    GIL); each copy is stepped by one thread on its own ``MjData``, so results do not depend on it.
    """

    def __init__(self, envs: Sequence[BranchableEnv], rules: StepRules, num_threads: int = 1):
        self.envs = list(envs)
        self.rules = rules
        raws = [env.unwrapped_env for env in self.envs]
        model = raws[0].model
        self._nq, self._nv = model.nq, model.nv
        count = len(raws)
        self._state = np.zeros((count, self._nq + self._nv))
        self._before = np.zeros(count)  # forward position before the step: qpos[0], Ant: xpos[main_body, 0]
        self._after = np.zeros(count)  # Ant only (Hopper & co. read qpos[0] from the state)
        self._contact = np.zeros((count, *raws[0].data.cfrc_ext.shape)) if rules.family == "ant" else None
        # Per copy: (model, data, ctrl view, position view, state row, cfrc_ext view, contact row). The
        # MjData arrays are views that live as long as the MjData, which the env never replaces.
        self._copies = [
            (raw.model, raw.data, raw.data.ctrl, raw.data.xpos if rules.family == "ant" else raw.data.qpos,
             self._state[i], raw.data.cfrc_ext, None if self._contact is None else self._contact[i])
            for i, raw in enumerate(raws)
        ]
        self.obs_dim = self._nq - rules.skipped_qpos + self._nv \
            + (raws[0].data.cfrc_ext[1:].size if rules.include_cfrc_ext else 0)
        self.num_threads = num_threads
        self._pool = ThreadPoolExecutor(num_threads - 1, thread_name_prefix="dtrl-mj-step") \
            if num_threads > 1 else None

    @staticmethod
    def accepts(actions: np.ndarray) -> bool:
        """Whether these actions can take the fast path (other dtypes: the per-env path, whose
        gymnasium arithmetic on them is not replicated here)."""
        return actions.dtype in _ACTION_DTYPES

    def step(self, actions: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step copies ``indices`` (ascending) with ``actions[indices]``. Returns (observations [k, O]
        float32, rewards [k] float64, terminated [k], truncated [k]) for those copies.

        The checks of ``BranchableEnv.step`` (reset first, episode not over, finite actions) raise
        the same ``DtrlError`` for the first refused copy, but before any copy is stepped.
        """
        order = [int(i) for i in indices]
        acts = actions[order]
        finite = np.isfinite(acts).all(axis=1)
        for k, i in enumerate(order):
            self.envs[i]._check_can_step()
            if not finite[k]:
                raise self.envs[i]._non_finite_action(actions[i])
        self._simulate_all(actions, order)

        rules, nq, count = self.rules, self._nq, len(order)
        state = self._state[order]
        qpos, qvel = state[:, :nq], state[:, nq:]
        if rules.family == "ant":
            x_velocity = (self._after[order] - self._before[order]) / rules.dt
            forward_reward = x_velocity * rules.forward_reward_weight
        else:
            x_velocity = (qpos[:, 0] - self._before[order]) / rules.dt
            forward_reward = rules.forward_reward_weight * x_velocity

        obs = np.empty((count, self.obs_dim), np.float32)
        width = nq - rules.skipped_qpos
        obs[:, :width] = qpos[:, rules.skipped_qpos:]
        if rules.velocity_clip is None:
            obs[:, width:width + self._nv] = qvel
        else:
            obs[:, width:width + self._nv] = np.clip(qvel, -rules.velocity_clip, rules.velocity_clip)

        ctrl_cost = rules.ctrl_cost_weight * _sums_of_squares(acts)
        if rules.family == "halfcheetah":
            healthy = np.ones(count, bool)
            rewards = forward_reward - ctrl_cost
        else:
            healthy = self._healthy(state)
            rewards = forward_reward + healthy * rules.healthy_reward
            if rules.family == "ant":
                contact_forces = np.clip(self._contact[order], *rules.contact_force_range)
                if rules.include_cfrc_ext:
                    obs[:, width + self._nv:] = contact_forces[:, 1:].reshape(count, -1)
                contact_cost = rules.contact_cost_weight * _sums_of_squares(contact_forces)
                rewards = rewards - (ctrl_cost + contact_cost)
            else:
                rewards = rewards - ctrl_cost
        terminated = ~healthy if rules.terminate_when_unhealthy else np.zeros(count, bool)

        # The wrappers keep rows of their own copy (never written again) as their last observation.
        kept = obs.copy()
        truncated = np.zeros(count, bool)
        for k, (i, ended) in enumerate(zip(order, terminated.tolist())):
            truncated[k] = self.envs[i]._record_step(kept[k], ended, False)[1]
        return obs, rewards.astype(np.float64, copy=False), terminated, truncated

    def _healthy(self, state: np.ndarray) -> np.ndarray:
        """gymnasium's ``is_healthy`` for each row of ``state`` (qpos then qvel); the chained
        comparisons ``low < x < high`` are the two comparisons and-ed."""
        rules = self.rules
        z = state[:, 1] if rules.family != "ant" else state[:, 2]
        min_z, max_z = rules.healthy_z_range
        if rules.family == "ant":
            return np.isfinite(state).all(axis=1) & (min_z <= z) & (z <= max_z)
        min_angle, max_angle = rules.healthy_angle_range
        angle = state[:, 2]
        healthy = (min_z < z) & (z < max_z) & (min_angle < angle) & (angle < max_angle)
        if rules.family == "hopper":
            min_state, max_state = rules.healthy_state_range
            rest = state[:, 2:]
            healthy &= np.all(np.logical_and(min_state < rest, rest < max_state), axis=1)
        return healthy

    def _simulate_all(self, actions: np.ndarray, order: list[int]) -> None:
        if self._pool is None or len(order) < 2:
            self._simulate(actions, order)
            return
        chunks = [chunk.tolist() for chunk in np.array_split(np.array(order), self.num_threads) if chunk.size]
        futures = [self._pool.submit(self._simulate, actions, chunk) for chunk in chunks[1:]]
        try:
            self._simulate(actions, chunks[0])
        finally:
            for future in futures:
                future.result()

    def _simulate(self, actions: np.ndarray, order: list[int]) -> None:
        """The per-copy part, as gymnasium's ``step`` and ``MujocoEnv._step_mujoco_simulation`` do it."""
        step, post_constraint, get_state = mujoco.mj_step, mujoco.mj_rnePostConstraint, mujoco.mj_getState
        nstep = self.rules.frame_skip
        before, copies = self._before, self._copies
        if self.rules.family == "ant":
            body, after = self.rules.main_body, self._after
            for i in order:
                model, data, ctrl, xpos, state, cfrc_ext, contact = copies[i]
                before[i] = xpos[body, 0]  # as the last step left it (restore keeps this stale xpos)
                ctrl[:] = actions[i]
                step(model, data, nstep=nstep)
                post_constraint(model, data)
                get_state(model, data, state, _QPOS_QVEL)
                after[i] = xpos[body, 0]
                contact[...] = cfrc_ext
        else:
            for i in order:
                model, data, ctrl, qpos, state, _, _ = copies[i]
                before[i] = qpos[0]
                ctrl[:] = actions[i]
                step(model, data, nstep=nstep)
                post_constraint(model, data)  # not read here, but leaves MjData as gymnasium's step does
                get_state(model, data, state, _QPOS_QVEL)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def fast_stepper(envs: Sequence[BranchableEnv], num_threads: int = 1) -> FastStepper | None:
    """A ``FastStepper`` for these copies, or None where it does not apply (unsupported env or
    setting, copies with different rules, no copies)."""
    if not envs:
        return None
    rules = [step_rules(env.unwrapped_env) for env in envs]
    if rules[0] is None or any(r != rules[0] for r in rules[1:]):
        return None
    stepper = FastStepper(envs, rules[0], num_threads)
    if stepper.obs_dim != envs[0].obs_dim:
        stepper.close()
        return None
    return stepper
