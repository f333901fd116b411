"""The runs a report reads: run directories (``config.json``, ``metrics.jsonl``) and the
``evaluations.csv`` files earlier reports wrote, labelled by what sets them apart and grouped into the
table's columns."""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import functools
import importlib
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dtrl.config import key_values, value_matches
from dtrl.errors import DtrlError
from dtrl.runs import CONFIG_FILE, is_finished, iter_run_dirs, read_config, read_metrics

# our algorithm names (config "algo") -> the paper's column names (pretraining runs: see load_run)
ALGO_NAMES = {"grpo": "GRPO-DT", "grpo-q": "GRPO-DT (Q)", "ppo": "PPO-DT", "odt": "ODT", "odt-td3": "ODT+TD3",
              "iql": "IQL", "dt": "DT", "reinformer": "Reinformer", "sb3-ppo": "SB3 PPO", "sb3-sac": "SB3 SAC"}


# column order of the table: the paper's order, then the non-DT reference lines, anything else after them
ALGO_ORDER = ["DT", "Reinformer", "IQL", "ODT", "ODT+TD3", "PPO-DT", "GRPO-DT", "GRPO-DT (Q)", "SB3 PPO", "SB3 SAC"]


OFFLINE_ALGOS = ("DT", "Reinformer")
"""report labels of offline pretraining runs"""


# config keys that say how or where a run was launched, or what else it evaluates, never what it
# learns (eval_other_rtg adds evaluations at a second RTG: Table 1's runs have it, their ablations not)
_NOT_HYPERPARAMETERS = {"seed", "out", "run_info", "resume", "force", "device", "init", "dataset", "task",
                        "algo", "preset", "eval_every", "eval_episodes", "eval_other_rtg", "checkpoint_every",
                        "command", "threads", "env_threads", "track", "wandb_project", "wandb_entity",
                        "init_weights_sha256", "video_every", "video_fps"}


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
    start: str = ""
    """what the run started from (``starting_point``), when that differs within its (task, algorithm)"""


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


def canonical_task(name: str) -> tuple[str, object | None]:
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
    task_name, task = canonical_task(str(config.get("task", "unknown")))
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


def flatten_config(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _looks_like_path(value: object) -> bool:
    return isinstance(value, str) and (os.sep in value or "/" in value)


_SEED_FOLDER = re.compile(r"(?<![A-Za-z0-9])seed\d+")


def starting_point(config: dict) -> str:
    """What a run started from: its ``--init`` (a Hugging Face ``hf:`` model or a dtrl run/policy folder)
    and ``--dataset``, as ``init=..., dataset=...`` ("" for neither). A sweep names the DT of seed N
    ``.../seedN`` (``--init runs/pretrain/{task}/dt/seed{seed}``), one DT per seed by design (Table 1, the
    robustness studies): a path differing from another only in such a ``seedN`` folder is the same
    starting point with another seed (``seed*``). Two runs whose inits differ otherwise (a Hugging Face
    model and a dtrl pretrain; two pretraining recipes) started from different places."""
    parts = []
    for key in ("init", "dataset"):
        value = config.get(key)
        if value:
            text = str(value)
            text = text if text.startswith("hf:") else os.path.normpath(text)
            parts.append(f"{key}={_SEED_FOLDER.sub('seed*', text)}")
    return ", ".join(parts)


@functools.cache
def preset_defaults(algo: str | None, preset: str | None, task: str | None) -> dict:
    """The flat config that ``dtrl finetune --algo ALGO --preset PRESET --task TASK`` (or ``dtrl pretrain``)
    starts from today; {} where that cannot be built (an unknown algorithm, preset or task). Options are
    added with the earlier behaviour as their default, so for a run made before an option existed, this
    is what the option stood for."""
    from dtrl.algos.finetune import algorithm_module

    try:
        module = "dtrl.algos.pretrain" if algo == "pretrain" else algorithm_module(str(algo))
        presets = importlib.import_module(module).PRESETS
        return flatten_config(dataclasses.asdict(presets[preset](task)))
    except (ImportError, AttributeError, KeyError, DtrlError, TypeError, ValueError):
        return {}


def with_added_options(run: RunResult, flat: dict, keys) -> dict:
    """``flat`` (the run's flattened config) with each of ``keys`` it lacks filled in by today's preset
    default: an option added after the run was made, so the run did what that default does today."""
    missing = [k for k in keys if k not in flat]
    if missing:
        defaults = preset_defaults(run.config.get("algo"), run.config.get("preset"), run.config.get("task"))
        flat.update({k: defaults[k] for k in missing if k in defaults})
    return flat


def label_variants(runs: list[RunResult]) -> None:
    """Label each run by its algorithm plus what varies within its (task, algo): the hyperparameters, so
    a sweep over e.g. clip_eps gives one column per value instead of mixing them, and the starting point
    (``starting_point``: ``from init=...``), so runs finetuned from different models are never pooled as
    seeds of one method. Runs read from an older evaluations.csv without configs keep the label stored
    there."""
    by_group: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for run in runs:
        if run.config:
            by_group[(run.task, run.algo)].append(run)
    for group in by_group.values():
        flats = [flatten_config({k: v for k, v in r.config.items() if k not in _NOT_HYPERPARAMETERS}) for r in group]
        keys = sorted(set().union(*flats))
        for run, flat in zip(group, flats):
            with_added_options(run, flat, keys)
        varying = [k for k in keys
                   if len({repr(f.get(k)) for f in flats}) > 1 and not any(_looks_like_path(f.get(k)) for f in flats)]
        starts = [starting_point(r.config) for r in group]
        several_starts = len(set(starts)) > 1
        for run, flat, start in zip(group, flats, starts):
            run.variant = {k: flat.get(k) for k in varying}
            run.start = f"from {start or 'scratch'}" if several_starts else ""
            suffix = ", ".join([f"{k}={flat.get(k)}" for k in varying] + ([run.start] if run.start else []))
            run.label = f"{run.algo} ({suffix})" if suffix else run.algo


def _matches(run: RunResult, pattern: str) -> bool:
    """The run's path (as the report lists it) or a folder above it matches the glob ``pattern``."""
    path = Path(relative_path(run.path))
    pattern = pattern.rstrip("/")
    return any(fnmatch.fnmatch(str(p), pattern) for p in (path, *path.parents) if str(p) != ".")


def apply_labels(runs: list[RunResult], labels: tuple[str, ...]) -> None:
    """``--label NAME=GLOB``: the runs below a path matching GLOB form a column named NAME (the name ends
    at the first ``=``; a sweep's run paths hold ``=``, names seldom do). A name only renames a column:
    runs the report would put in different columns (another algorithm, setting or starting point) are
    refused, as is a name another column of the task already has."""
    for item in labels:
        name, sep, pattern = item.partition("=")
        if not sep or not pattern or not name.strip():
            raise DtrlError(f"--label takes NAME=GLOB (the column's name, the runs whose path matches GLOB), "
                            f"got {item!r}")
        chosen = [run for run in runs if _matches(run, pattern)]
        if not chosen:
            raise DtrlError(f"--label {item}: no run's path matches {pattern!r}")
        for task in sorted({run.task for run in chosen}):
            columns = sorted({run.label for run in chosen if run.task == task})
            if len(columns) > 1:
                raise DtrlError(f"--label {item}: its {task} runs belong to {len(columns)} columns "
                                f"({'; '.join(columns)}); runs that differ in more than the seed are never "
                                "pooled: give each column its own --label")
            others = {run.label for run in runs if run.task == task and not _matches(run, pattern)}
            if name.strip() in others:
                raise DtrlError(f"--label {item}: {task} already has a column named {name.strip()!r}")
        for run in chosen:
            run.label = name.strip()


def group_runs(runs: list[RunResult]) -> dict[tuple[str, str], GroupResult]:
    groups: dict[tuple[str, str], GroupResult] = {}
    for run in runs:
        key = (run.task, run.label)
        if key not in groups:
            groups[key] = GroupResult(task=run.task, label=run.label, algo=run.algo, metric=run.metric)
        groups[key].runs.append(run)
    return groups


def share_across_tasks(runs: list[RunResult], algos: tuple[str, ...]) -> tuple[list[RunResult], list[str]]:
    """Copies of the runs of ``algos`` (``dtrl finetune --algo`` names) for every other task of the report on
    the same environment, and one note per share. For methods that read no dataset and no pretrained DT
    (the SB3 lines), a run on hopper-random is a run on hopper-medium: the same env, reference scores and
    settings, so Table 1 runs them once per env (issue 38) and shows them in each of its tasks. Refused
    where that is not so: a run that read a dataset or a DT, tasks whose envs, reference scores or
    preset settings differ, or a task that has runs of its own of that method."""
    shared: list[RunResult] = []
    notes: list[str] = []
    tasks = {run.task for run in runs}
    for algo in algos:
        sources = [run for run in runs if run.config.get("algo") == algo]
        if not sources:
            raise DtrlError(f"--share-across-tasks {algo}: no run of that algorithm in the report")
        for run in sources:
            if run.config.get("dataset") or run.config.get("init"):
                raise DtrlError(f"--share-across-tasks {algo}: {relative_path(run.path)} read a dataset or a "
                                "pretrained DT, so it belongs to its own task")
        for source_task in sorted({run.task for run in sources}):
            from_task = [run for run in sources if run.task == source_task]
            for task in sorted(tasks - {source_task}):
                if not _same_setting(algo, from_task[0], task):
                    continue
                if any(run.task == task for run in sources):
                    raise DtrlError(f"--share-across-tasks {algo}: {task} has {algo} runs of its own beside "
                                    f"those of {source_task} on the same env; report one of them")
                shared += [dataclasses.replace(run, task=task) for run in from_task]
                notes.append(f"{from_task[0].algo} on {task}: the {len(from_task)} {source_task} run(s) "
                             f"(--share-across-tasks: the same env and settings; the method reads no dataset).")
    return shared, notes


def _same_setting(algo: str, run: RunResult, task: str) -> bool:
    """Whether ``run`` (of another task) is also a run of ``task``: the same env, episode horizon and
    reference scores, and a preset whose settings differ in nothing but the task's name."""
    _, mine = canonical_task(run.task)
    _, other = canonical_task(task)
    if mine is None or other is None:
        return False
    same = lambda field_name: getattr(mine, field_name) == getattr(other, field_name)  # noqa: E731
    if not all(map(same, ("env_id", "env_kwargs", "max_episode_steps", "ref_min_score", "ref_max_score"))):
        return False
    preset = run.config.get("preset")
    ours = {k: v for k, v in preset_defaults(algo, preset, run.task).items() if k != "task"}
    theirs = {k: v for k, v in preset_defaults(algo, preset, task).items() if k != "task"}
    return bool(ours) and ours == theirs


def column_order(labels: set[str]) -> list[str]:
    def key(label: str):
        base = label.split(" (", 1)[0] if label not in ALGO_ORDER else label
        return (ALGO_ORDER.index(base) if base in ALGO_ORDER else len(ALGO_ORDER), label)

    return sorted(labels, key=key)


def select_runs(runs: list[RunResult], only: tuple[str, ...]) -> list[RunResult]:
    """The runs whose config has every KEY=VALUE of ``only`` (values of a repeated key are
    alternatives; numbers match by value, booleans as typed), as `dtrl sweep --only` selects trials."""
    wanted = key_values(only, "--only", "a config key as in config.json, e.g. algo=grpo")
    if not wanted:
        return runs
    configs = [with_added_options(run, flatten_config(run.config), wanted) for run in runs]
    unknown = sorted(key for key in wanted if not any(key in config for config in configs))
    if unknown:
        raise DtrlError(f"--only {', '.join(unknown)}: no run's config.json has this key")
    chosen = [run for run, config in zip(runs, configs)
              if all(any(value_matches(config.get(key), text) for text in texts) for key, texts in wanted.items())]
    if not chosen:
        raise DtrlError(f"--only {' '.join(only)}: none of the {len(runs)} run(s) matches")
    label_variants(chosen)  # a setting that told the runs left out apart does not name a column
    return chosen


def load_runs(run_dirs, from_csv) -> list[RunResult]:
    """The runs of run directories and ``evaluations.csv`` files, labelled as the report labels them.
    A run both on disk and in a CSV, or in two CSVs (a study continued across sessions and machines),
    counts once: the copy that got further (finished, then the later last evaluation)."""
    runs = [load_run(path) for path in find_runs(list(run_dirs))] if run_dirs else []
    chosen = {relative_path(run.path): run for run in runs}
    for csv_file in from_csv:
        for run in runs_from_csv(csv_file):
            key = relative_path(run.path)
            if key not in chosen or _progress(run) > _progress(chosen[key]):
                # a CSV written before configs were stored: keep the config another copy has
                run.config = run.config or (chosen[key].config if key in chosen else {})
                chosen[key] = run
            elif not chosen[key].config:
                chosen[key].config = run.config
    runs = list(chosen.values())
    label_variants(runs)
    return runs


def _progress(run: RunResult) -> tuple[bool, int]:
    """How far a copy of a run got: (finished, iteration of its last evaluation)."""
    evaluated = [int(m["iteration"]) for m in run.metrics if m.get("eval_return_mean") is not None]
    return run.finished, max(evaluated, default=-1)


def relative_path(path: Path) -> str:
    """A run's path as given, relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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
                   "seed": run.seed, "run": relative_path(run.path), "finished": int(run.finished)}
            row.update({key: metric_row.get(key) for key in EVALUATION_COLUMNS if key not in row})
            row.update(means)
            row["config"] = json.dumps(config, sort_keys=True) if first_row and config else None
            first_row = False
            rows.append({key: "" if value is None else value for key, value in row.items()})
    return rows


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
