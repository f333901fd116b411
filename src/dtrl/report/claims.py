"""The seed paper's ablation claims (Fig. 1a-e, 3a-c) measured again at CPU scale
(``benchmarks/results/claims.md``), each with a verdict from a rule fixed before any claims run (2026-12-01).

    python benchmarks/studies/claims_table.py \\
        --table1 benchmarks/results/table1_cpu/evaluations.csv --claims benchmarks/results/claims \\
        --out benchmarks/results/claims.md

Each claim's runs (study `<claim>` of `sweeps/claims.toml`, reported into `<claims>/<claim>/evaluations.csv`)
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
- otherwise *inconclusive*, at this scale: with 3 seeds only large effects can be told apart from the
  seed, so this is the verdict to expect for small ones. It does not say the paper is wrong.

Only pairs that differ in the switch alone count: a pair whose runs differ in another setting too
(e.g. a claim run launched from a spec older than Table 1's tuned settings) is left out and counted
under *excluded*.

A claim's verdict is *pending* while any of its values is, then its values' verdict where they all
have the same one, else *mixed* (see the rows).
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from dtrl.config import value_text
from dtrl.errors import DtrlError
from dtrl.report.load import RunResult, group_runs, load_runs, relative_path
from dtrl.report.stats import (
    bootstrap_estimates,
    late_mean,
    paired_runs,
    same_starting_weights,
    start_score,
    t_interval,
)

# the paper's claims (Fig. 1a-e, 3a): algorithms and the one switch each figure changes. A claim's
# spec runs only the switched values: the preset's own value is Table 1's run of the same method,
# seed and DT (sweeps/table1_cpu.toml), its paired baseline. Fig. 3c (reset-based vs Q-guided GRPO)
# compares two Table 1 columns and needs no runs of its own.
CLAIMS = {
    "fig1a_relabel": (["grpo", "ppo"], {"hindsight_relabel": [False, True]}),
    "fig1b_full_trajectories": (["grpo"], {"full_trajectories": [False, True]}),
    "fig1c_consistent_groups": (["grpo"], {"consistent_group_states": [True, False]}),
    "fig1d_ratio_level": (["grpo"], {"ratio_level": ["sequence", "token", "geometric"]}),
    "fig1e_reset_sampling": (["grpo"], {"reset_sampling": ["active", "uniform"]}),
    "fig3a_sub_trajectory_length": (["grpo"], {"sub_trajectory_length": [5, 15, 45]}),
    # 600: twice the cpu preset's 300, to test "longer consistently improves" above it too (and whether
    # a longer horizon helps the late falls of benchmarks/results/grpo.md, "Speed first, then survival")
    "fig3b_eval_steps": (["grpo"], {"eval_steps": [30, 100, 300, 600]}),
}


def without_preset_values(presets: dict, algos: list[str], overrides: dict) -> dict:
    """The switch values other than every algorithm's preset value (those runs are Table 1's);
    ``presets``: {algo: its cpu preset config} (the study scripts pass ``cpu_preset(task)`` of each)."""
    kept = {name: [v for v in values if all(getattr(presets[a], name) != v for a in algos)]
            for name, values in overrides.items()}
    for name, values in kept.items():
        if not values:
            raise DtrlError(f"claim switch {name}: every value is a preset's")
    return kept


MIN_PAIRS = 3
# What the paper says of each claim, and which way each switched value should move the score against
# the preset's (-1: lower, +1: higher, 0: the paper makes no claim about it). Quotes: the seed paper,
# Sections 3-4.3 and the captions of Figs. 1 and 3.
PAPER = {
    "fig1a_relabel": ("Fig. 1a", "Removing hindsight return relabeling significantly improves stability and "
                      "overall performance (on Hopper relabeling may give transient gains, then collapse). "
                      "The figure shows GRPO; PPO rests on Section 3.1's text.", {True: -1}),
    "fig1b_full_trajectories": ("Fig. 1b", "With full trajectories instead of sub-trajectories the model fails "
                                "to learn (shown on Ant-medium).", {True: -1}),
    "fig1c_consistent_groups": ("Fig. 1c", "Resetting a group to the same state is essential for convergence.",
                                {False: -1}),
    "fig1d_ratio_level": ("Fig. 1d", "Sequence-level importance ratios significantly improve performance over "
                          "token-level ones; Eq. (3) also beats the geometric mean of Zheng et al. (2025) "
                          "(Section 3.2).", {"token": -1, "geometric": -1}),
    "fig1e_reset_sampling": ("Fig. 1e", "Active selection of reset points gives faster and more stable "
                             "convergence than uniform selection (final and late scores test where runs end, "
                             "not how fast they get there: see the claim's curves).", {"uniform": -1}),
    "fig3a_sub_trajectory_length": ("Fig. 3a", "Both longer and shorter sub-trajectories lead to inferior "
                                    "results.", {5: -1, 45: -1}),
    "fig3b_eval_steps": ("Fig. 3b", "Longer evaluation steps consistently improve performance; too few lead to "
                         "collapse. (The paper's range is 30-400, Hopper's value 400; 600 extends it.)",
                         {30: -1, 100: -1, 600: +1}),
}
Q_GUIDED = ("Fig. 3c", "Q-function-guided GRPO-DT, without resetting, still achieves decent (Section 3.2: "
            "competitive) performance. Tested: it ends above where it started; its gaps to GRPO-DT, ODT and "
            "ODT+TD3 of the same seed and DT are shown, without a verdict (\"competitive\" sets no threshold).")
# Table 1's methods that Fig. 3c's Q-guided GRPO is shown against, paired by seed and pretrained DT
Q_GUIDED_AGAINST = {"grpo": "GRPO-DT", "odt": "ODT", "odt-td3": "ODT+TD3"}
VERDICT = {+1: "agrees", -1: "disagrees"}
COLUMNS = ["claim", "figure", "method", "switch", "preset", "value", "runs", "pairs", "excluded", "expected", "d_final",
           "d_final_lo", "d_final_hi", "d_late", "d_late_lo", "d_late_hi", "wins", "verdict", "excluded_because",
           "preset_final", "preset_final_lo", "preset_final_hi", "value_final", "value_final_lo", "value_final_hi",
           "preset_rtg", "value_rtg", "finals", "report"]
BOOTSTRAP_REPS = 2000


def _scored_rows(run: RunResult) -> list[dict]:
    key = "eval_normalized_mean" if run.metric == "normalized" else "eval_return_mean"
    return [row for row in run.metrics if isinstance(row.get(key), (int, float)) and not isinstance(row[key], bool)
            and math.isfinite(row[key])]


def end_rtgs(run: RunResult) -> set:
    """The target RTGs (``eval_target_rtg``) of the evaluations a run's final and late scores come from:
    those of the last quarter of its iterations (None where an evaluation recorded none)."""
    rows = _scored_rows(run)
    last = rows[-1]["iteration"] if rows else 0
    return {row.get("eval_target_rtg") for row in rows if row["iteration"] >= 0.75 * last}


def start_rtgs(run: RunResult) -> set:
    """The target RTG of a run's iteration-0 evaluation (``start_score``), as a set like ``end_rtgs``."""
    rows = _scored_rows(run)
    return {rows[0].get("eval_target_rtg")} if rows and rows[0]["iteration"] == 0 else set()


def rtg_text(rtgs: set) -> str:
    """One side's RTGs as the table prints them: 7200, several as 3600 / 7200, – where none was recorded."""
    found = sorted(float(v) for v in rtgs if isinstance(v, (int, float)) and not isinstance(v, bool))
    return " / ".join(f"{v:g}" for v in found) or "–"


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
            raise DtrlError("the verdicts need scipy: pip install 'dtrl[report]'")
        _, lo, hi = interval
        sides.add(+1 if lo * expected > 0 and hi * expected > 0 else -1 if lo * expected < 0 and hi * expected < 0
                  else 0)
    return VERDICT.get(sides.pop(), "inconclusive") if len(sides) == 1 else "inconclusive"


def mean_interval(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """Mean over seeds with its 95% bootstrap interval, as Table 1's report gives it (rliable,
    ``dtrl report``'s draws); (None, None, None) for no values."""
    if not len(values):
        return None, None, None
    estimates = bootstrap_estimates(values, BOOTSTRAP_REPS)
    return estimates["mean"], estimates["mean_lo"], estimates["mean_hi"]


def scores_row(seeds: list, reference: list[float], switched: list[float], report: str,
               rtgs: tuple[set, set] = (set(), set())) -> dict:
    """The paired runs' own scores: each side's mean final with its bootstrap interval, and per seed;
    ``rtgs``: the target RTGs each side's scores were evaluated at (reference, switched)."""
    row = {"finals": "; ".join(f"{seed}: {a:.1f} → {b:.1f}" for seed, a, b in zip(seeds, reference, switched)),
           "preset_rtg": rtg_text(rtgs[0]), "value_rtg": rtg_text(rtgs[1]), "report": report}
    for side, values in (("preset", reference), ("value", switched)):
        row[f"{side}_final"], row[f"{side}_final_lo"], row[f"{side}_final_hi"] = mean_interval(np.array(values, float))
    return row


def difference_row(values: dict[str, np.ndarray]) -> dict:
    row = {}
    for name, deltas in values.items():
        interval = t_interval(deltas) if len(deltas) >= 2 else None
        row[f"d_{name}"] = float(deltas.mean()) if len(deltas) else None
        row[f"d_{name}_lo"], row[f"d_{name}_hi"] = (interval[1], interval[2]) if interval else (None, None)
    return row


def claim_rows(claim: str, runs: list, task: str, presets: dict, report: str = "") -> list[dict]:
    """One row per (method, switched value) of a claim, from its runs and Table 1's (finished runs, none
    of another claim); ``presets``: {algo: its cpu preset config}, whose values are the reference;
    ``report``: where the claim's report (curves) is, for the table's link."""
    algos, overrides = CLAIMS[claim]
    (switch, _), = overrides.items()
    figure, _, expected = PAPER[claim]
    rows = []
    for algo in algos:
        reference = getattr(presets[algo], switch)
        mine = [r for r in runs if r.config.get("algo") == algo and r.task == task]
        pairs, _ = paired_runs(group_runs(mine), {switch: value_text(reference)})
        value_of = {run.label: run.config.get(switch) for run in mine}  # the label names the switch's value
        by_path = {relative_path(run.path): run for run in mine}  # as paired_runs names the runs of a pair
        by_value: dict[object, list[dict]] = defaultdict(list)
        for pair in pairs:
            by_value[value_of[pair["variant"]]].append(pair)
        for value in without_preset_values(presets, [algo], overrides)[switch]:
            found = [p for p in by_value.get(value, []) if not p["other_differences"]]
            excluded = sorted({p["other_differences"] for p in by_value.get(value, []) if p["other_differences"]})
            final = np.array([p["variant_final"] - p["reference_final"] for p in found], float)
            late = np.array([p["variant_late"] - p["reference_late"] for p in found], float)
            rows.append({"claim": claim, "figure": figure, "method": algo, "switch": switch,
                         "preset": value_text(reference), "value": value_text(value),
                         "runs": sum(1 for run in mine if run.config.get(switch) == value), "pairs": len(found),
                         "excluded": len(by_value.get(value, [])) - len(found), "expected": expected[value],
                         **difference_row({"final": final, "late": late}), "wins": int((final > 0).sum()),
                         "verdict": verdict(expected[value], final, late), "excluded_because": "; ".join(excluded),
                         **scores_row([p["seed"] for p in found], [p["reference_final"] for p in found],
                                      [p["variant_final"] for p in found], report,
                                      tuple(set().union(*(end_rtgs(by_path[p[f"{side}_run"]]) for p in found))
                                            for side in ("reference", "variant")))})
    return rows


def q_guided_rows(runs: list, task: str, report: str = "") -> list[dict]:
    """Fig. 3c from Table 1: Q-guided GRPO against its own start (the claim tested: it learns), and
    against GRPO-DT, ODT and ODT+TD3 runs of the same seed and pretrained DT (shown, no verdict)."""
    finished = [r for r in runs if r.task == task and r.finished and r.final is not None]
    q_runs = [r for r in finished if r.config.get("algo") == "grpo-q"]
    # per compared value: (seed, its score, Q-guided GRPO's final, Δ final, Δ late, the RTGs the two were
    # evaluated at) per pair
    compared = [("its start", +1, [(run.seed, start, run.final, run.final - start, late_mean(run) - start,
                                    start_rtgs(run), end_rtgs(run))
                                   for run in q_runs if (start := start_score(run)) is not None])]
    for algo, name in Q_GUIDED_AGAINST.items():
        others = [r for r in finished if r.config.get("algo") == algo]
        bases = [(run, next((r for r in others if r.seed == run.seed and same_starting_weights(run, r)
                             and r.config.get("init") == run.config.get("init")), None)) for run in q_runs]
        compared.append((name, 0, [(run.seed, base.final, run.final, run.final - base.final,
                                    late_mean(run) - late_mean(base), end_rtgs(base), end_rtgs(run))
                                   for run, base in bases if base is not None]))
    rows = []
    for value, expected, pairs in compared:
        seeds, reference, switched, final, late, reference_rtgs, rtgs = (
            [*v] for v in (zip(*pairs) if pairs else ([],) * 7))
        final, late = np.array(final, float), np.array(late, float)
        rows.append({"claim": "fig3c_q_guided", "figure": Q_GUIDED[0], "method": "grpo-q", "switch": "compared with",
                     "preset": "", "value": value, "runs": len(q_runs), "pairs": len(final), "excluded": 0,
                     "expected": expected,
                     **difference_row({"final": final, "late": late}), "wins": int((final > 0).sum()),
                     "verdict": verdict(expected, final, late), "excluded_because": "",
                     **scores_row(seeds, reference, switched, report,
                                  (set().union(*reference_rtgs), set().union(*rtgs)))})
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


def _mean_cell(row: dict, side: str) -> str:
    if row[f"{side}_final"] is None:
        return "–"
    return f"{row[f'{side}_final']:.1f} [{row[f'{side}_final_lo']:.1f}, {row[f'{side}_final_hi']:.1f}]"


def _link_cell(row: dict) -> str:
    return f"[report]({row['report']})" if row["report"] else "–"


def _rtg_cell(row: dict) -> str:
    return f"{row['preset_rtg']} → {row['value_rtg']}" if row["pairs"] else "–"


def _switched(row: dict) -> str:
    return f"{row['preset']} → {row['value']}" if row["preset"] else row["value"]


def claims_markdown(rows: list[dict], command: str, notes: str = "") -> str:
    """claims.md; ``notes``: what the curves show, written by hand (<claims>/notes.md), placed after the
    tables: the tables are computed, the reading of the curves is not."""
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
              "(− lower, + higher, 0 none). *Finished runs*: the claim's runs of that value; those without a "
              "finished Table 1 run of their seed and DT are not paired. Fig. 3c: Q-guided GRPO against its start "
              "and against three Table 1 columns. *Scored at RTG*: the target return-to-go each side's final and "
              "late scores were evaluated at (`eval_target_rtg` of the paired runs' evaluations over their last "
              "quarter; Fig. 3c's start: its iteration-0 evaluation), preset → switched; – where none was "
              "recorded.", "",
              "| figure | method | switch | preset → value | finished runs | pairs | excluded | expected | Δ final "
              "| Δ late | wins | verdict | scored at RTG |",
              "|---|---|---|---|---:|---:|---:|:---:|---:|---:|---:|---|---:|"]
    sign = {-1: "−", 0: "0", 1: "+"}
    lines += [f"| {r['figure']} | {r['method']} | {r['switch']} | {_switched(r)} | {r['runs']} | {r['pairs']} "
              f"| {r['excluded']} "
              f"| {sign[r['expected']]} | {_cell(r, 'final')} | {_cell(r, 'late')} | {r['wins']}/{r['pairs']} "
              f"| {r['verdict']} | {_rtg_cell(r)} |" for r in rows]
    different = [f"{r['figure']} {r['method']} {_switched(r)} ({_rtg_cell(r)})" for r in rows
                 if r["pairs"] and "–" not in (r["preset_rtg"], r["value_rtg"]) and r["preset_rtg"] != r["value_rtg"]]
    if different:
        lines += ["", "Scored at different target RTGs (preset → switched), so their Δ holds the change of target "
                  "too: " + "; ".join(different) + "."]
    lines += ["", "The paired runs' own final scores: mean over seeds with a 95% bootstrap interval (rliable, as "
              "Table 1 gives them), and per seed (preset → switched; Fig. 3c: the compared column → Q-guided GRPO). "
              "The curves (over iterations, env steps and wall time), the paired curves and the training losses "
              "are in each claim's report.", "",
              "| figure | method | preset → value | preset: final [95% CI] | switched: final [95% CI] "
              "| per seed | curves |", "|---|---|---|---:|---:|---|---|"]
    lines += [f"| {r['figure']} | {r['method']} | {_switched(r)} | {_mean_cell(r, 'preset')} "
              f"| {_mean_cell(r, 'value')} | {r['finals'] or '–'} | {_link_cell(r)} |" for r in rows]
    excluded = [f"{r['figure']} {r['method']} {_switched(r)}: {r['excluded_because']}" for r in rows if r["excluded"]]
    if excluded:
        lines += ["", "Excluded pairs, and what else their runs differ in: " + "; ".join(excluded)]
    if notes.strip():
        lines += ["", "## What the curves show (written by hand from each claim's report; `<claims>/notes.md`)", "",
                  notes.strip()]
    return "\n".join(lines) + "\n"


def claims_and_rows(table1: list[str], claims_folder: str, task: str, presets: dict,
                    out: str = "claims.md") -> list[dict]:
    """Every claim's rows, then Fig. 3c's, from the finished runs of the CSVs; each links its report
    (the report.md beside its evaluations.csv), relative to ``out``; ``presets`` as in ``claim_rows``."""
    def link(csv_file: Path) -> str:
        report = csv_file.parent / "report.md"
        return os.path.relpath(report, Path(out).parent) if report.is_file() else ""

    rows = []
    for claim in CLAIMS:
        # one claim at a time beside Table 1, so that its runs are labelled and paired by its own switch
        found = Path(claims_folder) / claim / "evaluations.csv"
        runs = load_runs((), [*table1, *([str(found)] if found.is_file() else [])])
        rows += claim_rows(claim, [run for run in runs if run.finished], task, presets, link(found))
    rows += q_guided_rows([run for run in load_runs((), table1) if run.finished], task, link(Path(table1[0])))
    return rows


def write_claims(rows: list[dict], out: Path, command: str, notes: str = "") -> None:
    """``out`` (claims.md, which records ``command``) and the same rows as CSV beside it (claims.csv)."""
    out.write_text(claims_markdown(rows, command, notes))
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
