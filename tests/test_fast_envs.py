"""BatchedEnv's fast path (dtrl/envs/fast.py) against the per-env path, bit for bit.

The reference is a second BatchedEnv built with ``fast=False``: every copy steps through
``BranchableEnv.step`` and gymnasium's own ``env.step``. Both are driven with the same random
actions (float32 and float64), random ``active`` masks, resets of ended episodes, and restores of
earlier snapshots into random copies; observations, rewards and flags must be identical (not
close), and so must the snapshots (physics state, time-limit counter, episode end, observation),
which checks that the fast path leaves each ``BranchableEnv`` as its own step() would.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dtrl.envs import BatchedEnv, EnvSnapshot
from dtrl.envs.fast import _sums_of_squares, fast_stepper
from dtrl.errors import DtrlError
from dtrl.tasks import Task, get_task

NUM_ENVS = 8
STEPS = 1000
# Short episodes so that truncation by the time limit happens too (HalfCheetah never terminates).
HORIZON = 40


def _task(name: str, **env_kwargs) -> Task:
    task = get_task(name)
    return dataclasses.replace(task, max_episode_steps=HORIZON, env_kwargs={**task.env_kwargs, **env_kwargs})


def _assert_same_snapshots(a: list[EnvSnapshot], b: list[EnvSnapshot], where: str) -> None:
    for k, (x, y) in enumerate(zip(a, b)):
        assert (x.elapsed_steps, x.episode_over) == (y.elapsed_steps, y.episode_over), f"{where}: copy {k} counters"
        assert np.array_equal(x.observation, y.observation), f"{where}: copy {k} observation"
        assert x.physics.state_nonzero == y.physics.state_nonzero, f"{where}: copy {k} state"
        assert np.array_equal(x.physics.state_values, y.physics.state_values), f"{where}: copy {k} state"
        for (name, u), (_, v) in zip(x.physics.stale_derived, y.physics.stale_derived):
            assert np.array_equal(u, v), f"{where}: copy {k} {name}"


def _compare_runs(task: Task, rng: np.random.Generator, steps: int, dtypes=(np.float32, np.float64),
                  num_threads: int = 1) -> dict[str, int]:
    """Drive a fast and a reference BatchedEnv identically and assert bit-identical results; returns
    counts of what happened (episode ends, restores) so the caller can check the run covered them."""
    seen = {"terminated": 0, "truncated": 0, "restores": 0, "inactive": 0}
    with BatchedEnv(task, NUM_ENVS, num_workers=0, seed=3, num_threads=num_threads) as fast, \
            BatchedEnv(task, NUM_ENVS, num_workers=0, seed=3, fast=False) as reference:
        assert fast.uses_fast_path and not reference.uses_fast_path
        assert np.array_equal(fast.reset(), reference.reset())
        ended = np.zeros(NUM_ENVS, bool)
        saved: list[EnvSnapshot] = fast.snapshot()
        for t in range(steps):
            dtype = dtypes[t % len(dtypes)]
            # Beyond the action box sometimes: gymnasium does not clip, so neither may the fast path.
            actions = rng.uniform(-1.2, 1.2, (NUM_ENVS, fast.act_dim)).astype(dtype)
            active = ~ended & (rng.random(NUM_ENVS) < 0.85)
            seen["inactive"] += int((~active).sum())
            got, want = fast.step(actions, active), reference.step(actions, active)
            for name, x, y in zip(("obs", "rewards", "terminated", "truncated"), got, want):
                assert x.dtype == y.dtype and np.array_equal(x, y), f"{task.name}: {name} differ at step {t}"
            seen["terminated"] += int(got[2].sum())
            seen["truncated"] += int(got[3].sum())
            ended |= got[2] | got[3]

            # Most ended copies start over at once, some wait a few steps (inactive meanwhile).
            restart = np.flatnonzero(ended & (rng.random(NUM_ENVS) < 0.7))
            if restart.size:
                assert np.array_equal(fast.reset(indices=restart), reference.reset(indices=restart))
                ended[restart] = False
            if rng.random() < 1 / 50:
                # Snapshots agree, then an earlier one (taken from the fast env) goes into random copies
                # of both: the fast path must continue from restored states exactly.
                now = fast.snapshot()
                _assert_same_snapshots(now, reference.snapshot(), f"{task.name} step {t}")
                targets = rng.choice(NUM_ENVS, size=rng.integers(1, 4), replace=False)
                chosen = [saved[int(j)] for j in rng.integers(0, len(saved), targets.size)]
                assert np.array_equal(fast.restore(chosen, targets), reference.restore(chosen, targets))
                ended[targets] = [snap.episode_over for snap in chosen]
                saved = saved[-40:] + now
                seen["restores"] += targets.size
        _assert_same_snapshots(fast.snapshot(), reference.snapshot(), f"{task.name} end")
    return seen


@pytest.mark.parametrize("name", ["hopper-random", "walker2d-random", "HalfCheetah-v5", "ant-random"])
def test_fast_path_is_bit_identical_to_per_env_steps(name):
    seen = _compare_runs(_task(name), np.random.default_rng(0), STEPS)
    assert seen["restores"] > 0 and seen["inactive"] > 0 and seen["truncated"] > 0
    if name != "HalfCheetah-v5":
        assert seen["terminated"] > 0


def test_env_kwargs_are_respected():
    """Settings come from the env (a task's env_kwargs), not from gymnasium's defaults."""
    task = _task("hopper-random", forward_reward_weight=2.0, ctrl_cost_weight=0.3, healthy_reward=-1,
                 healthy_z_range=(0.9, 2.0), healthy_angle_range=(-0.3, 0.25), healthy_state_range=(-4.0, 4.0),
                 exclude_current_positions_from_observation=False, frame_skip=3)
    seen = _compare_runs(task, np.random.default_rng(1), 300)
    assert seen["terminated"] > 0
    kept_alive = _task("ant-random", terminate_when_unhealthy=False, include_cfrc_ext_in_observation=False,
                       contact_cost_weight=1e-3, contact_force_range=(-0.5, 2.0), healthy_z_range=(0.3, 0.9))
    _compare_runs(kept_alive, np.random.default_rng(2), 200, dtypes=(np.float64,))


def test_threads_give_the_same_results():
    _compare_runs(_task("walker2d-random"), np.random.default_rng(4), 200, num_threads=3)


def test_workers_take_the_fast_path_too():
    task = _task("hopper-random")
    with BatchedEnv(task, 4, num_workers=2, seed=0) as remote, \
            BatchedEnv(task, 4, num_workers=0, seed=0, fast=False) as reference:
        assert remote.uses_fast_path and remote.num_workers == 2
        assert np.array_equal(remote.reset(), reference.reset())
        rng = np.random.default_rng(6)
        for t in range(100):
            actions = rng.uniform(-1, 1, (4, remote.act_dim)).astype(np.float32)
            got, want = remote.step(actions), reference.step(actions)
            assert all(np.array_equal(x, y) for x, y in zip(got, want)), f"differ at step {t}"
            ended = np.flatnonzero(got[2] | got[3])
            if ended.size:
                assert np.array_equal(remote.reset(indices=ended), reference.reset(indices=ended))
        _assert_same_snapshots(remote.snapshot(), reference.snapshot(), "workers")


def test_unsupported_envs_and_settings_take_the_per_env_path():
    with BatchedEnv("Swimmer-v5", 2, num_workers=0) as envs:
        assert not envs.uses_fast_path
    with BatchedEnv(_task("hopper-random", healthy_reward=np.float32(1.0)), 2, num_workers=0) as envs:
        assert not envs.uses_fast_path  # numpy scalars promote differently from Python numbers
    with BatchedEnv(_task("hopper-random"), 2, num_workers=0, fast=False) as envs:
        assert not envs.uses_fast_path and envs._local.fast is None
    with BatchedEnv(_task("hopper-random"), 3, num_workers=0, seed=0) as fast, \
            BatchedEnv(_task("hopper-random"), 3, num_workers=0, seed=0, fast=False) as reference:
        fast.reset(), reference.reset()
        actions = np.full((3, fast.act_dim), 0.25, np.float16)  # not float32/float64: the per-env path
        for x, y in zip(fast.step(actions), reference.step(actions)):
            assert np.array_equal(x, y)


def test_refused_steps_raise_the_per_env_errors_and_step_nothing():
    with BatchedEnv(_task("hopper-random"), 3, num_workers=0, seed=0) as envs:
        assert envs.uses_fast_path
        with pytest.raises(DtrlError, match="before reset"):
            envs.step(np.zeros((3, envs.act_dim), np.float32))
        envs.reset()
        before = envs.snapshot()
        actions = np.zeros((3, envs.act_dim), np.float32)
        actions[2, 1] = np.inf
        with pytest.raises(DtrlError, match=r"non-finite action \[0.0, inf, 0.0\]"):
            envs.step(actions)
        _assert_same_snapshots(envs.snapshot(), before, "after a refused step")
        actions[2, 1] = 0
        envs.step(actions, np.array([True, True, False]))  # the bad copy may be left out instead
        ended = dataclasses.replace(before[0], episode_over=True)
        envs.restore([ended], [1])
        with pytest.raises(DtrlError, match="after the episode ended"):
            envs.step(actions)
        envs.step(actions, np.array([True, False, True]))


def test_sums_of_squares_match_numpy_row_by_row():
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        for shape in ((3,), (6,), (8,), (14, 6)):
            rows = (rng.standard_normal((200, *shape)) * 10.0 ** rng.integers(-5, 6, (200, *shape))).astype(dtype)
            want = np.array([np.sum(np.square(row)) for row in rows])
            got = _sums_of_squares(rows)
            assert got.dtype == want.dtype and np.array_equal(got, want), (dtype, shape)


def test_fast_stepper_needs_equal_settings():
    from dtrl.envs import make

    envs = [make(_task("hopper-random")), make(_task("hopper-random", ctrl_cost_weight=0.5))]
    assert fast_stepper(envs) is None
    assert fast_stepper(envs[:1]) is not None
