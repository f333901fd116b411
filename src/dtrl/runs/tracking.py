"""Weights & Biases tracking (``--track``): the install check and the W&B run that mirrors a run's
TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

from dtrl.errors import DtrlError


def _check_tracking(config: dict) -> None:
    if config.get("track"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise DtrlError("--track logs to Weights & Biases, which is not installed: "
                            "pip install 'dtrl[wandb]'") from None


def _start_wandb(path: Path, config: dict):
    """A W&B run that mirrors the run's TensorBoard scalars (CleanRL's ``sync_tensorboard``), resumed
    under the same id after a crash; its files live in RUN/wandb."""
    import wandb

    run_info = config.get("run_info", {})
    return wandb.init(project=config.get("wandb_project") or "dtrl", entity=config.get("wandb_entity"),
                      id=run_info.get("wandb_id"), resume="allow", name=path.name, dir=str(path),
                      config={k: v for k, v in config.items() if k != "run_info"}, sync_tensorboard=True)
