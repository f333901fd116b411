"""Benchmark dtrl.envs: snapshot/restore cost per env family, and BatchedEnv throughput against the
raw ``mj_step`` rate of the same model measured in the same run.

    python benchmarks/speed/bench_envs.py                 # full run, writes benchmarks/results/envs.md
    python benchmarks/speed/bench_envs.py --quick         # smaller batches, fewer repeats
    python benchmarks/speed/bench_envs.py --only-fast-path  # just the fast-path table, updated in place (~1 min)

It also runs an exactness sweep over 15 MuJoCo envs (snapshots replayed in worker processes).

Times are the minimum over repeats (robust to other jobs sharing the CPU); worker runs are wall
clock. Episodes never end here (no time limit; locomotion envs built with
``terminate_when_unhealthy=False``) so every copy keeps stepping: same physics per step.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pickle
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: machine.py
from dtrl.envs import BatchedEnv, BranchableEnv, default_num_workers, make
from dtrl.tasks import Task, get_task
from machine import cpu_name  # noqa: E402


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: [
        "hopper-medium", "walker2d-medium", "ant-medium", "antmaze-umaze", "door-human", "hammer-human",
        "pen-human", "HalfCheetah-v5"])
    """tasks for the snapshot/restore table (one per env family plus a generic env)"""
    batched_tasks: list[str] = field(default_factory=lambda: ["hopper-medium", "ant-medium"])
    """tasks for the BatchedEnv throughput table"""
    batch_sizes: list[int] = field(default_factory=lambda: [8, 64, 512])
    """numbers of env copies N"""
    workers: list[int] = field(default_factory=lambda: [0, 2])
    """worker-process counts to compare (0: in-process)"""
    env_steps_per_measure: int = 2048
    """env steps (summed over copies) per throughput measurement"""
    repeats: int = 5
    """repeats per measurement (the minimum is reported)"""
    exactness_tasks: list[str] = field(default_factory=lambda: [
        "hopper-medium", "walker2d-medium", "ant-medium", "antmaze-umaze", "door-human", "hammer-human",
        "pen-human", "HalfCheetah-v5", "Humanoid-v5", "HumanoidStandup-v5", "Swimmer-v5", "Reacher-v5",
        "Pusher-v5", "InvertedPendulum-v5", "InvertedDoublePendulum-v5"])
    """tasks for the exactness sweep (all gymnasium MuJoCo v5 envs plus the registry's families)"""
    exactness_steps: int = 300
    """steps replayed after each of 4 snapshots in the exactness sweep"""
    fast_path_task: str = "hopper-medium"
    """task for the fast-path table (BatchedEnv's exact fast path against bare mj_step)"""
    fast_path_envs: int = 256
    """copies N for the fast-path table"""
    fast_path_threads: list[int] = field(default_factory=lambda: [1, 2])
    """BatchedEnv num_threads values for the fast-path table"""
    fast_path_steps: int = 20
    """batched steps per fast-path measurement"""
    only_fast_path: bool = False
    """run only the fast-path table and replace its section in ``out`` (the other tables stay as they are)"""
    quick: bool = False
    """smaller batches and fewer repeats (a smoke run)"""
    out: Path = Path(__file__).resolve().parents[1] / "results" / "envs.md"
    """markdown results file (written atomically)"""


def _benchmark_task(name: str) -> Task:
    """The task without episode ends: no time limit, locomotion envs keep going when they fall."""
    task = dataclasses.replace(get_task(name), max_episode_steps=10**9)
    if task.family in ("hopper", "walker2d", "ant"):
        task = dataclasses.replace(task, env_kwargs={**task.env_kwargs, "terminate_when_unhealthy": False})
    return task


def _best_of(repeats: int, fn, inner: int, clock=time.process_time) -> float:
    """Minimum over ``repeats`` of the mean seconds per call over ``inner`` calls. The default
    clock is this process's CPU time: on a machine shared with other jobs it counts our work, not
    the time spent waiting for a core. Worker runs need ``time.perf_counter`` (wall clock)."""
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        for _ in range(inner):
            fn()
        best = min(best, (clock() - start) / inner)
    return best


def _mujoco_env(env: BranchableEnv):
    """The gymnasium MuJoCo env that owns the model and frame_skip (AntMaze nests an AntEnv)."""
    raw = env.unwrapped_env
    return raw.ant_env if hasattr(raw, "ant_env") else raw


def _raw_env_step_seconds(env: BranchableEnv, repeats: int, clock=time.process_time) -> float:
    """Seconds of bare ``mj_step`` per env step (frame_skip substeps) on a copy of the env's state."""
    inner = _mujoco_env(env)
    data = mujoco.MjData(inner.model)
    state_size = mujoco.mj_stateSize(inner.model, mujoco.mjtState.mjSTATE_INTEGRATION)
    state = np.empty(state_size)
    mujoco.mj_getState(inner.model, inner.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_setState(inner.model, data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
    rng = np.random.default_rng(0)
    low, high = inner.model.actuator_ctrlrange.T

    def one_env_step():
        data.ctrl[:] = rng.uniform(low, high)
        mujoco.mj_step(inner.model, data, nstep=inner.frame_skip)

    return _best_of(repeats, one_env_step, 200, clock)


def bench_snapshots(args: Args) -> list[dict]:
    rows = []
    for name in args.tasks:
        env = make(_benchmark_task(name), seed=0)
        env.reset()
        rng = np.random.default_rng(0)
        for _ in range(20):
            env.step(rng.uniform(-1, 1, env.act_dim).astype(np.float32))
        snapshot = env.snapshot()
        other = make(_benchmark_task(name), seed=1)
        other.reset()
        blob = pickle.dumps(snapshot)
        action = np.zeros(env.act_dim, np.float32)
        # env.step is measured after restoring each time so the state stays bounded
        step_and_restore = _best_of(args.repeats, lambda env=env, action=action, snapshot=snapshot:
                                    (env.step(action), env.restore(snapshot)), 200)
        restore = _best_of(args.repeats, lambda other=other, snapshot=snapshot: other.restore(snapshot), 500)
        raw_env = other.unwrapped_env
        gym_step_and_restore = _best_of(args.repeats,
                                        lambda raw_env=raw_env, action=action, other=other, snapshot=snapshot:
                                        (raw_env.step(action), other.restore(snapshot)), 200)
        rows.append({
            "task": name,
            "env": env.task.env_id,
            "snapshot_us": 1e6 * _best_of(args.repeats, env.snapshot, 500),
            "restore_us": 1e6 * restore,
            "pickle_roundtrip_us": 1e6 * _best_of(args.repeats,
                                                  lambda snapshot=snapshot: pickle.loads(pickle.dumps(snapshot)), 500),
            "bytes": len(blob),
            "env_step_us": 1e6 * (step_and_restore - restore),
            "gym_step_us": 1e6 * (gym_step_and_restore - restore),
            "mj_step_us": 1e6 * _raw_env_step_seconds(env, args.repeats),
        })
        print(rows[-1], flush=True)
        env.close(), other.close()
    return rows


def bench_batched(args: Args) -> list[dict]:
    rows = []
    for name in args.batched_tasks:
        task = _benchmark_task(name)
        probe = make(task, seed=0)
        probe.reset()
        for num_envs in args.batch_sizes:
            for workers in args.workers:
                if workers > num_envs:
                    continue
                # The raw rate is re-measured next to each run so both see the same machine load.
                raw_cpu_rate = 1.0 / _raw_env_step_seconds(probe, args.repeats)
                raw_wall_rate = 1.0 / _raw_env_step_seconds(probe, args.repeats, time.perf_counter)
                with BatchedEnv(task, num_envs, num_workers=workers, seed=0) as envs:
                    envs.reset()
                    snapshots = envs.snapshot()
                    rng = np.random.default_rng(0)
                    actions = rng.uniform(-1, 1, (num_envs, envs.act_dim)).astype(np.float32)
                    batched_steps = max(2, args.env_steps_per_measure // num_envs)

                    def run(batched_steps=batched_steps, actions=actions):
                        for _ in range(batched_steps):
                            envs.step(actions)

                    wall = _best_of(args.repeats, run, 1, time.perf_counter)
                    cpu = _best_of(args.repeats, run, 1) if workers == 0 else float("nan")
                    group = [snapshots[0]] * num_envs
                    restore_s = _best_of(args.repeats, lambda group=group: envs.restore(group), 1, time.perf_counter)
                    snapshot_s = _best_of(args.repeats, envs.snapshot, 1, time.perf_counter)
                rows.append({
                    "task": name, "num_envs": num_envs, "workers": workers,
                    "wall_rate": batched_steps * num_envs / wall, "raw_wall_rate": raw_wall_rate,
                    "wall_ratio": batched_steps * num_envs / wall / raw_wall_rate,
                    "cpu_ratio": batched_steps * num_envs / cpu / raw_cpu_rate,
                    "group_restore_us_per_copy": 1e6 * restore_s / num_envs,
                    "snapshot_all_us_per_copy": 1e6 * snapshot_s / num_envs,
                })
                print(rows[-1], flush=True)
        probe.close()
    return rows


def bench_fast_path(args: Args) -> list[dict]:
    """BatchedEnv in one process (no workers) against bare ``mj_step`` on the same copies, for the
    per-env path and the fast path with each thread count."""
    variants = [("per-env (fast=False)", False, 1)] + [(f"fast path, {t} thread{'s' * (t > 1)}", True, t)
                                                       for t in args.fast_path_threads]
    rows = []
    for label, fast, threads in variants:
        rows.append(_fast_path_row(args, label, fast, threads))
        print(rows[-1], flush=True)
    return rows


def _fast_path_row(args: Args, label: str, fast: bool, threads: int) -> dict:
    """Each repeat restores the N copies to one set of snapshots, runs ``fast_path_steps`` batched
    steps of random actions, then restores again and runs the same actions through a bare loop
    ``data.ctrl[:] = a; mj_step(model, data, nstep=frame_skip)`` over the same ``MjData`` objects.
    Both simulate the same states, so the ratio is pure overhead. Wall clock and this process's CPU
    time (all threads) are both kept; the bare loop uses one core."""
    task = _benchmark_task(args.fast_path_task)
    count, steps = args.fast_path_envs, args.fast_path_steps
    best = {"batched_wall": float("inf"), "batched_cpu": float("inf"),
            "bare_wall": float("inf"), "bare_cpu": float("inf")}
    with BatchedEnv(task, count, num_workers=0, seed=0, fast=fast, num_threads=threads) as envs:
        if envs.uses_fast_path != fast:
            raise RuntimeError(f"{task.name}: expected uses_fast_path={fast}")
        envs.reset()
        start = envs.snapshot()
        actions = np.random.default_rng(0).uniform(-1, 1, (steps, count, envs.act_dim)).astype(np.float32)
        raws = [_mujoco_env(env) for env in envs._local.envs]
        copies = [(raw.model, raw.data, raw.data.ctrl) for raw in raws]
        frame_skip = raws[0].frame_skip

        def batched():
            for step_actions in actions:
                envs.step(step_actions)

        def bare():
            for step_actions in actions:
                for (model, data, ctrl), action in zip(copies, step_actions):
                    ctrl[:] = action
                    mujoco.mj_step(model, data, nstep=frame_skip)

        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            for name, fn in (("batched", batched), ("bare", bare)):
                envs.restore(start)
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                best[f"{name}_wall"] = min(best[f"{name}_wall"], time.perf_counter() - wall)
                best[f"{name}_cpu"] = min(best[f"{name}_cpu"], time.process_time() - cpu)
    env_steps = steps * count
    return {
        "task": args.fast_path_task, "num_envs": count, "variant": label,
        "rate": env_steps / best["batched_wall"], "bare_rate": env_steps / best["bare_wall"],
        "wall_ratio": best["bare_wall"] / best["batched_wall"], "cpu_ratio": best["bare_cpu"] / best["batched_cpu"],
    }


def fast_path_section(args: Args, rows: list[dict]) -> str:
    model = cpu_name()
    return f"""## BatchedEnv fast path against bare mj_step

- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {model},
  {_usable_cpus()} CPU cores usable; mujoco {mujoco.__version__}
- command: `python benchmarks/speed/bench_envs.py{' --only-fast-path' if args.only_fast_path else ''}`

`BatchedEnv({args.fast_path_task}, {args.fast_path_envs}, num_workers=0)`, {args.fast_path_steps} steps of random
float32 actions, no policy, episodes never end; `bare mj_step`: `data.ctrl[:] = a; mj_step(model, data,
nstep=frame_skip)` over the same copies from the same states, one core. `ratio`: bare time / BatchedEnv
time, wall clock (above 1 needs threads on free cores); `CPU ratio`: the same with this process's CPU
time (all its threads), i.e. the share of the work that is MuJoCo's. Best of {args.repeats} interleaved repeats.
The fast path is bit-identical to the per-env path (tests/test_fast_envs.py).

{_table(rows, [("task", "task", "s"), ("num_envs", "N", "d"), ("variant", "BatchedEnv", "s"),
               ("rate", "env steps/s", ".0f"), ("bare_rate", "bare mj_step env steps/s", ".0f"),
               ("wall_ratio", "ratio", ".2f"), ("cpu_ratio", "CPU ratio", ".2f")])}
"""


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _replace_section(text: str, section: str) -> str:
    """``text`` with the section titled like ``section`` replaced by it (inserted before the
    exactness sweep, or appended, if absent)."""
    title = section.splitlines()[0]
    if title in text:
        start = text.index(title)
        end = text.find("\n## ", start + len(title))
        return text[:start] + section + (text[end:] if end >= 0 else "")
    marker = "## Exactness sweep"
    if marker in text:
        at = text.index(marker)
        return text[:at] + section + "\n" + text[at:]
    return text.rstrip("\n") + "\n\n" + section


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)
    print(f"wrote {path}")


def check_exactness(args: Args) -> list[dict]:
    """Not a speed number: for each task take 4 snapshots at random points of one episode (smooth,
    policy-like actions), record the next ``exactness_steps`` steps under noisy actions, then replay
    all 4 in worker processes from the pickled snapshots and compare bit for bit."""
    rows = []
    for name in args.exactness_tasks:
        task = dataclasses.replace(_benchmark_task(name), max_episode_steps=get_task(name).max_episode_steps)
        if name == "Humanoid-v5":  # falls within ~25 random steps otherwise
            task = dataclasses.replace(task, env_kwargs={"terminate_when_unhealthy": False})
        source = make(task, seed=0)
        source.reset()
        rng = np.random.default_rng(1)
        action = np.zeros(source.act_dim)
        snapshots, futures = [], []
        for _ in range(4):
            for _ in range(rng.integers(5, 60)):
                action = np.clip(0.9 * action + 0.3 * rng.normal(size=source.act_dim), -1, 1)
                if any(source.step(action)[2:4]):
                    source.reset()
            snapshot = source.snapshot()
            actions, recorded = [], []
            for _ in range(args.exactness_steps):
                actions.append(np.clip(rng.normal(size=source.act_dim), -1, 1))
                obs, reward, terminated, truncated, _ = source.step(actions[-1])
                recorded.append((obs, reward, terminated, truncated))
                if terminated or truncated:
                    break
            snapshots.append(snapshot)
            futures.append((actions, recorded))
            source.restore(snapshot)
        exact, compared = True, 0
        with BatchedEnv(task, len(snapshots), num_workers=2) as envs:
            envs.restore([pickle.loads(pickle.dumps(snapshot)) for snapshot in snapshots])
            for k in range(max(len(recorded) for _, recorded in futures)):
                step_actions = np.zeros((envs.num_envs, envs.act_dim))
                active = np.array([k < len(recorded) for _, recorded in futures])
                for i, (actions, _recorded) in enumerate(futures):
                    if active[i]:
                        step_actions[i] = actions[k]
                obs, rewards, terminated, truncated = envs.step(step_actions, active)
                for i in np.flatnonzero(active):
                    expected = futures[i][1][k]
                    compared += 1
                    exact &= bool(np.array_equal(obs[i], expected[0]) and rewards[i] == expected[1]
                                  and terminated[i] == expected[2] and truncated[i] == expected[3])
        rows.append({"task": name, "env": task.env_id, "steps_compared": compared, "exact": "yes" if exact else "NO"})
        print(rows[-1], flush=True)
    return rows


def bench_pipe_round_trip(args: Args) -> float:
    """Seconds for one message to every worker and back, with no env work (an empty snapshot
    request per worker): the fixed cost a worker adds to each BatchedEnv call."""
    with BatchedEnv("hopper-medium", 2, num_workers=2) as envs:
        envs.reset()
        # A private call on purpose: the public API skips workers that have nothing to do.
        return _best_of(args.repeats, lambda: envs._call("snapshot", {0: ([],), 1: ([],)}), 200, time.perf_counter)


def _range(values: list[float], fmt: str = ".1f") -> str:
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}" if values else "n/a"


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = ["-" if isinstance(row[key], float) and np.isnan(row[key]) else format(row[key], fmt)
                 for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(args: Args, snapshot_rows: list[dict], batched_rows: list[dict], round_trip_s: float,
                 fast_rows: list[dict], exactness_rows: list[dict], seconds: float) -> None:
    cpus = _usable_cpus()
    python = f"{platform.python_implementation()} {platform.python_version()}"
    default_workers = {n: default_num_workers(n) for n in (8, 64, 512)}
    text = f"""# dtrl.envs benchmark

- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC
- machine: {platform.machine()}, {cpus} CPU cores usable, no GPU, {python},
  mujoco {mujoco.__version__}; **shared with other jobs** (several helpers running tests at the same time), so
  timings are noisy: each number is the minimum over {args.repeats} repeats (worker runs: wall clock).
- command: `python benchmarks/speed/bench_envs.py{' --quick' if args.quick else ''}` ({seconds:.0f} s)
- default_num_workers here: N=8 -> {default_workers[8]}, N=64 -> {default_workers[64]}, N=512 -> {default_workers[512]}

## Summary (computed from the tables below)

- snapshot + restore together cost {_range([100 * (r["snapshot_us"] + r["restore_us"]) / r["env_step_us"]
                                            for r in snapshot_rows])} % of one env step
  (CPU time); a pickled snapshot is {_range([r["bytes"] for r in snapshot_rows], ".0f")} bytes.
- our wrapper adds {_range([r["env_step_us"] - r["gym_step_us"]
                            for r in snapshot_rows])} us per step over the gymnasium env's own step
  (noise level: some rows come out negative).
- in-process BatchedEnv reaches {_range([r["cpu_ratio"] for r in batched_rows if r["workers"] == 0], ".2f")} of the bare
  `mj_step` rate in CPU terms (Hopper and Ant take the fast path; the fast-path table compares it
  with the per-env path).
- 2 workers vs in-process on this shared 2-core machine (wall clock, same task and N):
  {_range([w["wall_rate"] / i["wall_rate"] for w in batched_rows for i in batched_rows
           if w["workers"] > 0 and i["workers"] == 0
           and (w["task"], w["num_envs"]) == (i["task"], i["num_envs"])], ".2f")} x;
  workers need free cores, hence `default_num_workers` = 0 on machines with 1-2 cores.
- exactness sweep: {sum(r["exact"] == "yes" for r in exactness_rows)} of {len(exactness_rows)} envs bit-exact over
  {sum(r["steps_compared"] for r in exactness_rows)} compared steps.

## Snapshot / restore cost per env family

CPU time of this process (min over repeats). `env step`: `BranchableEnv.step`; `gymnasium env step`:
the raw env's own `step` (so the difference is our wrapper); `raw mj_step`: bare `mj_step` for the
same number of substeps (frame_skip) on the same model.

{_table(snapshot_rows, [("task", "task", "s"), ("env", "env id", "s"), ("snapshot_us", "snapshot (us)", ".1f"),
                        ("restore_us", "restore (us)", ".1f"), ("pickle_roundtrip_us", "pickle+unpickle (us)", ".1f"),
                        ("bytes", "pickled bytes", "d"), ("env_step_us", "env step (us)", ".1f"),
                        ("gym_step_us", "gymnasium env step (us)", ".1f"),
                        ("mj_step_us", "raw mj_step x frame_skip (us)", ".1f")])}

## BatchedEnv throughput

Env steps/s of `BatchedEnv.step` (all copies active, random actions), wall clock, against the rate of
bare `mj_step` x frame_skip on one core for the same model, re-measured just before each row (`ratio`,
wall clock; noisy here). `CPU ratio` (in-process rows only) uses this process's CPU time for both,
so it shows the Python overhead without the machine's load: a ratio of 1 would mean no overhead over
MuJoCo. A wall ratio above 1 needs worker processes on free cores. `group restore`:
`restore([snap] * N)` (a GRPO group) and `snapshot all`: `snapshot()`, per copy, wall clock.
Fixed cost of one call to 2 workers and back (no env work): {1e6 * round_trip_s:.0f} us (wall clock).

{_table(batched_rows, [("task", "task", "s"), ("num_envs", "N", "d"), ("workers", "workers", "d"),
                       ("wall_rate", "env steps/s", ".0f"),
                       ("raw_wall_rate", "raw mj_step env steps/s", ".0f"),
                       ("wall_ratio", "ratio", ".2f"), ("cpu_ratio", "CPU ratio", ".2f"),
                       ("group_restore_us_per_copy", "group restore (us/copy)", ".1f"),
                       ("snapshot_all_us_per_copy", "snapshot all (us/copy)", ".1f")])}

{fast_path_section(args, fast_rows)}"""
    text += f"""
## Exactness sweep (correctness, not speed)

For each env: 4 snapshots at random points of an episode, the next {args.exactness_steps} steps recorded
(fewer if the episode ends), then replayed from the pickled snapshots in 2 worker processes and compared
bit for bit (observations, rewards, terminated, truncated). Locomotion envs and Humanoid-v5 run with
`terminate_when_unhealthy=False` so that they last; the Inverted*Pendulum episodes end within a few
random steps.

{_table(exactness_rows, [("task", "task", "s"), ("env", "env id", "s"), ("steps_compared", "steps compared", "d"),
                         ("exact", "bit-exact", "s")])}
"""
    _write_atomically(args.out, text)


def main() -> None:
    args = tyro.cli(Args)
    if args.quick:
        args.batch_sizes = [size for size in args.batch_sizes if size <= 64]
        args.repeats = 2
        args.env_steps_per_measure = 256
        args.exactness_steps = 50
    if args.only_fast_path:
        section = fast_path_section(args, bench_fast_path(args))
        _write_atomically(args.out, _replace_section(args.out.read_text() if args.out.exists() else "", section))
        return
    started = time.perf_counter()
    snapshot_rows = bench_snapshots(args)
    batched_rows = bench_batched(args)
    round_trip_s = bench_pipe_round_trip(args)
    print(f"pipe round trip: {1e6 * round_trip_s:.0f} us")
    fast_rows = bench_fast_path(args)
    exactness_rows = check_exactness(args)
    write_report(args, snapshot_rows, batched_rows, round_trip_s, fast_rows, exactness_rows,
                 time.perf_counter() - started)


if __name__ == "__main__":
    main()
