"""A Table-1-style comparison on hopper-random under an equal wall-clock budget per method and seed:
pretrained DT, IQL, ODT, ODT+TD3, PPO-DT, GRPO-DT (and optionally Q-guided GRPO), each started
from the same pretrained cpu DT (IQL from the dataset: its offline phase plays the part of the DT's
pretraining and is not counted in the budget).

    nice python benchmarks/bench_table1.py --budget-s 360 --seeds 0 1 --parallel 2

Every method runs its ``cpu`` preset through the CLI (``dtrl finetune --algo X``) with
``--time-limit-s BUDGET --iterations <many>``: it stops after the iteration during which the budget
ran out, then evaluates (mean action, evaluation RTG, fixed seeds) and finishes. A run that ignores
the limit is interrupted at BUDGET + grace and resumed for one more iteration so that it ends with a
final evaluation; the table notes it. ``dtrl report`` makes the score table from the run directories;
this script adds the compute columns (env steps and gradient updates per iteration, measured) and
writes benchmarks/results/table1.md. Paths (--dataset, --pretrained, --out-root) are relative to the
working directory, like the CLI's, and are written to the results relative to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DTRL = [sys.executable, "-m", "dtrl"]
METHODS = ("iql", "odt", "odt-td3", "ppo", "grpo", "grpo-q")
DEFAULT_METHODS = ("iql", "odt", "odt-td3", "ppo", "grpo")
NAMES = {"iql": "IQL", "odt": "ODT", "odt-td3": "ODT+TD3", "ppo": "PPO-DT", "grpo": "GRPO-DT",
         "grpo-q": "GRPO-DT (Q)"}


def command(method: str, args, seed: int, out: Path) -> list[str]:
    common = ["--task", args.task, "--preset", "cpu", "--seed", str(seed), "--out", str(out), "--force",
              "--device", "cpu", "--eval-episodes", str(args.eval_episodes), "--eval-every", "0",
              "--checkpoint-every", "1", "--iterations", "100000", "--time-limit-s", str(args.budget_s)]
    if method == "iql":
        return DTRL + ["finetune", "--algo", "iql", "--dataset", args.dataset,
                       "--offline-steps", str(args.iql_offline_steps),
                       "--env-steps-per-iteration", str(args.iql_env_steps_per_iteration)] + common
    extra = ["--dataset", args.dataset] if method in ("odt", "odt-td3") else []
    return DTRL + ["finetune", "--algo", method, "--init", args.pretrained] + extra + common


def honours_time_limit(method: str) -> bool:
    """Whether the algorithm's loop checks ``--time-limit-s`` (every loop that calls
    ``dtrl.algos.common.out_of_time`` or reads ``time_limit_s`` itself)."""
    import importlib
    import inspect

    from dtrl.algos.finetune import ALGORITHMS

    source = inspect.getsource(importlib.import_module(f"dtrl.algos.{ALGORITHMS[method][0]}").train)
    return "out_of_time(" in source or "config.time_limit_s" in source


def run_one(method: str, seed: int, args) -> dict:
    out = Path(args.out_root) / f"{method}-seed{seed}"
    cmd = command(method, args, seed, out)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = Path(args.out_root) / f"{method}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    note = ""
    with open(log, "w") as handle:
        process = subprocess.Popen(["nice", "-n", "5"] + cmd, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        # Watchdog for a run that ignores --time-limit-s: right after it logs an iteration whose
        # training time passed the budget (and its checkpoint has landed), stop its process group.
        # Runs that honour the limit stop themselves; for them only the hard cap applies.
        watch = not honours_time_limit(method)
        hard_cap = started + args.budget_s + args.grace_s + (args.iql_grace_s if method == "iql" else 0)
        while process.poll() is None:
            time.sleep(2)
            trained = max((r["wall_time_s"] for r in _metrics(out)), default=0.0)
            if (watch and trained >= args.budget_s) or time.time() > hard_cap:
                time.sleep(3)  # the checkpoint is written right after the metrics line
                os.killpg(process.pid, signal.SIGKILL)  # the group this script started (run + its env workers)
                process.wait()
                note = ("stopped by the benchmark after the iteration that passed the budget (the algorithm does not "
                        "honour --time-limit-s), then resumed for 1 iteration to get its final evaluation")
        if not (out / "final.json").is_file() and (out / "checkpoints" / "state.pt").is_file():
            last = max(r["iteration"] for r in _metrics(out))
            resume = [a for a in cmd if a != "--force"]
            resume[resume.index("--iterations") + 1] = str(last + 1)
            subprocess.run(["nice", "-n", "5"] + resume + ["--resume"], stdout=handle, stderr=subprocess.STDOUT,
                           env=env, check=False)
    return {"method": method, "seed": seed, "out": str(out), "returncode": process.returncode,
            "elapsed_s": time.time() - started, "note": note}


def shown(path: str | Path) -> str:
    """``path`` as written to the results: relative to the working directory (an absolute path, e.g.
    from an older ``runs.json``, is made relative; a relative one is kept as given)."""
    return os.path.relpath(path) if os.path.isabs(path) else str(path)


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compute_summary(run: Path) -> dict:
    """Iterations, env steps and gradient updates per online iteration (IQL's offline iteration 0 is
    reported apart), wall time and the final score of one run."""
    rows = _metrics(run)
    online = [r for r in rows if r["iteration"] >= 1]
    offline = [r for r in rows if r["iteration"] == 0]
    if not online:
        return {}
    first_env = offline[0]["env_steps"] if offline else 0
    first_grad = offline[0]["grad_updates"] if offline else 0
    n = len(online)
    final = next((r["eval_normalized_mean"] for r in reversed(rows) if r.get("eval_normalized_mean") is not None), None)
    return {
        "iterations": n,
        "env_steps_per_iteration": (online[-1]["env_steps"] - first_env) / n,
        "grad_updates_per_iteration": (online[-1]["grad_updates"] - first_grad) / n,
        "env_steps": online[-1]["env_steps"], "grad_updates": online[-1]["grad_updates"],
        "offline_grad_updates": first_grad,
        "wall_time_s": online[-1]["wall_time_s"] - (offline[0]["wall_time_s"] if offline else 0.0),
        "offline_wall_time_s": offline[0]["wall_time_s"] if offline else 0.0, "final": final,
    }


def paper_compute(task: str) -> dict[str, str]:
    """Nominal per-iteration compute of each algorithm's ``paper`` preset (what the paper's
    '8x256 vs 256x300' sentence compares), from the presets themselves."""
    from dtrl.algos import grpo, grpo_q, iql, odt, odt_td3, ppo

    out = {}
    g = grpo.PRESETS["paper"](task)
    updates = g.epochs * -(-g.sub_trajectory_buffer_size // g.minibatch_size)
    out["grpo"] = (f"{g.trajectories_per_iteration} episode(s) + {g.trajectories_per_batch}x"
                   f"{g.reset_points_per_trajectory}x{g.group_size} branches of <= {g.sub_trajectory_length}+"
                   f"{g.eval_steps} steps; {updates} updates x batch {g.minibatch_size}")
    o = odt.PRESETS["paper"](task)
    out["odt"] = f"{o.trajectories_per_iteration} episode; {o.updates_per_iteration} updates x batch {o.batch_size}"
    t = odt_td3.PRESETS["paper"](task)
    out["odt-td3"] = (f"{t.trajectories_per_iteration} episode; {t.updates_per_iteration} updates x batch "
                      f"{t.batch_size} (actor + critic)")
    p = ppo.PRESETS["paper"](task)
    out["ppo"] = (f"{p.trajectories_per_iteration} episodes; {p.update_epochs} epochs over "
                  f"{p.trajectories_per_iteration * p.buffer_multiplier} buffered episodes, "
                  f"minibatch {p.minibatch_size} segments")
    q = grpo_q.PRESETS["paper"](task)
    out["grpo-q"] = (f"{q.trajectories_per_iteration} episode; {q.critic_updates_per_iteration} critic updates + "
                     f"{q.policy_epochs} epochs over {q.trajectories_per_update} trajectories x G={q.group_size}")
    i = iql.PRESETS["paper"](task)
    out["iql"] = (f"{i.env_steps_per_iteration} env steps; {i.env_steps_per_iteration * i.updates_per_env_step} "
                  f"updates x batch {i.batch_size}")
    return out


def write_results(args, runs: list[dict], started: str) -> Path:
    report_dir = Path(args.out_root) / "report"
    inputs = [shown(r["out"]) for r in runs if Path(r["out"], "metrics.jsonl").is_file()]
    if Path(args.pretrained, "config.json").is_file():
        inputs.append(shown(args.pretrained))
    subprocess.run(DTRL + ["report", *inputs, "--out", str(report_dir)], check=False)
    report_md = (report_dir / "report.md").read_text() if (report_dir / "report.md").is_file() else "(report failed)"

    lines = [
        "# Table 1 (hopper-random) under an equal wall-clock budget",
        "",
        f"- date: {started} (UTC start), finished {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()} CPU, {os.cpu_count()} cores, no GPU, shared with ~6 other jobs "
        "(load average well above the core count): timings are noisy and every method ran slower than alone",
        f"- budget: {args.budget_s:.0f} s of training per method and seed (`--time-limit-s`; the run stops after "
        f"the iteration in which it ran out, then evaluates), {args.parallel} runs in parallel, "
        f"torch 1 thread each, `nice`",
        f"- seeds: {', '.join(map(str, args.seeds))}; evaluation: {args.eval_episodes} mean-action episodes at the "
        "evaluation RTG on fixed seeds",
        f"- all DT methods start from the same pretrained cpu DT `{shown(args.pretrained)}`; IQL pretrains offline for "
        f"{args.iql_offline_steps} steps on `{shown(args.dataset)}` "
        "(not counted in its budget, like the DT's pretraining)",
        "- every method uses its `cpu` preset (small: a few minutes per run), not the paper's settings; the scores "
        "are therefore not comparable with the paper's numbers shown beside them",
        "",
        "## Scores (from `dtrl report`)",
        "",
        report_md.strip(),
        "",
        "## Compute per iteration (measured, mean over seeds)",
        "",
        "| method | iterations in budget | env steps / iteration | grad updates / iteration | total env steps | "
        "total grad updates | online training wall time (s) | final normalised return | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in args.methods:
        mine = [r for r in runs if r["method"] == method]
        summaries = [s for s in (compute_summary(Path(r["out"])) for r in mine) if s]
        if not summaries:
            lines.append(f"| {NAMES[method]} | - | - | - | - | - | - | - | no completed run |")
            continue
        mean = lambda key, summaries=summaries: float(np.mean([s[key] for s in summaries]))  # noqa: E731
        finals = [s["final"] for s in summaries if s["final"] is not None]
        score = f"{np.mean(finals):.2f} ± {np.std(finals):.2f}" if finals else "-"
        note = "; ".join(sorted({r["note"] for r in mine if r["note"]}))
        if method == "iql":
            note = (note + "; " if note else "") + f"+ {mean('offline_grad_updates'):.0f} offline updates " \
                   f"({mean('offline_wall_time_s'):.0f} s, not counted)"
        lines.append(f"| {NAMES[method]} | {mean('iterations'):.1f} | {mean('env_steps_per_iteration'):.0f} | "
                     f"{mean('grad_updates_per_iteration'):.1f} | {mean('env_steps'):.0f} | "
                     f"{mean('grad_updates'):.0f} | {mean('wall_time_s'):.0f} | {score} | {note} |")
    lines += ["", "## Nominal compute per iteration of the `paper` presets", "", "| method | per iteration |",
              "|---|---|"]
    try:
        for method, text in paper_compute(args.task).items():
            lines.append(f"| {NAMES[method]} | {text} |")
    except Exception as exc:  # a preset missing in this checkout should not lose the measured results
        lines.append(f"| - | could not read the paper presets: {type(exc).__name__}: {exc} |")
    lines += ["", "Runs: " + ", ".join(f"`{shown(r['out'])}`" for r in runs), ""]
    out = ROOT / "benchmarks" / "results" / "table1.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="hopper-random")
    parser.add_argument("--dataset", default="data/hopper-random.hdf5")
    parser.add_argument("--pretrained", default="runs/pretrain-hopper-random-cpu")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--budget-s", type=float, default=360.0, help="training seconds per method and seed")
    parser.add_argument("--grace-s", type=float, default=600.0,
                        help="hard cap beyond the budget (start-up, evaluation)")
    parser.add_argument("--iql-env-steps-per-iteration", type=int, default=250)
    parser.add_argument("--iql-grace-s", type=float, default=600.0, help="extra allowance for IQL's offline phase")
    parser.add_argument("--iql-offline-steps", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once")
    parser.add_argument("--out-root", default="runs/bench-table1")
    parser.add_argument("--report-only", action="store_true", help="only rebuild table1.md from existing runs")
    args = parser.parse_args()
    started = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    if args.report_only:
        saved = Path(args.out_root) / "runs.json"
        runs = (json.loads(saved.read_text()) if saved.is_file() else
                [{"method": m, "seed": s, "out": str(Path(args.out_root) / f"{m}-seed{s}"), "note": ""}
                 for m, s in jobs])
    else:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            runs = list(pool.map(lambda job: run_one(job[0], job[1], args), jobs))
        (Path(args.out_root) / "runs.json").write_text(json.dumps(runs, indent=2))
    print(f"wrote {write_results(args, runs, started)}")


if __name__ == "__main__":
    main()
