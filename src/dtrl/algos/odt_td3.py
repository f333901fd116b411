"""ODT+TD3 (Yan et al., 2024, "Reinforcement learning gradients as vitamin for online finetuning
decision transformers"): a Decision Transformer finetuned with a supervised loss plus a TD3 policy
gradient from jointly trained twin critics. A baseline of Table 1, following the authors' code
(KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers; docs/baselines.md lists every difference).

    dtrl finetune --algo odt-td3 --task hopper-random --init runs/pretrain-hopper --dataset data/hopper-random.hdf5

Each iteration:

1. roll out episodes with the online target RTG until at least ``min_transitions_per_iteration``
   steps are collected (official: 1000 on random datasets, Adroit and AntMaze; one episode on medium
   and medium-replay); the deterministic actor acts with its mean action plus N(0, 0.1²) exploration
   noise; add them to the trajectory buffer (seeded with the best offline trajectories, FIFO);
2. ``updates_per_iteration`` actor updates, one every ``policy_delay`` critic updates (the first with
   the first critic update, as the official loop's ``update % delay == 0``), on batches of
   K+1-step windows with hindsight-relabeled RTGs (the last step has its s_{t+1} in the window):
   critic  Q_i(s_t, a_t) -> r_t + γ(1 - done_t) min_j Q'_j(s_{t+1}, ã_{t+1}),
           ã_{t+1} = clip(π'(s_{t+1} | ctx) + clip(N(0, 0.2²), -0.5, 0.5), -1, 1) from the *target* DT π';
   actor   MSE(π(s_t | ctx), a_t) - α · Q_1(s_t, π(s_t | ctx)), α = 0.1 on raw Q (official),
           averaged over the window's valid steps; targets Polyak-averaged (τ) after each actor step;
3. evaluate with the mean action and the evaluation RTG, T_eval steps of context.

``--actor stochastic`` keeps dtrl's earlier variant: ODT's NLL - temperature·entropy loss, sampled
rollouts, and (with ``--normalize-q``) the Q term divided by its batch mean |Q| as in TD3+BC.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from dtrl.algos.buffers import TrajectoryBuffer, WindowSampler
from dtrl.algos.dt_finetune import (
    build_dt_optimizers,
    collection_envs,
    load_offline_dataset,
    offline_seed_trajectories,
    online_targets,
    open_dt_run,
    optimizer_step,
    prepare_policy,
    soft_update,
    supervised_loss,
    temperature_step,
)
from dtrl.algos.run_loop import episode_seeds, mean_metrics, rollout_charts, scheduled_learning_rate, set_learning_rate
from dtrl.algos.td3 import TD3CriticConfig, build_critic, window_critic_loss
from dtrl.config import parse_config, resolve_device
from dtrl.errors import DtrlError
from dtrl.objectives import masked_mean
from dtrl.rollout import rollout_episodes
from dtrl.runs import seed_everything
from dtrl.tasks import get_task

ALGO = "odt-td3"


@dataclass
class ODTTD3Config(TD3CriticConfig):
    """ODT+TD3: a supervised DT loss plus a TD3 actor term from jointly trained twin critics."""

    dataset: str | None = None
    """offline data (.hdf5 or Minari id) whose best trajectories seed the replay buffer (required)"""
    actor: Literal["deterministic", "stochastic"] = "deterministic"
    """'deterministic' (official): the DT's mean action, trained with MSE, explores with Gaussian noise;
    'stochastic': ODT's NLL - temperature·entropy loss and sampled rollouts (dtrl's earlier variant)"""
    trajectories_per_iteration: int = 1
    """episodes rolled out together per collection round (official: 1)"""
    min_transitions_per_iteration: int = 0
    """collection rounds repeat until the iteration has this many new transitions (official: 1000 on
    random datasets, Adroit and AntMaze; 0 = one round)"""
    exploration_noise: float = 0.1
    """σ of the Gaussian noise on the deterministic actor's online actions (official: 0.1)"""
    updates_per_iteration: int = 300
    """actor updates per iteration (official: 300); the critic takes policy_delay updates per actor update"""
    batch_size: int = 256
    """windows per gradient step"""
    buffer_size: int = 1000
    """trajectories in the replay buffer, seeded with the best offline ones (official: 1000 MuJoCo,
    5000 Adroit, 2000 AntMaze)"""
    train_context_length: int | None = None
    """K of the training windows (default: the pretrained model's); they are K+1 steps long so that
    s_{t+1} is in the window. Online rollouts see context_length"""
    rl_weight: float = 0.1
    """α: weight of the TD3 term -Q_1(s, π(s)) against the supervised loss (official: 0.1 everywhere)"""
    normalize_q: bool = False
    """divide the TD3 term by the batch's mean |Q_1| (TD3+BC's λ; off in the official code)"""
    policy_noise: float = 0.2
    """σ of the target-policy smoothing noise"""
    policy_delay: int = 2
    """critic updates per actor update (official: 2 on MuJoCo, 1 on Adroit and AntMaze)"""
    critic_warmup_steps: int = 1000
    """critic-only TD3 steps on the seeded buffer before finetuning: the official critic trains
    alongside the DT's pretraining, which dtrl's pretraining does not do"""

    def validate(self) -> None:
        super().validate()
        for name in ("trajectories_per_iteration", "updates_per_iteration", "batch_size", "buffer_size",
                     "policy_delay"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("rl_weight", "critic_warmup_steps", "policy_noise", "noise_clip", "exploration_noise",
                     "min_transitions_per_iteration"):
            if not getattr(self, name) >= 0:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.train_context_length is not None and self.train_context_length < 1:
            raise DtrlError(f"train-context-length must be >= 1, got {self.train_context_length}")


def _official_settings(task) -> dict:
    """The authors' commands per domain (their README): critic 2x256 ReLU, LayerNorm off MuJoCo,
    AdamW (weight decay 0.01) at 1e-3 on MuJoCo and 2e-4 elsewhere; actor LAMB with grad clip 0.25;
    evaluation/rollout context 5 on MuJoCo and pen, 1 on door, hammer and AntMaze."""
    mujoco = task.domain in ("mujoco", "generic")
    settings = dict(
        critic_hidden_dim=256, critic_activation="relu", critic_layer_norm=not mujoco,
        critic_lr=1e-3 if mujoco else 2e-4, critic_weight_decay=0.01, grad_clip=0.25, optimizer="lamb",
        learning_rate=1e-4, weight_decay=1e-4, policy_delay=2 if mujoco else 1,
        gamma=0.998 if task.domain == "antmaze" else 0.99,
        buffer_size={"adroit": 5000, "antmaze": 2000}.get(task.domain, 1000),
        context_length=5 if mujoco or task.family == "pen" else 1,
        min_transitions_per_iteration=1000 if task.level == "random" or not mujoco else 0,
    )
    if task.family == "hopper":
        settings["weight_decay"] = 5e-4
    elif task.family == "walker2d":
        settings.update(learning_rate=1e-3, weight_decay=1e-3)
    return settings


def paper_preset(task_name: str) -> ODTTD3Config:
    task = get_task(task_name)
    # critic warm-up: as many steps as the official critic trains during pretraining (MuJoCo 5000)
    return ODTTD3Config(task=task.name, preset="paper", iterations=1000, updates_per_iteration=300, batch_size=256,
                        critic_warmup_steps=5000, eval_every=10, eval_episodes=10, **_official_settings(task))


def cpu_preset(task_name: str) -> ODTTD3Config:
    task = get_task(task_name)
    return ODTTD3Config(task=task.name, preset="cpu", threads=1, iterations=20, updates_per_iteration=30, batch_size=64,
                        critic_warmup_steps=200, eval_every=5, eval_episodes=5,
                        **(_official_settings(task) | {"buffer_size": 200}))


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


def td3_actor_loss(supervised: torch.Tensor, q: torch.Tensor, mask: torch.Tensor, rl_weight: float,
                   normalize_q: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(actor loss, mean Q): ``supervised - α · mean_valid(Q)``; with ``normalize_q`` the Q term is
    divided by the batch's mean |Q| (TD3+BC), which makes α scale-free."""
    q_mean = masked_mean(q, mask)
    scale = masked_mean(q.detach().abs(), mask).clamp_min(1e-6) if normalize_q else 1.0
    return supervised - rl_weight * q_mean / scale, q_mean


# ----------------------------------------------------------------------------------------------
# The loop


def parse(argv: list[str]) -> ODTTD3Config:
    """The run's config from the command line (a preset, then the overrides); validated, nothing run."""
    return parse_config(ODTTD3Config, argv, PRESETS, description=__doc__.split("\n\n")[0],
                          prog="dtrl finetune --algo odt-td3")


def main(argv: list[str]) -> int:
    train(parse(argv))
    return 0


def collect(policy, envs, task, config: ODTTD3Config, online_rtg: float, iteration: int, device) -> list:
    """Line 1: rounds of ``trajectories_per_iteration`` episodes until ``min_transitions_per_iteration``."""
    deterministic = config.actor == "deterministic"
    rollouts, round_ = [], 0
    while round_ == 0 or sum(len(r) for r in rollouts) < config.min_transitions_per_iteration:
        seeds = episode_seeds(config, iteration, config.trajectories_per_iteration, round_)
        rollouts += rollout_episodes(policy, envs, task, online_rtg, seeds, device=device,
                                     mode="mean" if deterministic else "sample",
                                     exploration_noise=config.exploration_noise if deterministic else 0.0,
                                     context_length=config.context_length)
        round_ += 1
    return rollouts


@dataclass
class Learner:
    """The DT, the twin critic, their target copies and optimisers, and ODT+TD3's two steps."""

    config: ODTTD3Config
    model: torch.nn.Module
    target_model: torch.nn.Module
    critic: torch.nn.Module
    critic_target: torch.nn.Module
    optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer
    temperature_optimizer: torch.optim.Optimizer | None

    @property
    def deterministic(self) -> bool:
        return self.config.actor == "deterministic"

    def components(self, buffer: TrajectoryBuffer) -> dict:
        """What a checkpoint holds, under the names it has always had."""
        return dict(model=self.model, target_model=self.target_model, critic=self.critic,
                    critic_target=self.critic_target, optimizer=self.optimizer,
                    critic_optimizer=self.critic_optimizer, temperature_optimizer=self.temperature_optimizer,
                    buffer=buffer)

    def critic_step(self, batch) -> dict:
        config = self.config
        loss, metrics = window_critic_loss(self.critic, self.critic_target, self.target_model, batch, config.gamma,
                                           config.policy_noise, config.noise_clip)
        optimizer_step(loss, self.critic_optimizer, 0.0)
        return metrics

    def actor_step(self, batch) -> dict:
        config, model = self.config, self.model
        dist = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])
        if self.deterministic:
            supervised = model.mse_loss(dist, batch["actions"], batch["mask"])
            metrics = {"losses/action_mse": supervised.item()}
        else:
            supervised, entropy, metrics = supervised_loss(model, batch, dist)
        # TD3 term on the DT's own mean action at every valid step of the window
        q = self.critic.q1(torch.cat([batch["states"], dist.mean], -1)).squeeze(-1)
        loss, q_mean = td3_actor_loss(supervised, q, batch["mask"], config.rl_weight, config.normalize_q)
        metrics["losses/grad_norm"] = optimizer_step(loss, self.optimizer, config.grad_clip)
        if not self.deterministic:
            temperature_step(model, entropy, self.temperature_optimizer)
        soft_update(self.target_model, model, config.tau)
        soft_update(self.critic_target, self.critic, config.tau)
        metrics.update({"losses/actor_q": q_mean.item(), "losses/actor_total": loss.item()})
        return metrics

    def warm_up_critic(self, sampler: WindowSampler, device) -> None:
        """Critic-only steps before the first iteration (--critic-warmup-steps), on the seeded buffer."""
        for _ in range(self.config.critic_warmup_steps):
            self.critic_step(sampler.sample(self.config.batch_size, device))
            soft_update(self.critic_target, self.critic, self.config.tau)

    def updates(self, sampler: WindowSampler, device) -> list[dict]:
        """policy_delay critic steps per actor step (supervised + α·TD3), on relabeled windows."""
        stats = []
        for update in range(self.config.updates_per_iteration * self.config.policy_delay):
            batch = sampler.sample(self.config.batch_size, device)
            metrics = self.critic_step(batch)
            if update % self.config.policy_delay == 0:
                metrics.update(self.actor_step(batch))
            stats.append(metrics)
        return stats


def build_learner(config: ODTTD3Config, policy, task, obs_dim: int, act_dim: int, device) -> Learner:
    model = policy.model
    optimizer, temperature_optimizer = build_dt_optimizers(config, model)
    if config.actor == "deterministic":
        temperature_optimizer = None  # no entropy term
    critic, critic_target, critic_optimizer = build_critic(config, task, obs_dim, act_dim, device)
    return Learner(config, model, copy.deepcopy(model).requires_grad_(False), critic, critic_target, optimizer,
                   critic_optimizer, temperature_optimizer)


def train(config: ODTTD3Config) -> dict:
    device = resolve_device(config.device)
    task = get_task(config.task)
    rng = seed_everything(config.seed)
    policy = prepare_policy(config, task, device, stochastic=config.actor != "deterministic")
    model = policy.model
    window = (config.train_context_length or model.config.context_length) + 1
    online_rtg, eval_rtg = online_targets(config, task)
    dataset = load_offline_dataset(config.dataset, task, required=True)
    learner = build_learner(config, policy, task, dataset.obs_dim, dataset.act_dim, device)
    buffer = TrajectoryBuffer(config.buffer_size)
    buffer.seed_with_top(offline_seed_trajectories(dataset, task))
    with open_dt_run(config, ALGO, rng, learner.components(buffer), policy, task, device, eval_rtg) as loop:
        envs = collection_envs(loop, task, config)
        loop.log_start()  # the curve starts at the pretrained DT, before the critic's warm-up
        if loop.state is None and config.critic_warmup_steps > 0:
            learner.warm_up_critic(WindowSampler(buffer, window, policy.reward_scale, policy.normalizer, rng,
                                                 rtg="hindsight"), device)
        for iteration in loop:
            learning_rate = set_learning_rate(learner.optimizer, scheduled_learning_rate(config, iteration))
            # 1. collect with the online target RTG, FIFO buffer
            rollouts = collect(policy, envs, task, config, online_rtg, iteration, device)
            for rollout in rollouts:
                buffer.add(rollout.to_trajectory())
            loop.clock.env_steps += sum(len(r) for r in rollouts)
            # 2. policy_delay critic steps per actor step (supervised + α·TD3), on relabeled windows
            sampler = WindowSampler(buffer, window, policy.reward_scale, policy.normalizer, rng, rtg="hindsight")
            stats = learner.updates(sampler, device)
            loop.clock.grad_updates += len(stats)
            # 3. evaluation, logging, checkpoint
            loop.end_iteration({"charts/learning_rate": learning_rate, **mean_metrics(stats),
                                **rollout_charts(rollouts), "charts/episodes": len(rollouts)})
        return loop.finish()
