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
import torch

from dtrl.algos.common import (
    Clock, DTFinetuneConfig, TrajectoryBuffer, build_dt_optimizers, end_of_iteration, episode_seeds, evaluate_policy,
    log_initial_evaluation, load_offline_dataset, mean_metrics, online_targets, open_run, prepare_policy,
    restore_training_state, seed_everything, training_state,
)
from dtrl.config import parse_config, resolve_device
from dtrl.errors import DtrlError
from dtrl.tasks import get_task

ALGO = "odt"


@dataclass
class ODTConfig(DTFinetuneConfig):
    """Online Decision Transformer finetuning (supervised loss, hindsight return relabeling)."""

    trajectories_per_iteration: int = 1
    """episodes collected per iteration (ODT: 1)"""
    updates_per_iteration: int = 300
    """gradient steps per iteration (ODT: 300)"""
    batch_size: int = 256
    """windows per gradient step"""
    buffer_size: int = 1000
    """trajectories in the replay buffer (ODT: 1000), seeded with the best offline ones"""
    context_length: int | None = None
    """K of the training windows (default: the pretrained model's)"""

    def validate(self) -> None:
        super().validate()
        for name in ("trajectories_per_iteration", "updates_per_iteration", "batch_size", "buffer_size"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.context_length is not None and self.context_length < 1:
            raise DtrlError(f"context-length must be >= 1, got {self.context_length}")


def _settings(task) -> dict:
    # ODT's per-domain online settings: lr 1e-4 (Adroit and AntMaze: as GRPO's Table 6 lr_a), batch
    # as Table 6 BS; the temperature continues from pretraining.
    return dict(learning_rate=1e-4 if task.domain in ("mujoco", "generic") else 5e-5,
                batch_size=512 if task.domain == "adroit" else 256)


def paper_preset(task_name: str) -> ODTConfig:
    task = get_task(task_name)
    return ODTConfig(task=task.name, preset="paper", iterations=1000, trajectories_per_iteration=1,
                     updates_per_iteration=300, buffer_size=1000, eval_every=10, eval_episodes=10, **_settings(task))


def cpu_preset(task_name: str) -> ODTConfig:
    task = get_task(task_name)
    return ODTConfig(task=task.name, preset="cpu", iterations=20, trajectories_per_iteration=1,
                     updates_per_iteration=30, batch_size=64, buffer_size=200, eval_every=5, eval_episodes=5,
                     learning_rate=1e-4)


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


# ----------------------------------------------------------------------------------------------
# Pieces ODT+TD3 reuses


def offline_seed_trajectories(dataset, task):
    """Offline trajectories eligible for the replay buffer; AntMaze's 1-step trajectories are
    artefacts of its data generation and are dropped (paper A.3.1, following ODT+TD3)."""
    trajectories = dataset.trajectories
    if task.domain == "antmaze":
        trajectories = [t for t in trajectories if len(t) > 1]
    return trajectories


def relabeled_sampler(buffer: TrajectoryBuffer, context_length: int, policy, rng: np.random.Generator):
    """Windows over the buffer with hindsight-relabeled RTGs: ``SequenceSampler`` computes each
    step's RTG from the trajectory's own rewards, g_t = sum_{t' >= t} r_t' (scaled by the policy's
    reward scale), ignoring the target the trajectory was rolled out with."""
    from dtrl.data import SequenceSampler

    return SequenceSampler(buffer.trajectories, context_length, policy.reward_scale, policy.normalizer, rng)


def supervised_loss(model, batch: dict, dist=None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """ODT objective on a window batch: (policy loss, temperature loss, metrics). ``dist``: the
    model's output on this batch when the caller already has it."""
    mask = batch["mask"]
    actions = batch["actions"].clamp(-1.0 + 1e-6, 1.0 - 1e-6)  # tanh head: |a| < 1
    if dist is None:
        dist = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], mask)
    loss, nll, entropy = model.nll_entropy_loss(dist, actions, mask)
    temperature_loss = model.temperature_loss(entropy)
    return loss, temperature_loss, {"losses/action_nll": nll.item(), "losses/entropy": entropy.item(),
                                    "losses/temperature": model.temperature.item()}


def optimiser_step(loss, optimizer, parameters, grad_clip: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip) if grad_clip > 0 else torch.tensor(0.0)
    optimizer.step()
    return float(norm)


def temperature_step(temperature_loss, optimizer) -> None:
    if optimizer is None:
        return
    optimizer.zero_grad(set_to_none=True)
    temperature_loss.backward()
    optimizer.step()


# ----------------------------------------------------------------------------------------------
# The loop


def main(argv: list[str]) -> int:
    config = parse_config(ODTConfig, argv, PRESETS, description=__doc__, prog="dtrl finetune --algo odt")
    train(config)
    return 0


def train(config: ODTConfig) -> dict:
    from dtrl.envs import BatchedEnv
    from dtrl.rollout import rollout_episodes

    device = resolve_device(config.device)
    task = get_task(config.task)
    rng = seed_everything(config.seed)
    policy = prepare_policy(config, task, device)
    model = policy.model
    context_length = config.context_length or model.config.context_length
    online_rtg, eval_rtg = online_targets(config, task)
    dataset = load_offline_dataset(config.dataset, task, required=True)
    optimizer, temperature_optimizer = build_dt_optimizers(config, model)
    actor_params = model.policy_parameters()

    buffer = TrajectoryBuffer(config.buffer_size)
    buffer.seed_with_top(offline_seed_trajectories(dataset, task))
    clock = Clock()
    run, state = open_run(config, ALGO)
    start = 1
    components = dict(model=model, optimizer=optimizer, temperature_optimizer=temperature_optimizer, buffer=buffer)
    if state is not None:
        start = restore_training_state(state, rng, clock, **components)
    envs = BatchedEnv(task, config.trajectories_per_iteration, seed=config.seed)

    if state is None:  # the curve starts at the pretrained DT
        log_initial_evaluation(run, clock, policy, task, config, eval_rtg, device)
    last_eval: dict = {}
    try:
        for iteration in range(start, config.iterations + 1):
            # 1-2. collect with the online target, add to the FIFO buffer
            rollouts = rollout_episodes(policy, envs, task, online_rtg,
                                        seeds=episode_seeds(config, iteration, config.trajectories_per_iteration),
                                        mode="sample", device=device)
            for rollout in rollouts:
                buffer.add(rollout.to_trajectory())
            clock.env_steps += sum(len(r) for r in rollouts)

            # 3-4. supervised updates on hindsight-relabeled windows
            sampler = relabeled_sampler(buffer, context_length, policy, rng)
            stats = []
            for _ in range(config.updates_per_iteration):
                batch = {k: v.to(device) for k, v in sampler.sample(config.batch_size).items()}
                loss, temperature_loss, metrics = supervised_loss(model, batch)
                metrics["losses/grad_norm"] = optimiser_step(loss, optimizer, actor_params, config.grad_clip)
                temperature_step(temperature_loss, temperature_optimizer)
                clock.grad_updates += 1
                stats.append(metrics)

            # 5. evaluation, logging, checkpoint
            stopping, evaluation = end_of_iteration(
                run, ALGO, iteration, config, clock, policy, task, eval_rtg, device, rollouts, mean_metrics(stats),
                {"charts/buffer_trajectories": len(buffer)},
                lambda: training_state(ALGO, iteration, rng, clock, **components))
            last_eval = evaluation or last_eval
            if stopping:
                break
        if not last_eval:
            last_eval = evaluate_policy(policy, task, config, eval_rtg, device)
        run.mark_finished({"algo": ALGO, **last_eval})
    finally:
        envs.close()
        run.close()
    return last_eval
