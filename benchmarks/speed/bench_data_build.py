"""Benchmark ``dtrl data build``: hopper-random (20k transitions) and hopper-medium (200k) with its
medium-replay from the same SAC run. Reports wall time per phase and each dataset's return (raw and
D4RL-normalised), writes benchmarks/results/data.md and keeps the files in --data-dir for other work.

    nice python benchmarks/speed/bench_data_build.py [--data-dir data] [--medium-transitions 200000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from dtrl.data import SequenceSampler, StateNormalizer, load_dataset
from dtrl.data.builder import BuildConfig, build

RESULTS = Path(__file__).resolve().parents[1] / "results" / "data.md"


def bench_sampler(path: Path, task: str, batch_size: int = 256, context_length: int = 20, batches: int = 200) -> str:
    """Loading time and SequenceSampler throughput on a built dataset (one markdown line)."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    dataset = load_dataset(str(path), task)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    sampler = SequenceSampler(dataset.trajectories, context_length, 1000.0,
                              StateNormalizer.from_trajectories(dataset.trajectories), rng=0)
    setup_s = time.perf_counter() - start
    sampler.sample(batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        sampler.sample(batch_size)
    per_batch_ms = (time.perf_counter() - start) / batches * 1e3
    return (f"- `{path.name}` ({dataset.n_transitions} transitions, {dataset.n_episodes} episodes): load_dataset "
            f"{load_s:.2f} s, sampler setup {setup_s:.2f} s, sample(B={batch_size}, K={context_length}) "
            f"{per_batch_ms:.2f} ms per batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="relative to the working directory (default: data)")
    parser.add_argument("--random-transitions", type=int, default=20_000)
    parser.add_argument("--medium-transitions", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--sampler-only", action="store_true",
                        help="skip the builds; append load/sampler timings on the files in --data-dir to the results")
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.sampler_only:
        lines = ["", f"## Loading and sampling ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, same shared "
                     f"machine, load average {os.getloadavg()[0]:.1f}, 1 torch thread)", ""]
        for name, task in (("hopper-random", "hopper-random"), ("hopper-medium", "hopper-medium"),
                           ("hopper-medium-replay", "hopper-medium-replay")):
            if (data_dir / f"{name}.hdf5").exists():
                lines.append(bench_sampler(data_dir / f"{name}.hdf5", task))
        with RESULTS.open("a") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return

    runs = []
    start = time.perf_counter()
    random_summary = build(BuildConfig(dataset="hopper-random", out=str(data_dir / "hopper-random.hdf5"),
                                       transitions=args.random_transitions, seed=args.seed, force=True,
                                       progress=not args.no_progress))
    runs.append(("hopper-random", time.perf_counter() - start, random_summary))
    start = time.perf_counter()
    medium_summary = build(BuildConfig(dataset="hopper-medium", out=str(data_dir / "hopper-medium.hdf5"),
                                       replay_out=str(data_dir / "hopper-medium-replay.hdf5"),
                                       transitions=args.medium_transitions, seed=args.seed, force=True,
                                       progress=not args.no_progress))
    runs.append(("hopper-medium (+ medium-replay)", time.perf_counter() - start, medium_summary))

    lines = [
        "# dtrl data build benchmark",
        "",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {os.cpu_count()}-core CPU "
        f"({platform.processor() or platform.machine()}), no GPU, shared with ~6 other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end), so timings are noisy and pessimistic.",
        "Command: `nice python benchmarks/speed/bench_data_build.py` (SAC: [256, 256], batch 256, "
        "learning_starts 5000, train_freq 1, 1 torch thread; stops at stochastic eval return >= normalised 33.3).",
        "Goal: hopper-medium in under an hour here.",
        "",
        "| build | total s | phases (s) | file | transitions | episodes | return mean ± std | normalised mean ± std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, total, summary in runs:
        phases = ", ".join(f"{k} {v:.0f}" for k, v in summary["phases"].items())
        for path, entry in summary["files"].items():
            lines.append(
                f"| {name} | {total:.0f} | {phases} | {Path(path).name} | "
                f"{entry['transitions']} | {entry['episodes']} | "
                f"{entry['return_mean']:.1f} ± {entry['return_std']:.1f} | "
                f"{entry.get('normalized_mean', float('nan')):.1f} ± {entry.get('normalized_std', float('nan')):.1f} |")
    sac = medium_summary.get("sac", {})
    if sac:
        lines += ["", f"SAC reached the medium point after {sac['steps']} env steps "
                      f"(evaluation return {sac['eval_return']:.1f}, target {sac['target']:.1f}, "
                      f"reached: {sac['reached']}).",
                  "Evaluations (step: stochastic return): "
                  + ", ".join(f"{s}: {r:.0f}" for s, r in sac["evaluations"])]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
