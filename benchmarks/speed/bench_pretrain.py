"""Benchmark: cpu-preset offline pretraining + evaluation, and rollout-engine throughput.

    python benchmarks/speed/bench_pretrain.py \\
        --pretrain hopper-medium=data/hopper-medium.hdf5 \\
        --pretrain hopper-random=data/hopper-random-200k.hdf5 \\
        --runs-dir runs --speed --preset-study data/hopper-random-200k.hdf5 \\
        --results benchmarks/results/pretrain.md

For each ``TASK=DATASET`` it runs ``dtrl pretrain --preset cpu`` into ``RUNS_DIR/pretrain-TASK-cpu``
(a finished run is reused; an interrupted one resumed), then writes a markdown table with the
pretrained DT's D4RL-normalised return next to the dataset's own (a DT imitates its data), the wall
time and the gradient-step rate. The rollout part measures env steps per second of
``rollout_episodes`` (N copies, one batched model call per step) against stepping the same envs with
constant actions (no model), and of ``rollout_from_snapshots`` (GRPO groups).
The preset study times model sizes and compares two learning rates, the numbers the cpu preset was chosen from.
Timings on a shared machine are noisy; speed targets are stated in the results, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from dtrl.cli import main as dtrl  # noqa: E402
from dtrl.data import load_dataset  # noqa: E402
from dtrl.runs import has_checkpoint, is_finished  # noqa: E402
from dtrl.tasks import get_task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: machine.py
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def pretrain(task_name: str, dataset: str, runs_dir: Path, steps: int | None, eval_episodes: int) -> dict:
    run = runs_dir / f"pretrain-{task_name}-cpu"
    argv = ["pretrain", "--task", task_name, "--dataset", dataset, "--preset", "cpu", "--out", str(run),
            "--threads", "1", "--eval-episodes", str(eval_episodes)]
    if steps is not None:
        argv += ["--steps", str(steps)]
    started = time.time()
    if not is_finished(run):
        if has_checkpoint(run):
            argv.append("--resume")
        code = dtrl(argv)
        if code != 0:
            raise SystemExit(f"dtrl {' '.join(argv)} failed with exit code {code}")
    final = json.loads((run / "final.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    task = get_task(task_name)
    data = load_dataset(dataset, task)
    returns = data.returns()
    normalised = np.array([task.normalize(r) for r in returns]) if task.has_reference else None
    rates = [m["charts/grad_steps_per_s"] for m in metrics if "charts/grad_steps_per_s" in m]
    return {
        "task": task_name, "dataset": dataset, "command": "dtrl " + " ".join(argv),
        "run": os.path.relpath(run) if run.is_absolute() else str(run),  # as given, or relative to the working dir
        "steps": final["grad_updates"], "model": config["model"], "batch_size": config["batch_size"],
        "learning_rate": config["learning_rate"],
        "wall_time_s": final["wall_time_s"], "this_call_s": time.time() - started,
        "grad_steps_per_s": float(np.median(rates)) if rates else None,
        "dataset_return": (float(returns.mean()), float(returns.std())),
        "dataset_normalized": None if normalised is None else (float(normalised.mean()), float(normalised.std())),
        "dataset_episodes": len(returns), "dataset_transitions": data.n_transitions,
        "dataset_builder": {k: str(data.attrs[k]) for k in ("builder", "created", "seed") if k in data.attrs},
        "eval": {k: final.get(k) for k in ("eval_return_mean", "eval_return_std", "eval_normalized_mean",
                                           "eval_normalized_std", "eval_length_mean", "eval_episodes",
                                           "eval_target_rtg")},
        "curve": [(m["grad_updates"], m.get("eval_normalized_mean")) for m in metrics if "eval_return_mean" in m],
    }


def rollout_speed(num_envs: int, steps: int, repeats: int) -> dict:
    """Env steps/s: model rollouts vs constant actions, in-process envs, cpu-preset model."""
    from dtrl.algos.pretrain import cpu_preset
    from dtrl.data import StateNormalizer
    from dtrl.envs import BatchedEnv
    from dtrl.models import build_model
    from dtrl.models.checkpoint import LoadedPolicy
    from dtrl.rollout import rollout_episodes, rollout_from_snapshots

    task = get_task("hopper-medium")
    config = cpu_preset(task.name).model
    torch.manual_seed(0)
    model = build_model(config, 11, 3)
    with torch.no_grad():  # a near-zero policy keeps Hopper alive for the whole measured horizon
        model.action_mu.weight.zero_()
        model.action_mu.bias.zero_()
        model.action_log_std.bias.fill_(-3.0)
    policy = LoadedPolicy(model, StateNormalizer.identity(11), task.reward_scale, task.name)
    envs = BatchedEnv(task, num_envs, num_workers=0)
    best = {}
    for _ in range(repeats):
        # env only: the same copies stepped with zero actions
        envs.reset(list(range(num_envs)))
        zero = np.zeros((num_envs, 3), np.float32)
        active = np.ones(num_envs, bool)
        started = time.perf_counter()
        done_steps = 0
        for _ in range(steps):
            _, _, term, trunc = envs.step(zero, active)
            done_steps += int(active.sum())
            active &= ~(term | trunc)
        best["env_only"] = max(best.get("env_only", 0.0), done_steps / (time.perf_counter() - started))

        started = time.perf_counter()
        trajs = rollout_episodes(policy, envs, task, 3600.0, list(range(num_envs)), mode="sample",
                                 max_steps=steps)
        total = sum(len(t) for t in trajs)
        best["rollout_episodes"] = max(best.get("rollout_episodes", 0.0), total / (time.perf_counter() - started))

        started = time.perf_counter()
        trajs = rollout_episodes(policy, envs, task, 3600.0, list(range(num_envs)), mode="sample",
                                 record_snapshots=True, max_steps=steps)
        total = sum(len(t) for t in trajs)
        best["rollout_episodes_snapshots"] = max(best.get("rollout_episodes_snapshots", 0.0),
                                                 total / (time.perf_counter() - started))

        groups = num_envs // 8
        starts = []
        for g in range(groups):
            traj = trajs[g]
            starts += [traj.branch_start(min(len(traj) - 1, 60 + 5 * g), model.receptive_field)] * 8
        started = time.perf_counter()
        result = rollout_from_snapshots(policy, envs, starts, sampled_steps=15, mean_steps=60, gamma=0.995)
        best["rollout_from_snapshots"] = max(best.get("rollout_from_snapshots", 0.0),
                                             result.env_steps / (time.perf_counter() - started))
    envs.close()
    return {"num_envs": num_envs, "steps": steps, "repeats": repeats, "steps_per_s": best,
            "model": f"{config.n_layer} layers, {config.embed_dim} wide, K={config.context_length}"}


def preset_study(dataset: str, lr_steps: int) -> dict:
    """What the cpu preset's numbers rest on: time per gradient step by width/depth (batch 64, K=10),
    and the training NLL after ``lr_steps`` steps at two learning rates (64 wide, LAMB)."""
    from dtrl.algos.pretrain import build_optimizers, cpu_preset, pretrain_step
    from dtrl.data import SequenceSampler, StateNormalizer
    from dtrl.models import build_model

    task = get_task("hopper-random")
    trajectories = load_dataset(dataset, task).trajectories
    normalizer = StateNormalizer.from_trajectories(trajectories)
    timings = []
    for n_layer, embed_dim in ((2, 64), (3, 64), (3, 96), (3, 128)):
        config = cpu_preset(task.name)
        config.model.n_layer, config.model.embed_dim = n_layer, embed_dim
        torch.manual_seed(0)
        sampler = SequenceSampler(trajectories, config.model.context_length, task.reward_scale, normalizer, rng=0)
        model = build_model(config.model, 11, 3)
        optimizers = build_optimizers(config, model)
        for _ in range(3):
            pretrain_step(model, sampler.sample(config.batch_size), *optimizers, config.grad_clip)
        started = time.perf_counter()
        for _ in range(15):
            pretrain_step(model, sampler.sample(config.batch_size), *optimizers, config.grad_clip)
        timings.append((n_layer, embed_dim, (time.perf_counter() - started) / 15 * 1000))
    learning = []
    for lr in (1e-3, 3e-4):
        config = cpu_preset(task.name)
        config.learning_rate, config.warmup_steps = lr, 100
        torch.manual_seed(0)
        sampler = SequenceSampler(trajectories, config.model.context_length, task.reward_scale, normalizer, rng=0)
        model = build_model(config.model, 11, 3)
        optimizers = build_optimizers(config, model)
        nll = []
        for _ in range(lr_steps):
            nll.append(pretrain_step(model, sampler.sample(config.batch_size), *optimizers,
                                     config.grad_clip)["losses/action_nll"])
        learning.append((lr, float(np.mean(nll[-20:]))))
    return {"timings": timings, "learning": learning, "lr_steps": lr_steps, "dataset": dataset}


def machine() -> str:
    cpu = cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()}-core CPU ({cpu}), no GPU, torch {torch.__version__} with 1 thread; shared with other "
            f"jobs (1-min load average {load:.1f} at the end of the run)")


def fmt_pair(pair, digits=1) -> str:
    return "n/a" if pair is None else f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def write_results(path: Path, pretrains: list[dict], speed: dict | None, study: dict | None) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    lines = [
        "# Offline pretraining (cpu preset) and rollout throughput",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Commit {commit.strip() or '?'}.",
        f"Machine: {machine()}. All timings are noisy (other helpers' jobs ran at the same time).",
        f"Produced by `python benchmarks/speed/bench_pretrain.py {' '.join(sys.argv[1:])}`.",
        "",
    ]
    if pretrains:
        lines += [
            "## Pretrained DT vs its dataset",
            "",
            "A Decision Transformer imitates its data, conditioned on the target return: the pretrained policy's",
            "score (mean action, target RTG = task eval RTG, fixed eval seeds) should be near the dataset's own.",
            "",
            "| task | dataset (episodes) | dataset normalised | pretrained DT normalised | DT raw return "
            "| DT episode length | grad steps | wall time | grad steps/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in pretrains:
            e = p["eval"]
            dt_norm = fmt_pair(None if e["eval_normalized_mean"] is None else
                               (e["eval_normalized_mean"], e["eval_normalized_std"]))
            lines.append(
                f"| {p['task']} | `{Path(p['dataset']).name}` ({p['dataset_episodes']}) | "
                f"{fmt_pair(p['dataset_normalized'])} | {dt_norm} "
                f"({e['eval_episodes']} ep., RTG {e['eval_target_rtg']:.0f}) | "
                f"{e['eval_return_mean']:.0f} ± {e['eval_return_std']:.0f} | {e['eval_length_mean']:.0f} | "
                f"{p['steps']} | {p['wall_time_s'] / 60:.1f} min | {p['grad_steps_per_s'] or float('nan'):.1f} |")
        lines += [""]
        for p in pretrains:
            m = p["model"]
            curve = ", ".join(f"{s}: {v:.1f}" for s, v in p["curve"] if v is not None)
            lines += [
                f"- **{p['task']}**: `{p['command']}` -> `{p['run']}`; model {m['n_layer']} layers x {m['n_head']} "
                f"head(s), {m['embed_dim']} wide, K={m['context_length']}, batch {p['batch_size']}, "
                f"lr {p['learning_rate']}. Normalised score during training (grad step: score): {curve}. "
                f"Dataset: {p['dataset_transitions']} transitions, "
                f"{', '.join(f'{k} {v}' for k, v in p['dataset_builder'].items()) or 'no builder metadata'}.",
            ]
        lines += [""]
    if speed:
        s = speed["steps_per_s"]
        lines += [
            "## Rollout engine throughput",
            "",
            f"{speed['num_envs']} Hopper copies in-process, up to {speed['steps']} steps each, cpu-preset model "
            f"({speed['model']}); best of {speed['repeats']}. Env steps per second (all copies together):",
            "",
            "| what | env steps/s |",
            "|---|---|",
            f"| envs alone, zero actions (no model) | {s['env_only']:.0f} |",
            f"| `rollout_episodes` (sampled actions, one KV-cached model call per step) | "
            f"{s['rollout_episodes']:.0f} |",
            f"| `rollout_episodes` + env snapshot every step (GRPO collection) | "
            f"{s['rollout_episodes_snapshots']:.0f} |",
            f"| `rollout_from_snapshots` (groups of 8, prefilled history, L=15 sampled + M=60 mean) | "
            f"{s['rollout_from_snapshots']:.0f} |",
            "",
            "Target (not asserted): the policy should cost no more than the envs themselves at this batch size, "
            "i.e. `rollout_episodes` >= 1/2 of the env-only rate.",
            "",
        ]
    if study:
        lines += [
            "## Why the cpu preset is 3 layers x 64 wide at lr 1e-3",
            "",
            "Time per gradient step (batch 64, K=10, 1 head, 1 thread, noisy):",
            "",
            "| layers | width | ms/step |",
            "|---|---|---|",
            *[f"| {n} | {w} | {ms:.0f} |" for n, w, ms in study["timings"]],
            "",
            f"Training NLL (mean of the last 20 steps) after {study['lr_steps']} steps of the cpu preset on "
            f"`{Path(study['dataset']).name}` (100 warm-up steps): "
            + ", ".join(f"lr {lr:g}: {nll:.2f}" for lr, nll in study["learning"]) + ".",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain", action="append", default=[], metavar="TASK=DATASET",
                        help="pretrain the cpu preset on this dataset (repeatable)")
    parser.add_argument("--steps", type=int, default=None, help="gradient steps (default: the cpu preset's)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--runs-dir", default="runs", help="relative to the working directory (default: runs)")
    parser.add_argument("--speed", action="store_true", help="also measure rollout throughput")
    parser.add_argument("--speed-envs", type=int, default=32)
    parser.add_argument("--speed-steps", type=int, default=200)
    parser.add_argument("--preset-study", default="", metavar="DATASET",
                        help="also time model sizes and compare learning rates on this hopper-random dataset")
    parser.add_argument("--preset-study-steps", type=int, default=300)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "pretrain.md"))
    args = parser.parse_args()
    pretrains = []
    for spec in args.pretrain:
        task_name, _, dataset = spec.partition("=")
        if not dataset:
            parser.error(f"--pretrain needs TASK=DATASET, got {spec!r}")
        pretrains.append(pretrain(task_name, dataset, Path(args.runs_dir), args.steps, args.eval_episodes))
        print(json.dumps(pretrains[-1], indent=1))
    speed = rollout_speed(args.speed_envs, args.speed_steps, repeats=3) if args.speed else None
    if speed:
        print(json.dumps(speed, indent=1))
    study = preset_study(args.preset_study, args.preset_study_steps) if args.preset_study else None
    if study:
        print(json.dumps(study, indent=1))
    write_results(Path(args.results), pretrains, speed, study)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
