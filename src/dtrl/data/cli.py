"""``dtrl data build`` and ``dtrl data info``."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.errors import DtrlError

DATA_COMMANDS = ("build", "info", "export")
"""the subcommands of ``dtrl data``"""

USAGE = """usage: dtrl data {build,info,export} ...

  build TASK-LEVEL --out FILE [--transitions N] [--seed S] [--force] ...
        make a D4RL-layout .hdf5 locally: random (uniform actions), medium (SAC trained to ~1/3 of
        expert, rolled out), medium-replay (that SAC run's replay buffer)
  info  FILE|MINARI_ID|MINARI_DIR [--task T]
        size, episodes, return mean ± std (raw and D4RL-normalised), dimensions, source attributes
  export FILE --minari-id NAMESPACE/NAME-v0 [--task T] [--store DIR]
        write a D4RL-layout file as a Minari dataset (env spec, reference scores, algorithm name)

dtrl data build --help / dtrl data info --help list every option."""


@dataclass
class InfoConfig:
    """``dtrl data info SOURCE``: describe a dataset the way the paper's Tables 2-4 do."""

    source: str = ""
    """a D4RL-layout .hdf5 file, a Minari dataset id (mujoco/hopper/medium-v0) or a Minari dataset directory"""
    task: str | None = None
    """task to validate against and normalise with (default: from the file's attributes or the Minari id)"""


@dataclass
class ExportConfig:
    """``dtrl data export FILE --minari-id NS/NAME-v0``: write a dataset as a Minari dataset."""

    source: str = ""
    """a D4RL-layout .hdf5 file (or a Minari dataset) to export"""
    minari_id: str = ""
    """the Minari dataset id to create, namespace/name-vN (required)"""
    task: str | None = None
    """the dataset's task (default: from the file's attributes)"""
    store: str | None = None
    """Minari datasets folder to write into (default: MINARI_DATASETS_PATH or Minari's own)"""


def parse_with_positional(config_cls: type, argv: list[str], positional: str, label: str, prog: str, description: str):
    """tyro over ``argv`` with the first bare word taken as the value of ``--{positional}``; a missing
    positional is a one-line error naming ``label``."""
    import tyro

    # The first bare word is the positional argument (TASK-LEVEL or SOURCE); tyro parses the rest.
    if argv and not argv[0].startswith("-"):
        argv = [f"--{positional}", argv[0], *argv[1:]]
    config = tyro.cli(config_cls, args=argv, prog=prog, description=description)
    if not getattr(config, positional):
        raise DtrlError(f"{prog}: missing {label} (see {prog} --help)")
    return config


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "build":
        from dtrl.data.builder import BuildConfig, build

        config = parse_with_positional(BuildConfig, rest, "dataset", "TASK-LEVEL", "dtrl data build",
                                       BuildConfig.__doc__)
        build(config)
        return 0
    if command == "export":
        config = parse_with_positional(ExportConfig, rest, "source", "FILE", "dtrl data export", ExportConfig.__doc__)
        print(export(config))
        return 0
    if command == "info":
        config = parse_with_positional(InfoConfig, rest, "source", "FILE|MINARI_ID|MINARI_DIR", "dtrl data info",
                                       InfoConfig.__doc__)
        print(describe(config.source, config.task))
        return 0
    import difflib

    near = difflib.get_close_matches(command, DATA_COMMANDS, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise DtrlError(f"unknown data command {command!r} ({hint}choose from {', '.join(DATA_COMMANDS)})")


def dataset_task(task_name: str | None, source: str, attrs: dict[str, Any] | None = None):
    """The task ``dtrl data info|export`` reads ``source`` as: ``--task`` (refused when it contradicts
    the task the dataset names, ``dtrl.data.task_of``), else the dataset's own task, else the env it
    was recorded in (a description or an export needs no level). Returns (task, the name of the task
    it is known to be, None when only its env is)."""
    from dtrl.data.task_of import task_for_dataset
    from dtrl.tasks import get_task

    named = task_for_dataset(task_name, source, required=False)
    if named is not None:
        task = get_task(named)
        return with_dataset_reference(task, source), task.name
    return with_dataset_reference(infer_task(source, attrs), source), None


def infer_task(source: str, attrs: dict[str, Any] | None = None):
    """The task a dataset belongs to: the file's ``task`` attribute, the registry task whose Minari id
    it is, or the env a Minari dataset says it was recorded in (its ``env_spec``)."""
    from dtrl.data.dataset import minari_env_id, minari_metadata
    from dtrl.tasks import TASKS, get_task

    if attrs and attrs.get("task"):
        return get_task(str(attrs["task"]))
    for task in TASKS.values():
        if task.minari_id and (source == task.minari_id or source.rstrip("/").endswith(task.minari_id)):
            return task
    env_id = minari_env_id(minari_metadata(source) or {})
    if env_id is not None:
        return get_task(env_id)
    raise DtrlError(f"cannot tell which task {source} belongs to: give --task (see dtrl tasks)")


def with_dataset_reference(task, source: str):
    """``task`` with the reference scores a Minari dataset carries (``ref_min_score`` /
    ``ref_max_score``), when the task has none of its own: what its normalised scores are relative to."""
    from dtrl.data.dataset import minari_metadata

    if task.has_reference:
        return task
    metadata = minari_metadata(source) or {}
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if low is None or high is None or not float(high) > float(low):
        return task
    return dataclasses.replace(task, ref_min_score=float(low), ref_max_score=float(high))


def export(config: ExportConfig) -> str:
    from dtrl.data.dataset import HDF5_SUFFIXES, load_dataset
    from dtrl.data.hdf5 import read_attrs, read_d4rl
    from dtrl.data.minari_export import export_minari

    if not config.minari_id:
        raise DtrlError("dtrl data export: --minari-id NAMESPACE/NAME-v0 is required")
    path = Path(config.source)
    hdf5 = config.source.endswith(HDF5_SUFFIXES) or path.is_file()
    attrs = read_attrs(path) if hdf5 else {}
    task, named = dataset_task(config.task, config.source, attrs)
    dataset = load_dataset(config.source, task)
    next_observations = read_d4rl(path).get("next_observations") if hdf5 else None
    exported = export_minari(dataset, task, config.minari_id, next_observations=next_observations,
                             algorithm_name=str(attrs.get("builder") or attrs.get("algorithm_name") or "unknown"),
                             store=config.store, dtrl_task=named)
    return (f"wrote Minari dataset {config.minari_id}: {exported.total_episodes} episodes, "
            f"{exported.total_steps} steps ({task.name}, {task.env_id}); load it with "
            f"minari.load_dataset({config.minari_id!r}) or --dataset {config.minari_id}")


def _size_bytes(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def describe(source: str, task_name: str | None = None) -> str:
    """A human-readable summary: size, episodes, lengths, return mean ± std raw and normalised, dims, attrs."""
    from dtrl.data.dataset import HDF5_SUFFIXES, load_dataset, looks_like_minari_id
    from dtrl.data.hdf5 import read_attrs

    path = Path(source)
    attrs = read_attrs(path) if source.endswith(HDF5_SUFFIXES) or path.is_file() else {}
    task, _ = dataset_task(task_name, source, attrs)
    dataset = load_dataset(source, task)
    if looks_like_minari_id(source):
        from minari.storage import get_dataset_path

        path = Path(get_dataset_path(source))
    size = _size_bytes(path)
    returns = dataset.returns()
    lengths = np.array([len(t) for t in dataset.trajectories])
    terminated = sum(t.terminated for t in dataset.trajectories)
    lines = [
        f"dataset      {source}" + (f"  ({size / 1e6:.1f} MB)" if size is not None else ""),
        f"task         {task.name} ({task.env_id})",
        f"transitions  {dataset.n_transitions}",
        f"episodes     {dataset.n_episodes}  (length mean {lengths.mean():.1f}, min {lengths.min()}, "
        f"max {lengths.max()}; {terminated} terminated, {dataset.n_episodes - terminated} timed out or cut)",
        f"dims         observation {dataset.obs_dim}, action {dataset.act_dim}",
        f"return       {returns.mean():.2f} ± {returns.std():.2f} raw "
        f"(min {returns.min():.2f}, max {returns.max():.2f})",
    ]
    if task.has_reference:
        normalized = np.array([task.normalize(r) for r in returns])
        lines.append(f"normalised   {normalized.mean():.1f} ± {normalized.std():.1f} (score: 100 * (R - "
                     f"{task.ref_min_score:g}) / ({task.ref_max_score:g} - {task.ref_min_score:g}))")
    else:
        lines.append(f"normalised   n/a ({task.name} has no D4RL reference scores; raw returns only)")
    for key, value in sorted(dataset.attrs.items()):
        lines.append(f"  {key:<18} {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
