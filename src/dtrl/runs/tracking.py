"""Weights & Biases tracking (``--track``): the install check, the W&B run, and one W&B history row per
metrics.jsonl row.

The W&B run's files live in ``RUN/wandb/`` (``wandb sync RUN/wandb/offline-run-*`` uploads an offline
run). It is logged directly, not mirrored from TensorBoard: ``sync_tensorboard`` watched the run folder,
which holds that ``wandb/`` folder, so W&B copied the event file into its own files, found the copy,
copied it again (43 nested copies after a short run) and logged each copy's scalars again (48 history rows
for 3 iterations); ``tensorboard --logdir runs/`` then listed every copy as a run. Now ``RUN/wandb/``
holds no event file, which is all TensorBoard looks for (a file named ``*tfevents*``), so it lists one run
per run folder, and W&B's history has one row per logged iteration, with ``iteration`` as its x axis.
"""

from __future__ import annotations

import math
from pathlib import Path

from dtrl.errors import DtrlError

WANDB_DIR = "wandb"
"""the folder inside the run folder that holds the W&B run's files (``wandb.init(dir=RUN)`` makes it)"""


def _check_tracking(config: dict) -> None:
    if config.get("track"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise DtrlError("--track logs to Weights & Biases, which is not installed: "
                            "pip install 'dtrl[wandb]'") from None


def _start_wandb(path: Path, config: dict):
    """A W&B run for the run folder ``path``, resumed under the same id after a crash; its files live in
    RUN/wandb. Rows come from ``log_to_wandb``; every metric is plotted against ``iteration``."""
    import wandb

    run_info = config.get("run_info", {})
    run = wandb.init(project=config.get("wandb_project") or "dtrl", entity=config.get("wandb_entity"),
                     id=run_info.get("wandb_id"), resume="allow", name=path.name, dir=str(path),
                     config={k: v for k, v in config.items() if k != "run_info"}, sync_tensorboard=False)
    run.define_metric("iteration")
    run.define_metric("*", step_metric="iteration")
    return run


def log_to_wandb(run, row: dict) -> None:
    """One W&B history row: the finite numbers of one metrics.jsonl row (``iteration`` included). After a
    resume the iterations past the checkpoint are logged again, as metrics.jsonl keeps only the new ones;
    plotted against ``iteration`` they overlay the crashed run's."""
    scalars = {key: value for key, value in row.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
    run.log(scalars)
