"""Does a locomotion policy score more by moving faster or by falling later? Phase by phase.

A normalised return is (reward per step) x (episode length), rescaled. This splits each run's in-run
evaluations into the start (iteration 0) and quarters of the run. For each report column (task,
method and setting) it prints, per phase, the mean over the column's runs of the score, the episode
length, the return per step and the share of evaluations whose mean length reached the time limit
(no episode fell). It reads the ``evaluations.csv`` files that
``dtrl report`` writes (files from before episode lengths were stored are refused), so it works on
committed results without the run directories.

    python benchmarks/episode_lengths.py benchmarks/results/grpo_robustness/evaluations.csv \\
        --finished-only --max-steps 1000
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict

import numpy as np


def read_runs(paths: list[str], finished_only: bool) -> dict[str, list[dict]]:
    """Evaluation rows by run. A run held by several files (a study continued across sessions) counts
    once, by the copy that got furthest, as in ``dtrl report``: a finished copy first, then the one with
    the latest evaluation."""
    copies: dict[str, list[list[dict]]] = defaultdict(list)
    for path in paths:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "eval_length_mean" not in rows[0]:
            sys.exit(f"error: {path} has no eval_length_mean column (rebuild it with a newer dtrl report)")
        by_run: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_run[row["run"]].append(row)
        for run, run_rows in by_run.items():
            copies[run].append(run_rows)
    runs, without_lengths = {}, []
    for run, run_copies in copies.items():
        rows = max(run_copies, key=lambda c: (c[0]["finished"] == "1", max(_iteration(r) for r in c)))
        if finished_only and rows[0]["finished"] != "1":
            continue
        if all(row["eval_length_mean"] == "" for row in rows):
            without_lengths.append(run)  # evaluated before lengths were logged
            continue
        runs[run] = rows
    if without_lengths:
        print(f"left out {len(without_lengths)} run(s) without episode lengths", file=sys.stderr)
    return runs


def _iteration(row: dict) -> int:
    return int(float(row["iteration"]))


def planned_iterations(rows: list[dict]) -> int:
    """The iterations the run was set to do (its config rides on its first row), so an unfinished run's
    evaluations fall in the phase they belong to; the last evaluated iteration when there is no config."""
    config = json.loads(rows[0].get("config") or "{}")
    return int(config.get("iterations") or max(_iteration(row) for row in rows))


def phase_table(runs: dict[str, list[dict]], max_steps: int) -> list[tuple]:
    """(phase, runs, score, length, return per step, share at the time limit), each a mean over runs.
    The phases are the start (iteration 0) and quarters of the planned iterations; the last quarter
    starts one evaluation later than the report's *late* score, which includes the 75% point."""
    phases: dict[str, list[tuple]] = defaultdict(list)
    for rows in runs.values():
        last = planned_iterations(rows)
        for row in rows:
            if row["eval_length_mean"] == "":
                continue
            iteration = _iteration(row)
            if iteration == 0:
                phase = "start"
            else:
                quarter = min(3, (iteration - 1) * 4 // last)
                phase = f"{quarter * 25}-{(quarter + 1) * 25}%"
            length = float(row["eval_length_mean"])
            # the normalised score where the task has reference scores, else the raw return
            score = float(row["eval_normalized_mean"] or row["eval_return_mean"])
            phases[phase].append((row["run"], score, length, float(row["eval_return_mean"]) / length,
                                  length >= max_steps))
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="evaluations.csv files of dtrl report")
    parser.add_argument("--finished-only", action="store_true", help="leave out runs that did not finish")
    parser.add_argument("--max-steps", type=int, default=1000, help="the task's episode time limit")
    args = parser.parse_args(argv)
    runs = read_runs(args.csv, args.finished_only)
    if not runs:
        sys.exit("error: no evaluations with episode lengths in " + ", ".join(args.csv))
    by_column: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(dict)
    for run, rows in runs.items():  # one table per task and report column (method and setting)
        by_column[(rows[0]["task"], rows[0]["label"])][run] = rows
    for (task, label), column_runs in sorted(by_column.items()):
        print(f"\n{task}, {label}: {len(column_runs)} runs\n")
        print("| phase of the run | runs | score | episode length | return per step | evaluations at the time limit |")
        print("|---|---:|---:|---:|---:|---:|")
        for phase, count, score, length, per_step, at_limit in phase_table(column_runs, args.max_steps):
            print(f"| {phase} | {count} | {score:.1f} | {length:.0f} | {per_step:.2f} | {at_limit:.0%} |")


if __name__ == "__main__":
    main()
