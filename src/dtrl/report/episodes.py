"""Does a locomotion policy score more by moving faster or by falling later? Phase by phase.

A normalised return is (reward per step) x (episode length), rescaled. ``phase_table`` splits each run's
in-run evaluations into the start (iteration 0) and quarters of the run: per phase, the mean over runs of
the score, the episode length, the return per step and the share of evaluations whose mean length reached
the time limit (no episode fell). It reads the ``evaluations.csv`` files that ``dtrl report`` writes
(files from before episode lengths were stored are refused), so it works on committed results without the
run directories. Command line: ``benchmarks/studies/episode_lengths.py``.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

import numpy as np

from dtrl.errors import DtrlError
from dtrl.report.load import RunResult, load_runs


def read_runs(paths: list[str], finished_only: bool) -> dict[str, RunResult]:
    """The runs of ``evaluations.csv`` files by path, read and labelled as ``dtrl report`` does (a run
    held by several files counts once, by the copy that got furthest)."""
    for path in paths:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
        if "eval_length_mean" not in header:
            raise DtrlError(f"{path} has no eval_length_mean column (rebuild it with a newer dtrl report)")
    runs = {}
    for run in load_runs((), paths):
        if finished_only and not run.finished:
            continue
        if all(row.get("eval_length_mean") is None for row in run.metrics):
            print(f"left out {run.path}: no episode lengths (evaluated before they were logged)", file=sys.stderr)
            continue
        runs[str(run.path)] = run
    return runs


def phase_table(runs: dict[str, RunResult], max_steps: int) -> list[tuple]:
    """(phase, runs, score, length, return per step, share at the time limit), each a mean over runs.
    The phases are the start (iteration 0) and quarters of the run's planned iterations (its config's;
    the last evaluated one without a config), so an unfinished run's evaluations fall in the phase they
    belong to. The last quarter starts one evaluation later than the report's *late* score, which
    includes the 75% point."""
    phases: dict[str, list[tuple]] = defaultdict(list)
    for name, run in runs.items():
        last = int(run.config.get("iterations") or max(row["iteration"] for row in run.metrics))
        for row in run.metrics:
            length = row.get("eval_length_mean")
            if length is None:
                continue
            iteration = row["iteration"]
            if iteration == 0:
                phase = "start"
            else:
                quarter = min(3, (iteration - 1) * 4 // last)
                phase = f"{quarter * 25}-{(quarter + 1) * 25}%"
            # the normalised score where the task has reference scores, else the raw return
            score = row["eval_normalized_mean"] if run.metric == "normalized" else row["eval_return_mean"]
            phases[phase].append((name, score, length, row["eval_return_mean"] / length, length >= max_steps))
    table = []
    for phase in ["start", "0-25%", "25-50%", "50-75%", "75-100%"]:
        if not phases[phase]:
            continue
        by_run: dict[str, list[tuple]] = defaultdict(list)
        for run, *values in phases[phase]:
            by_run[run].append(values)
        means = np.array([np.mean(np.array(v, dtype=float), axis=0) for v in by_run.values()])
        table.append((phase, len(by_run), *means.mean(axis=0)))
    return table


def phase_markdown(task: str, label: str, runs: dict[str, RunResult], max_steps: int) -> str:
    """One report column's phase table in markdown, under a line naming the column."""
    lines = [f"\n{task}, {label}: {len(runs)} runs\n",
             "| phase of the run | runs | score | episode length | return per step | evaluations at the time limit |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {phase} | {count} | {score:.1f} | {length:.0f} | {per_step:.2f} | {at_limit:.0%} |"
              for phase, count, score, length, per_step, at_limit in phase_table(runs, max_steps)]
    return "\n".join(lines)


def by_column(runs: dict[str, RunResult]) -> dict[tuple[str, str], dict[str, RunResult]]:
    """The runs of each report column (task, method and setting), sorted by column."""
    columns: dict[tuple[str, str], dict[str, RunResult]] = defaultdict(dict)
    for name, run in runs.items():
        columns[(run.task, run.label)][name] = run
    return dict(sorted(columns.items()))
