"""ODT: buffer seeding with the best offline trajectories, FIFO replacement, length-proportional
sampling, hindsight-relabeled RTGs, and two iterations (plus a resume) from the CLI."""

import json
from types import SimpleNamespace

import numpy as np
import torch

from conftest import read_metrics
from dtrl.algos.buffers import TrajectoryBuffer, WindowSampler
from dtrl.algos.odt import relabeled_sampler
from dtrl.cli import main as cli
from dtrl.data.normalizer import StateNormalizer
from dtrl.data.trajectory import Trajectory
from dtrl.objectives import hindsight_rtg

# Tiny models on a shared 2-core machine: extra intra-op threads only contend.
torch.set_num_threads(1)


def _trajectory(rewards, terminated=False):
    rewards = np.asarray(rewards, np.float32)
    n = len(rewards)
    return Trajectory(np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.zeros((n, 1), np.float32), rewards,
                      terminated, not terminated)


def test_buffer_is_seeded_with_the_best_offline_trajectories_and_replaced_fifo():
    offline = [_trajectory([r]) for r in (5.0, 1.0, 9.0, 3.0, 7.0)]
    buffer = TrajectoryBuffer(capacity=3)
    buffer.seed_with_top(offline)
    assert [t.episode_return for t in buffer.trajectories] == [5.0, 7.0, 9.0]  # worst first: replaced first
    buffer.add(_trajectory([100.0]))
    assert [t.episode_return for t in buffer.trajectories] == [7.0, 9.0, 100.0]
    buffer.add(_trajectory([200.0]))
    buffer.add(_trajectory([300.0]))
    assert [t.episode_return for t in buffer.trajectories] == [100.0, 200.0, 300.0]
    restored = TrajectoryBuffer(1)
    restored.load_state_dict(buffer.state_dict())
    assert [t.episode_return for t in restored.trajectories] == [100.0, 200.0, 300.0] and restored.capacity == 3


def test_trajectories_are_sampled_in_proportion_to_their_length():
    buffer = TrajectoryBuffer(capacity=2)
    buffer.add(_trajectory([1.0]))
    buffer.add(_trajectory([1.0, 1.0, 1.0]))
    draws = buffer.sample_indices(20_000, np.random.default_rng(0))
    assert abs(np.mean(draws == 1) - 0.75) < 0.02


def test_relabeled_rtgs_are_the_returns_achieved_not_the_online_target():
    buffer = TrajectoryBuffer(capacity=2)
    buffer.add(_trajectory([1.0, 2.0, 3.0, 4.0], terminated=True))
    policy = SimpleNamespace(reward_scale=2.0, normalizer=StateNormalizer.identity(2))
    sampler = relabeled_sampler(buffer, context_length=3, policy=policy, rng=np.random.default_rng(0))
    window = sampler.gather(np.array([0, 0]), np.array([3, 1]))
    # window ending at step 3: steps 1..3, g = (2+3+4, 3+4, 4) / scale 2
    assert np.allclose(window["returns_to_go"][0].numpy(), [4.5, 3.5, 2.0])
    # window ending at step 1: left padding (mask False, zeros) then steps 0..1: g = 10, 9 (/2)
    assert window["mask"][1].tolist() == [False, True, True]
    assert np.allclose(window["returns_to_go"][1].numpy(), [0.0, 5.0, 4.5])
    expected = hindsight_rtg(torch.tensor([1.0, 2.0, 3.0, 4.0])) / 2.0
    assert np.allclose(window["returns_to_go"][0].numpy(), expected[1:].numpy())
    # the same relabeling through WindowSampler (ODT+TD3), which also marks the terminal step
    td3_window = WindowSampler(buffer, 3, 2.0, StateNormalizer.identity(2), np.random.default_rng(0),
                               rtg="hindsight").gather(np.array([0]), np.array([3]))
    assert np.allclose(td3_window["returns_to_go"][0].numpy(), [4.5, 3.5, 2.0])
    assert td3_window["dones"][0].tolist() == [0.0, 0.0, 1.0]


def test_odt_two_iterations_from_the_cli_then_resume(tiny_files, tmp_path):
    dataset, policy = tiny_files
    run = tmp_path / "odt"
    argv = ["finetune", "--algo", "odt", "--task", "hopper-random", "--init", str(policy), "--dataset", str(dataset),
            "--out", str(run), "--updates-per-iteration", "2", "--batch-size", "4", "--buffer-size", "4",
            "--eval-episodes", "1", "--eval-every", "0", "--device", "cpu"]
    assert cli(argv + ["--iterations", "2"]) == 0
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert [r["grad_updates"] for r in rows] == [2, 4]
    assert rows[1]["env_steps"] > rows[0]["env_steps"] > 0
    assert "eval_normalized_mean" in rows[-1] and "eval_normalized_mean" not in rows[0]
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == "odt"
    # the DT it started from is named by its weights too: a path names a DT only on the machine that made it
    digest = json.loads((policy / "model.json").read_text())["weights_sha256"]
    assert config["run_info"]["init_weights_sha256"] == digest
    assert (run / "policy" / "model.safetensors").is_file() and (run / "checkpoints" / "state.pt").is_file()
    assert cli(argv + ["--iterations", "3", "--resume"]) == 0
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3] and rows[-1]["grad_updates"] == 6


def test_time_limit_stops_after_the_current_iteration_with_a_final_evaluation(tiny_files, tmp_path):
    dataset, policy = tiny_files
    run = tmp_path / "odt-timed"
    assert cli(["finetune", "--algo", "odt", "--task", "hopper-random", "--init", str(policy), "--dataset",
                str(dataset), "--out", str(run), "--iterations", "50", "--updates-per-iteration", "1",
                "--batch-size", "2", "--eval-episodes", "1", "--eval-every", "0", "--time-limit-s", "1e-6",
                "--device", "cpu"]) == 0
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1] and rows[0]["eval_normalized_mean"] is not None
    assert (run / "final.json").is_file()


def test_odt_needs_init_and_dataset(tiny_files, tmp_path, capsys):
    dataset, policy = tiny_files
    assert cli(["finetune", "--algo", "odt", "--task", "hopper-random", "--dataset", str(dataset),
                "--out", str(tmp_path / "a")]) == 2
    assert "--init is required" in capsys.readouterr().err
    assert cli(["finetune", "--algo", "odt", "--task", "hopper-random", "--init", str(policy),
                "--out", str(tmp_path / "b")]) == 2
    assert "--dataset is required" in capsys.readouterr().err


def test_both_target_rtgs_are_evaluated_on_request(tiny_files, tmp_path):
    dataset, policy = tiny_files
    run = tmp_path / "odt-both"
    assert cli(["finetune", "--algo", "odt", "--task", "hopper-random", "--init", str(policy), "--dataset",
                str(dataset), "--out", str(run), "--iterations", "1", "--updates-per-iteration", "2", "--batch-size",
                "4", "--buffer-size", "4", "--eval-episodes", "1", "--eval-every", "1", "--device", "cpu",
                "--eval-other-rtg"]) == 0
    row = read_metrics(run)[-1]
    # ODT is evaluated at the task's target (3600 on hopper); the other is g_online (7200)
    assert (row["eval_target_rtg"], row["eval_other_target_rtg"]) == (3600.0, 7200.0)
    assert row["eval_other_normalized_mean"] is not None


def test_training_shows_progress_one_line_per_evaluation_off_a_terminal(tiny_files, tmp_path, capsys):
    """Output that is not a terminal (a log, a pipe) gets one line per evaluation; a terminal gets a
    live bar (RunLoop's RunProgress, shared by every training command)."""
    from dtrl.algos.run_loop import Clock, RunProgress

    dataset, policy = tiny_files
    argv = ["finetune", "--algo", "odt", "--task", "hopper-random", "--init", str(policy), "--dataset", str(dataset),
            "--out", str(tmp_path / "odt"), "--updates-per-iteration", "2", "--batch-size", "4", "--buffer-size", "4",
            "--eval-episodes", "1", "--eval-every", "2", "--device", "cpu", "--iterations", "3"]
    assert cli(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("odt: iteration")]
    # evaluations at iterations 2 and 3 (the last); iteration 0 is the starting policy, before the loop
    assert [line.split(",")[0] for line in lines] == ["odt: iteration 2/3", "odt: iteration 3/3"]
    assert all("env steps" in line and "normalised" in line and "ETA" in line for line in lines)
    progress = RunProgress("grpo", 10, 0, live=True)  # the terminal's bar: starts, updates, stops cleanly
    progress.start()
    progress.update(5, Clock(env_steps=1234), {"eval_normalized_mean": 42.0})
    progress.stop()
    assert progress.score == "42.0 normalised" and progress._bar is None
