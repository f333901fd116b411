"""``dtrl demo``: the whole pipeline on a small embedded default, end to end, in minutes on a CPU.

1. build a hopper-random dataset locally (uniform random actions: no download needed),
2. pretrain the cpu-preset stochastic Decision Transformer on it,
3. finetune it online with GRPO-DT (cpu preset),
4. evaluate before and after with the same episodes seeds, print both normalised returns and
   where the learning curve is.

Every stage writes an ordinary artefact (dataset file, run directories) under ``--out``; running
the demo again resumes where it stopped (stages whose output is complete are skipped).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from rich.console import Console

from dtrl import report
from dtrl.algos import finetune, pretrain
from dtrl.algos.run_loop import EVAL_SEED_OFFSET
from dtrl.config import reject_non_finite, resolve_device
from dtrl.data import cli as data_cli
from dtrl.errors import DtrlError
from dtrl.evaluation import default_context_length, default_target_rtg, evaluate
from dtrl.models.loading import load_policy
from dtrl.tasks import get_task


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """directory for the demo's dataset, runs and plots"""
    task: str = "hopper-random"
    """task: a locally buildable dataset (random level builds in seconds)"""
    transitions: int = 100_000
    """dataset size to build"""
    pretrain_steps: int = 3000
    """offline pretraining gradient steps (cpu preset)"""
    iterations: int = 300
    """GRPO-DT iterations (cpu preset)"""
    eval_episodes: int = 10
    """evaluation episodes before and after finetuning"""
    seed: int = 0
    """seed for data, pretraining, finetuning and evaluation"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when available"""
    force: bool = False
    """start over: replace an existing demo directory"""

    def __post_init__(self) -> None:
        reject_non_finite(self)
        self.validate()

    def validate(self) -> None:
        for name in ("transitions", "pretrain_steps", "iterations", "eval_episodes"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def _run(argv: list[str]) -> None:
    """One stage, run as ``dtrl ARGV`` would run it; its error names the stage."""
    command = {"data": data_cli.main, "pretrain": pretrain.main, "finetune": finetune.main, "report": report.main}
    try:
        code = command[argv[0]](argv[1:])
    except DtrlError as exc:
        raise DtrlError(f"demo stage `dtrl {' '.join(argv)}` failed: {exc}") from None
    if code != 0:
        raise DtrlError(f"demo stage `dtrl {' '.join(argv)}` failed (exit {code})")


def _finished(run_dir: Path) -> bool:
    return (run_dir / "final.json").exists()


def main(argv: list[str]) -> int:
    config = tyro.cli(DemoConfig, args=argv, prog="dtrl demo", description=__doc__.split("\n\n")[0])
    console = Console()
    if not torch.cuda.is_available() or config.device == "cpu":
        # The cpu-preset models are tiny: one torch thread leaves the other core to the simulator
        # and avoids thread oversubscription, which made small-model steps many times slower here.
        torch.set_num_threads(1)
    root = Path(config.out)
    if config.force and root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    dataset = root / f"{config.task}.hdf5"
    pretrain_dir = root / "pretrain"
    finetune_dir = root / "grpo"
    started = time.time()

    console.rule(f"[bold]1/4 dataset: {config.task}, {config.transitions} transitions")
    if dataset.exists():
        console.print(f"reusing {dataset}")
    else:
        _run(["data", "build", config.task, "--out", str(dataset), "--transitions", str(config.transitions),
              "--seed", str(config.seed)])

    console.rule("[bold]2/4 offline pretraining (cpu preset)")
    common = ["--task", config.task, "--preset", "cpu", "--seed", str(config.seed), "--device", config.device]
    if not _finished(pretrain_dir):
        resume = ["--resume"] if (pretrain_dir / "checkpoints").exists() else []
        _run(["pretrain", *common, "--dataset", str(dataset), "--steps", str(config.pretrain_steps),
              "--out", str(pretrain_dir), "--eval-every", "0", "--eval-episodes", str(config.eval_episodes),
              *resume])
    else:
        console.print(f"reusing {pretrain_dir}")

    console.rule("[bold]3/4 online finetuning with GRPO-DT (cpu preset)")
    if not _finished(finetune_dir):
        resume = ["--resume"] if (finetune_dir / "checkpoints").exists() else []
        _run(["finetune", "--algo", "grpo", *common, "--init", str(pretrain_dir),
              "--iterations", str(config.iterations), "--out", str(finetune_dir),
              "--eval-episodes", str(config.eval_episodes), *resume])
    else:
        console.print(f"reusing {finetune_dir}")

    console.rule("[bold]4/4 evaluation before and after finetuning")
    task = get_task(config.task)
    device = resolve_device(config.device)
    policies = {"pretrained DT": load_policy(pretrain_dir, task=task, device=device),
                "GRPO-DT": load_policy(finetune_dir, task=task, device=device)}
    # both as GRPO-DT is evaluated: at its RTG, with its online context
    target = default_target_rtg(policies["GRPO-DT"], task)
    context = default_context_length(policies["GRPO-DT"])
    results = {label: evaluate(policy, task, episodes=config.eval_episodes, target_rtg=target,
                               seed=EVAL_SEED_OFFSET + config.seed, device=device, context_length=context)
               for label, policy in policies.items()}
    _run(["report", str(pretrain_dir), str(finetune_dir), "--out", str(root / "report")])

    def fmt(r: dict) -> str:
        if r.get("eval_normalized_mean") is None:
            return f"return {r['eval_return_mean']:.1f} ± {r['eval_return_std']:.1f}"
        return (f"normalised {r['eval_normalized_mean']:.1f} ± {r['eval_normalized_std']:.1f}"
                f"  (return {r['eval_return_mean']:.1f})")

    console.rule("[bold green]dtrl demo: results")
    for label, r in results.items():
        console.print(f"{label:>14}: {fmt(r)}")
    curves = sorted((root / "report").glob("*.png"))
    console.print(f"learning curve: {', '.join(str(c) for c in curves) or '(none written)'}")
    console.print(f"runs: {pretrain_dir}  {finetune_dir}   total time {(time.time() - started) / 60:.1f} min")
    (root / "demo_results.json").write_text(json.dumps({k: v for k, v in results.items()}, indent=2))
    return 0
