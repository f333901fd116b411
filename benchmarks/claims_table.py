"""benchmarks/results/claims.md: the seed paper's ablation claims (Fig. 1a-e, 3a-c) measured again at CPU
scale, each with a verdict from a rule fixed before any claims run (2026-12-01).

    python benchmarks/claims_table.py \\
        --table1 benchmarks/results/table1_cpu/evaluations.csv --claims benchmarks/results/claims \\
        --out benchmarks/results/claims.md

Each claim's runs (`sweeps/claims/<claim>.toml`, reported into `<claims>/<claim>/evaluations.csv`)
switch one setting away from the cpu preset. Each run is paired with Table 1's run of the same method,
seed and pretrained DT, which has the preset's value: Δ = switched − preset, per pair, for the final
score and for the late score (mean over the last quarter of the run). Fig. 3c needs no runs of its own.
It compares Table 1's Q-guided GRPO with where that method started, and with GRPO-DT's run of the same
seed and DT.

The verdict rule, per switched value with a direction in the paper:
- fewer than 3 pairs: *pending*;
- the 95% Student-t intervals of the mean Δ final and of the mean Δ late both lie on the side the
  paper predicts: *agrees*;
- both lie on the other side: *disagrees*;
- otherwise *inconclusive at this scale*. With 3 seeds only large effects can be told apart from the
  seed, so this is the verdict to expect for small ones. It does not say the paper is wrong.

A claim's verdict is *pending* while any of its values is, then its values' verdict where they all
have the same one, else *mixed* (see the rows).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from calibrate_budget import CLAIMS, without_preset_values
from dtrl.config import value_text
from dtrl.report import group_runs, late_mean, load_runs, paired_runs, start_score, t_interval

MIN_PAIRS = 3
# What the paper says of each claim, and which way each switched value should move the score against
# the preset's (-1: lower, +1: higher, 0: the paper makes no claim about it). Quotes: the seed paper,
# Sections 3-4.3 and the captions of Figs. 1 and 3.
PAPER = {
    "fig1a_relabel": ("Fig. 1a", "Removing hindsight return relabeling significantly improves stability and "
                      "overall performance (on Hopper relabeling may give transient gains, then collapse).",
                      {True: -1}),
    "fig1b_full_trajectories": ("Fig. 1b", "With full trajectories instead of sub-trajectories the model fails "
                                "to learn (shown on Ant-medium).", {True: -1}),
    "fig1c_consistent_groups": ("Fig. 1c", "Resetting a group to the same state is essential for convergence.",
                                {False: -1}),
    "fig1d_ratio_level": ("Fig. 1d", "Sequence-level importance ratios significantly improve performance over "
                          "token-level ones (geometric: our extra, no claim).", {"token": -1, "geometric": 0}),
    "fig1e_reset_sampling": ("Fig. 1e", "Active selection of reset points gives faster and more stable "
                             "convergence than uniform selection.", {"uniform": -1}),
    "fig3a_sub_trajectory_length": ("Fig. 3a", "Both longer and shorter sub-trajectories lead to inferior "
                                    "results.", {5: -1, 45: -1}),
    "fig3b_eval_steps": ("Fig. 3b", "Longer evaluation steps consistently improve performance; too few lead to "
                         "collapse.", {30: -1, 100: -1, 600: +1}),
}
Q_GUIDED = ("Fig. 3c", "Q-function-guided GRPO-DT, without resetting, still achieves decent performance.")
VERDICT = {+1: "agrees", -1: "disagrees"}
COLUMNS = ["claim", "figure", "method", "switch", "preset", "value", "pairs", "expected", "d_final", "d_final_lo",
           "d_final_hi", "d_late", "d_late_lo", "d_late_hi", "wins", "verdict"]


def verdict(expected: int, final: np.ndarray, late: np.ndarray) -> str:
    """The rule of the module docstring for one switched value (Δ per pair, final and late)."""
    if len(final) < MIN_PAIRS:
        return f"pending ({len(final)} of {MIN_PAIRS} pairs)"
    if expected == 0:
        return "no claim"
    sides = set()
    for values in (final, late):
        interval = t_interval(values)
        if interval is None:
            raise SystemExit("the verdicts need scipy: pip install 'dtrl[report]'")
        _, lo, hi = interval
        sides.add(+1 if lo * expected > 0 and hi * expected > 0 else -1 if lo * expected < 0 and hi * expected < 0
                  else 0)
    return VERDICT.get(sides.pop(), "inconclusive") if len(sides) == 1 else "inconclusive"


def difference_row(values: dict[str, np.ndarray]) -> dict:
    row = {}
    for name, deltas in values.items():
        interval = t_interval(deltas) if len(deltas) >= 2 else None
        row[f"d_{name}"] = float(deltas.mean()) if len(deltas) else None
        row[f"d_{name}_lo"], row[f"d_{name}_hi"] = (interval[1], interval[2]) if interval else (None, None)
    return row


def claim_rows(claim: str, runs: list, task: str) -> list[dict]:
    """One row per (method, switched value) of a claim, from its runs and Table 1's (finished runs, none
    of another claim)."""
    algos, overrides = CLAIMS[claim]
    (switch, _), = overrides.items()
    figure, _, expected = PAPER[claim]
    from dtrl.algos import grpo, ppo  # the presets' values are the reference

    preset = {"grpo": grpo.cpu_preset(task), "ppo": ppo.cpu_preset(task)}
    rows = []
    for algo in algos:
        reference = getattr(preset[algo], switch)
        mine = [r for r in runs if r.config.get("algo") == algo and r.task == task]
        pairs, _ = paired_runs(group_runs(mine), {switch: value_text(reference)})
        value_of = {run.label: run.config.get(switch) for run in mine}  # the label names the switch's value
        by_value: dict[object, list[dict]] = defaultdict(list)
        for pair in pairs:
            by_value[value_of[pair["variant"]]].append(pair)
        for value in without_preset_values(task, [algo], overrides)[switch]:
            found = by_value.get(value, [])
            final = np.array([p["variant_final"] - p["reference_final"] for p in found], float)
            late = np.array([p["variant_late"] - p["reference_late"] for p in found], float)
            rows.append({"claim": claim, "figure": figure, "method": algo, "switch": switch,
                         "preset": value_text(reference), "value": value_text(value), "pairs": len(found),
                         "expected": expected[value], **difference_row({"final": final, "late": late}),
                         "wins": int((final > 0).sum()), "verdict": verdict(expected[value], final, late)})
    return rows


def q_guided_rows(runs: list, task: str) -> list[dict]:
    """Fig. 3c from Table 1: Q-guided GRPO against its own start (the claim: it learns, "decent"), and
    against GRPO-DT's run of the same seed and DT (information, no direction in the paper)."""
    q_runs = [r for r in runs if r.config.get("algo") == "grpo-q" and r.task == task and r.finished]
    grpo_runs = {(r.seed, r.config.get("init")): r for r in runs
                 if r.config.get("algo") == "grpo" and r.task == task and r.finished}
    gains = [(run.final - start, late_mean(run) - start) for run in q_runs
             if run.final is not None and (start := start_score(run)) is not None]
    against = [(run.final - base.final, late_mean(run) - late_mean(base)) for run in q_runs
               if (base := grpo_runs.get((run.seed, run.config.get("init")))) is not None]
    rows = []
    for value, pairs, expected in (("its start", gains, +1), ("GRPO-DT", against, 0)):
        final, late = (np.array(v, float) for v in (zip(*pairs) if pairs else ([], [])))
        rows.append({"claim": "fig3c_q_guided", "figure": Q_GUIDED[0], "method": "grpo-q", "switch": "compared with",
                     "preset": "", "value": value, "pairs": len(final), "expected": expected,
                     **difference_row({"final": final, "late": late}), "wins": int((final > 0).sum()),
                     "verdict": verdict(expected, final, late)})
    return rows


def claim_verdict(rows: list[dict]) -> str:
    found = {row["verdict"] for row in rows if row["expected"] != 0}
    if any(text.startswith("pending") for text in found):
        return "pending"
    return found.pop() if len(found) == 1 else "mixed"


def _cell(row: dict, name: str) -> str:
    if row[f"d_{name}"] is None:
        return "–"
    interval = f" [{row[f'd_{name}_lo']:+.1f}, {row[f'd_{name}_hi']:+.1f}]" if row[f"d_{name}_lo"] is not None else ""
    return f"{row[f'd_{name}']:+.1f}{interval}"


def _switched(row: dict) -> str:
    return f"{row['preset']} → {row['value']}" if row["preset"] else row["value"]


def markdown(rows: list[dict], command: str) -> str:
    statements = {**{claim: text for claim, (_, text, _) in PAPER.items()}, "fig3c_q_guided": Q_GUIDED[1]}
    by_claim: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_claim[row["claim"]].append(row)
    lines = ["# The paper's claims at CPU scale (hopper-random)", "",
             (__doc__ or "").split("\n\n", 2)[2].strip(), "", f"Regenerate: `{command}`", "",
             "| claim | the paper says | verdict |", "|---|---|---|"]
    lines += [f"| {group[0]['figure']} | {statements[claim]} | **{claim_verdict(group)}** |"
              for claim, group in by_claim.items()]
    lines += ["", "Per switched value: Δ = switched − preset (Table 1's run), mean over pairs with a 95% Student-t "
              "interval; *wins*: pairs where the switched run ended higher; *expected*: the paper's direction "
              "(− lower, + higher, 0 none). Fig. 3c: Q-guided GRPO against its start and against GRPO-DT.", "",
              "| figure | method | switch | preset → value | pairs | expected | Δ final | Δ late | wins | verdict |",
              "|---|---|---|---|---:|:---:|---:|---:|---:|---|"]
    sign = {-1: "−", 0: "0", 1: "+"}
    lines += [f"| {r['figure']} | {r['method']} | {r['switch']} | {_switched(r)} | {r['pairs']} "
              f"| {sign[r['expected']]} | {_cell(r, 'final')} | {_cell(r, 'late')} | {r['wins']}/{r['pairs']} "
              f"| {r['verdict']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table1", nargs="+", required=True, help="Table 1's evaluations.csv file(s)")
    parser.add_argument("--claims", default="benchmarks/results/claims",
                        help="folder with <claim>/evaluations.csv, one per claim's report")
    parser.add_argument("--task", default="hopper-random")
    parser.add_argument("--out", default="benchmarks/results/claims.md")
    args = parser.parse_args(argv)
    rows = []
    for claim in CLAIMS:
        # one claim at a time beside Table 1: its switch is then the only setting its runs vary
        found = Path(args.claims) / claim / "evaluations.csv"
        runs = load_runs((), [*args.table1, *([str(found)] if found.is_file() else [])])
        rows += claim_rows(claim, [run for run in runs if run.finished], args.task)
    rows += q_guided_rows([run for run in load_runs((), args.table1) if run.finished], args.task)
    command = (f"python benchmarks/claims_table.py --table1 {' '.join(args.table1)} --claims {args.claims} "
               f"--task {args.task} --out {args.out}")
    out = Path(args.out)
    out.write_text(markdown(rows, command))
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out} and {out.with_suffix('.csv')}: {len(rows)} rows, "
          f"{sum(r['pairs'] for r in rows)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
