"""``dtrl sweep SPEC [--local | --address ADDR] [--max-concurrent N] [--resume]``: a grid of
tasks x algorithms x seeds x hyperparameter overrides, one Ray Tune trial per cell.

Each trial runs an ordinary ``dtrl`` command (``python -m dtrl finetune --algo grpo ...``) as a
subprocess of the trial's Ray worker and writes an ordinary run directory::

    OUT_ROOT/<task>/<algo>/seed<k>[-<field>=<value>...]/     config.json, metrics.jsonl, checkpoints/ ...
    OUT_ROOT/<task>/<algo>/seed<k>[-...].log                 the command's stdout and stderr

A subprocess (not an in-process call) because each run then owns its global RNGs, torch threads,
CUDA context and memory, and a crashing run cannot take the Ray worker down with it; it is killed
with its worker. ``dtrl report OUT_ROOT`` turns the result into tables and curves.

Resumable: ``--resume`` skips trials whose run has ``final.json``, continues interrupted ones that
have a checkpoint (their command gets ``--resume``) and restarts those that never reached one.
``--done evaluations.csv`` also skips trials an earlier ``dtrl report`` recorded as finished, so a
study whose run directories stayed on another machine continues from its committed CSVs.
See docs/sweeps.md for the spec format and for running on a Ray cluster.
"""

from __future__ import annotations

import csv
import datetime as _dt
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import tyro

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from dtrl.config import key_values, option_args, to_dict, value_matches, value_text
from dtrl.errors import DtrlError
from dtrl.runs import (
    CONFIG_FILE,
    atomic_write_json,
    changed_settings,
    has_checkpoint,
    is_finished,
    read_config,
    remove_run_dir,
)

# the dtrl commands a trial may run: the ones that train or evaluate (each writes its own run directory)
TRIAL_COMMANDS = ("data", "pretrain", "finetune", "eval", "demo")
INSTALL_HINT = "dtrl sweep needs Ray Tune: pip install 'ray[tune]'  (or: pip install 'dtrl[sweep]')"


@dataclass
class Resources:
    """What one trial reserves from the Ray cluster."""

    cpus: float = 1.0
    """CPU cores per trial (also the trial's OMP/MKL/torch thread count)"""
    gpus: float = 0.0
    """GPUs per trial (fractions share a GPU); Ray sets CUDA_VISIBLE_DEVICES for the trial"""


@dataclass
class SweepSpec:
    """The contents of a sweep file (TOML or JSON); see docs/sweeps.md."""

    tasks: list[str]
    """tasks to run, names from `dtrl tasks`"""
    command: str = "finetune"
    """the dtrl command each trial runs: 'finetune', 'pretrain', ... (words separated by spaces)"""
    algos: list[str] = field(default_factory=list)
    """finetune: the --algo values; other commands: optional labels for the run-directory level"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """seeds; each is passed as --seed"""
    overrides: dict[str, list] = field(default_factory=dict)
    """grid of config field -> list of values, e.g. {clip_eps = [0.1, 0.2]} (field names as in --help)"""
    args: list[str] = field(default_factory=list)
    """fixed command-line arguments for every trial; {task}, {algo}, {seed}, {out_root} are filled in,
    e.g. ["--init", "runs/pretrain/{task}/dt/seed{seed}", "--preset", "cpu"]"""
    algo_args: dict[str, list[str]] = field(default_factory=dict)
    """more fixed arguments for the trials of one algo (after ``args``, same placeholders), e.g.
    {odt = ["--dataset", "data/{task}.hdf5"]}: what one method needs and another refuses"""
    out_root: str = "runs/sweep"
    """folder holding every trial's run directory (on a cluster: a filesystem all nodes share)"""
    resources: Resources = field(default_factory=Resources)
    """per-trial resources"""
    program: list[str] = field(default_factory=list)
    """the program a trial starts (default: the Ray worker's own python -m dtrl)"""
    studies: dict[str, SweepSpec] = field(default_factory=dict)
    """named sub-sweeps of one spec (e.g. one per ablation of a paper), each in out_root/<name>; a
    study's keys replace the shared ones, its algo_args entries replace the shared entry per algo"""


# what a study of a multi-study spec may set for itself (the rest is the whole sweep's: one Ray run)
STUDY_KEYS = ("tasks", "algos", "seeds", "overrides", "args", "algo_args")


@dataclass
class SweepConfig:
    """Run a sweep file on Ray Tune."""

    spec: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="SPEC")]]
    """sweep file (.toml or .json): tasks, algos, seeds, overrides, args, out_root, resources"""
    local: bool = False
    """start a private local Ray instance (the default when --address is not given)"""
    address: str | None = None
    """connect to a running Ray cluster instead: 'auto' (this node is part of it) or ray://HOST:10001"""
    num_cpus: int | None = None
    """--local: CPUs Ray may use (default: all of this machine's)"""
    max_concurrent: int = 0
    """most trials running at once (0: as many as the resources allow)"""
    resume: bool = False
    """continue a sweep whose out_root exists: skip finished trials, resume interrupted ones"""
    dry_run: bool = False
    """print each trial's command and status without running anything"""
    done: tuple[str, ...] = ()
    """evaluations.csv files of earlier `dtrl report`s: trials whose run is recorded there as finished
    are skipped (a study continued on another machine, where its run directories are gone)"""
    only: tuple[str, ...] = ()
    """KEY=VALUE ...: run only the trials that match (keys: task, algo, seed, study, or an override's name;
    a key given twice matches either value), e.g. `--only algo=ppo learning_rate=0.001`: one sweep split
    between cores or machines, each running its share into the same out_root"""


# ---------------------------------------------------------------------------------------------
# spec


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep file; every problem is a one-line DtrlError."""
    path = Path(path)
    if not path.is_file():
        raise DtrlError(f"sweep spec {path} not found")
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            raise DtrlError(f"sweep spec {path}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise DtrlError(f"sweep spec {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise DtrlError(f"sweep spec {path}: expected a table/object at the top level")
    return spec_from_dict(raw, str(path))


def spec_from_dict(raw: dict, where: str = "sweep spec") -> SweepSpec:
    known = {f for f in SweepSpec.__dataclass_fields__}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DtrlError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if "studies" in raw:
        return _multi_study_spec(raw, where)
    if "tasks" not in raw:
        raise DtrlError(f"{where}: 'tasks' is required (a list of task names)")
    spec = SweepSpec(**_spec_fields(raw, where))
    spec.command = " ".join(spec.command.split())
    _check_spec(spec, where)
    return spec


def _spec_fields(raw: dict, where: str) -> dict:
    """``raw``'s keys as SweepSpec's arguments: single values as lists, arguments as argv lists,
    ``resources`` as Resources; a malformed value is a one-line DtrlError."""
    data = dict(raw)
    for key in ("tasks", "algos", "seeds", "program"):
        if key in data:
            if isinstance(data[key], (str, int)):
                data[key] = [data[key]]
            if not isinstance(data[key], list) or not data[key] and key in ("tasks", "seeds"):
                raise DtrlError(f"{where}: '{key}' must be a non-empty list")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in data.get("seeds", [0])):
        raise DtrlError(f"{where}: 'seeds' must be integers, got {data['seeds']}")
    data["args"] = _as_argv(data.get("args", []), f"{where}: 'args'")
    data["algo_args"] = _spec_algo_args(data.get("algo_args", {}), data.get("algos", []), where)
    overrides = data.get("overrides", {})
    if not isinstance(overrides, dict):
        raise DtrlError(f"{where}: 'overrides' must be a table of field -> list of values")
    for name, values in overrides.items():
        if not isinstance(values, list) or not values:
            raise DtrlError(f"{where}: overrides.{name} must be a non-empty list of values")
    resources = data.get("resources", {})
    if not isinstance(resources, dict) or set(resources) - {"cpus", "gpus"}:
        raise DtrlError(f"{where}: 'resources' takes cpus and gpus, got {resources}")
    data["resources"] = Resources(**resources)
    return data


def _spec_algo_args(algo_args, algos: list, where: str) -> dict[str, list[str]]:
    if not isinstance(algo_args, dict):
        raise DtrlError(f"{where}: 'algo_args' must be a table of algo -> arguments")
    algo_args = {algo: _as_argv(value, f"{where}: algo_args.{algo}") for algo, value in algo_args.items()}
    unused = sorted(set(algo_args) - set(algos))
    if unused:
        raise DtrlError(f"{where}: algo_args for {', '.join(unused)}, which 'algos' does not list")
    return algo_args


def _check_spec(spec: SweepSpec, where: str) -> None:
    """What a spec's values must satisfy together: resources, a training command, its algos, the
    arguments the sweep sets itself, known tasks."""
    if spec.resources.cpus <= 0 or spec.resources.gpus < 0:
        raise DtrlError(f"{where}: resources need cpus > 0 and gpus >= 0")
    if spec.command == "finetune":
        from dtrl.algos.finetune import ALGORITHMS

        if not spec.algos:
            raise DtrlError(f"{where}: command 'finetune' needs 'algos' (choose from {', '.join(ALGORITHMS)})")
        bad = [a for a in spec.algos if a not in ALGORITHMS]
        if bad:
            raise DtrlError(f"{where}: unknown algo(s) {', '.join(bad)} (choose from {', '.join(ALGORITHMS)})")
    if spec.command.split()[0] not in TRIAL_COMMANDS:
        raise DtrlError(f"{where}: command {spec.command!r} is not a dtrl training command "
                        f"(choose from {', '.join(TRIAL_COMMANDS)})")
    for forbidden in ("--out", "--seed", "--task", "--algo", "--resume", "--force"):
        given = [*spec.args, *(a for extra in spec.algo_args.values() for a in extra)]
        if any(a == forbidden or a.startswith(forbidden + "=") for a in given):
            raise DtrlError(f"{where}: args must not set {forbidden} (the sweep sets it per trial)")
    from dtrl.tasks import get_task

    for task in spec.tasks:
        get_task(task)  # unknown task -> one-line error now, not in every trial


def _multi_study_spec(raw: dict, where: str) -> SweepSpec:
    """A spec with ``[studies.<name>]`` tables: each study is checked as a spec of its own, made of
    the shared keys with the study's on top, and runs into out_root/<name>."""
    studies = raw["studies"]
    if not isinstance(studies, dict) or not studies or not all(isinstance(v, dict) for v in studies.values()):
        raise DtrlError(f"{where}: 'studies' must be a table of study name -> table (e.g. [studies.fig1a])")
    shared = {key: value for key, value in raw.items() if key != "studies"}
    for place, table in (("", shared), *((f"studies.{name}.", study) for name, study in studies.items())):
        if not isinstance(table.get("algo_args", {}), dict):
            raise DtrlError(f"{where}: '{place}algo_args' must be a table of algo -> arguments")
    out_root = shared.get("out_root", SweepSpec.out_root)
    parsed = {}
    for name, study in studies.items():
        if name != _dir_safe(name):
            raise DtrlError(f"{where}: study name {name!r} is not a folder name (letters, digits, . _ = + -)")
        not_own = sorted(set(study) - set(STUDY_KEYS))
        if not_own:
            raise DtrlError(f"{where}: studies.{name} sets {', '.join(not_own)}, which only the whole sweep sets "
                            f"(a study sets {', '.join(STUDY_KEYS)})")
        merged = {**shared, **study, "out_root": str(Path(out_root) / name)}
        algos = merged.get("algos", [])
        algos = [algos] if isinstance(algos, str) else algos
        # the shared algo_args of algos this study does not run are not its business
        merged["algo_args"] = {**{algo: args for algo, args in shared.get("algo_args", {}).items() if algo in algos},
                               **study.get("algo_args", {})}
        parsed[name] = spec_from_dict(merged, f"{where}: studies.{name}")
    first = next(iter(parsed.values()))
    unused = sorted(set(shared.get("algo_args", {})) - {a for spec in parsed.values() for a in spec.algos})
    if unused:
        raise DtrlError(f"{where}: algo_args for {', '.join(unused)}, which no study runs")
    return SweepSpec(tasks=sorted({t for spec in parsed.values() for t in spec.tasks}), command=first.command,
                     algos=sorted({a for spec in parsed.values() for a in spec.algos}), out_root=out_root,
                     resources=first.resources, program=first.program, studies=parsed)


# ---------------------------------------------------------------------------------------------
# trials


@dataclass
class Trial:
    task: str
    algo: str
    """--algo value (finetune) or the run-directory label"""
    seed: int
    overrides: dict[str, Any]
    run_dir: str
    """absolute path of the run directory"""
    argv: list[str]
    """the dtrl arguments, without --resume (added when the trial resumes)"""
    study: str = ""
    """its study's name in a multi-study spec (its folder under out_root)"""

    @property
    def name(self) -> str:
        """task/algo/leaf, after the study's name in a multi-study spec (two studies may share a leaf)"""
        levels = 4 if self.study else 3
        return os.path.relpath(self.run_dir, Path(self.run_dir).parents[levels - 1])

    @property
    def log_file(self) -> str:
        return self.run_dir + ".log"


def _dir_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._=+-" else "_" for c in text)


def _as_argv(args, where: str) -> list[str]:
    """Command-line arguments from a list, a shell string, or a table of option -> value (true: a
    bare flag, false: left out)."""
    if isinstance(args, dict):  # {init = "..."} -> ["--init", "..."]
        flat: list[str] = []
        for name, value in args.items():
            flag = f"--{name.replace('_', '-')}" if not name.startswith("-") else name
            flat += [flag] if value is True else [] if value is False else [flag, str(value)]
        args = flat
    elif isinstance(args, str):
        args = shlex.split(args)
    if not isinstance(args, list):
        raise DtrlError(f"{where} must be a list of strings or a table of option -> value")
    return [str(a) for a in args]


def expand_trials(spec: SweepSpec, out_root: Path) -> list[Trial]:
    """Every cell of tasks x algos x seeds x overrides grid, in that nesting order (study by study)."""
    from dtrl.tasks import get_task

    if spec.studies:
        trials = [replace(trial, study=name) for name, study in spec.studies.items()
                  for trial in expand_trials(study, out_root / name)]
        if len({t.run_dir for t in trials}) != len(trials):
            raise DtrlError("sweep spec: two studies' trials map to the same run directory")
        return trials

    names = list(spec.overrides)
    grid = [dict(zip(names, combo)) for combo in itertools.product(*(spec.overrides[n] for n in names))]
    algos = spec.algos or [spec.command.split()[0]]
    trials = []
    for task_name, algo, seed, overrides in itertools.product(spec.tasks, algos, spec.seeds, grid):
        task = get_task(task_name).name
        leaf = f"seed{seed}" + "".join(f"-{_dir_safe(k)}={_dir_safe(value_text(v))}" for k, v in overrides.items())
        run_dir = out_root / _dir_safe(task) / _dir_safe(algo) / leaf
        fill = {"task": task, "algo": algo, "seed": seed, "out_root": str(out_root)}
        try:
            fixed = [arg.format(**fill) for arg in [*spec.args, *spec.algo_args.get(algo, [])]]
        except (KeyError, IndexError, ValueError) as exc:
            raise DtrlError(f"sweep spec args: bad placeholder {exc} (use {{task}}, {{algo}}, {{seed}}, "
                            "{out_root}; double literal braces)") from None
        argv = spec.command.split()
        if spec.command == "finetune":
            argv += ["--algo", algo]
        argv += ["--task", task, "--seed", str(seed), "--out", str(run_dir), *fixed]
        for name, value in overrides.items():
            argv += option_args(name, value)
        trials.append(Trial(task=task, algo=algo, seed=seed, overrides=overrides, run_dir=str(run_dir), argv=argv))
    dirs = [t.run_dir for t in trials]
    if len(set(dirs)) != len(dirs):
        raise DtrlError("sweep spec: two trials map to the same run directory "
                        "(duplicate tasks, algos, seeds or values)")
    return trials


def select_trials(trials: list[Trial], only: tuple[str, ...] | list[str]) -> list[Trial]:
    """The trials that match every key of ``only`` (KEY=VALUE; values of a repeated key are
    alternatives). Numbers match by value (1e-3 = 0.001), booleans as typed (true / false)."""
    wanted = key_values(only, "--only", "task, algo, seed or an override's name")
    if not wanted:
        return trials

    def fields(trial: Trial) -> dict[str, Any]:
        study = {"study": trial.study} if trial.study else {}
        return {"task": trial.task, "algo": trial.algo, "seed": trial.seed, **study, **trial.overrides}

    known = set().union(*(fields(t) for t in trials)) if trials else set()
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise DtrlError(f"--only {', '.join(unknown)}: not a key of this sweep's trials "
                        f"({', '.join(sorted(known))})")

    # a trial without the key (another study's switch) does not match it
    chosen = [t for t in trials if all(key in fields(t) and any(value_matches(fields(t)[key], text) for text in texts)
                                       for key, texts in wanted.items())]
    if not chosen:
        raise DtrlError(f"--only {' '.join(only)}: no trial of this sweep matches")
    return chosen


# settings a continued trial may change: how long it runs, and where (not what it learns)
_RESUMABLE_CHANGES = ("algo", "iterations", "steps", "time_limit_s", "threads", "env_threads", "device", "track",
                      "wandb_project", "wandb_entity", "checkpoint_every")


def validate_trials(trials: list[Trial], statuses: dict[str, str] | None = None) -> None:
    """Build every trial's config as its command would (preset, overrides, validation) before Ray
    starts: a bad value is one line here, not a traceback in each trial's log. A trial to resume
    must still get the settings its run was started with: a spec or a preset that changed between
    sessions would otherwise switch a study's settings halfway through its runs."""
    from dtrl.algos import finetune, pretrain

    parsers = {"finetune": finetune.parse, "pretrain": pretrain.parse}
    for trial in trials:
        parse = parsers.get(trial.argv[0])
        if parse is None:
            continue
        try:
            config = parse(trial.argv[1:])
        except DtrlError as exc:
            raise DtrlError(f"trial {trial.run_dir}: {exc}") from None
        except SystemExit:  # tyro printed what it could not parse
            raise DtrlError(f"trial {trial.run_dir}: its arguments do not parse (see above)") from None
        if statuses and statuses.get(trial.run_dir) == "resume":
            stored, now = read_config(trial.run_dir), to_dict(config)
            # an option the run's dtrl did not have yet (or no longer has) is not a changed setting
            changed = {key: change for key, change in changed_settings(stored, now, ignore=_RESUMABLE_CHANGES).items()
                       if key in stored and key in now}
            if changed:
                shown = ", ".join(f"{k} {v['was']!r} -> {v['now']!r}" for k, v in changed.items())
                raise DtrlError(f"trial {trial.run_dir}: its run was started with other settings than the spec now "
                                f"gives ({shown}); pin the run's values in the spec's args to continue it, or "
                                "delete its run directory to start it over")


def finished_in_reports(paths: tuple[str, ...] | list[str]) -> set[Path]:
    """Run directories (resolved) that these ``dtrl report`` evaluations.csv files record as finished.
    Their ``run`` column is relative to the directory the report was made in: run both from the same
    place (the repository root)."""
    done: set[Path] = set()
    for path in paths:
        try:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as exc:
            raise DtrlError(f"--done {path}: {exc.strerror}") from None
        if rows and not {"run", "finished"} <= set(rows[0]):
            raise DtrlError(f"--done {path} is not an evaluations.csv of dtrl report (no run and finished columns)")
        done.update(Path(row["run"]).expanduser().resolve() for row in rows if row["finished"] == "1")
    return done


def trial_status(run_dir: str | os.PathLike) -> str:
    """'finished' (final.json), 'resume' (has a checkpoint), 'restart' (started, no checkpoint), 'new'."""
    if is_finished(run_dir):
        return "finished"
    if has_checkpoint(run_dir):
        return "resume"
    if os.path.exists(run_dir):
        return "restart"
    return "new"


def _kill_with_parent() -> None:
    # Runs in the child between fork and exec (Linux): if the Ray worker running this trial dies
    # (sweep cancelled, node lost), the kernel sends the dtrl process SIGTERM instead of orphaning it.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def run_trial(trial: dict) -> dict:
    """Run one trial to completion in this process (a Ray worker or, for tests, anywhere).

    Decides at start time what to do with the run directory (skip / resume / restart), runs the
    dtrl command with its output appended to the trial's log file, and returns a small summary.
    Raises RuntimeError (with the log's last lines) when the command fails.
    """
    run_dir = trial["run_dir"]
    status = trial_status(run_dir)
    if status == "finished":
        return {"status": "skipped", "returncode": 0, **_final_summary(run_dir)}
    argv = list(trial["argv"])
    if status == "resume":
        argv.append("--resume")
    elif status == "restart":
        # Our own trial from an earlier attempt that died before its first checkpoint: nothing
        # in it can be resumed. Only a run directory (config.json inside) is removed.
        if not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
            raise RuntimeError(f"{run_dir} exists but is not a dtrl run directory; move it away and retry")
        remove_run_dir(run_dir)
    program = list(trial.get("program") or [sys.executable, "-m", "dtrl"])
    threads = str(max(1, int(trial.get("cpus", 1))))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    env.setdefault("MPLBACKEND", "Agg")
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    with open(trial["log_file"], "a", encoding="utf-8") as log:
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        log.write(f"\n=== {stamp} {status}: {shlex.join(program + argv)}\n")
        log.flush()
        # Relative paths in args mean what they meant where `dtrl sweep` was started (on a cluster
        # that folder must exist on every node, e.g. a shared filesystem; else use absolute paths).
        cwd = trial["cwd"] if os.path.isdir(trial["cwd"]) else None
        process = subprocess.Popen(program + argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL,
                                   preexec_fn=_kill_with_parent if sys.platform.startswith("linux") else None)
        try:
            returncode = process.wait()
        except BaseException:
            # Tune stopping the trial (or Ctrl-C): stop the run too; its checkpoint makes it resumable.
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    if returncode != 0:
        tail = _log_tail(trial["log_file"])
        raise RuntimeError(f"{shlex.join(['dtrl', *argv])} exited with {returncode}; log {trial['log_file']}:\n{tail}")
    return {"status": "resumed" if status == "resume" else "ran", "returncode": 0, **_final_summary(run_dir)}


def _final_summary(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "final.json")) as handle:
            final = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def _tune_trial(config: dict) -> None:
    """The Ray Tune function trainable: one trial = one dtrl run."""
    from ray import tune

    tune.report(run_trial(config["trial"]))


# ---------------------------------------------------------------------------------------------
# command


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise DtrlError(INSTALL_HINT) from None
    return ray, tune


def run_sweep(config: SweepConfig) -> int:
    spec = load_spec(config.spec)
    if config.local and config.address:
        raise DtrlError("--local and --address contradict each other (a private local Ray, or a running cluster?)")
    if config.max_concurrent < 0:
        raise DtrlError(f"--max-concurrent must be >= 0, got {config.max_concurrent}")
    out_root = Path(spec.out_root).expanduser().absolute()
    every_trial = expand_trials(spec, out_root)
    trials = select_trials(every_trial, config.only)
    statuses = {t.run_dir: trial_status(t.run_dir) for t in trials}
    validate_trials(trials, statuses)
    reported = finished_in_reports(config.done)
    for trial in trials:
        if statuses[trial.run_dir] != "finished" and Path(trial.run_dir).resolve() in reported:
            statuses[trial.run_dir] = "reported"
    started = [t for t in trials if statuses[t.run_dir] not in ("new", "reported")]
    if started and not config.resume and not config.dry_run:
        raise DtrlError(f"{out_root} already holds {len(started)} of this sweep's runs; use --resume to continue it "
                        "(finished trials are skipped, interrupted ones resumed)")
    todo = [t for t in trials if statuses[t.run_dir] not in ("finished", "reported")]
    counts = {s: sum(1 for v in statuses.values() if v == s)
              for s in ("new", "resume", "restart", "finished", "reported")}
    selected = f" (of {len(every_trial)}, by --only)" if len(trials) < len(every_trial) else ""
    print(f"sweep {config.spec}: {len(trials)} trials{selected} -> {out_root}  "
          f"({counts['new']} new, {counts['resume']} to resume, {counts['restart']} to restart, "
          f"{counts['finished']} finished and skipped"
          + (f", {counts['reported']} finished in --done reports and skipped" if config.done else "") + ")")
    if config.dry_run:
        for trial in trials:
            extra = " --resume" if statuses[trial.run_dir] == "resume" else ""
            print(f"  [{statuses[trial.run_dir]:>8}] dtrl {shlex.join(trial.argv)}{extra}")
        return 0
    if not todo:
        print("nothing to run")
        return 0

    ray, tune = _import_ray()
    out_root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_root / "sweep.json", {"spec": asdict(spec), "trials": len(trials),
                                                "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    cwd = os.getcwd()
    payloads = [{**asdict(t), "log_file": t.log_file, "cwd": cwd, "cpus": spec.resources.cpus,
                 "program": spec.program} for t in todo]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home (clusters are often offline)
    if config.address:
        try:
            ray.init(address=config.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DtrlError(f"cannot connect to the Ray cluster at {config.address!r}: {first_line} "
                            "(is `ray start --head` running there? see docs/sweeps.md)") from None
    else:
        num_cpus = config.num_cpus or os.cpu_count() or 1
        if spec.resources.cpus > num_cpus:
            raise DtrlError(f"a trial asks for {spec.resources.cpus} CPUs but local Ray has {num_cpus} (--num-cpus)")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        names = {p["run_dir"]: Trial(**{k: p[k] for k in Trial.__dataclass_fields__}).name for p in payloads}
        tuner = tune.Tuner(
            tune.with_resources(_tune_trial, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}),
            param_space={"trial": tune.grid_search(payloads)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=config.max_concurrent or None,
                trial_name_creator=lambda t: names[t.config["trial"]["run_dir"]],
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name="tune-" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S"),
                storage_path=str(out_root / ".tune"),
                verbose=0,  # Tune's tables repeat every trial's config; we print one line per event
                callbacks=[_progress_callback(tune, names)],
            ),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    return _print_summary(results, len(trials) - len(todo), str(config.spec))


def _progress_callback(tune, names: dict[str, str]):
    class Progress(tune.Callback):
        """One line when a trial starts, finishes or fails (the trial's own output is in its log)."""

        def _say(self, what: str, trial) -> None:
            stamp = _dt.datetime.now().strftime("%H:%M:%S")
            print(f"[{stamp}] {what:<8} {names[trial.config['trial']['run_dir']]}", flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._say("started", trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._say("finished", trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._say("FAILED", trial)

    return Progress()


def _print_summary(results, skipped: int, spec_path: str) -> int:
    failed, stopped, lines = [], [], []
    not_started = 0
    for result in results:
        if not result.config:  # the sweep was stopped (Ctrl-C) before Ray started this trial
            not_started += 1
            continue
        trial = result.config["trial"]
        name = os.path.relpath(trial["run_dir"], os.getcwd())
        if result.error is not None:
            failed.append(trial)
            lines.append(f"  FAILED  {name}   (log: {trial['log_file']})")
        elif not is_finished(trial["run_dir"]):  # the sweep was interrupted before this trial ended
            stopped.append(trial)
            lines.append(f"  stopped {name}")
        else:
            metrics = result.metrics or {}
            score = metrics.get("eval_normalized_mean", metrics.get("eval_return_mean"))
            score_text = f"  score {score:.2f}" if isinstance(score, (int, float)) else ""
            lines.append(f"  {metrics.get('status', 'done'):<7} {name}{score_text}")
    print("\n".join(sorted(lines)))
    done = len(results) - len(failed) - len(stopped) - not_started
    print(f"{done} trial(s) done, {len(failed)} failed, {len(stopped)} stopped, "
          + (f"{not_started} not started, " if not_started else "") + f"{skipped} already finished and skipped")
    if failed or stopped or not_started:
        print(f"continue with: dtrl sweep {spec_path} --resume  (finished runs are skipped, stopped ones resume "
              "from their checkpoints, failed ones are retried; logs say why they failed)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    config = tyro.cli(SweepConfig, args=list(argv), prog="dtrl sweep",
                      description="Run a grid of dtrl runs (tasks x algos x seeds x overrides) on Ray Tune; "
                                  "see docs/sweeps.md.")
    return run_sweep(config)
