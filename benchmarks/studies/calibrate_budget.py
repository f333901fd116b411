"""Equal-compute budgets for the comparison (issue: Table 1 at CPU scale), made machine-independent.

Machines of this kind differ up to 3x in speed, and a study may span several of them, so the study
does not run "20 minutes per method": it runs, per method, the number of iterations that method
completed in ``--minutes`` of training on one core *of the calibration machine*, recorded here once.

    nice python benchmarks/studies/calibrate_budget.py --task hopper-random --minutes 20 [--parallel 2]
    python benchmarks/studies/calibrate_budget.py --task hopper-random --write-specs   # sweeps from the CSV

Table 1 on another task (issue 38: walker2d-medium, hopper-medium) keeps each method's setting tuned on
hopper-random and calibrates the budgets on the task itself, starting from that task's DT of seed 1:

    nice python benchmarks/studies/calibrate_budget.py --task walker2d-medium --minutes 20 --parallel 2 \
        --data data/walker2d-medium.hdf5 --pretrained runs/pretrain/walker2d-medium/pretrain/seed1
    python benchmarks/studies/calibrate_budget.py --task walker2d-medium --write-specs \
        --tuned benchmarks/results/tuning_cpu/chosen.csv --tuned-task hopper-random
        # -> sweeps/table1_cpu_walker2d-medium.toml and a walker2d-medium section in budget.md

Each method runs its ``cpu`` preset (seed 0, one torch thread, no in-run evaluation, the shared
pretrained DT for the DT methods) with ``--time-limit-s``; iterations, env steps and gradient updates
reached are appended to ``benchmarks/results/budget.csv`` with the machine and the commit. A method
already in the CSV for this task and budget is skipped, an interrupted one resumed, so the script
can be re-run across sessions. ``--write-specs`` turns the CSV into ``sweeps/tuning_cpu.toml`` (the
same learning-rate x schedule grid for every method, seed 0) and ``sweeps/table1_cpu.toml`` (3 seeds,
every method at its calibrated iterations) and ``sweeps/claims.toml`` (one study per claim of the paper,
3 seeds, the methods' calibrated iterations). Once the tuning sweep is reported with
``dtrl report runs/tuning_cpu --finished-only --choose late --out benchmarks/results/tuning_cpu``,
``--write-specs --tuned benchmarks/results/tuning_cpu/chosen.csv`` writes each method's chosen
setting into Table 1's and the claims' specs (the claims are paired with Table 1's runs, so they
must run the same settings but for their switch).

A change to a method's preset changes what its iterations cost, so it is judged at its own budget:

    nice python benchmarks/studies/calibrate_budget.py --methods grpo --variant "--sub-trajectory-length 45"

runs the preset with and without the flags side by side (one core each) for ``--minutes`` on this
machine and records in ``benchmarks/results/budget_variants.csv`` the calibrated iterations scaled by
the two runs' ratio of iterations: the budget the changed preset would get, measured without the
calibration machine.

The budgets' CSV files, the specs and budget.md are ``dtrl.report.budget``; this script runs the
trainings that measure the budgets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from dtrl.errors import DtrlError
from dtrl.report.budget import (
    METHODS,
    method_args,
    read_budget,
    record_row,
    record_variant,
    variant_budget,
    write_specs,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: machine.py
from machine import cpu_name, ensure_inputs  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
BUDGET_CSV = RESULTS / "budget.csv"
# budgets of candidate preset changes (--variant), kept apart from the budgets the specs are written from
VARIANTS_CSV = RESULTS / "budget_variants.csv"


def cpu_presets(task: str) -> dict:
    """{algo: its cpu preset on ``task``} of the methods the paper's claims switch: their values are the
    claims' references (``dtrl.report.claims``)."""
    from dtrl.algos import grpo, ppo

    return {"grpo": grpo.cpu_preset(task), "ppo": ppo.cpu_preset(task)}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def calibrate(method: str, args: argparse.Namespace, flags: tuple[str, ...] = (), label: str | None = None) -> dict:
    """Run ``method``'s cpu preset (plus ``flags``) for ``args.minutes`` of training; its budget row."""
    label = label or method
    out = args.runs / args.task / label
    argv = [sys.executable, "-m", "dtrl", "finetune", "--algo", method, "--task", args.task, "--preset", "cpu",
            "--seed", "0", "--threads", "1", "--device", "cpu", "--eval-every", "0", "--eval-episodes", "1",
            "--iterations", "1000000", "--time-limit-s", str(args.minutes * 60), "--out", str(out),
            *method_args(method, args.data, args.pretrained), *flags]
    if (out / "checkpoints" / "state.pt").is_file() and not args.again:
        argv.append("--resume")
    elif out.exists():
        argv.append("--force")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.time()
    with open(args.runs / args.task / f"{label}.log", "a") as log:
        code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise SystemExit(f"{label}: dtrl finetune exited {code} (see {args.runs / args.task / label}.log)")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    print(f"{label}: {last['iteration']} iterations, {last['env_steps']:,} env steps, {last['grad_updates']:,} "
          f"updates in {last['wall_time_s'] / 60:.1f} min of training "
          f"({(time.time() - started) / 60:.1f} min wall)", flush=True)
    return {"task": args.task, "method": method, "minutes": args.minutes, "iterations": last["iteration"],
            "env_steps": last["env_steps"], "grad_updates": last["grad_updates"], "wall_time_s": last["wall_time_s"],
            "cpu": cpu_name(), "date": datetime.date.today().isoformat(), "commit": commit()}


def calibrate_variant(args: argparse.Namespace) -> dict:
    """``--variant FLAGS``: the budget a preset change would get, recorded in budget_variants.csv."""
    if len(args.methods) != 1:
        raise SystemExit("--variant: give the one method whose preset it changes (e.g. --methods grpo)")
    method = args.methods[0]
    calibrated = {r["method"]: int(r["iterations"]) for r in read_budget(args.budget_csv)
                  if r["task"] == args.task and float(r["minutes"]) == args.minutes}
    if method not in calibrated:
        raise SystemExit(f"--variant: {method} has no {args.minutes:g}-minute calibration on {args.task} in "
                         f"{args.budget_csv}: calibrate it first")
    flags = tuple(shlex.split(args.variant))
    label = f"{method}-" + re.sub(r"[^A-Za-z0-9.]+", "-", args.variant).strip("-")
    # side by side, one core each, as the calibration ran its methods two at a time
    with ThreadPoolExecutor(max_workers=2) as pool:
        preset_run = pool.submit(calibrate, method, args, (), f"{method}-preset")
        variant_run = pool.submit(calibrate, method, args, flags, label)
        preset, variant = preset_run.result(), variant_run.result()
    row = {"task": args.task, "method": method, "flags": " ".join(flags), "minutes": args.minutes,
           "calibrated_iterations": calibrated[method], "preset_iterations_here": preset["iterations"],
           "variant_iterations_here": variant["iterations"],
           "budget": variant_budget(calibrated[method], int(preset["iterations"]), int(variant["iterations"])),
           "preset_env_steps_here": preset["env_steps"], "variant_env_steps_here": variant["env_steps"],
           "cpu": cpu_name(), "date": datetime.date.today().isoformat(), "commit": commit()}
    record_variant(row, args.variants_csv)
    print(f"{method} {row['flags']}: {row['budget']} iterations at equal compute ({row['variant_iterations_here']} "
          f"against the preset's {row['preset_iterations_here']} here; calibrated {calibrated[method]}) -> "
          f"{args.variants_csv}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="hopper-random")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--data", type=Path, help="default: data/TASK.hdf5 (built when missing)")
    parser.add_argument("--pretrained", type=Path, help="default: runs/pretrain-TASK-cpu (pretrained when missing)")
    parser.add_argument("--runs", type=Path, default=Path("runs/calibration"))
    parser.add_argument("--parallel", type=int, default=1, help="methods at once (one core each)")
    parser.add_argument("--again", action="store_true",
                        help="calibrate --methods again although budget.csv has them (after their code got faster "
                        "or slower); the new row replaces the old, whose run directory is kept as .bak-<time>")
    parser.add_argument("--write-specs", action="store_true", help="write the sweep specs from budget.csv and stop")
    parser.add_argument("--sweeps", type=Path, default=Path("sweeps"))
    parser.add_argument("--budget-csv", type=Path, default=BUDGET_CSV)
    parser.add_argument("--variant", metavar="FLAGS",
                        help="the budget a change to one method's preset would get (e.g. --methods grpo --variant "
                        "'--sub-trajectory-length 45'): runs the preset with and without FLAGS side by side on this "
                        "machine and scales the calibrated iterations by their ratio, into --variants-csv")
    parser.add_argument("--variants-csv", type=Path, default=VARIANTS_CSV)
    parser.add_argument("--tuned", type=Path, help="with --write-specs: chosen.csv of dtrl report --choose over "
                        "the tuning sweep; its settings go into Table 1's and the claims' specs")
    parser.add_argument("--tuned-task", help="with --write-specs --tuned: the task the tuning sweep ran on, when "
                        "--task is another (Table 1 on more tasks: only sweeps/table1_cpu_TASK.toml is written)")
    args = parser.parse_args()
    if args.write_specs:
        try:
            written = write_specs(args.task, args.minutes, args.sweeps, args.budget_csv, args.tuned,
                                  presets=cpu_presets(args.task), tuned_task=args.tuned_task)
        except DtrlError as exc:
            raise SystemExit(str(exc)) from None
        print("wrote " + ", ".join(str(path) for path in written))
        return
    args.data = args.data or Path(f"data/{args.task}.hdf5")
    args.pretrained = args.pretrained or Path(f"runs/pretrain-{args.task}-cpu")
    ensure_inputs(args.task, args.data, args.pretrained)
    (args.runs / args.task).mkdir(parents=True, exist_ok=True)
    if args.variant:
        calibrate_variant(args)
        return
    done = {r["method"] for r in read_budget(args.budget_csv)
            if r["task"] == args.task and float(r["minutes"]) == args.minutes}
    todo = [m for m in args.methods if args.again or m not in done]
    print(f"calibrating {', '.join(todo) or 'nothing (all in budget.csv)'} on {args.task}, {args.minutes:g} min each")
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        # each result is recorded as soon as it exists: a session that ends mid-way loses no finished method
        failed = []
        for future in as_completed([pool.submit(calibrate, method, args) for method in todo]):
            try:
                record_row(future.result(), args.budget_csv)
            except SystemExit as exc:  # one method failing must not lose the others' results
                print(exc, file=sys.stderr)
                failed.append(str(exc).split(":", 1)[0])
    if failed:
        raise SystemExit(f"calibration failed for {', '.join(failed)}")


if __name__ == "__main__":
    main()
