"""The ``dtrl report`` command: its options (``ReportConfig``), ``build_report`` (read, analyse, write) and
``main``. Each step is a function of its own module: ``load`` (runs), ``stats`` (numbers over runs),
``tables`` (markdown and CSV), ``plots`` (PNG)."""

from __future__ import annotations

import csv
import shlex
from collections import defaultdict
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import tyro

from dtrl.errors import DtrlError
from dtrl.files import atomic_write_text
from dtrl.report.load import (
    EVALUATION_COLUMNS,
    GroupResult,
    RunResult,
    apply_labels,
    evaluation_rows,
    group_runs,
    load_runs,
    select_runs,
    share_across_tasks,
)
from dtrl.report.plots import (
    FIGURE_FORMATS,
    X_KEYS,
    plot_paired_curves,
    plot_performance_profile,
    plot_task,
    plot_training,
)
from dtrl.report.stats import (
    across_tasks_rows,
    at_time_rows,
    compute_rows,
    improvement_rows,
    interval_estimates,
    other_rtg_rows,
    paired_runs,
    parse_reference,
    ranking_rows,
    training_rows,
)
from dtrl.report.tables import (
    across_tasks_markdown,
    at_time_markdown,
    choice_markdown,
    choose_settings,
    compute_markdown,
    csv_rows,
    csv_text,
    improvement_markdown,
    latex_table,
    markdown_table,
    other_rtg_markdown,
    paired_markdown,
    paper_means,
    ranking_markdown,
    runs_table,
    statistics_markdown,
    table_std_note,
    task_tables_markdown,
    training_markdown,
)


@dataclass
class ReportConfig:
    """Tables and learning curves from run directories."""

    run_dirs: tyro.conf.Positional[Annotated[tuple[str, ...], tyro.conf.arg(metavar="RUN_DIR...")]] = ()
    """run directories, or folders to search for them (e.g. a sweep's out_root)"""
    from_csv: tuple[str, ...] = ()
    """evaluations.csv files of earlier reports to read instead of (or beside) run directories (a run
    found more than once counts once: the copy that got further)"""
    bootstrap_reps: int = 2000
    """bootstrap resamples of the rliable confidence intervals"""
    out: str = "report"
    """folder for report.md, report.csv, report.tex (LaTeX) and the figures (created if missing)"""
    x: tuple[Literal["iterations", "env_steps", "wall_time_s"], ...] = ("iterations",)
    """x axis of the learning curves; several give one panel each, side by side (Table 1 at CPU scale:
    --x iterations env_steps wall_time_s, since the methods spend samples and time very differently)"""
    figures: tuple[Literal[FIGURE_FORMATS], ...] = ("png",)  # one home for the list: plots.FIGURE_FORMATS
    """formats of every figure (curves, performance profiles, training metrics): PNG to look at, PDF or
    SVG (vector) for a paper; several write one file each"""
    finished_only: bool = False
    """tables, statistics and curves from finished runs only (a sweep still running: its unfinished runs
    are listed and kept in evaluations.csv, not counted)"""
    choose: Literal["final", "late"] | None = None
    """a tuning grid: per (task, algorithm), choose the column with the highest mean over seeds of the
    final score or of the late score (mean of the evaluations over the last quarter of a run); adds a
    section ranking every column and chosen.csv with the chosen command-line flags"""
    at_minutes: float = 0.0
    """also give each column's score after this many minutes of a run's wall-clock time (its last
    evaluation by then; 0: off). A budget of iterations costs more time where a method's iterations
    lengthen with its episodes, and less where its code got faster: this reads every method at equal
    time on the machine that ran the study"""
    only: tuple[str, ...] = ()
    """KEY=VALUE ...: report only the runs whose config.json has these values (dotted for nested keys;
    a key given twice matches either value), e.g. `--only algo=grpo`: a GRPO-DT ablation beside Table
    1's GRPO-DT runs, read from all of Table 1's evaluations.csv"""
    reference: tuple[str, ...] = ()
    """KEY=VALUE ...: the runs with these hyperparameter values are the reference of an ablation; every
    other variant of the same (task, algorithm) is compared with it seed by seed, on the same pretrained
    DT (paired differences of the final and late scores, with Student-t intervals; paired.csv)"""
    label: tuple[str, ...] = ()
    """NAME=GLOB ...: name the column of the runs whose path (or a folder above it) matches GLOB, e.g.
    `--label 'GRPO-DT from the HF DT=runs/hf-grpo'`. Columns are made first: one per algorithm, setting
    and starting point (--init, --dataset); a label that would join runs of two columns is refused"""
    share_across_tasks: tuple[str, ...] = ()
    """ALGO ...: methods that read no dataset and no pretrained DT (e.g. `sb3-ppo sb3-sac`), run once per
    env: their runs count in every task of the report on the same env with the same settings (Table 1's
    SB3 lines on hopper-random are those of hopper-medium too); said under the table"""
    training_metrics: tuple[str, ...] = ()
    """metrics.jsonl keys (e.g. losses/actor_q losses/critic_loss) to average between evaluations, store
    in evaluations.csv and draw per column over iterations (training_<task>.png); keys already in a
    --from-csv file are kept"""


def training_keys(config: ReportConfig, runs: list[RunResult]) -> tuple[str, ...]:
    """The keys asked for, then those stored in the --from-csv files; a key asked for that no run logs
    is an error that names the keys the runs do log."""
    standard = [key for key in config.training_metrics if key in EVALUATION_COLUMNS]
    if standard:
        raise DtrlError(f"--training-metrics {' '.join(standard)}: already a column of evaluations.csv; give "
                        "metrics.jsonl keys such as losses/actor_q")
    keys = list(config.training_metrics)
    for path in config.from_csv:
        with open(path, newline="") as handle:
            keys += [key for key in next(csv.reader(handle), []) if key not in EVALUATION_COLUMNS]
    for key in config.training_metrics:
        if not any(isinstance(row.get(key), (int, float)) for run in runs for row in run.metrics):
            logged = sorted({k for run in runs for row in run.metrics for k in row if "/" in k})
            raise DtrlError(f"--training-metrics {key}: no run logs it"
                            + (f" (these runs log {', '.join(logged)})" if logged else ""))
    return tuple(dict.fromkeys(keys))



def command_line(config: ReportConfig) -> str:
    """The ``dtrl report`` command that makes this report: the run directories, then every option that
    differs from its default, and ``--out``. Written into report.md, so a reader can regenerate it."""
    words = ["dtrl", "report", *config.run_dirs]
    for option in fields(ReportConfig):
        value = getattr(config, option.name)
        default = option.default if option.default_factory is MISSING else option.default_factory()
        if option.name == "run_dirs" or (value == default and option.name != "out"):
            continue
        flag = "--" + option.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple):
            words += [flag, *map(str, value)]
        elif isinstance(value, float):
            words += [flag, f"{value:.0f}" if value.is_integer() else repr(value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


@dataclass
class Analyses:
    """What a report computes from its groups of runs, one list of rows per section and CSV file (empty
    when the section does not apply)."""

    statistics: list[dict] | None
    """rliable's intervals over seeds; None without rliable"""
    ranking: list[dict]
    across_tasks: list[dict]
    improvement: list[dict]
    other_rtg: list[dict]
    compute: list[dict]
    at_time: list[dict]
    training: list[dict]
    pairs: list[dict]
    unpaired: int
    choices: list[dict]


def check_options(config: ReportConfig) -> tuple[str, ...]:
    """The x axes, after the checks no run is needed for."""
    x_names = tuple(config.x)
    if not x_names or any(x not in X_KEYS for x in x_names):
        raise DtrlError(f"--x takes one or more of {', '.join(X_KEYS)}, got {' '.join(map(str, x_names)) or 'none'}")
    if config.at_minutes < 0:
        raise DtrlError(f"--at-minutes must be >= 0, got {config.at_minutes:g}")
    if not config.figures or any(fmt not in FIGURE_FORMATS for fmt in config.figures):
        raise DtrlError(f"--figures takes one or more of {', '.join(FIGURE_FORMATS)}, got "
                        f"{' '.join(map(str, config.figures)) or 'none'}")
    if not config.run_dirs and not config.from_csv:
        raise DtrlError("no run directories given (dtrl report RUN_DIR... ; a folder of runs, or --from-csv FILE)")
    return x_names


def report_groups(runs: list[RunResult], finished_only: bool) -> dict[tuple[str, str], GroupResult]:
    """The table's columns per task: every run, or the finished ones; an error when none has an evaluation."""
    if not any(r.final is not None for r in runs):
        raise DtrlError(f"none of the {len(runs)} run(s) has an evaluation yet (no eval_return_mean in metrics.jsonl)")
    groups = group_runs([r for r in runs if r.finished] if finished_only else runs)
    if not groups:
        raise DtrlError(f"--finished-only: none of the {len(runs)} run(s) has finished yet")
    return groups


def make_folder(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DtrlError(f"cannot create report folder {out}: {exc.strerror}") from None
    return out


def analyse(config: ReportConfig, groups: dict[tuple[str, str], GroupResult], reference: dict[str, str],
            trained: tuple[str, ...]) -> Analyses:
    """Every analysis the options ask for; an error when --reference pairs nothing or --choose ranks nothing."""
    statistics = interval_estimates(groups, config.bootstrap_reps)
    pairs, unpaired = paired_runs(groups, reference) if reference else ([], 0)
    if reference and not pairs:
        raise DtrlError(f"--reference {' '.join(config.reference)}: no finished run of another variant has a "
                        "finished reference run of the same task, algorithm, seed and pretrained DT")
    choices = choose_settings(groups, config.choose) if config.choose else []
    if config.choose and not choices:
        raise DtrlError(f"--choose {config.choose}: no finished run with an evaluation to rank")
    return Analyses(statistics=statistics, ranking=ranking_rows(groups, statistics, paper_means(groups)),
                    across_tasks=across_tasks_rows(groups, config.bootstrap_reps),
                    improvement=improvement_rows(groups), other_rtg=other_rtg_rows(groups),
                    compute=compute_rows(groups),
                    at_time=at_time_rows(groups, config.at_minutes) if config.at_minutes else [],
                    training=training_rows(groups, trained) if trained else [], pairs=pairs, unpaired=unpaired,
                    choices=choices)


def statistics_section(statistics: list[dict] | None, reps: int) -> list[str]:
    if statistics is None:
        return ["The IQM / mean confidence intervals need the optional rliable extra: "
                "`pip install 'dtrl[report]'`."]
    return [
        "## Statistics over seeds",
        "IQM and mean of the final and of the best-so-far score, with 95% stratified-bootstrap confidence "
        f"intervals over seeds ({reps} resamples, rliable; Agarwal et al. 2021). The final "
        "policy is the headline; best-so-far picks the best of a run's evaluations, an optimistic number.",
        statistics_markdown(statistics)]


def analysis_sections(config: ReportConfig, groups: dict[tuple[str, str], GroupResult], found: Analyses,
                      unfinished: int) -> list[str]:
    """The markdown sections after the table, in the report's order; those without rows are left out."""
    sections = statistics_section(found.statistics, config.bootstrap_reps)
    sections.append(task_tables_markdown(groups, found.statistics, found.improvement, found.at_time, found.compute,
                                         config.at_minutes))
    for rows, section in ((found.ranking, ranking_markdown), (found.across_tasks, across_tasks_markdown),
                          (found.improvement, improvement_markdown),
                          (found.other_rtg, other_rtg_markdown),
                          (found.compute, compute_markdown)):
        if rows:
            sections.append(section(rows))
    if found.at_time:
        sections.append(at_time_markdown(found.at_time, config.at_minutes))
    if found.training:
        sections.append(training_markdown(found.training))
    if found.pairs:
        sections.append(paired_markdown(found.pairs, parse_reference(config.reference), found.unpaired))
    if found.choices:
        sections.append(choice_markdown(found.choices, config.choose, unfinished))
    return sections


def runs_notes(runs: list[RunResult], finished_only: bool) -> list[str]:
    """What the runs list says about runs without an evaluation, and unfinished runs."""
    not_evaluated = sum(1 for r in runs if r.final is None)
    unfinished = sum(1 for r in runs if not r.finished)
    notes = [f"{not_evaluated} run(s) without an evaluation yet are listed with –."] if not_evaluated else []
    if finished_only and unfinished:
        notes.append(f"{unfinished} unfinished run(s) are listed above but not counted (--finished-only).")
    elif unfinished:
        notes.append(f"{unfinished} run(s) have not finished: their last evaluation so far is counted as final "
                     "(--finished-only leaves them out).")
    return notes


def report_markdown(config: ReportConfig, groups: dict[tuple[str, str], GroupResult], runs: list[RunResult],
                    found: Analyses, table: str, share_notes: list[str]) -> str:
    """report.md: the command that made it, the table (and which runs count in more than one task), the
    analyses' sections, the runs."""
    seeds = sorted({len(g.scores) for g in groups.values() if g.scores})
    seed_note = f"{seeds[0]} seed(s) per cell" if len(seeds) == 1 else "seeds per cell vary (see report.csv)"
    unfinished = sum(1 for r in runs if not r.finished)
    return "\n\n".join([
        "# dtrl report",
        f"Made by: `{command_line(config)}`",
        "Final D4RL-normalised return (last evaluation of each run; tasks marked *raw return* have no "
        f"reference scores), mean ± std over seeds ({seed_note}); best of ours and the best of the paper's "
        "Table 1 row per task in bold (when that column is here).",
        table,
        table_std_note(table),
        *share_notes,
        *analysis_sections(config, groups, found, unfinished),
        "## Runs",
        runs_table(runs),
        *runs_notes(runs, config.finished_only)]) + "\n"


def write_tables(out: Path, markdown: str, groups: dict[tuple[str, str], GroupResult], runs: list[RunResult],
                 trained: tuple[str, ...], found: Analyses) -> list[Path]:
    """report.md, report.csv, report.tex (without pandas: none), evaluations.csv and one CSV per analysis
    with rows; the paths written."""
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.csv", csv_text(csv_rows(groups)))
    atomic_write_text(out / "evaluations.csv",
                      csv_text(evaluation_rows(runs, trained), EVALUATION_COLUMNS + list(trained)))
    files = [out / "report.md", out / "report.csv", out / "evaluations.csv"]
    latex = latex_table(groups, found.statistics)
    if latex is not None:
        atomic_write_text(out / "report.tex", latex)
        files.append(out / "report.tex")
    for name, rows in (("statistics", found.statistics), ("ranking", found.ranking),
                       ("across_tasks", found.across_tasks),
                       ("improvement", found.improvement),
                       ("other_rtg", found.other_rtg), ("compute", found.compute), ("at_time", found.at_time),
                       ("training", found.training), ("chosen", found.choices), ("paired", found.pairs)):
        if rows:
            atomic_write_text(out / f"{name}.csv", csv_text(rows))
            files.append(out / f"{name}.csv")
    return files


def write_plots(out: Path, config: ReportConfig, groups: dict[tuple[str, str], GroupResult], x_names: tuple[str, ...],
                trained: tuple[str, ...], pairs: list[dict]) -> list[Path]:
    """The paired curves (with --reference), then per task its curves, performance profile and training
    metrics; the paths written."""
    formats = config.figures
    files = plot_paired_curves(pairs, groups, x_names, out, formats) if pairs else []
    by_task: dict[str, list[GroupResult]] = defaultdict(list)
    for group in groups.values():
        by_task[group.task].append(group)
    for task, task_groups in sorted(by_task.items()):
        name = task.replace("/", "_")
        files += plot_task(task, task_groups, x_names, out / f"curves_{name}.png", formats)
        files += plot_performance_profile(task, task_groups, out / f"performance_profile_{name}.png",
                                          config.bootstrap_reps, formats)
        if trained:
            files += plot_training(task, task_groups, trained, out / f"training_{name}.png", formats)
    return files


def build_report(config: ReportConfig) -> dict:
    """Load, group, analyse, write the files; returns {"markdown" (the table), "files", "groups", "runs",
    "pairs", "choices"}."""
    x_names = check_options(config)
    reference = parse_reference(config.reference)
    runs = select_runs(load_runs(config.run_dirs, config.from_csv), config.only)
    apply_labels(runs, config.label)
    trained = training_keys(config, runs)
    shared, share_notes = share_across_tasks(runs, config.share_across_tasks)
    groups = report_groups(runs + shared, config.finished_only)
    out = make_folder(config.out)
    found = analyse(config, groups, reference, trained)
    table = markdown_table(groups)
    markdown = report_markdown(config, groups, runs, found, table, share_notes)
    files = write_tables(out, markdown, groups, runs, trained, found)
    files += write_plots(out, config, groups, x_names, trained, found.pairs)
    return {"markdown": table, "files": files, "groups": groups, "runs": runs, "pairs": found.pairs,
            "choices": found.choices}


def main(argv: list[str]) -> int:
    config = tyro.cli(ReportConfig, args=list(argv), prog="dtrl report",
                      description="Table-1-style results (markdown, CSV) and learning curves from run directories "
                                  "(give the run directories first, then the options).")
    result = build_report(config)
    print(result["markdown"])
    print()
    for file in result["files"]:
        print(f"wrote {file}")
    return 0
