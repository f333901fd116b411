"""IQL: Implicit Q-Learning (Kostrikov et al., 2021) — offline pretraining then online finetuning with
MLP actor and critics. The non-Decision-Transformer baseline of Table 1.

    dtrl finetune --algo iql --task hopper-random --dataset data/hopper-random.hdf5 --out runs/iql

Per gradient step, on a batch of transitions (s, a, r, s', done):

    V:   L_V = E[ L2^τ( min(Q1_targ, Q2_targ)(s, a) - V(s) ) ]          expectile τ (upper expectile of Q)
    Q:   L_Q = E[ (r + γ (1 - done) V(s') - Q_i(s, a))² ]  for i = 1, 2    no max over actions: in-sample
    π:   L_π = -E[ exp(β (Q_targ(s, a) - V(s))) ∧ 100 · log π(a | s) ]      advantage-weighted regression
    Q_targ <- polyak(Q, 0.005)

Offline phase (``--offline-steps``) samples the dataset; the online phase (``--iterations``) then
steps one environment with actions sampled from π, adds each transition to the same replay buffer
(offline + online data, as IQL's finetuning does) and takes ``updates_per_env_step`` gradient steps
per environment step. Rewards are transformed as in the IQL code: locomotion rewards are scaled by
1000 / (max - min dataset episode return), AntMaze rewards are shifted by -1, Adroit rewards are
used as they are.

Metrics: iteration 0 is the end of the offline phase; iteration i >= 1 is after i·env_steps_per_iteration
online steps. The actor is saved to RUN/policy (``model.safetensors`` + ``model.json`` with
``"architecture": "iql-mlp"`` + ``normalizer.json``, ``dtrl.models.checkpoint.save_actor``); ``dtrl eval
RUN`` evaluates it like any policy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from dtrl.algos.buffers import ReplayBuffer
from dtrl.algos.dt_finetune import load_offline_dataset, soft_update
from dtrl.algos.run_loop import (
    RunLoop,
    evaluate_policy,
    iteration_metrics,
    mean_metrics,
    scheduled_learning_rate,
    set_learning_rate,
    training_state,
)
from dtrl.config import CommonConfig, parse_config, resolve_device
from dtrl.data import StateNormalizer
from dtrl.envs import make
from dtrl.errors import DtrlError
from dtrl.models.checkpoint import LoadedActor, save_actor
from dtrl.models.critics import TwinQ, ValueNet, build_actor
from dtrl.objectives import expectile_loss
from dtrl.runs import seed_everything
from dtrl.tasks import Task, get_task

# The online phase's env reset seeds: episode k of a run with seed s is reset with
# ONLINE_SEED_STRIDE * s + k (a prime stride, so runs with different seeds never share an episode).
ONLINE_SEED_STRIDE = 1_000_003

ALGO = "iql"


@dataclass
class IQLConfig(CommonConfig):
    """IQL offline pretraining + online finetuning (MLP actor/critics; takes no DT checkpoint)."""

    dataset: str | None = None
    """offline data: a D4RL-layout .hdf5 file or a Minari dataset id (required)"""
    init: str | None = None
    """not used by IQL (it trains its own MLP actor from the dataset); giving it is an error"""
    offline_steps: int = 5_000
    """gradient steps of offline pretraining before any environment interaction"""
    iterations: int = 10
    """online iterations, each env_steps_per_iteration environment steps"""
    env_steps_per_iteration: int = 1_000
    """environment steps per online iteration (one metrics row each)"""
    updates_per_env_step: int = 1
    """gradient steps per online environment step (IQL finetuning: 1)"""
    batch_size: int = 256
    """transitions per gradient step"""
    hidden_dim: int = 256
    """width of the actor, Q and V MLPs"""
    n_layers: int = 2
    """hidden layers of each MLP"""
    learning_rate: float = 3e-4
    """Adam learning rate of the actor, the twin Q and V (the official code: 3e-4 for all three)"""
    learning_rate_schedule: Literal["constant", "linear"] = "constant"
    """'linear': online, every network's learning rate falls linearly to 0 at the last of ``iterations``
    (the tuning grid's second axis, as for every method; the offline phase keeps learning_rate)"""
    actor: Literal["gaussian", "tanh-gaussian"] = "gaussian"
    """'gaussian': N(tanh(mu(s)), state-independent std), the official IQL actor; 'tanh-gaussian': a
    tanh-squashed Gaussian with state-dependent std (dtrl's earlier actor; its log-prob of dataset
    actions near +-1 is huge, which skews the advantage-weighted regression)"""
    actor_cosine_schedule: bool = False
    """cosine-decay the actor's learning rate to 0 over the offline phase (IQL's offline recipe); the
    online phase then restarts at learning_rate. Off by default: the official finetuning config does not
    decay it (opt_decay_schedule None)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target Q networks"""
    expectile: float = 0.7
    """τ of the expectile value loss (0.7 MuJoCo and Adroit, 0.9 AntMaze)"""
    temperature: float = 3.0
    """β, inverse temperature of the advantage weights (3.0 MuJoCo, 10 AntMaze, 0.5 Adroit)"""
    max_weight: float = 100.0
    """clip of the advantage weight exp(β·A)"""
    actor_dropout: float = 0.0
    """dropout in the actor MLP (IQL used 0.1 on Adroit)"""
    reward_transform: Literal["auto", "locomotion", "antmaze", "none"] = "auto"
    """'auto' picks by domain: locomotion (×1000/return range), antmaze (r - 1), none (Adroit)"""
    replay_capacity: int = 2_000_000
    """transitions kept in the replay buffer (offline data first, then online, FIFO)"""
    threads: int = 0
    """torch CPU threads (0: torch's default, one per core). The cpu presets use 1: their small models ran
    up to 35x slower with torch's default on a 2-core machine running another job (2 PPO-DT iterations:
    95 s against 3.8 s)"""
    time_limit_s: float = 0.0
    """stop the online phase after the iteration during which this many seconds of online training
    passed, with a final evaluation (0: no limit). The offline phase is not counted: it plays the
    part of the DT methods' pretraining"""

    def validate(self) -> None:
        super().validate()
        if self.init:
            raise DtrlError("IQL takes no --init: it pretrains its own MLP actor from --dataset (--offline-steps)")
        for name in ("iterations", "env_steps_per_iteration", "updates_per_env_step", "batch_size", "hidden_dim",
                     "n_layers", "replay_capacity"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.time_limit_s < 0:
            raise DtrlError(f"time-limit-s must be >= 0, got {self.time_limit_s}")
        if self.offline_steps < 0:
            raise DtrlError(f"offline-steps must be >= 0, got {self.offline_steps}")
        if not 0.0 < self.expectile < 1.0:
            raise DtrlError(f"expectile must be in (0, 1), got {self.expectile}")
        if self.threads < 0:
            raise DtrlError(f"threads must be >= 0, got {self.threads}")
        if not self.learning_rate > 0:
            raise DtrlError(f"learning-rate must be > 0, got {self.learning_rate}")
        if self.temperature <= 0 or self.max_weight <= 0:
            raise DtrlError("temperature and max-weight must be > 0")
        if not 0.0 < self.tau <= 1.0 or not 0.0 < self.gamma <= 1.0:
            raise DtrlError("tau and gamma must be in (0, 1]")


def _domain_settings(task: Task) -> dict:
    """IQL's hyperparameters per domain (expectile τ, temperature β, actor dropout): the IQL paper's for
    MuJoCo and AntMaze, CORL's finetuning configs for Adroit."""
    if task.domain == "antmaze":
        return dict(expectile=0.9, temperature=10.0)
    if task.domain == "adroit":  # CORL's finetuning configs (door, hammer, pen, relocate)
        return dict(expectile=0.8, temperature=3.0, actor_dropout=0.1)
    return dict(expectile=0.7, temperature=3.0)


def cpu_preset(task_name: str) -> IQLConfig:
    task = get_task(task_name)
    return IQLConfig(task=task_name, preset="cpu", threads=1, offline_steps=5_000, iterations=10,
                     env_steps_per_iteration=1_000, eval_every=5, eval_episodes=5, **_domain_settings(task))


def paper_preset(task_name: str) -> IQLConfig:
    # IQL finetuning: 1M offline steps then 1M online steps with one update per step.
    task = get_task(task_name)
    return IQLConfig(task=task_name, preset="paper", offline_steps=1_000_000, iterations=1_000,
                     env_steps_per_iteration=1_000, eval_every=10, eval_episodes=10, **_domain_settings(task))


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


# ----------------------------------------------------------------------------------------------
# The IQL losses (pure functions of network outputs: what the tests check by hand)


def value_loss(target_q: torch.Tensor, value: torch.Tensor, expectile: float) -> torch.Tensor:
    """L_V = E[L2^τ(Q_targ(s,a) - V(s))]: V regresses to the τ-expectile of Q over dataset actions."""
    return expectile_loss(target_q - value, expectile)


def q_target(rewards: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + γ(1 - done)V(s'): the in-sample Bellman target (V replaces max_a Q)."""
    return (rewards + gamma * (1.0 - dones) * next_value).detach()


def advantage_weights(target_q: torch.Tensor, value: torch.Tensor, temperature: float,
                      max_weight: float) -> torch.Tensor:
    """exp(β(Q - V)) clipped at ``max_weight`` (AWR weights; no gradient)."""
    return torch.exp(temperature * (target_q - value)).clamp(max=max_weight).detach()


def reward_transform_for(kind: str, task: Task, trajectories) -> tuple[str, float, float]:
    """(kind, scale, shift) with r' = r * scale + shift, resolved from ``kind`` and the dataset."""
    if kind == "auto":
        kind = {"antmaze": "antmaze", "adroit": "none"}.get(task.domain, "locomotion")
    if kind == "antmaze":
        return kind, 1.0, -1.0
    if kind == "none":
        return kind, 1.0, 0.0
    returns = np.array([t.episode_return for t in trajectories], dtype=np.float64)
    spread = float(returns.max() - returns.min())
    return kind, (1000.0 / spread if spread > 1e-6 else 1.0), 0.0


# ----------------------------------------------------------------------------------------------
# Networks


class IQLAgent(torch.nn.Module):
    """Actor π(a|s), twin Q(s,a) with a target copy, and V(s); ReLU MLPs as in the IQL paper."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, n_layers: int, actor_dropout: float,
                 actor: str = "gaussian"):
        super().__init__()
        self.actor = build_actor(actor, obs_dim, act_dim, hidden_dim, n_layers, actor_dropout)
        self.q = TwinQ(obs_dim, act_dim, hidden_dim=hidden_dim, n_layers=n_layers, activation="relu")
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = ValueNet(obs_dim, hidden_dim=hidden_dim, n_layers=n_layers, activation="relu")


# ----------------------------------------------------------------------------------------------
# The training loop


def parse(argv: list[str]) -> IQLConfig:
    """The run's config from the command line (a preset, then the overrides); validated, nothing run."""
    return parse_config(IQLConfig, argv, PRESETS, description=__doc__, prog="dtrl finetune --algo iql")


def main(argv: list[str]) -> int:
    train(parse(argv))
    return 0


class IQLLearner:
    """The agent, its three Adam optimisers and the actor's offline cosine schedule; one gradient step
    of IQL (V, actor, Q, Polyak) at a time."""

    def __init__(self, config: IQLConfig, obs_dim: int, act_dim: int, normalizer, device) -> None:
        self.config, self.normalizer = config, normalizer
        self.agent = IQLAgent(obs_dim, act_dim, config.hidden_dim, config.n_layers, config.actor_dropout,
                              config.actor).to(device)
        self.actor_opt = torch.optim.Adam(self.agent.actor.parameters(), lr=config.learning_rate)
        self.q_opt = torch.optim.Adam(self.agent.q.parameters(), lr=config.learning_rate)
        self.v_opt = torch.optim.Adam(self.agent.v.parameters(), lr=config.learning_rate)
        # --actor-cosine-schedule: IQL's offline recipe decays the actor's lr over the offline steps only
        self.actor_sched = None
        if config.actor_cosine_schedule and config.offline_steps > 0:
            self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, T_max=config.offline_steps)

    def components(self, replay: ReplayBuffer) -> dict:
        return dict(agent=self.agent, actor_opt=self.actor_opt, q_opt=self.q_opt, v_opt=self.v_opt, replay=replay)

    def set_learning_rate(self, learning_rate: float) -> None:
        for optimizer in (self.actor_opt, self.q_opt, self.v_opt):
            set_learning_rate(optimizer, learning_rate)

    def update(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """Gradient step number ``step`` (0-based, counting the offline ones) on a batch of transitions."""
        config, agent = self.config, self.agent
        obs = self.normalizer.normalize(batch["observations"])
        next_obs = self.normalizer.normalize(batch["next_observations"])
        actions = batch["actions"]
        with torch.no_grad():
            q1_t, q2_t = agent.q_target(obs, actions)
            target_q = torch.minimum(q1_t, q2_t)
            next_v = agent.v(next_obs)
        # V step: expectile regression towards the target Q of dataset actions.
        value = agent.v(obs)
        loss_v = value_loss(target_q, value, config.expectile)
        _step(loss_v, self.v_opt)
        # Actor step: advantage-weighted log-likelihood of dataset actions.
        weights = advantage_weights(target_q, value.detach(), config.temperature, config.max_weight)
        loss_pi = -(weights * agent.actor(obs).log_prob(actions)).mean()
        _step(loss_pi, self.actor_opt)
        if self.actor_sched is not None and step < config.offline_steps:
            self.actor_sched.step()
        # Q step: in-sample Bellman backup through V(s').
        target = q_target(batch["rewards"], batch["dones"], next_v, config.gamma)
        q1, q2 = agent.q(obs, actions)
        loss_q = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        _step(loss_q, self.q_opt)
        soft_update(agent.q_target, agent.q, config.tau)
        return {"losses/value": loss_v.item(), "losses/q": loss_q.item(), "losses/actor": loss_pi.item(),
                "charts/adv_weight_mean": weights.mean().item(), "charts/v_mean": value.mean().item()}

    def updates(self, replay: ReplayBuffer, count: int, clock, rng: np.random.Generator, device) -> list[dict]:
        stats = []
        for _ in range(count):
            stats.append(self.update(replay.sample(self.config.batch_size, rng, device), clock.grad_updates))
            clock.grad_updates += 1
        return stats

    def evaluate(self, task, device) -> dict:
        self.agent.actor.eval()  # the mean action without dropout
        try:
            return evaluate_policy(LoadedActor(self.agent.actor, self.normalizer, task.name), task, self.config,
                                   device=device)
        finally:
            self.agent.actor.train()


def _step(loss: torch.Tensor, optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@dataclass
class OnlineEpisode:
    """The one environment of the online phase and the episode running in it (checkpointed, so a
    resumed run continues the same episode from its exact simulator state)."""

    env: Any
    obs: np.ndarray | None = None
    episode_return: float = 0.0
    length: int = 0
    count: int = 0

    def state(self) -> dict:
        return {"env_snapshot": self.env.snapshot() if self.obs is not None else None,
                "episode": {"obs": self.obs, "return": self.episode_return, "length": self.length,
                            "count": self.count}}

    def restore(self, state: dict, seed: int) -> None:
        episode = state.get("episode")
        if episode is None:
            return
        self.count = episode["count"]  # also between episodes: the next one's reset seed follows from it
        if state.get("env_snapshot") is not None:
            self.env.reset(seed=seed)
            self.env.restore(state["env_snapshot"])
            self.obs = np.asarray(episode["obs"], np.float32)
            self.episode_return, self.length = episode["return"], episode["length"]

    def act_and_step(self, learner: IQLLearner, seed: int, device) -> tuple:
        """One env step with an action sampled from π (a new episode first if none runs); returns the
        transition and the finished episode's return (None while it runs)."""
        if self.obs is None:
            obs, _ = self.env.reset(seed=seed)
            self.obs, self.length, self.episode_return = np.asarray(obs, np.float32), 0, 0.0
        actor = learner.agent.actor
        with torch.no_grad():  # acting, as the official code, without dropout
            actor.eval()
            state_t = torch.as_tensor(learner.normalizer.normalize(self.obs[None]), device=device)
            action = actor(state_t).sample()[0].clamp(-1.0, 1.0).cpu().numpy()
            actor.train()
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        transition = (self.obs, action, reward, np.asarray(next_obs, np.float32), terminated)
        self.episode_return += float(reward)
        self.length += 1
        self.obs = transition[3]
        finished = None
        if terminated or truncated:
            finished = self.episode_return
            self.obs, self.count = None, self.count + 1
        return transition, finished


def online_iteration(episode: OnlineEpisode, learner: IQLLearner, replay: ReplayBuffer, transform, clock,
                     rng: np.random.Generator, device) -> tuple[list[dict], list[float]]:
    """env_steps_per_iteration env steps, each followed by updates_per_env_step gradient steps."""
    config = learner.config
    stats, finished_returns = [], []
    for _ in range(config.env_steps_per_iteration):
        (obs, action, reward, next_obs, terminated), finished = episode.act_and_step(
            learner, int(ONLINE_SEED_STRIDE * config.seed + episode.count), device)
        replay.add_batch(obs[None], action[None], transform([reward]), next_obs[None],
                         np.array([float(terminated)], np.float32))
        clock.env_steps += 1
        if finished is not None:
            finished_returns.append(finished)
        stats += learner.updates(replay, config.updates_per_env_step, clock, rng, device)
    return stats, finished_returns


def train(config: IQLConfig) -> dict:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    task = get_task(config.task)
    rng = seed_everything(config.seed)
    dataset = load_offline_dataset(config.dataset, task, required=True)
    normalizer = StateNormalizer.from_trajectories(dataset.trajectories)
    _, reward_scale, reward_shift = reward_transform_for(config.reward_transform, task, dataset.trajectories)
    transform = lambda r: np.asarray(r, np.float32) * reward_scale + reward_shift  # noqa: E731
    learner = IQLLearner(config, dataset.obs_dim, dataset.act_dim, normalizer, device)
    replay = ReplayBuffer(dataset.obs_dim, dataset.act_dim, config.replay_capacity)
    for trajectory in dataset.trajectories:
        replay.add_trajectory(trajectory, reward_transform=transform)
    episode = OnlineEpisode(make(task.name, seed=config.seed))

    def checkpoint(iteration: int) -> None:
        loop.run.save_state({**training_state(ALGO, iteration, rng, loop.clock, actor_sched=learner.actor_sched,
                                              **learner.components(replay)),
                             **episode.state(), "offline_seconds": loop.untimed_s}, iteration)
        save_actor(loop.run.path / "policy", learner.agent.actor, normalizer, task.name, dataset.obs_dim,
                   dataset.act_dim, config.hidden_dim, config.n_layers, config.actor_dropout, config.actor)

    with RunLoop(config, ALGO, rng, learner.components(replay), evaluate=lambda: learner.evaluate(task, device),
                 checkpoint=checkpoint, log_iteration_zero=False) as loop:
        loop.closing(episode.env)
        if loop.state is None:  # the offline phase is iteration 0; the time limit counts online training only
            stats = learner.updates(replay, config.offline_steps, loop.clock, rng, device)
            loop.last_evaluation = learner.evaluate(task, device)
            loop.run.log(iteration_metrics(0, loop.clock, **mean_metrics(stats), **loop.last_evaluation,
                                           **{"charts/reward_scale": reward_scale, "charts/replay_size": len(replay)}))
            loop.untimed_s = loop.clock.elapsed()
            set_learning_rate(learner.actor_opt, config.learning_rate)  # online from learning_rate (a decay ended at 0)
            checkpoint(0)
        else:
            if learner.actor_sched is not None and loop.state.get("actor_sched") is not None:
                learner.actor_sched.load_state_dict(loop.state["actor_sched"])
            loop.untimed_s = float(loop.state.get("offline_seconds", 0.0))
            episode.restore(loop.state, config.seed)
        for iteration in loop:  # one env step, then updates_per_env_step gradient steps, at a time
            learning_rate = scheduled_learning_rate(config, iteration)
            learner.set_learning_rate(learning_rate)
            stats, finished = online_iteration(episode, learner, replay, transform, loop.clock, rng, device)
            loop.end_iteration({**mean_metrics(stats),
                                "charts/episodic_return": float(np.mean(finished)) if finished else None,
                                "charts/episodes": len(finished), "charts/learning_rate": learning_rate})
        return loop.finish()
