"""ODT+TD3 (Yan et al., 2024, "RL gradients as a vitamin for online finetuning decision transformers"):
ODT's supervised loss plus a TD3 policy-gradient term from jointly trained twin critics.

    dtrl finetune --algo odt-td3 --task hopper-random --init runs/pretrain-hopper --dataset data/hopper-random.hdf5

Each iteration (ODT's loop, :mod:`dtrl.algos.odt`, with a critic):

1. roll out one episode with the online target RTG; add it to the trajectory buffer (seeded with the
   best offline trajectories, FIFO);
2. ``updates_per_iteration`` times, on a batch of K+1-step windows with hindsight-relabeled RTGs:
   critic  Q_i(s_t, a_t) -> r_t + γ(1 - done_t) min_j Q'_j(s_{t+1}, ã_{t+1}),
           ã_{t+1} = clip(π'(s_{t+1} | ctx) + clip(N(0, σ²), -c, c), -1, 1) from the *target* DT π';
   actor   L_ODT + α · (-Q_1(s_t, π(s_t | ctx))) / mean|Q_1|   (every ``policy_delay`` critic steps),
           the Q term normalised by its batch magnitude as in TD3+BC so α is scale-free;
   targets Polyak-averaged (τ) after each actor step;
3. evaluate with the mean action and the evaluation RTG.

Assumptions (the paper's code was not available here, so these are our choices, stated in --help):
α = 0.1 on every domain; the critic sees the state and action only (not the RTG); the DT's
action for the Q term is its mean action tanh(μ) (deterministic policy gradient); critics are MLPs
(2×256 SiLU on MuJoCo, 2×512 with LayerNorm on Adroit/AntMaze as the paper's A.3.1 says ODT+TD3
does); TD3's σ = 0.2, c = 0.5, γ = 0.99; the critic gets ``critic_warmup_steps`` critic-only steps on
the seeded buffer before the first iteration, since it starts untrained while the DT is pretrained.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dtrl.algos.common import (
    Clock, TD3CriticConfig, TrajectoryBuffer, WindowSampler, build_dt_optimizers, end_of_iteration, episode_seeds,
    evaluate_policy, log_initial_evaluation, load_offline_dataset, mean_metrics, online_targets, open_run,
    prepare_policy, restore_training_state, seed_everything, soft_update, training_state,
)
from dtrl.algos.odt import offline_seed_trajectories, optimiser_step, supervised_loss, temperature_step
from dtrl.config import parse_config, resolve_device
from dtrl.errors import DtrlError
from dtrl.objectives import td3_target
from dtrl.tasks import get_task

ALGO = "odt-td3"


@dataclass
class ODTTD3Config(TD3CriticConfig):
    """ODT's supervised loss plus a TD3 actor term from jointly trained twin critics."""

    trajectories_per_iteration: int = 1
    """episodes collected per iteration (ODT: 1)"""
    updates_per_iteration: int = 300
    """gradient steps per iteration (ODT: 300)"""
    batch_size: int = 256
    """windows per gradient step"""
    buffer_size: int = 1000
    """trajectories in the replay buffer, seeded with the best offline ones"""
    context_length: int | None = None
    """K (default: the pretrained model's); windows are K+1 steps so s_{t+1} is in the window"""
    rl_weight: float = 0.1
    """α: weight of the TD3 term -Q(s, π(s)) / mean|Q| against the ODT loss (assumed 0.1)"""
    policy_noise: float = 0.2
    """σ of the target-policy smoothing noise"""
    policy_delay: int = 1
    """critic steps per actor step (TD3: 2; 1 keeps ODT's number of supervised updates)"""
    critic_warmup_steps: int = 1000
    """critic-only TD3 steps on the seeded buffer before finetuning starts"""

    def validate(self) -> None:
        super().validate()
        for name in ("trajectories_per_iteration", "updates_per_iteration", "batch_size", "buffer_size",
                     "policy_delay"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.rl_weight < 0 or self.critic_warmup_steps < 0 or self.policy_noise < 0 or self.noise_clip < 0:
            raise DtrlError("rl-weight, critic-warmup-steps, policy-noise and noise-clip must be >= 0")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise DtrlError("gamma and tau must be in (0, 1]")


def paper_preset(task_name: str) -> ODTTD3Config:
    task = get_task(task_name)
    return ODTTD3Config(task=task.name, preset="paper", iterations=1000, updates_per_iteration=300,
                        batch_size=512 if task.domain == "adroit" else 256, buffer_size=1000,
                        learning_rate=1e-4 if task.domain == "mujoco" else 5e-5,
                        gamma=0.99 if task.domain != "antmaze" else 0.995, critic_warmup_steps=10_000,
                        eval_every=10, eval_episodes=10)


def cpu_preset(task_name: str) -> ODTTD3Config:
    task = get_task(task_name)
    return ODTTD3Config(task=task.name, preset="cpu", iterations=20, updates_per_iteration=30, batch_size=64,
                        buffer_size=200, learning_rate=1e-4, critic_warmup_steps=200, eval_every=5, eval_episodes=5,
                        gamma=0.99 if task.domain != "antmaze" else 0.995)


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


# ----------------------------------------------------------------------------------------------
# TD3 pieces (GRPO-Q uses them too)


def smoothed_target_actions(mean_actions: torch.Tensor, noise_std: float, noise_clip: float) -> torch.Tensor:
    """TD3 target policy smoothing: clip(a' + clip(ε, -c, c), -1, 1), ε ~ N(0, σ²)."""
    noise = (torch.randn_like(mean_actions) * noise_std).clamp(-noise_clip, noise_clip)
    return (mean_actions + noise).clamp(-1.0, 1.0)


def window_critic_loss(critic, critic_target, target_model, batch: dict, gamma: float, noise_std: float,
                       noise_clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Twin-Q TD loss on every transition (s_t, a_t, r_t, s_{t+1}) inside a batch of windows.

    The next action at s_{t+1} is the target DT's prediction at position t+1 of the same window
    (its context: the window's tokens up to s_{t+1}). The last position has no s_{t+1} in the
    window: it is trained only when it is terminal (target r_t). Returns (loss, metrics)."""
    states, actions, mask = batch["states"], batch["actions"], batch["mask"]
    with torch.no_grad():
        target_dist = target_model(states, actions, batch["returns_to_go"], batch["timesteps"], mask)
        next_actions = smoothed_target_actions(target_dist.mean[:, 1:], noise_std, noise_clip)
        next_q1, next_q2 = critic_target(states[:, 1:], next_actions)
        pad = torch.zeros_like(next_q1[:, :1])
        target = td3_target(batch["rewards"], batch["dones"], torch.cat([next_q1, pad], 1),
                            torch.cat([next_q2, pad], 1), gamma)
        has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
        valid = (mask & (has_next | batch["dones"].bool())).float()
    q1, q2 = critic(states, actions)
    count = valid.sum().clamp_min(1.0)
    loss = (((q1 - target) ** 2 + (q2 - target) ** 2) * valid).sum() / count
    return loss, {"losses/critic": loss.item(), "charts/q_mean": float((q1.detach() * valid).sum() / count)}


def build_critic(config, task, obs_dim: int, act_dim: int, device: str):
    from dtrl.models.critics import TwinQ, default_hidden_dim, default_layer_norm

    critic = TwinQ(obs_dim, act_dim, hidden_dim=config.critic_hidden_dim or default_hidden_dim(task.domain),
                   layer_norm=default_layer_norm(task.domain) if config.critic_layer_norm is None
                   else config.critic_layer_norm).to(device)
    return critic, copy.deepcopy(critic).requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# The loop


def main(argv: list[str]) -> int:
    config = parse_config(ODTTD3Config, argv, PRESETS, description=__doc__, prog="dtrl finetune --algo odt-td3")
    train(config)
    return 0


def train(config: ODTTD3Config) -> dict:
    from dtrl.envs import BatchedEnv
    from dtrl.rollout import rollout_episodes

    device = resolve_device(config.device)
    task = get_task(config.task)
    rng = seed_everything(config.seed)
    policy = prepare_policy(config, task, device)
    model = policy.model
    target_model = copy.deepcopy(model).requires_grad_(False)
    window = (config.context_length or model.config.context_length) + 1
    online_rtg, eval_rtg = online_targets(config, task)
    dataset = load_offline_dataset(config.dataset, task, required=True)
    optimizer, temperature_optimizer = build_dt_optimizers(config, model)
    actor_params = model.policy_parameters()
    critic, critic_target = build_critic(config, task, dataset.obs_dim, dataset.act_dim, device)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=config.critic_lr)

    buffer = TrajectoryBuffer(config.buffer_size)
    buffer.seed_with_top(offline_seed_trajectories(dataset, task))
    clock = Clock()
    run, state = open_run(config, ALGO)
    start = 1
    components = dict(model=model, target_model=target_model, critic=critic, critic_target=critic_target,
                      optimizer=optimizer, critic_optimizer=critic_optimizer,
                      temperature_optimizer=temperature_optimizer, buffer=buffer)
    if state is not None:
        start = restore_training_state(state, rng, clock, **components)
    envs = BatchedEnv(task, config.trajectories_per_iteration, seed=config.seed)

    def critic_step(batch) -> dict:
        loss, metrics = window_critic_loss(critic, critic_target, target_model, batch, config.gamma,
                                           config.policy_noise, config.noise_clip)
        critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        critic_optimizer.step()
        return metrics

    def actor_step(batch) -> dict:
        dist = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])
        loss_odt, temperature_loss, metrics = supervised_loss(model, batch, dist)
        # TD3 term on the DT's own mean action at every valid step of the window.
        q = critic.q1(torch.cat([batch["states"], dist.mean], -1)).squeeze(-1)
        valid = batch["mask"].float()
        q_mean = (q * valid).sum() / valid.sum().clamp_min(1.0)
        scale = (q.detach().abs() * valid).sum() / valid.sum().clamp_min(1.0)
        loss = loss_odt - config.rl_weight * q_mean / scale.clamp_min(1e-6)
        metrics["losses/grad_norm"] = optimiser_step(loss, optimizer, actor_params, config.grad_clip)
        temperature_step(temperature_loss, temperature_optimizer)
        soft_update(target_model, model, config.tau)
        soft_update(critic_target, critic, config.tau)
        metrics.update({"losses/actor_q": q_mean.item(), "losses/actor_total": loss.item()})
        return metrics

    if state is None:  # the curve starts at the pretrained DT
        log_initial_evaluation(run, clock, policy, task, config, eval_rtg, device)
    last_eval: dict = {}
    try:
        if state is None and config.critic_warmup_steps > 0:
            sampler = WindowSampler(buffer, window, policy.reward_scale, policy.normalizer, rng, rtg="hindsight")
            for step in range(config.critic_warmup_steps):
                critic_step(sampler.sample(config.batch_size, device))
                soft_update(critic_target, critic, config.tau)
        for iteration in range(start, config.iterations + 1):
            # 1. collect with the online target RTG, FIFO buffer
            rollouts = rollout_episodes(policy, envs, task, online_rtg,
                                        seeds=episode_seeds(config, iteration, config.trajectories_per_iteration),
                                        mode="sample", device=device)
            for rollout in rollouts:
                buffer.add(rollout.to_trajectory())
            clock.env_steps += sum(len(r) for r in rollouts)

            # 2. critic every step, actor (ODT + α·TD3) every policy_delay steps, on relabeled windows
            sampler = WindowSampler(buffer, window, policy.reward_scale, policy.normalizer, rng, rtg="hindsight")
            stats = []
            for update in range(config.updates_per_iteration):
                batch = sampler.sample(config.batch_size, device)
                metrics = critic_step(batch)
                if update % config.policy_delay == 0:
                    metrics.update(actor_step(batch))
                clock.grad_updates += 1
                stats.append(metrics)

            # 3. evaluation, logging, checkpoint
            stopping, evaluation = end_of_iteration(
                run, ALGO, iteration, config, clock, policy, task, eval_rtg, device, rollouts, mean_metrics(stats),
                state=lambda: training_state(ALGO, iteration, rng, clock, **components))
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
