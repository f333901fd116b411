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

from dtrl.config import reject_non_finite, resolve_device
from dtrl.envs import BatchedEnv
from dtrl.errors import DtrlError
from dtrl.models.loading import load_any_policy
from dtrl.rollout import rollout_episodes
from dtrl.tasks import get_task


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
    num_threads: int = 1,
) -> dict:
    """Mean-action episodes with env seeds ``seed, seed+1, ...``.

    ``policy`` is anything with the act interface: a Decision Transformer policy (``model``,
    ``normalizer``, ``reward_scale``: rolled out by ``dtrl.rollout``, conditioned on ``target_rtg``,
    default ``task.eval_rtg``) or a Markov policy with ``predict(observations [N, O], device) -> mean
    actions [N, A]`` (IQL's actor; no target return), as SB3's ``evaluate_policy`` takes any model
    with ``predict``.

    Returns ``eval_return_mean/std``, ``eval_normalized_mean/std`` (None without reference scores),
    ``eval_length_mean``, ``eval_episodes``, ``eval_target_rtg`` and ``eval_context_length`` (None
    for a Markov policy). ``envs``: an existing ``BatchedEnv`` of exactly ``episodes`` copies to
    reuse; otherwise one is made (stepped by ``num_threads`` threads) and closed here.
    ``context_length``: timesteps of history a DT sees (Table 6's T_eval; None: its full sliding window).
    """
    if episodes < 1:
        raise DtrlError(f"evaluation needs at least 1 episode, got {episodes}")
    markov = hasattr(policy, "predict")
    target = None if markov else task.eval_rtg if target_rtg is None else float(target_rtg)
    seeds = [seed + i for i in range(episodes)]
    own_envs = envs is None
    if own_envs:
        envs = BatchedEnv(task, episodes, num_workers=num_workers, seed=seed, num_threads=num_threads)
    try:
        if markov:
            returns, lengths = _markov_episodes(policy, envs, seeds, task.max_episode_steps, device)
        else:
            trajectories = rollout_episodes(policy, envs, task, target, seeds=seeds, mode="mean", device=device,
                                            context_length=context_length)
            returns = np.array([t.episode_return for t in trajectories], dtype=np.float64)
            lengths = np.array([len(t) for t in trajectories], dtype=np.float64)
    finally:
        if own_envs:
            envs.close()
    result = {
        "eval_return_mean": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_normalized_mean": None,
        "eval_normalized_std": None,
        "eval_length_mean": float(lengths.mean()),
        "eval_episodes": int(episodes),
        "eval_target_rtg": target,
        "eval_context_length": None if markov else context_length,
    }
    if task.has_reference:
        normalized = np.array([task.normalize(r) for r in returns], dtype=np.float64)
        result["eval_normalized_mean"] = float(normalized.mean())
        result["eval_normalized_std"] = float(normalized.std())
    return result


def _markov_episodes(policy, envs, seeds: list[int], max_steps: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) of one episode per env copy with ``policy.predict``'s mean actions."""
    count = len(seeds)
    obs = np.asarray(envs.reset(seeds), dtype=np.float32)
    returns = np.zeros(count, np.float64)
    lengths = np.zeros(count, np.int64)
    active = np.ones(count, bool)
    for _ in range(max_steps):
        obs, reward, terminated, truncated = envs.step(policy.predict(obs, device), active)
        obs = np.asarray(obs, dtype=np.float32)
        returns[active] += np.asarray(reward, np.float64)[active]
        lengths[active] += 1
        active &= ~(np.asarray(terminated, bool) | np.asarray(truncated, bool))
        if not active.any():
            break
    return returns, lengths.astype(np.float64)


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
    """a run directory (its policy/ is used), a policy directory, or hf:DIR (a Hugging Face DT with
    dtrl_state_stats.json beside it)"""
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
    env_threads: int = 1
    """threads stepping the env copies (see `dtrl finetune --help`); results do not depend on it"""
    json: bool = False
    """print the result as one JSON object instead of a sentence"""
    threads: int = 0
    """torch CPU threads (0: torch's default; 1 is much faster on a busy or 2-core machine)"""

    def __post_init__(self) -> None:
        reject_non_finite(self)
        self.validate()

    def validate(self) -> None:
        if self.episodes < 1:
            raise DtrlError(f"--episodes must be >= 1, got {self.episodes}")
        if self.context_length is not None and self.context_length < 1:
            raise DtrlError(f"--context-length must be >= 1, got {self.context_length}")
        if self.num_workers < 0 or self.threads < 0:
            raise DtrlError("--num-workers and --threads must be >= 0")
        if self.env_threads < 1:
            raise DtrlError(f"--env-threads must be >= 1, got {self.env_threads}")


def main(argv: list[str]) -> int:
    config = tyro.cli(EvalConfig, args=argv, prog="dtrl eval",
                      description="Evaluate a run's (or a policy directory's) policy: mean action, target RTG; "
                                  "prints the D4RL-normalised return mean ± std.")
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    task = get_task(config.task) if config.task is not None else None
    policy = load_any_policy(config.run, task=task, device=device)
    task = task or get_task(policy.task_name)
    result = evaluate(policy, task, episodes=config.episodes,
                      target_rtg=default_target_rtg(policy, task, config.target_rtg), seed=config.seed,
                      device=device, num_workers=config.num_workers, num_threads=config.env_threads,
                      context_length=default_context_length(policy, config.context_length))
    if config.json:
        print(json.dumps({"task": task.name, **result}))
    else:
        print(f"{task.name}: {format_result(result)}")
    return 0
