"""D4RL-layout HDF5 files: flat per-transition arrays at the root, so D4RL's own tools, d3rlpy and
plain h5py read what we write and we read what they wrote.

Layout (all arrays share the first dimension N = number of transitions):
  observations [N, O], actions [N, A], rewards [N], terminals [N] (bool), timeouts [N] (bool),
  optional next_observations [N, O] and infos/<name> [N, ...]. Root attributes describe the source.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.errors import DtrlError
from dtrl.files import atomic_write

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
"""keys every D4RL-layout file must hold"""


def _open_for_reading(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.exists():
        raise DtrlError(f"dataset file {path} does not exist")
    if path.is_dir():
        raise DtrlError(f"dataset file {path} is a directory, not an HDF5 file")
    if not path.is_file():  # a FIFO would block the reader forever, a device never ends
        raise DtrlError(f"dataset file {path} is not a regular file (a FIFO, socket or device?)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        # h5py reports truncated, corrupt or non-HDF5 files as OSError with a multi-line reason.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DtrlError(f"dataset file {path} is not a readable HDF5 file (corrupt or truncated?): {reason}") from None


def read_d4rl(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every dataset in a D4RL-layout file, keyed by its path (``infos/qpos`` for nested ones).

    Raises DtrlError for a missing, unreadable or truncated file, or one missing a required key.
    """
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with _open_for_reading(path) as f:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                arrays[name] = obj[()]

        try:
            f.visititems(visit)
        except (OSError, RuntimeError, KeyError) as exc:
            # A file cut short after its header opens fine but fails when the data is read.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DtrlError(f"dataset file {path} could not be read (corrupt or truncated?): {reason}") from None
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise DtrlError(f"dataset file {path} is missing the D4RL key(s) {', '.join(missing)}")
    return arrays


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of an HDF5 file (dtrl writes task, level, builder, seed, ...), as Python values."""
    with _open_for_reading(path) as f:
        return {key: _to_python(value) for key, value in f.attrs.items()}


def _to_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_d4rl(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
               attrs: Mapping[str, Any] | None = None) -> None:
    """Write a D4RL-layout file atomically (``dtrl.files``: a temp file next to it, then a rename), so a
    crash or error never leaves a half-written ``path``. Overwrites ``path`` if it exists (callers
    decide whether that is allowed)."""
    import h5py

    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise DtrlError(f"cannot write {path}: missing the D4RL key(s) {', '.join(missing)}")
    n = len(arrays["rewards"])
    for key, value in arrays.items():
        if len(value) != n:
            raise DtrlError(f"cannot write {path}: {key} has {len(value)} rows but rewards has {n}")

    # HDF5 builds the file in memory and Python writes the bytes: on a full disk HDF5's C library
    # would otherwise fail half-way, print error stacks from every open object and crash at exit
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        for key, value in arrays.items():
            value = np.asarray(value)
            if key in ("terminals", "timeouts"):
                value = value.astype(bool)
            # Big arrays get gzip chunks (D4RL files are ~10x smaller that way); tiny ones stay plain.
            compress = value.size > 4096 and value.dtype != object
            f.create_dataset(key, data=value, compression="gzip" if compress else None,
                             compression_opts=4 if compress else None)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value if value is not None else ""
    atomic_write(path, lambda handle: handle.write(image.getbuffer()))
