"""``dtrl report RUN_DIR... [--out DIR] [--x iterations|env_steps|wall_time_s ...]``: the paper's Table 1
and learning curves from run directories.

Reads only ``config.json`` and ``metrics.jsonl`` of each run (a folder given that is not itself a
run is searched for runs, so ``dtrl report runs/sweep`` works). Runs are grouped by (task,
algorithm); runs in one group that differ in a hyperparameter (say ``clip_eps``) become separate
columns labelled with it. A run's final score is its last ``eval_normalized_mean`` (the D4RL
normalised return), or its last raw ``eval_return_mean`` for tasks without reference scores;
cells are mean ± std over seeds (population std, ddof=0), with the paper's Table 1 beside them.

Writes ``report.md`` (table + per-run list), ``report.csv`` (one row per group),
``evaluations.csv`` (every evaluation of every run with its iteration, env steps, gradient updates
and wall time: small enough to commit, and ``dtrl report --from-csv evaluations.csv`` rebuilds the
whole report from it without the run directories), ``curves_<task>.png`` (mean ± std band per
algorithm over seeds, on the ``--x`` axis) and, with the optional ``rliable`` extra
(``pip install dtrl[report]``), ``statistics.csv`` and a section of IQM and mean with 95%
stratified-bootstrap confidence intervals over seeds (Agarwal et al. 2021) of the final and the
best-so-far score, plus ``performance_profile_<task>.png``. Every finetuning run is also measured
against the policy it started from, its iteration-0 evaluation (``improvement.csv``). With ``--reference KEY=VALUE`` (an
ablation), each other variant is paired with the reference's run of the same seed and pretrained DT:
``paired.csv``, a section of mean paired differences and ``paired_curves_<task>.png``. With
``--choose final|late`` (a tuning grid), each (task, algorithm)'s columns are ranked by that score
and ``chosen.csv`` gives the command-line flags of the best. With ``--training-metrics KEY ...``
(``metrics.jsonl`` keys such as ``losses/actor_q``), each key's mean over the iterations between two
evaluations joins that evaluation's row of ``evaluations.csv`` (so ``--from-csv`` reads it back), with
``training_<task>.png`` (one panel per key, mean ± std over seeds) and a section of first and last values:
the losses that say why a run did or did not learn, kept where the run directories are not.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from dtrl.config import key_values, option_args, value_matches
from dtrl.errors import DtrlError
from dtrl.files import atomic_write_text, atomic_write_with
from dtrl.runs import CONFIG_FILE, is_finished, iter_run_dirs, read_config, read_metrics

# our algorithm names (config "algo") -> the paper's column names (pretraining runs: see load_run)
ALGO_NAMES = {"grpo": "GRPO-DT", "grpo-q": "GRPO-DT (Q)", "ppo": "PPO-DT", "odt": "ODT", "odt-td3": "ODT+TD3",
              "iql": "IQL", "dt": "DT", "reinformer": "Reinformer", "sb3-ppo": "SB3 PPO", "sb3-sac": "SB3 SAC"}
# column order of the table: the paper's order, then the non-DT reference lines, anything else after them
ALGO_ORDER = ["DT", "Reinformer", "IQL", "ODT", "ODT+TD3", "PPO-DT", "GRPO-DT", "GRPO-DT (Q)", "SB3 PPO", "SB3 SAC"]
X_KEYS = {"iterations": "iteration", "env_steps": "env_steps", "wall_time_s": "wall_time_s"}
# config keys that say how or where a run was launched, or what else it evaluates, never what it
# learns (eval_other_rtg adds evaluations at a second RTG: Table 1's runs have it, their ablations not)
_NOT_HYPERPARAMETERS = {"seed", "out", "run_info", "resume", "force", "device", "init", "dataset", "task",
                        "algo", "preset", "eval_every", "eval_episodes", "eval_other_rtg", "checkpoint_every",
                        "command", "threads", "env_threads", "track", "wandb_project", "wandb_entity",
                        "init_weights_sha256"}


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
    """folder for report.md, report.csv and the curve PNGs (created if missing)"""
    x: tuple[Literal["iterations", "env_steps", "wall_time_s"], ...] = ("iterations",)
    """x axis of the learning curves; several give one panel each, side by side (Table 1 at CPU scale:
    --x iterations env_steps wall_time_s, since the methods spend samples and time very differently)"""
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
    training_metrics: tuple[str, ...] = ()
    """metrics.jsonl keys (e.g. losses/actor_q losses/critic_loss) to average between evaluations, store
    in evaluations.csv and draw per column over iterations (training_<task>.png); keys already in a
    --from-csv file are kept"""


@dataclass
class RunResult:
    path: Path
    task: str
    algo: str
    """display name of the algorithm (GRPO-DT, ...)"""
    seed: object
    config: dict
    metrics: list[dict]
    metric: str
    """'normalized' or 'raw' (task without reference scores)"""
    final: float | None
    """last evaluation score, None when never evaluated"""
    finished: bool
    label: str = ""
    """column label: the algorithm plus hyperparameters that distinguish it within its task"""
    variant: dict = field(default_factory=dict)
    """the hyperparameters in the label, {config key (dotted when nested): value}"""


@dataclass
class GroupResult:
    task: str
    label: str
    algo: str
    metric: str
    runs: list[RunResult] = field(default_factory=list)

    @property
    def scores(self) -> list[float]:
        return [r.final for r in self.runs if r.final is not None]

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))


# ---------------------------------------------------------------------------------------------
# loading


def _canonical_task(name: str) -> tuple[str, object | None]:
    """Registry name (``hopper-random-v2`` -> ``hopper-random``) and the Task, when known."""
    from dtrl.tasks import get_task

    try:
        task = get_task(name)
    except DtrlError:
        return name, None
    return task.name, task


def _command_of(config: dict) -> str:
    """``pretrain``/``finetune``/... for a run without an ``algo`` key, from the recorded argv."""
    if config.get("command"):
        return str(config["command"])
    argv = config.get("run_info", {}).get("command") or []
    for index, arg in enumerate(argv):
        if os.path.basename(str(arg)) in ("dtrl", "__main__.py", "cli.py") and index + 1 < len(argv):
            return str(argv[index + 1])
    return "unknown"


def load_run(path: Path) -> RunResult:
    config = read_config(path)
    digest = (config.get("run_info") or {}).get("init_weights_sha256")
    if digest:  # kept in evaluations.csv, which leaves run_info out: pairs are made by the DT's weights
        config["init_weights_sha256"] = digest
    metrics = read_metrics(path)
    task_name, task = _canonical_task(str(config.get("task", "unknown")))
    algo_key = config.get("algo")
    if algo_key in ("pretrain", "dt"):
        # offline pretraining: the paper's DT column (or Reinformer when that backbone was trained)
        architecture = (config.get("model") or {}).get("architecture", "dt")
        algo = "Reinformer" if architecture == "reinformer" else "DT"
    else:
        algo = ALGO_NAMES.get(str(algo_key), str(algo_key)) if algo_key else _command_of(config)
    has_reference = task is not None and task.has_reference
    key = "eval_normalized_mean" if has_reference else "eval_return_mean"
    final = None
    for row in metrics:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            final = float(value)
    return RunResult(path=path, task=task_name, algo=algo, seed=config.get("seed"), config=config,
                     metrics=metrics, metric="normalized" if has_reference else "raw", final=final,
                     finished=is_finished(path))


def find_runs(paths: list[str]) -> list[Path]:
    if not paths:
        raise DtrlError("no run directories given (dtrl report RUN_DIR... ; a folder of runs works too)")
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise DtrlError(f"{given}: no such directory")
        runs = list(iter_run_dirs(path))
        if not runs:
            raise DtrlError(f"{given}: not a run directory and contains none ({CONFIG_FILE} not found)")
        found.extend(r for r in runs if r not in found)
    return found


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _looks_like_path(value: object) -> bool:
    return isinstance(value, str) and (os.sep in value or "/" in value)


def label_variants(runs: list[RunResult]) -> None:
    """Label each run by its algorithm plus the hyperparameters that vary within its (task, algo),
    so a sweep over e.g. clip_eps gives one column per value instead of mixing them. Runs read from
    an older evaluations.csv without configs keep the label stored there."""
    by_group: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for run in runs:
        if run.config:
            by_group[(run.task, run.algo)].append(run)
    for group in by_group.values():
        flats = [_flatten({k: v for k, v in r.config.items() if k not in _NOT_HYPERPARAMETERS}) for r in group]
        keys = sorted(set().union(*flats))
        varying = [k for k in keys
                   if len({repr(f.get(k)) for f in flats}) > 1 and not any(_looks_like_path(f.get(k)) for f in flats)]
        for run, flat in zip(group, flats):
            run.variant = {k: flat.get(k) for k in varying}
            suffix = ", ".join(f"{k}={flat.get(k)}" for k in varying)
            run.label = f"{run.algo} ({suffix})" if suffix else run.algo


def group_runs(runs: list[RunResult]) -> dict[tuple[str, str], GroupResult]:
    groups: dict[tuple[str, str], GroupResult] = {}
    for run in runs:
        key = (run.task, run.label)
        if key not in groups:
            groups[key] = GroupResult(task=run.task, label=run.label, algo=run.algo, metric=run.metric)
        groups[key].runs.append(run)
    return groups


# ---------------------------------------------------------------------------------------------
# the paper's Table 1


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
    _, known = _canonical_task(task)
    if known is not None and getattr(known, "d4rl_name", None):
        return known.d4rl_name
    return f"{task}-v2"


# ---------------------------------------------------------------------------------------------
# tables


def _fmt(mean: float | None, std: float | None, bold: bool = False) -> str:
    if mean is None:
        return "–"
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    return f"**{text}**" if bold else text


def _column_order(labels: set[str]) -> list[str]:
    def key(label: str):
        base = label.split(" (", 1)[0] if label not in ALGO_ORDER else label
        return (ALGO_ORDER.index(base) if base in ALGO_ORDER else len(ALGO_ORDER), label)

    return sorted(labels, key=key)


PAPER_COLUMNS = {"DT", "IQL", "ODT", "ODT+TD3", "PPO-DT", "GRPO-DT"}


def markdown_table(groups: dict[tuple[str, str], GroupResult]) -> str:
    """Rows tasks, columns our algorithms, each followed by the paper's number for it (when the
    paper has that algorithm); the best of ours and the best of the paper's per row in bold."""
    paper = paper_table()
    tasks = sorted({task for task, _ in groups})
    labels = _column_order({label for _, label in groups})
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
        paper_scores = {c: paper_row[c][0] for kind, c in columns if kind == "paper" and c in paper_row}
        paper_best = max(paper_scores.values()) if paper_scores else None
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
                cells.append(_fmt(mean, std, bold=len(paper_scores) > 1 and round(mean, 2) == round(paper_best, 2)))
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
                     f"{'yes' if run.finished else 'no'} | {_relative(run.path)} |")
    return "\n".join(lines) + ("\n\n*Start*: the iteration-0 evaluation (– for pretraining runs); *best*: the best "
                              "evaluation; *late*: the mean of the evaluations over the last quarter of the run.")


def csv_rows(groups: dict[tuple[str, str], GroupResult]) -> list[dict]:
    paper = paper_table()
    rows = []
    for (task, label), group in sorted(groups.items()):
        paper_entry = paper.get(paper_dataset_name(task), {}).get(label) if group.metric == "normalized" else None
        rows.append({
            "task": task, "algorithm": label, "metric": group.metric, "n_seeds": len(group.scores),
            "mean": round(group.mean, 4) if group.scores else "", "std": round(group.std, 4) if group.scores else "",
            "seeds": " ".join(str(r.seed) for r in group.runs if r.final is not None),
            "scores": " ".join(f"{s:.4f}" for s in group.scores),
            "paper_mean": paper_entry[0] if paper_entry else "",
            "paper_std": paper_entry[1] if paper_entry and paper_entry[1] is not None else "",
        })
    return rows


EVALUATION_COLUMNS = ["task", "algorithm", "label", "metric", "seed", "run", "finished", "iteration", "env_steps",
                      "grad_updates", "wall_time_s", "eval_normalized_mean", "eval_normalized_std",
                      "eval_return_mean", "eval_return_std", "eval_length_mean", "eval_target_rtg",
                      "eval_context_length", "eval_other_normalized_mean", "eval_other_return_mean",
                      "eval_other_target_rtg", "config"]
# "config" (the run's config.json as JSON, on its first row only) and "eval_length_mean" (episode length:
# a locomotion policy can score more by moving faster or by falling later) came later: older files lack them
_OPTIONAL_COLUMNS = {"config", "eval_length_mean"}
# config keys that describe the machine or the run's files, not the run: left out of the CSV
_NOT_STORED = {"run_info", "out", "force", "resume"}


def training_means(run: RunResult, keys: tuple[str, ...]) -> list[dict]:
    """For each of a run's evaluations, in order: {key: mean of the key's finite values logged since the
    previous evaluation, this evaluation's row included} (None where none). A run read from an
    evaluations.csv has only evaluation rows, so its stored means come back unchanged."""
    means: list[dict] = []
    sums = dict.fromkeys(keys, 0.0)
    counts = dict.fromkeys(keys, 0)
    for row in run.metrics:
        for key in keys:
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                sums[key] += value
                counts[key] += 1
        if row.get("eval_return_mean") is not None:
            means.append({key: sums[key] / counts[key] if counts[key] else None for key in keys})
            sums = dict.fromkeys(keys, 0.0)
            counts = dict.fromkeys(keys, 0)
    return means


def evaluation_rows(runs: list[RunResult], training_keys: tuple[str, ...] = ()) -> list[dict]:
    """Every evaluation of every run, one row each (what ``--from-csv`` reads back), with the mean of each
    of ``training_keys`` since the previous evaluation."""
    rows = []
    for run in sorted(runs, key=lambda r: (r.task, r.label, str(r.seed), str(r.path))):
        # the config rides on the run's first row, so a report rebuilt from CSVs labels and pairs runs
        # exactly as one made from their directories
        config = {k: v for k, v in run.config.items() if k not in _NOT_STORED}
        first_row = True
        evaluations = [m for m in run.metrics if m.get("eval_return_mean") is not None]
        for metric_row, means in zip(evaluations, training_means(run, training_keys)):
            row = {"task": run.task, "algorithm": run.algo, "label": run.label, "metric": run.metric,
                   "seed": run.seed, "run": _relative(run.path), "finished": int(run.finished)}
            row.update({key: metric_row.get(key) for key in EVALUATION_COLUMNS if key not in row})
            row.update(means)
            row["config"] = json.dumps(config, sort_keys=True) if first_row and config else None
            first_row = False
            rows.append({key: "" if value is None else value for key, value in row.items()})
    return rows


def _progress(run: RunResult) -> tuple[bool, int]:
    """How far a copy of a run got: (finished, iteration of its last evaluation)."""
    evaluated = [int(m["iteration"]) for m in run.metrics if m.get("eval_return_mean") is not None]
    return run.finished, max(evaluated, default=-1)


def _relative(path: Path) -> str:
    """A run's path as given, relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def runs_from_csv(path: str) -> list[RunResult]:
    """The runs of an ``evaluations.csv``: each run's evaluation rows as its metrics."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DtrlError(f"cannot read {path}: {exc.strerror}") from None
    missing = set(EVALUATION_COLUMNS) - _OPTIONAL_COLUMNS - set(rows[0] if rows else EVALUATION_COLUMNS)
    if missing:
        raise DtrlError(f"{path} is not an evaluations.csv of dtrl report (missing {', '.join(sorted(missing))})")
    by_run: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_run[row["run"]].append(row)
    # columns beyond the standard ones: training metrics (--training-metrics) of the report that wrote it
    stored = [key for key in EVALUATION_COLUMNS[7:] if key != "config"] + csv_training_columns(rows)
    runs = []
    for run_path, run_rows in by_run.items():
        first = run_rows[0]
        metrics = [{key: _number(row.get(key) or "") for key in stored} for row in run_rows]
        for metric_row, row in zip(metrics, run_rows):
            metric_row["iteration"] = int(float(row["iteration"]))
        key = "eval_normalized_mean" if first["metric"] == "normalized" else "eval_return_mean"
        # a score written without a decimal point reads back as an int
        finals = [float(m[key]) for m in metrics
                  if isinstance(m[key], (int, float)) and not isinstance(m[key], bool) and math.isfinite(m[key])]
        try:
            config = json.loads(first.get("config") or "{}")
        except json.JSONDecodeError:
            raise DtrlError(f"{path}: the config of run {run_path} is not valid JSON") from None
        runs.append(RunResult(path=Path(run_path), task=first["task"], algo=first["algorithm"],
                              seed=_number(first["seed"]), config=config, metrics=metrics, metric=first["metric"],
                              final=finals[-1] if finals else None, finished=first["finished"] == "1",
                              label=first["label"]))
    return runs


def csv_training_columns(rows: list[dict]) -> list[str]:
    """The training-metric columns of an evaluations.csv (every column that is not a standard one)."""
    return [key for key in (rows[0] if rows else {}) if key not in EVALUATION_COLUMNS]


def _number(text: str):
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


# ---------------------------------------------------------------------------------------------
# statistics over seeds (rliable)


def score_points(run: RunResult) -> list[tuple[int, float]]:
    """(iteration, score) of each of a run's evaluations with a finite score."""
    key = "eval_normalized_mean" if run.metric == "normalized" else "eval_return_mean"
    return [(row["iteration"], row[key]) for row in run.metrics
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]


def best_so_far(run: RunResult) -> float | None:
    values = [value for _, value in score_points(run)]
    return max(values) if values else None


def start_score(run: RunResult) -> float | None:
    """The iteration-0 evaluation of a finetuning run: the policy it starts from (the pretrained DT,
    IQL after its offline phase, a fresh SB3 policy), evaluated as its later iterations are. None
    for offline pretraining runs, whose iteration 0 is an untrained model, and runs without one."""
    if run.algo in (*OFFLINE_ALGOS, "pretrain"):  # load_run's labels of pretraining runs
        return None
    points = score_points(run)
    return points[0][1] if points and points[0][0] == 0 else None


def improvement_rows(groups: dict[tuple[str, str], GroupResult]) -> list[dict]:
    """Per (task, column): final − start of each run that has both, its mean with a 95% Student-t
    interval over runs, and how many runs ended above where they started."""
    rows = []
    for (task, label), group in sorted(groups.items()):
        pairs = [(start, run.final) for run in group.runs
                 if run.final is not None and (start := start_score(run)) is not None]
        if not pairs:
            continue
        starts, finals = (np.array(values, float) for values in zip(*pairs))
        gains = finals - starts
        interval = t_interval(gains)
        rows.append({"task": task, "algorithm": label, "runs": len(pairs), "start_mean": float(starts.mean()),
                     "final_mean": float(finals.mean()), "gain_mean": float(gains.mean()),
                     "gain_lo": interval[1] if interval else None, "gain_hi": interval[2] if interval else None,
                     "improved": int((gains > 0).sum())})
    return rows


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


_COUNTERS = ("iteration", "env_steps", "grad_updates", "wall_time_s")


def _counts(run: RunResult) -> tuple[dict, dict] | None:
    """The counters (iteration, env steps, gradient updates, wall time) at the run's last evaluation and at
    its iteration 0 (what came before the loop, e.g. IQL's offline updates; zeros without such a row).
    Evaluation rows only, the rows evaluations.csv keeps, so a report rebuilt from it says the same."""
    rows = [row for row in run.metrics
            if isinstance(row.get("env_steps"), (int, float)) and row.get("eval_return_mean") is not None]
    if not rows:
        return None
    last = max(rows, key=lambda row: row["iteration"])
    first = next((row for row in rows if row["iteration"] == 0), {})
    return ({key: float(last.get(key) or 0) for key in _COUNTERS},
            {key: float(first.get(key) or 0) for key in _COUNTERS})


def compute_rows(groups: dict[tuple[str, str], GroupResult]) -> list[dict]:
    """Per (task, column): what its runs spent, as means over runs. The methods spend a budget of
    iterations very differently (samples, updates, time), which a score per iteration hides. The
    per-iteration rates leave out what came before iteration 1 (IQL's offline phase)."""
    rows = []
    for (task, label), group in sorted(groups.items()):
        # finished runs only: an unfinished run's spend so far is not what its method spends
        counts = [c for run in group.runs if run.finished and (c := _counts(run)) is not None and c[0]["iteration"] > 0]
        if not counts:
            continue
        mean = {key: float(np.mean([last[key] for last, _ in counts])) for key in _COUNTERS}
        rate = {key: float(np.mean([(last[key] - first[key]) / (last["iteration"] - first["iteration"])
                                    for last, first in counts])) for key in ("env_steps", "grad_updates")}
        minutes = [last["wall_time_s"] / 60 for last, _ in counts]
        rows.append({"task": task, "algorithm": label, "runs": len(counts), "iterations": mean["iteration"],
                     "env_steps": mean["env_steps"], "grad_updates": mean["grad_updates"],
                     "env_steps_per_iteration": rate["env_steps"],
                     "grad_updates_per_iteration": rate["grad_updates"],
                     "wall_minutes_mean": float(np.mean(minutes)), "wall_minutes_min": min(minutes),
                     "wall_minutes_max": max(minutes)})
    return rows


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


def at_time_rows(groups: dict[tuple[str, str], GroupResult], minutes: float) -> list[dict]:
    """Per (task, column): the score of each run's last evaluation at or before ``minutes`` of its
    wall-clock time, with the iterations and env steps it had reached. Runs evaluated by then only, and
    finished runs or runs that got that far (an unfinished run short of it says nothing of that time)."""
    key = {"normalized": "eval_normalized_mean", "raw": "eval_return_mean"}
    rows = []
    for (task, label), group in sorted(groups.items()):
        reached = []
        for run in group.runs:
            times = [row["wall_time_s"] for row in run.metrics if isinstance(row.get("wall_time_s"), (int, float))]
            if not run.finished and max(times, default=0.0) < 60 * minutes:
                continue
            by_then = [row for row in run.metrics if isinstance(row.get("wall_time_s"), (int, float))
                       and row["wall_time_s"] <= 60 * minutes and isinstance(row.get(key[run.metric]), (int, float))
                       and math.isfinite(row[key[run.metric]])]
            if by_then:
                last = max(by_then, key=lambda row: row["iteration"])
                reached.append((float(last[key[run.metric]]), last["iteration"], last.get("env_steps") or 0,
                                run.final))
        if not reached:
            continue
        scores, iterations, env_steps, finals = zip(*reached)
        rows.append({"task": task, "algorithm": label, "runs": len(reached), "minutes": minutes,
                     "score_mean": float(np.mean(scores)), "score_std": float(np.std(scores)),
                     "iterations": float(np.mean(iterations)), "env_steps": float(np.mean(env_steps)),
                     "final_mean": float(np.mean([f for f in finals if f is not None]))})
    return rows


def at_time_markdown(rows: list[dict], minutes: float) -> str:
    lines = [
        f"## Score after {minutes:g} minutes of wall-clock time",
        "Each run's last evaluation within its first "
        f"{minutes:g} minutes (wall-clock time of the machine that ran it, evaluations included), beside its "
        "final score at the end of its budget of iterations. The two differ where a method's iterations cost "
        "more time as its episodes lengthen, or less since its code got faster.",
        "",
        f"| task | algorithm | runs | score at {minutes:g} min | iterations by then | env steps by then | final |",
        "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['runs']} | {_fmt(r['score_mean'], r['score_std'])} | "
                     f"{r['iterations']:,.0f} | {r['env_steps']:,.0f} | {r['final_mean']:.2f} |")
    return "\n".join(lines)


def _last_finite(run: RunResult, key: str) -> tuple[float | None, object]:
    """The last finite value of ``key`` among a run's evaluations, with that row."""
    for row in reversed(run.metrics):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value), row
    return None, None


def other_rtg_rows(groups: dict[tuple[str, str], GroupResult]) -> list[dict]:
    """Per (task, column) evaluated at a second target RTG (``--eval-other-rtg``): the final score at
    the method's own RTG and at the other, over the runs that have both. The methods default to
    different RTGs (g_online or the task's eval RTG), so a comparison at one RTG needs the other too."""
    rows = []
    for (task, label), group in sorted(groups.items()):
        kind = "normalized" if group.metric == "normalized" else "return"
        own, other, rtgs = [], [], set()
        for run in group.runs:
            value, row = _last_finite(run, f"eval_other_{kind}_mean")
            if value is None or run.final is None:
                continue
            own.append(run.final)
            other.append(value)
            rtgs.add((row.get("eval_target_rtg"), row.get("eval_other_target_rtg")))
        if not own:
            continue
        (own_rtg, other_rtg), = rtgs if len(rtgs) == 1 else {(None, None)}
        rows.append({"task": task, "algorithm": label, "runs": len(own), "own_rtg": own_rtg,
                     "own_mean": float(np.mean(own)), "own_std": float(np.std(own)), "other_rtg": other_rtg,
                     "other_mean": float(np.mean(other)), "other_std": float(np.std(other))})
    return rows


def other_rtg_markdown(rows: list[dict]) -> str:
    def rtg(value) -> str:
        return "varies" if value is None else f"{float(value):g}"

    lines = [
        "## Both target RTGs",
        "The DT methods condition on a target return; by default they are evaluated at different ones (the "
        "task's eval RTG, or g_online). Runs made with `--eval-other-rtg` were evaluated at both. Final score at "
        "each, mean ± std over the runs that have both.",
        "",
        "| task | algorithm | runs | own RTG | final at own RTG | other RTG | final at other RTG |",
        "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['runs']} | {rtg(r['own_rtg'])} | "
                     f"{_fmt(r['own_mean'], r['own_std'])} | {rtg(r['other_rtg'])} | "
                     f"{_fmt(r['other_mean'], r['other_std'])} |")
    return "\n".join(lines)


def bootstrap_estimates(values, reps: int, seed: int = 0) -> dict[str, float]:
    """IQM and mean of one score per seed, each with its 95% stratified-bootstrap CI (rliable):
    keys iqm, iqm_lo, iqm_hi, mean, mean_lo, mean_hi. Seeded, so a table regenerates. Raises
    ImportError without rliable."""
    from rliable import library as rly
    from rliable import metrics as rly_metrics

    def aggregate(x: np.ndarray) -> np.ndarray:
        return np.array([rly_metrics.aggregate_iqm(x), rly_metrics.aggregate_mean(x)])

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    point, interval = rly.get_interval_estimates({"x": np.asarray(values, float)[:, None]}, aggregate, reps=reps)
    (iqm, mean), ((iqm_lo, mean_lo), (iqm_hi, mean_hi)) = point["x"], interval["x"]
    return {"iqm": float(iqm), "iqm_lo": float(iqm_lo), "iqm_hi": float(iqm_hi),
            "mean": float(mean), "mean_lo": float(mean_lo), "mean_hi": float(mean_hi)}


def interval_estimates(groups: dict[tuple[str, str], GroupResult], reps: int, seed: int = 0) -> list[dict] | None:
    """IQM and mean of the final and best-so-far scores per (task, algorithm) with 95%
    stratified-bootstrap CIs over seeds (rliable); None when rliable is not installed."""
    try:
        import rliable  # noqa: F401
    except ImportError:
        return None

    rows = []
    for (task, label), group in sorted(groups.items()):
        finals = [r.final for r in group.runs if r.final is not None]
        bests = [best_so_far(r) for r in group.runs if r.final is not None]
        if not finals:
            continue
        row = {"task": task, "algorithm": label, "metric": group.metric, "n_seeds": len(finals)}
        for name, values in (("final", finals), ("best", bests)):
            row.update({f"{name}_{key}": value for key, value in bootstrap_estimates(values, reps, seed).items()})
        rows.append(row)
    return rows


def statistics_markdown(rows: list[dict]) -> str:
    lines = ["| task | algorithm | seeds | final IQM [95% CI] | final mean [95% CI] | best-so-far mean [95% CI] |",
             "|---|---|---:|---:|---:|---:|"]
    def cell(row: dict, name: str) -> str:
        return f"{row[name]:.1f} [{row[name + '_lo']:.1f}, {row[name + '_hi']:.1f}]"

    for row in rows:
        lines.append(f"| {row['task']} | {row['algorithm']} | {row['n_seeds']} | {cell(row, 'final_iqm')} | "
                     f"{cell(row, 'final_mean')} | {cell(row, 'best_mean')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# ablations: each variant against a reference, seed by seed


def select_runs(runs: list[RunResult], only: tuple[str, ...]) -> list[RunResult]:
    """The runs whose config has every KEY=VALUE of ``only`` (values of a repeated key are
    alternatives; numbers match by value, booleans as typed), as `dtrl sweep --only` selects trials."""
    wanted = key_values(only, "--only", "a config key as in config.json, e.g. algo=grpo")
    if not wanted:
        return runs
    configs = [_flatten(run.config) for run in runs]
    unknown = sorted(key for key in wanted if not any(key in config for config in configs))
    if unknown:
        raise DtrlError(f"--only {', '.join(unknown)}: no run's config.json has this key")
    chosen = [run for run, config in zip(runs, configs)
              if all(any(value_matches(config.get(key), text) for text in texts) for key, texts in wanted.items())]
    if not chosen:
        raise DtrlError(f"--only {' '.join(only)}: none of the {len(runs)} run(s) matches")
    label_variants(chosen)  # a setting that told the runs left out apart does not name a column
    return chosen


def parse_reference(items: tuple[str, ...]) -> dict[str, str]:
    """``("learning_rate=0.001", ...)`` -> {"learning_rate": "0.001", ...}."""
    found = key_values(items, "--reference", "a config key as in config.json")
    return {key: values[-1] for key, values in found.items()}


def late_mean(run: RunResult) -> float | None:
    """Mean of a run's evaluations over the last quarter of its iterations: a run's end state measured
    with more episodes than its final evaluation alone."""
    points = score_points(run)
    if not points:
        return None
    last = points[-1][0]
    return float(np.mean([value for iteration, value in points if iteration >= 0.75 * last]))


def reference_group(groups: list[GroupResult], reference: dict[str, str]) -> GroupResult | None:
    """The one column of a (task, algorithm) whose runs all have the reference values (a key a run's
    config lacks counts as None); None if no column has them."""
    found = [g for g in groups if g.runs and all(value_matches(_flatten(run.config).get(key), text)
                                                 for run in g.runs for key, text in reference.items())]
    if len(found) > 1:
        raise DtrlError(f"--reference {' '.join(f'{k}={v}' for k, v in reference.items())} matches "
                        f"{len(found)} columns of {found[0].task} ({', '.join(g.label for g in found)}): "
                        "add KEY=VALUE for the hyperparameter that tells them apart")
    return found[0] if found else None


def _pair_key(run: RunResult) -> tuple[str, str]:
    init = run.config.get("init")
    return str(run.seed), os.path.normpath(str(init)) if init else ""


def same_starting_weights(run: RunResult, other: RunResult) -> bool:
    """False when both runs recorded the digest of the DT they started from and the digests differ."""
    digests = run.config.get("init_weights_sha256"), other.config.get("init_weights_sha256")
    return not all(digests) or digests[0] == digests[1]


def paired_runs(groups: dict[tuple[str, str], GroupResult], reference: dict[str, str]) -> tuple[list[dict], int]:
    """Every finished run of a variant with the reference's finished run of the same task, algorithm,
    seed and pretrained DT (``init``, and the digest of its weights where both runs recorded one): an
    ablation measured as differences within pairs, which cancels what the seed and the DT contribute to
    both. Returns (pairs, runs of variants left unpaired)."""
    by_algo: dict[tuple[str, str], list[GroupResult]] = defaultdict(list)
    for group in groups.values():
        by_algo[(group.task, group.algo)].append(group)
    rows, unpaired = [], 0
    for (task, _), algo_groups in sorted(by_algo.items()):
        ref = reference_group(algo_groups, reference)
        if ref is None:
            continue
        # reference runs by seed and DT path; one path may hold other weights on another machine, so a
        # key may have several reference runs, told apart by the digests of the DTs they started from
        ref_runs: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
        for run in ref.runs:
            if run.finished and run.final is not None:
                same = [other for other in ref_runs[_pair_key(run)] if same_starting_weights(run, other)]
                if same:
                    raise DtrlError(f"--reference: two runs of {ref.label} on {task} have seed {run.seed} and "
                                    f"init {_pair_key(run)[1] or 'none'} ({same[0].path}, {run.path})")
                ref_runs[_pair_key(run)].append(run)
        for group in sorted(algo_groups, key=lambda g: g.label):
            if group is ref:
                continue
            seen: set[tuple[str, str, str]] = set()
            for run in sorted(group.runs, key=_pair_key):
                candidates = ref_runs.get(_pair_key(run), [])
                base = next((other for other in candidates if same_starting_weights(run, other)), None)
                key = (*_pair_key(run), str(run.config.get("init_weights_sha256") or ""))
                if base is None or not run.finished or run.final is None or key in seen:
                    # unfinished, or no reference run (or a second run) of its seed and DT: same path and,
                    # where both recorded it, the same weights
                    unpaired += 1
                    continue
                seen.add(key)
                # what else tells the two runs apart (e.g. a variant run made with another lr): the pair
                # then measures more than the ablation's switch
                others = [f"{key}={run.variant.get(key)} (reference {base.variant.get(key)})"
                          for key in sorted(set(run.variant) | set(base.variant))
                          if key not in reference and run.variant.get(key) != base.variant.get(key)]
                rows.append({"task": task, "variant": group.label, "reference": ref.label, "seed": run.seed,
                             "init": run.config.get("init") or "", "reference_final": base.final,
                             "variant_final": run.final, "reference_late": late_mean(base),
                             "variant_late": late_mean(run), "reference_run": _relative(base.path),
                             "variant_run": _relative(run.path), "other_differences": "; ".join(others)})
    return rows, unpaired


def t_interval(values: np.ndarray) -> tuple[float, float, float] | None:
    """Mean and 95% Student-t interval of the mean; None below 2 values or without scipy (the
    ``report`` extra). With a handful of pairs a bootstrap interval would be just [min, max]."""
    try:
        from scipy import stats
    except ImportError:
        return None
    if len(values) < 2:
        return None
    mean = float(values.mean())
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def paired_markdown(pairs: list[dict], reference: dict[str, str], unpaired: int) -> str:
    spec = ", ".join(f"{k}={v}" for k, v in reference.items())
    lines = [
        f"## Paired differences against the reference ({spec})",
        "Each finished run of a variant is paired with the reference's finished run of the same task, seed and "
        "pretrained DT; Δ = variant − reference. *Final*: the last evaluation. *Late*: the mean of the "
        "evaluations over the last quarter of the run's iterations. Mean Δ with a 95% Student-t interval over "
        "pairs (none below two pairs); with a handful of pairs it is wide, and `wins` says in how many pairs "
        "the variant ended higher. Every pair is in paired.csv, and paired_curves_<task>.png draws the paired "
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


# ---------------------------------------------------------------------------------------------
# tuning: the best column of each (task, algorithm)

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
        order = _column_order({g.label for _, g, _ in ranked})
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


def plot_performance_profile(task: str, groups: list[GroupResult], out_file: Path, reps: int) -> bool:
    """rliable's score distribution (fraction of runs above each score, with CI bands) of the final
    scores; False when rliable is missing or fewer than two seeds exist."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from rliable import library as rly
        from rliable import plot_utils
    except ImportError:
        return False
    scores = {g.label: np.asarray(g.scores, float)[:, None] for g in groups if len(g.scores) >= 2}
    if not scores:
        return False
    highest = max(float(v.max()) for v in scores.values())
    thresholds = np.linspace(0.0, max(highest, 1e-6) * 1.05, 81)
    np.random.seed(0)
    distributions, bands = rly.create_performance_profile(scores, thresholds, reps=reps)
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(distributions, thresholds, performance_profile_cis=bands,
                                         colors=dict(zip(scores, plt.cm.tab10.colors)), ax=ax,
                                         xlabel=r"final normalised return $\tau$" if groups[0].metric == "normalized"
                                         else r"final return $\tau$")
    ax.set_title(task)
    ax.legend(fontsize=8)
    save_figure(fig, out_file)
    return True


def save_figure(fig, out_file: Path) -> None:
    """Write ``fig`` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write_with(out_file, lambda temp: fig.savefig(temp, dpi=110, format="png"))
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# learning curves


def curve_points(run: RunResult, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, score) of every evaluation in a run, sorted by x."""
    y_key = "eval_normalized_mean" if run.metric == "normalized" else "eval_return_mean"
    points = [(row.get(x_key), row.get(y_key)) for row in run.metrics]
    points = [(float(x), float(y)) for x, y in points
              if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y)]
    points.sort()
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def mean_std_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds. Identical x grids are used as they are; otherwise every seed is
    linearly interpolated onto 100 points of the x range all seeds cover (no extrapolation)."""
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.array([]), np.array([]), np.array([])
    first_x = curves[0][0]
    if all(len(x) == len(first_x) and np.array_equal(x, first_x) for x, _ in curves):
        ys = np.stack([y for _, y in curves])
        return first_x, ys.mean(0), ys.std(0)
    lo = max(x[0] for x, _ in curves)
    hi = min(x[-1] for x, _ in curves)
    if hi <= lo:  # the seeds' ranges do not overlap: use the union, holding end values
        lo, hi = min(x[0] for x, _ in curves), max(x[-1] for x, _ in curves)
    grid = np.linspace(lo, hi, 100) if hi > lo else np.array([lo])
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(0), ys.std(0)


OFFLINE_ALGOS = ("DT", "Reinformer")
"""report labels of offline pretraining runs"""


X_LABELS = {"iterations": "iteration", "env_steps": "environment steps", "wall_time_s": "wall time (s)"}


def _variant_text(group: GroupResult) -> str:
    """What sets a column apart within its algorithm (``lr=..., ...``), or its whole label."""
    variant = group.runs[0].variant if group.runs else {}
    return ", ".join(f"{key}={value}" for key, value in variant.items()) or group.label


def draw_curves(axes, groups: list[GroupResult], x_names: tuple[str, ...], colors: dict[str, str],
                short_labels: bool = False) -> None:
    """Mean ± std over seeds of each column's learning curve on ``axes``, one per x axis in ``x_names``
    (``short_labels``: legend entries name only the hyperparameters that set a column apart)."""
    order = _column_order({g.label for g in groups})
    offline_only = all(g.algo in OFFLINE_ALGOS for g in groups)
    for ax, x_name in zip(axes, x_names):
        x_key = X_KEYS[x_name]
        for group in sorted(groups, key=lambda g: order.index(g.label)):
            if group.algo in OFFLINE_ALGOS and not offline_only and group.scores:
                # a pretraining run's x axis (gradient steps) is not the finetuning runs' one: draw its
                # final score as the level every online method starts from
                ax.axhline(group.mean, color="0.35", linestyle="--", linewidth=1.2,
                           label=f"{group.label} pretrained, final (n={len(group.scores)})")
                ax.axhspan(group.mean - group.std, group.mean + group.std, color="0.35", alpha=0.1)
                continue
            curves = [curve_points(r, x_key) for r in group.runs]
            x, mean, std = mean_std_curve(curves)
            if not len(x):
                continue
            n = sum(1 for run_x, _ in curves if len(run_x))
            name = _variant_text(group) if short_labels else group.label
            ax.plot(x, mean, color=colors[group.label], label=f"{name} (n={n})",
                    marker="o" if len(x) < 15 else None)
            ax.fill_between(x, mean - std, mean + std, color=colors[group.label], alpha=0.2, linewidth=0)
        ax.set_xlabel(X_LABELS[x_name])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("D4RL normalised return" if groups[0].metric == "normalized" else "return")
    if axes[0].lines:
        axes[0].legend(fontsize=8)


def _figure(rows: int, x_names: tuple[str, ...], labels: set[str]):
    """A figure of ``rows`` × len(x_names) panels sharing the y axis, and one colour per column label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, len(x_names), figsize=(6.4 * len(x_names), 4.2 * rows), sharey=True,
                             squeeze=False)
    return fig, axes, _figure_colors(labels)


def _figure_colors(labels: set[str]) -> dict[str, str]:
    """{label: colour}, in the report's column order."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(_column_order(labels))}


def plot_task(task: str, groups: list[GroupResult], x_names: tuple[str, ...], out_file: Path) -> None:
    """``curves_<task>.png``: every column's learning curve, one panel per x axis. When an algorithm has
    several columns (a grid, an ablation), one row of panels per algorithm, so that a grid of 6 settings
    x 8 methods stays readable; the pretrained DT's level is drawn in every row."""
    by_algo: dict[str, list[GroupResult]] = defaultdict(list)
    for group in groups:
        by_algo[group.algo].append(group)
    offline = [g for g in groups if g.algo in OFFLINE_ALGOS]
    online = sorted(a for a in by_algo if a not in OFFLINE_ALGOS)
    if not any(len(by_algo[algo]) > 1 for algo in online):
        fig, axes, colors = _figure(1, x_names, {g.label for g in groups})
        draw_curves(axes[0], groups, x_names, colors)
        fig.suptitle(task)
        save_figure(fig, out_file)
        return
    fig, axes, _ = _figure(len(online), x_names, {g.label for g in groups})
    for row, algo in zip(axes, online):
        row_groups = by_algo[algo] + offline
        colors = _figure_colors({g.label for g in row_groups})
        draw_curves(row, row_groups, x_names, colors, short_labels=True)
        row[0].set_title(f"{task}: {algo}", loc="left", fontsize=10)
    save_figure(fig, out_file)


def plot_paired_curves(pairs: list[dict], groups: dict[tuple[str, str], GroupResult], x_names: tuple[str, ...],
                       out: Path) -> list[Path]:
    """``paired_curves_<task>.png``: one row per variant, drawn beside the reference runs it is paired
    with only (the same seeds and pretrained DTs), not beside every reference run."""
    by_run = {(g.task, _relative(r.path)): (g, r) for g in groups.values() for r in g.runs}
    rows: dict[str, dict[str, list[GroupResult]]] = defaultdict(dict)  # task -> variant -> [variant, reference]
    for task in sorted({p["task"] for p in pairs}):
        for variant in sorted({p["variant"] for p in pairs if p["task"] == task}):
            chosen = [p for p in pairs if p["task"] == task and p["variant"] == variant]
            row = []
            for side in ("variant_run", "reference_run"):
                group, _ = by_run[(task, chosen[0][side])]
                runs = [by_run[(task, p[side])][1] for p in chosen]
                row.append(GroupResult(task=task, label=group.label, algo=group.algo, metric=group.metric, runs=runs))
            rows[task][variant] = row
    files = []
    for task, variants in sorted(rows.items()):
        fig, axes, colors = _figure(len(variants), x_names, {g.label for row in variants.values() for g in row})
        for ax_row, row in zip(axes, variants.values()):
            draw_curves(ax_row, row, x_names, colors)
        fig.suptitle(f"{task}: paired runs (same seed and DT)")
        png = out / f"paired_curves_{task.replace('/', '_')}.png"
        save_figure(fig, png)
        files.append(png)
    return files


# ---------------------------------------------------------------------------------------------
# training metrics (--training-metrics)


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


def training_curve(run: RunResult, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iteration, mean of ``key`` since the previous evaluation) at each of the run's evaluations."""
    evaluations = [m for m in run.metrics if m.get("eval_return_mean") is not None]
    points = [(float(row["iteration"]), means[key]) for row, means in zip(evaluations, training_means(run, (key,)))
              if means[key] is not None]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def training_rows(groups: dict[tuple[str, str], GroupResult], keys: tuple[str, ...]) -> list[dict]:
    """Per (task, column, key): the first and the last between-evaluation mean of each run, averaged over runs."""
    rows = []
    for (task, label), group in sorted(groups.items()):
        for key in keys:
            curves = [y for _, y in (training_curve(run, key) for run in group.runs) if len(y)]
            if curves:
                rows.append({"task": task, "algorithm": label, "metric": key, "runs": len(curves),
                             "first_mean": float(np.mean([y[0] for y in curves])),
                             "last_mean": float(np.mean([y[-1] for y in curves]))})
    return rows


def training_markdown(rows: list[dict]) -> str:
    lines = [
        "## Training metrics",
        "Each key's mean over the iterations between two evaluations; *first* and *last*: the first and the "
        "last such interval of each run, averaged over runs. Curves: `training_<task>.png` (mean ± std over seeds).",
        "",
        "| task | algorithm | metric | runs | first | last |",
        "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['algorithm']} | {r['metric']} | {r['runs']} | {r['first_mean']:.4g} | "
              f"{r['last_mean']:.4g} |" for r in rows]
    return "\n".join(lines)


def plot_training(task: str, groups: list[GroupResult], keys: tuple[str, ...], out_file: Path) -> bool:
    """``training_<task>.png``: one panel per key, each column's between-evaluation means over iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _figure_colors({g.label for g in groups})
    order = _column_order({g.label for g in groups})
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.2), squeeze=False)
    drawn = False
    for ax, key in zip(axes[0], keys):
        for group in sorted(groups, key=lambda g: order.index(g.label)):
            curves = [training_curve(run, key) for run in group.runs]
            x, mean, std = mean_std_curve(curves)
            if not len(x):
                continue
            drawn = True
            n = sum(1 for run_x, _ in curves if len(run_x))
            ax.plot(x, mean, color=colors[group.label], label=f"{group.label} (n={n})")
            ax.fill_between(x, mean - std, mean + std, color=colors[group.label], alpha=0.2, linewidth=0)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(X_LABELS["iterations"])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(task)
    if not drawn:
        plt.close(fig)
        return False
    save_figure(fig, out_file)
    return True


# ---------------------------------------------------------------------------------------------
# command


def _csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def load_runs(run_dirs, from_csv) -> list[RunResult]:
    """The runs of run directories and ``evaluations.csv`` files, labelled as the report labels them.
    A run both on disk and in a CSV, or in two CSVs (a study continued across sessions and machines),
    counts once: the copy that got further (finished, then the later last evaluation)."""
    runs = [load_run(path) for path in find_runs(list(run_dirs))] if run_dirs else []
    chosen = {_relative(run.path): run for run in runs}
    for csv_file in from_csv:
        for run in runs_from_csv(csv_file):
            key = _relative(run.path)
            if key not in chosen or _progress(run) > _progress(chosen[key]):
                # a CSV written before configs were stored: keep the config another copy has
                run.config = run.config or (chosen[key].config if key in chosen else {})
                chosen[key] = run
            elif not chosen[key].config:
                chosen[key].config = run.config
    runs = list(chosen.values())
    label_variants(runs)
    return runs


def build_report(config: ReportConfig) -> dict:
    """Load, group, write the files; returns {"markdown", "files", "groups", "runs"}."""
    x_names = tuple(config.x)
    if not x_names or any(x not in X_KEYS for x in x_names):
        raise DtrlError(f"--x takes one or more of {', '.join(X_KEYS)}, got {' '.join(map(str, x_names)) or 'none'}")
    if config.at_minutes < 0:
        raise DtrlError(f"--at-minutes must be >= 0, got {config.at_minutes:g}")
    if not config.run_dirs and not config.from_csv:
        raise DtrlError("no run directories given (dtrl report RUN_DIR... ; a folder of runs, or --from-csv FILE)")
    reference = parse_reference(config.reference)
    runs = select_runs(load_runs(config.run_dirs, config.from_csv), config.only)
    trained = training_keys(config, runs)
    evaluated = [r for r in runs if r.final is not None]
    if not evaluated:
        raise DtrlError(f"none of the {len(runs)} run(s) has an evaluation yet (no eval_return_mean in metrics.jsonl)")
    unfinished = [r for r in runs if not r.finished]
    groups = group_runs([r for r in runs if r.finished] if config.finished_only else runs)
    if not groups:
        raise DtrlError(f"--finished-only: none of the {len(runs)} run(s) has finished yet")
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DtrlError(f"cannot create report folder {out}: {exc.strerror}") from None

    table = markdown_table(groups)
    seeds = sorted({len(g.scores) for g in groups.values() if g.scores})
    seed_note = f"{seeds[0]} seed(s) per cell" if len(seeds) == 1 else "seeds per cell vary (see report.csv)"
    not_evaluated = [r for r in runs if r.final is None]
    statistics = interval_estimates(groups, config.bootstrap_reps)
    if statistics is None:
        statistics_section = ["The IQM / mean confidence intervals need the optional rliable extra: "
                              "`pip install 'dtrl[report]'`."]
    else:
        statistics_section = [
            "## Statistics over seeds",
            "IQM and mean of the final and of the best-so-far score, with 95% stratified-bootstrap confidence "
            f"intervals over seeds ({config.bootstrap_reps} resamples, rliable; Agarwal et al. 2021). The final "
            "policy is the headline; best-so-far picks the best of a run's evaluations, an optimistic number.",
            statistics_markdown(statistics)]
    pairs, unpaired = paired_runs(groups, reference) if reference else ([], 0)
    if reference and not pairs:
        raise DtrlError(f"--reference {' '.join(config.reference)}: no finished run of another variant has a "
                        "finished reference run of the same task, algorithm, seed and pretrained DT")
    paired_section = [paired_markdown(pairs, reference, unpaired)] if pairs else []
    improvement = improvement_rows(groups)
    improvement_section = [improvement_markdown(improvement)] if improvement else []
    other_rtg = other_rtg_rows(groups)
    other_rtg_section = [other_rtg_markdown(other_rtg)] if other_rtg else []
    compute = compute_rows(groups)
    compute_section = [compute_markdown(compute)] if compute else []
    at_time = at_time_rows(groups, config.at_minutes) if config.at_minutes else []
    at_time_section = [at_time_markdown(at_time, config.at_minutes)] if at_time else []
    choices = choose_settings(groups, config.choose) if config.choose else []
    if config.choose and not choices:
        raise DtrlError(f"--choose {config.choose}: no finished run with an evaluation to rank")
    choice_section = [choice_markdown(choices, config.choose, len(unfinished))] if choices else []
    training = training_rows(groups, trained) if trained else []
    training_section = [training_markdown(training)] if training else []
    markdown = "\n\n".join([
        "# dtrl report",
        "Final D4RL-normalised return (last evaluation of each run; tasks marked *raw return* have no "
        f"reference scores), mean ± std over seeds ({seed_note}); best of ours and best of the paper's "
        "Table 1 per task in bold.",
        table,
        *statistics_section,
        *improvement_section,
        *other_rtg_section,
        *compute_section,
        *at_time_section,
        *training_section,
        *paired_section,
        *choice_section,
        "## Runs",
        runs_table(runs),
    ] + ([f"{len(not_evaluated)} run(s) without an evaluation yet are listed with –."] if not_evaluated else [])
      + ([f"{len(unfinished)} unfinished run(s) are listed above but not counted (--finished-only)."]
         if config.finished_only and unfinished else
         [f"{len(unfinished)} run(s) have not finished: their last evaluation so far is counted as final "
          "(--finished-only leaves them out)."] if unfinished else [])) + "\n"

    files = [out / "report.md", out / "report.csv", out / "evaluations.csv"]
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.csv", _csv_text(csv_rows(groups)))
    atomic_write_text(out / "evaluations.csv",
                      _csv_text(evaluation_rows(runs, trained), EVALUATION_COLUMNS + list(trained)))
    if statistics:
        atomic_write_text(out / "statistics.csv", _csv_text(statistics))
        files.append(out / "statistics.csv")
    if improvement:
        atomic_write_text(out / "improvement.csv", _csv_text(improvement))
        files.append(out / "improvement.csv")
    for name, rows in (("other_rtg", other_rtg), ("compute", compute), ("at_time", at_time),
                       ("training", training)):
        if rows:
            atomic_write_text(out / f"{name}.csv", _csv_text(rows))
            files.append(out / f"{name}.csv")
    if choices:
        atomic_write_text(out / "chosen.csv", _csv_text(choices))
        files.append(out / "chosen.csv")
    if pairs:
        atomic_write_text(out / "paired.csv", _csv_text(pairs))
        files.append(out / "paired.csv")
        files += plot_paired_curves(pairs, groups, x_names, out)

    by_task: dict[str, list[GroupResult]] = defaultdict(list)
    for group in groups.values():
        by_task[group.task].append(group)
    for task, task_groups in sorted(by_task.items()):
        png = out / f"curves_{task.replace('/', '_')}.png"
        plot_task(task, task_groups, x_names, png)
        files.append(png)
        profile = out / f"performance_profile_{task.replace('/', '_')}.png"
        if plot_performance_profile(task, task_groups, profile, config.bootstrap_reps):
            files.append(profile)
        training_png = out / f"training_{task.replace('/', '_')}.png"
        if trained and plot_training(task, task_groups, trained, training_png):
            files.append(training_png)
    return {"markdown": table, "files": files, "groups": groups, "runs": runs, "pairs": pairs, "choices": choices}


def main(argv: list[str]) -> int:
    import tyro

    config = tyro.cli(ReportConfig, args=list(argv), prog="dtrl report",
                      description="Table-1-style results (markdown, CSV) and learning curves from run directories "
                                  "(give the run directories first, then the options).")
    result = build_report(config)
    print(result["markdown"])
    print()
    for file in result["files"]:
        print(f"wrote {file}")
    return 0
