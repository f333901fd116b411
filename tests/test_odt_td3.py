"""ODT+TD3: TD3 targets inside window batches (clipped smoothing noise, min of the twin target
critics, terminal steps without bootstrap, steps without s_{t+1} left out) against hand-computed
values, and two iterations from the CLI."""

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import read_metrics
from dtrl.algos.odt_td3 import td3_actor_loss
from dtrl.algos.td3 import smoothed_target_actions, window_critic_loss
from dtrl.cli import main as cli


def test_target_smoothing_noise_is_clipped_and_actions_stay_in_the_box():
    torch.manual_seed(0)
    mean = torch.full((10_000, 1), 0.3)
    actions = smoothed_target_actions(mean, noise_std=100.0, noise_clip=0.5)
    # huge σ: the noise saturates at ±c, so actions fill [0.3 - 0.5, 0.3 + 0.5], mostly at the ends
    assert actions.min().item() == pytest.approx(-0.2) and actions.max().item() == pytest.approx(0.8)
    at_bounds = ((actions - 0.8).abs() < 1e-6) | ((actions + 0.2).abs() < 1e-6)
    assert at_bounds.float().mean() > 0.98
    edge = smoothed_target_actions(torch.full((1000, 1), 0.9), noise_std=100.0, noise_clip=0.5)
    assert edge.max().item() == 1.0 and edge.min().item() == pytest.approx(0.4)
    assert torch.equal(smoothed_target_actions(mean, noise_std=0.0, noise_clip=0.5), mean)


class _LinearTwinQ(torch.nn.Module):
    """Q1 = s + a, Q2 = 2s + a (scalar s and a): min(Q1, Q2) = Q1 for s >= 0."""

    def forward(self, states, actions):
        s, a = states.squeeze(-1), actions.squeeze(-1)
        return s + a, 2 * s + a


class _ConstantPolicy(torch.nn.Module):
    """A 'target DT' whose mean action is 0.5 everywhere."""

    def forward(self, states, actions, returns_to_go, timesteps, mask):
        return SimpleNamespace(mean=torch.full_like(actions, 0.5))


def _batch(done_last: float):
    return {
        "states": torch.tensor([[[0.0], [1.0], [2.0], [3.0]]]),  # left-padded: position 0 is padding
        "actions": torch.tensor([[[0.0], [0.1], [0.2], [0.3]]]),
        "rewards": torch.tensor([[0.0, 1.0, 2.0, 3.0]]),
        "dones": torch.tensor([[0.0, 0.0, 0.0, done_last]]),
        "returns_to_go": torch.zeros(1, 4),
        "timesteps": torch.arange(4)[None],
        "mask": torch.tensor([[False, True, True, True]]),
    }


def test_window_critic_targets_use_min_of_twins_and_stop_at_terminals():
    gamma = 0.9
    critic, target = _LinearTwinQ(), _LinearTwinQ()
    # targets (noise 0): y_t = r_t + γ·min(s' + 0.5, 2s' + 0.5) = r_t + γ(s_{t+1} + 0.5)
    y1 = 1.0 + gamma * (2.0 + 0.5)
    y2 = 2.0 + gamma * (3.0 + 0.5)
    def sq(s, a, y):
        return (s + a - y) ** 2 + (2 * s + a - y) ** 2

    loss, _ = window_critic_loss(critic, target, _ConstantPolicy(), _batch(done_last=0.0), gamma, 0.0, 0.5)
    # position 3 has no s_{t+1} in the window and is not terminal: left out; position 0 is padding
    assert loss.item() == pytest.approx((sq(1.0, 0.1, y1) + sq(2.0, 0.2, y2)) / 2, rel=1e-5)
    loss, _ = window_critic_loss(critic, target, _ConstantPolicy(), _batch(done_last=1.0), gamma, 0.0, 0.5)
    # terminal last step: target is its reward alone (3.0)
    assert loss.item() == pytest.approx((sq(1.0, 0.1, y1) + sq(2.0, 0.2, y2) + sq(3.0, 0.3, 3.0)) / 3, rel=1e-5)


def test_odt_td3_two_iterations_from_the_cli(tiny_files, tmp_path):
    dataset, policy = tiny_files
    run = tmp_path / "odt-td3"
    assert cli(["finetune", "--algo", "odt-td3", "--task", "hopper-random", "--init", str(policy),
                "--dataset", str(dataset), "--out", str(run), "--iterations", "2", "--updates-per-iteration", "2",
                "--batch-size", "4", "--buffer-size", "4", "--critic-warmup-steps", "2", "--critic-hidden-dim", "16",
                "--min-transitions-per-iteration", "30", "--eval-episodes", "1", "--eval-every", "0",
                "--device", "cpu"]) == 0
    rows = read_metrics(run)
    # official MuJoCo settings: 2 critic updates per actor update, episodes until 30 new transitions
    assert [r["iteration"] for r in rows] == [1, 2] and rows[-1]["grad_updates"] == 2 * 2 * 2
    assert rows[0]["env_steps"] >= 30 and rows[1]["env_steps"] - rows[0]["env_steps"] >= 30
    assert {"losses/critic", "losses/actor_q", "losses/action_mse"} <= set(rows[-1])
    assert "eval_normalized_mean" in rows[-1]
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == "odt-td3" and config["actor"] == "deterministic" and config["context_length"] == 5


def test_the_stochastic_variant_runs(tiny_files, tmp_path):
    dataset, policy = tiny_files
    run = tmp_path / "odt-td3-stochastic"
    assert cli(["finetune", "--algo", "odt-td3", "--task", "hopper-random", "--init", str(policy),
                "--dataset", str(dataset), "--out", str(run), "--iterations", "1", "--updates-per-iteration", "2",
                "--batch-size", "4", "--buffer-size", "4", "--critic-warmup-steps", "0", "--critic-hidden-dim", "16",
                "--actor", "stochastic", "--normalize-q", "--policy-delay", "1", "--eval-episodes", "1",
                "--eval-every", "0", "--device", "cpu"]) == 0
    assert {"losses/action_nll", "losses/entropy"} <= set(read_metrics(run)[-1])


def test_actor_loss_is_the_official_formula_by_hand():
    # official (trainer.py): sup_coeff * MSE - rl_coeff * mean over valid window steps of Q1(s, pi(s)), raw Q
    supervised = torch.tensor(0.5)
    q = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    mask = torch.tensor([[False, True, True], [True, True, True]])
    loss, q_mean = td3_actor_loss(supervised, q, mask, rl_weight=0.1, normalize_q=False)
    assert q_mean.item() == pytest.approx((20 + 30 + 40 + 50 + 60) / 5)
    assert loss.item() == pytest.approx(0.5 - 0.1 * 40.0)
    # TD3+BC's normalisation divides the Q term by mean |Q|: the term becomes -α exactly
    loss, _ = td3_actor_loss(supervised, q, mask, rl_weight=0.1, normalize_q=True)
    assert loss.item() == pytest.approx(0.5 - 0.1)
