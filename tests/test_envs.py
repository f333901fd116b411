"""Exact snapshot/restore per env family, the time limit, flattening, and BatchedEnv."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from dtrl.envs import BatchedEnv, EnvSnapshot, default_num_workers, flatten_observation, make
from dtrl.errors import DtrlError
from dtrl.tasks import get_task

# One task per env family, plus gymnasium envs with no registry entry (the generic mechanism;
# Humanoid reads stale `xipos` before stepping).
FAMILY_TASKS = ["hopper-medium", "walker2d-medium", "ant-medium", "antmaze-umaze",
                "door-human", "hammer-human", "pen-human", "HalfCheetah-v5", "Humanoid-v5",
                # gymnasium-robotics MuJoCo envs beyond the paper: registry tasks and generic ids
                "antmaze-large-diverse", "relocate-human", "AntMaze_Medium-v5", "PointMaze_UMaze-v3",
                "AdroitHandRelocate-v1"]
STEPS_BEFORE_SNAPSHOT = 30
STEPS_AFTER_RESTORE = 120


def _long_lived(name: str):
    """The task, with locomotion envs kept alive when they fall so 120 steps are always possible
    (the physics and reward are unchanged; termination is tested separately)."""
    task = get_task(name)
    if task.family in ("hopper", "walker2d", "ant") or name == "Humanoid-v5":
        task = dataclasses.replace(task, env_kwargs={**task.env_kwargs, "terminate_when_unhealthy": False})
    return task


def _actions(rng: np.random.Generator, env, count: int) -> list[np.ndarray]:
    return [rng.uniform(-1, 1, env.act_dim).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("name", FAMILY_TASKS)
def test_restore_into_another_instance_is_bit_exact(name):
    task = _long_lived(name)
    rng = np.random.default_rng(0)
    source, target = make(task, seed=1), make(task, seed=2)
    for env in (source, target):
        env.max_episode_steps = 10_000  # pen's horizon is 100; the time limit has its own test
        env.reset()
    for action in _actions(rng, source, STEPS_BEFORE_SNAPSHOT):
        source.step(action)
    for action in _actions(rng, target, 7):  # the target is mid-episode in some other state
        target.step(action)

    snapshot = pickle.loads(pickle.dumps(source.snapshot()))
    restored_obs = target.restore(snapshot)
    np.testing.assert_array_equal(restored_obs, source.snapshot().observation)
    assert source.elapsed_steps == target.elapsed_steps == STEPS_BEFORE_SNAPSHOT
    # Randomness the env would use after this point matches too (e.g. AntMaze goal resampling).
    assert source.unwrapped_env.np_random.bit_generator.state == target.unwrapped_env.np_random.bit_generator.state

    for t, action in enumerate(_actions(rng, source, STEPS_AFTER_RESTORE)):
        obs_a, reward_a, term_a, trunc_a, _ = source.step(action)
        obs_b, reward_b, term_b, trunc_b, _ = target.step(action)
        assert np.array_equal(obs_a, obs_b), f"{name}: observations differ at step {t}"
        assert reward_a == reward_b, f"{name}: rewards differ at step {t}: {reward_a!r} vs {reward_b!r}"
        assert (term_a, trunc_a) == (term_b, trunc_b), f"{name}: flags differ at step {t}"


@pytest.mark.parametrize("name", ["antmaze-umaze", "door-human"])
def test_restore_into_a_never_reset_instance(name):
    """Worker copies are restored without ever being reset (goal/door attributes absent)."""
    source = make(name, seed=3)
    source.reset()
    for _ in range(5):
        source.step(np.full(source.act_dim, 0.2, np.float32))
    fresh = make(name)
    np.testing.assert_array_equal(fresh.restore(source.snapshot()), source.snapshot().observation)
    for action in _actions(np.random.default_rng(2), source, 40):
        a, b = source.step(action), fresh.step(action)
        assert np.array_equal(a[0], b[0]) and a[1:4] == b[1:4]


def test_restored_rng_gives_the_same_future_resets():
    """The door position is drawn from the env's np_random at reset: after a restore both envs
    draw the same next door, i.e. the random stream itself was restored."""
    source, target = make("door-human", seed=0), make("door-human", seed=1)
    source.reset(), target.reset()
    target.restore(source.snapshot())
    np.testing.assert_array_equal(source.reset()[0], target.reset()[0])


@pytest.mark.filterwarnings("ignore::UserWarning")  # the checker dislikes infinite Box bounds
def test_make_passes_gymnasium_env_checker():
    from gymnasium.utils.env_checker import check_env

    for name in ("hopper-medium", "antmaze-umaze"):
        env = make(name)
        check_env(env, skip_render_check=True)
        assert env.unwrapped is env.unwrapped_env  # gymnasium's convention: the raw env


def test_termination_flags_match_after_restore():
    """Walker2d falls within ~100 steps of random actions: both copies must terminate together."""
    rng = np.random.default_rng(3)
    source, target = make("walker2d-medium", seed=0), make("walker2d-medium", seed=5)
    source.reset(), target.reset()
    source.step(np.zeros(source.act_dim, np.float32))
    target.restore(source.snapshot())
    for t in range(1000):
        action = rng.uniform(-1, 1, source.act_dim)
        _, reward_a, term_a, trunc_a, _ = source.step(action)
        _, reward_b, term_b, trunc_b, _ = target.step(action)
        assert (reward_a, term_a, trunc_a) == (reward_b, term_b, trunc_b), f"differ at step {t}"
        if term_a:
            break
    assert term_a and not trunc_a
    with pytest.raises(DtrlError, match="after the episode ended"):
        target.step(action)


def test_time_limit_counter_survives_restore():
    task = dataclasses.replace(get_task("hopper-medium"), max_episode_steps=50,
                               env_kwargs={"terminate_when_unhealthy": False})
    source = make(task, seed=0)
    source.reset()
    for _ in range(20):
        source.step(np.zeros(source.act_dim))
    target = make(task, seed=1)
    target.reset()
    target.restore(source.snapshot())
    assert target.elapsed_steps == 20
    truncated_at = None
    for t in range(21, 51):
        _, _, terminated, truncated, _ = target.step(np.zeros(target.act_dim))
        assert not terminated
        if truncated:
            truncated_at = t
            break
    assert truncated_at == 50
    # A snapshot taken at the end of the episode restores an ended episode.
    ended = make(task)
    ended.restore(target.snapshot())
    with pytest.raises(DtrlError, match="after the episode ended"):
        ended.step(np.zeros(ended.act_dim))


def test_same_snapshot_restored_twice_gives_same_future():
    """Restoring is repeatable: restore, run, restore again into the same instance, run again."""
    env = make(_long_lived("ant-medium"), seed=4)
    env.reset()
    for _ in range(10):
        env.step(np.full(env.act_dim, 0.3, np.float32))
    snapshot = env.snapshot()
    actions = _actions(np.random.default_rng(1), env, 40)
    runs = []
    for _ in range(2):
        record = [np.append(env.restore(snapshot), 0.0)]
        for action in actions:
            obs, reward, *_ = env.step(action)
            record.append(np.append(obs, reward))
        runs.append(np.stack(record))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_make_gives_flat_float32_observations_and_task():
    env = make("antmaze-umaze", seed=0)
    assert env.task.name == "antmaze-umaze"
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape == (31,)
    raw = env.unwrapped_env
    # concat(observation 27 [no contact forces, as D4RL], achieved_goal 2, desired_goal 2)
    np.testing.assert_array_equal(obs[27:29], raw.data.qpos[:2].astype(np.float32))
    np.testing.assert_array_equal(obs[29:], raw.goal.astype(np.float32))
    for name, dims in (("hopper-medium", (11, 3)), ("walker2d-medium", (17, 6)), ("ant-medium", (105, 8)),
                       ("door-human", (39, 28)), ("hammer-human", (46, 26)), ("pen-human", (45, 24))):
        env = make(name)
        assert (env.obs_dim, env.act_dim) == dims, name
        assert env.observation_space.dtype == np.float32
    assert make("pen-human").max_episode_steps == 100


def test_flatten_observation_batches_goal_dicts():
    task = get_task("antmaze-umaze")
    stacked = {"observation": np.ones((4, 27)), "achieved_goal": np.full((4, 2), 2.0),
               "desired_goal": np.full((4, 2), 3.0)}
    flat = flatten_observation(task, stacked)
    assert flat.shape == (4, 31) and flat.dtype == np.float32
    assert (flat[:, 27:29] == 2).all() and (flat[:, 29:] == 3).all()
    with pytest.raises(DtrlError, match="desired_goal"):
        flatten_observation(task, {"observation": np.ones(27), "achieved_goal": np.ones(2)})


def test_snapshots_are_small_and_checked():
    env = make("door-human", seed=0)
    env.reset()
    snapshot = env.snapshot()
    assert isinstance(snapshot, EnvSnapshot)
    assert len(pickle.dumps(snapshot)) < 8192
    other = make("hopper-medium")
    with pytest.raises(DtrlError, match="cannot be restored"):
        other.restore(snapshot)
    with pytest.raises(DtrlError, match="before reset"):
        make("hopper-medium").snapshot()
    with pytest.raises(DtrlError, match="before reset"):
        make("hopper-medium").step(np.zeros(3))
    env = make("hopper-medium")
    env.reset()
    with pytest.raises(DtrlError, match="non-finite action"):
        env.step(np.array([0.0, np.nan, 0.0]))


def test_bad_task_name_is_a_dtrl_error():
    with pytest.raises(DtrlError, match="unknown task"):
        make("no-such-task")
    with pytest.raises(DtrlError, match="unknown task"):
        BatchedEnv("no-such-task", 2)


def test_gymnasium_envs_need_no_gymnasium_robotics():
    """Without gymnasium-robotics (a GPU image that cannot fetch it, say) Hopper and the other gymnasium
    envs still run, and an AntMaze or Adroit task says which package it needs."""
    import subprocess
    import sys

    script = """
import sys
sys.modules["gymnasium_robotics"] = None  # import gymnasium_robotics raises ImportError
from dtrl.envs import make
from dtrl.errors import DtrlError
env = make("hopper-medium", seed=0)
env.reset()
env.step(env.action_space.sample())
for name in ("antmaze-umaze", "AdroitHandRelocate-v1"):
    try:
        make(name)
    except DtrlError as exc:
        print(exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("gymnasium-robotics, which is not installed" in line for line in lines), lines


def test_batched_group_restore_starts_identical_copies():
    with BatchedEnv("hopper-medium", 4, seed=0) as envs:
        envs.reset()
        envs.step(np.full((4, envs.act_dim), 0.1))
        snaps = envs.snapshot([2])
        first = envs.restore(snaps * 4)
        assert (first == first[0]).all()
        obs, rewards, _, _ = envs.step(np.full((4, envs.act_dim), 0.5))
        assert (obs == obs[0]).all() and (rewards == rewards[0]).all()
        obs, _, _, _ = envs.step(np.random.default_rng(0).uniform(-1, 1, (4, envs.act_dim)))
        assert not (obs == obs[0]).all()  # different actions branch apart


def test_batched_inactive_copies_are_not_stepped():
    with BatchedEnv("hopper-medium", 3, seed=0) as envs:
        start = envs.reset()
        obs, rewards, terminated, truncated = envs.step(np.full((3, envs.act_dim), 0.5), np.array([True, False, True]))
        np.testing.assert_array_equal(obs[1], start[1])
        assert rewards[1] == 0 and not terminated[1] and not truncated[1]
        assert not np.array_equal(obs[0], start[0]) and rewards[0] != 0
        partial = envs.reset(seeds=[7], indices=[1])
        assert partial.shape == (1, envs.obs_dim)
        with pytest.raises(DtrlError, match="shape"):
            envs.step(np.zeros((2, envs.act_dim)))


def _drive(envs: BatchedEnv, rng: np.random.Generator, steps: int) -> list[np.ndarray]:
    """Random actions with random inactive copies; copies that end stay inactive."""
    done = np.zeros(envs.num_envs, bool)
    record = []
    for _ in range(steps):
        actions = rng.uniform(-1, 1, (envs.num_envs, envs.act_dim))
        active = (rng.random(envs.num_envs) < 0.8) & ~done
        obs, rewards, terminated, truncated = envs.step(actions, active)
        done |= terminated | truncated
        record += [obs, rewards, terminated, truncated]
    return record


def test_batched_workers_match_in_process():
    seeds = [11, 12, 13, 14, 15]
    with BatchedEnv("ant-medium", 5, num_workers=0) as local, BatchedEnv("ant-medium", 5, num_workers=2) as remote:
        assert remote.num_workers == 2
        np.testing.assert_array_equal(local.reset(seeds), remote.reset(seeds))
        for a, b in zip(_drive(local, np.random.default_rng(0), 25), _drive(remote, np.random.default_rng(0), 25)):
            np.testing.assert_array_equal(a, b)
        # Snapshots cross process boundaries both ways: worker -> main process and main -> worker.
        from_worker = remote.snapshot([4, 0, 3])
        from_main = local.snapshot([1, 2])
        order = from_worker + from_main
        np.testing.assert_array_equal(local.restore(order), remote.restore(order))
        for a, b in zip(_drive(local, np.random.default_rng(1), 30), _drive(remote, np.random.default_rng(1), 30)):
            np.testing.assert_array_equal(a, b)


def test_batched_worker_errors_reach_the_caller():
    with BatchedEnv("hopper-medium", 2, num_workers=2) as envs:
        with pytest.raises(DtrlError, match="before reset"):
            envs.step(np.zeros((2, envs.act_dim)))
        envs.reset([0, 1])  # the pipes are still in sync after the error
        envs.step(np.zeros((2, envs.act_dim)))
    with pytest.raises(DtrlError, match="closed"):
        envs.step(np.zeros((2, envs.act_dim)))


def test_default_num_workers():
    assert default_num_workers(512, cpu_count=2) == 0  # this CI machine: stepping stays in-process
    assert default_num_workers(8, cpu_count=16) == 0  # too few copies to be worth the pipes
    assert default_num_workers(64, cpu_count=16) == 8
    assert default_num_workers(512, cpu_count=16) == 15
