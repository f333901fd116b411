"""Trials chosen, checked and run: ``--only`` selection, validation before Ray starts, a trial's
status on disk (new / resume / restart / finished, or finished in ``--done`` reports), and
``run_trial``, which runs one trial's ``dtrl`` command as a subprocess (in a Ray worker or anywhere).

A subprocess (not an in-process call) because each run then owns its global RNGs, torch threads,
CUDA context and memory, and a crashing run cannot take the Ray worker down with it; it is killed
with its worker.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from dtrl.config import key_values, to_dict, value_matches
from dtrl.errors import DtrlError
from dtrl.runs import CONFIG_FILE, changed_settings, has_checkpoint, is_finished, read_config, remove_run_dir
from dtrl.sweep.spec import Trial


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
