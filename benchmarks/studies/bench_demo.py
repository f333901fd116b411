"""`dtrl demo` as a newcomer runs it: wall time and the gain of the finetuned policy over the pretrained
DT on the same 10 evaluation episodes, per seed (issue 39's bar: <= 10 minutes on an idle 2-core
machine and >= +20 normalised on each of seeds 0, 1, 2).

    python benchmarks/studies/bench_demo.py --seeds 0 1 2 [--algo ppo] [--write] [--note "..."]

Each seed runs `dtrl demo --seed S --out runs/demo_bench/<algo>/seedS --force` in its own process, one
after the other, and reads its `demo_results.json`. ``--write`` adds the table (date, machine, commit,
command, load note) as a new section of benchmarks/results/demo.md, newest first; the README quotes it.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from dtrl.demo import DEMO_FINETUNING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: machine.py
from machine import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "demo.md"
HEADER = ("# `dtrl demo`, measured\n\nEach section: one `dtrl demo` per seed (a fresh `--out`, every stage from "
          "scratch), made by `benchmarks/studies/bench_demo.py`; newest first. *Before* and *after* are the "
          "pretrained DT and the finetuned policy on the same 10 evaluation episodes at the finetuned "
          "policy's RTG; *minutes* is the demo's own total (dataset, pretraining, finetuning, evaluation, "
          "report, video).\n")
GAIN_BAR, MINUTES_BAR = 20.0, 10.0


@dataclass
class Args:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    algo: str = "ppo"
    """the demo's --algo"""
    out_root: str = "runs/demo_bench"
    write: bool = False
    """add the results as a new section of benchmarks/results/demo.md"""
    note: str = ""
    """what else ran on the machine (the bar is for an idle one)"""
    extra: list[str] = field(default_factory=list)
    """more `dtrl demo` flags, e.g. --extra=--no-video"""


def run_demo(args: Args, seed: int) -> dict:
    out = Path(args.out_root) / args.algo / f"seed{seed}"
    dtrl = Path(sys.executable).with_name("dtrl")
    command = [str(dtrl), "demo", "--algo", args.algo, "--seed", str(seed), "--out", str(out), "--force", *args.extra]
    started = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "demo_results.json").read_text())
    label = DEMO_FINETUNING[args.algo]["label"]
    before, after = summary["pretrained DT"]["eval_normalized_mean"], summary[label]["eval_normalized_mean"]
    return {"seed": seed, "label": label, "before": before, "after": after, "gain": after - before,
            "minutes": summary["minutes"], "process_minutes": (time.time() - started) / 60,
            "video": summary["video"] is not None}


def table(rows: list[dict]) -> str:
    lines = ["| seed | before | after | gain | minutes | video |", "|---:|---:|---:|---:|---:|:--:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['before']:.1f} | {r['after']:.1f} | {r['gain']:+.1f} | "
                     f"{r['minutes']:.1f} | {'yes' if r['video'] else 'no'} |")
    met = all(r["gain"] >= GAIN_BAR for r in rows) and all(r["minutes"] <= MINUTES_BAR for r in rows)
    lines.append(f"\nBar (>= +{GAIN_BAR:.0f} on every seed, <= {MINUTES_BAR:.0f} minutes each): "
                 f"**{'met' if met else 'not met'}**.")
    return "\n".join(lines)


def current_commit() -> str:
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()


def section(args: Args, rows: list[dict], commit: str) -> str:
    label = rows[0]["label"] if rows else args.algo
    flags = " ".join([f"--seeds {' '.join(map(str, args.seeds))}", f"--algo {args.algo}",
                      *(f"--extra={e}" for e in args.extra)])
    return "\n".join([f"## {label}, {datetime.date.today().isoformat()}, {cpu_name()} ({os.cpu_count()} cores), "
                      f"dtrl {commit}", "",
                      f"Command: `python benchmarks/studies/bench_demo.py {flags} --write`.",
                      *([f"Machine load: {args.note}"] if args.note else []), "", table(rows), ""])


def main() -> None:
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    commit = current_commit()  # what the demos run (the repository may move on while they do)
    rows = []
    for seed in args.seeds:
        rows.append(run_demo(args, seed))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.write:
        text = RESULTS.read_text() if RESULTS.exists() else HEADER
        head, _, rest = text.partition("\n## ")
        RESULTS.write_text(head.rstrip() + "\n\n" + section(args, rows, commit) + ("\n## " + rest if rest else ""))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
