"""Q-guided GRPO (Algorithm 2): G actions per state, group-normalised Q advantages against hand
values, per-action importance ratios, and rounds from the CLI (critic warm-up, then policy updates)."""

import json

import pytest
import torch

from conftest import read_metrics
from dtrl.algos.grpo_q import q_group_advantages, sample_action_groups
from dtrl.cli import main as cli
from dtrl.models.distributions import ActionDistribution


class _SumQ:
    """min(Q1, Q2)(s, a) = sum(a) + s[0] — the state offset must cancel within a group."""

    def min_q(self, states, actions):
        return actions.sum(-1) + states[..., 0]


def test_group_advantages_normalise_q_scores_within_each_state():
    states = torch.tensor([[0.0], [100.0]])
    actions = torch.tensor([[[1.0], [0.0]], [[2.0], [0.0]], [[3.0], [4.0]]])  # [G=3, N=2, A=1]
    advantages = q_group_advantages(_SumQ(), states, actions, min_std=1e-6)
    # state 0: Q = 1, 2, 3 -> mean 2, unbiased std 1 -> -1, 0, 1
    assert advantages[0].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    # state 1: Q = 100, 100, 104 -> mean 101.333, std 2.3094
    assert advantages[1].tolist() == pytest.approx([-0.57735, -0.57735, 1.1547], rel=1e-4)


def test_action_groups_are_independent_samples_of_the_policy_with_their_log_probs():
    torch.manual_seed(0)
    dist = ActionDistribution(torch.zeros(5, 2, requires_grad=True), torch.zeros(5, 2))
    actions = sample_action_groups(dist, group_size=4)
    assert actions.shape == (4, 5, 2) and not actions.requires_grad
    assert actions.abs().max() < 1 and len({tuple(a) for a in actions[:, 0].tolist()}) == 4
    # per-action ratio of the policy with itself is exactly 1
    assert torch.equal(dist.log_prob(actions), dist.log_prob(actions.clone()))


def run_two_rounds(policy, run, *extra: str) -> int:
    """`dtrl finetune --algo grpo-q` for two tiny iterations: a critic warm-up round, then a policy round."""
    return cli(["finetune", "--algo", "grpo-q", "--task", "hopper-random", "--init", str(policy), "--out", str(run),
                "--iterations", "2", "--trajectories-per-update", "2", "--minibatch-size", "8", "--group-size", "4",
                "--critic-updates-per-iteration", "2", "--critic-batch-size", "4", "--critic-warmup-iterations", "1",
                "--critic-hidden-dim", "16", "--eval-episodes", "1", "--eval-every", "0", "--device", "cpu",
                *extra])


def test_grpo_q_rounds_from_the_cli(tiny_files, tmp_path):
    run = tmp_path / "grpo-q"
    assert run_two_rounds(tiny_files[1], run) == 0
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert "losses/critic" in rows[0] and "losses/policy" not in rows[0]  # warm-up round: critic only
    assert "losses/policy" in rows[1] and rows[1]["grad_updates"] > rows[0]["grad_updates"] + 2
    assert json.loads((run / "config.json").read_text())["algo"] == "grpo-q"


def test_presets_take_t_eval_and_etpr_from_table_6_and_a_run_starts_at_its_etpr(tiny_files, tmp_path):
    from dtrl.algos import grpo_q
    from dtrl.tasks import get_task

    for name in ("hopper-random", "door-human", "antmaze-umaze"):
        task = get_task(name)
        for preset in (grpo_q.paper_preset(name), grpo_q.cpu_preset(name)):
            assert (preset.context_length, preset.init_temperature) == (task.context_eval, task.init_temperature)
    # the first policy round's temperature is --init-temperature, not the pretrained DT's (a few Adam
    # steps of the log-temperature at lr 1e-4 move it by well under 1%)
    run = tmp_path / "grpo-q"
    assert run_two_rounds(tiny_files[1], run, "--init-temperature", "0.37") == 0
    assert read_metrics(run)[1]["losses/temperature"] == pytest.approx(0.37, rel=0.01)
