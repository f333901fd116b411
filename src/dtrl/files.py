"""Crash-safe file writes: the one way dtrl replaces a file or a folder.

A write goes to a hidden temp file (or folder) next to the target, is fsynced, then renamed over
the target, so a crash, a full disk or ``kill -9`` at any moment leaves either the old content or
the new one, never a half-written file. The temp name is unique per process and write, and it is
created with ``open(..., "x")`` so it gets the usual umask permissions (``mkstemp`` would make it
0600).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dtrl.errors import DtrlError

# what a user fixes outside dtrl (free space, permissions, a read-only mount): a one-line error
USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import: os.umask can only be read by setting it, which races with threads that create
# files meanwhile (TensorBoard's and W&B's writers)
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def _disk_nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _refuse(path: Path, exc: BaseException) -> None:
    """Raise a one-line DtrlError for a write that failed for a reason the user fixes; return otherwise."""
    if isinstance(exc, OSError) and exc.errno in USER_FIXABLE_ERRNOS:
        raise DtrlError(f"cannot write {path}: {exc.strerror}") from None
    if isinstance(exc, Exception) and not isinstance(exc, DtrlError) and (
            "os error 28" in str(exc) or _disk_nearly_full(path.parent)):
        # writers in other languages say it their own way: torch "[enforce fail ...] unexpected pos",
        # safetensors "I/O error: No space left on device (os error 28)", HDF5 its error stack
        raise DtrlError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}") from None


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (skipped where a folder cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a binary temp file next to ``path``, fsync it, rename it over ``path``.
    Whatever goes wrong before the rename (disk full, a NaN check, KeyboardInterrupt), ``path`` keeps
    its old content and the temp file is removed."""

    def write_file(temp: str) -> None:
        raw = _RecordingFile(temp, "w")
        with io.BufferedWriter(raw) as handle:  # what open(temp, "wb") returns, with the raw writes watched
            try:
                write(handle)
            except Exception as exc:
                # torch.save turns the OSError of a full disk into "[enforce fail ...] unexpected pos"
                if raw.error is not None and raw.error is not exc:
                    raise raw.error from None
                raise

    atomic_write_with(path, write_file)


class _RecordingFile(io.FileIO):
    """A raw file that keeps the OSError its ``write`` raised, for writers (torch.save) that replace
    it with an error of their own."""

    error: OSError | None = None

    def write(self, data) -> int | None:
        try:
            return super().write(data)
        except OSError as exc:
            self.error = exc
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_with(path: str | os.PathLike, write_file: Callable[[str], object]) -> None:
    """For writers that want a file name rather than a handle (h5py, matplotlib, safetensors):
    ``write_file(temp_path)`` fills a temp file next to ``path`` that then replaces ``path``."""
    path = Path(path)
    temp = _temp_name(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "xb"):  # claims the name with umask permissions; the writer reopens it
            pass
        write_file(str(temp))
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        _refuse(path, exc)
        raise
    fsync_directory(path.parent)


def atomic_replace_directory(directory: str | os.PathLike, fill: Callable[[Path], object]) -> Path:
    """Replace the folder ``directory`` by one that ``fill(staging)`` writes: its files are fsynced,
    the old folder is moved aside, the new one renamed into place, the old one deleted. A crash
    leaves the old folder or the new one in place (and at worst a hidden staging folder beside it)."""
    directory = Path(directory)
    staging = _temp_name(directory, "tmp")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        fill(staging)
        mode = 0o666 & ~_umask()
        for file in staging.iterdir():
            os.chmod(file, mode)  # foreign writers (safetensors) create private 0600 files
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if directory.exists():
            retired = _temp_name(directory, "old")
            os.rename(directory, retired)
            try:
                os.rename(staging, directory)
            except BaseException:
                os.rename(retired, directory)  # the old folder back in place
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, directory)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _refuse(directory, exc)
        raise
    fsync_directory(directory.parent)
    return directory
