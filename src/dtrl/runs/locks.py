"""One writer per run directory: the lock file, refusing to touch a run another process writes,
cleaning up what an interrupted write left behind, and deleting a run directory."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from dtrl.errors import DtrlError
from dtrl.runs.layout import CHECKPOINT_DIR, LOCK_FILE


def _refuse_if_written(path: Path) -> None:
    """One-line DtrlError if another process holds ``path``'s lock (it is writing the run)."""
    if (path / LOCK_FILE).exists():
        held = _lock(path)
        if held is not None:
            held.close()


def _lock(path: Path):
    """An exclusive lock on ``path`` for this process (released when the returned file is closed or
    the process ends): a second writer of the same run directory gets a one-line error instead of
    interleaving checkpoints and metrics. Where ``fcntl`` does not exist (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(path / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DtrlError(f"{path} is being written by {holder}: wait for it to end, or give another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _remove_leftovers(path: Path) -> None:
    """Temp files and set-aside folders that a crashed write left behind (``dtrl.files``' hidden
    ``.NAME.<pid>.<id>.tmp`` / ``.old``): safe to delete once this process holds the run's lock."""
    leftovers = [p for folder in (path, path / CHECKPOINT_DIR) if folder.is_dir()
                 for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))]
    for leftover in leftovers:
        # ".policy.<pid>.<id>.old": a folder set aside by a swap that a crash interrupted before the
        # new one was in place; when the folder is missing, it is the only copy: put it back
        original = leftover.with_name(leftover.name[1:].rsplit(".", 3)[0])
        if leftover.name.endswith(".old") and leftover.is_dir() and not original.exists():
            leftover.rename(original)
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    if leftovers:
        print(f"dtrl: removed {len(leftovers)} leftover(s) of an interrupted write in {path}", file=sys.stderr)


def remove_run_dir(path: str | os.PathLike) -> None:
    """Delete a run directory (used by sweeps for their own trials that never reached a checkpoint).

    Refuses (one-line DtrlError) while another process writes it: a second sweep over the same
    out_root, started before the first reached its first checkpoint, must not pull a live run away."""
    path = Path(path)
    _refuse_if_written(path)
    shutil.rmtree(path)
