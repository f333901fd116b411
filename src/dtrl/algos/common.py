"""Pieces every online finetuning loop shares (stable-baselines3 style, kept small): seeding and RNG
state, the trajectory FIFO buffer (ODT, PPO, GRPO-Q), the transition replay buffer (TD3 and IQL
critics), the run-directory glue (create or resume, checkpoint, evaluation schedule) and loading the
``--init`` policy. The loops themselves stay in their own files so each reads top to bottom.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch

from dtrl.config import CommonConfig, to_dict
from dtrl.data.trajectory import Trajectory
from dtrl.errors import DtrlError


# ----------------------------------------------------------------------------------------------
# Seeding (global RNG states are checkpointed by RunDir; the loop's own Generator is saved by us)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return the numpy Generator the loop draws its samples from."""
    from dtrl.runs import seed_everything as seed_globals

    seed_globals(seed)
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# Buffers


class TrajectoryBuffer:
    """FIFO buffer of whole trajectories, sampled with probability proportional to their length
    (ODT's replay buffer; Algorithm 1/2 line 3).

    ODT seeds it with the top offline trajectories by return and then replaces the oldest entries by
    online ones; PPO and GRPO-Q use it empty-started as a plain FIFO of recent rollouts.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise DtrlError(f"trajectory buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.trajectories: list[Trajectory] = []
        self.extras: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def num_transitions(self) -> int:
        return sum(len(t) for t in self.trajectories)

    def add(self, trajectory: Trajectory, extra: dict[str, np.ndarray] | None = None) -> None:
        """Append one trajectory (with optional per-step arrays, e.g. sampling-time log-probs and
        RTGs); the oldest is dropped once the buffer is full."""
        if len(trajectory) == 0:
            return
        self.trajectories.append(trajectory)
        self.extras.append(extra or {})
        if len(self.trajectories) > self.capacity:
            del self.trajectories[0]
            del self.extras[0]

    def seed_with_top(self, trajectories: Sequence[Trajectory]) -> None:
        """Fill the buffer with the ``capacity`` highest-return trajectories, in increasing order of
        return so the FIFO replaces the worst ones first (ODT)."""
        ranked = sorted(trajectories, key=lambda t: t.episode_return)
        for trajectory in ranked[-self.capacity:]:
            self.add(trajectory)

    def sample_indices(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of ``count`` trajectories drawn with replacement, p(tau) = |tau| / sum |tau'|."""
        if not self.trajectories:
            raise DtrlError("cannot sample from an empty trajectory buffer")
        lengths = np.array([len(t) for t in self.trajectories], dtype=np.float64)
        return rng.choice(len(lengths), size=count, replace=True, p=lengths / lengths.sum())

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "trajectories": [_trajectory_to_dict(t) for t in self.trajectories],
                "extras": self.extras}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.trajectories = [_trajectory_from_dict(d) for d in state["trajectories"]]
        self.extras = list(state["extras"])


def _trajectory_to_dict(t: Trajectory) -> dict:
    return {"observations": t.observations, "actions": t.actions, "rewards": t.rewards,
            "terminated": t.terminated, "truncated": t.truncated}


def _trajectory_from_dict(d: dict) -> Trajectory:
    return Trajectory(np.asarray(d["observations"]), np.asarray(d["actions"]), np.asarray(d["rewards"]),
                      bool(d["terminated"]), bool(d["truncated"]))


class ReplayBuffer:
    """Ring buffer of transitions (s, a, r, s', done) for TD3 / IQL critics.

    ``done`` is 1 only for true terminations: a time-limit cut still bootstraps from s'. The last
    step of a truncated trajectory has no recorded s' in a D4RL-layout dataset; it is kept out of the
    buffer unless the caller passes ``final_observation``.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        if capacity < 1:
            raise DtrlError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.observations = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.next_observations = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add_batch(self, obs, actions, rewards, next_obs, dones) -> None:
        count = len(rewards)
        if count > self.capacity:  # only the newest `capacity` transitions survive anyway
            obs, actions, rewards, next_obs, dones = (x[-self.capacity:] for x in (obs, actions, rewards, next_obs, dones))
            count = self.capacity
        idx = (self.position + np.arange(count)) % self.capacity
        self.observations[idx] = obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.next_observations[idx] = next_obs
        self.dones[idx] = dones
        self.position = int((self.position + count) % self.capacity)
        self.size = int(min(self.size + count, self.capacity))

    def add_trajectory(self, trajectory: Trajectory, final_observation: np.ndarray | None = None,
                       reward_transform=None) -> None:
        """Add the transitions of one trajectory. ``final_observation`` is s' after the last action
        (needed to keep the last transition of a time-limit-truncated episode)."""
        T = len(trajectory)
        if T == 0:
            return
        obs = trajectory.observations
        rewards = trajectory.rewards if reward_transform is None else reward_transform(trajectory.rewards)
        dones = np.zeros(T, dtype=np.float32)
        if trajectory.terminated:
            dones[-1] = 1.0
            last = obs[-1] if final_observation is None else final_observation  # unused: done masks it
            next_obs = np.concatenate([obs[1:], np.asarray(last, np.float32)[None]], axis=0)
            keep = T
        elif final_observation is not None:
            next_obs = np.concatenate([obs[1:], np.asarray(final_observation, np.float32)[None]], axis=0)
            keep = T
        else:
            next_obs = obs[1:]
            keep = T - 1
        self.add_batch(obs[:keep], trajectory.actions[:keep], rewards[:keep], next_obs[:keep], dones[:keep])

    def sample(self, batch_size: int, rng: np.random.Generator, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise DtrlError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)
        as_tensor = lambda x: torch.as_tensor(x[idx], device=device)  # noqa: E731
        return {"observations": as_tensor(self.observations), "actions": as_tensor(self.actions),
                "rewards": as_tensor(self.rewards), "next_observations": as_tensor(self.next_observations),
                "dones": as_tensor(self.dones)}

    def state_dict(self) -> dict:
        n = self.size
        # Stored in insertion order, oldest first, so a reload keeps the FIFO order.
        order = (np.arange(n) + (self.position if n == self.capacity else 0)) % self.capacity
        return {"capacity": self.capacity, "observations": self.observations[order], "actions": self.actions[order],
                "rewards": self.rewards[order], "next_observations": self.next_observations[order],
                "dones": self.dones[order]}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.size = 0, 0
        self.add_batch(state["observations"], state["actions"], state["rewards"], state["next_observations"], state["dones"])


# ----------------------------------------------------------------------------------------------
# Small torch helpers


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """Polyak averaging: target <- tau * source + (1 - tau) * target."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)


def grad_norm_clip(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    params = [p for p in parameters if p.grad is not None]
    if not params or max_norm <= 0:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


# ----------------------------------------------------------------------------------------------
# Run-directory glue


@dataclass
class Clock:
    """Wall time, env steps and gradient updates so far; checkpointed, so all three continue across
    a resume (``wall_time_s`` counts only time spent running, not the gap before the resume)."""

    wall_time_s: float = 0.0
    env_steps: int = 0
    grad_updates: int = 0

    def __post_init__(self) -> None:
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self.wall_time_s + time.perf_counter() - self._started

    def state_dict(self) -> dict:
        return {"wall_time_s": self.elapsed(), "env_steps": self.env_steps, "grad_updates": self.grad_updates}

    def load_state_dict(self, state: dict) -> None:
        self.wall_time_s = float(state["wall_time_s"])
        self.env_steps = int(state["env_steps"])
        self.grad_updates = int(state["grad_updates"])
        self._started = time.perf_counter()


def open_run(config: Any, algo: str):
    """Create ``config.out`` (config.json with ``algo`` set) or, with ``--resume``, reopen it.

    Returns ``(run, state)``: ``state`` is the last checkpoint's dict (None for a fresh run); loading
    it restores the global RNGs, so call this after the models are built."""
    from dtrl.runs import RunDir

    run = RunDir.open(config.out, {**to_dict(config), "algo": algo}, resume=config.resume, force=config.force)
    state = run.load_state() if config.resume else None
    if state is not None and state.get("algo") not in (None, algo):
        run.close()
        raise DtrlError(f"--resume: {config.out} holds a {state.get('algo')} run, not {algo}")
    return run, state


def training_state(algo: str, iteration: int, rng: np.random.Generator, clock: Clock, rng_key: str = "rng",
                   **components: Any) -> dict:
    """The checkpoint dict of a training loop: ``algo``, ``iteration``, each component's
    ``state_dict()`` under its keyword (None for a component that is None), the clock and the numpy
    generator's state (under ``rng_key``)."""
    return {"algo": algo, "iteration": iteration,
            **{key: None if part is None else part.state_dict() for key, part in components.items()},
            "clock": clock.state_dict(), rng_key: rng.bit_generator.state}


def restore_training_state(state: dict, rng: np.random.Generator, clock: Clock, rng_key: str = "rng",
                           **components: Any) -> int:
    """Load a :func:`training_state` dict back into the components (None ones skipped), the clock
    and the generator; returns the iteration to resume from."""
    for key, part in components.items():
        if part is not None:
            part.load_state_dict(state[key])
    clock.load_state_dict(state["clock"])
    rng.bit_generator.state = state[rng_key]
    return int(state["iteration"]) + 1


def evaluation_due(iteration: int, total_iterations: int, eval_every: int, stopping: bool = False) -> bool:
    """Evaluate every ``eval_every`` iterations (1-based) and always after the last one (the planned
    last, or the one a ``--time-limit-s`` stops at: ``stopping``)."""
    return stopping or iteration == total_iterations or (eval_every > 0 and iteration % eval_every == 0)


def checkpoint_due(iteration: int, total_iterations: int, checkpoint_every: int, stopping: bool = False) -> bool:
    return stopping or iteration == total_iterations or iteration % checkpoint_every == 0


def out_of_time(clock: Clock, time_limit_s: float) -> bool:
    """True once the run has trained for ``time_limit_s`` seconds (0: no limit). Loops check it after
    each iteration's updates, then evaluate, checkpoint and stop: the equal-wall-clock comparisons of
    benchmarks/bench_table1.py use it."""
    return time_limit_s > 0 and clock.elapsed() >= time_limit_s


def iteration_metrics(iteration: int, clock: Clock, **metrics: Any) -> dict:
    """One metrics.jsonl row: the contract keys first, then the algorithm's own."""
    row: dict[str, Any] = {"iteration": iteration, "env_steps": clock.env_steps, "grad_updates": clock.grad_updates,
                           "wall_time_s": round(clock.elapsed(), 3)}
    for key, value in metrics.items():
        row[key] = float(value.detach().cpu()) if isinstance(value, torch.Tensor) else value
    return row


def load_init_policy(init: str | None, task, device: str):
    """The pretrained DT (``--init RUN`` or a policy dir) as ``LoadedPolicy``; one-line errors."""
    if not init:
        raise DtrlError("--init is required: a pretrained DT run directory or policy directory (dtrl pretrain)")
    from dtrl.models.checkpoint import load_policy

    return load_policy(init, task=task, device=device)


def load_offline_dataset(source: str | None, task, required: bool):
    """``--dataset FILE|MINARI_ID`` as ``dtrl.data.Dataset`` (None when not given and not required)."""
    if not source:
        if required:
            raise DtrlError("--dataset is required for this algorithm: a D4RL .hdf5 file or a Minari dataset id")
        return None
    from dtrl.data import load_dataset

    return load_dataset(source, task)


# ----------------------------------------------------------------------------------------------
# What every Decision-Transformer finetuning loop (PPO-DT, GRPO-Q, ODT, ODT+TD3) shares


@dataclass
class DTFinetuneConfig(CommonConfig):
    """Options shared by the algorithms that finetune a pretrained DT (``--init``)."""

    init: str | None = None
    """pretrained DT: a `dtrl pretrain` run directory or a policy directory (required)"""
    dataset: str | None = None
    """offline data (.hdf5 or Minari id): seeds ODT/ODT+TD3's buffers; accepted and ignored by PPO/GRPO-Q"""
    iterations: int = 10
    """online iterations (paper: 'iteration' of Algorithm 1/2 line 1)"""
    learning_rate: float = 5e-5
    """actor learning rate (paper Table 6 lr_a)"""
    weight_decay: float = 1e-4
    """actor decoupled weight decay (Table 5)"""
    grad_clip: float = 0.5
    """actor gradient-norm clip (Table 5; 0 disables)"""
    optimizer: Literal["lamb", "adamw"] = "lamb"
    """actor optimiser: LAMB (Table 5) or AdamW"""
    init_temperature: float | None = None
    """entropy temperature at the start of finetuning (Table 6 ETPR); None keeps the pretrained one"""
    temperature_learning_rate: float = 1e-4
    """Adam learning rate of the log-temperature (target entropy -dim(A)); 0 freezes the temperature"""
    online_rtg: float | None = None
    """target RTG of online rollouts (default: the task's, Table 6 'RTG')"""
    eval_rtg: float | None = None
    """target RTG of evaluation rollouts (default: the online RTG for methods trained without hindsight
    relabeling (GRPO-DT, PPO-DT, Q-guided GRPO), the task's eval target for ODT and ODT+TD3)"""
    time_limit_s: float = 0.0
    """stop after the iteration during which this many seconds of training passed; that iteration is
    evaluated, checkpointed and its policy saved, as a last one would be (0: no limit; for
    equal-wall-clock comparisons)"""
    threads: int = 0
    """torch CPU threads (0: torch's default, one per core; 1 is much faster for small models on a
    busy or 2-core machine)"""

    def validate(self) -> None:
        super().validate()
        if self.threads < 0:
            raise DtrlError(f"threads must be >= 0, got {self.threads}")
        if self.time_limit_s < 0:
            raise DtrlError(f"time-limit-s must be >= 0, got {self.time_limit_s}")
        if self.iterations < 1:
            raise DtrlError(f"iterations must be >= 1, got {self.iterations}")
        if not self.learning_rate > 0:
            raise DtrlError(f"learning-rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.temperature_learning_rate < 0:
            raise DtrlError("weight-decay, grad-clip and temperature-learning-rate must be >= 0")
        if self.init_temperature is not None and not self.init_temperature > 0:
            raise DtrlError(f"init-temperature must be > 0, got {self.init_temperature}")

    def evaluates_at_online_rtg(self) -> bool:
        """Whether the default evaluation RTG is g_online: true for methods that never relabel."""
        return False


@dataclass
class TD3CriticConfig(DTFinetuneConfig):
    """TD3 twin-critic settings shared by ODT+TD3 and GRPO-Q (each adds its own policy_noise and
    policy_delay)."""

    gamma: float = 0.99
    """TD3 discount"""
    tau: float = 0.005
    """Polyak rate of the target DT and target critics"""
    noise_clip: float = 0.5
    """c: the smoothing noise is clipped to [-c, c]"""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics"""
    critic_hidden_dim: int | None = None
    """critic MLP width (default: 256 MuJoCo, 512 otherwise)"""
    critic_layer_norm: bool | None = None
    """LayerNorm in the critics (default: on Adroit and AntMaze)"""


def prepare_policy(config: DTFinetuneConfig, task, device: str):
    """Load ``--init``, check it is a stochastic DT (RL finetuning needs likelihoods), set the initial
    temperature, and put the model in eval mode: finetuning disables dropout (Table 5), and eval
    mode only affects dropout here, gradients still flow. Sets ``--threads`` first."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    policy = load_init_policy(config.init, task, device)
    model = policy.model.to(device)
    if not getattr(model, "stochastic", True):
        raise DtrlError(f"{config.init} holds a deterministic DT (--model.policy deterministic); online finetuning "
                        "needs a Gaussian policy head (pretrain with --loss odt)")
    if config.init_temperature is not None:
        with torch.no_grad():
            model.log_temperature.fill_(float(np.log(config.init_temperature)))
    model.eval()
    return policy


def build_dt_optimizers(config: DTFinetuneConfig, model):
    """(actor optimiser over everything but the log-temperature, the log-temperature's Adam or None)."""
    params = [p for p in model.policy_parameters() if p.requires_grad]
    if config.optimizer == "lamb":
        from dtrl.optim import Lamb

        actor = Lamb(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        actor = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    temperature = (torch.optim.Adam([model.log_temperature], lr=config.temperature_learning_rate)
                   if config.temperature_learning_rate > 0 else None)
    return actor, temperature


def online_targets(config: DTFinetuneConfig, task) -> tuple[float, float]:
    """(online RTG, evaluation RTG): the config's overrides, else the task's Table 6 values.

    A method that never relabels trains its policy only on RTG tokens that descend from g_online, so it
    is evaluated at g_online (the paper's Table 6 gives GRPO-DT one RTG); ODT relabels with achieved
    returns, so its policy is evaluated at the task's lower eval target (ODT's convention)."""
    online = float(task.online_rtg if config.online_rtg is None else config.online_rtg)
    if config.eval_rtg is not None:
        return online, float(config.eval_rtg)
    return online, online if config.evaluates_at_online_rtg() else float(task.eval_rtg)


def evaluate_policy(policy, task, config: DTFinetuneConfig, eval_rtg: float, device: str,
                    context_length: int | None = None) -> dict:
    """Mean-action evaluation on fixed seeds disjoint from the training seeds (``context_length``:
    the short online context of ``dtrl.rollout.rollout_episodes``, None for the model's own window)."""
    from dtrl.evaluation import evaluate

    return evaluate(policy, task, episodes=config.eval_episodes, target_rtg=eval_rtg, seed=10_000 + config.seed,
                    device=device, context_length=context_length)


def log_initial_evaluation(run, clock: Clock, policy, task, config: DTFinetuneConfig, eval_rtg: float,
                           device: str, context_length: int | None = None) -> None:
    """Iteration 0 of a fresh run's learning curve: the init policy, evaluated exactly as later
    iterations are, so every finetuning curve starts from the score of the DT it finetunes."""
    if config.eval_every > 0:
        run.log(iteration_metrics(0, clock, **evaluate_policy(policy, task, config, eval_rtg, device,
                                                              context_length)))


def episode_seeds(config: CommonConfig, iteration: int, count: int) -> list[int]:
    """Distinct env reset seeds for the ``count`` rollouts of ``iteration`` (reproducible per run seed)."""
    base = 1_000_000 * (config.seed + 1) + count * iteration
    return [base + i for i in range(count)]


def end_of_iteration(run, algo: str, iteration: int, config: DTFinetuneConfig, clock: Clock, policy, task,
                     eval_rtg: float, device: str, rollouts, losses: dict, charts: dict | None = None,
                     state: Callable[[], dict] | None = None) -> tuple[bool, dict]:
    """The tail of a DT finetuning iteration: check the time limit, evaluate when due, log the row
    (losses, evaluation, the rollouts' mean return and length, ``charts``), save the policy and the
    checkpoint ``state()`` builds when due. Returns ``(stopping, evaluation)``."""
    stopping = out_of_time(clock, config.time_limit_s)
    evaluation = (evaluate_policy(policy, task, config, eval_rtg, device)
                  if evaluation_due(iteration, config.iterations, config.eval_every, stopping) else {})
    run.log(iteration_metrics(
        iteration, clock, **losses, **evaluation,
        **{"charts/episodic_return": float(np.mean([r.episode_return for r in rollouts])),
           "charts/episode_length": float(np.mean([len(r) for r in rollouts])), **(charts or {})}))
    if checkpoint_due(iteration, config.iterations, config.checkpoint_every, stopping):
        run.save_policy(policy.model, policy.normalizer, task.name,
                        extra={"algo": algo, "iteration": iteration, "eval_rtg": eval_rtg})
        run.save_state(state(), iteration)
    return stopping, evaluation


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average per-update metric dicts into one row (keys of the first row)."""
    if not rows:
        return {}
    return {key: float(np.mean([row[key] for row in rows if key in row])) for key in rows[0]}


class WindowSampler:
    """K-step windows over a ``TrajectoryBuffer`` (trajectories drawn ∝ length, then the window's
    last step uniformly), like ``dtrl.data.SequenceSampler`` but also carrying the per-step arrays
    stored with each trajectory (``extra``: sampling-time RTGs, log-probs ...) and ``dones`` (True
    at the last step of a terminated trajectory), which the critic-based loops need.

    ``rtg``: 'recorded' uses the stored ``extra['returns_to_go']`` (the RTG the policy was
    conditioned on: PPO, GRPO-Q never relabel); 'hindsight' recomputes g_t = sum_{t'>=t} r_t' from
    the rewards (ODT's relabeling, used by ODT+TD3). Returned RTGs are divided by ``reward_scale``.
    """

    def __init__(self, buffer: TrajectoryBuffer, context_length: int, reward_scale: float, normalizer,
                 rng: np.random.Generator, rtg: Literal["recorded", "hindsight"]):
        trajectories = buffer.trajectories
        self.context_length = context_length
        self.rng = rng
        self.lengths = np.array([len(t) for t in trajectories], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.fields: dict[str, np.ndarray] = {
            "states": normalizer.normalize(np.concatenate([t.observations for t in trajectories]).astype(np.float32)),
            "actions": np.concatenate([t.actions for t in trajectories]).astype(np.float32),
            "rewards": np.concatenate([t.rewards for t in trajectories]).astype(np.float32),
            "timesteps": np.concatenate([np.arange(n, dtype=np.int64) for n in self.lengths]),
        }
        dones = np.zeros(int(self.lengths.sum()), dtype=np.float32)
        for start, trajectory in zip(self.starts, trajectories):
            dones[start + len(trajectory) - 1] = float(trajectory.terminated)
        self.fields["dones"] = dones
        if rtg == "hindsight":
            raw_rtg = np.concatenate([t.returns_to_go() for t in trajectories])
        else:
            if any("returns_to_go" not in extra for extra in buffer.extras):
                raise DtrlError("rtg='recorded' needs every buffered trajectory stored with its returns_to_go")
            raw_rtg = np.concatenate([extra["returns_to_go"] for extra in buffer.extras])
        self.fields["returns_to_go"] = (np.asarray(raw_rtg, np.float64) / reward_scale).astype(np.float32)
        for key in (buffer.extras[0].keys() if buffer.extras else ()):
            if key != "returns_to_go" and all(key in extra for extra in buffer.extras):
                self.fields[key] = np.concatenate([extra[key] for extra in buffer.extras])

    def sample(self, batch_size: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        traj = self.rng.choice(len(self.lengths), size=batch_size, p=self.lengths / self.lengths.sum())
        end = np.minimum((self.rng.random(batch_size) * self.lengths[traj]).astype(np.int64), self.lengths[traj] - 1)
        return self.gather(traj, end, device)

    def gather(self, traj: np.ndarray, end: np.ndarray, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Windows of K steps ending at step ``end[b]`` of trajectory ``traj[b]``, left-padded with
        zeros (``mask`` False)."""
        K = self.context_length
        local = np.asarray(end)[:, None] - K + 1 + np.arange(K)[None, :]
        mask = local >= 0
        flat = self.starts[np.asarray(traj)][:, None] + np.maximum(local, 0)
        batch = {}
        for key, values in self.fields.items():
            window = values[flat]
            window[~mask] = 0
            batch[key] = torch.as_tensor(window, device=device)
        batch["mask"] = torch.as_tensor(mask, device=device)
        return batch


def trajectory_segments(trajectory: Trajectory, extra: dict[str, np.ndarray], segment_length: int,
                        history_length: int) -> list[tuple[Any, slice]]:
    """Cut one buffered trajectory into consecutive ``dtrl.rollout.Segment``s of ``segment_length``
    steps, each carrying the ``history_length`` steps before it as context, so that
    ``segments_to_batch(...).log_probs(model)`` reproduces the sampling-time log-probs when
    ``history_length >= model.receptive_field``. Returns (segment, slice of its steps) pairs;
    ``extra`` must hold the recorded ``returns_to_go`` and ``log_probs``."""
    from dtrl.rollout import Segment, TokenHistory

    rtg = np.asarray(extra["returns_to_go"], np.float32)
    log_probs = np.asarray(extra["log_probs"], np.float32)
    timesteps = np.arange(len(trajectory), dtype=np.int64)
    pieces = []
    for start in range(0, len(trajectory), segment_length):
        steps = slice(start, min(start + segment_length, len(trajectory)))
        first = max(0, start - history_length)
        history = TokenHistory(trajectory.observations[first:start], trajectory.actions[first:start],
                               rtg[first:start], timesteps[first:start])
        pieces.append((Segment(history=history, observations=trajectory.observations[steps],
                               actions=trajectory.actions[steps], returns_to_go=rtg[steps],
                               timesteps=timesteps[steps], log_probs=log_probs[steps],
                               rewards=trajectory.rewards[steps]), steps))
    return pieces


def scatter_steps(per_segment: Sequence[np.ndarray], width: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """[B, width] tensor holding each segment's per-step values at its (right-aligned, since
    ``segments_to_batch`` left-pads) training positions, 0 elsewhere."""
    out = np.zeros((len(per_segment), width), np.float32)
    for row, values in enumerate(per_segment):
        if len(values):
            out[row, width - len(values):] = values
    return torch.as_tensor(out, device=device)


def rollout_extra(rollout) -> dict[str, np.ndarray]:
    """What PPO / GRPO-Q keep per step beside the trajectory: the RTG the policy was conditioned on
    and the sampling-time log-prob (never relabeled, never recomputed)."""
    return {"returns_to_go": rollout.returns_to_go.astype(np.float32), "log_probs": rollout.log_probs.astype(np.float32)}
