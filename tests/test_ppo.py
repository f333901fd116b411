"""PPO-DT: λ-returns / GAE against hand-computed values (terminal vs time-limit bootstrap), the
recomputed log-probs of buffered segments equal the sampling-time ones (first ratio exactly 1, no
relabeling), and two iterations from the CLI."""

import json

import numpy as np
import pytest
import torch

from conftest import read_metrics
from dtrl.algos.buffers import rollout_extra, trajectory_segments
from dtrl.algos.ppo import trajectory_advantages
from dtrl.cli import main as cli


def test_lambda_returns_by_hand_terminal_and_truncated():
    gamma, lam = 0.9, 0.8
    rewards, values = np.array([1.0, 1.0]), np.array([0.5, 0.5])
    adv, ret = trajectory_advantages(rewards, values, terminated=True, gamma=gamma, lam=lam)
    # δ1 = 1 - 0.5 = 0.5 (no bootstrap); δ0 = 1 + 0.9·0.5 - 0.5 = 0.95; A0 = 0.95 + 0.9·0.8·0.5
    assert adv.tolist() == pytest.approx([1.31, 0.5])
    assert ret.tolist() == pytest.approx([1.81, 1.0])
    adv, ret = trajectory_advantages(rewards, values, terminated=False, gamma=gamma, lam=lam)
    # time limit: the last step bootstraps with V(last) = 0.5: δ1 = 0.95, A0 = 0.95 + 0.72·0.95
    assert adv.tolist() == pytest.approx([0.95 + 0.72 * 0.95, 0.95])
    assert ret.tolist() == pytest.approx([0.5 + 0.95 + 0.72 * 0.95, 1.45])


def test_recomputed_log_probs_equal_sampling_time_ones(tiny_files):
    from dtrl.envs import BatchedEnv
    from dtrl.models.loading import load_policy
    from dtrl.rollout import rollout_episodes, segments_to_batch
    from dtrl.tasks import get_task

    _, policy_dir = tiny_files
    task = get_task("hopper-random")
    policy = load_policy(policy_dir, task=task)
    envs = BatchedEnv(task, 2, seed=0)
    try:
        rollouts = rollout_episodes(policy, envs, task, task.online_rtg, seeds=[3, 4], mode="sample")
    finally:
        envs.close()
    model = policy.model
    pieces = [segment for r in rollouts
              for segment, _ in trajectory_segments(r.to_trajectory(), rollout_extra(r), segment_length=3,
                                                    history_length=model.receptive_field)]
    assert sum(len(p) for p in pieces) == sum(len(r) for r in rollouts)
    # RTGs in the segments are the ones the policy was conditioned on (online target minus rewards so far)
    assert pieces[0].returns_to_go[0] == pytest.approx(task.online_rtg)
    batch = segments_to_batch(pieces, policy.normalizer, policy.reward_scale, history_length=model.receptive_field)
    with torch.no_grad():
        recomputed = batch.log_probs(model)
    assert torch.allclose(recomputed[batch.train_mask], batch.log_probs_old[batch.train_mask], atol=1e-4)


def test_ppo_two_iterations_from_the_cli(tiny_files, tmp_path):
    _, policy = tiny_files
    run = tmp_path / "ppo"
    assert cli(["finetune", "--algo", "ppo", "--task", "hopper-random", "--init", str(policy), "--out", str(run),
                "--iterations", "2", "--trajectories-per-iteration", "2", "--update-epochs", "1",
                "--minibatch-size", "16", "--critic-hidden-dim", "16", "--eval-episodes", "1", "--eval-every", "0",
                "--device", "cpu"]) == 0
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert rows[0]["grad_updates"] >= 1 and rows[1]["grad_updates"] > rows[0]["grad_updates"]
    assert {"losses/policy", "losses/value", "losses/clipfrac", "losses/approx_kl"} <= set(rows[-1])
    assert json.loads((run / "config.json").read_text())["algo"] == "ppo"
    assert "eval_normalized_mean" in rows[-1]


def test_env_threads_do_not_change_a_ppo_run(tiny_files, tmp_path):
    """--env-threads steps PPO-DT's env copies on more threads; the run is the one a thread gives."""
    _, policy = tiny_files
    runs = {}
    for threads in ("1", "2"):
        runs[threads] = tmp_path / f"threads{threads}"
        assert cli(["finetune", "--algo", "ppo", "--task", "hopper-random", "--init", str(policy),
                    "--out", str(runs[threads]), "--iterations", "2", "--trajectories-per-iteration", "3",
                    "--update-epochs", "1", "--minibatch-size", "16", "--critic-hidden-dim", "16",
                    "--eval-episodes", "2", "--eval-every", "1", "--device", "cpu", "--env-threads", threads]) == 0
    untimed = lambda row: {k: v for k, v in row.items() if k != "wall_time_s" and not k.startswith("time/")}  # noqa: E731
    one, two = ([untimed(row) for row in read_metrics(runs[t])] for t in ("1", "2"))
    assert one == two and one[-1]["env_steps"] > 0 and "eval_normalized_mean" in one[-1]


def test_the_relabeling_ablation_trains_on_achieved_returns(tiny_files, tmp_path, monkeypatch):
    # the buffer's RTG tokens become the episodes' achieved returns-to-go; the log-probs stay the sampled ones
    from dtrl.algos import ppo
    from dtrl.algos.buffers import TrajectoryBuffer

    kept = []
    original_add = TrajectoryBuffer.add

    def spy(self, trajectory, extra=None):
        kept.append((trajectory, extra))
        return original_add(self, trajectory, extra)

    monkeypatch.setattr(TrajectoryBuffer, "add", spy)
    _, policy = tiny_files
    run = tmp_path / "ppo-relabel"
    assert ppo.main(["--task", "hopper-random", "--init", str(policy), "--out", str(run), "--iterations", "1",
                     "--trajectories-per-iteration", "2", "--update-epochs", "1", "--minibatch-size", "16",
                     "--critic-hidden-dim", "16", "--eval-episodes", "1", "--eval-every", "0", "--device", "cpu",
                     "--hindsight-relabel"]) == 0
    for trajectory, extra in kept:
        expected = np.cumsum(trajectory.rewards[::-1].astype(np.float64))[::-1]
        np.testing.assert_allclose(extra["returns_to_go"], expected, rtol=1e-5)
    # evaluated as ODT evaluates a relabeled policy: at the task's evaluation RTG, not g_online
    assert json.loads((run / "final.json").read_text())["eval_target_rtg"] == 3600.0


def test_paper_preset_follows_the_paper_per_domain():
    from dtrl.algos.ppo import PRESETS

    hopper, door = PRESETS["paper"]("hopper-random"), PRESETS["paper"]("door-human")
    assert (hopper.trajectories_per_iteration, door.trajectories_per_iteration) == (8, 16)  # A.3.1
    assert hopper.buffer_multiplier == 4 and hopper.gamma == 0.99  # buffer 4x, Table 5 γ
    assert (hopper.clip_eps, door.clip_eps) == (0.2, 0.3) and door.learning_rate == 3e-5  # Table 6
