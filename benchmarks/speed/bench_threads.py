"""Torch thread counts for the cpu presets: is the default ever pathological? (reliability issue)

    nice python benchmarks/speed/bench_threads.py [--data data/hopper-random.hdf5] [--pretrained runs/pretrain-...]

Times a short run of every training command's cpu preset with ``--threads 1`` and with torch's default
(``--threads 0``: one thread per core), on an otherwise idle machine and beside one busy process (a
pure-Python loop on one core, what a second experiment looks like), and prints a markdown table with
each preset's own default marked. The goal: no default more than 1.5x slower than the best choice.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: machine.py
from machine import cpu_name, ensure_inputs  # noqa: E402

COMMANDS = {
    "pretrain": ["pretrain", "--steps", "200"],
    "grpo": ["finetune", "--algo", "grpo", "--iterations", "3"],
    "grpo-q": ["finetune", "--algo", "grpo-q", "--iterations", "4"],
    "ppo": ["finetune", "--algo", "ppo", "--iterations", "2"],
    "odt": ["finetune", "--algo", "odt", "--iterations", "2"],
    "odt-td3": ["finetune", "--algo", "odt-td3", "--iterations", "1", "--min-transitions-per-iteration", "0"],
    "iql": ["finetune", "--algo", "iql", "--iterations", "1", "--offline-steps", "500"],
    "sb3-sac": ["finetune", "--algo", "sb3-sac", "--iterations", "3", "--learning-starts", "500"],
}
NEEDS = {"pretrain": ["--dataset"], "grpo": ["--init"], "grpo-q": ["--init"], "ppo": ["--init"],
         "odt": ["--init", "--dataset"], "odt-td3": ["--init", "--dataset"], "iql": ["--dataset"]}


def busy() -> None:
    while True:
        pass


def run(name: str, threads: int, args: argparse.Namespace, out: Path) -> float:
    inputs = []
    for flag in NEEDS.get(name, []):
        inputs += [flag, str(args.pretrained if flag == "--init" else args.data)]
    argv = [sys.executable, "-m", "dtrl", *COMMANDS[name], "--task", args.task, "--preset", "cpu", "--device", "cpu",
            "--eval-every", "0", "--eval-episodes", "1", "--threads", str(threads), "--out", str(out), *inputs]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="hopper-random")
    parser.add_argument("--data", type=Path, default=Path("data/hopper-random.hdf5"))
    parser.add_argument("--pretrained", type=Path, default=Path("runs/pretrain-hopper-random-cpu"))
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    args = parser.parse_args()
    ensure_inputs(args.task, args.data, args.pretrained)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for load in (False, True):
            worker = mp.Process(target=busy, daemon=True) if load else None
            if worker:
                worker.start()
            try:
                for name in args.commands:
                    times = {threads: run(name, threads, args, Path(scratch) / f"{name}-{threads}-{load}")
                             for threads in (1, 0)}
                    rows.append((name, load, times))
                    print(f"{name} {'loaded' if load else 'idle'}: {times}", file=sys.stderr, flush=True)
            finally:
                if worker:
                    worker.terminate()
    print(f"date: {datetime.date.today().isoformat()}; machine: {cpu_name()}, {os.cpu_count()} cores; "
          f"command: python benchmarks/speed/bench_threads.py {' '.join(sys.argv[1:])}\n")
    print("| command | machine | --threads 1 (s) | torch default (s) | default / best |")
    print("|---|---|---:|---:|---:|")
    for name, load, times in rows:
        # every cpu preset now defaults to one thread
        print(f"| {name} | {'one busy process beside it' if load else 'idle'} | {times[1]:.1f} | {times[0]:.1f} | "
              f"{times[1] / min(times.values()):.2f} |")


if __name__ == "__main__":
    main()
