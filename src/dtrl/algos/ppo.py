"""PPO-DT (paper §4.1): CleanRL-style PPO on a pretrained Decision Transformer, *without* hindsight
return relabeling (the paper's §3.1: relabeling breaks the importance ratio).

    dtrl finetune --algo ppo --task hopper-random --init runs/pretrain-hopper

Each iteration, top to bottom:

1. rollout: ``trajectories_per_iteration`` episodes (8; 16 on Adroit) sampled from the DT conditioned on
   the online target RTG; the rollout engine stores each step's RTG and the log-prob of the sampled
   action *at sampling time* (never recomputed); the trajectory buffer keeps the last 4x as many (FIFO);
2. advantages: a critic V(s, g) — an MLP on the normalised state and scaled RTG (2 layers, 256 wide on
   MuJoCo and 512 elsewhere, SiLU, AdamW, LayerNorm on Adroit/AntMaze; Table 5) — gives GAE
   advantages and λ-returns for every buffered step (γ = 0.99; time limits bootstrap, terminals do not);
3. ``update_epochs`` epochs over the buffer cut into segments of ``segment_length`` steps, each with
   the DT's receptive field of history before it (so the first ratio is exactly 1), in minibatches:
   token-level clipped surrogate (objectives.clipped_surrogate, level 'token') on per-step
   advantages normalised per minibatch, minus temperature x entropy (the temperature learned towards
   target entropy -dim(A), as in pretraining); the critic regresses the λ-returns;
4. evaluate with the mean action and the evaluation RTG; log; checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dtrl.algos.buffers import TrajectoryBuffer, rollout_extra, scatter_steps, trajectory_segments
from dtrl.algos.dt_finetune import (
    DTFinetuneConfig,
    build_dt_optimizers,
    collection_envs,
    online_targets,
    open_dt_run,
    optimizer_step,
    prepare_policy,
    segment_history_length,
    temperature_step,
)
from dtrl.algos.run_loop import episode_seeds, mean_metrics, rollout_charts, scheduled_learning_rate, set_learning_rate
from dtrl.config import parse_config, resolve_device
from dtrl.data import returns_to_go
from dtrl.errors import DtrlError
from dtrl.models.critics import ValueNet, default_hidden_dim, default_layer_norm
from dtrl.objectives import clipped_surrogate, lambda_returns, ppo_value_loss, surrogate_stats
from dtrl.rollout import rollout_episodes, segments_to_batch
from dtrl.runs import seed_everything
from dtrl.tasks import get_task

ALGO = "ppo"


@dataclass
class PPOConfig(DTFinetuneConfig):
    """PPO-DT: clipped surrogate with a value critic and λ-returns, no hindsight relabeling."""

    trajectories_per_iteration: int = 8
    """episodes collected per iteration (paper: 8 MuJoCo/AntMaze, 16 Adroit)"""
    buffer_multiplier: int = 4
    """the trajectory buffer holds this many iterations' worth of episodes (paper: 4)"""
    gamma: float = 0.99
    """discount of the λ-returns (Table 5: PPO γ 0.99)"""
    gae_lambda: float = 0.95
    """λ of the λ-returns / GAE"""
    clip_eps: float = 0.2
    """ε of the clipped surrogate (Table 6)"""
    update_epochs: int = 4
    """passes over the buffer per iteration"""
    minibatch_size: int = 256
    """segments per gradient step"""
    segment_length: int | None = None
    """steps trained per segment (default: the model's context length K)"""
    history_length: int | None = None
    """context steps before each segment (default: as many as exact log-probs need: the model's
    receptive field, or context_length - 1 with a short online context)"""
    normalize_advantages: bool = True
    """normalise advantages within each minibatch (CleanRL)"""
    critic_lr: float = 3e-4
    """AdamW learning rate of the critic"""
    critic_weight_decay: float = 1e-4
    """AdamW weight decay of the critic"""
    critic_hidden_dim: int | None = None
    """critic width (default: 256 MuJoCo, 512 otherwise; Table 5)"""
    critic_layer_norm: bool | None = None
    """LayerNorm in the critic (default: on Adroit and AntMaze)"""
    value_clip_eps: float | None = None
    """CleanRL's clipped value loss range (None: plain MSE)"""

    hindsight_relabel: bool = False
    """ablation (Fig. 1a): train on RTG tokens relabelled with the return each episode achieved
    (ODT's g_t = Σ_{t' >= t} r_t'), keeping the sampling-time log-probs: the ratio then compares
    actions under RTGs the policy never acted on (the paper's Sec. 3.1)"""

    def evaluates_at_online_rtg(self) -> bool:
        return not self.hindsight_relabel  # trained only at RTGs that descend from g_online

    def validate(self) -> None:
        super().validate()
        for name in ("trajectories_per_iteration", "buffer_multiplier", "update_epochs", "minibatch_size"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise DtrlError("gamma must be in (0, 1] and gae-lambda in [0, 1]")
        if not self.clip_eps > 0:
            raise DtrlError(f"clip-eps must be > 0, got {self.clip_eps}")
        for name in ("segment_length", "history_length"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "segment_length" else 0):
                raise DtrlError(f"{name.replace('_', '-')} must be >= {1 if name == 'segment_length' else 0}")


def _table6(task) -> dict:
    return dict(clip_eps=task.clip_eps, learning_rate=task.learning_rate, context_length=task.context_eval,
                trajectories_per_iteration=16 if task.domain == "adroit" else 8)


def paper_preset(task_name: str) -> PPOConfig:
    task = get_task(task_name)
    return PPOConfig(task=task.name, preset="paper", iterations=1000, update_epochs=4,
                     minibatch_size=task.batch_size, eval_every=10, eval_episodes=10,
                     **_table6(task))


def cpu_preset(task_name: str) -> PPOConfig:
    task = get_task(task_name)
    settings = _table6(task) | {"trajectories_per_iteration": 4, "learning_rate": 1e-4}
    return PPOConfig(task=task.name, preset="cpu", threads=1, iterations=20, update_epochs=2, minibatch_size=32,
                     eval_every=5, eval_episodes=5, **settings)


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


# ----------------------------------------------------------------------------------------------
# The critic and its targets


def build_value_critic(config, task, obs_dim: int, device: str):
    """V(s, g): an MLP on concat(normalised state, scaled RTG)."""
    return ValueNet(obs_dim + 1, hidden_dim=config.critic_hidden_dim or default_hidden_dim(task.domain),
                    layer_norm=default_layer_norm(task.domain) if config.critic_layer_norm is None
                    else config.critic_layer_norm).to(device)


def critic_inputs(states: torch.Tensor, returns_to_go: torch.Tensor) -> torch.Tensor:
    return torch.cat([states, returns_to_go.unsqueeze(-1)], dim=-1)


def trajectory_advantages(rewards: np.ndarray, values: np.ndarray, terminated: bool, gamma: float, lam: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """GAE advantages and λ-returns of one episode. A terminal last step does not bootstrap; a
    time-limit cut bootstraps with V of the last state (the rollout keeps no observation after the
    last action, and V(s_T) ~ V(s_{T-1}) one step apart)."""
    values_t = torch.as_tensor(values, dtype=torch.float64)
    bootstrap = torch.zeros(1, dtype=torch.float64) if terminated else values_t[-1:]
    next_values = torch.cat([values_t[1:], bootstrap])
    dones = torch.zeros(len(values_t), dtype=torch.bool)
    dones[-1] = terminated
    ends = torch.zeros(len(values_t), dtype=torch.bool)
    ends[-1] = True
    advantages, returns = lambda_returns(torch.as_tensor(rewards, dtype=torch.float64), values_t, next_values, dones,
                                         gamma, lam, episode_ends=ends)
    return advantages.numpy().astype(np.float32), returns.numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The loop


def parse(argv: list[str]) -> PPOConfig:
    """The run's config from the command line (a preset, then the overrides); validated, nothing run."""
    return parse_config(PPOConfig, argv, PRESETS, description=__doc__, prog="dtrl finetune --algo ppo")


def main(argv: list[str]) -> int:
    train(parse(argv))
    return 0


def collect(policy, envs, task, buffer: TrajectoryBuffer, online_rtg: float, seeds: list[int], config: PPOConfig,
            device) -> list:
    """Step 1: roll out with the online target; log-probs and RTGs as sampled, into the FIFO buffer."""
    rollouts = rollout_episodes(policy, envs, task, online_rtg, context_length=config.context_length, seeds=seeds,
                                mode="sample", device=device)
    for rollout in rollouts:
        extra = rollout_extra(rollout)
        if config.hindsight_relabel:  # the relabeling ablation: achieved returns, old log-probs
            extra["returns_to_go"] = returns_to_go(rollout.rewards).astype(np.float32)
        buffer.add(rollout.to_trajectory(), extra)
    return rollouts


@torch.no_grad()
def advantage_segments(buffer: TrajectoryBuffer, critic, policy, config: PPOConfig, segment_length: int,
                       history_length: int, device) -> tuple[list, list, list]:
    """Step 2: values of every buffered step under the current critic -> GAE advantages and
    λ-returns; the buffer cut into training segments with their advantages and returns."""
    pieces, advantages, returns = [], [], []
    for trajectory, extra in zip(buffer.trajectories, buffer.extras):
        states = torch.as_tensor(policy.normalizer.normalize(trajectory.observations), device=device)
        rtg = torch.as_tensor(extra["returns_to_go"] / policy.reward_scale, dtype=torch.float32, device=device)
        values = critic(critic_inputs(states, rtg)).double().cpu().numpy()
        adv, ret = trajectory_advantages(trajectory.rewards / policy.reward_scale, values, trajectory.terminated,
                                         config.gamma, config.gae_lambda)
        for segment, steps in trajectory_segments(trajectory, extra, segment_length, history_length):
            pieces.append(segment)
            advantages.append(adv[steps])
            returns.append(ret[steps])
    return pieces, advantages, returns


def minibatch_update(policy, critic, batch, adv, ret, optimizers: tuple, config: PPOConfig) -> dict[str, float]:
    """One minibatch: token-level clipped surrogate + entropy for the policy, then the critic's
    regression on the λ-returns."""
    model = policy.model
    optimizer, temperature_optimizer, critic_optimizer = optimizers
    train = batch.train_mask
    if config.normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    dist = batch.step_distributions(model, config.context_length)  # [N] train steps
    logp_new = dist.log_prob(batch.train_actions())[:, None]
    logp_old = batch.log_probs_old[train][:, None]
    each_step = torch.ones_like(logp_new, dtype=torch.bool)  # token level: one ratio per step
    pg_loss = clipped_surrogate(logp_new, logp_old, adv, each_step, "token", config.clip_eps)
    entropy = dist.entropy().mean()
    loss = pg_loss - model.temperature.detach() * entropy
    grad_norm = optimizer_step(loss, optimizer, config.grad_clip)
    temperature_step(model, entropy, temperature_optimizer)

    values = critic(critic_inputs(batch.states[train], batch.returns_to_go[train]))
    value_loss = ppo_value_loss(values, ret)
    optimizer_step(value_loss, critic_optimizer, config.grad_clip)
    ratio = surrogate_stats(logp_new.detach(), logp_old, each_step, "token", config.clip_eps)
    return {"losses/policy": pg_loss.item(), "losses/value": value_loss.item(),
            "losses/entropy": entropy.item(), "losses/temperature": model.temperature.item(),
            "losses/grad_norm": grad_norm, "losses/approx_kl": ratio.approx_kl,
            "losses/clipfrac": ratio.clip_fraction, "losses/ratio_mean": ratio.ratio_mean}


def update(policy, critic, segments: tuple[list, list, list], optimizers: tuple, config: PPOConfig,
           history_length: int, rng: np.random.Generator, device) -> list[dict]:
    """Step 3: epochs of shuffled minibatch updates over the segments."""
    pieces, advantages, returns = segments
    stats = []
    for _ in range(config.update_epochs):
        order = rng.permutation(len(pieces))
        for first in range(0, len(order), config.minibatch_size):
            rows = order[first:first + config.minibatch_size]
            batch = segments_to_batch([pieces[i] for i in rows], policy.normalizer, policy.reward_scale, device,
                                      history_length=history_length)
            width = batch.mask.shape[1]
            adv = scatter_steps([advantages[i] for i in rows], width, device)[batch.train_mask]
            ret = scatter_steps([returns[i] for i in rows], width, device)[batch.train_mask]
            stats.append(minibatch_update(policy, critic, batch, adv, ret, optimizers, config))
    return stats


def train(config: PPOConfig) -> dict:
    device = resolve_device(config.device)
    task = get_task(config.task)
    rng = seed_everything(config.seed)
    policy = prepare_policy(config, task, device)
    model = policy.model
    segment_length = config.segment_length or model.config.context_length
    history_length = (segment_history_length(model, config.context_length) if config.history_length is None
                      else config.history_length)
    online_rtg, eval_rtg = online_targets(config, task)
    optimizer, temperature_optimizer = build_dt_optimizers(config, model)
    critic = build_value_critic(config, task, model.state_dim, device)
    critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=config.critic_lr,
                                         weight_decay=config.critic_weight_decay)
    buffer = TrajectoryBuffer(config.trajectories_per_iteration * config.buffer_multiplier)
    components = dict(model=model, critic=critic, optimizer=optimizer, critic_optimizer=critic_optimizer,
                      temperature_optimizer=temperature_optimizer, buffer=buffer)
    with open_dt_run(config, ALGO, rng, components, policy, task, device, eval_rtg) as loop:
        envs = collection_envs(loop, task, config)
        for iteration in loop:
            learning_rate = set_learning_rate(optimizer, scheduled_learning_rate(config, iteration))
            # 1. rollout with the online target; log-probs and RTGs as sampled, FIFO buffer
            rollouts = collect(policy, envs, task, buffer, online_rtg,
                               episode_seeds(config, iteration, config.trajectories_per_iteration), config, device)
            loop.clock.env_steps += sum(len(r) for r in rollouts)
            # 2. values of every buffered step under the current critic -> GAE advantages, λ-returns
            segments = advantage_segments(buffer, critic, policy, config, segment_length, history_length, device)
            # 3. epochs of minibatch updates: token-level clipped surrogate + entropy, critic regression
            stats = update(policy, critic, segments, (optimizer, temperature_optimizer, critic_optimizer), config,
                           history_length, rng, device)
            loop.clock.grad_updates += len(stats)
            # 4. evaluation, logging, checkpoint
            loop.end_iteration({"charts/learning_rate": learning_rate, **mean_metrics(stats),
                                **rollout_charts(rollouts), "charts/segments": len(segments[0])})
        return loop.finish()
