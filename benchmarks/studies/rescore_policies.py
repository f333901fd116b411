"""Re-score finished runs' final and best in-run policies on fresh episodes.

A run's best in-run evaluation is the maximum of many noisy 5-episode evaluations, so it is biased
upwards; its saved ``best_policy`` re-scored on episodes it was not selected on says how much of
that best is real. The final policy is re-scored the same way, so the two compare on equal terms.

    python benchmarks/studies/rescore_policies.py runs/grpo_robustness runs/grpo_robustness_v2 \
        --episodes 20 --seed 123456 --out benchmarks/results/grpo_rescored.csv

Every finished run (``final.json``) under the given folders is evaluated with ``dtrl eval`` (mean
action, the RTG and context its trainer evaluated at): ``RUN/policy`` and, when the run kept one,
``RUN/best_policy``. Rows already in ``--out`` are not evaluated again, so the script can be re-run
as a study grows. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

COLUMNS = ["run", "policy", "selected_iteration", "selected_score", "episodes", "seed", "normalized_mean",
           "normalized_std", "length_mean"]


def finished_runs(roots: list[str]) -> list[Path]:
    return sorted({path.parent for root in roots for path in Path(root).rglob("final.json")})


def rescore(policy_dir: Path, episodes: int, seed: int) -> dict:
    command = [sys.executable, "-m", "dtrl", "eval", str(policy_dir), "--episodes", str(episodes), "--seed",
               str(seed), "--threads", "1", "--json"]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="folders holding run directories (a sweep's out_root)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=123456, help="env seed of the first episode (in-run "
                        "evaluations use 10000 + the run's seed)")
    parser.add_argument("--out", type=Path, required=True, help="CSV of every re-scored policy (appended to)")
    args = parser.parse_args()
    rows = list(csv.DictReader(args.out.open())) if args.out.is_file() else []
    done = {(r["run"], r["policy"]) for r in rows}
    for run in finished_runs(args.roots):
        for name in ("policy", "best_policy"):
            if (str(run), name) in done or not (run / name / "model.json").is_file():
                continue
            extra = json.loads((run / name / "model.json").read_text()).get("extra", {})
            result = rescore(run / name, args.episodes, args.seed)
            rows.append({"run": str(run), "policy": name, "selected_iteration": extra.get("iteration", ""),
                         "selected_score": extra.get("eval_normalized_mean", ""), "episodes": args.episodes,
                         "seed": args.seed, "normalized_mean": result["eval_normalized_mean"],
                         "normalized_std": result["eval_normalized_std"], "length_mean": result["eval_length_mean"]})
            with args.out.open("w", newline="") as handle:  # after every policy: a stopped run loses nothing
                writer = csv.DictWriter(handle, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    by_run: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_run.setdefault(row["run"], {})[row["policy"]] = row
    print(f"| run | final, re-scored ({args.episodes} episodes) | best in-run (iteration) | best, re-scored |")
    print("|---|---:|---:|---:|")
    for run, policies in sorted(by_run.items()):
        final, best = policies.get("policy"), policies.get("best_policy")
        cells = [f"{float(final['normalized_mean']):.1f} ± {float(final['normalized_std']):.1f}" if final else "–"]
        if best:
            cells += [f"{float(best['selected_score']):.1f} ({best['selected_iteration']})",
                      f"{float(best['normalized_mean']):.1f} ± {float(best['normalized_std']):.1f}"]
        else:
            cells += ["–", "–"]
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
