"""What the scripts of speed/ and studies/ share: what a result records about the machine it ran on,
and the inputs (a dataset, a pretrained DT) a run needs on that machine.

A script in a subfolder imports it after putting this folder on ``sys.path``::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: machine.py
    from machine import cpu_name  # noqa: E402
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ensure_inputs(task: str, data: Path, pretrained: Path) -> None:
    """Make what is missing with the CLI: ``data`` (``dtrl data build``, 200k transitions), then the
    cpu-preset DT ``pretrained`` (``dtrl pretrain --preset cpu``) unless its policy is already there."""
    from dtrl.cli import main as dtrl

    if not (pretrained / "policy" / "model.safetensors").is_file():
        if not data.is_file():
            print(f"building {data}", flush=True)
            if dtrl(["data", "build", task, "--out", str(data), "--transitions", "200000"]) != 0:
                raise SystemExit("dtrl data build failed")
        print(f"pretraining {pretrained}", flush=True)
        if dtrl(["pretrain", "--task", task, "--preset", "cpu", "--dataset", str(data),
                 "--out", str(pretrained)]) != 0:
            raise SystemExit("dtrl pretrain failed")
