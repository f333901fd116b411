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

    dtrl pretrain --task hopper-medium --dataset /work/data/hopper-medium.hdf5 --preset cpu \\
        --steps 5000 --out runs/pretrain-hopper-medium
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dtrl.config import CommonConfig, ModelConfig, parse_config, to_dict
from dtrl.errors import DtrlError
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
    """decoupled weight decay (paper Table 5)"""
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
    model: ModelConfig = field(default_factory=ModelConfig)
    """the transformer backbone"""

    def validate(self) -> None:
        super().validate()
        if not self.dataset:
            raise DtrlError("--dataset is required: a D4RL .hdf5 file, a Minari dataset id or a Minari directory")
        for name in ("steps", "steps_per_iteration", "batch_size"):
            if getattr(self, name) < 1:
                raise DtrlError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise DtrlError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not self.learning_rate > 0 or not self.temperature_learning_rate > 0:
            raise DtrlError("learning rates must be > 0")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise DtrlError("--weight-decay and --grad-clip must be >= 0")
        if self.loss == "mse" and self.model.policy != "deterministic":
            raise DtrlError("--loss mse trains a deterministic DT: also pass --model.policy deterministic")
        if self.loss != "mse" and self.model.policy == "deterministic":
            raise DtrlError(f"--loss {self.loss} needs --model.policy gaussian (a deterministic head has no likelihood)")
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
    """Small enough to pretrain in minutes on a laptop CPU (see benchmarks/results/pretrain.md)."""
    task = get_task(task_name)
    return PretrainConfig(
        task=task.name, preset="cpu", steps=5000, steps_per_iteration=100, eval_every=10, eval_episodes=10,
        batch_size=64, learning_rate=1e-3, warmup_steps=500,
        model=_model_for_task(task, n_layer=3, n_head=1, embed_dim=128, context_length=min(10, task.context_train),
                              dropout=0.1, activation="silu"),
    )


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


# ----------------------------------------------------------------------------------------------
# pieces of the loop


def build_model(model_config: ModelConfig, obs_dim: int, act_dim: int):
    from dtrl.models import DecisionTransformer, Reinformer

    cls = Reinformer if model_config.architecture == "reinformer" else DecisionTransformer
    return cls(model_config, obs_dim, act_dim)


def build_optimizer(config: PretrainConfig, model):
    """(policy optimiser over everything but the log-temperature, its warm-up schedule,
    the log-temperature's Adam or None for the MSE loss)."""
    import torch

    temperature_params = [model.log_temperature] if config.loss != "mse" else []
    ids = {id(p) for p in temperature_params} | {id(model.log_temperature)}
    params = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    if config.optimizer == "lamb":
        from dtrl.optim import Lamb

        optimizer = Lamb(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    temperature_optimizer = (torch.optim.Adam(temperature_params, lr=config.temperature_learning_rate,
                                              betas=(0.9, 0.999)) if temperature_params else None)
    return optimizer, scheduler, temperature_optimizer


def pretrain_loss(config: PretrainConfig, model, batch: dict) -> tuple:
    """(policy loss, temperature loss or None, metrics) for one batch of windows."""
    import torch

    mask = batch["mask"]
    valid = mask.float()
    count = valid.sum().clamp_min(1.0)
    dist = model.forward(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], mask)
    metrics: dict[str, float] = {}
    if config.loss == "mse":
        error = ((dist.mean - batch["actions"]) ** 2).mean(-1)
        loss = (error * valid).sum() / count
        metrics["losses/action_mse"] = float(loss.detach())
        return loss, None, metrics

    actions = batch["actions"].clamp(-1.0 + 1e-6, 1.0 - 1e-6)  # tanh-squashed head: |a| < 1
    nll = -(dist.log_prob(actions) * valid).sum() / count
    entropy = (dist.entropy() * valid).sum() / count
    temperature = model.temperature
    loss = nll - temperature.detach() * entropy
    temperature_loss = temperature * (entropy - model.target_entropy).detach()
    metrics.update({"losses/action_nll": float(nll.detach()), "losses/entropy": float(entropy.detach()),
                    "losses/temperature": float(temperature.detach())})
    with torch.no_grad():
        metrics["losses/action_mse"] = float((((dist.mean - batch["actions"]) ** 2).mean(-1) * valid).sum() / count)
    if config.loss == "reinformer":
        return_loss = model.return_loss(batch["states"], batch["actions"], batch["returns_to_go"],
                                        batch["timesteps"], mask)
        loss = loss + return_loss
        metrics["losses/return_expectile"] = float(return_loss.detach())
    return loss, temperature_loss, metrics


class _PolicyView:
    """model + normaliser + reward scale: what the rollout engine and ``save_policy`` need."""

    def __init__(self, model, normalizer, reward_scale: float):
        self.model, self.normalizer, self.reward_scale = model, normalizer, reward_scale


# ----------------------------------------------------------------------------------------------
# the loop


def train(config: PretrainConfig) -> dict:
    """Run (or resume) pretraining; returns the final evaluation."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from dtrl.algos.common import Clock, iteration_metrics
    from dtrl.config import resolve_device
    from dtrl.data import SequenceSampler, StateNormalizer, load_dataset
    from dtrl.evaluation import evaluate, format_result
    from dtrl.runs import RunDir, seed_everything

    task = get_task(config.task)
    device = resolve_device(config.device)
    # --resume continues with the settings given now (e.g. a larger --steps); RunDir.resume warns
    # about every setting that differs from the stored config and records it in config.json.
    run_config = {**to_dict(config), "algo": "pretrain"}
    if config.resume:
        run = RunDir.resume(config.out, run_config)
        if run.load_state(restore_rng=False) is None:
            raise DtrlError(f"--resume: {config.out} has no checkpoint to continue from")
    else:
        run = RunDir.open(config.out, run_config, force=config.force)
    seed_everything(config.seed)

    # 1. data and normaliser
    dataset = load_dataset(config.dataset, task)
    trajectories = dataset.trajectories
    if task.domain == "antmaze":  # paper A.3.1 / ODT+TD3: 1-step AntMaze trajectories are artefacts
        trajectories = [t for t in trajectories if len(t) > 1]
    normalizer = StateNormalizer.from_trajectories(trajectories)
    sampler = SequenceSampler(trajectories, config.model.context_length, task.reward_scale, normalizer,
                              rng=np.random.default_rng(config.seed))

    # 2. model and optimisers
    model = build_model(config.model, dataset.obs_dim, dataset.act_dim).to(device)
    optimizer, scheduler, temperature_optimizer = build_optimizer(config, model)
    clock = Clock()
    start_iteration = 0
    # Restored after the model is built (its initialisation draws random numbers), so the resumed
    # run continues the checkpointed RNG streams exactly.
    state = run.load_state(restore_rng=True) if config.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if temperature_optimizer is not None:
            temperature_optimizer.load_state_dict(state["temperature_optimizer"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        clock.load_state_dict(state["clock"])
        start_iteration = int(state["iteration"])
    policy = _PolicyView(model, normalizer, task.reward_scale)
    eval_seed = 10_000 + config.seed  # disjoint from training seeds; the same episodes every evaluation
    extra_meta = {"preset": config.preset, "dataset": dataset.source, "loss": config.loss}

    def run_evaluation() -> dict:
        return evaluate(policy, task, episodes=config.eval_episodes, target_rtg=config.eval_target_rtg,
                        seed=eval_seed, device=device)

    # 3. gradient steps, one iteration = steps_per_iteration of them
    last_eval: dict = {}
    progress = Progress(TextColumn("[bold]pretrain[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        transient=False)
    with progress:
        bar = progress.add_task("", total=config.steps, completed=clock.grad_updates)
        for iteration in range(start_iteration + 1, config.iterations + 1):
            model.train()
            sums: dict[str, float] = {}
            steps_now = min(config.steps_per_iteration, config.steps - clock.grad_updates)
            started = time.perf_counter()
            for _ in range(steps_now):
                batch = {k: v.to(device, non_blocking=True) for k, v in sampler.sample(config.batch_size).items()}
                loss, temperature_loss, metrics = pretrain_loss(config, model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    metrics["losses/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]], config.grad_clip))
                optimizer.step()
                scheduler.step()
                if temperature_optimizer is not None:
                    temperature_optimizer.zero_grad(set_to_none=True)
                    temperature_loss.backward()
                    temperature_optimizer.step()
                metrics["losses/total"] = float(loss.detach())
                if not math.isfinite(metrics["losses/total"]):
                    raise DtrlError(f"pretraining diverged at step {clock.grad_updates + 1}: loss is "
                                    f"{metrics['losses/total']} (lower --learning-rate or check the dataset)")
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                clock.grad_updates += 1
                progress.update(bar, advance=1, description=f"loss {metrics['losses/total']:.3f}")
            row = {key: value / max(1, steps_now) for key, value in sums.items()}
            row["charts/learning_rate"] = scheduler.get_last_lr()[0]
            row["charts/grad_steps_per_s"] = steps_now / max(1e-9, time.perf_counter() - started)
            final = iteration == config.iterations
            if final or (config.eval_every > 0 and iteration % config.eval_every == 0):
                last_eval = run_evaluation()
                row.update(last_eval)
                progress.console.print(f"step {clock.grad_updates}: {format_result(last_eval)}")
            run.log(iteration_metrics(iteration, clock, **row))
            if final or iteration % config.checkpoint_every == 0:
                run.save_policy(model, normalizer, task.name, extra=extra_meta)
                run.save_state({
                    "algo": "pretrain", "iteration": iteration, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "temperature_optimizer": temperature_optimizer.state_dict() if temperature_optimizer else None,
                    "sampler_rng": sampler.rng.bit_generator.state, "clock": clock.state_dict(),
                }, iteration)

    if not last_eval:  # resumed a run whose last iteration was already done
        last_eval = run_evaluation()
    summary = {"task": task.name, "grad_updates": clock.grad_updates, **last_eval}
    run.mark_finished(summary)
    print(f"{task.name}: {format_result(last_eval)}; policy in {run.path / 'policy'}")
    return last_eval


def main(argv: list[str]) -> int:
    config = parse_config(PretrainConfig, argv, PRESETS, description=__doc__.split("\n\n")[0], prog="dtrl pretrain")
    train(config)
    return 0


__all__ = ["PretrainConfig", "PRESETS", "build_model", "build_optimizer", "cpu_preset", "main", "paper_preset",
           "pretrain_loss", "train", "to_dict"]
