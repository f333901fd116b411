"""Run directories: the one place a training command writes to, built so a crash loses little and
a resumed run continues exactly where the checkpoint left it.

Layout (``dtrl report`` reads only ``config.json`` and ``metrics.jsonl``)::

    RUN/
      config.json            resolved config + run_info (seed, versions, device, host, start time)
      metrics.jsonl          one JSON object per line: iteration, env_steps, grad_updates, wall_time_s, ...
      events.out.tfevents.*  the same numbers as TensorBoard scalars (tag = metric name)
      checkpoints/state.pt   the latest training state (torch.save; replaced atomically)
      policy/                the latest policy in the dtrl.models.checkpoint format
      final.json             written once the run finished (summary); its presence = finished

Typical use inside an algorithm loop::

    run = RunDir.open(cfg.out, to_dict(cfg), resume=cfg.resume, force=cfg.force)
    ... build models, optimisers, generators ...
    state = run.load_state()                    # None for a fresh run; restores global RNGs
    start = 0 if state is None else state["iteration"] + 1
    for iteration in range(start, cfg.iterations):
        ...
        run.log({"iteration": iteration, "env_steps": ..., "grad_updates": ..., "wall_time_s": run.wall_time_s()})
        if (iteration + 1) % cfg.checkpoint_every == 0:
            run.save_state({"iteration": iteration, "model": model.state_dict(), ...}, iteration)
    run.mark_finished({"eval_normalized_mean": ...})

Crash safety: every metrics line is fsynced; checkpoints and JSON files are written to a temp file
in the same directory then ``os.replace``d, so ``kill -9`` at any moment leaves either the old or
the new file, never a torn one. On resume, metrics lines past the checkpointed iteration are
dropped (they will be produced again) and TensorBoard purges the same steps.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import random
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.errors import DtrlError, NothingToDo
from dtrl.files import atomic_write, atomic_write_text

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.pt"
POLICY_DIR = "policy"
BEST_POLICY_DIR = "best_policy"
# Config keys that say how a run was started, not what it computes: they may differ on resume.
_LAUNCH_KEYS = ("resume", "force", "out")
LOCK_FILE = ".lock"


# ---------------------------------------------------------------------------------------------
# seeding and RNG state


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and every CUDA device); return the
    numpy Generator a training loop draws its own samples from (checkpointed by the loop)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices
    return np.random.default_rng(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU, CUDA if initialised), for a checkpoint."""
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    # Only when CUDA is in use: get_rng_state_all() would otherwise initialise a CUDA context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put the global RNGs back to a ``capture_rng_state()`` result; the next draws repeat exactly."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# atomic file helpers


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


# ---------------------------------------------------------------------------------------------
# checkpoint validation


def _find_non_finite(value: Any, where: str) -> str | None:
    """Name of the first floating tensor/array inside ``value`` holding NaN or Inf, else None.

    Python float scalars are not checked: ``best_return = -inf`` is a legitimate initial value.
    """
    import torch

    if isinstance(value, torch.nn.Module):
        value = value.state_dict()
    if isinstance(value, torch.Tensor):
        return _non_finite_tensor(value, where)
    if isinstance(value, np.ndarray):
        return _non_finite_array(value, where)
    if isinstance(value, dict):
        items = ((f"{where}[{key!r}]", item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for name, item in items:
        found = _find_non_finite(item, name)
        if found:
            return found
    return None


def _non_finite_tensor(value, where: str) -> str | None:
    import torch

    if (value.is_floating_point() or value.is_complex()) and value.numel():
        # Fast path: NaN/Inf anywhere make the sum non-finite. A finite tensor whose sum
        # overflows takes the exact element-wise check, so the answer is always exact.
        tensor = value.detach()
        if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            return f"{where} contains {kind}"
    return None


def _non_finite_array(value: np.ndarray, where: str) -> str | None:
    if np.issubdtype(value.dtype, np.inexact) and value.size and not np.isfinite(value).all():
        return f"{where} contains {'NaN' if np.isnan(value).any() else 'Inf'}"
    return None


# ---------------------------------------------------------------------------------------------
# reading run directories (used by report and sweep; no torch import)


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


# ---------------------------------------------------------------------------------------------
# the run directory


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
        try:
            (path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DtrlError(f"cannot create run directory {path}: {exc.strerror}") from None
        _check_tracking(config)
        lock = _lock(path)
        full = _jsonable(dict(config))
        full["run_info"] = _run_info(config)
        if config.get("track"):
            full["run_info"]["wandb_id"] = uuid.uuid4().hex[:12]  # the same W&B run across resumes
        atomic_write_json(path / CONFIG_FILE, full)
        return cls(path, full, checkpoint_iteration=None, wall_time_offset=0.0, lock=lock)

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

        changed = {}
        if config is not None:
            changed = changed_settings(stored, config)
            if changed:
                print(f"dtrl: warning: resuming {path} with changed settings: {', '.join(changed)}", file=sys.stderr)
                stored.update({k: v["now"] for k, v in changed.items()})
        record = {"time": _now_iso(), "from_iteration": iteration, "hostname": socket.gethostname(), "changed": changed}
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
                self._wandb = _start_wandb(self.path, self.config)  # mirrors the TensorBoard scalars

            # purge_step hides events a crashed run wrote past its checkpoint, as metrics.jsonl does.
            purge = None if self.resumed_from is None else self.resumed_from + 1
            self._writer = SummaryWriter(log_dir=str(self.path), purge_step=purge, flush_secs=30)
        return self._writer

    def log(self, metrics: dict) -> None:
        """Append one line to metrics.jsonl (flushed and fsynced) and the numbers to TensorBoard."""
        if "iteration" not in metrics:
            raise ValueError("metrics must contain 'iteration' (the TensorBoard step and the resume key)")
        row = _jsonable(metrics)
        self._metrics_file.write(json.dumps(row, allow_nan=False) + "\n")
        self._metrics_file.flush()
        os.fsync(self._metrics_file.fileno())
        step = int(metrics["iteration"])
        writer = self._tensorboard()
        for key, value in row.items():
            if key == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            writer.add_scalar(key, value, global_step=step)

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
        atomic_write(self.path / CHECKPOINT_DIR / STATE_FILE, lambda handle: torch.save(payload, handle))
        self.checkpoint_iteration = int(iteration)
        if self._writer is not None:
            self._writer.flush()

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
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._metrics_file.closed:
            self._metrics_file.close()
        if getattr(self, "_wandb", None) is not None:
            self._wandb.finish()
            self._wandb = None
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, checkpoint_iteration={self.checkpoint_iteration})"


def _load_checkpoint(file: Path) -> dict:
    import torch

    try:
        # weights_only=False: our own checkpoints hold numpy RNG states, generator states and
        # normaliser arrays. Only load run directories you trust (shared policies use safetensors).
        payload = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # a foreign or damaged file: the user must decide what to do with it
        raise DtrlError(f"cannot read checkpoint {file}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or "iteration" not in payload or "state" not in payload:
        raise DtrlError(f"{file} is not a dtrl checkpoint (no iteration/state)")
    return payload


def _check_tracking(config: dict) -> None:
    if config.get("track"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise DtrlError("--track logs to Weights & Biases, which is not installed: "
                            "pip install 'dtrl[wandb]'") from None


def _start_wandb(path: Path, config: dict):
    """A W&B run that mirrors the run's TensorBoard scalars (CleanRL's ``sync_tensorboard``), resumed
    under the same id after a crash; its files live in RUN/wandb."""
    import wandb

    run_info = config.get("run_info", {})
    return wandb.init(project=config.get("wandb_project") or "dtrl", entity=config.get("wandb_entity"),
                      id=run_info.get("wandb_id"), resume="allow", name=path.name, dir=str(path),
                      config={k: v for k, v in config.items() if k != "run_info"}, sync_tensorboard=True)


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


def changed_settings(stored: dict, config: dict, ignore: tuple[str, ...] = ()) -> dict:
    """{key: {"was", "now"}} for every setting of ``config`` that differs from the run's stored
    config.json, leaving out how the run was launched and the keys in ``ignore``."""
    new = _jsonable(dict(config))
    return {key: {"was": stored.get(key), "now": new.get(key)} for key in sorted(set(new) | set(stored))
            if key not in _LAUNCH_KEYS and key != "run_info" and key not in ignore
            and new.get(key) != stored.get(key)}


def _check_same_run(path: Path, stored: dict, config: dict) -> None:
    """``--resume`` continues the same experiment: another algorithm or task is refused."""
    for key, what in (("algo", "algorithm"), ("task", "task")):
        was, now = stored.get(key), config.get(key)
        if was is not None and now is not None and was != now:
            raise DtrlError(f"--resume: {path} holds a run of {what} {was}, not {now} (nothing was changed)")


def _asks_for_more(stored: dict, config: dict) -> bool:
    """Whether resuming a finished run with ``config`` extends it: more iterations or steps, or a longer
    (or no) --time-limit-s for a run that stopped at its limit."""
    more = any(isinstance(config.get(key), int) and isinstance(stored.get(key), int) and config[key] > stored[key]
               for key in ("iterations", "steps"))
    limit, was = config.get("time_limit_s"), stored.get("time_limit_s")
    numbers = isinstance(limit, (int, float)) and isinstance(was, (int, float))
    longer = numbers and was > 0 and (limit == 0 or limit > was)
    return more or longer


def _truncate_metrics(path: Path, iteration: int) -> list[dict]:
    """Keep only metrics lines with ``iteration <= iteration`` (rewritten atomically); return them."""
    file = path / METRICS_FILE
    if not file.is_file():
        return []
    text = file.read_text()
    rows = _parse_metrics(text, file)
    kept = [row for row in rows if not isinstance(row.get("iteration"), (int, float)) or row["iteration"] <= iteration]
    torn_tail = bool(text) and not text.endswith("\n")
    if len(kept) != len(rows) or torn_tail:
        text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in kept)
        atomic_write_text(file, text)
    return kept


def iter_run_dirs(root: str | os.PathLike) -> Iterator[Path]:
    """Every run directory (a folder with config.json) at or below ``root``, sorted."""
    root = Path(root)
    if (root / CONFIG_FILE).is_file():
        yield root
        return
    for config in sorted(root.rglob(CONFIG_FILE)):
        if ".bak-" not in str(config.parent.name):
            yield config.parent


def remove_run_dir(path: str | os.PathLike) -> None:
    """Delete a run directory (used by sweeps for their own trials that never reached a checkpoint).

    Refuses (one-line DtrlError) while another process writes it: a second sweep over the same
    out_root, started before the first reached its first checkpoint, must not pull a live run away."""
    path = Path(path)
    _refuse_if_written(path)
    shutil.rmtree(path)
