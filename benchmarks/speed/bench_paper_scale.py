"""Speed of GRPO-DT at the paper's scale (``--preset paper-small``, issue 37): where an iteration's
time goes early and late in a run, and a whole run's env steps per second against the physical
limit, the bare ``mj_step`` rate of the same env on one thread and on two.

    python benchmarks/speed/bench_paper_scale.py runs/paper_scale/hopper-random/grpo/seed1 ...
    python benchmarks/speed/bench_paper_scale.py RUN ... --write   # replaces the Speed section of
                                                                   # benchmarks/results/paper-scale.md

The split comes from the runs' own metrics.jsonl (``time/*_s`` of each stage; "other" is the rest of
the iteration's wall time: checkpoint, logging, the metrics row). The checkpoint is also timed
directly: the run's last ``checkpoints/state.pt`` written again (``torch.save`` + fsync), which is
what a checkpoint costs with the buffers as full as they are then. The bare rate: 512 copies of the
env's ``MjData`` stepped with random actions in a loop ``data.ctrl[:] = a; mj_step(model, data,
nstep=frame_skip)``, on one thread and split over two (MuJoCo releases the GIL), the best of a few
repeats. Run it on an idle machine: a run sharing the cores slows both numbers.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np
import torch
import tyro
from tyro.conf import Positional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: machine.py
from machine import cpu_name  # noqa: E402

STAGES = ("full_rollouts", "group_rollouts", "update", "eval")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "paper-scale.md"


@dataclass
class Args:
    runs: Positional[tuple[str, ...]]
    """GRPO-DT run directories (finished or not)"""
    window: int = 20
    """iterations averaged at the start and at the end of each run"""
    copies: int = 512
    """env copies of the bare-rate measurement (the paper's 512 sub-trajectories)"""
    steps: int = 100
    """steps of each copy per repeat of the bare-rate measurement"""
    repeats: int = 3
    write: bool = False
    """replace the Speed section of benchmarks/results/paper-scale.md"""
    task: str = "hopper-random"
    """the env of the bare rate"""
    extra: list[str] = field(default_factory=list)
    """free-text notes added under the table (machine load, ...)"""


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def window_split(rows: list[dict], first: int, last: int) -> dict[str, float]:
    """Mean seconds per iteration of each stage over iterations first..last (1-based, inclusive), the
    rest of the wall time as "other", and env steps per iteration and per second."""
    by_iteration = {row["iteration"]: row for row in rows}
    chosen = [by_iteration[i] for i in range(first, last + 1) if i in by_iteration and i - 1 in by_iteration]
    if not chosen:
        return {}
    wall = sum(row["wall_time_s"] - by_iteration[row["iteration"] - 1]["wall_time_s"] for row in chosen)
    steps = sum(row["env_steps"] - by_iteration[row["iteration"] - 1]["env_steps"] for row in chosen)
    split = {stage: sum(row.get(f"time/{stage}_s", 0.0) for row in chosen) / len(chosen) for stage in STAGES}
    split["other"] = wall / len(chosen) - sum(split.values())
    split.update(iteration_s=wall / len(chosen), env_steps=steps / len(chosen), rate=steps / wall,
                 first=chosen[0]["iteration"], last=chosen[-1]["iteration"])
    return split


def checkpoint_seconds(run: Path) -> tuple[float, float]:
    """(seconds to write the run's last checkpoint again, its size in MB)."""
    state_file = run / "checkpoints" / "state.pt"
    if not state_file.is_file():
        return float("nan"), float("nan")
    state = torch.load(state_file, weights_only=False)
    with tempfile.NamedTemporaryFile(dir=run) as handle:
        started = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        handle.write(buffer.getbuffer())
        handle.flush()
        os.fsync(handle.fileno())
        return time.perf_counter() - started, len(buffer.getbuffer()) / 1e6


def bare_rate(task_name: str, copies: int, steps: int, repeats: int, threads: int) -> float:
    """Bare mj_step env steps per second over ``copies`` copies on ``threads`` threads."""
    from dtrl.envs import make

    env = make(task_name, seed=0)
    env.reset(seed=0)
    raw = env.unwrapped_env
    model, frame_skip = raw.model, raw.frame_skip
    datas = [mujoco.MjData(model) for _ in range(copies)]
    for data in datas:
        data.qpos[:], data.qvel[:] = raw.data.qpos, raw.data.qvel
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, copies, model.nu))
    chunks = np.array_split(np.arange(copies), threads)

    def simulate(rows: np.ndarray) -> None:
        for step_actions in actions:
            for i in rows:
                datas[i].ctrl[:] = step_actions[i]
                mujoco.mj_step(model, datas[i], nstep=frame_skip)

    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(simulate, chunks))
            best = min(best, time.perf_counter() - started)
    env.close()
    return copies * steps / best


def run_summary(run: Path, args: Args, bare_two: float) -> dict:
    rows = [row for row in read_rows(run) if row["iteration"] > 0]
    last = rows[-1]
    early = window_split(read_rows(run), 1, args.window)
    late = window_split(read_rows(run), last["iteration"] - args.window + 1, last["iteration"])
    checkpoint_s, checkpoint_mb = checkpoint_seconds(run)
    rate = last["env_steps"] / last["wall_time_s"]
    return {"run": str(run), "iterations": last["iteration"], "env_steps": last["env_steps"],
            "wall_time_s": last["wall_time_s"], "rate": rate, "ratio": rate / bare_two, "early": early,
            "late": late, "checkpoint_s": checkpoint_s, "checkpoint_mb": checkpoint_mb}


def markdown(args: Args, summaries: list[dict], bare_one: float, bare_two: float) -> str:
    flags = ["--write"] if args.write else []
    command = " ".join(["python benchmarks/speed/bench_paper_scale.py", *args.runs, *flags])
    lines = [
        "## Speed", "",
        f"{datetime.date.today()}, {cpu_name()} ({os.cpu_count()} cores), `{command}`.", "",
        f"Bare `mj_step` of {args.task}'s env, {args.copies} copies: **{bare_one:,.0f} env steps/s on one thread, "
        f"{bare_two:,.0f} on two** (random actions from the reset state, best of {args.repeats}).", "",
        "| run | iterations | env steps | wall clock | env steps/s | of the 2-thread bare rate | checkpoint |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(f"| {s['run']} | {s['iterations']} | {s['env_steps']:,} | {s['wall_time_s'] / 60:.1f} min | "
                     f"{s['rate']:,.0f} | **{s['ratio']:.2f}** | "
                     f"{s['checkpoint_s']:.2f} s, {s['checkpoint_mb']:.0f} MB |")
    lines += ["", "Seconds per iteration, by stage (mean over the window; other = checkpoint, logging, the rest):", "",
              "| run | iterations | env steps / iteration | full rollouts | group rollouts | update | evaluation | "
              "other | total | env steps/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for split in (s["early"], s["late"]):
            if split:
                lines.append(f"| {Path(s['run']).name} | {split['first']}-{split['last']} | "
                             f"{split['env_steps']:,.0f} | "
                             + " | ".join(f"{split[k]:.2f}" for k in (*STAGES, "other", "iteration_s"))
                             + f" | {split['rate']:,.0f} |")
    lines += ["", *args.extra]
    return "\n".join(lines).rstrip() + "\n"


def write_section(text: str) -> None:
    """Replace the "## Speed" section of the results file (up to the next "## "), or append it."""
    current = RESULTS.read_text() if RESULTS.is_file() else "# GRPO-DT at the paper's scale\n\n"
    start = current.find("## Speed\n")
    if start < 0:
        new = current.rstrip() + "\n\n" + text
    else:
        end = current.find("\n## ", start + 1)
        new = current[:start] + text + ("" if end < 0 else current[end:])
    RESULTS.write_text(new)


def main(args: Args) -> None:
    bare_one = bare_rate(args.task, args.copies, args.steps, args.repeats, 1)
    bare_two = bare_rate(args.task, args.copies, args.steps, args.repeats, 2)
    summaries = [run_summary(Path(run), args, bare_two) for run in args.runs]
    text = markdown(args, summaries, bare_one, bare_two)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main(tyro.cli(Args))
