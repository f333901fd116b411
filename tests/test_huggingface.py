"""Hugging Face DecisionTransformerModel in and out: same actions as transformers' own forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtrl.cli import main
from dtrl.envs import BatchedEnv
from dtrl.errors import DtrlError
from dtrl.models.huggingface import STATS_FILE, from_huggingface, to_huggingface
from dtrl.models.loading import load_policy
from dtrl.rollout import rollout_episodes
from dtrl.tasks import get_task

transformers = pytest.importorskip("transformers")

STATE_DIM, ACT_DIM, K = 11, 3, 5  # Hopper's sizes, so the model fits the hopper tasks


def random_hf_model(seed: int = 0, state_dim: int = STATE_DIM, act_dim: int = ACT_DIM, **overrides):
    torch.manual_seed(seed)
    config = transformers.DecisionTransformerConfig(state_dim=state_dim, act_dim=act_dim, hidden_size=32, n_layer=2,
                                                    n_head=2, max_ep_len=1000, bos_token_id=None, eos_token_id=None,
                                                    **overrides)
    model = transformers.DecisionTransformerModel(config).eval()
    with torch.no_grad():  # off the init (zero biases, unit LayerNorms, ...) so every mapped tensor matters
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def window_batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(3, K, STATE_DIM, generator=generator)
    actions = torch.rand(3, K, ACT_DIM, generator=generator) * 2 - 1
    returns = torch.randn(3, K, 1, generator=generator)
    timesteps = torch.randint(0, 1000, (3, K), generator=generator)
    mask = torch.ones(3, K, dtype=torch.long)
    mask[1, :2] = 0  # left padding, as in the Hugging Face example
    return states, actions, returns, timesteps, mask


def hf_actions(hf_model, states, actions, returns, timesteps, mask):
    with torch.no_grad():
        return hf_model(states=states, actions=actions, returns_to_go=returns, timesteps=timesteps,
                        attention_mask=mask, return_dict=True).action_preds


@pytest.mark.parametrize("policy", ["deterministic", "gaussian"])
@pytest.mark.parametrize("activation", ["relu", "gelu_new"])
def test_imported_model_acts_as_the_hf_model(policy, activation):
    hf_model = random_hf_model(activation_function=activation)
    states, actions, returns, timesteps, mask = window_batch()
    expected = hf_actions(hf_model, states, actions, returns, timesteps, mask)
    model = from_huggingface(hf_model, K, policy, init_log_std=-1.5).eval()
    with torch.no_grad():
        dist = model(states, actions, returns[..., 0], timesteps, mask.bool())
    valid = mask.bool()
    assert torch.allclose(dist.mean[valid], expected[valid], atol=1e-5)
    if policy == "gaussian":
        assert torch.allclose(dist.log_std, torch.full_like(dist.log_std, -1.5), atol=1e-5)
    # the KV-cached rollout path gives the same actions step by step within the first K steps
    cache = model.new_cache(1)
    for step in range(K):
        with torch.no_grad():
            act = model.act(cache, returns[0, step, 0:1], states[0, step:step + 1], timesteps[0, step:step + 1])
            model.append_action(cache, actions[0, step:step + 1])
        assert torch.allclose(act.mean[0], expected[0, step], atol=1e-5)


def test_export_round_trip_keeps_the_actions():
    hf_model = random_hf_model()
    batch = window_batch()
    model = from_huggingface(hf_model, K, "gaussian")
    exported = to_huggingface(model)
    valid = batch[-1].bool()
    assert torch.allclose(hf_actions(exported, *batch)[valid], hf_actions(hf_model, *batch)[valid], atol=1e-5)


def test_unsupported_hf_models_are_refused():
    with pytest.raises(DtrlError, match="action_tanh"):
        from_huggingface(random_hf_model(action_tanh=False), K)
    with pytest.raises(DtrlError, match="init-log-std"):
        from_huggingface(random_hf_model(), K, "gaussian", init_log_std=3.0)


def test_cli_import_then_export(tmp_path, capsys):
    hf_model = random_hf_model()
    hf_model.save_pretrained(tmp_path / "hf")
    mean, std = np.linspace(-1, 1, STATE_DIM), np.linspace(0.5, 2, STATE_DIM)
    (tmp_path / "stats.json").write_text(json.dumps({"state_mean": mean.tolist(), "state_std": std.tolist()}))
    assert main(["hf", "import", str(tmp_path / "hf"), "--task", "hopper-medium", "--state-stats",
                 str(tmp_path / "stats.json"), "--context-length", str(K), "--reward-scale", "1000",
                 "--out", str(tmp_path / "policy")]) == 0

    policy = load_policy(tmp_path / "policy", task="hopper-medium")
    assert policy.reward_scale == 1000.0
    assert policy.model.stochastic and policy.model.config.context_length == K
    assert policy.meta["extra"]["imported_from"].startswith("huggingface:")
    raw_states, actions, returns, timesteps, mask = window_batch()
    normalized = (raw_states - torch.as_tensor(mean, dtype=torch.float32)) / torch.as_tensor(std, dtype=torch.float32)
    with torch.no_grad():
        dist = policy.model(policy.normalizer.normalize(raw_states), actions, returns[..., 0], timesteps, mask.bool())
    expected = hf_actions(hf_model, normalized, actions, returns, timesteps, mask)
    assert torch.allclose(dist.mean[mask.bool()], expected[mask.bool()], atol=1e-5)

    assert main(["hf", "export", str(tmp_path / "policy"), "--out", str(tmp_path / "exported")]) == 0
    exported = transformers.DecisionTransformerModel.from_pretrained(tmp_path / "exported").eval()
    assert torch.allclose(hf_actions(exported, normalized, actions, returns, timesteps, mask)[mask.bool()],
                          expected[mask.bool()], atol=1e-5)
    stats = json.loads((tmp_path / "exported" / STATS_FILE).read_text())
    assert np.allclose(stats["state_mean"], mean) and stats["reward_scale"] == 1000.0 and stats["context_length"] == K


def test_cli_import_errors_are_one_line(tmp_path, capsys):
    random_hf_model().save_pretrained(tmp_path / "hf")
    # no normalisation given
    assert main(["hf", "import", str(tmp_path / "hf"), "--task", "hopper-medium", "--out", str(tmp_path / "p")]) == 2
    assert "--dataset" in capsys.readouterr().err
    # a task whose env has other sizes
    (tmp_path / "stats.json").write_text(json.dumps({"state_mean": [0.0] * STATE_DIM, "state_std": [1.0] * STATE_DIM}))
    assert main(["hf", "import", str(tmp_path / "hf"), "--task", "walker2d-medium", "--state-stats",
                 str(tmp_path / "stats.json"), "--out", str(tmp_path / "p")]) == 2
    assert "obs dim" in capsys.readouterr().err
    # not a model
    assert main(["hf", "import", str(tmp_path / "nothing"), "--task", "hopper-medium", "--state-stats",
                 str(tmp_path / "stats.json"), "--out", str(tmp_path / "p")]) == 2
    assert "cannot load" in capsys.readouterr().err
    # weights missing from the checkpoint are not filled with random numbers
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "ln_f" not in k}, str(tmp_path / "hf" / "model.safetensors"),
              metadata={"format": "pt"})
    assert main(["hf", "import", str(tmp_path / "hf"), "--task", "hopper-medium", "--state-stats",
                 str(tmp_path / "stats.json"), "--out", str(tmp_path / "p")]) == 2
    assert "lack encoder.ln_f" in capsys.readouterr().err
    # an existing output is kept
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mine.txt").write_text("keep")
    assert main(["hf", "import", str(tmp_path / "hf"), "--task", "hopper-medium", "--state-stats",
                 str(tmp_path / "stats.json"), "--out", str(tmp_path / "p")]) == 2
    assert (tmp_path / "p" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "p").joinpath("model.json").exists()


def save_with_stats(directory, hf_model, task: str) -> dict:
    """save_pretrained + the dtrl_state_stats.json the HF example's numbers go in."""
    state_dim = hf_model.config.state_dim
    hf_model.save_pretrained(directory)
    stats = {"state_mean": np.linspace(-0.5, 0.5, state_dim).tolist(),
             "state_std": np.linspace(0.5, 2, state_dim).tolist(), "reward_scale": 1000.0, "context_length": K,
             "task": task}
    (directory / STATS_FILE).write_text(json.dumps(stats))
    return stats


def test_hf_prefix_acts_as_the_hf_example_over_a_30_step_episode(tmp_path):
    """The HF example re-runs the model on the last K steps at every step (the current action slot
    zero); dtrl's rollout with the policy's recorded context does the same through its KV cache.
    HalfCheetah never terminates, so a random model's episode lasts the 30 steps."""
    hf_model = random_hf_model(seed=3, state_dim=17, act_dim=6)
    stats = save_with_stats(tmp_path / "hf", hf_model, "HalfCheetah-v5")
    policy = load_policy(f"hf:{tmp_path / 'hf'}")
    task = get_task("HalfCheetah-v5")
    assert policy.meta["extra"]["eval_context_length"] == K and policy.reward_scale == 1000.0
    envs = BatchedEnv(task, 1, num_workers=0, seed=0)
    try:
        [episode] = rollout_episodes(policy, envs, task, 6000.0, seeds=[0], mode="mean", max_steps=30,
                                     context_length=K)
    finally:
        envs.close()
    assert len(episode.actions) == 30
    mean, std = np.asarray(stats["state_mean"]), np.asarray(stats["state_std"])
    for t in range(30):
        lo = max(0, t - K + 1)
        pad = K - (t + 1 - lo)
        states = np.zeros((K, 17), np.float32)
        states[pad:] = (episode.observations[lo:t + 1] - mean) / std
        actions = np.zeros((K, 6), np.float32)
        actions[pad:-1] = episode.actions[lo:t]
        returns = np.zeros((K, 1), np.float32)
        returns[pad:, 0] = episode.returns_to_go[lo:t + 1] / 1000.0
        timesteps = np.zeros(K, np.int64)
        timesteps[pad:] = episode.timesteps[lo:t + 1]
        mask = np.zeros(K, np.int64)
        mask[pad:] = 1
        expected = hf_actions(hf_model, torch.as_tensor(states)[None], torch.as_tensor(actions)[None],
                              torch.as_tensor(returns)[None], torch.as_tensor(timesteps)[None],
                              torch.as_tensor(mask)[None])[0, -1]
        np.testing.assert_allclose(episode.actions[t], expected.numpy(), atol=1e-5)


def test_hf_prefix_evaluates_and_finetunes(tmp_path, capsys):
    directory = tmp_path / "hf"
    save_with_stats(directory, random_hf_model(seed=3), "hopper-medium")
    assert main(["eval", f"hf:{directory}", "--episodes", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "hopper-medium" and result["eval_context_length"] == K
    out = tmp_path / "grpo"
    # one minibatch holds the whole first iteration, so its ratio is pi/pi_old before any update: 1
    assert main(["finetune", "--algo", "grpo", "--task", "hopper-medium", "--preset", "cpu",
                 "--init", f"hf:{directory}", "--out", str(out), "--iterations", "2", "--device", "cpu",
                 "--trajectories-per-batch", "2",
                 "--reset-points-per-trajectory", "2", "--group-size", "4", "--sub-trajectory-length", "5",
                 "--eval-steps", "5", "--minibatch-size", "16", "--sub-trajectory-buffer-size", "32",
                 "--eval-every", "2", "--eval-episodes", "1", "--min-group-deviation", "0"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(row for row in rows if row["iteration"] == 1)
    # (sampling runs the KV-cached path, training the windowed forward: equal up to float32 rounding)
    assert first["grad_updates"] == 1 and first["losses/first_update_ratio_max_dev"] < 1e-5
    assert load_policy(out).meta["extra"]["algo"] == "grpo"


def test_hf_prefix_without_stats_is_one_line(tmp_path, capsys):
    random_hf_model().save_pretrained(tmp_path / "hf")
    assert main(["eval", f"hf:{tmp_path / 'hf'}", "--task", "hopper-medium"]) == 2
    assert STATS_FILE in capsys.readouterr().err


def test_export_writes_a_model_card_and_keeps_the_runs_rtg_and_context(tmp_path, capsys):
    """A GRPO-DT run evaluated at 7200 with 1 step of context: its export says so (README.md and
    dtrl_state_stats.json), and `dtrl eval hf:DIR` / `dtrl.load("hf:DIR")` use both (not the task's 3600)."""
    import dtrl
    from dtrl.data import StateNormalizer
    from dtrl.models.checkpoint import save_policy

    hf_model = random_hf_model(seed=5)
    model = from_huggingface(hf_model, K, "gaussian")
    save_policy(tmp_path / "run" / "policy", model, StateNormalizer.identity(STATE_DIM), "hopper-medium",
                extra={"algo": "grpo", "eval_rtg": 7200.0, "eval_context_length": 1})
    (tmp_path / "run" / "final.json").write_text(json.dumps(
        {"algo": "grpo", "iteration": 2, "eval_return_mean": 512.5, "eval_normalized_mean": 17.25,
         "eval_normalized_std": 1.5, "eval_episodes": 10, "eval_target_rtg": 7200.0}))
    assert main(["hf", "export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    stats = json.loads((tmp_path / "hf" / STATS_FILE).read_text())
    assert (stats["target_rtg"], stats["context_length"], stats["task"]) == (7200.0, 1, "hopper-medium")
    card = (tmp_path / "hf" / "README.md").read_text()
    for text in ("hopper-medium", "Hopper-v5", "| target return-to-go | 7200", "| context | 1 timesteps",
                 "state_mean", "D4RL-normalised 17.2 ± 1.5", "DecisionTransformerModel.from_pretrained",
                 f'dtrl.load("hf:{tmp_path / "hf"}")', f"dtrl eval hf:{tmp_path / 'hf'}", "trained by dtrl `grpo`"):
        assert text in card, text
    capsys.readouterr()
    assert main(["eval", f"hf:{tmp_path / 'hf'}", "--episodes", "1", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["eval_target_rtg"], result["eval_context_length"]) == (7200.0, 1)
    actor = dtrl.load(f"hf:{tmp_path / 'hf'}", device="cpu").actor()
    assert (actor.target_rtg, actor.context_length) == (7200.0, 1)
    # exported from a policy folder: no score; an older stats file without target_rtg: the task's RTG
    assert main(["hf", "export", str(tmp_path / "run" / "policy"), "--out", str(tmp_path / "hf2")]) == 0
    assert "not recorded" in (tmp_path / "hf2" / "README.md").read_text()
    del stats["target_rtg"]
    (tmp_path / "hf2" / STATS_FILE).write_text(json.dumps(stats))
    assert dtrl.load(f"hf:{tmp_path / 'hf2'}", device="cpu").target_rtg == get_task("hopper-medium").eval_rtg
