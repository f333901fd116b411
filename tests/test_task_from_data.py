"""Tasks that follow the data (issue 39.5): a command given ``--dataset`` takes the task the dataset
names (a dtrl-built HDF5 file, a Minari dataset with dtrl's task or whose id names a level of its
env), refuses a ``--task`` that contradicts it and, with neither, asks for ``--task`` instead of running
under a default; ``dtrl finetune --init`` takes the policy's task and warns when moved to another."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from conftest import one_line
from dtrl.cli import main as dtrl
from dtrl.data import read_attrs, read_d4rl, write_d4rl
from dtrl.data.builder import BuildConfig, build
from dtrl.data.task_of import build_task_name, dataset_task, task_from_attrs
from dtrl.tasks import TASKS

torch.set_num_threads(1)

TINY = ["--preset", "cpu", "--model.n-layer", "1", "--model.n-head", "1", "--model.embed-dim", "16",
        "--model.context-length", "4", "--steps", "2", "--steps-per-iteration", "2", "--batch-size", "4",
        "--eval-every", "0", "--eval-episodes", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A dtrl-built hopper-random file and a locally built door-random one (no dtrl task is that)."""
    root = tmp_path_factory.mktemp("built")
    for name in ("hopper-random", "door-random"):
        build(BuildConfig(dataset=name, out=str(root / f"{name}.hdf5"), transitions=120, progress=False),
              log=lambda text: None)
    return root / "hopper-random.hdf5", root / "door-random.hdf5"


def test_built_files_record_the_task_they_are(built):
    hopper, door = built
    assert read_attrs(hopper)["dtrl_task"] == "hopper-random" and dataset_task(str(hopper)) == "hopper-random"
    assert read_attrs(door)["task"] == "door-human" and read_attrs(door)["dtrl_task"] == ""
    assert dataset_task(str(door)) is None
    # files built before dtrl_task existed: their task attribute where the level is that task's
    assert task_from_attrs({"task": "hopper-medium", "level": "medium"}) == "hopper-medium"
    assert task_from_attrs({"task": "hopper-medium", "level": "medium-replay"}) == "hopper-medium-replay"
    assert task_from_attrs({"task": "door-human", "level": "random"}) is None
    assert task_from_attrs({"task": "HalfCheetah-v5", "level": "medium"}) == "HalfCheetah-v5"
    assert task_from_attrs({}) is None and task_from_attrs({"task": "no-such-task"}) is None
    assert build_task_name(TASKS["antmaze-umaze"], "random") is None


def test_pretrain_without_task_takes_the_files_task(built, tmp_path, capsys):
    hopper, _ = built
    assert dtrl(["pretrain", "--dataset", str(hopper), "--out", str(tmp_path / "pt"), *TINY]) == 0
    assert json.loads((tmp_path / "pt" / "config.json").read_text())["task"] == "hopper-random"
    assert "hopper-random" in capsys.readouterr().out
    # the same task spelled with D4RL's version is no contradiction
    from dtrl.algos import pretrain

    assert pretrain.parse(["--task", "hopper-random-v2", "--dataset", str(hopper)]).task == "hopper-random-v2"


def test_a_contradicting_task_is_refused_with_nothing_written(built, tmp_path, capsys):
    hopper, _ = built
    message = f"--task hopper-medium contradicts the dataset's task hopper-random ({hopper})"
    for argv in (["pretrain", "--task", "hopper-medium", "--dataset", str(hopper), "--out", str(tmp_path / "a"), *TINY],
                 ["finetune", "--algo", "iql", "--task", "hopper-medium", "--dataset", str(hopper),
                  "--out", str(tmp_path / "a")],
                 ["finetune", "--algo", "odt", "--task", "hopper-medium", "--dataset", str(hopper),
                  "--init", "runs/none", "--out", str(tmp_path / "a")],
                 ["data", "info", str(hopper), "--task", "hopper-medium"]):
        one_line(capsys, dtrl(argv), "dtrl: error: " + message)
    assert not (tmp_path / "a").exists()


def test_without_task_or_a_dataset_naming_one_the_command_refuses(built, tiny_files, tmp_path, capsys):
    plain, _ = tiny_files  # a D4RL file without attributes
    _, door = built
    for source in (plain, door):
        for argv in (["pretrain", "--dataset", str(source), "--out", str(tmp_path / "a"), *TINY],
                     ["finetune", "--algo", "iql", "--dataset", str(source), "--out", str(tmp_path / "a")]):
            one_line(capsys, dtrl(argv), f"dataset {source} does not name its task: give --task")
    one_line(capsys, dtrl(["data", "info", str(plain)]), "give --task")
    assert not (tmp_path / "a").exists()
    # with --task it runs as before
    assert dtrl(["pretrain", "--task", "hopper-random", "--dataset", str(plain), "--out", str(tmp_path / "b"),
                 *TINY]) == 0
    # a missing file without --task is the loader's own one line
    one_line(capsys, dtrl(["pretrain", "--dataset", str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "a")]),
             "does not exist")


def _minari_hopper(dataset_id: str) -> None:
    """A tiny Minari dataset recorded in Hopper-v5, with no dtrl metadata."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env = gym.make("Hopper-v5", max_episode_steps=10)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    observations, actions, rewards = [obs], [], []
    for _ in range(10):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs), actions.append(action), rewards.append(float(reward))
        if terminated:
            break
    n = len(rewards)
    last = [False] * (n - 1)
    buffer = EpisodeBuffer(id=0, observations=np.array(observations), actions=np.array(actions), rewards=rewards,
                           terminations=[*last, terminated], truncations=[*last, not terminated])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari's notes about missing optional metadata
        minari.create_dataset_from_buffers(dataset_id, [buffer], env=env, algorithm_name="test")
    env.close()


def test_minari_export_stores_the_task_and_training_follows_it(built, tmp_path, monkeypatch, capsys):
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    hopper, _ = built
    assert dtrl(["data", "export", str(hopper), "--minari-id", "me/hopper/mine-v0"]) == 0
    assert minari.load_dataset("me/hopper/mine-v0").storage.metadata["dtrl_task"] == "hopper-random"
    capsys.readouterr()
    assert dtrl(["data", "info", "me/hopper/mine-v0"]) == 0
    assert "task         hopper-random (Hopper-v5)" in capsys.readouterr().out
    assert dataset_task(str(tmp_path / "store" / "me" / "hopper" / "mine-v0")) == "hopper-random"
    assert dtrl(["pretrain", "--dataset", "me/hopper/mine-v0", "--out", str(tmp_path / "pt"), *TINY]) == 0
    assert json.loads((tmp_path / "pt" / "config.json").read_text())["task"] == "hopper-random"
    one_line(capsys, dtrl(["pretrain", "--task", "walker2d-random", "--dataset", "me/hopper/mine-v0",
                           "--out", str(tmp_path / "x"), *TINY]), "contradicts the dataset's task hopper-random")
    # a file naming no task exports with the --task given, and without one stores none
    plain = tmp_path / "plain.hdf5"
    arrays = read_d4rl(hopper)
    write_d4rl(plain, {k: arrays[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts")})
    assert dtrl(["data", "export", str(plain), "--minari-id", "me/hopper/given-v0", "--task", "hopper-random"]) == 0
    assert dataset_task("me/hopper/given-v0") == "hopper-random"
    _, door = built
    assert dtrl(["data", "export", str(door), "--minari-id", "me/door/rand-v0"]) == 0
    assert "dtrl_task" not in minari.load_dataset("me/door/rand-v0").storage.metadata
    assert dataset_task("me/door/rand-v0") is None
    assert not (tmp_path / "x").exists()


def test_a_minari_id_names_a_level_only_with_its_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    # registry ids need no download
    assert dataset_task("mujoco/hopper/medium-v0") == "hopper-medium"
    assert dataset_task("D4RL/door/human-v2") == "door-human"
    assert dataset_task("mujoco/hopper/expert-v0") is None  # not stored here, and no dtrl task
    _minari_hopper("someone/hopper/random-v0")  # the id's level, the env spec's family: hopper-random
    _minari_hopper("someone/hopper/mine-v0")  # the env alone names no level
    assert dataset_task("someone/hopper/random-v0") == "hopper-random"
    assert dataset_task("someone/hopper/mine-v0") is None
    one_line(capsys, dtrl(["pretrain", "--dataset", "someone/hopper/mine-v0", "--out", str(tmp_path / "x")]),
             "give --task")
    # data info still describes it in its env (nothing is filed under a task)
    assert dtrl(["data", "info", "someone/hopper/mine-v0"]) == 0
    assert "task         Hopper-v5 (Hopper-v5)" in capsys.readouterr().out


def test_finetune_init_gives_the_task_and_another_task_warns(tiny_files, tmp_path, capsys):
    from dtrl.algos import finetune

    _, policy = tiny_files  # a hopper-random policy
    assert finetune.parse(["--algo", "grpo", "--init", str(policy)]).task == "hopper-random"
    assert finetune.parse(["--algo", "ppo", "--init", str(policy)]).task == "hopper-random"
    assert capsys.readouterr().err == ""
    one_line(capsys, dtrl(["finetune", "--algo", "grpo", "--init", str(tmp_path / "none"), "--out",
                           str(tmp_path / "x")]), "no policy at --init")
    # a policy moved to another task (same sizes) runs, with a warning
    out = tmp_path / "moved"
    assert dtrl(["finetune", "--algo", "grpo", "--task", "hopper-medium", "--init", str(policy), "--preset", "cpu",
                 "--out", str(out), "--iterations", "1", "--device", "cpu", "--trajectories-per-batch", "2",
                 "--reset-points-per-trajectory", "2", "--group-size", "4", "--sub-trajectory-length", "5",
                 "--eval-steps", "5", "--minibatch-size", "8", "--sub-trajectory-buffer-size", "24",
                 "--eval-every", "0", "--eval-episodes", "1", "--min-group-deviation", "0"]) == 0
    err = capsys.readouterr().err
    assert f"dtrl: warning: --init {policy} is a policy of task hopper-random; finetuning it on task hopper-medium" \
        in err
    assert json.loads((out / "config.json").read_text())["task"] == "hopper-medium"
    # the dataset decides before the policy: odt on a plain file takes the policy's task
    plain, _ = tiny_files
    assert finetune.parse(["--algo", "odt", "--dataset", str(plain), "--init", str(policy)]).task == "hopper-random"
    # --help needs no task
    with pytest.raises(SystemExit) as exit_info:
        finetune.parse(["--algo", "grpo", "--help"])
    assert exit_info.value.code == 0
