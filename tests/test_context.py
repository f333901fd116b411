"""One online context (T_eval, ``--context-length``) for every DT finetuning algorithm: every rollout
(collection, groups, evaluation) and every recomputed likelihood uses it, and the saved policy
records it. That a rollout with context 1 acts on (g_t, s_t, t) alone is pinned in test_rollout.py."""

import json

import numpy as np
import pytest
import torch

from conftest import read_metrics
from dtrl import evaluation, rollout
from dtrl.algos.finetune import main as finetune_main

ALGOS = {
    "grpo": ["--trajectories-per-batch", "1", "--reset-points-per-trajectory", "1", "--group-size", "2",
             "--sub-trajectory-length", "3", "--eval-steps", "3", "--minibatch-size", "4"],
    "grpo-q": ["--trajectories-per-update", "1", "--group-size", "2", "--minibatch-size", "4",
               "--critic-updates-per-iteration", "2", "--critic-batch-size", "4", "--critic-warmup-iterations", "0"],
    "ppo": ["--trajectories-per-iteration", "1", "--update-epochs", "1", "--minibatch-size", "4"],
    "odt": ["--updates-per-iteration", "2", "--batch-size", "4", "--buffer-size", "4"],
    "odt-td3": ["--updates-per-iteration", "2", "--batch-size", "4", "--buffer-size", "4", "--critic-warmup-steps", "0",
                "--critic-hidden-dim", "16", "--min-transitions-per-iteration", "0"],
}


@pytest.mark.parametrize("algo", list(ALGOS))
def test_every_rollout_of_every_dt_algorithm_uses_the_context_length(algo, tiny_files, tmp_path, monkeypatch):
    import importlib

    from dtrl.algos.finetune import ALGORITHMS

    module = importlib.import_module(f"dtrl.algos.{ALGORITHMS[algo][0]}")
    seen: list[tuple[str, int | None]] = []

    def spy(name, original):
        def wrapped(*args, **kwargs):
            seen.append((name, kwargs.get("context_length")))
            return original(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(evaluation, "rollout_episodes", spy("evaluation", rollout.rollout_episodes))
    monkeypatch.setattr(module, "rollout_episodes", spy("collection", rollout.rollout_episodes))
    if hasattr(module, "rollout_from_snapshots"):
        monkeypatch.setattr(module, "rollout_from_snapshots", spy("groups", rollout.rollout_from_snapshots))
    dataset, policy = tiny_files
    run = tmp_path / algo
    extra = ["--dataset", str(dataset)] if algo in ("odt", "odt-td3") else []
    assert finetune_main(["--algo", algo, "--task", "hopper-random", "--preset", "cpu", "--init", str(policy),
                          "--out", str(run), "--iterations", "1", "--eval-every", "1", "--eval-episodes", "1",
                          "--device", "cpu", "--context-length", "1", *extra, *ALGOS[algo]]) == 0
    kinds = {name for name, _ in seen}
    assert {"evaluation", "collection"} <= kinds and ("groups" in kinds) == (algo == "grpo")
    assert {context for _, context in seen} == {1}
    meta = json.loads((run / "policy" / "model.json").read_text())
    assert meta["extra"]["eval_context_length"] == 1 and read_metrics(run)[-1]["eval_context_length"] == 1


@pytest.mark.parametrize("context_length", [None, 1, 2])
def test_recomputed_log_probs_of_a_fresh_rollout_match_with_a_short_context(tiny_files, context_length):
    from dtrl.algos.buffers import rollout_extra, trajectory_segments
    from dtrl.algos.dt_finetune import segment_history_length
    from dtrl.envs import BatchedEnv
    from dtrl.models.loading import load_policy
    from dtrl.tasks import get_task

    _, policy_dir = tiny_files
    task = get_task("hopper-random")
    policy = load_policy(policy_dir, task=task)
    torch.manual_seed(0)
    with BatchedEnv(task, 2) as envs:
        episodes = rollout.rollout_episodes(policy, envs, task, 7200.0, [0, 1], mode="sample",
                                            context_length=context_length)
    history = segment_history_length(policy.model, context_length)
    pieces = [segment for ep in episodes
              for segment, _ in trajectory_segments(ep.to_trajectory(), rollout_extra(ep), 3, history)]
    batch = rollout.segments_to_batch(pieces, policy.normalizer, policy.reward_scale, history_length=history)
    with torch.no_grad():
        recomputed = batch.step_distributions(policy.model, context_length).log_prob(batch.train_actions())
    np.testing.assert_allclose(recomputed.numpy(), batch.log_probs_old[batch.train_mask].numpy(), atol=1e-4)
