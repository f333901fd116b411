"""A long run's diagnostics phase by phase: the mean of each metric over the run's rows in each range of
iterations, one markdown row per range (the tables of benchmarks/results/paper-scale.md).

    python benchmarks/studies/run_phases.py runs/paper_scale/hopper-random/grpo/seed1 \
        --phases 0-110 120-230 240-350 360-500

A metric's mean is over the rows in the range that record it (evaluations every 10 iterations; the
training metrics every iteration). The default metrics are GRPO-DT's diagnostics (docs/grpo.md):
score, within-group score std, groups ε_GRPO drops, clip fraction (all / data ≥ 4 iterations old),
entropy, full-episode length.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro
from tyro.conf import Positional

from dtrl.runs import read_metrics

DEFAULT_METRICS = ("eval_normalized_mean", "grpo/score_std_within_group", "grpo/groups_dropped",
                   "losses/clipfrac", "diagnostics/clipfrac_age4+", "losses/entropy", "charts/rollout_length")


@dataclass
class Args:
    runs: Positional[tuple[str, ...]]
    """run directories"""
    phases: list[str] = field(default_factory=lambda: ["0-110", "120-230", "240-350", "360-500"])
    """iteration ranges FIRST-LAST (inclusive)"""
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))


def phase_means(rows: list[dict], first: int, last: int, metrics: list[str]) -> list[float]:
    chosen = [r for r in rows if first <= r["iteration"] <= last]
    means = []
    for metric in metrics:
        values = [r[metric] for r in chosen if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        means.append(sum(values) / len(values) if values else math.nan)
    return means


def table(run: str, rows: list[dict], phases: list[str], metrics: list[str]) -> str:
    lines = [f"{run}:", "", "| iterations | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for phase in phases:
        first, _, last = phase.partition("-")
        means = phase_means(rows, int(first), int(last), metrics)
        lines.append(f"| {phase} | " + " | ".join(f"{m:.2f}" if abs(m) < 10 else f"{m:.1f}" for m in means) + " |")
    return "\n".join(lines)


def main() -> None:
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    for run in args.runs:
        if not Path(run).is_dir():
            sys.exit(f"run_phases: {run}: no such directory")
        print(table(run, read_metrics(run), args.phases, args.metrics) + "\n")


if __name__ == "__main__":
    main()
