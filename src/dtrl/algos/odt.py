"""ODT: Online Decision Transformer (Zheng et al., 2022) — online finetuning with the supervised
objective and hindsight return relabeling. A baseline of Table 1.

    dtrl finetune --algo odt --task hopper-random --init runs/pretrain-hopper --dataset data/hopper-random.hdf5

Each iteration:

1. roll out ``trajectories_per_iteration`` episodes (sampled actions) conditioned on the *online*
   target RTG (task.online_rtg, an optimistic 2x the evaluation target on MuJoCo);
2. add them to the trajectory replay buffer, which was seeded with the top offline trajectories by
   return and is replaced FIFO by online ones;
3. hindsight return relabeling: every trajectory is trained with the return it actually achieved
   from each step on (g_t = sum_{t' >= t} r_t'), not the target it was rolled out with;
4. ``updates_per_iteration`` gradient steps on K-step windows (trajectories drawn ∝ length):
   policy loss  -log pi(a|ctx) - temperature * entropy   (LAMB, grad clip)
   temperature  temperature * (entropy - target_entropy)  (Adam on log temperature, target -dim(A));
5. evaluate with the mean action conditioned on the *evaluation* target RTG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dtrl.algos.buffers import TrajectoryBuffer
from dtrl.algos.dt_finetune import (
    DTFinetuneConfig,
    build_dt_optimizers,
    collection_envs,
    load_offline_dataset,
    offline_seed_trajectories,
    online_targets,
    open_dt_run,
    optimizer_step,
    prepare_policy,
    supervised_loss,
    temperature_step,
)
from dtrl.algos.run_loop import episode_seeds, mean_metrics, rollout_charts, scheduled_learning_rate, set_learning_rate
from dtrl.config import parse_config, resolve_device
from dtrl.data import SequenceSampler
from dtrl.errors import DtrlError
from dtrl.rollout import rollout_episodes
from dtrl.runs import seed_everything
from dtrl.tasks import get_task

ALGO = "odt"


@dataclass
class ODTConfig(DTFinetuneConfig):
    """Online Decision Transformer finetuning (supervised loss, hindsight return relabeling)."""

    dataset: str | None = None
    """offline data (.hdf5 or Minari id) whose best trajectories seed the replay buffer (required)"""
    trajectories_per_iteration: int = 1
    """episodes collected per iteration (ODT: 1)"""
    updates_per_iteration: int = 300
    """gradient steps per iteration (ODT: 300)"""
    batch_size: int = 256
    """windows per gradient step"""
    buffer_size: int = 1000
    """trajectories in the replay buffer (ODT: 1000), seeded with the best offline ones"""
    train_context_length: int | None = None
    """K of the training windows (default: the pretrained model's); online rollouts see context_length"""

    def validate(self) -> None:
        super().validate()
        for name in ("trajectories_per_iteration", "updates_per_iteration", "batch_size", "buffer_size"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.train_context_length is not None and self.train_context_length < 1:
            raise DtrlError(f"train-context-length must be >= 1, got {self.train_context_length}")


def _settings(task) -> dict:
    # The official code (facebookresearch/online-dt): LAMB at lr 1e-4, weight decay 5e-4, grad clip 0.25,
    # online rollouts and evaluation with the last 5 steps of context (eval_context_length); the
    # temperature continues from pretraining. Adroit and AntMaze (not in ODT's code): lr as Table 6's
    # lr_a, batch as Table 6's BS.
    return dict(learning_rate=1e-4 if task.domain in ("mujoco", "generic") else task.learning_rate,
                batch_size=task.batch_size,
                weight_decay=5e-4, grad_clip=0.25, optimizer="lamb", context_length=5)


def paper_preset(task_name: str) -> ODTConfig:
    task = get_task(task_name)
    return ODTConfig(task=task.name, preset="paper", iterations=1000, trajectories_per_iteration=1,
                     updates_per_iteration=300, buffer_size=1000, eval_every=10, eval_episodes=10, **_settings(task))


def cpu_preset(task_name: str) -> ODTConfig:
    task = get_task(task_name)
    return ODTConfig(task=task.name, preset="cpu", threads=1, iterations=20, trajectories_per_iteration=1,
                     updates_per_iteration=30, buffer_size=200, eval_every=5, eval_episodes=5,
                     **(_settings(task) | {"batch_size": 64, "learning_rate": 1e-4}))


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


# ----------------------------------------------------------------------------------------------
# Hindsight return relabeling


def relabeled_sampler(buffer: TrajectoryBuffer, context_length: int, policy, rng: np.random.Generator):
    """Windows over the buffer with hindsight-relabeled RTGs: ``SequenceSampler`` computes each
    step's RTG from the trajectory's own rewards, g_t = sum_{t' >= t} r_t' (scaled by the policy's
    reward scale), ignoring the target the trajectory was rolled out with."""
    return SequenceSampler(buffer.trajectories, context_length, policy.reward_scale, policy.normalizer, rng)


# ----------------------------------------------------------------------------------------------
# The loop


def parse(argv: list[str]) -> ODTConfig:
    """The run's config from the command line (a preset, then the overrides); validated, nothing run."""
    return parse_config(ODTConfig, argv, PRESETS, description=__doc__, prog="dtrl finetune --algo odt")


def main(argv: list[str]) -> int:
    train(parse(argv))
    return 0


def supervised_updates(model, sampler, optimizer, temperature_optimizer, config: ODTConfig, device) -> list[dict]:
    """Step 4: ``updates_per_iteration`` gradient steps of the ODT loss on windows from ``sampler``."""
    stats = []
    for _ in range(config.updates_per_iteration):
        batch = {k: v.to(device) for k, v in sampler.sample(config.batch_size).items()}
        loss, entropy, metrics = supervised_loss(model, batch)
        metrics["losses/grad_norm"] = optimizer_step(loss, optimizer, config.grad_clip)
        temperature_step(model, entropy, temperature_optimizer)
        stats.append(metrics)
    return stats


def train(config: ODTConfig) -> dict:
    device = resolve_device(config.device)
    task = get_task(config.task)
    rng = seed_everything(config.seed)
    policy = prepare_policy(config, task, device)
    model = policy.model
    train_context_length = config.train_context_length or model.config.context_length
    online_rtg, eval_rtg = online_targets(config, task)
    dataset = load_offline_dataset(config.dataset, task, required=True)
    optimizer, temperature_optimizer = build_dt_optimizers(config, model)
    buffer = TrajectoryBuffer(config.buffer_size)
    buffer.seed_with_top(offline_seed_trajectories(dataset, task))
    components = dict(model=model, optimizer=optimizer, temperature_optimizer=temperature_optimizer, buffer=buffer)
    with open_dt_run(config, ALGO, rng, components, policy, task, device, eval_rtg) as loop:
        envs = collection_envs(loop, task, config)
        for iteration in loop:
            learning_rate = set_learning_rate(optimizer, scheduled_learning_rate(config, iteration))
            # 1-2. collect with the online target, add to the FIFO buffer
            rollouts = rollout_episodes(policy, envs, task, online_rtg, context_length=config.context_length,
                                        seeds=episode_seeds(config, iteration, config.trajectories_per_iteration),
                                        mode="sample", device=device)
            for rollout in rollouts:
                buffer.add(rollout.to_trajectory())
            loop.clock.env_steps += sum(len(r) for r in rollouts)
            # 3-4. supervised updates on hindsight-relabeled windows
            sampler = relabeled_sampler(buffer, train_context_length, policy, rng)
            stats = supervised_updates(model, sampler, optimizer, temperature_optimizer, config, device)
            loop.clock.grad_updates += len(stats)
            # 5. evaluation, logging, checkpoint
            loop.end_iteration({"charts/learning_rate": learning_rate, **mean_metrics(stats),
                                **rollout_charts(rollouts), "charts/buffer_trajectories": len(buffer)})
        return loop.finish()
