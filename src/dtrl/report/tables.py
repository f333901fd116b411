"""The report's tables: the paper's Table 1 beside ours, one line per run, one markdown section per
analysis of ``stats``, the CSV files, and the tuning choice (``--choose``)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from importlib import resources
from pathlib import Path

import numpy as np

from dtrl.config import option_args
from dtrl.report.load import GroupResult, RunResult, canonical_task, column_order, relative_path
from dtrl.report.stats import TAU_AGREES, best_so_far, late_mean, start_score, t_interval


def paper_table() -> dict[str, dict[str, tuple[float, float | None]]]:
    """{dataset name (hopper-random-v2): {algo column: (mean, std or None)}} from package data."""
    text = resources.files("dtrl.resources").joinpath("paper_table1.csv").read_text()
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    table: dict[str, dict[str, tuple[float, float | None]]] = {}
    for row in csv.DictReader(rows):
        dataset = row.pop("dataset")
        entry = {}
        for column, value in row.items():
            if column.endswith("_std") or value in (None, ""):
                continue
            std = row.get(f"{column}_std")
            entry[column] = (float(value), float(std) if std not in (None, "") else None)
        table[dataset] = entry
    return table


def paper_dataset_name(task: str) -> str:
    """The D4RL dataset name the paper's table uses for one of our tasks (hopper-random -> -v2)."""
    _, known = canonical_task(task)
    if known is not None and getattr(known, "d4rl_name", None):
        return known.d4rl_name
    return f"{task}-v2"


def _fmt(mean: float | None, std: float | None, bold: bool = False) -> str:
    if mean is None:
        return "–"
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    return f"**{text}**" if bold else text


PAPER_COLUMNS = {"DT", "IQL", "ODT", "ODT+TD3", "PPO-DT", "GRPO-DT"}

# what every ± std of report.md is: np.std over the runs, the population std
STD_DEFINITION = "the population standard deviation (ddof = 0, np.std)"


def table_std_note(table: str) -> str:
    """The line under ``markdown_table``'s table that says what its ± are."""
    note = f"Our ± is {STD_DEFINITION} of the final scores over seeds"
    if "(paper) |" in (table.splitlines() or [""])[0]:
        note += ("; a *(paper)* column's ± is the std over 3 seeds that the paper's Table 1 prints (its ddof is "
                 "not stated)")
    return note + "."


def markdown_table(groups: dict[tuple[str, str], GroupResult]) -> str:
    """Rows tasks, columns our algorithms, each followed by the paper's number for it (when the
    paper has that algorithm); the best of ours and the paper's best of its row (when shown) in bold."""
    paper = paper_table()
    tasks = sorted({task for task, _ in groups})
    labels = column_order({label for _, label in groups})
    columns: list[tuple[str, str]] = []  # (kind, label): ours, then the paper's beside it
    for label in labels:
        columns.append(("ours", label))
        if label in PAPER_COLUMNS:
            columns.append(("paper", label))
    header = ["task"] + [label if kind == "ours" else f"{label} (paper)" for kind, label in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for task in tasks:
        row_groups = {label: groups.get((task, label)) for label in labels}
        scored = {label: g.mean for label, g in row_groups.items() if g is not None and g.scores}
        best = max(scored.values()) if scored else None
        metric = next((g.metric for g in row_groups.values() if g is not None), "normalized")
        paper_row = paper.get(paper_dataset_name(task), {}) if metric == "normalized" else {}
        # the paper's best is that of its whole row: a shown column that is not it stays plain
        paper_best = max((mean for mean, _ in paper_row.values()), default=None)
        cells = [task if metric == "normalized" else f"{task} (raw return)"]
        for kind, label in columns:
            if kind == "ours":
                group = row_groups[label]
                # ties are judged as printed (2 decimals), so equal-looking cells are bold together
                if group is None or not group.scores:
                    cells.append("–")
                else:
                    bold = len(scored) > 1 and round(group.mean, 2) == round(best, 2)
                    cells.append(_fmt(group.mean, group.std, bold=bold))
            elif label in paper_row:
                mean, std = paper_row[label]
                cells.append(_fmt(mean, std, bold=len(paper_row) > 1 and round(mean, 2) == round(paper_best, 2)))
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latex_table(groups: dict[tuple[str, str], GroupResult], statistics: list[dict] | None) -> str | None:
    """report.tex: the final-score table ready for a paper (booktabs, via pandas' ``Styler.to_latex``), or
    None without pandas. Rows: the tasks, each followed by the paper's Table 1 row where it has one;
    columns: our methods. Our cells are mean [95% interval] (rliable's, from ``statistics``; mean ± std
    without them; the score alone for one seed); bold: the highest mean of a row and every column whose
    interval reaches it, so that a reader sees which columns the seeds cannot separate from the best."""
    try:
        import pandas as pd
        import pandas.io.formats.style  # noqa: F401  (needs jinja2)
    except ImportError:
        return None
    paper = paper_table()
    # one seed's "interval" is a point: such a cell shows the score alone
    intervals = {(row["task"], row["algorithm"]): (row["final_mean_lo"], row["final_mean_hi"])
                 for row in statistics or [] if row["n_seeds"] >= 2}
    labels = column_order({label for _, label in groups})
    cells: dict[str, dict[str, str]] = {}
    bold: list[tuple[str, str]] = []
    seeds: set[int] = set()
    kinds: set[str] = set()  # what the cells hold: "interval", "std", "single", "raw", "paper", "paper without std"
    for task in sorted({task for task, _ in groups}):
        scored = {label: g for label in labels if (g := groups.get((task, label))) is not None and g.scores}
        metric = next(iter(scored.values())).metric if scored else "normalized"
        name = task if metric == "normalized" else f"{task} (raw return)"
        if metric != "normalized":
            kinds.add("raw")
        cells[name] = {label: "--" for label in labels}
        best = max((g.mean for g in scored.values()), default=None)
        for label, group in scored.items():
            seeds.add(len(group.scores))
            interval = intervals.get((task, label))
            if len(group.scores) == 1:
                kind, text = "single", f"{group.mean:.1f}"
            elif interval:
                kind, text = "interval", f"{group.mean:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]"
            else:
                kind, text = "std", f"{group.mean:.1f} $\\pm$ {group.std:.1f}"
            kinds.add(kind)
            cells[name][label] = text
            reaches = interval is not None and interval[1] >= best
            if len(scored) > 1 and (round(group.mean, 1) == round(best, 1) or reaches):
                bold.append((name, label))
        whole_paper_row = paper.get(paper_dataset_name(task), {}) if metric == "normalized" else {}
        shown = {label: whole_paper_row[label] for label in labels if label in whole_paper_row}
        if shown:
            cells[f"{task} (paper)"] = {label: "--" for label in labels}
            # the paper's best over its whole row, not only the columns this report has
            paper_best = max(mean for mean, _ in whole_paper_row.values())
            for label, (mean, std) in shown.items():
                kinds.add("paper" if std is not None else "paper without std")
                cells[f"{task} (paper)"][label] = f"{mean:.1f}" if std is None else f"{mean:.1f} $\\pm$ {std:.1f}"
                if len(whole_paper_row) > 1 and round(mean, 1) == round(paper_best, 1):
                    bold.append((f"{task} (paper)", label))
    frame = pd.DataFrame.from_dict(cells, orient="index", columns=labels)
    caption = _latex_caption(kinds, seeds)
    styler = frame.style.format(escape=None).format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    styler = styler.apply(lambda column: ["font-weight: bold;" if (row, column.name) in bold else ""
                                          for row in column.index], axis=0)
    return styler.to_latex(hrules=True, convert_css=True, caption=caption, label="tab:dtrl-final",
                           position_float="centering", column_format="l" + "c" * len(labels))


def _latex_caption(kinds: set[str], seeds: set[int]) -> str:
    """report.tex's caption, saying only what its cells hold (``kinds``: see ``latex_table``)."""
    counted = f"{min(seeds)}" if len(seeds) == 1 else f"{min(seeds)}--{max(seeds)}" if seeds else "0"
    score = "D4RL-normalised return" + ("; rows marked raw return: the return" if "raw" in kinds else "")
    spread = " or ".join(text for kind, text in (
        ("interval", "mean [95\\% stratified-bootstrap interval of the mean, rliable]"),
        ("std", "mean $\\pm$ population std")) if kind in kinds) or "score"
    single = " (the score alone where one seed has finished)" if "single" in kinds and spread != "score" else ""
    reach = " and every column whose interval reaches it" if "interval" in kinds else ""
    text = f"Final score of each method's last policy ({score}): {spread} over {counted} seeds{single}. " \
           f"Bold: the highest mean of a row{reach}."
    if kinds & {"paper", "paper without std"}:
        text += (" Rows marked (paper): the paper's Table 1, mean $\\pm$ std over 3 seeds"
                 + (" (where it prints a std)" if "paper without std" in kinds else "")
                 + "; bold where the paper's best of its row is shown.")
    return text


def runs_table(runs: list[RunResult]) -> str:
    """One line per run: where it started (iteration 0), where it ended, its best and late scores."""
    lines = ["| task | algorithm | seed | start | final score | best | late | evaluations | finished | run |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    for run in sorted(runs, key=lambda r: (r.task, r.label, str(r.seed), str(r.path))):
        evaluations = sum(1 for row in run.metrics if row.get("eval_return_mean") is not None)
        final = cell(run.final) + (" (raw)" if run.final is not None and run.metric == "raw" else "")
        lines.append(f"| {run.task} | {run.label} | {run.seed} | {cell(start_score(run))} | {final} | "
                     f"{cell(best_so_far(run))} | {cell(late_mean(run))} | {evaluations} | "
                     f"{'yes' if run.finished else 'no'} | {relative_path(run.path)} |")
    return "\n".join(lines) + ("\n\n*Start*: the iteration-0 evaluation (– for pretraining runs); *best*: the best "
                              "evaluation; *late*: the mean of the evaluations over the last quarter of the run.")


def _paper_entry(paper: dict, group: GroupResult) -> tuple[float, float | None] | None:
    """The paper's (mean, std) for a column of ours, None where its Table 1 has no such cell."""
    return paper.get(paper_dataset_name(group.task), {}).get(group.label) if group.metric == "normalized" else None


def csv_rows(groups: dict[tuple[str, str], GroupResult]) -> list[dict]:
    paper = paper_table()
    rows = []
    for (task, label), group in sorted(groups.items()):
        paper_entry = _paper_entry(paper, group)
        rows.append({
            "task": task, "algorithm": label, "metric": group.metric, "n_seeds": len(group.scores),
            "mean": round(group.mean, 4) if group.scores else "", "std": round(group.std, 4) if group.scores else "",
            "seeds": " ".join(str(r.seed) for r in group.runs if r.final is not None),
            "scores": " ".join(f"{s:.4f}" for s in group.scores),
            "paper_mean": paper_entry[0] if paper_entry else "",
            "paper_std": paper_entry[1] if paper_entry and paper_entry[1] is not None else "",
        })
    return rows


def paper_means(groups: dict[tuple[str, str], GroupResult]) -> dict[str, dict[str, float]]:
    """{task: {column label: the paper's Table 1 mean}}: the paper's whole row for each task of the report
    scored in normalised return (not only the columns the report has, so a ranking can tell how many of
    the paper's columns it compares)."""
    paper = paper_table()
    return {group.task: {label: mean for label, (mean, _) in paper[paper_dataset_name(group.task)].items()}
            for group in groups.values()
            if group.metric == "normalized" and paper_dataset_name(group.task) in paper}


def ranking_markdown(rows: list[dict]) -> str:
    def interval(row: dict, name: str) -> str:
        bounds = f" [{row[name + '_lo']:.1f}, {row[name + '_hi']:.1f}]" if row[name + "_lo"] is not None else ""
        return f"{row[name]} {row[name + '_mean']:.1f}{bounds}"

    def verdict(value: bool | None) -> str:
        return "–" if value is None else ("yes" if value else "no")

    lines = [
        "## Who wins each task, and does the paper's ranking hold",
        "The column with the highest mean final score and the runner-up, with their 95% intervals "
        "(Statistics over seeds); *apart*: the winner's interval lies above the runner-up's (with 3 seeds an "
        "interval spans about the lowest to the highest seed). Then only the columns the paper's Table 1 "
        "also has, ranked by our means and by the paper's: the best of each, Kendall's τ between the two "
        "orders (1: the same order, −1: reversed; – below 3 columns) and GRPO-DT's rank in each (1 = best). "
        "The verdicts apply the reading rule of the medium tasks (benchmarks/results/table1-cpu.md): GRPO-DT "
        "*wins* with the highest mean and an interval above the runner-up's and PPO-DT's, is *ahead, not "
        f"apart* with the highest mean only (an interval needs 2 seeds); the orders *agree* at τ ≥ {TAU_AGREES}, "
        "*in part* above 0, said only where every column of the paper's row is here.",
        "",
        "| task | winner: final mean [95% CI] | runner-up [95% CI] | apart | GRPO-DT | paper's methods here | "
        "best here | best in the paper | same best | Kendall τ | orders | GRPO-DT rank here / in the paper |",
        "|---|---|---|---|---|---:|---|---|---|---:|---|---:|"]
    for row in rows:
        paper_best = (f"{row['paper_best']} {row['paper_best_mean']:.1f}" if row["paper_best"] else "–")
        tau = f"{row['kendall_tau']:+.2f}" if row["kendall_tau"] is not None else "–"
        grpo = (f"{row['grpo_rank_ours']} / {row['grpo_rank_paper']} of {row['shared']}"
                if row["grpo_rank_ours"] else "–")
        lines.append(f"| {row['task']} | {interval(row, 'winner')} | {interval(row, 'runner_up')} | "
                     f"{verdict(row['apart'])} | {row['grpo_verdict'] or '–'} | {row['shared']} | "
                     f"{row['ours_best_shared'] or '–'} | {paper_best} | {verdict(row['same_best'])} | {tau} | "
                     f"{row['tau_verdict'] or '–'} | {grpo} |")
    return "\n".join(lines)


def across_tasks_markdown(rows: list[dict]) -> str:
    def interval(row: dict, name: str, digits: int = 1) -> str:
        return f"{row[name]:.{digits}f} [{row[name + '_lo']:.{digits}f}, {row[name + '_hi']:.{digits}f}]"

    counted = [row for row in rows if "iqm" in row]
    left_out = [row for row in rows if "iqm" not in row]
    lines = [
        "## Across tasks",
        f"Every column's final scores over the {counted[0]['tasks']} normalised-score tasks at once (Agarwal et al. "
        "2021, rliable): the interquartile mean (IQM: the mean of the middle half of all runs, robust to one "
        "outlying run) and the mean, with 95% stratified-bootstrap intervals (runs resampled within each task); "
        "*P(GRPO-DT better)*: the probability that a GRPO-DT run scores above this column's on a task drawn at "
        "random (0.5: no difference), with its interval. Ordered by IQM.",
        "",
        "| column | runs per task | IQM [95% CI] | mean [95% CI] | P(GRPO-DT better) [95% CI] |",
        "|---|---:|---:|---:|---:|"]
    lines += [f"| {row['algorithm']} | {row['runs_per_task']} | {interval(row, 'iqm')} | {interval(row, 'mean')} | "
              f"{interval(row, 'p_grpo_better', 2) if row['p_grpo_better'] is not None else '–'} |"
              for row in counted]
    if left_out:
        lines += ["", "Not counted (a column needs the same number, at least 2, of finished runs on every task; "
                  "runs per task in the report's order of tasks): "
                  + ", ".join(f"{row['algorithm']} ({row['runs_per_task']})" for row in left_out) + "."]
    return "\n".join(lines)


def _seed_order(seed: str) -> tuple:
    """Integer seeds in numeric order (2 before 10), then any others by name."""
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def _task_table_row(group: GroupResult, seeds: list[str], rows: dict[str, dict | None],
                    paper_entry: tuple[float, float | None] | None,
                    bold: bool, minutes: float) -> str:
    """One column's line of ``task_tables_markdown``: ``rows`` holds its row of each section (None: none)."""
    finals = {str(r.seed): r.final for r in group.runs if r.final is not None}
    stats, gain, timed, spent = (rows[name] for name in ("statistics", "improvement", "at_time", "compute"))
    if not group.scores:
        mean = "–"
    elif stats is not None:
        mean = f"{stats['final_mean']:.1f} [{stats['final_mean_lo']:.1f}, {stats['final_mean_hi']:.1f}]"
    else:
        mean = f"{group.mean:.1f} ± {group.std:.1f}"
    cells = [group.label, *(f"{finals[seed]:.1f}" if seed in finals else "–" for seed in seeds),
             f"**{mean}**" if bold else mean, f"{paper_entry[0]:.1f}" if paper_entry else "–",
             f"{gain['start_mean']:.1f}" if gain else "–", f"{gain['improved']}/{gain['runs']}" if gain else "–"]
    if minutes:
        cells.append(f"{timed['score_mean']:.1f} ± {timed['score_std']:.1f}" if timed else "–")
    cells += [f"{spent['env_steps'] / 1000:,.0f}k" if spent else "–",
              f"{spent['grad_updates'] / 1000:,.1f}k" if spent else "–",
              f"{spent['wall_minutes_min']:.1f}–{spent['wall_minutes_max']:.1f}" if spent else "–"]
    return "| " + " | ".join(cells) + " |"


def task_tables_markdown(groups: dict[tuple[str, str], GroupResult], statistics: list[dict] | None,
                         improvement: list[dict], at_time: list[dict], compute: list[dict], minutes: float) -> str:
    """One table per task with what a paper's results table needs of each column on one line: the final
    score of every seed, the mean with its interval, the paper's number, where the runs started and how many
    ended above it, the score at ``minutes`` of wall clock, and the spend per run. Each cell is a number of
    another section of the report (its rows, also in its CSV), so pasting this table adds no error of its own."""
    paper = paper_table()
    sections = {name: {(row["task"], row["algorithm"]): row for row in rows}
                for name, rows in (("statistics", statistics or []), ("improvement", improvement),
                                   ("at_time", at_time), ("compute", compute))}
    interval_note = ("95% stratified-bootstrap interval over seeds (rliable)" if statistics is not None
                     else f"± {STD_DEFINITION} (install the report extra for intervals)")
    lines = [
        "## One table per task",
        "Each column's final score per seed, then their mean with a " + interval_note + "; *paper*: its Table 1, "
        "for orientation; *start*: the mean iteration-0 evaluation; *improved*: runs that ended above their "
        "start" + (f"; *at {minutes:g} min*: mean ± std of each run's last evaluation within its first "
                   f"{minutes:g} minutes, ± being {STD_DEFINITION}" if minutes else "") + "; env steps, gradient "
        "updates (totals, pretraining's and offline phases' included) and wall-clock minutes (range, evaluations "
        "included): per finished run. The best mean of each task in bold. The sections below give each number's "
        "details."]
    for task in sorted({task for task, _ in groups}):
        task_groups = [groups[(task, label)] for label in column_order({lb for t, lb in groups if t == task})]
        seeds = sorted({str(r.seed) for g in task_groups for r in g.runs if r.final is not None}, key=_seed_order)
        best = max((g.mean for g in task_groups if g.scores), default=None)
        header = (["column", *(f"seed {seed}" for seed in seeds),
                   "final mean [95% CI]" if statistics is not None else "final mean ± std", "paper", "start",
                   "improved"] + ([f"at {minutes:g} min"] if minutes else []) + ["env steps", "updates", "wall min"])
        lines += ["", f"**{task}**" + (" (raw return)" if task_groups[0].metric == "raw" else ""), "",
                  "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for group in task_groups:
            # ties judged as printed (1 decimal), so equal-looking means are bold together
            bold = bool(group.scores) and len(task_groups) > 1 and round(group.mean, 1) == round(best, 1)
            rows = {name: by_column.get((task, group.label)) for name, by_column in sections.items()}
            lines.append(_task_table_row(group, seeds, rows, _paper_entry(paper, group), bold, minutes))
    return "\n".join(lines)


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def statistics_markdown(rows: list[dict]) -> str:
    lines = ["| task | algorithm | seeds | final IQM [95% CI] | final mean [95% CI] | best-so-far mean [95% CI] |",
             "|---|---|---:|---:|---:|---:|"]
    def cell(row: dict, name: str) -> str:
        return f"{row[name]:.1f} [{row[name + '_lo']:.1f}, {row[name + '_hi']:.1f}]"

    for row in rows:
        lines.append(f"| {row['task']} | {row['algorithm']} | {row['n_seeds']} | {cell(row, 'final_iqm')} | "
                     f"{cell(row, 'final_mean')} | {cell(row, 'best_mean')} |")
    return "\n".join(lines)


def improvement_markdown(rows: list[dict]) -> str:
    lines = [
        "## Improvement over the starting point",
        "*Start*: each run's iteration-0 evaluation, the policy it starts from (the pretrained DT, IQL after "
        "its offline phase, a fresh policy for the SB3 lines), evaluated exactly as its later iterations. "
        "Δ = final − start per run: mean with a 95% Student-t interval over runs (none below two), and how "
        "many runs ended above their start.",
        "",
        "| task | algorithm | runs | start (mean) | final (mean) | Δ [95% CI] | improved |",
        "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        interval = f" [{row['gain_lo']:+.1f}, {row['gain_hi']:+.1f}]" if row["gain_lo"] is not None else ""
        lines.append(f"| {row['task']} | {row['algorithm']} | {row['runs']} | {row['start_mean']:.1f} | "
                     f"{row['final_mean']:.1f} | {row['gain_mean']:+.1f}{interval} | {row['improved']}/{row['runs']} |")
    return "\n".join(lines)


def compute_markdown(rows: list[dict]) -> str:
    lines = [
        "## Compute per run",
        "Means over each column's finished runs, at their last evaluation: iterations, env steps and gradient "
        "updates (totals include what came before iteration 1, e.g. IQL's offline updates; the rates per "
        "iteration do not), and wall-clock time on the machine that ran them, evaluations included (methods "
        "evaluate at different intervals, and Table 1's DT methods at two RTGs, so this is not training "
        "time alone; compare times only within one study and machine).",
        "",
        "| task | algorithm | runs | iterations | env steps | gradient updates | env steps / iteration "
        "| updates / iteration | wall-clock min incl. evaluation (range) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['runs']} | {r['iterations']:,.0f} | "
                     f"{r['env_steps']:,.0f} | {r['grad_updates']:,.0f} | {r['env_steps_per_iteration']:,.1f} | "
                     f"{r['grad_updates_per_iteration']:,.1f} | {r['wall_minutes_mean']:.1f} "
                     f"({r['wall_minutes_min']:.1f}–{r['wall_minutes_max']:.1f}) |")
    return "\n".join(lines)


def at_time_markdown(rows: list[dict], minutes: float) -> str:
    lines = [
        f"## Score after {minutes:g} minutes of wall-clock time",
        "Each run's last evaluation within its first "
        f"{minutes:g} minutes (wall-clock time of the machine that ran it, evaluations included), beside its "
        "final score at the end of its budget of iterations. The two differ where a method's iterations cost "
        "more time as its episodes lengthen, or less since its code got faster. Pretrained DTs are not listed: "
        "finetuning does not change them, and their clock is pretraining's. Score: mean ± std over the runs, "
        f"± being {STD_DEFINITION}.",
        "",
        f"| task | algorithm | runs | score at {minutes:g} min | iterations by then | env steps by then | final |",
        "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['runs']} | {_fmt(r['score_mean'], r['score_std'])} | "
                     f"{r['iterations']:,.0f} | {r['env_steps']:,.0f} | {r['final_mean']:.2f} |")
    return "\n".join(lines)


def other_rtg_markdown(rows: list[dict]) -> str:
    def rtg(value) -> str:
        return "varies" if value is None else f"{float(value):g}"

    lines = [
        "## Both target RTGs",
        "The DT methods condition on a target return; by default they are evaluated at different ones (the "
        "task's eval RTG, or g_online). Runs made with `--eval-other-rtg` were evaluated at both. Final score at "
        f"each, mean ± std over the runs that have both; ± is {STD_DEFINITION} over those runs.",
        "",
        "| task | algorithm | runs | own RTG | final at own RTG | other RTG | final at other RTG |",
        "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['runs']} | {rtg(r['own_rtg'])} | "
                     f"{_fmt(r['own_mean'], r['own_std'])} | {rtg(r['other_rtg'])} | "
                     f"{_fmt(r['other_mean'], r['other_std'])} |")
    return "\n".join(lines)


def training_markdown(rows: list[dict]) -> str:
    lines = [
        "## Training metrics",
        "Each key's mean over the iterations between two evaluations; *first* and *last*: the first and the "
        "last such interval of each run, averaged over runs. Curves: the figure `training_<task>`, mean ± std "
        f"over seeds, ± being {STD_DEFINITION}.",
        "",
        "| task | algorithm | metric | runs | first | last |",
        "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['algorithm']} | {r['metric']} | {r['runs']} | {r['first_mean']:.4g} | "
              f"{r['last_mean']:.4g} |" for r in rows]
    return "\n".join(lines)


def paired_markdown(pairs: list[dict], reference: dict[str, str], unpaired: int) -> str:
    spec = ", ".join(f"{k}={v}" for k, v in reference.items())
    lines = [
        f"## Paired differences against the reference ({spec})",
        "Each finished run of a variant is paired with the reference's finished run of the same task, seed and "
        "pretrained DT; Δ = variant − reference. *Final*: the last evaluation. *Late*: the mean of the "
        "evaluations over the last quarter of the run's iterations. Mean Δ with a 95% Student-t interval over "
        "pairs (none below two pairs); with a handful of pairs it is wide, and `wins` says in how many pairs "
        "the variant ended higher. Every pair is in paired.csv, and the figure paired_curves_<task> draws the paired "
        "runs.",
        "",
        "| task | variant | reference | pairs | Δ final [95% CI] | wins | Δ late [95% CI] "
        "| final per pair: reference → variant |",
        "|---|---|---|---:|---:|---:|---:|---|"]
    by_variant: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for pair in pairs:
        by_variant[(pair["task"], pair["variant"], pair["reference"])].append(pair)
    for (task, variant, ref), rows in sorted(by_variant.items()):
        final = np.array([r["variant_final"] - r["reference_final"] for r in rows], float)
        late = np.array([r["variant_late"] - r["reference_late"] for r in rows], float)
        several_dts = len({r["init"] for r in rows}) > 1
        per_pair = "; ".join(f"{r['seed']}" + (f" ({Path(r['init']).name})" if several_dts else "")
                             + f": {r['reference_final']:.1f} → {r['variant_final']:.1f}" for r in rows)
        cells = []
        for values in (final, late):
            interval = t_interval(values)
            cells.append(f"{values.mean():+.1f}" + (f" [{interval[1]:+.1f}, {interval[2]:+.1f}]" if interval else ""))
        lines.append(f"| {task} | {variant} | {ref} | {len(rows)} | {cells[0]} | {int((final > 0).sum())}/{len(rows)} "
                     f"| {cells[1]} | {per_pair} |")
    mixed = [p for p in pairs if p["other_differences"]]
    if mixed:
        differences = sorted({f"{p['variant']}: {p['other_differences']}" for p in mixed})
        lines += ["", f"**{len(mixed)} pair(s) differ in more than the reference's keys**, so they measure more than "
                      "the ablation: " + "; ".join(differences)]
    if unpaired:
        lines += ["", f"{unpaired} run(s) of the variants are not paired: unfinished, or without a finished "
                      "reference run of their seed and DT (the same `init` path and, where both runs recorded "
                      "it, the same weights: `run_info.init_weights_sha256`)."]
    return "\n".join(lines)


CRITERIA = {"final": "the last evaluation", "late": "the mean of the evaluations over the last quarter of the run"}


def _criterion_score(run: RunResult, criterion: str) -> float | None:
    return run.final if criterion == "final" else late_mean(run)


def choose_settings(groups: dict[tuple[str, str], GroupResult], criterion: str) -> list[dict]:
    """Every column of each (task, algorithm) ranked by its mean ``criterion`` score over its finished
    runs, best first; the first of each is the chosen setting (on a tie, the first in column order).
    ``flags`` are the command-line options that select the column (its varying hyperparameters)."""
    by_algo: dict[tuple[str, str], list[GroupResult]] = defaultdict(list)
    for group in groups.values():
        by_algo[(group.task, group.algo)].append(group)
    rows = []
    for (task, algo), algo_groups in sorted(by_algo.items()):
        ranked = []
        for group in algo_groups:
            # an unfinished run's "late" evaluations are not late, nor its last one final
            scored = [(s, r) for r in group.runs if r.finished and (s := _criterion_score(r, criterion)) is not None]
            if scored:
                ranked.append((float(np.mean([s for s, _ in scored])), group, [r for _, r in scored]))
        order = column_order({g.label for _, g, _ in ranked})
        ranked.sort(key=lambda item: (-item[0], order.index(item[1].label)))
        for rank, (score, group, runs) in enumerate(ranked, 1):
            variant = runs[0].variant
            flags = [arg for key, value in variant.items() if value is not None for arg in option_args(key, value)]
            rows.append({"task": task, "algorithm": algo, "algo": runs[0].config.get("algo", ""), "rank": rank,
                         "chosen": rank == 1, "setting": group.label, "criterion": criterion, "score": score,
                         "final_mean": float(np.mean([r.final for r in runs])), "seeds": len(runs),
                         "flags": " ".join(flags)})
    return rows


def choice_markdown(rows: list[dict], criterion: str, unfinished: int) -> str:
    one_seed = all(row["seeds"] == 1 for row in rows)
    lines = [
        f"## Chosen settings ({criterion} score)",
        f"Per task and algorithm, every column ranked by the mean over seeds of its {criterion} score "
        f"({CRITERIA[criterion]}), finished runs only; the first, in bold, is chosen (on a tie, the first in "
        "column order). `flags` select it on the command line; chosen.csv has every row."
        + (" One seed per column: a ranking of single runs, without intervals." if one_seed else "")
        + (f" {unfinished} unfinished run(s) are not ranked." if unfinished else ""),
        "",
        f"| task | algorithm | rank | setting | seeds | {criterion} (mean) | final (mean) | flags |",
        "|---|---|---:|---|---:|---:|---:|---|"]
    for row in rows:
        setting = f"**{row['setting']}**" if row["chosen"] else row["setting"]
        lines.append(f"| {row['task']} | {row['algorithm']} | {row['rank']} | {setting} | {row['seeds']} | "
                     f"{row['score']:.1f} | {row['final_mean']:.1f} | {row['flags'] and '`' + row['flags'] + '`'} |")
    return "\n".join(lines)
