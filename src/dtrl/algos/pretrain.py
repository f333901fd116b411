"""``dtrl pretrain``: offline pretraining of a Decision Transformer (or Reinformer) on a dataset.

One loop, top to bottom (ODT's offline phase):

1. load the dataset, drop 1-step AntMaze trajectories (paper A.3.1), compute the state normaliser,
2. sample K-step windows with probability proportional to trajectory length (``SequenceSampler``),
   RTGs divided by ``task.reward_scale``,
3. one gradient step on the chosen loss, LAMB with linear learning-rate warm-up, grad-norm clipping:
   - ``odt``: -log pi(a|ctx) - temperature * entropy, plus the temperature loss
     temperature * (entropy - target_entropy) that drives the policy entropy to -dim(A) (ODT),
   - ``mse``: ||mean action - a||^2 (the deterministic DT of Chen et al.),
   - ``reinformer``: the ``odt`` action loss plus expectile regression of the max return (Reinformer),
4. every iteration (``--steps-per-iteration`` gradient steps) one metrics line; periodic and final
   evaluation with the mean action; checkpoints for ``--resume``; the policy in ``RUN/policy``.

    dtrl pretrain --task hopper-medium --dataset data/hopper-medium.hdf5 --preset cpu \\
        --steps 5000 --out runs/pretrain-hopper-medium
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dtrl.algos.run_loop import EVAL_SEED_OFFSET, Clock, iteration_metrics
from dtrl.config import CommonConfig, ModelConfig, check_fits_in_memory, parse_config, resolve_device, to_dict
from dtrl.data import SequenceSampler, StateNormalizer, load_dataset
from dtrl.data.task_of import task_from_dataset_option
from dtrl.errors import DtrlError
from dtrl.evaluation import evaluate, format_result
from dtrl.models import build_model
from dtrl.models.checkpoint import LoadedPolicy
from dtrl.optim import linear_warmup, make_optimizer
from dtrl.runs import RunDir, has_checkpoint, seed_everything
from dtrl.tasks import get_task


@dataclass
class PretrainConfig(CommonConfig):
    """Offline pretraining. ``eval-every`` and ``checkpoint-every`` count iterations of
    ``steps-per-iteration`` gradient steps."""

    dataset: str = ""
    """offline data: a D4RL-layout .hdf5 file, a Minari dataset id or a local Minari dataset directory"""
    steps: int = 5000
    """total gradient steps"""
    steps_per_iteration: int = 100
    """gradient steps per iteration (one metrics.jsonl line; the unit of eval-every and checkpoint-every)"""
    batch_size: int = 64
    """windows per gradient step (paper Table 6 'BS')"""
    learning_rate: float = 1e-4
    """peak learning rate (after warm-up)"""
    weight_decay: float = 1e-4
    """weight decay (paper Table 5)"""
    warmup_steps: int = 1000
    """linear learning-rate warm-up from 0 over this many gradient steps (ODT)"""
    grad_clip: float = 0.5
    """gradient-norm clipping threshold (paper Table 5; 0 disables)"""
    optimizer: Literal["lamb", "adamw"] = "lamb"
    """policy optimiser: LAMB (paper Table 5) or AdamW"""
    loss: Literal["odt", "mse", "reinformer"] = "odt"
    """'odt': NLL - temperature*entropy with a learned temperature (stochastic DT, needed for RL finetuning);
    'mse': deterministic DT; 'reinformer': odt action loss + expectile max-return loss"""
    temperature_learning_rate: float = 1e-4
    """Adam learning rate of the log-temperature (ODT)"""
    eval_target_rtg: float | None = None
    """target RTG for evaluation (default: the task's eval target)"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """'bf16': run the forward pass and loss under torch.autocast(bfloat16) (matmuls in bf16, weights,
    optimiser and the action-distribution maths in fp32) — 2-3x faster on CPUs with AVX512-BF16 and on
    recent GPUs; pretraining only: online finetuning stays fp32 so importance ratios start at exactly 1"""
    threads: int = 0
    """torch CPU threads (0: torch's default, one per core). The cpu preset uses 1: its small model ran
    ~16x slower with torch's default on a 2-core machine with another job running"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the transformer backbone"""

    def validate(self) -> None:
        super().validate()
        for name in ("steps", "steps_per_iteration", "batch_size"):
            if getattr(self, name) < 1:
                raise DtrlError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise DtrlError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not self.learning_rate > 0 or not self.temperature_learning_rate > 0:
            raise DtrlError("learning rates must be > 0")
        if self.threads < 0:
            raise DtrlError(f"--threads must be >= 0, got {self.threads}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise DtrlError("--weight-decay and --grad-clip must be >= 0")
        if self.loss == "mse" and self.model.policy != "deterministic":
            raise DtrlError("--loss mse trains a deterministic DT: also pass --model.policy deterministic")
        if self.loss != "mse" and self.model.policy == "deterministic":
            raise DtrlError(f"--loss {self.loss} needs --model.policy gaussian "
                            "(a deterministic head has no likelihood)")
        if (self.loss == "reinformer") != (self.model.architecture == "reinformer"):
            raise DtrlError("--loss reinformer goes with --model.architecture reinformer (and only with it)")

    @property
    def iterations(self) -> int:
        return math.ceil(self.steps / self.steps_per_iteration)


# ----------------------------------------------------------------------------------------------
# presets


def _model_for_task(task, **overrides) -> ModelConfig:
    # AntMaze: no timestep embedding (ODT, paper A.3.1); the table must cover the whole horizon.
    return ModelConfig(max_timestep=task.max_episode_steps, timestep_embedding=task.domain != "antmaze",
                       **overrides)


def paper_preset(task_name: str) -> PretrainConfig:
    """Tables 5-6: 4 layers, 4 heads, 512 wide, dropout 0.1, SiLU, LAMB, wd 1e-4, clip 0.5,
    K = T_train, batch = BS. Steps, learning rate and warm-up are ODT's pretraining defaults
    (the paper does not list them)."""
    task = get_task(task_name)
    return PretrainConfig(
        task=task.name, preset="paper", steps=100_000, steps_per_iteration=1000, eval_every=10,
        batch_size=512 if task.domain == "adroit" else 256, learning_rate=1e-4, warmup_steps=10_000,
        model=_model_for_task(task, n_layer=4, n_head=4, embed_dim=512, context_length=task.context_train,
                              dropout=0.1, activation="silu"),
    )


def cpu_preset(task_name: str) -> PretrainConfig:
    """Small enough to pretrain in minutes on a laptop CPU: 3 layers x 1 head, 64 wide, K = 10
    (measured in benchmarks/results/pretrain.md: 128 wide costs ~2.5x per step; LAMB at lr 1e-3
    reaches in 300 steps the NLL that 3e-4 needs ~1000 for)."""
    task = get_task(task_name)
    return PretrainConfig(
        task=task.name, preset="cpu", threads=1, steps=3000, steps_per_iteration=100, eval_every=10, eval_episodes=10,
        batch_size=64, learning_rate=1e-3, warmup_steps=300,
        model=_model_for_task(task, n_layer=3, n_head=1, embed_dim=64, context_length=min(10, task.context_train),
                              dropout=0.1, activation="silu"),
    )


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


# ----------------------------------------------------------------------------------------------
# pieces of the loop


def build_optimizers(config: PretrainConfig, model):
    """(policy optimiser over everything but the log-temperature, its linear warm-up schedule,
    the log-temperature's Adam, or None when the head has no entropy to regulate)."""
    optimizer = make_optimizer(config.optimizer, model.policy_parameters(), lr=config.learning_rate,
                               weight_decay=config.weight_decay)
    scheduler = linear_warmup(optimizer, config.warmup_steps)
    temperature_optimizer = None
    if model.stochastic:  # ODT trains the temperature with its own Adam
        temperature_optimizer = torch.optim.Adam([model.log_temperature], lr=config.temperature_learning_rate,
                                                 betas=(0.9, 0.999))
    return optimizer, scheduler, temperature_optimizer


_METRIC_NAMES = {"nll": "losses/action_nll", "entropy": "losses/entropy", "temperature": "losses/temperature",
                 "mse": "losses/action_mse", "return_loss": "losses/return_expectile"}


def pretrain_step(model, batch: dict, optimizer, scheduler, temperature_optimizer, grad_clip: float,
                  precision: str = "fp32") -> dict:
    """One gradient step on the model's offline objective (``model.pretrain_loss``: ODT's
    NLL - temperature * entropy, the DT's MSE, or Reinformer's action + expectile return loss), then
    one Adam step of the temperature towards the target entropy. Returns float metrics."""
    device_type = batch["states"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, parts = model.pretrain_loss(batch["states"], batch["actions"], batch["returns_to_go"],
                                          batch["timesteps"], batch["mask"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    metrics = {"losses/total": float(loss.detach())}
    if grad_clip > 0:
        metrics["losses/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.policy_parameters(), grad_clip))
    optimizer.step()
    scheduler.step()
    if temperature_optimizer is not None:
        temperature_loss = model.temperature_loss(parts["entropy"])
        temperature_optimizer.zero_grad(set_to_none=True)
        temperature_loss.backward()
        temperature_optimizer.step()
    for key, value in parts.items():
        metrics[_METRIC_NAMES.get(key, f"losses/{key}")] = float(value.detach())
    return metrics


# ----------------------------------------------------------------------------------------------
# the loop


def train(config: PretrainConfig) -> dict:
    """Run (or resume) pretraining; returns the final evaluation."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    task = get_task(config.task)
    device = resolve_device(config.device)
    if not config.dataset:
        raise DtrlError("--dataset is required: a D4RL .hdf5 file, a Minari dataset id or a Minari directory")
    dataset = load_dataset(config.dataset, task)  # before the run dir: a bad --dataset leaves nothing behind
    check_sizes(config, task, dataset, device)
    if config.resume and not has_checkpoint(config.out):
        raise DtrlError(f"--resume: {config.out} has no checkpoint to continue from (start it again with --force)")
    # --resume continues with the settings given now (e.g. a larger --steps): RunDir.resume warns
    # about and records every changed setting
    with RunDir.open(config.out, {**to_dict(config), "algo": "pretrain"}, resume=config.resume,
                     force=config.force) as run:  # closing it releases the run directory's lock
        return _pretrain(config, run, task, device, dataset)


def check_sizes(config: PretrainConfig, task, dataset, device: str) -> None:
    """What can be refused before the run directory exists: a timestep table shorter than the task's
    horizon, and a batch that cannot fit in the device's memory."""
    model = config.model
    if model.timestep_embedding and model.max_timestep < task.max_episode_steps:
        raise DtrlError(f"--model.max-timestep {model.max_timestep} is shorter than the horizon of {task.name} "
                        f"({task.max_episode_steps} steps): later timesteps would share one embedding; give at "
                        f"least {task.max_episode_steps}")
    window = config.batch_size * model.context_length * (dataset.obs_dim + dataset.act_dim + 4) * 4
    check_fits_in_memory(model.step_bytes(config.batch_size) + window,
                         f"one gradient step (--batch-size {config.batch_size}, --model.context-length "
                         f"{model.context_length}, --model.embed-dim {model.embed_dim})", device)


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About what a checkpoint and the policy take: the weights, Adam's two moments and the policy's copy."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class Learner:
    """The model, its optimisers and warm-up schedule, the window sampler and the clock: what a
    pretraining checkpoint holds."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    temperature_optimizer: torch.optim.Optimizer | None
    sampler: SequenceSampler
    clock: Clock

    def state_dict(self, iteration: int) -> dict:
        return {"algo": "pretrain", "iteration": iteration, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "temperature_optimizer": self.temperature_optimizer.state_dict() if self.temperature_optimizer
                else None,
                "sampler_rng": self.sampler.rng.bit_generator.state, "clock": self.clock.state_dict()}

    def load_state_dict(self, state: dict) -> int:
        """Restore a checkpoint; returns the last iteration it had done."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.temperature_optimizer is not None:
            self.temperature_optimizer.load_state_dict(state["temperature_optimizer"])
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        self.clock.load_state_dict(state["clock"])
        return int(state["iteration"])

    def iteration(self, config: PretrainConfig, device, on_step) -> dict:
        """steps_per_iteration gradient steps (fewer at the end of --steps); their mean metrics."""
        self.model.train()
        sums: dict[str, float] = {}
        steps_now = min(config.steps_per_iteration, config.steps - self.clock.grad_updates)
        started = time.perf_counter()
        for _ in range(steps_now):
            batch = {k: v.to(device) for k, v in self.sampler.sample(config.batch_size).items()}
            metrics = pretrain_step(self.model, batch, self.optimizer, self.scheduler, self.temperature_optimizer,
                                    config.grad_clip, config.precision)
            if not math.isfinite(metrics["losses/total"]):
                raise DtrlError(f"pretraining diverged at step {self.clock.grad_updates + 1}: the loss is "
                                f"{metrics['losses/total']} (lower --learning-rate, or check the dataset)")
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            self.clock.grad_updates += 1
            on_step(metrics)
        row = {key: value / max(1, steps_now) for key, value in sums.items()}
        row["charts/learning_rate"] = self.scheduler.get_last_lr()[0]
        row["charts/grad_steps_per_s"] = steps_now / max(1e-9, time.perf_counter() - started)
        return row


def build_learner(config: PretrainConfig, task, dataset, device) -> tuple[Learner, StateNormalizer]:
    """Data and normaliser, then the model and its optimisers."""
    trajectories = dataset.trajectories
    if task.domain == "antmaze":  # paper A.3.1 (ODT+TD3): 1-step AntMaze trajectories are artefacts
        trajectories = [t for t in trajectories if len(t) > 1]
    normalizer = StateNormalizer.from_trajectories(trajectories)
    sampler = SequenceSampler(trajectories, config.model.context_length, task.reward_scale, normalizer,
                              rng=np.random.default_rng(config.seed))
    model = build_model(config.model, dataset.obs_dim, dataset.act_dim).to(device)
    optimizer, scheduler, temperature_optimizer = build_optimizers(config, model)
    return Learner(model, optimizer, scheduler, temperature_optimizer, sampler, Clock()), normalizer


def _pretrain(config: PretrainConfig, run, task, device: str, dataset) -> dict:
    seed_everything(config.seed)
    learner, normalizer = build_learner(config, task, dataset, device)
    start_iteration = 0
    # Loaded after the model is built (its initialisation draws random numbers) so the restored
    # global RNG states continue exactly where the checkpoint left them.
    state = run.load_state(restore_rng=True) if config.resume else None
    if state is not None:
        start_iteration = learner.load_state_dict(state)
    clock, model = learner.clock, learner.model
    run.check_free_space(checkpoint_bytes(model))  # the checkpoint and the policy, before the first step
    policy = LoadedPolicy(model, normalizer, task.reward_scale, task.name)
    eval_seed = EVAL_SEED_OFFSET + config.seed  # disjoint from training seeds; the same episodes every evaluation
    policy_meta = {"preset": config.preset, "dataset": dataset.source, "loss": config.loss,
                   "context_length": config.model.context_length}

    def run_evaluation() -> dict:
        return evaluate(policy, task, episodes=config.eval_episodes, target_rtg=config.eval_target_rtg,
                        num_threads=config.env_threads, seed=eval_seed, device=device)

    # gradient steps; an iteration is steps_per_iteration of them and one metrics line
    last_eval: dict = {}
    progress = Progress(TextColumn("[bold]pretrain[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with progress:
        bar = progress.add_task("", total=config.steps, completed=clock.grad_updates)
        for iteration in range(start_iteration + 1, config.iterations + 1):
            row = learner.iteration(config, device, lambda metrics: progress.update(
                bar, advance=1, description=f"loss {metrics['losses/total']:.3f}"))
            final = iteration == config.iterations
            if final or (config.eval_every > 0 and iteration % config.eval_every == 0):
                last_eval = run_evaluation()
                row.update(last_eval)
                progress.console.print(f"step {clock.grad_updates}: {format_result(last_eval)}")
            run.log(iteration_metrics(iteration, clock, **row))
            if final or iteration % config.checkpoint_every == 0:
                run.save_policy(model, normalizer, task.name, extra=policy_meta)
                run.save_state(learner.state_dict(iteration), iteration)

    if not last_eval:  # resumed a run that had already done all its steps
        last_eval = run_evaluation()
    run.mark_finished({"task": task.name, "grad_updates": clock.grad_updates, **last_eval})
    print(f"{task.name}: {format_result(last_eval)}; policy in {run.path / 'policy'}")
    return last_eval


def parse(argv: list[str]) -> PretrainConfig:
    """The run's config from the command line (a preset, then the overrides); validated, nothing run.
    The task follows ``--dataset`` when the data names one (``dtrl.data.task_of``)."""
    return parse_config(PretrainConfig, argv, PRESETS, description=__doc__.split("\n\n")[0], prog="dtrl pretrain",
                        task_of=task_from_dataset_option)


def main(argv: list[str]) -> int:
    train(parse(argv))
    return 0
