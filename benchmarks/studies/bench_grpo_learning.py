"""Learning benchmark: GRPO-DT (cpu preset) finetuning a cpu-pretrained DT on a random-data task.

Goal for hopper-random (benchmarks/results/grpo.md): within --minutes (60) of wall time on this
machine, raise the D4RL-normalised return of the pretrained DT by >= 30 points (stretch: >= 60 absolute; the paper's
GPU run reaches 99). Both policies are evaluated with the mean action on the same --eval-episodes
seeds, conditioned on the RTG the GRPO-DT run evaluates at (g_online: without relabeling the policy is
trained at that RTG only); the same comparison at the task's lower ODT-style eval RTG is printed too.

    nice python benchmarks/studies/bench_grpo_learning.py [--task hopper-random] [--pretrained RUN] [--data FILE]
        [--minutes 60] [--out DIR]

The run stops at the preset's iterations (cpu: 900, over which its learning rate decays to 0; about
an hour for hopper here) or after --minutes, whichever comes first; ``-- --iterations N`` changes the
former. Missing inputs are made with the CLI (``dtrl data build``, ``dtrl pretrain --preset cpu``). Extra
arguments after ``--`` go to ``dtrl finetune --algo grpo`` (e.g. ``-- --learning-rate 3e-4``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: machine.py
from machine import ensure_inputs  # noqa: E402  (calibrate_budget.py imports it from here too)


def evaluate_dir(task_name: str, path: Path, episodes: int, seed: int, target_rtg: float | None = None,
                 context_length: int | None = None) -> dict:
    """Mean-action evaluation of a run's policy at ``target_rtg`` with ``context_length`` steps of
    context (defaults: what its trainer recorded)."""
    from dtrl.evaluation import default_context_length, default_target_rtg, evaluate
    from dtrl.models.loading import load_policy
    from dtrl.tasks import get_task

    task = get_task(task_name)
    policy = load_policy(path, task=task)
    return evaluate(policy, task, episodes=episodes, seed=seed, target_rtg=default_target_rtg(policy, task, target_rtg),
                    context_length=default_context_length(policy, context_length))


def describe(result: dict) -> str:
    return (f"normalised {result['eval_normalized_mean']:.1f} ± {result['eval_normalized_std']:.1f} "
            f"(return {result['eval_return_mean']:.0f}, length {result['eval_length_mean']:.0f}, "
            f"target RTG {result['eval_target_rtg']:.0f}, context {result.get('eval_context_length') or 'full'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="hopper-random")
    parser.add_argument("--data", type=Path, help="default: data/TASK.hdf5")
    parser.add_argument("--pretrained", type=Path, help="default: runs/pretrain-TASK-cpu")
    parser.add_argument("--out", type=Path, help="default: runs/bench-grpo-TASK-cpu")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--eval-seed", type=int, default=123_456)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    args, finetune_extra = parser.parse_known_args()
    finetune_extra = [a for a in finetune_extra if a != "--"]
    torch.set_num_threads(args.threads)
    args.data = args.data or Path(f"data/{args.task}.hdf5")
    args.pretrained = args.pretrained or Path(f"runs/pretrain-{args.task}-cpu")
    args.out = args.out or Path(f"runs/bench-grpo-{args.task}-cpu")

    ensure_inputs(args.task, args.data, args.pretrained)
    from dtrl.tasks import get_task

    odt_rtg = get_task(args.task).eval_rtg
    before_odt = evaluate_dir(args.task, args.pretrained, args.eval_episodes, args.eval_seed, odt_rtg)
    print(f"pretrained DT: {describe(before_odt)}", flush=True)

    from dtrl.cli import main as dtrl

    started = time.time()
    code = dtrl(["finetune", "--algo", "grpo", "--task", args.task, "--preset", "cpu",
                 "--init", str(args.pretrained), "--out", str(args.out), "--force", "--device", "cpu",
                 "--time-limit-s", str(args.minutes * 60), *finetune_extra])
    if code != 0:
        raise SystemExit(f"dtrl finetune failed with exit code {code}")
    wall = time.time() - started
    after = evaluate_dir(args.task, args.out, args.eval_episodes, args.eval_seed)
    # the pretrained DT exactly as the finetuned policy is evaluated: same RTG, same context
    before = evaluate_dir(args.task, args.pretrained, args.eval_episodes, args.eval_seed, after["eval_target_rtg"],
                          after["eval_context_length"])
    after_odt = evaluate_dir(args.task, args.out, args.eval_episodes, args.eval_seed, odt_rtg)
    if after["eval_context_length"] is not None:  # the early evaluation used the model's full window
        before_odt = evaluate_dir(args.task, args.pretrained, args.eval_episodes, args.eval_seed, odt_rtg,
                                  after["eval_context_length"])
    for label, result in (("pretrained DT", before_odt), ("GRPO-DT", after_odt)):
        print(f"{label} at the ODT eval RTG: {describe(result)}")

    rows = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    print("\n| iteration | wall min | env steps | grad updates | rollout return | eval normalised (mean ± std) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if row.get("eval_normalized_mean") is not None:
            print(f"| {row['iteration']} | {row['wall_time_s'] / 60:.1f} | {row['env_steps']:,} | "
                  f"{row['grad_updates']} | {row.get('charts/rollout_return', float('nan')):.0f} | "
                  f"{row['eval_normalized_mean']:.1f} ± {row['eval_normalized_std']:.1f} |")
    best_dir = args.out / "best_policy"
    if best_dir.is_dir():  # selected on the in-run evaluation seeds, scored here on the benchmark's seeds
        best = evaluate_dir(args.task, best_dir, args.eval_episodes, args.eval_seed)
        chosen = json.loads((best_dir / "model.json").read_text())["extra"]["iteration"]
        print(f"best in-run-evaluated policy (iteration {chosen}): {describe(best)}; "
              f"{best['eval_normalized_mean'] - before['eval_normalized_mean']:+.1f} points")
    gain = after["eval_normalized_mean"] - before["eval_normalized_mean"]
    print(f"\npretrained {before['eval_normalized_mean']:.1f} -> GRPO-DT {after['eval_normalized_mean']:.1f} "
          f"± {after['eval_normalized_std']:.1f} ({args.eval_episodes} episodes, seeds from {args.eval_seed}): "
          f"{gain:+.1f} points at target RTG {after['eval_target_rtg']:.0f} in {wall / 60:.1f} min, "
          f"{rows[-1]['iteration']} iterations, {rows[-1]['env_steps']:,} env steps; "
          f"cpu count {os.cpu_count()}; argv {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
