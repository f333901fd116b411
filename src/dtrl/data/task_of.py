"""Which dtrl task a dataset names, so that commands taking ``--dataset`` follow the data.

A dataset names a task when
- it is a dtrl-built HDF5 file: its ``dtrl_task`` attribute (files built before that attribute
  existed: their ``task`` attribute, when the file's ``level`` is that task's level, or the one
  registry task of that env at that level);
- it is a Minari dataset with dtrl's task in its metadata (``dtrl data export`` stores it), or whose id
  is a registry task's ``minari_id``, or whose id names a level (``me/hopper/random-v0``) that exactly
  one registry task of its recorded env (``env_spec``) has.

An env id alone does not name a level, so a Minari dataset with only an env spec, a D4RL file with no
attributes, or a locally built random file of a load-only family (``door-random``) names no task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtrl.errors import DtrlError

TASK_ATTR = "dtrl_task"
"""the HDF5 attribute / Minari metadata key holding the dtrl task a dataset belongs to"""


def build_task_name(task, level: str | None) -> str | None:
    """The dtrl task that data of ``task``'s env at ``level`` is (what ``dtrl data build`` records):
    ``task`` itself when its level is ``level`` (or it is a generic env id), else the one registry task
    of that env at that level; None when there is none (``door-random``)."""
    from dtrl.tasks import TASKS

    registered = TASKS.get(task.name, task)  # the builder's task may carry the level it builds
    if task.domain == "generic" or not level or registered.level == level:
        return task.name
    same = [t.name for t in TASKS.values() if t.env_id == task.env_id and t.family == task.family and t.level == level]
    return same[0] if len(same) == 1 else None


def _known_task(name: str) -> Any | None:
    from dtrl.tasks import get_task

    try:
        return get_task(name)
    except DtrlError:
        return None


def task_from_attrs(attrs: dict[str, Any]) -> str | None:
    """The task an HDF5 file's root attributes name (see the module docstring), or None."""
    if TASK_ATTR in attrs:
        named = str(attrs[TASK_ATTR] or "")
        return named if named and _known_task(named) is not None else None
    name = attrs.get("task")
    task = _known_task(str(name)) if name else None
    if task is None:
        return None
    return build_task_name(task, str(attrs["level"]) if attrs.get("level") else None)


def _level_of_id(dataset_id: str) -> str:
    """``mujoco/hopper/medium-v0`` -> ``medium``."""
    return dataset_id.rstrip("/").rsplit("/", 1)[-1].rsplit("-v", 1)[0]


def task_from_minari(source: str, metadata: dict[str, Any] | None) -> str | None:
    """The task a Minari dataset (id or directory, with its local ``metadata`` if any) names, or None."""
    from dtrl.data.dataset import _env_family, minari_env_id
    from dtrl.tasks import TASKS

    metadata = metadata or {}
    if metadata.get(TASK_ATTR) and _known_task(str(metadata[TASK_ATTR])) is not None:
        return str(metadata[TASK_ATTR])
    ids = [str(i) for i in (metadata.get("dataset_id"), source) if i]
    for task in TASKS.values():
        if task.minari_id and any(i == task.minari_id or i.rstrip("/").endswith(task.minari_id) for i in ids):
            return task.name
    env_id = minari_env_id(metadata)
    if env_id is None or not ids:
        return None
    level = _level_of_id(ids[0])
    same = [t.name for t in TASKS.values() if t.level == level and _env_family(t.env_id) == _env_family(env_id)]
    return same[0] if len(same) == 1 else None


def dataset_task(source: str) -> str | None:
    """The dtrl task ``source`` (an .hdf5 file, a Minari id or directory) names, or None. A missing or
    unreadable HDF5 file is a one-line DtrlError; a Minari dataset is read only from this machine."""
    from dtrl.data.dataset import HDF5_SUFFIXES, minari_metadata
    from dtrl.data.hdf5 import read_attrs

    path = Path(source)
    if source.endswith(HDF5_SUFFIXES) or path.is_file():
        return task_from_attrs(read_attrs(path))
    return task_from_minari(source, minari_metadata(source))


def same_task(a: str, b: str) -> bool:
    """``a`` and ``b`` are one task (``hopper-medium`` = ``hopper-medium-v2``)."""
    task_a, task_b = _known_task(a), _known_task(b)
    return a == b or (task_a is not None and task_b is not None and task_a.name == task_b.name)


def task_for_dataset(task: str | None, source: str, required: bool = True) -> str | None:
    """The task a command given ``--task task`` (None: not given) and ``--dataset source`` runs.

    A ``task`` that contradicts the task the dataset names is refused (one line); without ``task`` the
    dataset's own is taken, and when it names none either, a one-line error asks for ``--task``
    (``required=False``: None is returned instead, for a caller with another source of the task).
    With ``task``, a dataset that cannot be read here is left to the loader to report."""
    if task is None:
        named = dataset_task(source)
        if named is None and required:
            raise DtrlError(f"dataset {source} does not name its task: give --task (see dtrl tasks)")
        return named
    try:
        named = dataset_task(source)
    except DtrlError:
        return task
    if named is not None and not same_task(task, named):
        raise DtrlError(f"--task {task} contradicts the dataset's task {named} ({source})")
    return task


def task_from_dataset_option(task: str | None, argv: list[str]) -> str | None:
    """``parse_config``'s ``task_of`` for a command whose ``--dataset`` decides its task (pretrain):
    ``task_for_dataset`` on the ``--dataset`` in ``argv``; None (the config's own check of a missing
    dataset follows) when there is none."""
    from dtrl.config import option_value

    source = option_value(argv, "dataset")
    return task_for_dataset(task, source) if source else None
