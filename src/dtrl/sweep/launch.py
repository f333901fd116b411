"""The ``dtrl sweep`` command: its options, the run of the selected trials on Ray Tune (a private
local Ray or a running cluster), progress lines and the closing summary.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import tyro

from dtrl.errors import DtrlError
from dtrl.runs import atomic_write_json, is_finished
from dtrl.sweep.run import _tune_trial, finished_in_reports, select_trials, trial_status, validate_trials
from dtrl.sweep.spec import Trial, expand_trials, load_spec

INSTALL_HINT = "dtrl sweep needs Ray Tune: pip install 'ray[tune]'  (or: pip install 'dtrl[sweep]')"


@dataclass
class SweepConfig:
    """Run a sweep file on Ray Tune."""

    spec: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="SPEC")]]
    """sweep file (.toml or .json): tasks, algos, seeds, overrides, args, out_root, resources"""
    local: bool = False
    """start a private local Ray instance (the default when --address is not given)"""
    address: str | None = None
    """connect to a running Ray cluster instead: 'auto' (this node is part of it) or ray://HOST:10001"""
    num_cpus: int | None = None
    """--local: CPUs Ray may use (default: all of this machine's)"""
    max_concurrent: int = 0
    """most trials running at once (0: as many as the resources allow)"""
    resume: bool = False
    """continue a sweep whose out_root exists: skip finished trials, resume interrupted ones"""
    dry_run: bool = False
    """print each trial's command and status without running anything"""
    done: tuple[str, ...] = ()
    """evaluations.csv files of earlier `dtrl report`s: trials whose run is recorded there as finished
    are skipped (a study continued on another machine, where its run directories are gone)"""
    only: tuple[str, ...] = ()
    """KEY=VALUE ...: run only the trials that match (keys: task, algo, seed, study, or an override's name;
    a key given twice matches either value), e.g. `--only algo=ppo learning_rate=0.001`: one sweep split
    between cores or machines, each running its share into the same out_root"""


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise DtrlError(INSTALL_HINT) from None
    return ray, tune


def run_sweep(config: SweepConfig) -> int:
    spec = load_spec(config.spec)
    if config.local and config.address:
        raise DtrlError("--local and --address contradict each other (a private local Ray, or a running cluster?)")
    if config.max_concurrent < 0:
        raise DtrlError(f"--max-concurrent must be >= 0, got {config.max_concurrent}")
    out_root = Path(spec.out_root).expanduser().absolute()
    every_trial = expand_trials(spec, out_root)
    trials = select_trials(every_trial, config.only)
    statuses = {t.run_dir: trial_status(t.run_dir) for t in trials}
    validate_trials(trials, statuses)
    reported = finished_in_reports(config.done)
    for trial in trials:
        if statuses[trial.run_dir] != "finished" and Path(trial.run_dir).resolve() in reported:
            statuses[trial.run_dir] = "reported"
    started = [t for t in trials if statuses[t.run_dir] not in ("new", "reported")]
    if started and not config.resume and not config.dry_run:
        raise DtrlError(f"{out_root} already holds {len(started)} of this sweep's runs; use --resume to continue it "
                        "(finished trials are skipped, interrupted ones resumed)")
    todo = [t for t in trials if statuses[t.run_dir] not in ("finished", "reported")]
    counts = {s: sum(1 for v in statuses.values() if v == s)
              for s in ("new", "resume", "restart", "finished", "reported")}
    selected = f" (of {len(every_trial)}, by --only)" if len(trials) < len(every_trial) else ""
    print(f"sweep {config.spec}: {len(trials)} trials{selected} -> {out_root}  "
          f"({counts['new']} new, {counts['resume']} to resume, {counts['restart']} to restart, "
          f"{counts['finished']} finished and skipped"
          + (f", {counts['reported']} finished in --done reports and skipped" if config.done else "") + ")")
    if config.dry_run:
        for trial in trials:
            extra = " --resume" if statuses[trial.run_dir] == "resume" else ""
            print(f"  [{statuses[trial.run_dir]:>8}] dtrl {shlex.join(trial.argv)}{extra}")
        return 0
    if not todo:
        print("nothing to run")
        return 0

    ray, tune = _import_ray()
    out_root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_root / "sweep.json", {"spec": asdict(spec), "trials": len(trials),
                                                "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    cwd = os.getcwd()
    payloads = [{**asdict(t), "log_file": t.log_file, "cwd": cwd, "cpus": spec.resources.cpus,
                 "program": spec.program} for t in todo]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home (clusters are often offline)
    if config.address:
        try:
            ray.init(address=config.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DtrlError(f"cannot connect to the Ray cluster at {config.address!r}: {first_line} "
                            "(is `ray start --head` running there? see docs/sweeps.md)") from None
    else:
        num_cpus = config.num_cpus or os.cpu_count() or 1
        if spec.resources.cpus > num_cpus:
            raise DtrlError(f"a trial asks for {spec.resources.cpus} CPUs but local Ray has {num_cpus} (--num-cpus)")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        names = {p["run_dir"]: Trial(**{k: p[k] for k in Trial.__dataclass_fields__}).name for p in payloads}
        tuner = tune.Tuner(
            tune.with_resources(_tune_trial, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}),
            param_space={"trial": tune.grid_search(payloads)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=config.max_concurrent or None,
                trial_name_creator=lambda t: names[t.config["trial"]["run_dir"]],
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name="tune-" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S"),
                storage_path=str(out_root / ".tune"),
                verbose=0,  # Tune's tables repeat every trial's config; we print one line per event
                callbacks=[_progress_callback(tune, names)],
            ),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    return _print_summary(results, len(trials) - len(todo), str(config.spec))


def _progress_callback(tune, names: dict[str, str]):
    class Progress(tune.Callback):
        """One line when a trial starts, finishes or fails (the trial's own output is in its log)."""

        def _say(self, what: str, trial) -> None:
            stamp = _dt.datetime.now().strftime("%H:%M:%S")
            print(f"[{stamp}] {what:<8} {names[trial.config['trial']['run_dir']]}", flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._say("started", trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._say("finished", trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._say("FAILED", trial)

    return Progress()


def _print_summary(results, skipped: int, spec_path: str) -> int:
    failed, stopped, lines = [], [], []
    not_started = 0
    for result in results:
        if not result.config:  # the sweep was stopped (Ctrl-C) before Ray started this trial
            not_started += 1
            continue
        trial = result.config["trial"]
        name = os.path.relpath(trial["run_dir"], os.getcwd())
        if result.error is not None:
            failed.append(trial)
            lines.append(f"  FAILED  {name}   (log: {trial['log_file']})")
        elif not is_finished(trial["run_dir"]):  # the sweep was interrupted before this trial ended
            stopped.append(trial)
            lines.append(f"  stopped {name}")
        else:
            metrics = result.metrics or {}
            score = metrics.get("eval_normalized_mean", metrics.get("eval_return_mean"))
            score_text = f"  score {score:.2f}" if isinstance(score, (int, float)) else ""
            lines.append(f"  {metrics.get('status', 'done'):<7} {name}{score_text}")
    print("\n".join(sorted(lines)))
    done = len(results) - len(failed) - len(stopped) - not_started
    print(f"{done} trial(s) done, {len(failed)} failed, {len(stopped)} stopped, "
          + (f"{not_started} not started, " if not_started else "") + f"{skipped} already finished and skipped")
    if failed or stopped or not_started:
        print(f"continue with: dtrl sweep {spec_path} --resume  (finished runs are skipped, stopped ones resume "
              "from their checkpoints, failed ones are retried; logs say why they failed)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    config = tyro.cli(SweepConfig, args=list(argv), prog="dtrl sweep",
                      description="Run a grid of dtrl runs (tasks x algos x seeds x overrides) on Ray Tune; "
                                  "see docs/sweeps.md.")
    return run_sweep(config)
