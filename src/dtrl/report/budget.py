"""Equal-compute budgets and the comparison's sweep specs (issue: Table 1 at CPU scale).

A method's budget is the number of iterations it completed in a fixed number of minutes of training
on one core of the calibration machine (``benchmarks/results/budget.csv``, measured by
``benchmarks/studies/calibrate_budget.py``, which runs the trainings). From it, ``write_specs`` writes
``sweeps/tuning_cpu.toml`` (the same learning-rate x schedule grid for every method, seed 0),
``sweeps/table1_cpu.toml`` (3 held-out seeds, every method at its calibrated iterations, with the setting
tuning chose: ``read_tuned``) and ``sweeps/claims.toml`` (one study per claim of the paper), and
``budget.md``. A change to a method's preset is judged at its own budget: ``variant_budget``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dtrl.config import option_args
from dtrl.errors import DtrlError
from dtrl.report.claims import CLAIMS, without_preset_values

METHODS = ["grpo", "grpo-q", "ppo", "odt", "odt-td3", "iql", "sb3-sac", "sb3-ppo"]
NEEDS_INIT = {"grpo", "grpo-q", "ppo", "odt", "odt-td3"}
NEEDS_DATASET = {"odt", "odt-td3", "iql"}
COLUMNS = ["task", "method", "minutes", "iterations", "env_steps", "grad_updates", "wall_time_s", "cpu", "date",
           "commit"]
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


def variant_budget(calibrated: int, preset_here: int, variant_here: int) -> int:
    """The equal-compute budget of a change to a method's preset: its calibrated iterations scaled by
    how many iterations the changed preset completes against the preset itself, side by side, in the
    same minutes on one machine. The calibration machine may be gone; the two settings' relative cost
    is what can be measured anywhere (it assumes that ratio holds on the calibration machine too: the
    same work, env steps and model passes, only more or less of it)."""
    return max(1, round(calibrated * variant_here / preset_here))


def record_variant(row: dict, path: Path) -> None:
    """Add a preset change's budget to budget_variants.csv, replacing an earlier one of the same task,
    method, flags and minutes (measured again)."""
    def key(r: dict) -> tuple:
        return r["task"], r["method"], r["flags"], float(r["minutes"])

    kept = [r for r in read_budget(path) if key(r) != key(row)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=VARIANT_COLUMNS)
        writer.writeheader()
        writer.writerows([*kept, row])


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
        raise DtrlError(f"--tuned {path}: {exc.strerror}") from None
    tuned = {r["algo"]: r["flags"].split() for r in rows}
    missing = [m for m in METHODS if m not in tuned]
    if missing:
        raise DtrlError(f"--tuned {path} has no chosen setting for {', '.join(missing)} on {task} "
                         "(a chosen.csv of dtrl report --choose over the whole tuning sweep)")
    grid_flags = {option_args(name, values[0])[0] for name, values in GRID.items()}
    reserved = {"--iterations", "--init", "--dataset", "--eval-other-rtg"} | {
        option_args(name, value)[0] for _, switches in CLAIMS.values() for name, values in switches.items()
        for value in values}
    for method, flags in tuned.items():
        names = {flag for flag in flags if flag.startswith("--")}
        if not grid_flags <= names:
            raise DtrlError(f"--tuned {path}: the setting chosen for {method} ({' '.join(flags) or 'no flags'}) "
                             f"does not set {', '.join(sorted(grid_flags - names))}: was its whole grid in "
                             "the report?")
        if names & reserved:
            raise DtrlError(f"--tuned {path}: the setting chosen for {method} sets "
                             f"{', '.join(sorted(names & reserved))}, which the comparison's specs set themselves")
    return tuned


def write_specs(task: str, minutes: float, sweeps: Path, budget_csv: Path, tuned_csv: Path | None = None, *,
                presets: dict, tuned_task: str | None = None) -> list[Path]:
    """The comparison's sweep specs in ``sweeps`` (tuning_cpu.toml, table1_cpu.toml, claims.toml) from the
    calibrated budgets of ``budget_csv`` and, with ``tuned_csv``, each method's tuned setting; then budget.md
    beside ``budget_csv``. ``presets``: {algo: its cpu preset config}, the claims' reference values.
    ``tuned_task``: the task the tuning sweep ran on, when ``task`` is another one (Table 1 on more tasks keeps
    each method's setting from the first task's grid, at budgets calibrated on ``task``): then only that
    task's Table 1 spec is written, ``table1_cpu_<task>.toml``. Returns the files written."""
    rows = read_budget(budget_csv)
    budget = {r["method"]: int(r["iterations"]) for r in rows if r["task"] == task and float(r["minutes"]) == minutes}
    other_task = tuned_task is not None and tuned_task != task
    shared = shared_env_runs(task, minutes, rows) if other_task else {}
    missing = [m for m in METHODS if m not in budget and m not in shared]
    if missing:
        raise DtrlError(f"no calibration yet for {', '.join(missing)} on {task} ({minutes} min): run without "
                         "--write-specs first")
    methods = [m for m in METHODS if m not in shared]
    algo_args = {m: ["--iterations", str(budget[m]), *method_args(m, Path("data/{task}.hdf5"),
                                                                   Path("runs/pretrain/{task}/pretrain/seed{seed}"))]
                 for m in methods}
    tuning_algo_args = dict(algo_args)  # the grid itself runs each method's preset plus the grid's values
    if tuned_csv is not None:
        tuned = read_tuned(tuned_csv, tuned_task or task)
        algo_args = {m: args + tuned[m] for m, args in algo_args.items()}
        settings = (f"# Each method's setting chosen by the tuning sweep{f' on {tuned_task}' if other_task else ''} "
                    f"({tuned_csv}, written with\n"
                    "# benchmarks/studies/calibrate_budget.py --write-specs --tuned).\n")
    else:
        settings = ("# Each method's cpu preset as it is: no tuned setting yet (once tuning is reported, rewrite\n"
                    "# with benchmarks/studies/calibrate_budget.py --write-specs --tuned .../chosen.csv).\n")
    table = "\n".join(f'"{m}" = {toml_list(a)}' for m, a in tuning_algo_args.items())
    header = (f"# Generated by benchmarks/studies/calibrate_budget.py --task {task} --minutes {minutes:g} "
              "--write-specs from\n"
              "# benchmarks/results/budget.csv: every method runs the iterations it completed in that many minutes\n"
              "# of training on one core of the calibration machine (equal compute, machine-independent).\n"
              "# The DT methods of a seed share the pretrained DT of sweeps/pretrain.toml (same seed).\n")
    if shared:
        header += "".join(f"# {m}: not run on {task}. It reads no dataset, and the {other} runs of Table 1 are on "
                          f"the same env: they count here too\n# (dtrl report --share-across-tasks {m}).\n"
                          for m, other in shared.items())
    common = (f'command = "finetune"\nalgos = {toml_list(methods)}\ntasks = {toml_list([task])}\n')
    resources = "\n[resources]\ncpus = 1\ngpus = 0\n"
    sweeps.mkdir(parents=True, exist_ok=True)
    if other_task:
        return [write_table1_spec(sweeps / f"table1_cpu_{task}.toml", header, settings, common, algo_args,
                                  resources, f" on {task}"),
                write_budget_markdown(task, minutes, budget_csv)]
    (sweeps / "tuning_cpu.toml").write_text(
        header + "# Tuning protocol: the same grid, budget and seed for every method; the chosen setting per\n"
        "# method has the highest late score, the mean of the evaluations over the last quarter of the run\n"
        "# (dtrl report runs/tuning_cpu --finished-only --choose late; benchmarks/results/tuning.md).\n"
        + common + f'seeds = {toml_list(TUNING_SEEDS)}\n'
        + 'out_root = "runs/tuning_cpu"\nargs = ["--preset", "cpu", "--threads", "1"]\n'
        + f"\n[algo_args]\n{table}\n\n[overrides]\n"
        + "".join(f"{name} = {toml_list(values)}\n" for name, values in GRID.items()) + resources)
    write_table1_spec(sweeps / "table1_cpu.toml", header, settings, common, algo_args, resources)
    claim_algos = [m for m in METHODS if any(m in algos for algos, _ in CLAIMS.values())]
    studies = "".join(
        f"\n[studies.{claim}]\nalgos = {toml_list(algos)}\n[studies.{claim}.overrides]\n"
        + "".join(f"{name} = {toml_list(values)}\n"
                  for name, values in without_preset_values(presets, algos, overrides).items())
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
    return [sweeps / "tuning_cpu.toml", sweeps / "table1_cpu.toml", sweeps / "claims.toml",
            write_budget_markdown(task, minutes, budget_csv)]


def shared_env_runs(task: str, minutes: float, rows: list[dict]) -> dict[str, str]:
    """{method: the task whose Table 1 runs are also ``task``'s} for the methods that read neither a dataset nor
    a pretrained DT (the SB3 lines), not calibrated on ``task`` but on another task of the same env: they run
    once per env (hopper-random's SB3 runs are hopper-medium's)."""
    from dtrl.tasks import get_task

    env_id = get_task(task).env_id
    shared = {}
    for method in METHODS:
        if method in NEEDS_INIT | NEEDS_DATASET:
            continue
        here = [r for r in rows if r["method"] == method and float(r["minutes"]) == minutes]
        if any(r["task"] == task for r in here):
            continue
        others = sorted(r["task"] for r in here if get_task(r["task"]).env_id == env_id)
        if others:
            shared[method] = others[0]
    return shared


def write_table1_spec(path: Path, header: str, settings: str, common: str, algo_args: dict, resources: str,
                      on_task: str = "") -> Path:
    """Table 1's spec: 3 held-out seeds, every method at its calibrated budget; the DT methods are reported
    at both target RTGs (they default to different ones)."""
    table1 = "\n".join(f'"{m}" = {toml_list(a + (["--eval-other-rtg"] if m in NEEDS_INIT else []))}'
                        for m, a in algo_args.items())
    path.write_text(
        header + f"# Table 1 at CPU scale{on_task}: 3 seeds, every method at its calibrated budget.\n"
        "# Held-out seeds: the tuning sweep chose each setting on seed 0, which Table 1 does not use.\n" + settings
        + common + f'seeds = {toml_list(EVALUATION_SEEDS)}\n'
        + 'out_root = "runs/table1_cpu"\nargs = ["--preset", "cpu", "--threads", "1"]\n'
        + f"\n[algo_args]\n{table1}\n" + resources)
    return path


def write_budget_markdown(task: str, minutes: float, budget_csv: Path) -> Path:
    """benchmarks/results/budget.md: the calibration as a table, with machine, date and command. Notes
    written by hand below the table (from a line starting with "Notes") are kept. The file's first task
    (hopper-random's comparison) is its title; another task's budgets are a ``## TASK, N minutes`` section
    at the end, replaced when written again."""
    rows = [r for r in read_budget(budget_csv) if r["task"] == task and float(r["minutes"]) == minutes]
    command = (f"Command: `nice python benchmarks/studies/calibrate_budget.py --task {task} --minutes {minutes:g} "
               "--parallel 2` (two methods at a time on the 2 cores), then `--write-specs`.")
    table = ["| method | iterations | env steps | gradient updates | training s | machine | date | commit |",
             "|---|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {int(r['iterations']):,} | {int(r['env_steps']):,} | "
                     f"{int(r['grad_updates']):,} | {float(r['wall_time_s']):.0f} | {r['cpu']} | {r['date']} | "
                     f"{r['commit']} |")
    out = budget_csv.parent / "budget.md"
    old = out.read_text().splitlines() if out.exists() else []
    title = "# Equal-compute budgets: "
    first_task = old[0][len(title):].split(",", 1)[0] if old and old[0].startswith(title) else task
    if first_task != task:
        # another task's budgets (Table 1 on more tasks): its own section at the end, replaced when written again
        heading = f"## {task}, {minutes:g} minutes"
        start = next((i for i, line in enumerate(old) if line == heading), len(old))
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        section = [heading, "", f"The same calibration on {task}: a DT method's iteration costs what this task's data "
                   f"and episodes make it cost. The budgets of `sweeps/table1_cpu_{task}.toml`.", "", command, "",
                   *table, ""]
        before = old[:start]
        while before and not before[-1]:
            before.pop()
        out.write_text("\n".join([*before, "", *section, *old[end:]]).rstrip("\n") + "\n")
        return out
    lines = [
        f"{title}{task}, {minutes:g} minutes of training per method on one core", "",
        f"Each method's `cpu` preset ran alone on one core (one torch thread, seed 0, no in-run evaluation) for "
        f"{minutes:g} minutes of training; the iterations it completed are its budget in `sweeps/table1_cpu.toml`, "
        "`sweeps/tuning_cpu.toml` and `sweeps/claims.toml`. Iterations are what the studies run, so they give the same "
        "work on any machine; env steps and gradient updates show how differently the methods spend it.", "",
        command, "", *table]
    # the notes by hand and the other tasks' sections after them are kept
    kept = next((old[i:] for i, line in enumerate(old) if line.startswith(("Notes", "## "))), [])
    out.write_text("\n".join(lines + ([""] + kept if kept else [])) + "\n")
    return out
