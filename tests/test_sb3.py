"""The reference lines: stable-baselines3 SAC and PPO from scratch, in dtrl's run format."""

import json

import torch

from dtrl.cli import main as cli

torch.set_num_threads(1)


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sac_runs_resumes_and_evaluates_like_every_method(tmp_path):
    run = tmp_path / "sac"
    argv = ["finetune", "--algo", "sb3-sac", "--task", "hopper-random", "--out", str(run), "--device", "cpu",
            "--env-steps-per-iteration", "100", "--learning-starts", "50", "--eval-every", "1",
            "--eval-episodes", "1", "--learning-rate-schedule", "linear"]
    assert cli(argv + ["--iterations", "2"]) == 0
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [0, 1, 2] and [r["env_steps"] for r in rows] == [0, 100, 200]
    # SAC takes one gradient step per env step after learning_starts
    assert rows[1]["grad_updates"] == 50 and rows[2]["grad_updates"] == 150
    assert [r["charts/learning_rate"] for r in rows[1:]] == [3e-4, 1.5e-4]
    # the evaluation protocol of every method: the same seeds (10000 + run seed), mean action
    assert rows[-1]["eval_episodes"] == 1 and rows[-1]["eval_normalized_mean"] is not None
    assert json.loads((run / "final.json").read_text())["algo"] == "sb3-sac"
    assert cli(argv + ["--iterations", "3", "--resume"]) == 0
    assert [(r["iteration"], r["env_steps"]) for r in read_metrics(run)][-1] == (3, 300)
    # the checkpoint names its own iteration's model and replay files; older ones are gone
    assert sorted(p.name for p in (run / "checkpoints").glob("*-*")) == ["model-3.zip", "replay-3.pkl"]
    assert cli(["eval", str(run), "--episodes", "1", "--json", "--device", "cpu"]) == 0
    assert cli(["eval", str(run), "--episodes", "1", "--task", "walker2d-random"]) == 2  # dimensions differ


def test_ppo_counts_its_minibatch_steps(tmp_path):
    run = tmp_path / "ppo"
    assert cli(["finetune", "--algo", "sb3-ppo", "--task", "hopper-random", "--out", str(run), "--device", "cpu",
                "--iterations", "1", "--env-steps-per-iteration", "64", "--eval-every", "0",
                "--eval-episodes", "1"]) == 0
    (row,) = read_metrics(run)
    # one rollout of n_steps = env_steps_per_iteration = 64 per iteration, then 10 epochs of 64 / 64 minibatches
    assert row["env_steps"] == 64 and row["grad_updates"] == 10 * 1
