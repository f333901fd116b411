"""Datasets: D4RL HDF5 I/O, load_dataset validation, Minari, normaliser, sequence sampler, build/info CLI."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from dtrl.cli import main as dtrl_main
from dtrl.data import SequenceSampler, StateNormalizer, Trajectory, load_dataset, read_attrs, read_d4rl, write_d4rl
from dtrl.data.builder import BuildConfig, build, resolve_dataset_name
from dtrl.errors import DtrlError
from dtrl.tasks import get_task

HOPPER_OBS, HOPPER_ACT = 11, 3


def hopper_arrays(episode_lengths=(5, 12, 3), seed=0, terminal_last=True) -> dict[str, np.ndarray]:
    """Synthetic Hopper-shaped D4RL arrays: episodes end in a terminal (or a timeout)."""
    rng = np.random.default_rng(seed)
    n = sum(episode_lengths)
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    ends = np.cumsum(episode_lengths) - 1
    for i, end in enumerate(ends):
        if terminal_last or i < len(ends) - 1:
            terminals[end] = True
        else:
            timeouts[end] = True
    return {
        "observations": rng.normal(size=(n, HOPPER_OBS)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, HOPPER_ACT)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def assert_one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip(), message
    for fragment in fragments:
        assert fragment in message, message


def leftovers(directory) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------------------------- HDF5


def test_hdf5_round_trip(tmp_path):
    arrays = hopper_arrays()
    arrays["next_observations"] = arrays["observations"] + 1
    arrays["infos/qpos"] = np.arange(20 * 6, dtype=np.float64).reshape(20, 6)
    path = tmp_path / "d.hdf5"
    write_d4rl(path, arrays, {"task": "hopper-random", "seed": 3})
    loaded = read_d4rl(path)
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
    assert loaded["terminals"].dtype == bool
    assert read_attrs(path) == {"task": "hopper-random", "seed": 3}
    assert leftovers(tmp_path) == ["d.hdf5"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask  # not the temp file's private 0600


def test_plain_h5py_file_in_d4rl_layout_loads(tmp_path):
    arrays = hopper_arrays(episode_lengths=(4, 6), terminal_last=False)
    path = tmp_path / "plain.hdf5"
    with h5py.File(path, "w") as f:  # written the way D4RL's own files are: float rewards, no attrs
        for key, value in arrays.items():
            f.create_dataset(key, data=value.astype(np.float32) if key == "rewards" else value)
        f.create_dataset("infos/goal", data=np.zeros((10, 2)))
    dataset = load_dataset(str(path), "hopper-medium")
    assert (dataset.obs_dim, dataset.act_dim, dataset.n_transitions) == (HOPPER_OBS, HOPPER_ACT, 10)
    assert [len(t) for t in dataset.trajectories] == [4, 6]
    assert dataset.trajectories[0].terminated and dataset.trajectories[1].truncated
    np.testing.assert_array_equal(dataset.trajectories[1].observations, arrays["observations"][4:])
    np.testing.assert_allclose(dataset.trajectories[0].episode_return, arrays["rewards"][:4].sum(), rtol=1e-6)


def test_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out.hdf5"
    bad = hopper_arrays()
    bad["rewards"] = bad["rewards"][:-1]
    with pytest.raises(DtrlError) as excinfo:
        write_d4rl(path, bad)
    assert_one_line_error(excinfo, "rewards")
    assert leftovers(tmp_path) == []

    # A crash half-way through writing (after the file was opened) must not leave anything either.
    original = h5py.Group.create_dataset
    calls = []

    def failing_create_dataset(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create_dataset)
    with pytest.raises(OSError):
        write_d4rl(path, hopper_arrays())
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- bad inputs


def _write_raw(path, arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing_file", ["does not exist"]),
        ("missing_key", ["missing", "timeouts"]),
        ("truncated", ["truncated"]),
        ("garbage", ["not a readable HDF5"]),
        ("nan_observation", ["non-finite", "observations"]),
        ("inf_reward", ["non-finite", "rewards"]),
        ("empty", ["empty"]),
        ("wrong_obs_dim", ["observations of dimension 7", "expects 11"]),
        ("wrong_act_dim", ["actions of dimension 5", "expects 3"]),
        ("length_mismatch", ["different lengths"]),
    ],
)
def test_bad_dataset_files_give_one_line_errors(tmp_path, case, fragments):
    path = tmp_path / "bad.hdf5"
    arrays = hopper_arrays()
    if case == "missing_key":
        del arrays["timeouts"]
    elif case == "nan_observation":
        arrays["observations"][7, 2] = np.nan
    elif case == "inf_reward":
        arrays["rewards"][3] = np.inf
    elif case == "empty":
        arrays = {k: v[:0] for k, v in arrays.items()}
    elif case == "wrong_obs_dim":
        arrays["observations"] = arrays["observations"][:, :7]
    elif case == "wrong_act_dim":
        arrays["actions"] = np.zeros((20, 5), np.float32)
    elif case == "length_mismatch":
        arrays["actions"] = arrays["actions"][:-2]
    if case != "missing_file":
        _write_raw(path, arrays)
    if case == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "garbage":
        path.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DtrlError) as excinfo:
        load_dataset(str(path), "hopper-medium")
    assert_one_line_error(excinfo, *fragments)


def test_unknown_task_and_unknown_source_are_one_line_errors(tmp_path):
    path = tmp_path / "ok.hdf5"
    write_d4rl(path, hopper_arrays())
    with pytest.raises(DtrlError) as excinfo:
        load_dataset(str(path), "no-such-task")
    assert_one_line_error(excinfo, "unknown task")
    with pytest.raises(DtrlError) as excinfo:
        load_dataset("not/a/thing", "hopper-medium")
    assert_one_line_error(excinfo, "not/a/thing")


def test_slightly_out_of_range_actions_are_clipped_with_a_warning_far_ones_refused(tmp_path, capsys):
    arrays = hopper_arrays()
    arrays["actions"][0] = [1.05, -1.02, 0.3]  # as in D4RL's human data
    path = tmp_path / "a.hdf5"
    write_d4rl(path, arrays)
    actions = load_dataset(str(path), "hopper-medium").trajectories[0].actions
    np.testing.assert_allclose(actions[0], [1.0, -1.0, 0.3], rtol=1e-6)
    assert "2 action value(s) up to 5.0% outside the action box were clipped" in capsys.readouterr().err
    arrays["actions"] = arrays["actions"] * 3  # data scaled for another action space
    write_d4rl(path, arrays)
    with pytest.raises(DtrlError, match="outside .*scaled for another action space"):
        load_dataset(str(path), "hopper-medium")


def test_steps_both_terminal_and_timeout_are_terminations_with_a_warning(capsys):
    from dtrl.data import split_episodes

    rewards = np.ones(6, np.float32)
    terminals = np.array([0, 0, 1, 0, 0, 0], bool)
    timeouts = np.array([0, 0, 1, 0, 0, 1], bool)
    trajectories = split_episodes(np.zeros((6, 2)), np.zeros((6, 1)), rewards, terminals, timeouts)
    assert [(len(t), t.terminated) for t in trajectories] == [(3, True), (3, False)]
    assert "1 step(s) are marked both terminal and timeout" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ Minari


def test_minari_id_missing_offline_is_one_line_error(tmp_path, monkeypatch):
    import minari.storage.local as minari_local

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))

    def no_network(dataset_id):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(minari_local.hosting, "download_dataset", no_network)
    monkeypatch.setattr("dtrl.data.dataset._check_minari_remote_reachable", lambda dataset_id: None)
    with pytest.raises(DtrlError) as excinfo:
        load_dataset("mujoco/hopper/medium-v0", "hopper-medium")
    assert_one_line_error(excinfo, "Minari dataset mujoco/hopper/medium-v0 is not stored locally and could not be "
                                   "downloaded", "Name or service not known")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Minari asks for author, permalink, ... metadata
def test_local_minari_dataset_loads_by_id_and_directory(tmp_path, monkeypatch):
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    # Episode buffers built by hand (minari.DataCollector needs jax, which dtrl does not depend on).
    env = gym.make("Hopper-v5", max_episode_steps=30)
    env.action_space.seed(0)
    buffers, lengths, returns = [], [], []
    for episode in range(3):
        obs, _ = env.reset(seed=episode)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(id=episode, observations=np.array(observations), actions=np.array(actions),
                                     rewards=rewards, terminations=terminations, truncations=truncations))
        lengths.append(len(rewards))
        returns.append(sum(rewards))
    minari.create_dataset_from_buffers("dtrltest/hopper/tiny-v0", buffers, env=env, algorithm_name="uniform random")
    env.close()

    by_id = load_dataset("dtrltest/hopper/tiny-v0", "hopper-medium")
    directory = tmp_path / "store" / "dtrltest" / "hopper" / "tiny-v0"
    by_dir = load_dataset(str(directory), "hopper-medium")
    for dataset in (by_id, by_dir):
        assert [len(t) for t in dataset.trajectories] == lengths
        np.testing.assert_allclose(dataset.returns(), returns, rtol=1e-5)
        assert dataset.obs_dim == HOPPER_OBS and dataset.act_dim == HOPPER_ACT
    assert by_id.attrs["algorithm_name"] == "uniform random"
    # Minari keeps T+1 observations per episode; the trajectory keeps the T before each action.
    raw = minari.load_dataset("dtrltest/hopper/tiny-v0")
    first = next(iter(raw.iterate_episodes()))
    np.testing.assert_array_equal(by_id.trajectories[0].observations, first.observations[:-1].astype(np.float32))


def test_antmaze_dict_observations_flatten_in_contract_order():
    from dtrl.data.dataset import _flatten_observations

    observations = {"desired_goal": np.full((4, 2), 3.0), "observation": np.ones((4, 27)),
                    "achieved_goal": np.full((4, 2), 2.0)}
    flat = _flatten_observations(get_task("antmaze-umaze"), observations)
    assert flat.shape == (4, 31)
    np.testing.assert_array_equal(flat[0, :27], 1.0)
    np.testing.assert_array_equal(flat[0, 27:29], 2.0)
    np.testing.assert_array_equal(flat[0, 29:], 3.0)


# ------------------------------------------------------------------------------ normaliser, sampler


def test_state_normalizer_statistics_floor_and_round_trip():
    rng = np.random.default_rng(0)
    obs = rng.normal(loc=3.0, scale=2.0, size=(500, 4)).astype(np.float32)
    obs[:, 3] = 5.0  # constant dimension -> std floor
    trajs = [Trajectory(obs[:200], np.zeros((200, 1), np.float32), np.zeros(200, np.float32)),
             Trajectory(obs[200:], np.zeros((300, 1), np.float32), np.zeros(300, np.float32))]
    normalizer = StateNormalizer.from_trajectories(trajs)
    np.testing.assert_allclose(normalizer.mean, obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(normalizer.std[:3], obs[:, :3].std(0), rtol=1e-4)
    assert normalizer.std[3] == pytest.approx(StateNormalizer.DEFAULT_MIN_STD)
    normalized = normalizer.normalize(obs)
    np.testing.assert_allclose(normalized[:, :3].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalized[:, 3], 0.0, atol=1e-5)
    as_tensor = normalizer.normalize(torch.from_numpy(obs))
    np.testing.assert_allclose(as_tensor.numpy(), normalized, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(normalizer.denormalize(normalized), obs, rtol=1e-5, atol=1e-5)
    restored = StateNormalizer.from_dict(normalizer.to_dict())
    np.testing.assert_array_equal(restored.mean, normalizer.mean)
    np.testing.assert_array_equal(restored.std, normalizer.std)
    with pytest.raises(DtrlError):
        StateNormalizer.from_dict({"mean": [0.0, 1.0], "std": [1.0, 0.0]})


def _trajectories(lengths, obs_dim=2, act_dim=1, seed=0):
    rng = np.random.default_rng(seed)
    return [Trajectory(rng.normal(size=(n, obs_dim)).astype(np.float32),
                       rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
                       rng.integers(0, 10, size=n).astype(np.float32)) for n in lengths]


def test_sampler_shapes_and_dtypes():
    trajs = _trajectories([30, 5, 12], obs_dim=11, act_dim=3)
    sampler = SequenceSampler(trajs, context_length=8, reward_scale=1000.0,
                              normalizer=StateNormalizer.from_trajectories(trajs), rng=np.random.default_rng(0))
    batch = sampler.sample(16)
    assert batch["states"].shape == (16, 8, 11) and batch["states"].dtype == torch.float32
    assert batch["actions"].shape == (16, 8, 3) and batch["actions"].dtype == torch.float32
    for key in ("returns_to_go", "rewards"):
        assert batch[key].shape == (16, 8) and batch[key].dtype == torch.float32
    assert batch["timesteps"].shape == (16, 8) and batch["timesteps"].dtype == torch.long
    assert batch["mask"].shape == (16, 8) and batch["mask"].dtype == torch.bool
    # Valid steps form a suffix (left padding), and the last position is always valid.
    mask = batch["mask"].numpy()
    assert mask[:, -1].all()
    assert np.all(np.diff(mask.astype(int), axis=1) >= 0)


def test_sampler_windows_values_rtg_and_padding_against_hand_computation():
    rewards = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
    observations = np.arange(10, dtype=np.float32).reshape(5, 2)
    actions = np.linspace(-1, 1, 5, dtype=np.float32).reshape(5, 1)
    other = _trajectories([7])[0]
    sampler = SequenceSampler([other, Trajectory(observations, actions, rewards)], context_length=3,
                              reward_scale=10.0, normalizer=None, rng=0)
    # Window ending at step 1 of trajectory 1: one padded slot, then steps 0 and 1.
    batch = sampler.gather(np.array([1, 1]), np.array([1, 4]))
    np.testing.assert_array_equal(batch["mask"][0].numpy(), [False, True, True])
    np.testing.assert_allclose(batch["returns_to_go"][0].numpy(), [0.0, 15 / 10, 14 / 10])
    np.testing.assert_allclose(batch["rewards"][0].numpy(), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(batch["timesteps"][0].numpy(), [0, 0, 1])
    np.testing.assert_array_equal(batch["states"][0].numpy(), [[0, 0], [0, 1], [2, 3]])
    np.testing.assert_array_equal(batch["actions"][0, 1:].numpy(), actions[:2])
    # Window ending at the last step: steps 2, 3, 4; RTG = remaining true rewards / scale.
    np.testing.assert_array_equal(batch["mask"][1].numpy(), [True, True, True])
    np.testing.assert_allclose(batch["returns_to_go"][1].numpy(), [12 / 10, 9 / 10, 5 / 10])
    np.testing.assert_array_equal(batch["timesteps"][1].numpy(), [2, 3, 4])


def test_sampler_draws_trajectories_in_proportion_to_length():
    lengths = [10, 30, 60, 100]
    sampler = SequenceSampler(_trajectories(lengths), context_length=4, reward_scale=1.0, normalizer=None,
                              rng=np.random.default_rng(123))
    n = 40_000
    traj, end = sampler.sample_indices(n)
    frequencies = np.bincount(traj, minlength=4) / n
    expected = np.array(lengths) / sum(lengths)
    # Binomial standard error is at most sqrt(0.25 / 40000) = 0.0025; allow 4 sigma.
    np.testing.assert_allclose(frequencies, expected, atol=0.01)
    assert np.all(end >= 0) and np.all(end < np.array(lengths)[traj])
    # Window ends are uniform within a trajectory: the mean end step of the 100-step one is ~49.5.
    assert abs(end[traj == 3].mean() - 49.5) < 1.5


def test_sampler_is_reproducible_with_a_seed():
    trajs = _trajectories([20, 9])
    a = SequenceSampler(trajs, 5, 1.0, None, rng=7).sample(32)
    b = SequenceSampler(trajs, 5, 1.0, None, rng=7).sample(32)
    for key in a:
        assert torch.equal(a[key], b[key])


# --------------------------------------------------------------------------------------- build, info


def test_cli_build_random_then_info(tmp_path, capsys):
    out = tmp_path / "hopper-random.hdf5"
    assert dtrl_main(["data", "build", "hopper-random", "--transitions", "2000", "--out", str(out),
                      "--no-progress"]) == 0
    arrays = read_d4rl(out)
    assert len(arrays["rewards"]) == 2000 and arrays["observations"].shape == (2000, HOPPER_OBS)
    np.testing.assert_array_equal(arrays["next_observations"][:-1][~(arrays["terminals"] | arrays["timeouts"])[:-1]],
                                  arrays["observations"][1:][~(arrays["terminals"] | arrays["timeouts"])[:-1]])
    assert arrays["terminals"].any() and (arrays["terminals"][-1] or arrays["timeouts"][-1])
    attrs = read_attrs(out)
    assert attrs["task"] == "hopper-random" and attrs["level"] == "random" and attrs["n_transitions"] == 2000
    assert attrs["seed"] == 0 and attrs["dtrl_version"] and "random" in attrs["builder"]
    capsys.readouterr()

    assert dtrl_main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "episodes" in text and "normalised" in text and "hopper-random" in text
    episodes = int(text.split("episodes")[1].split()[0])
    assert episodes == int((arrays["terminals"] | arrays["timeouts"]).sum())

    # An existing output is refused and left untouched.
    before = out.read_bytes()
    assert dtrl_main(["data", "build", "hopper-random", "--transitions", "100", "--out", str(out),
                      "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_medium_build_mechanics_with_a_tiny_sac_budget(tmp_path):
    out, replay = tmp_path / "m.hdf5", tmp_path / "mr.hdf5"
    summary = build(BuildConfig(dataset="hopper-medium", out=str(out), replay_out=str(replay), transitions=300,
                                target_return=-1e9, sac_steps=2000, learning_starts=100, eval_every=100,
                                eval_episodes=1, batch_size=32, net_arch=(16, 16), rollout_envs=2, progress=False),
                    log=lambda text: None)
    assert summary["sac"]["reached"] and summary["sac"]["steps"] == 100  # stopped at the first evaluation
    medium, medium_replay = read_d4rl(out), read_d4rl(replay)
    assert len(medium["rewards"]) == 300
    assert len(medium_replay["rewards"]) == 100
    assert medium_replay["timeouts"][-1] or medium_replay["terminals"][-1]
    assert not (medium_replay["terminals"] & medium_replay["timeouts"]).any()
    attrs = read_attrs(out)
    assert attrs["level"] == "medium" and attrs["target_reached"] and attrs["sac_steps"] == 100
    assert read_attrs(replay)["level"] == "medium-replay"
    # each file names the task it is (what --dataset without --task trains on)
    assert (attrs["dtrl_task"], read_attrs(replay)["dtrl_task"]) == ("hopper-medium", "hopper-medium-replay")
    load_dataset(str(out), "hopper-medium")
    load_dataset(str(replay), "hopper-medium-replay")


def test_build_refusals_are_one_line_errors(tmp_path):
    with pytest.raises(DtrlError) as excinfo:  # generic env without reference scores
        build(BuildConfig(dataset="Swimmer-v5-medium", out=str(tmp_path / "s.hdf5"), progress=False))
    assert_one_line_error(excinfo, "--target-return")
    with pytest.raises(DtrlError) as excinfo:  # human demonstrations cannot be rebuilt
        build(BuildConfig(dataset="door-human", out=str(tmp_path / "d.hdf5"), progress=False))
    assert_one_line_error(excinfo, "D4RL/door/human-v2", "door-random")
    with pytest.raises(DtrlError) as excinfo:
        build(BuildConfig(dataset="hopper-expert", out=str(tmp_path / "e.hdf5"), progress=False))
    assert_one_line_error(excinfo)
    with pytest.raises(DtrlError) as excinfo:
        build(BuildConfig(dataset="hopper-random", out="", progress=False))
    assert_one_line_error(excinfo, "--out")
    assert leftovers(tmp_path) == []


def test_dataset_names_resolve_to_env_and_level():
    task, level = resolve_dataset_name("walker2d-medium-replay")
    assert (task.env_id, level) == ("Walker2d-v5", "medium-replay")
    task, level = resolve_dataset_name("door-random")
    assert (task.env_id, level, task.domain) == ("AdroitHandDoor-v1", "random", "adroit")
    task, level = resolve_dataset_name("antmaze-umaze-random")
    assert (task.env_id, level) == ("AntMaze_UMaze-v5", "random")
    task, level = resolve_dataset_name("HalfCheetah-v5-medium")
    assert (task.env_id, level, task.has_reference) == ("HalfCheetah-v5", "medium", False)


def test_info_needs_a_task_for_an_unknown_minari_source(tmp_path):
    from dtrl.data.cli import describe

    with pytest.raises(DtrlError) as excinfo:
        describe("someone/else/data-v0")
    assert_one_line_error(excinfo, "--task")


def _minari_hopper_dataset(dataset_id, ref_scores=None):
    """A tiny Hopper-v5 dataset written by Minari's own writer (from episode buffers: Minari's
    DataCollector needs jax, which dtrl does not depend on)."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env = gym.make("Hopper-v5", max_episode_steps=20)
    env.action_space.seed(0)
    buffers = []
    for episode in range(2):
        obs, _ = env.reset(seed=episode)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            observations.append(obs)
            actions.append(env.action_space.sample() * 0)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(id=episode, observations=np.array(observations), actions=np.array(actions),
                                     rewards=rewards, terminations=terminations, truncations=truncations))
    low, high = ref_scores or (None, None)
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="uniform random",
                                       ref_min_score=low, ref_max_score=high)
    env.close()


def test_a_minari_dataset_describes_its_task_and_reference_scores(tmp_path, monkeypatch, capsys):
    from dtrl.cli import main as cli

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    _minari_hopper_dataset("someone/hopper/mine-v0", ref_scores=(-20.0, 3234.3))
    # no --task: the env comes from the dataset's env_spec, the reference scores from its metadata
    assert cli(["data", "info", "someone/hopper/mine-v0"]) == 0
    out = capsys.readouterr().out
    assert "task         Hopper-v5 (Hopper-v5)" in out and "score: 100 * (R - -20) / (3234.3 - -20)" in out
    # --task still overrides (the registry's own D4RL reference scores)
    assert cli(["data", "info", "someone/hopper/mine-v0", "--task", "hopper-medium"]) == 0
    assert "hopper-medium" in capsys.readouterr().out
    # a dataset recorded in another env than the task's is refused, for data info and for training
    assert cli(["data", "info", "someone/hopper/mine-v0", "--task", "walker2d-medium"]) == 2
    assert "recorded in Hopper-v5, but task walker2d-medium runs Walker2d-v5" in capsys.readouterr().err


@pytest.mark.parametrize("with_next", [False, True])
def test_d4rl_to_minari_to_d4rl_round_trip(tmp_path, monkeypatch, capsys, with_next):
    import minari

    from dtrl.cli import main as cli
    from dtrl.data import read_d4rl

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    arrays = hopper_arrays(episode_lengths=(5, 12, 3), terminal_last=False)
    if with_next:
        arrays["next_observations"] = np.roll(arrays["observations"], -1, axis=0) + 1.0
    source = tmp_path / "hopper.hdf5"
    write_d4rl(source, arrays, {"task": "hopper-medium", "builder": "test builder"})
    minari_id = f"dtrltest/hopper/export{int(with_next)}-v0"
    assert cli(["data", "export", str(source), "--minari-id", minari_id]) == 0
    assert f"wrote Minari dataset {minari_id}: 3 episodes, 20 steps" in capsys.readouterr().out
    # Minari's own reader sees the env, the reference scores and the algorithm
    exported = minari.load_dataset(minari_id)
    metadata = exported.storage.metadata
    assert exported.spec.env_spec.id == "Hopper-v5" and metadata["algorithm_name"] == "test builder"
    assert (metadata["ref_min_score"], metadata["ref_max_score"]) == (-20.272305, 3234.3)
    if with_next:  # the final observation of an episode is its next_observation
        first = next(iter(exported.iterate_episodes()))
        np.testing.assert_array_equal(first.observations[-1], arrays["next_observations"][4])
    # ... and dtrl reads it back as the same D4RL arrays
    again = load_dataset(minari_id, "hopper-medium")
    back = tmp_path / "back.hdf5"
    write_d4rl(back, {
        "observations": np.concatenate([t.observations for t in again.trajectories]),
        "actions": np.concatenate([t.actions for t in again.trajectories]),
        "rewards": np.concatenate([t.rewards for t in again.trajectories]),
        "terminals": np.concatenate([np.arange(len(t)) == len(t) - 1 if t.terminated else np.zeros(len(t), bool)
                                     for t in again.trajectories]),
        "timeouts": np.concatenate([np.arange(len(t)) == len(t) - 1 if t.truncated else np.zeros(len(t), bool)
                                   for t in again.trajectories]),
    })
    original, returned = read_d4rl(source), read_d4rl(back)
    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(original[key], returned[key])
    # an existing id is refused, not overwritten
    assert cli(["data", "export", str(source), "--minari-id", minari_id]) == 2


def test_a_goal_conditioned_dataset_exports_in_the_env_dict_layout(tmp_path, monkeypatch, capsys):
    import minari

    from dtrl.cli import main as cli

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    rng = np.random.default_rng(0)
    n = 20
    arrays = {"observations": rng.normal(size=(n, 31)).astype(np.float32),
              "actions": rng.uniform(-1, 1, size=(n, 8)).astype(np.float32),
              "rewards": np.zeros(n, np.float32), "terminals": np.arange(n) == n - 1, "timeouts": np.zeros(n, bool)}
    write_d4rl(tmp_path / "maze.hdf5", arrays, {"task": "antmaze-umaze"})
    assert cli(["data", "export", str(tmp_path / "maze.hdf5"), "--minari-id", "dtrltest/antmaze/tiny-v0"]) == 0
    episode = next(iter(minari.load_dataset("dtrltest/antmaze/tiny-v0").iterate_episodes()))
    assert set(episode.observations) == {"observation", "achieved_goal", "desired_goal"}
    np.testing.assert_allclose(episode.observations["desired_goal"][:n], arrays["observations"][:, 29:], rtol=1e-6)
    again = load_dataset("dtrltest/antmaze/tiny-v0", "antmaze-umaze")
    np.testing.assert_allclose(again.trajectories[0].observations, arrays["observations"], rtol=1e-6)
