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

import torch

from dtrl.algos.buffers import TrajectoryBuffer, WindowSampler
from dtrl.algos.common import (
    Clock,
    TD3CriticConfig,
    build_critic,
    build_dt_optimizers,
    end_of_iteration,
    episode_seeds,
    evaluate_policy,
    finish_run,
    load_offline_dataset,
    log_initial_evaluation,
    mean_metrics,
    offline_seed_trajectories,
    online_targets,
    open_run,
    optimizer_step,
    prepare_policy,
    restore_training_state,
    rollout_charts,
    save_checkpoint,
    seed_everything,
    soft_update,
    supervised_loss,
    temperature_step,
    training_state,
    window_critic_loss,
)
from dtrl.config import parse_config, resolve_device
from dtrl.envs import BatchedEnv
from dtrl.errors import DtrlError
from dtrl.objectives import masked_mean
from dtrl.rollout import rollout_episodes
from dtrl.tasks import get_task

ALGO = "odt-td3"


@dataclass
class ODTTD3Config(TD3CriticConfig):
    """ODT's supervised loss plus a TD3 actor term from jointly trained twin critics."""

    dataset: str | None = None
    """offline data (.hdf5 or Minari id) whose best trajectories seed the replay buffer (required)"""
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
                        batch_size=task.batch_size, buffer_size=1000,
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
# The loop


def main(argv: list[str]) -> int:
    config = parse_config(ODTTD3Config, argv, PRESETS, description=__doc__, prog="dtrl finetune --algo odt-td3")
    train(config)
    return 0


def train(config: ODTTD3Config) -> dict:
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
        optimizer_step(loss, critic_optimizer, 0.0)
        return metrics

    def actor_step(batch) -> dict:
        dist = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])
        loss_odt, entropy, metrics = supervised_loss(model, batch, dist)
        # TD3 term on the DT's own mean action at every valid step of the window.
        q = critic.q1(torch.cat([batch["states"], dist.mean], -1)).squeeze(-1)
        q_mean = masked_mean(q, batch["mask"])
        scale = masked_mean(q.detach().abs(), batch["mask"])
        loss = loss_odt - config.rl_weight * q_mean / scale.clamp_min(1e-6)
        metrics["losses/grad_norm"] = optimizer_step(loss, optimizer, config.grad_clip)
        temperature_step(model, entropy, temperature_optimizer)
        soft_update(target_model, model, config.tau)
        soft_update(critic_target, critic, config.tau)
        metrics.update({"losses/actor_q": q_mean.item(), "losses/actor_total": loss.item()})
        return metrics

    def evaluate_now() -> dict:
        return evaluate_policy(policy, task, config, device, eval_rtg)

    def checkpoint() -> None:
        save_checkpoint(run, iteration, training_state(ALGO, iteration, rng, clock, **components), model,
                        policy.normalizer, task.name, {"algo": ALGO, "eval_rtg": eval_rtg})

    if state is None:  # the curve starts at the pretrained DT
        log_initial_evaluation(run, clock, config, evaluate_now)
    last_eval: dict = {}
    try:
        if state is None and config.critic_warmup_steps > 0:
            sampler = WindowSampler(buffer, window, policy.reward_scale, policy.normalizer, rng, rtg="hindsight")
            for _ in range(config.critic_warmup_steps):
                critic_step(sampler.sample(config.batch_size, device))
                soft_update(critic_target, critic, config.tau)
        iteration = start - 1  # the last one done: what finish_run reports when none is left to run
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
            metrics = {**mean_metrics(stats), **rollout_charts(rollouts)}
            stopping, evaluation = end_of_iteration(run, iteration, config, clock, metrics, evaluate_now, checkpoint)
            last_eval = evaluation or last_eval
            if stopping:
                break
        return finish_run(run, ALGO, iteration, last_eval or evaluate_now())
    finally:
        envs.close()
        run.close()
