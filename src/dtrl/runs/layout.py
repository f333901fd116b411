"""The files of a run directory: their names, writing JSON atomically, and reading a run back.

``dtrl report`` and ``dtrl sweep`` read runs through ``read_config``, ``read_metrics``,
``is_finished``, ``has_checkpoint`` and ``iter_run_dirs``; nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.errors import DtrlError
from dtrl.files import atomic_write_text

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.pt"
POLICY_DIR = "policy"
BEST_POLICY_DIR = "best_policy"
LOCK_FILE = ".lock"


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (non-finite floats become null)."""
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def _jsonable(value: Any) -> Any:
    """Plain-JSON version of a metrics/config value: numpy/torch scalars unwrapped, NaN/Inf -> None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, type(None), str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and hasattr(value, "numel") and value.numel() == 1:  # a torch scalar tensor
        return _jsonable(value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def read_config(path: str | os.PathLike) -> dict:
    """The ``config.json`` of a run directory; one-line DtrlError when missing or unreadable."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise DtrlError(f"{path} is not a run directory: {CONFIG_FILE} is missing")
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DtrlError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise DtrlError(f"cannot read {file}: expected a JSON object")
    return data


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All lines of a run's ``metrics.jsonl`` as dicts (null stays None).

    A last line without its newline is a write torn by a crash and is ignored; any other
    unparsable line is a one-line DtrlError naming the file and line.
    """
    file = Path(path) / METRICS_FILE
    if not file.is_file():
        raise DtrlError(f"{path} has no {METRICS_FILE}")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DtrlError(f"cannot read {file}: {exc}") from None
    return _parse_metrics(text, file)


def _parse_metrics(text: str, file: Path) -> list[dict]:
    lines = text.split("\n")
    torn_tail = not text.endswith("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail and number == len(lines):
                break
            raise DtrlError(f"{file}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DtrlError(f"{file}:{number}: expected a JSON object per line")
        rows.append(row)
    return rows


def is_finished(path: str | os.PathLike) -> bool:
    """True when the run in ``path`` completed (``mark_finished`` wrote ``final.json``)."""
    return (Path(path) / FINAL_FILE).is_file()


def has_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CHECKPOINT_DIR / STATE_FILE).is_file()


def iter_run_dirs(root: str | os.PathLike) -> Iterator[Path]:
    """Every run directory (a folder with config.json) at or below ``root``, sorted."""
    root = Path(root)
    if (root / CONFIG_FILE).is_file():
        yield root
        return
    for config in sorted(root.rglob(CONFIG_FILE)):
        if ".bak-" not in str(config.parent.name):
            yield config.parent
