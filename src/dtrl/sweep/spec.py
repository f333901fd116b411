"""A sweep file (TOML or JSON) read, validated and expanded into trials.

``load_spec`` / ``spec_from_dict`` turn a file into a :class:`SweepSpec` (every problem a one-line
DtrlError, multi-study specs included); ``expand_trials`` turns a spec into its grid of
:class:`Trial` s, each with its run directory and its ``dtrl`` command line. See docs/sweeps.md.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from dtrl.config import option_args, value_text
from dtrl.errors import DtrlError

# the dtrl commands a trial may run: the ones that train or evaluate (each writes its own run directory)
TRIAL_COMMANDS = ("data", "pretrain", "finetune", "eval", "demo")


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


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep file; every problem is a one-line DtrlError."""
    path = Path(path)
    if not path.is_file():
        raise DtrlError(f"sweep spec {path} " + ("is not a regular file" if path.exists() else "not found"))
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise DtrlError(f"sweep spec {path}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise DtrlError(f"sweep spec {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DtrlError(f"sweep spec {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
                        ) from None
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
