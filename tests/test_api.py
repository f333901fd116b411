"""The Python API (``dtrl.load``, ``policy.actor()``, ``dtrl.evaluate``, ``dtrl.finetune``, ``dtrl.pretrain``)
and the README's "Python API" example, run as written (on a tiny dataset)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dtrl
from dtrl.errors import DtrlError

TASK = "hopper-random"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A tiny untrained DT whose trainer 'recorded' an RTG and a short context, as GRPO-DT's policies do."""
    from dtrl.config import ModelConfig
    from dtrl.data import StateNormalizer
    from dtrl.models import build_model
    from dtrl.models.checkpoint import save_policy

    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=1, embed_dim=32, context_length=4, max_timestep=1000, dropout=0.0)
    path = tmp_path_factory.mktemp("api") / "policy"
    save_policy(path, build_model(config, 11, 3), StateNormalizer.identity(11), TASK,
                extra={"eval_rtg": 2500.0, "eval_context_length": 2})
    return path


def test_import_dtrl_stays_light():
    code = "import sys, dtrl; assert callable(dtrl.load); print('torch' in sys.modules)"
    # dtrl.load is looked up lazily: the attribute exists, but torch is loaded only when it is used
    out = subprocess.run([sys.executable, "-c", "import sys, dtrl; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).returncode == 0
    assert {"load", "evaluate", "finetune", "pretrain"} <= set(dir(dtrl))
    with pytest.raises(AttributeError):
        dtrl.no_such_name  # noqa: B018


def run_episode(actor, seed: int, steps: int | None = None):
    """A hand-written gymnasium loop: (actions, rewards)."""
    from dtrl.envs import make

    env = make(TASK, seed=seed)
    obs, _ = env.reset(seed=seed)
    actor.reset()
    actions, rewards = [], []
    for _ in range(steps or 10_000):
        action = actor.act(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        actor.observe(reward)
        actions.append(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    env.close()
    return np.array(actions), np.array(rewards, np.float32)


@pytest.mark.parametrize("context_length", [None, 2, 1])
def test_actor_takes_the_actions_evaluate_takes(policy_dir, context_length):
    from dtrl.envs import BatchedEnv
    from dtrl.rollout import rollout_episodes

    policy = dtrl.load(policy_dir, device="cpu")
    # the recorded defaults, unless given
    assert (policy.target_rtg, policy.context_length) == (2500.0, 2)
    actor = policy.actor(context_length=context_length) if context_length else policy.actor()
    assert actor.target_rtg == 2500.0 and actor.context_length == (context_length or 2)
    if context_length is None:  # the full KV-cached window (the engine's Actor, given no context)
        from dtrl.evaluation import Actor

        actor = Actor(policy.loaded, target_rtg=3000.0, context_length=None)
    actions, rewards = run_episode(actor, seed=7)
    envs = BatchedEnv(policy.task, 1, seed=7)
    (expected,) = rollout_episodes(policy, envs, policy.task, actor.target_rtg, seeds=[7], mode="mean",
                                   context_length=actor.context_length)
    envs.close()
    assert len(actions) == len(expected) > 5
    np.testing.assert_allclose(actions, expected.actions, atol=1e-5)
    np.testing.assert_allclose(rewards, expected.rewards, atol=1e-4)
    # dtrl.evaluate with the same episode gives the return of the hand-written loop
    if context_length is not None:
        result = dtrl.evaluate(policy, episodes=1, seed=7, context_length=context_length)
        assert result["eval_context_length"] == context_length and result["eval_target_rtg"] == 2500.0
        assert result["eval_return_mean"] == pytest.approx(float(rewards.astype(np.float64).sum()), rel=1e-5)


def test_actor_needs_the_reward_before_the_next_step(policy_dir):
    actor = dtrl.load(policy_dir, device="cpu").actor()
    actor.reset()
    actor.act(np.zeros(11, np.float32))
    with pytest.raises(DtrlError, match="observe"):
        actor.act(np.zeros(11, np.float32))


def test_evaluate_has_the_defaults_of_dtrl_eval(policy_dir, capsys):
    from dtrl.cli import main
    from dtrl.evaluation import evaluate
    from dtrl.models.loading import load_policy

    assert main(["eval", str(policy_dir), "--episodes", "2", "--json", "--device", "cpu"]) == 0
    cli = json.loads(capsys.readouterr().out)
    api = dtrl.evaluate(dtrl.load(policy_dir), episodes=2)
    by_path = dtrl.evaluate(str(policy_dir), episodes=2, device="cpu")
    for key in ("task", "eval_return_mean", "eval_target_rtg", "eval_context_length", "eval_normalized_mean"):
        assert api[key] == cli[key] == by_path[key], key
    assert (api["eval_target_rtg"], api["eval_context_length"]) == (2500.0, 2)
    # the engine takes a task name (or none: the policy's own) and the settings it is given
    engine = evaluate(load_policy(policy_dir), "hopper-random", episodes=1)
    assert engine["eval_target_rtg"] == 3600.0 and engine["eval_context_length"] is None
    assert evaluate(load_policy(policy_dir), episodes=1)["eval_return_mean"] == engine["eval_return_mean"]
    with pytest.raises(DtrlError, match="episodes"):
        dtrl.evaluate(policy_dir, episodes=0)


def test_training_keywords_are_the_cli_options(tiny_files, tmp_path):
    dataset, init = tiny_files
    with pytest.raises(DtrlError, match=r"unknown option\(s\) group_sise \("):
        dtrl.finetune("grpo", task=TASK, init=str(init), group_sise=4, out=str(tmp_path / "x"))
    with pytest.raises(DtrlError, match="unknown algorithm"):
        dtrl.finetune("grpoo", task=TASK)
    with pytest.raises(DtrlError, match="clip"):  # the config's own validation
        dtrl.finetune("grpo", task=TASK, init=str(init), clip_eps=-1.0, out=str(tmp_path / "x"))
    with pytest.raises(DtrlError, match=r"unknown option\(s\) model.n_layers, stepz \("):
        dtrl.pretrain(task=TASK, dataset=str(dataset), stepz=3, model={"n_layers": 2}, out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_finetune_and_pretrain_write_the_run_the_cli_writes(tiny_files, tmp_path):
    dataset, init = tiny_files
    small = dict(task=TASK, preset="cpu", device="cpu", eval_episodes=1, seed=3)
    summary = dtrl.pretrain(dataset=str(dataset), steps=4, steps_per_iteration=2, batch_size=4,
                            model={"n_layer": 1, "embed_dim": 16}, out=str(tmp_path / "pt"), **small)
    assert json.loads((tmp_path / "pt" / "final.json").read_text()) == summary
    grpo = dict(trajectories_per_batch=2, reset_points_per_trajectory=2, group_size=4, sub_trajectory_length=5,
                eval_steps=5, minibatch_size=8, sub_trajectory_buffer_size=24, min_group_deviation=0.0)
    summary = dtrl.finetune("grpo", init=str(tmp_path / "pt"), iterations=2, out=str(tmp_path / "api"),
                            **grpo, **small)
    assert summary["iteration"] == 2 and summary["eval_return_mean"] is not None
    from dtrl.cli import main

    argv = [f"--{k.replace('_', '-')}={v}" for k, v in {**grpo, **small}.items()]
    assert main(["finetune", "--algo", "grpo", "--init", str(tmp_path / "pt"), "--iterations", "2",
                 "--out", str(tmp_path / "cli"), *argv]) == 0
    configs = [json.loads((tmp_path / name / "config.json").read_text()) for name in ("api", "cli")]
    for config in configs:
        config.pop("run_info"), config.pop("out")
    assert configs[0] == configs[1]
    rows = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("api", "cli")]
    assert [r.get("eval_return_mean") for r in rows[0]] == [r.get("eval_return_mean") for r in rows[1]]


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"## Python API\n.*?```python\n(.*?)```", text, re.S)
    assert match, "README.md has a '## Python API' section with a python example"
    return match.group(1)


def test_the_readme_example_runs(tiny_files, tmp_path, monkeypatch):
    """The README's example as written, in a folder with a tiny data/hopper-random.hdf5; only the sizes
    of the pretraining and of GRPO-DT's batches are shrunk (keywords added to the calls)."""
    dataset, _ = tiny_files
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hopper-random.hdf5").write_bytes(Path(dataset).read_bytes())
    monkeypatch.chdir(tmp_path)
    code = readme_example()
    shrink = {'out="runs/pt")': 'out="runs/pt", steps=4, steps_per_iteration=2, batch_size=4, eval_episodes=1, '
                                'model={"n_layer": 1, "embed_dim": 16}, device="cpu")',
              'out="runs/grpo")': 'out="runs/grpo", trajectories_per_batch=2, reset_points_per_trajectory=2, '
                                  'group_size=4, sub_trajectory_length=5, eval_steps=5, minibatch_size=8, '
                                  'sub_trajectory_buffer_size=24, eval_episodes=1, device="cpu")'}
    for call, shrunk in shrink.items():
        assert call in code
        code = code.replace(call, shrunk)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)  # noqa: S102 - the README's own example
    assert json.loads((tmp_path / "runs" / "grpo" / "final.json").read_text()) == namespace["result"]
    assert namespace["scores"]["eval_episodes"] == 5 and namespace["done"]
