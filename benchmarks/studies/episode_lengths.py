"""Does a locomotion policy score more by moving faster or by falling later? Phase by phase.

For each report column (task, method and setting) of ``evaluations.csv`` files that ``dtrl report``
wrote, prints per phase of the runs (start, quarters) the mean score, episode length, return per step
and share of evaluations at the time limit (``dtrl.report.episodes``).

    python benchmarks/studies/episode_lengths.py benchmarks/results/grpo_robustness/evaluations.csv \\
        --finished-only --max-steps 1000
"""

from __future__ import annotations

import argparse
import sys

from dtrl.errors import DtrlError
from dtrl.report.episodes import by_column, phase_markdown, read_runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="evaluations.csv files of dtrl report")
    parser.add_argument("--finished-only", action="store_true", help="leave out runs that did not finish")
    parser.add_argument("--max-steps", type=int, default=1000, help="the task's episode time limit")
    args = parser.parse_args(argv)
    try:
        runs = read_runs(args.csv, args.finished_only)
    except DtrlError as exc:
        sys.exit(f"error: {exc}")
    if not runs:
        sys.exit("error: no evaluations with episode lengths in " + ", ".join(args.csv))
    for (task, label), column_runs in by_column(runs).items():
        print(phase_markdown(task, label, column_runs, args.max_steps))


if __name__ == "__main__":
    main()
