"""IQL: the expectile value loss, the in-sample Q target, the clipped advantage weights and the
reward transform against hand-computed values; offline + online iterations from the CLI, resume,
and the saved MLP actor loading back."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import read_metrics
from dtrl.algos.iql import advantage_weights, q_target, reward_transform_for, value_loss
from dtrl.cli import main as cli
from dtrl.data.trajectory import Trajectory
from dtrl.models.checkpoint import load_actor
from dtrl.tasks import get_task


def test_expectile_value_loss_weights_under_and_over_estimates_asymmetrically():
    # diff = Q - V = [-1, +1, +2]: weights 1 - τ, τ, τ with τ = 0.7 -> (0.3*1 + 0.7*1 + 0.7*4) / 3
    loss = value_loss(torch.tensor([1.0, 3.0, 4.0]), torch.tensor([2.0, 2.0, 2.0]), expectile=0.7)
    assert loss.item() == pytest.approx((0.3 + 0.7 + 2.8) / 3)


def test_q_target_bootstraps_through_v_except_at_terminals():
    target = q_target(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), gamma=0.9)
    assert target.tolist() == pytest.approx([10.0, 2.0])


def test_advantage_weights_are_exponentiated_and_clipped():
    weights = advantage_weights(torch.tensor([0.0, 1.0, 10.0]), torch.tensor([0.0, 0.0, 0.0]), temperature=3.0,
                                max_weight=100.0)
    assert weights.tolist() == pytest.approx([1.0, math.exp(3.0), 100.0], rel=1e-6)


def test_reward_transform_per_domain():
    trajectories = [Trajectory(np.zeros((2, 1)), np.zeros((2, 1)), np.array(r, np.float32)) for r in
                    ([1.0, 2.0], [10.0, 40.0])]
    assert reward_transform_for("auto", get_task("hopper-random"), trajectories) == ("locomotion", 1000.0 / 47.0, 0.0)
    assert reward_transform_for("auto", get_task("antmaze-umaze"), trajectories) == ("antmaze", 1.0, -1.0)
    assert reward_transform_for("auto", get_task("door-human"), trajectories) == ("none", 1.0, 0.0)


def test_iql_offline_then_online_from_the_cli(tiny_files, tmp_path):
    dataset, _ = tiny_files
    run = tmp_path / "iql"
    argv = ["finetune", "--algo", "iql", "--task", "hopper-random", "--dataset", str(dataset), "--out", str(run),
            "--offline-steps", "5", "--env-steps-per-iteration", "10", "--batch-size", "8", "--hidden-dim", "16",
            "--eval-episodes", "1", "--eval-every", "0", "--device", "cpu"]
    assert cli(argv + ["--iterations", "2"]) == 0
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert [(r["env_steps"], r["grad_updates"]) for r in rows] == [(0, 5), (10, 15), (20, 25)]
    assert rows[0]["eval_normalized_mean"] is not None and "losses/value" in rows[2]
    assert json.loads((run / "config.json").read_text())["algo"] == "iql"
    loaded = load_actor(run)
    assert loaded.meta["architecture"] == "iql-mlp"
    assert loaded.actor(torch.zeros(1, 11)).mean.shape == (1, 3)
    assert loaded.predict(np.zeros((2, 11), np.float32)).shape == (2, 3)
    assert cli(argv + ["--iterations", "3", "--resume"]) == 0
    assert [(r["iteration"], r["env_steps"]) for r in read_metrics(run)][-1] == (3, 30)
    # `dtrl eval` takes an IQL run like any other, and checks the task's dimensions
    assert cli(["eval", str(run), "--episodes", "2", "--json"]) == 0
    assert cli(["eval", str(run), "--episodes", "1", "--task", "walker2d-random"]) == 2


@pytest.mark.parametrize("schedule", [[], ["--actor-cosine-schedule"]])
def test_the_actor_keeps_learning_online(tiny_files, tmp_path, schedule):
    # the bug this pins: a cosine schedule that reached lr 0 at the end of the offline phase froze
    # the actor for the whole online phase
    from safetensors.torch import load_file

    dataset, _ = tiny_files
    run = tmp_path / "iql"
    argv = ["finetune", "--algo", "iql", "--task", "hopper-random", "--dataset", str(dataset), "--out", str(run),
            "--offline-steps", "20", "--env-steps-per-iteration", "10", "--batch-size", "8", "--hidden-dim", "16",
            "--eval-every", "0", "--eval-episodes", "1", "--device", "cpu", *schedule]
    assert cli(argv + ["--iterations", "1"]) == 0
    after_one = load_file(str(run / "policy" / "model.safetensors"))
    assert cli(argv + ["--iterations", "2", "--resume"]) == 0
    after_two = load_file(str(run / "policy" / "model.safetensors"))
    assert [r["charts/learning_rate"] for r in read_metrics(run)[1:]] == [3e-4, 3e-4]
    assert any(not torch.equal(after_one[name], after_two[name]) for name in after_one)


def test_iql_refuses_init_and_needs_a_dataset(tmp_path, capsys):
    assert cli(["finetune", "--algo", "iql", "--task", "hopper-random", "--out", str(tmp_path / "a")]) == 2
    assert "--dataset is required" in capsys.readouterr().err
    assert cli(["finetune", "--algo", "iql", "--task", "hopper-random", "--dataset", "x.hdf5", "--init", "runs/x",
                "--out", str(tmp_path / "b")]) == 2
    assert "takes no --init" in capsys.readouterr().err


def test_paper_hyperparameters_per_domain():
    from dtrl.algos.iql import PRESETS

    settings = {t: PRESETS["paper"](t) for t in ("hopper-medium", "antmaze-umaze", "door-human")}
    assert [(c.expectile, c.temperature) for c in settings.values()] == [(0.7, 3.0), (0.9, 10.0), (0.8, 3.0)]
