"""Evaluation: a policy's return with the mean action and a fixed target RTG, D4RL-normalised.

``evaluate`` runs all episodes as one batch through the rollout engine (one model call per step
for every episode). ``dtrl eval RUN`` loads a run directory's (or a policy directory's) policy and
prints the normalised return mean ± std (raw returns for tasks without reference scores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tyro

from dtrl.errors import DtrlError


def evaluate(
    policy,
    task,
    episodes: int = 10,
    target_rtg: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    num_workers: int = 0,
    envs=None,
    context_length: int | None = None,
) -> dict:
    """Mean-action episodes with env seeds ``seed, seed+1, ...`` conditioned on ``target_rtg``
    (default ``task.eval_rtg``).

    Returns ``eval_return_mean/std``, ``eval_normalized_mean/std`` (None without reference scores),
    ``eval_length_mean`` and ``eval_episodes``. ``envs``: an existing ``BatchedEnv`` of exactly
    ``episodes`` copies to reuse (periodic evaluation inside a training loop); otherwise one is
    made and closed here. ``context_length``: timesteps of history the model sees (Table 6's
    T_eval; None: its full sliding window).
    """
    from dtrl.rollout import rollout_episodes

    if episodes < 1:
        raise DtrlError(f"evaluation needs at least 1 episode, got {episodes}")
    target = task.eval_rtg if target_rtg is None else float(target_rtg)
    own_envs = envs is None
    if own_envs:
        from dtrl.envs import BatchedEnv

        envs = BatchedEnv(task, episodes, num_workers=num_workers, seed=seed)
    try:
        trajectories = rollout_episodes(policy, envs, task, target, seeds=[seed + i for i in range(episodes)],
                                        mode="mean", device=device,
                                        context_length=context_length)
    finally:
        if own_envs:
            envs.close()
    returns = np.array([t.episode_return for t in trajectories], dtype=np.float64)
    lengths = np.array([len(t) for t in trajectories], dtype=np.float64)
    result = {
        "eval_return_mean": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_normalized_mean": None,
        "eval_normalized_std": None,
        "eval_length_mean": float(lengths.mean()),
        "eval_episodes": int(episodes),
        "eval_target_rtg": target,
        "eval_context_length": context_length,
    }
    if task.has_reference:
        normalized = np.array([task.normalize(r) for r in returns], dtype=np.float64)
        result["eval_normalized_mean"] = float(normalized.mean())
        result["eval_normalized_std"] = float(normalized.std())
    return result


def default_target_rtg(policy, task, target_rtg: float | None = None) -> float:
    """``target_rtg`` if given; else the evaluation RTG the policy's trainer recorded (on the task it
    was trained on); else the task's evaluation target."""
    if target_rtg is not None:
        return float(target_rtg)
    recorded = policy.meta.get("extra", {}).get("eval_rtg")
    if recorded is not None and policy.task_name == task.name:
        return float(recorded)
    return float(task.eval_rtg)


def default_context_length(policy, context_length: int | None = None) -> int | None:
    """``context_length`` if given; else the short online context the policy's trainer recorded
    (GRPO-DT's T_eval); else None, the model's own sliding window."""
    if context_length is not None:
        return int(context_length)
    recorded = policy.meta.get("extra", {}).get("eval_context_length")
    return None if recorded is None else int(recorded)


def format_result(result: dict) -> str:
    """'normalised 45.2 ± 3.1 (return 1500.3 ± 101.2, 10 episodes, length 512)' or the raw-return form."""
    raw = f"return {result['eval_return_mean']:.1f} ± {result['eval_return_std']:.1f}"
    tail = f"{result['eval_episodes']} episodes, mean length {result['eval_length_mean']:.0f}"
    if result.get("eval_normalized_mean") is None:
        return f"{raw} ({tail}; no reference scores for this task: raw return)"
    return f"normalised {result['eval_normalized_mean']:.1f} ± {result['eval_normalized_std']:.1f} ({raw}, {tail})"


@dataclass
class EvalConfig:
    """``dtrl eval``: evaluate a run's policy with the mean action."""

    run: tyro.conf.Positional[str]
    """a run directory (its policy/ is used) or a policy directory"""
    task: str | None = None
    """task to evaluate on (default: the task the policy was trained on)"""
    episodes: int = 10
    """number of episodes (run as one batch)"""
    target_rtg: float | None = None
    """target return-to-go g_0 (default: the one the policy's trainer evaluated it at, e.g. g_online for
    GRPO-DT and PPO-DT; for pretrained DTs and other tasks, the task's evaluation target)"""
    context_length: int | None = None
    """timesteps of history the model sees (default: the short context the policy's trainer used, e.g.
    GRPO-DT's T_eval; otherwise the model's own sliding window)"""
    seed: int = 0
    """env seed of the first episode (episode i uses seed + i)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when available, else CPU"""
    num_workers: int = 0
    """worker processes for the env copies (0: step them in this process)"""
    json: bool = False
    """print the result as one JSON object instead of a sentence"""
    threads: int = 0
    """torch CPU threads (0: torch's default; 1 is much faster on a busy or 2-core machine)"""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.episodes < 1:
            raise DtrlError(f"--episodes must be >= 1, got {self.episodes}")
        if self.context_length is not None and self.context_length < 1:
            raise DtrlError(f"--context-length must be >= 1, got {self.context_length}")
        if self.num_workers < 0 or self.threads < 0:
            raise DtrlError("--num-workers and --threads must be >= 0")


def main(argv: list[str]) -> int:
    from dtrl.config import resolve_device
    from dtrl.models.checkpoint import load_policy
    from dtrl.tasks import get_task

    config = tyro.cli(EvalConfig, args=argv, prog="dtrl eval",
                      description="Evaluate a run's (or a policy directory's) policy: mean action, target RTG; "
                                  "prints the D4RL-normalised return mean ± std.")
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if _is_iql_policy(config.run):
        result, task = _evaluate_iql(config, device)
    else:
        if config.task is None:
            policy = load_policy(config.run, device=device)
            task = get_task(policy.task_name)
        else:
            task = get_task(config.task)
            policy = load_policy(config.run, task=task, device=device)
        target = default_target_rtg(policy, task, config.target_rtg)
        result = evaluate(policy, task, episodes=config.episodes, target_rtg=target, seed=config.seed, device=device,
                          num_workers=config.num_workers,
                          context_length=default_context_length(policy, config.context_length))
    if config.json:
        print(json.dumps({"task": task.name, **result}))
    else:
        print(f"{task.name}: {format_result(result)}")
    return 0


def _is_iql_policy(path: str) -> bool:
    """IQL's MLP actor (the non-DT baseline) is saved in the same folder layout with its own
    architecture tag; it needs no target return."""
    from pathlib import Path

    for directory in (Path(path) / "policy", Path(path)):
        meta = directory / "model.json"
        if meta.is_file():
            try:
                return json.loads(meta.read_text()).get("architecture") == "iql-mlp"
            except (OSError, json.JSONDecodeError):
                return False
    return False


def _evaluate_iql(config: "EvalConfig", device: str):
    from dtrl.algos.iql import evaluate_actor, load_actor
    from dtrl.tasks import get_task

    actor, normalizer, meta = load_actor(config.run, device=device)
    task = get_task(config.task or meta["task"])
    from dtrl.envs import make

    env = make(task.name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    if (obs_dim, act_dim) != (meta["obs_dim"], meta["act_dim"]):
        raise DtrlError(f"{config.run} was trained for obs/act dims {meta['obs_dim']}/{meta['act_dim']}, "
                        f"but task {task.name} has {obs_dim}/{act_dim}")
    return evaluate_actor(actor, normalizer, task, episodes=config.episodes, seed=config.seed, device=device), task
