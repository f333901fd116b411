"""Pieces every online finetuning loop shares (stable-baselines3 style, kept small): seeding, the
run-directory glue (create or resume, checkpoint, evaluation schedule, the end of an iteration), the
options and helpers of the Decision-Transformer finetuning loops (loading ``--init``, optimisers,
the optimiser and temperature steps), the ODT loss that ODT and ODT+TD3 share and the TD3 critic that
ODT+TD3 and Q-guided GRPO share. Buffers live in ``dtrl.algos.buffers``. The loops themselves stay
in their own files, one per algorithm, and do not import each other.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dtrl.config import CommonConfig, to_dict
from dtrl.data import load_dataset
from dtrl.errors import DtrlError
from dtrl.evaluation import evaluate
from dtrl.models.checkpoint import load_policy
from dtrl.models.critics import TwinQ, default_hidden_dim, default_layer_norm
from dtrl.objectives import masked_mean, td3_target
from dtrl.optim import Lamb
from dtrl.runs import BEST_POLICY_DIR, RunDir
from dtrl.runs import seed_everything as seed_globals

# Env reset seeds, so that evaluation never replays a training episode: evaluation episode i of a
# run with seed s uses EVAL_SEED_OFFSET + s + i (the same episodes at every evaluation, as
# ``dtrl eval --seed`` does); training episodes use TRAINING_SEED_STRIDE * (s + 1) + ..., far above.
EVAL_SEED_OFFSET = 10_000
TRAINING_SEED_STRIDE = 1_000_000


# ----------------------------------------------------------------------------------------------
# Seeding (global RNG states are checkpointed by RunDir; the loop's own Generator is saved by us)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return the numpy Generator the loop draws its samples from."""
    seed_globals(seed)
    return np.random.default_rng(seed)


def episode_seeds(config: CommonConfig, iteration: int, count: int, round_: int = 0) -> list[int]:
    """Distinct env reset seeds for the ``count`` rollouts of ``iteration`` (reproducible per run seed).
    A loop that collects several rounds per iteration gets fresh seeds for each later round, drawn
    from ``numpy.random.SeedSequence`` of (run seed, iteration, round): no arithmetic collisions."""
    if round_ > 0:
        return [int(s) for s in np.random.SeedSequence([config.seed, iteration, round_]).generate_state(count)]
    base = TRAINING_SEED_STRIDE * (config.seed + 1) + count * iteration
    return [base + i for i in range(count)]


# ----------------------------------------------------------------------------------------------
# Run-directory glue: create or resume, checkpoint, schedules, the metrics row


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


def open_run(config: Any, algo: str, init=None):
    """Create ``config.out`` (config.json with ``algo`` set) or, with ``--resume``, reopen it.

    Returns ``(run, state)``: ``state`` is the last checkpoint's dict (None for a fresh run); loading
    it restores the global RNGs, so call this after the models are built. ``init`` (the loaded
    pretrained policy) puts the digest of its weights in ``run_info.init_weights_sha256``: a path
    names a DT only on the machine that trained it, and ablations are paired by the DT they start from."""
    # RunDir.resume refuses another algorithm or task, and a finished run asked for nothing more,
    # before it writes anything
    run = RunDir.open(config.out, {**to_dict(config), "algo": algo}, resume=config.resume, force=config.force)
    if init is not None and init.meta.get("weights_sha256"):
        run.record_start_info(init_weights_sha256=init.meta["weights_sha256"])
    state = run.load_state() if config.resume else None
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
            if state.get(key) is None:
                raise DtrlError(f"--resume: the checkpoint has no {key} (the run was started without it); "
                                "resume it with the settings it was started with")
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
    """The pretrained DT (``--init RUN``, a policy dir or ``hf:DIR``) as ``LoadedPolicy``; one-line errors."""
    if not init:
        raise DtrlError("--init is required: a pretrained DT run or policy directory (dtrl pretrain), or hf:DIR")
    return load_policy(init, task=task, device=device)


def load_offline_dataset(source: str | None, task, required: bool):
    """``--dataset FILE|MINARI_ID`` as ``dtrl.data.Dataset`` (None when not given and not required)."""
    if not source:
        if required:
            raise DtrlError("--dataset is required for this algorithm: a D4RL .hdf5 file or a Minari dataset id")
        return None
    return load_dataset(source, task)


class StageTimer:
    """Wall time of the stages of one iteration, as ``time/<stage>_s`` metrics:
    ``with timer("update"): ...``."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{stage}_s"
            self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - started


def evaluate_policy(policy, task, config: CommonConfig, device: str, target_rtg: float | None = None,
                    context_length: int | None = None) -> dict:
    """In-run evaluation with the mean action on fixed seeds disjoint from the training seeds
    (``target_rtg`` and ``context_length``: see ``dtrl.evaluation.evaluate``)."""
    return evaluate(policy, task, episodes=config.eval_episodes, target_rtg=target_rtg,
                    seed=EVAL_SEED_OFFSET + config.seed, device=device, context_length=context_length,
                    num_threads=config.env_threads)


def evaluate_dt_policy(policy, task, config: DTFinetuneConfig, device: str, eval_rtg: float) -> dict:
    """A DT finetuning run's evaluation: at ``eval_rtg`` with the run's online context and, with
    ``--eval-other-rtg``, also at the other target RTG (keys ``eval_other_*``)."""
    evaluation = evaluate_policy(policy, task, config, device, eval_rtg, config.context_length)
    if config.eval_other_rtg:
        online, _ = online_targets(config, task)
        other = float(task.eval_rtg) if eval_rtg == online else online
        if other != eval_rtg:
            extra = evaluate_policy(policy, task, config, device, other, config.context_length)
            evaluation.update({key.replace("eval_", "eval_other_", 1): value for key, value in extra.items()})
    return evaluation


def log_initial_evaluation(run, clock: Clock, config: CommonConfig, evaluate_now: Callable[[], dict]) -> None:
    """Iteration 0 of a fresh run's learning curve: the init policy, evaluated exactly as later
    iterations are, so every finetuning curve starts from the score of the DT it finetunes."""
    if config.eval_every > 0:
        run.log(iteration_metrics(0, clock, **evaluate_now()))


def end_of_iteration(run, iteration: int, config, clock: Clock, metrics: dict, evaluate_now: Callable[[], dict],
                     checkpoint: Callable[[], None], on_evaluation: Callable[[dict], None] | None = None
                     ) -> tuple[bool, dict]:
    """The tail every online iteration shares, in this order: is the time limit reached
    (``stopping``); when an evaluation is due (every ``eval_every`` iterations and at the last one,
    planned or stopped at) ``evaluate_now()``, then ``on_evaluation(evaluation)``; one metrics row
    (``metrics``, the evaluation, ``time/eval_s``); when a checkpoint is due, ``checkpoint()``.
    Returns ``(stopping, evaluation)``."""
    stopping = out_of_time(clock, config.time_limit_s)
    evaluation: dict = {}
    timer = StageTimer()
    if evaluation_due(iteration, config.iterations, config.eval_every, stopping):
        with timer("eval"):
            evaluation = evaluate_now()
        if on_evaluation is not None:
            on_evaluation(evaluation)
    run.log(iteration_metrics(iteration, clock, **metrics, **evaluation, **timer.metrics))
    if checkpoint_due(iteration, config.iterations, config.checkpoint_every, stopping):
        checkpoint()
    if stopping:
        print(f"time limit of {config.time_limit_s:.0f} s reached after iteration {iteration}", file=sys.stderr)
    return stopping, evaluation


def save_checkpoint(run, iteration: int, state: dict, model, normalizer, task_name: str, policy_info: dict) -> None:
    """RUN/policy (the policy to evaluate, with ``policy_info`` and the iteration in its metadata)
    and the resumable training state."""
    run.save_policy(model, normalizer, task_name, extra={**policy_info, "iteration": iteration})
    run.save_state(state, iteration)


def finish_run(run, algo: str, iteration: int, evaluation: dict) -> dict:
    """Write final.json (the last iteration and its evaluation) and print the completion line every
    training command prints; returns that summary."""
    summary = {"algo": algo, "iteration": iteration, **evaluation}
    run.mark_finished(summary)
    score = evaluation.get("eval_normalized_mean")
    shown = f"normalised {score:.1f}" if score is not None else f"return {evaluation.get('eval_return_mean'):.1f}"
    print(f"{algo}: finished {iteration} iterations in {run.path}: {shown}")
    return summary


class BestPolicy:
    """RUN/best_policy: the policy of the best in-run evaluation so far (by mean return), as
    stable-baselines3's EvalCallback keeps best_model. Its return is read back from the saved
    policy, so a resumed run keeps comparing against it."""

    def __init__(self, run) -> None:
        self.run = run
        self.best_return = best_evaluated_return(run.path)

    def update(self, evaluation: dict, model, normalizer, task_name: str, policy_info: dict, iteration: int) -> None:
        score = evaluation["eval_return_mean"]
        if not (math.isfinite(score) and score > self.best_return):  # a NaN never becomes the best
            return
        self.best_return = evaluation["eval_return_mean"]
        self.run.save_policy(model, normalizer, task_name, directory=BEST_POLICY_DIR,
                             extra={**policy_info, "iteration": iteration, "eval_return_mean": self.best_return,
                                    "eval_normalized_mean": evaluation["eval_normalized_mean"]})


def best_evaluated_return(run_path) -> float:
    """The in-run evaluation return recorded with RUN/best_policy (-inf when there is none yet)."""
    meta = run_path / BEST_POLICY_DIR / "model.json"
    if not meta.is_file():
        return -math.inf
    return float(json.loads(meta.read_text()).get("extra", {}).get("eval_return_mean", -math.inf))


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average per-update metric dicts into one row (keys of the first row)."""
    if not rows:
        return {}
    return {key: float(np.mean([row[key] for row in rows if key in row])) for key in rows[0]}


def rollout_charts(rollouts) -> dict[str, float]:
    """The mean return and length of an iteration's collected episodes."""
    return {"charts/episodic_return": float(np.mean([r.episode_return for r in rollouts])),
            "charts/episode_length": float(np.mean([len(r) for r in rollouts]))}


# ----------------------------------------------------------------------------------------------
# What every Decision-Transformer finetuning loop (GRPO-DT, PPO-DT, GRPO-Q, ODT, ODT+TD3) shares


@dataclass
class DTFinetuneConfig(CommonConfig):
    """Options shared by the algorithms that finetune a pretrained DT (``--init``)."""

    init: str | None = None
    """pretrained DT: a `dtrl pretrain` run directory, a policy directory or hf:DIR, a Hugging Face
    DecisionTransformerModel with dtrl_state_stats.json beside it (required)"""
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
    learning_rate_schedule: Literal["constant", "linear"] = "constant"
    """'linear': the policy's learning rate falls linearly from learning_rate to 0 at the last of
    ``iterations`` (CleanRL's anneal_lr), so late updates cannot undo what was learned; the schedule
    follows the iteration count, not the time limit, so a seeded run stays reproducible"""
    eval_other_rtg: bool = False
    """also evaluate at the other of the two target RTGs (g_online and the task's evaluation target),
    logged as eval_other_*: methods are evaluated at different RTGs by default (g_online without
    relabeling, ODT's lower target with it), so a comparison reports both"""
    context_length: int | None = None
    """T_eval: timesteps of history the policy sees in every online rollout (collection, groups,
    evaluation), as the official ODT code truncates the model's input online; likelihoods and ratios
    are recomputed with the same context. None: the model's full sliding window (its training context).
    Presets: Table 6 for GRPO-DT, PPO-DT and Q-guided GRPO, the official code for ODT and ODT+TD3"""
    time_limit_s: float = 0.0
    """stop after the iteration during which this many seconds of training passed; that iteration is
    evaluated, checkpointed and its policy saved, as a last one would be (0: no limit; for
    equal-wall-clock comparisons)"""
    threads: int = 0
    """torch CPU threads (0: torch's default, one per core). The cpu presets use 1: their small models ran
    up to 35x slower with torch's default on a 2-core machine running another job (2 PPO-DT iterations:
    95 s against 3.8 s)"""

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
        if self.context_length is not None and self.context_length < 1:
            raise DtrlError(f"context-length must be >= 1, got {self.context_length}")

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
    critic_activation: Literal["silu", "relu"] = "silu"
    """nonlinearity of the critic MLPs"""
    critic_weight_decay: float = 0.0
    """decoupled weight decay of the critics' optimiser (AdamW; 0 is Adam)"""

    def validate(self) -> None:
        super().validate()
        if not self.critic_lr > 0 or self.critic_weight_decay < 0:
            raise DtrlError("critic-lr must be > 0 and critic-weight-decay >= 0")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise DtrlError("gamma and tau must be in (0, 1]")


def prepare_policy(config: DTFinetuneConfig, task, device: str, stochastic: bool = True):
    """Load ``--init``, check it is a stochastic DT when ``stochastic`` (likelihood-based finetuning
    needs one; a deterministic actor can start from either kind, through its mean action), set the
    initial temperature, and put the model in eval mode: finetuning disables dropout (Table 5), and eval
    mode only affects dropout here, gradients still flow. Sets ``--threads`` first."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    policy = load_init_policy(config.init, task, device)
    model = policy.model.to(device)
    if stochastic and not getattr(model, "stochastic", True):
        raise DtrlError(f"{config.init} holds a deterministic DT (--model.policy deterministic); online finetuning "
                        "needs a Gaussian policy head (pretrain with --loss odt)")
    if config.init_temperature is not None:
        with torch.no_grad():
            model.log_temperature.fill_(float(np.log(config.init_temperature)))
    model.eval()
    return policy


def scheduled_learning_rate(config, iteration: int) -> float:
    """The learning rate during ``iteration`` (1-based) under the config's ``learning_rate_schedule``
    (its ``learning_rate`` and ``iterations``)."""
    if config.learning_rate_schedule == "constant":
        return config.learning_rate
    return config.learning_rate * (1.0 - (iteration - 1) / config.iterations)


def set_learning_rate(optimizer, learning_rate: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    return learning_rate


def segment_history_length(model, context_length: int | None) -> int:
    """Steps of history a training segment must carry for its recomputed log-probs to equal the
    sampling-time ones: the model's receptive field with its full sliding window, T_eval - 1 with a
    short online context."""
    return int(model.receptive_field) if context_length is None else context_length - 1


def build_dt_optimizers(config: DTFinetuneConfig, model):
    """(actor optimiser over everything but the log-temperature, the log-temperature's Adam or None)."""
    params = [p for p in model.policy_parameters() if p.requires_grad]
    if config.optimizer == "lamb":
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


def optimizer_step(loss: torch.Tensor, optimizer, grad_clip: float) -> float:
    """zero_grad, backward, clip the gradient norm of the optimiser's parameters at ``grad_clip``
    (0: no clipping), step; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    optimizer.step()
    return float(grad_norm)


def temperature_step(model, entropy: torch.Tensor, optimizer) -> None:
    """One Adam step of the log-temperature towards the target entropy -dim(A) (ODT's rule); a no-op
    when the temperature is frozen (``optimizer`` None). Its gradient is cleared either way, so the
    policy's loss never moves it."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        model.temperature_loss(entropy.detach()).backward()
        optimizer.step()
    model.log_temperature.grad = None


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """Polyak averaging: target <- tau * source + (1 - tau) * target."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)


# ----------------------------------------------------------------------------------------------
# ODT's supervised loss (ODT and ODT+TD3)


def offline_seed_trajectories(dataset, task):
    """Offline trajectories eligible for the replay buffer; AntMaze's 1-step trajectories are
    artefacts of its data generation and are dropped (paper A.3.1, following ODT+TD3)."""
    trajectories = dataset.trajectories
    if task.domain == "antmaze":
        trajectories = [t for t in trajectories if len(t) > 1]
    return trajectories


def supervised_loss(model, batch: dict, dist=None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """ODT objective on a window batch: (policy loss, entropy, metrics). ``dist``: the model's
    output on this batch when the caller already has it."""
    mask = batch["mask"]
    actions = batch["actions"].clamp(-1.0 + 1e-6, 1.0 - 1e-6)  # tanh head: |a| < 1
    if dist is None:
        dist = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], mask)
    loss, nll, entropy = model.nll_entropy_loss(dist, actions, mask)
    return loss, entropy, {"losses/action_nll": nll.item(), "losses/entropy": entropy.item(),
                           "losses/temperature": model.temperature.item()}


# ----------------------------------------------------------------------------------------------
# The TD3 twin critic (ODT+TD3 and Q-guided GRPO)


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
        valid = mask & (has_next | batch["dones"].bool())
    q1, q2 = critic(states, actions)
    loss = masked_mean((q1 - target) ** 2 + (q2 - target) ** 2, valid)
    return loss, {"losses/critic": loss.item(), "charts/q_mean": float(masked_mean(q1.detach(), valid))}


def build_critic(config: TD3CriticConfig, task, obs_dim: int, act_dim: int, device: str):
    """(twin critic, its frozen target copy, its optimiser), sized per domain unless the config says
    otherwise."""
    critic = TwinQ(obs_dim, act_dim, hidden_dim=config.critic_hidden_dim or default_hidden_dim(task.domain),
                   activation=config.critic_activation,
                   layer_norm=default_layer_norm(task.domain) if config.critic_layer_norm is None
                   else config.critic_layer_norm).to(device)
    optimizer = (torch.optim.AdamW(critic.parameters(), lr=config.critic_lr, weight_decay=config.critic_weight_decay)
                 if config.critic_weight_decay > 0 else torch.optim.Adam(critic.parameters(), lr=config.critic_lr))
    return critic, copy.deepcopy(critic).requires_grad_(False), optimizer
