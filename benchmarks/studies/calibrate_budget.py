"""Equal-compute budgets for the comparison (issue: Table 1 at CPU scale), made machine-independent.

Machines of this kind differ up to 3x in speed, and a study may span several of them, so the study
does not run "20 minutes per method": it runs, per method, the number of iterations that method
completed in ``--minutes`` of training on one core *of the calibration machine*, recorded here once.

    nice python benchmarks/calibrate_budget.py --task hopper-random --minutes 20 [--parallel 2]
    python benchmarks/calibrate_budget.py --task hopper-random --write-specs   # sweeps from the CSV

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

    nice python benchmarks/calibrate_budget.py --methods grpo --variant "--sub-trajectory-length 45"

runs the preset with and without the flags side by side (one core each) for ``--minutes`` on this
machine and records in ``benchmarks/results/budget_variants.csv`` the calibrated iterations scaled by
the two runs' ratio of iterations: the budget the changed preset would get, measured without the
calibration machine.
"""

from __future__ import annotations

import argparse
import csv
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

from bench_grpo_learning import ensure_inputs
from dtrl.config import option_args
from machine import cpu_name

METHODS = ["grpo", "grpo-q", "ppo", "odt", "odt-td3", "iql", "sb3-sac", "sb3-ppo"]
NEEDS_INIT = {"grpo", "grpo-q", "ppo", "odt", "odt-td3"}
NEEDS_DATASET = {"odt", "odt-td3", "iql"}
BUDGET_CSV = Path(__file__).parent / "results" / "budget.csv"
COLUMNS = ["task", "method", "minutes", "iterations", "env_steps", "grad_updates", "wall_time_s", "cpu", "date",
           "commit"]
# budgets of candidate preset changes (--variant), kept apart from the budgets the specs are written from
VARIANTS_CSV = Path(__file__).parent / "results" / "budget_variants.csv"
VARIANT_COLUMNS = ["task", "method", "flags", "minutes", "calibrated_iterations", "preset_iterations_here",
                   "variant_iterations_here", "budget", "preset_env_steps_here", "variant_env_steps_here", "cpu",
                   "date", "commit"]
# the tuning grid every method goes through (issue: one tuning protocol for every method)
LEARNING_RATES = [1e-4, 3e-4, 1e-3]
SCHEDULES = ["constant", "linear"]
GRID = {"learning_rate": LEARNING_RATES, "learning_rate_schedule": SCHEDULES}
# Tuning chooses on seed 0; Table 1 and the claims are scored on seeds the grid did not use, so no
# method's score includes the grid run that chose its setting (a single-seed pick is optimistic on its
# own seed, and more so for a method whose grid ranked close). Every seed needs its pretrained DT
# (sweeps/pretrain.toml).
TUNING_SEEDS = [0]
EVALUATION_SEEDS = [1, 2, 3]
# the paper's claims (Fig. 1a-e, 3a): algorithms and the one switch each figure changes. A claim's
# spec runs only the switched values: the preset's own value is Table 1's run of the same method,
# seed and DT (sweeps/table1_cpu.toml), its paired baseline. Fig. 3c (reset-based vs Q-guided GRPO)
# compares two Table 1 columns and needs no runs of its own.
CLAIMS = {
    "fig1a_relabel": (["grpo", "ppo"], {"hindsight_relabel": [False, True]}),
    "fig1b_full_trajectories": (["grpo"], {"full_trajectories": [False, True]}),
    "fig1c_consistent_groups": (["grpo"], {"consistent_group_states": [True, False]}),
    "fig1d_ratio_level": (["grpo"], {"ratio_level": ["sequence", "token", "geometric"]}),
    "fig1e_reset_sampling": (["grpo"], {"reset_sampling": ["active", "uniform"]}),
    "fig3a_sub_trajectory_length": (["grpo"], {"sub_trajectory_length": [5, 15, 45]}),
    # 600: twice the cpu preset's 300, to test "longer consistently improves" above it too (and whether
    # a longer horizon helps the late falls of benchmarks/results/grpo.md, "Speed first, then survival")
    "fig3b_eval_steps": (["grpo"], {"eval_steps": [30, 100, 300, 600]}),
}


def without_preset_values(task: str, algos: list[str], overrides: dict) -> dict:
    """The switch values other than every algorithm's cpu preset value (those runs are Table 1's)."""
    from dtrl.algos import grpo, ppo

    presets = {"grpo": grpo.cpu_preset(task), "ppo": ppo.cpu_preset(task)}
    kept = {name: [v for v in values if all(getattr(presets[a], name) != v for a in algos)]
            for name, values in overrides.items()}
    for name, values in kept.items():
        if not values:
            raise SystemExit(f"claim switch {name}: every value is a preset's")
    return kept


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_budget(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def record_row(row: dict, path: Path) -> None:
    """Add a calibration to budget.csv, replacing the method's earlier one for this task and minutes
    (``--again``): one budget per method, the one the specs are written from."""
    def key(r: dict) -> tuple:
        return r["task"], r["method"], float(r["minutes"])

    kept = [r for r in read_budget(path) if key(r) != key(row)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([*kept, row])


def method_args(method: str, data: Path, pretrained: Path) -> list[str]:
    return ([*(["--init", str(pretrained)] if method in NEEDS_INIT else []),
             *(["--dataset", str(data)] if method in NEEDS_DATASET else [])])


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


def variant_budget(calibrated: int, preset_here: int, variant_here: int) -> int:
    """The equal-compute budget of a change to a method's preset: its calibrated iterations scaled by
    how many iterations the changed preset completes against the preset itself, side by side, in the
    same minutes on one machine. The calibration machine may be gone; the two settings' relative cost
    is what can be measured anywhere (it assumes that ratio holds on the calibration machine too: the
    same work, env steps and model passes, only more or less of it)."""
    return max(1, round(calibrated * variant_here / preset_here))


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
    kept = [r for r in read_budget(args.variants_csv)
            if (r["task"], r["method"], r["flags"], float(r["minutes"])) != (args.task, method, row["flags"],
                                                                                args.minutes)]
    args.variants_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.variants_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=VARIANT_COLUMNS)
        writer.writeheader()
        writer.writerows([*kept, row])
    print(f"{method} {row['flags']}: {row['budget']} iterations at equal compute ({row['variant_iterations_here']} "
          f"against the preset's {row['preset_iterations_here']} here; calibrated {calibrated[method]}) -> "
          f"{args.variants_csv}")
    return row


def toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def read_tuned(path: Path, task: str) -> dict[str, list[str]]:
    """{method: the command-line flags of its chosen setting} from a ``dtrl report --choose``
    chosen.csv. Every method must have one that sets every option of the grid, and none that the
    comparison's specs set themselves (budget, inputs, a claim's switch)."""
    try:
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("task") == task and r.get("chosen") == "True"]
    except OSError as exc:
        raise SystemExit(f"--tuned {path}: {exc.strerror}") from None
    tuned = {r["algo"]: r["flags"].split() for r in rows}
    missing = [m for m in METHODS if m not in tuned]
    if missing:
        raise SystemExit(f"--tuned {path} has no chosen setting for {', '.join(missing)} on {task} "
                         "(a chosen.csv of dtrl report --choose over the whole tuning sweep)")
    grid_flags = {option_args(name, values[0])[0] for name, values in GRID.items()}
    reserved = {"--iterations", "--init", "--dataset", "--eval-other-rtg"} | {
        option_args(name, value)[0] for _, switches in CLAIMS.values() for name, values in switches.items()
        for value in values}
    for method, flags in tuned.items():
        names = {flag for flag in flags if flag.startswith("--")}
        if not grid_flags <= names:
            raise SystemExit(f"--tuned {path}: the setting chosen for {method} ({' '.join(flags) or 'no flags'}) "
                             f"does not set {', '.join(sorted(grid_flags - names))}: was its whole grid in "
                             "the report?")
        if names & reserved:
            raise SystemExit(f"--tuned {path}: the setting chosen for {method} sets "
                             f"{', '.join(sorted(names & reserved))}, which the comparison's specs set themselves")
    return tuned


def write_specs(task: str, minutes: float, sweeps: Path, budget_csv: Path, tuned_csv: Path | None = None) -> None:
    budget = {r["method"]: int(r["iterations"]) for r in read_budget(budget_csv)
              if r["task"] == task and float(r["minutes"]) == minutes}
    missing = [m for m in METHODS if m not in budget]
    if missing:
        raise SystemExit(f"no calibration yet for {', '.join(missing)} on {task} ({minutes} min): run without "
                         "--write-specs first")
    algo_args = {m: ["--iterations", str(budget[m]), *method_args(m, Path("data/{task}.hdf5"),
                                                                   Path("runs/pretrain/{task}/pretrain/seed{seed}"))]
                 for m in METHODS}
    tuning_algo_args = dict(algo_args)  # the grid itself runs each method's preset plus the grid's values
    if tuned_csv is not None:
        tuned = read_tuned(tuned_csv, task)
        algo_args = {m: args + tuned[m] for m, args in algo_args.items()}
        settings = (f"# Each method's setting chosen by the tuning sweep ({tuned_csv}, written with\n"
                    "# benchmarks/calibrate_budget.py --write-specs --tuned).\n")
    else:
        settings = ("# Each method's cpu preset as it is: no tuned setting yet (once tuning is reported, rewrite\n"
                    "# with benchmarks/calibrate_budget.py --write-specs --tuned .../chosen.csv).\n")
    table = "\n".join(f'"{m}" = {toml_list(a)}' for m, a in tuning_algo_args.items())
    header = (f"# Generated by benchmarks/calibrate_budget.py --task {task} --minutes {minutes:g} --write-specs from\n"
              "# benchmarks/results/budget.csv: every method runs the iterations it completed in that many minutes\n"
              "# of training on one core of the calibration machine (equal compute, machine-independent).\n"
              "# The DT methods of a seed share the pretrained DT of sweeps/pretrain.toml (same seed).\n")
    common = (f'command = "finetune"\nalgos = {toml_list(METHODS)}\ntasks = {toml_list([task])}\n')
    resources = "\n[resources]\ncpus = 1\ngpus = 0\n"
    sweeps.mkdir(parents=True, exist_ok=True)
    (sweeps / "tuning_cpu.toml").write_text(
        header + "# Tuning protocol: the same grid, budget and seed for every method; the chosen setting per\n"
        "# method has the highest late score, the mean of the evaluations over the last quarter of the run\n"
        "# (dtrl report runs/tuning_cpu --finished-only --choose late; benchmarks/results/tuning.md).\n"
        + common + f'seeds = {toml_list(TUNING_SEEDS)}\n'
        + 'out_root = "runs/tuning_cpu"\nargs = ["--preset", "cpu", "--threads", "1"]\n'
        + f"\n[algo_args]\n{table}\n\n[overrides]\n"
        + "".join(f"{name} = {toml_list(values)}\n" for name, values in GRID.items()) + resources)
    # Table 1 reports the DT methods at both target RTGs (they default to different ones)
    table1 = "\n".join(f'"{m}" = {toml_list(a + (["--eval-other-rtg"] if m in NEEDS_INIT else []))}'
                        for m, a in algo_args.items())
    (sweeps / "table1_cpu.toml").write_text(
        header + "# Table 1 at CPU scale: 3 seeds, every method at its calibrated budget.\n"
        "# Held-out seeds: the tuning sweep chose each setting on seed 0, which Table 1 does not use.\n" + settings
        + common + f'seeds = {toml_list(EVALUATION_SEEDS)}\n'
        + 'out_root = "runs/table1_cpu"\nargs = ["--preset", "cpu", "--threads", "1"]\n'
        + f"\n[algo_args]\n{table1}\n" + resources)
    claim_algos = [m for m in METHODS if any(m in algos for algos, _ in CLAIMS.values())]
    studies = "".join(
        f"\n[studies.{claim}]\nalgos = {toml_list(algos)}\n[studies.{claim}.overrides]\n"
        + "".join(f"{name} = {toml_list(values)}\n"
                  for name, values in without_preset_values(task, algos, overrides).items())
        for claim, (algos, overrides) in CLAIMS.items())
    (sweeps / "claims.toml").write_text(
        header + "# The paper's claims: one study per figure, each changing one switch, budget and data per\n"
        "# iteration kept; 3 seeds. The preset's own value is not rerun: its paired baseline is Table 1's run\n"
        "# of the same method, seed and DT (sweeps/table1_cpu.toml). Fig. 3c (Q-guided GRPO) is two Table 1\n"
        "# columns. Each study runs into runs/claims/<study>; one of them: --only study=<study>.\n" + settings
        + f'command = "finetune"\ntasks = {toml_list([task])}\nseeds = {toml_list(EVALUATION_SEEDS)}\n'
        + 'out_root = "runs/claims"\nargs = ["--preset", "cpu", "--threads", "1"]\n'
        + "\n[algo_args]\n" + "\n".join(f'"{m}" = {toml_list(algo_args[m])}' for m in claim_algos) + "\n"
        + resources + studies)
    print(f"wrote {sweeps / 'tuning_cpu.toml'}, {sweeps / 'table1_cpu.toml'} and {sweeps / 'claims.toml'} "
          f"({len(CLAIMS)} claims)")
    write_budget_markdown(task, minutes, budget_csv)


def write_budget_markdown(task: str, minutes: float, budget_csv: Path) -> None:
    """benchmarks/results/budget.md: the calibration as a table, with machine, date and command. Notes
    written by hand below the table (from a line starting with "Notes") are kept."""
    rows = [r for r in read_budget(budget_csv) if r["task"] == task and float(r["minutes"]) == minutes]
    lines = [
        f"# Equal-compute budgets: {task}, {minutes:g} minutes of training per method on one core", "",
        f"Each method's `cpu` preset ran alone on one core (one torch thread, seed 0, no in-run evaluation) for "
        f"{minutes:g} minutes of training; the iterations it completed are its budget in `sweeps/table1_cpu.toml`, "
        "`sweeps/tuning_cpu.toml` and `sweeps/claims.toml`. Iterations are what the studies run, so they give the same "
        "work on any machine; env steps and gradient updates show how differently the methods spend it.", "",
        f"Command: `nice python benchmarks/calibrate_budget.py --task {task} --minutes {minutes:g} "
        "--parallel 2` (two methods at a time on the 2 cores), then `--write-specs`.", "",
        "| method | iterations | env steps | gradient updates | training s | machine | date | commit |",
        "|---|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {int(r['iterations']):,} | {int(r['env_steps']):,} | "
                     f"{int(r['grad_updates']):,} | {float(r['wall_time_s']):.0f} | {r['cpu']} | {r['date']} | "
                     f"{r['commit']} |")
    out = budget_csv.parent / "budget.md"
    old = out.read_text().splitlines() if out.exists() else []
    notes = next((old[i:] for i, line in enumerate(old) if line.startswith("Notes")), [])
    out.write_text("\n".join(lines + ([""] + notes if notes else [])) + "\n")
    print(f"wrote {out}")


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
    args = parser.parse_args()
    if args.write_specs:
        write_specs(args.task, args.minutes, args.sweeps, args.budget_csv, args.tuned)
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
