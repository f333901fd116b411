"""Q-function-guided GRPO-DT (paper Appendix A.4, Algorithm 2): the action-level variant of GRPO-DT
for tasks where the environment cannot be reset to a visited state.

    dtrl finetune --algo grpo-q --task hopper-random --init runs/pretrain-hopper

Instead of branching G sub-trajectories from a restored state (Algorithm 1), every visited state gets
G actions sampled from the current policy, scored by a TD3-trained twin Q, normalised within the group
(Eq. 2 on Q-values) and optimised with the GRPO clipped objective, one importance ratio per action.
No hindsight relabeling: the DT is always conditioned on the RTGs it was rolled out with.

Algorithm 2, with its line numbers:

    1: for round t = 1..T
    2:   roll out τ with π_θ(·|s, g_online); add τ to T_replay (FIFO)
    9:   (done before 3-8 so the advantages use a critic that has seen τ) TD3 critic steps on replayed
         transitions: Q_i(s,a) -> r + γ(1-d) min_j Q'_j(s', clip(π'(s') + clip(ε, ±c), ±1)), with a
         target DT π' and target critics updated by Polyak every ``policy_delay`` critic steps
    3:   sample a minibatch of trajectories from T_replay with p(τ) ∝ |τ|
    4-5: for every state s_h in them sample G actions a_{h,i} ~ π_θ(·|s_h, g_h)
    6:   score Q(s_h, a_{h,i}) = min(Q_1, Q_2)
    7:   advantages Â_{h,i} = group-normalised scores (objectives.group_advantages)
    8:   ``policy_epochs`` passes of minibatch updates with the clipped objective (ratio per action)
         minus temperature x entropy (temperature learned towards -dim(A), as in pretraining)

Actor updates wait for ``critic_warmup_iterations`` rounds: a random critic's scores are noise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from dtrl.algos.buffers import TrajectoryBuffer, WindowSampler, rollout_extra, trajectory_segments
from dtrl.algos.dt_finetune import (
    build_dt_optimizers,
    collection_envs,
    online_targets,
    open_dt_run,
    optimizer_step,
    prepare_policy,
    segment_history_length,
    soft_update,
    temperature_step,
)
from dtrl.algos.run_loop import episode_seeds, rollout_charts, scheduled_learning_rate, set_learning_rate
from dtrl.algos.td3 import TD3CriticConfig, build_critic, window_critic_loss
from dtrl.config import parse_config, resolve_device
from dtrl.errors import DtrlError
from dtrl.models.distributions import ActionDistribution
from dtrl.objectives import clipped_surrogate, group_advantages, surrogate_stats
from dtrl.rollout import rollout_episodes, segments_to_batch
from dtrl.runs import seed_everything
from dtrl.tasks import get_task

ALGO = "grpo-q"


@dataclass
class GRPOQConfig(TD3CriticConfig):
    """Q-function-guided GRPO-DT (Algorithm 2): action groups scored by a TD3 critic, no env resets."""

    trajectories_per_iteration: int = 1
    """episodes rolled out per round (line 2; GRPO: 1, 5 on Adroit)"""
    buffer_size: int = 32
    """trajectories kept in T_replay (FIFO; GRPO's full-trajectory buffer: 32)"""
    trajectories_per_update: int = 16
    """line 3: trajectories sampled from T_replay per round (∝ length)"""
    group_size: int = 8
    """G: actions sampled per state (line 5)"""
    min_std: float = 1e-6
    """floor of a group's score std in the normalisation"""
    clip_eps: float = 0.2
    """ε of the clipped objective (Table 6)"""
    policy_epochs: int = 2
    """passes over the round's states per round (line 8)"""
    minibatch_size: int = 256
    """segments per policy gradient step"""
    segment_length: int | None = None
    """steps per training segment (default: the model's context length K)"""
    history_length: int | None = None
    """context steps before each segment (default: as many as exact log-probs need: the model's
    receptive field, or context_length - 1 with a short online context)"""
    critic_updates_per_iteration: int = 256
    """TD3 critic steps per round (line 9)"""
    critic_batch_size: int = 256
    """windows per critic step"""
    critic_warmup_iterations: int = 5
    """first rounds that only collect data and train the critic (no policy update)"""
    policy_noise: float = 0.2
    """σ of TD3's target-policy smoothing noise"""
    policy_delay: int = 2
    """critic steps per target-network update (TD3's delayed updates)"""

    def evaluates_at_online_rtg(self) -> bool:
        return True  # never relabels: trained only at RTGs that descend from g_online

    def validate(self) -> None:
        super().validate()
        for name in ("trajectories_per_iteration", "buffer_size", "trajectories_per_update", "policy_epochs",
                     "minibatch_size", "critic_updates_per_iteration", "critic_batch_size", "policy_delay"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise DtrlError(f"group-size must be >= 2 (a group needs a baseline), got {self.group_size}")
        if self.critic_warmup_iterations < 0:
            raise DtrlError("critic-warmup-iterations must be >= 0")
        if not self.clip_eps > 0:
            raise DtrlError(f"clip-eps must be > 0, got {self.clip_eps}")


def _table6(task) -> dict:
    return dict(clip_eps=task.clip_eps, learning_rate=task.learning_rate, context_length=task.context_eval,
                init_temperature=task.init_temperature,
                trajectories_per_iteration=5 if task.domain == "adroit" else 1,
                gamma=task.gamma if task.domain != "generic" else 0.99)


def paper_preset(task_name: str) -> GRPOQConfig:
    task = get_task(task_name)
    return GRPOQConfig(task=task.name, preset="paper", iterations=1000, buffer_size=32, trajectories_per_update=16,
                       group_size=8, minibatch_size=task.batch_size,
                       critic_updates_per_iteration=256, critic_warmup_iterations=10, eval_every=10,
                       eval_episodes=10, **_table6(task))


def cpu_preset(task_name: str) -> GRPOQConfig:
    task = get_task(task_name)
    return GRPOQConfig(task=task.name, preset="cpu", threads=1, iterations=20, buffer_size=16,
                       trajectories_per_update=2, group_size=8, minibatch_size=32, critic_updates_per_iteration=30,
                       critic_batch_size=64, critic_warmup_iterations=3, eval_every=5, eval_episodes=5,
                       **(_table6(task) | {"learning_rate": 1e-4}))


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


# ----------------------------------------------------------------------------------------------
# Lines 5-7: action groups and their advantages


def sample_action_groups(dist: ActionDistribution, group_size: int) -> torch.Tensor:
    """G actions per state from the (detached) policy distribution: [G, *batch, A]."""
    expand = lambda x: x.detach().unsqueeze(0).expand(group_size, *x.shape)  # noqa: E731
    return ActionDistribution(expand(dist.mu), expand(dist.log_std)).sample()


def q_group_advantages(critic, states: torch.Tensor, actions: torch.Tensor, min_std: float) -> torch.Tensor:
    """Lines 6-7: score each of the G actions of every state with min(Q1, Q2) and normalise within the
    state's group. ``states`` [N, O], ``actions`` [G, N, A] -> advantages [N, G]."""
    group_size = actions.shape[0]
    with torch.no_grad():
        scores = critic.min_q(states.unsqueeze(0).expand(group_size, *states.shape), actions)  # [G, N]
    return group_advantages(scores.t(), min_std=min_std).advantages


# ----------------------------------------------------------------------------------------------
# The loop


def parse(argv: list[str]) -> GRPOQConfig:
    """The run's config from the command line (a preset, then the overrides); validated, nothing run."""
    return parse_config(GRPOQConfig, argv, PRESETS, description=__doc__, prog="dtrl finetune --algo grpo-q")


def main(argv: list[str]) -> int:
    train(parse(argv))
    return 0


def critic_updates(learner: dict, sampler: WindowSampler, config: GRPOQConfig, device) -> list[dict]:
    """Line 9: TD3 critic steps on replayed transitions; the targets follow every policy_delay steps."""
    stats = []
    for step in range(config.critic_updates_per_iteration):
        loss, metrics = window_critic_loss(learner["critic"], learner["critic_target"], learner["target_model"],
                                           sampler.sample(config.critic_batch_size, device), config.gamma,
                                           config.policy_noise, config.noise_clip)
        optimizer_step(loss, learner["critic_optimizer"], 0.0)
        if step % config.policy_delay == 0:
            soft_update(learner["critic_target"], learner["critic"], config.tau)
            soft_update(learner["target_model"], learner["model"], config.tau)
        stats.append(metrics)
    return stats


@torch.no_grad()
def action_group_minibatches(policy, critic, pieces: list, config: GRPOQConfig, history_length: int,
                             rng: np.random.Generator, device) -> list[tuple]:
    """Lines 5-7 with π_old = the policy at the start of this round: G actions per state, their
    sampling log-probs and Q-group advantages, fixed for all epochs of line 8."""
    order = rng.permutation(len(pieces))
    minibatches = []
    for first in range(0, len(order), config.minibatch_size):
        batch = segments_to_batch([pieces[i] for i in order[first:first + config.minibatch_size]],
                                  policy.normalizer, policy.reward_scale, device, history_length=history_length)
        old = batch.step_distributions(policy.model, config.context_length)
        group_actions = sample_action_groups(old, config.group_size)  # [G, N, A]
        advantages = q_group_advantages(critic, batch.states[batch.train_mask], group_actions, config.min_std)  # [N, G]
        minibatches.append((batch, group_actions, old.log_prob(group_actions), advantages))
    return minibatches


def policy_step(learner: dict, minibatch: tuple, config: GRPOQConfig) -> dict[str, float]:
    """Line 8 on one minibatch: the clipped objective with one importance ratio per sampled action."""
    model = learner["model"]
    batch, group_actions, logp_old, advantages = minibatch
    dist = batch.step_distributions(model, config.context_length)
    logp_new = dist.log_prob(group_actions)  # [G, N]
    per_action = torch.ones_like(logp_new.reshape(-1, 1), dtype=torch.bool)
    pg_loss = clipped_surrogate(logp_new.reshape(-1, 1), logp_old.reshape(-1, 1), advantages.t().reshape(-1),
                                per_action, "token", config.clip_eps)
    entropy = dist.entropy().mean()
    loss = pg_loss - model.temperature.detach() * entropy
    grad_norm = optimizer_step(loss, learner["optimizer"], config.grad_clip)
    temperature_step(model, entropy, learner["temperature_optimizer"])
    ratio = surrogate_stats(logp_new.detach().reshape(-1, 1), logp_old.reshape(-1, 1), per_action, "token",
                            config.clip_eps)
    return {"losses/policy": pg_loss.item(), "losses/entropy": entropy.item(),
            "losses/temperature": model.temperature.item(), "losses/grad_norm": grad_norm,
            "grpo/approx_kl": ratio.approx_kl, "grpo/clipfrac": ratio.clip_fraction,
            "grpo/advantage_abs": advantages.abs().mean().item()}


def policy_updates(policy, learner: dict, buffer: TrajectoryBuffer, config: GRPOQConfig, segment_length: int,
                   history_length: int, rng: np.random.Generator, device) -> list[dict]:
    """Lines 3-8: trajectories ∝ length, every state of them cut into segments with history, action
    groups scored by the critic, then policy_epochs of the clipped objective."""
    chosen = buffer.sample_indices(config.trajectories_per_update, rng)
    pieces = [segment for i in chosen for segment, _ in
              trajectory_segments(buffer.trajectories[i], buffer.extras[i], segment_length, history_length)]
    minibatches = action_group_minibatches(policy, learner["critic"], pieces, config, history_length, rng, device)
    return [policy_step(learner, minibatches[index], config)
            for _ in range(config.policy_epochs) for index in rng.permutation(len(minibatches))]


def merged_means(stats: list[dict]) -> dict[str, float]:
    """The mean of each key over the rows that have it (critic and policy rows carry different keys)."""
    merged: dict[str, list] = {}
    for row in stats:
        for key, value in row.items():
            merged.setdefault(key, []).append(value)
    return {k: float(np.mean(v)) for k, v in merged.items()}


def train(config: GRPOQConfig) -> dict:
    device = resolve_device(config.device)
    task = get_task(config.task)
    rng = seed_everything(config.seed)
    policy = prepare_policy(config, task, device)
    model = policy.model
    target_model = copy.deepcopy(model).requires_grad_(False)
    context = model.config.context_length
    segment_length = config.segment_length or context
    history_length = (segment_history_length(model, config.context_length) if config.history_length is None
                      else config.history_length)
    online_rtg, eval_rtg = online_targets(config, task)
    optimizer, temperature_optimizer = build_dt_optimizers(config, model)
    critic, critic_target, critic_optimizer = build_critic(config, task, model.state_dim, model.act_dim, device)
    buffer = TrajectoryBuffer(config.buffer_size)
    learner = dict(model=model, target_model=target_model, critic=critic, critic_target=critic_target,
                   optimizer=optimizer, critic_optimizer=critic_optimizer,
                   temperature_optimizer=temperature_optimizer)
    with open_dt_run(config, ALGO, rng, {**learner, "buffer": buffer}, policy, task, device, eval_rtg) as loop:
        envs = collection_envs(loop, task, config)
        for iteration in loop:
            learning_rate = set_learning_rate(optimizer, scheduled_learning_rate(config, iteration))
            # line 2: roll out with the online target; FIFO buffer (RTGs as conditioned, never relabeled)
            rollouts = rollout_episodes(policy, envs, task, online_rtg, context_length=config.context_length,
                                        seeds=episode_seeds(config, iteration, config.trajectories_per_iteration),
                                        mode="sample", device=device)
            for rollout in rollouts:
                buffer.add(rollout.to_trajectory(), rollout_extra(rollout))
            loop.clock.env_steps += sum(len(r) for r in rollouts)
            # line 9: TD3 critic on replayed transitions (K+1-step windows hold s_{t+1} and its context)
            sampler = WindowSampler(buffer, context + 1, policy.reward_scale, policy.normalizer, rng, rtg="recorded")
            stats = critic_updates(learner, sampler, config, device)
            if iteration > config.critic_warmup_iterations:  # lines 3-8
                stats += policy_updates(policy, learner, buffer, config, segment_length, history_length, rng, device)
            loop.clock.grad_updates += len(stats)
            loop.end_iteration({"charts/learning_rate": learning_rate, **merged_means(stats),
                                **rollout_charts(rollouts)})
        return loop.finish()
