"""``RunDir``: a run directory opened for writing (created, or resumed from its last checkpoint).

See ``dtrl.runs`` for the layout and the crash-safety guarantees.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.errors import DtrlError, NothingToDo
from dtrl.files import USER_FIXABLE_ERRNOS, atomic_write
from dtrl.runs.checkpoints import _find_non_finite, _load_checkpoint
from dtrl.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    FINAL_FILE,
    METRICS_FILE,
    POLICY_DIR,
    STATE_FILE,
    _jsonable,
    atomic_write_json,
    read_config,
)
from dtrl.runs.locks import _lock, _refuse_if_written, _remove_leftovers
from dtrl.runs.resume import _asks_for_more, _check_same_run, _truncate_metrics, changed_settings
from dtrl.runs.rng import capture_rng_state, restore_rng_state
from dtrl.runs.tracking import _check_tracking, _start_wandb, log_to_wandb


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _run_info(config: dict) -> dict:
    import torch

    from dtrl import __version__

    device = str(config.get("device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = {
        "seed": config.get("seed"),
        "dtrl_version": __version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "device": device,
        "device_name": (torch.cuda.get_device_name(0) if device.startswith("cuda")
                        else platform.processor() or platform.machine()),
        "hostname": socket.gethostname(),
        "start_time": _now_iso(),
        "command": sys.argv,
    }
    return info


def _settings_now(path: Path, stored: dict, config: dict) -> tuple[dict, dict]:
    """Apply ``config`` to a resumed run's ``stored`` config: ({key: {"was", "now"}} of the changed settings,
    warned about on stderr; {key: value} of the options this dtrl has and the run's did not (e.g.
    --video-fps), which are not settings the user changed: the run did what their defaults do)."""
    changed = changed_settings(stored, config)
    added = {k: v["now"] for k, v in changed.items() if k not in stored}
    changed = {k: v for k, v in changed.items() if k in stored}
    if changed:
        print(f"dtrl: warning: resuming {path} with changed settings: {', '.join(changed)}", file=sys.stderr)
    stored.update({k: v["now"] for k, v in changed.items()})
    stored.update(added)
    return changed, added


class RunDir:
    """A run directory opened for writing: ``create`` a new one or ``resume`` an existing one."""

    def __init__(self, path: Path, config: dict, checkpoint_iteration: int | None, wall_time_offset: float,
                 lock=None):
        self.path = path
        self._lock = lock
        """the open lock file: one writer per run directory at a time"""
        self.config = config
        """the config.json contents (resolved config plus ``run_info``)"""
        self.checkpoint_iteration = checkpoint_iteration
        """iteration of the latest checkpoint (at open: the one resumed from; None for a fresh run)"""
        self.resumed_from = checkpoint_iteration
        """iteration of the checkpoint this run resumed from (None for a fresh run)"""
        self._wall_time_offset = wall_time_offset
        self._opened_at = time.monotonic()
        self._metrics_file = open(path / METRICS_FILE, "a", encoding="utf-8")
        self._writer = None  # TensorBoard writer, created on first log (importing it is slow)
        self._created_folder = False
        """``create`` made the folder (else it existed, empty): what a failed fresh run removes"""

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, config: dict, force: bool = False) -> RunDir:
        """Start a new run in ``path``.

        An existing non-empty directory is refused unless ``force``; with ``force`` it is moved
        aside to ``PATH.bak-<UTC timestamp>`` (never deleted), so nothing is lost by a mistyped
        ``--force``. An existing empty directory is used as is.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise DtrlError(f"run directory {path} exists and is a file")
        if path.is_dir() and any(path.iterdir()):
            if not force:
                raise DtrlError(
                    f"run directory {path} already exists (use --resume to continue it, or --force to start "
                    f"over; the old one is then kept as {path.name}.bak-<time>)"
                )
            _refuse_if_written(path)  # --force must not pull a run away from a process writing it
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
            backup = path.with_name(f"{path.name}.bak-{stamp}")
            suffix = 1
            while backup.exists():
                backup = path.with_name(f"{path.name}.bak-{stamp}-{suffix}")
                suffix += 1
            os.replace(path, backup)
            print(f"dtrl: moved the existing {path} to {backup}", file=sys.stderr)
        existed = path.is_dir()
        try:
            (path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DtrlError(f"cannot create run directory {path}: {exc.strerror}") from None
        lock = None
        try:
            _check_tracking(config)
            lock = _lock(path)
            full = _jsonable(dict(config))
            full["run_info"] = _run_info(config)
            if config.get("track"):
                full["run_info"]["wandb_id"] = uuid.uuid4().hex[:12]  # the same W&B run across resumes
            atomic_write_json(path / CONFIG_FILE, full)
            run = cls(path, full, checkpoint_iteration=None, wall_time_offset=0.0, lock=lock)
        except BaseException as exc:  # a full disk, a missing W&B: nothing of the new run is left behind
            _discard_new_run(path, keep_folder=existed)
            if lock is not None:
                lock.close()
            if isinstance(exc, OSError) and exc.errno in USER_FIXABLE_ERRNOS:
                raise DtrlError(f"cannot create run directory {path}: {exc.strerror}") from None
            raise
        run._created_folder = not existed
        return run

    @classmethod
    def resume(cls, path: str | os.PathLike, config: dict | None = None) -> RunDir:
        """Reopen the run in ``path`` to continue from its last checkpoint.

        Metrics lines logged after the checkpointed iteration are dropped (the resumed run logs
        them again). A finished run becomes unfinished (final.json is moved into the resume
        record in config.json) until ``mark_finished`` is called again. If ``config`` is given,
        fields that differ from the stored config (other than resume/force/out) are reported on
        stderr and recorded in ``run_info.resumes``.
        """
        path = Path(path)
        if not path.is_dir():
            raise DtrlError(f"cannot resume {path}: no such run directory")
        stored = read_config(path)
        checkpoint = path / CHECKPOINT_DIR / STATE_FILE
        if not checkpoint.is_file():
            raise DtrlError(f"cannot resume {path}: it has no checkpoint yet ({CHECKPOINT_DIR}/{STATE_FILE}); "
                            "start it again with --force")
        if config is not None:  # every refusal before anything is written
            _check_same_run(path, stored, config)
            if (path / FINAL_FILE).is_file() and not _asks_for_more(stored, config):
                summary = json.loads((path / FINAL_FILE).read_text())
                shown = ", ".join(f"{k} {v}" for k, v in summary.items() if k.startswith(("iteration", "eval_norm",
                                                                                            "eval_return_mean")))
                raise NothingToDo(f"{path} is finished ({shown}); nothing changed. Raise --iterations (or --steps) "
                                  "to continue it")
        _check_tracking(config or stored)
        lock = _lock(path)
        _remove_leftovers(path)
        iteration = int(_load_checkpoint(checkpoint)["iteration"])

        kept = _truncate_metrics(path, iteration)
        offset = 0.0
        for row in kept:
            if isinstance(row.get("wall_time_s"), (int, float)):
                offset = max(offset, float(row["wall_time_s"]))

        changed, added = _settings_now(path, stored, config) if config is not None else ({}, {})
        record = {"time": _now_iso(), "from_iteration": iteration, "hostname": socket.gethostname(), "changed": changed}
        if added:
            record["options_added_since"] = added
        final = path / FINAL_FILE
        if final.is_file():
            # Continuing a finished run (e.g. with more --iterations): it is unfinished until it
            # ends again. Its old summary is kept in the resume record, not silently lost.
            try:
                record["previous_final"] = json.loads(final.read_text())
            except (OSError, json.JSONDecodeError):
                record["previous_final"] = None
        stored.setdefault("run_info", {}).setdefault("resumes", []).append(record)
        atomic_write_json(path / CONFIG_FILE, stored)
        if final.is_file():
            final.unlink()
        return cls(path, stored, checkpoint_iteration=iteration, wall_time_offset=offset, lock=lock)

    @classmethod
    def open(cls, path: str | os.PathLike, config: dict, resume: bool = False, force: bool = False) -> RunDir:
        """``resume(path, config)`` when ``resume`` else ``create(path, config, force)``."""
        if resume and force:
            raise DtrlError("--resume and --force contradict each other (continue the run, or start it over?)")
        return cls.resume(path, config) if resume else cls.create(path, config, force=force)

    # -- logging ------------------------------------------------------------------------------

    def wall_time_s(self) -> float:
        """Seconds of training so far, counting the time before a resume (from the kept metrics)."""
        return self._wall_time_offset + (time.monotonic() - self._opened_at)

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.config.get("track"):
                self._wandb = _start_wandb(self.path, self.config)  # --track (runs/tracking.py)

            # purge_step hides events a crashed run wrote past its checkpoint, as metrics.jsonl does.
            purge = None if self.resumed_from is None else self.resumed_from + 1
            self._writer = SummaryWriter(log_dir=str(self.path), purge_step=purge, flush_secs=30)
        return self._writer

    def log(self, metrics: dict) -> None:
        """Append one line to metrics.jsonl (flushed and fsynced) and the numbers to TensorBoard."""
        if "iteration" not in metrics:
            raise ValueError("metrics must contain 'iteration' (the TensorBoard step and the resume key)")
        row = _jsonable(metrics)
        with _naming(self.path / METRICS_FILE):
            self._metrics_file.write(json.dumps(row, allow_nan=False) + "\n")
            self._metrics_file.flush()
            os.fsync(self._metrics_file.fileno())
        step = int(metrics["iteration"])
        with _naming(self.path / "events.out.tfevents.*"):
            writer = self._tensorboard()
            for key, value in row.items():
                if key == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                writer.add_scalar(key, value, global_step=step)
        if getattr(self, "_wandb", None) is not None:
            log_to_wandb(self._wandb, row)  # --track: the same row, one W&B history row per iteration

    # -- checkpoints --------------------------------------------------------------------------

    def save_state(self, state: dict, iteration: int) -> None:
        """Checkpoint ``state`` (anything torch.save takes) for ``iteration`` atomically.

        Every floating tensor / array inside (model and optimiser state dicts included) is
        checked first: a NaN or Inf raises DtrlError naming it, and the previous checkpoint stays.
        The global RNG states are saved with it and restored by ``load_state``.
        """
        import torch

        problem = _find_non_finite(state, "state")
        if problem:
            raise DtrlError(f"not checkpointing iteration {iteration}: {problem} (the training diverged; "
                            f"the checkpoint of iteration {self.checkpoint_iteration} is kept)")
        payload = {"format": 1, "iteration": int(iteration), "state": state, "rng": capture_rng_state(),
                   "saved_at": _now_iso()}
        self.check_free_space(_state_nbytes(payload))
        atomic_write(self.path / CHECKPOINT_DIR / STATE_FILE, lambda handle: torch.save(payload, handle))
        self.checkpoint_iteration = int(iteration)
        if self._writer is not None:
            with _naming(self.path / "events.out.tfevents.*"):
                self._writer.flush()

    def check_free_space(self, needed_bytes: int, target: Path | None = None) -> None:
        """One-line DtrlError, before anything is written, when the run's disk has less than
        ``needed_bytes`` free for ``target`` (default: the checkpoint): the last good files stay."""
        target = self.path / CHECKPOINT_DIR / STATE_FILE if target is None else target
        try:
            free = shutil.disk_usage(self.path).free
        except OSError:
            return
        if free < needed_bytes:
            raise DtrlError(f"cannot write {target}: No space left on device (it needs about "
                            f"{needed_bytes / 1e6:.1f} MB, {free / 1e6:.1f} MB are free)")

    def load_state(self, restore_rng: bool = True) -> dict | None:
        """The ``state`` dict of the last checkpoint (None if there is none).

        With ``restore_rng`` the global python/numpy/torch RNGs are put back to their state at
        save time; call it after building models and optimisers (which draw random numbers), right
        before the loop, so the resumed run draws the same numbers as the uninterrupted one.
        """
        checkpoint = self.path / CHECKPOINT_DIR / STATE_FILE
        if not checkpoint.is_file():
            return None
        payload = _load_checkpoint(checkpoint)
        if restore_rng and payload.get("rng") is not None:
            restore_rng_state(payload["rng"])
        return payload["state"]

    def save_policy(self, model, normalizer, task_name: str, extra: dict | None = None,
                    directory: str = POLICY_DIR) -> Path:
        """Write the policy to ``RUN/policy`` (or ``RUN/<directory>``; dtrl.models.checkpoint format,
        loadable by ``dtrl eval``)."""
        from dtrl.models.checkpoint import save_policy

        target = self.path / directory
        save_policy(target, model, normalizer, task_name, extra=extra)
        return target

    def record_start_info(self, **items: Any) -> None:
        """Record in ``run_info`` facts about what the run started from that are known only once it
        is loaded (the digest of the pretrained weights). A fresh run records them. A resumed run
        keeps what it recorded when it started: a value that differs now is told on stderr and kept
        in its resume record only; a value it never recorded (a run started before dtrl recorded it)
        stays unrecorded, since what the run started from is then unknown."""
        info = self.config.setdefault("run_info", {})
        if self.resumed_from is None:
            info.update(items)
        else:
            changed = {key: {"was": info[key], "now": value} for key, value in items.items()
                       if key in info and info[key] != value}
            if not changed:
                return
            print(f"dtrl: warning: {self.path}: {', '.join(changed)} differ from when the run started "
                  "(another pretrained model at the same path?); the run keeps the values it started with",
                  file=sys.stderr)
            for record in info.get("resumes", [])[-1:]:
                record.setdefault("changed", {}).update(changed)
        atomic_write_json(self.path / CONFIG_FILE, self.config)

    # -- finishing ----------------------------------------------------------------------------

    def mark_finished(self, summary: dict) -> None:
        """Write ``final.json`` (summary + finish time); ``is_finished`` and sweeps look for it."""
        data = dict(summary)
        data.setdefault("finished_at", _now_iso())
        data.setdefault("wall_time_s", self.wall_time_s())
        atomic_write_json(self.path / FINAL_FILE, data)
        self.close()

    def close(self) -> None:
        """Close the writers and release the lock, every step even when one fails. Called while an
        exception is on its way out (``finally``, ``__exit__``), a failure here never replaces that
        exception; a fresh run that fails before its first checkpoint is removed (nothing to resume,
        and it would block a rerun without --force)."""
        failing = sys.exc_info()[1] is not None
        errors: list[BaseException] = []
        for step in (self._close_writer, self._close_metrics, self._finish_wandb):
            try:
                step()
            except Exception as exc:  # noqa: PERF203 - each step runs whatever the others did
                errors.append(exc)
        if failing and self.resumed_from is None and self.checkpoint_iteration is None and self._lock is not None:
            _discard_new_run(self.path, keep_folder=not self._created_folder)
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None
        if errors and not failing:
            raise errors[0]

    def _close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with _naming(self.path / "events.out.tfevents.*"):
                writer.close()

    def _close_metrics(self) -> None:
        if not self._metrics_file.closed:
            with _naming(self.path / METRICS_FILE):
                self._metrics_file.close()

    def _finish_wandb(self) -> None:
        if getattr(self, "_wandb", None) is not None:
            wandb_run, self._wandb = self._wandb, None
            wandb_run.finish()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, checkpoint_iteration={self.checkpoint_iteration})"


@contextlib.contextmanager
def _naming(path: Path):
    """An OSError a user fixes (a full disk) while writing ``path``: one line naming the file."""
    try:
        yield
    except OSError as exc:
        if exc.errno in USER_FIXABLE_ERRNOS:
            raise DtrlError(f"cannot write {path}: {exc.strerror}") from None
        raise


def _state_nbytes(value: Any) -> int:
    """Bytes of the tensors and arrays inside a checkpoint payload: about what torch.save writes."""
    import torch

    if isinstance(value, torch.nn.Module):
        value = value.state_dict()
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(_state_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_state_nbytes(item) for item in value)
    return 0


def _discard_new_run(path: Path, keep_folder: bool) -> None:
    """Remove what a fresh run wrote (it has no checkpoint): the folder, or its contents when the
    folder existed (empty) before."""
    if not keep_folder:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
