"""Offline pretraining and evaluation through the CLI, on a tiny locally generated dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtrl.cli import main as dtrl
from dtrl.data import write_d4rl
from dtrl.envs import make

# One torch thread: on a busy 2-core machine torch's default (one per core) is many times slower.
torch.set_num_threads(1)

TINY_MODEL = ["--model.n-layer", "1", "--model.n-head", "1", "--model.embed-dim", "16", "--model.context-length", "4"]


def write_random_dataset(path, transitions: int = 1500, seed: int = 0) -> None:
    """Uniform random actions in Hopper, D4RL layout."""
    env = make("hopper-random")
    rng = np.random.default_rng(seed)
    columns = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    obs, _ = env.reset(seed=seed)
    for i in range(transitions):
        action = rng.uniform(-1, 1, 3).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(columns, (obs, action, reward, terminated, truncated or i == transitions - 1)):
            columns[key].append(value)
        obs = next_obs if not (terminated or truncated) else env.reset()[0]
    env.close()
    arrays = {k: np.asarray(v, dtype=np.float32 if k not in ("terminals", "timeouts") else bool)
              for k, v in columns.items()}
    write_d4rl(path, arrays, {})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "hopper-random-tiny.hdf5"
    write_random_dataset(path)
    return path


def pretrain_args(dataset, out, steps: int, *extra: str) -> list[str]:
    return ["pretrain", "--task", "hopper-random", "--dataset", str(dataset), "--preset", "cpu", "--steps", str(steps),
            "--steps-per-iteration", "10", "--batch-size", "16", "--learning-rate", "3e-3", "--warmup-steps", "5",
            "--eval-every", "0", "--eval-episodes", "2", "--device", "cpu", "--out", str(out), *TINY_MODEL, *extra]


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "pretrain"
    assert dtrl(pretrain_args(dataset, run, 60)) == 0
    return run


def test_pretrain_loss_decreases_and_run_is_complete(trained_run):
    rows = read_metrics(trained_run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["grad_updates"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert all(r["env_steps"] == 0 and r["wall_time_s"] > 0 for r in rows)
    assert rows[-1]["losses/action_nll"] < rows[0]["losses/action_nll"]
    assert "eval_normalized_mean" in rows[-1] and "eval_normalized_mean" not in rows[0]
    final = json.loads((trained_run / "final.json").read_text())
    assert final["grad_updates"] == 60 and np.isfinite(final["eval_return_mean"])
    for name in ("model.safetensors", "model.json", "normalizer.json"):
        assert (trained_run / "policy" / name).is_file()
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["embed_dim"] == 16 and config["algo"] == "pretrain"


def test_eval_prints_a_score(trained_run, capsys):
    assert dtrl(["eval", str(trained_run), "--episodes", "2", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "hopper-random" and result["eval_episodes"] == 2
    assert np.isfinite(result["eval_normalized_mean"])
    assert dtrl(["eval", str(trained_run / "policy"), "--episodes", "2", "--target-rtg", "100", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hopper-random: normalised ") and "2 episodes" in out


def test_eval_wrong_task_is_a_one_line_error(trained_run, capsys):
    assert dtrl(["eval", str(trained_run), "--task", "walker2d-medium", "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dtrl: error: ") and "\n" not in err


def test_pretrain_refuses_bad_inputs(dataset, tmp_path, capsys):
    assert dtrl(pretrain_args(tmp_path / "missing.hdf5", tmp_path / "a", 10)) == 2
    assert not (tmp_path / "a").exists()  # a bad dataset leaves no run directory behind
    assert dtrl(pretrain_args(dataset, tmp_path / "b", 10, "--loss", "mse")) == 2
    assert "deterministic" in capsys.readouterr().err
    assert dtrl(pretrain_args(dataset, tmp_path / "c", 10, "--resume")) == 2


def test_resume_continues_exactly(dataset, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert dtrl(pretrain_args(dataset, straight, 40)) == 0
    assert dtrl(pretrain_args(dataset, split, 20)) == 0
    assert dtrl(pretrain_args(dataset, split, 40, "--resume")) == 0
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["grad_updates"] for r in b] == [10, 20, 30, 40]
    for key in ("losses/total", "losses/action_nll"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-6)
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "policy" / "model.safetensors"), load_file(split / "policy" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_deterministic_dt_with_mse_loss(dataset, tmp_path):
    run = tmp_path / "mse"
    assert dtrl(pretrain_args(dataset, run, 20, "--loss", "mse", "--model.policy", "deterministic")) == 0
    rows = read_metrics(run)
    assert "losses/action_mse" in rows[-1] and "losses/action_nll" not in rows[-1]


def test_reinformer_pretraining(dataset, tmp_path):
    run = tmp_path / "reinformer"
    assert dtrl(pretrain_args(dataset, run, 20, "--loss", "reinformer", "--model.architecture", "reinformer")) == 0
    rows = read_metrics(run)
    assert "losses/return_expectile" in rows[-1] and "losses/action_nll" in rows[-1]
    assert json.loads((run / "policy" / "model.json").read_text())["architecture"] == "reinformer"


def test_presets(dataset):
    from dtrl.algos.pretrain import cpu_preset, paper_preset

    paper = paper_preset("hopper-medium")
    assert (paper.model.n_layer, paper.model.n_head, paper.model.embed_dim) == (4, 4, 512)
    assert (paper.model.dropout, paper.model.activation, paper.optimizer) == (0.1, "silu", "lamb")
    assert (paper.weight_decay, paper.grad_clip, paper.batch_size, paper.model.context_length) == (1e-4, 0.5, 256, 20)
    door = paper_preset("door-human")
    assert door.batch_size == 512 and door.model.context_length == 5 and door.model.max_timestep == 200
    assert not paper_preset("antmaze-umaze").model.timestep_embedding
    cpu = cpu_preset("hopper-medium")
    assert cpu.model.embed_dim < paper.model.embed_dim and cpu.model.context_length <= 20


def test_bf16_precision_trains_and_saves_fp32_weights(dataset, tmp_path):
    run = tmp_path / "bf16"
    assert dtrl(pretrain_args(dataset, run, 40, "--precision", "bf16")) == 0
    rows = read_metrics(run)
    assert rows[-1]["losses/total"] < rows[0]["losses/total"]
    from safetensors.torch import load_file

    weights = load_file(str(run / "policy" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
