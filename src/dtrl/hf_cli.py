"""``dtrl hf import | export``: a Hugging Face DecisionTransformerModel as a dtrl policy folder and
back. The command's options, checks and output live here; the conversion itself (weights, the
``dtrl_state_stats.json`` beside an HF model) is ``dtrl.models.huggingface``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dtrl.data.cli import parse_with_positional
from dtrl.errors import DtrlError
from dtrl.models.checkpoint import check_task_dims, save_policy
from dtrl.models.huggingface import (
    DEFAULT_CONTEXT_LENGTH,
    StateStats,
    from_huggingface,
    load_hf_model,
    save_huggingface,
)
from dtrl.models.loading import load_policy


@dataclass
class ImportConfig:
    """``dtrl hf import SOURCE --task T --out DIR``: a Hugging Face DecisionTransformerModel as a dtrl policy
    folder (for ``dtrl finetune --init DIR`` and ``dtrl eval``; ``--init hf:SOURCE`` does the same on the fly
    when a dtrl_state_stats.json is beside the model)."""

    source: str = ""
    """a Hugging Face model id (edbeeching/decision-transformer-gym-hopper-medium) or a local folder"""
    task: str = ""
    """the dtrl task the model acts in (its env must have the model's state/action sizes)"""
    out: str = ""
    """policy folder to write"""
    dataset: str | None = None
    """dataset to compute the state mean/std from (as the DT code did): .hdf5, Minari id or folder"""
    state_stats: str | None = None
    """instead of --dataset: a JSON file with "state_mean" and "state_std" lists (optional "reward_scale",
    "context_length"), as in the HF example and model cards"""
    context_length: int | None = None
    """K the model was trained with (default: --state-stats' context_length, else 20 as in the DT examples)"""
    reward_scale: float | None = None
    """returns-to-go are divided by this before entering the model (default: --state-stats' reward_scale,
    else the task's; the HF examples use 1000 on MuJoCo)"""
    policy: Literal["gaussian", "deterministic"] = "gaussian"
    """'gaussian' adds a Gaussian head around the HF action (what RL finetuning needs); 'deterministic' keeps it"""
    init_log_std: float = -1.0
    """the Gaussian head's initial log standard deviation (pre-tanh), the same for every state"""
    force: bool = False
    """replace --out if it holds something"""


@dataclass
class ExportConfig:
    """``dtrl hf export POLICY --out DIR``: a dtrl Decision Transformer as a Hugging Face
    DecisionTransformerModel folder (config.json + model.safetensors, dtrl_state_stats.json with the
    target RTG and context ``dtrl eval hf:DIR`` uses, and README.md, the model card)."""

    source: str = ""
    """a dtrl policy folder or run folder"""
    out: str = ""
    """folder to write (save_pretrained layout)"""
    force: bool = False
    """replace --out if it holds something"""


USAGE = """usage: dtrl hf {import,export} ...

  import SOURCE --task T --out DIR (--dataset D | --state-stats FILE) [--context-length K] [--reward-scale S]
         a Hugging Face DecisionTransformerModel (hub id or folder) as a dtrl policy folder
  export POLICY --out DIR
         a dtrl Decision Transformer as a Hugging Face DecisionTransformerModel folder

--init hf:DIR and dtrl eval hf:DIR load a Hugging Face model directly when dtrl_state_stats.json
(state_mean, state_std, reward_scale, context_length, task, target_rtg) lies beside it; dtrl hf export
writes one, and README.md, a model card.
dtrl hf import --help / dtrl hf export --help list every option."""


def _check_out(out: str, force: bool) -> Path:
    if not out:
        raise DtrlError("--out is required")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
        raise DtrlError(f"{path} already exists and is not empty: choose another --out or pass --force")
    return path


def _check_import_options(config: ImportConfig) -> None:
    if not config.task:
        raise DtrlError("--task is required (see dtrl tasks)")
    if config.reward_scale is not None and not (math.isfinite(config.reward_scale) and config.reward_scale > 0):
        raise DtrlError(f"--reward-scale must be a positive number, got {config.reward_scale}")
    if config.context_length is not None and config.context_length < 1:
        raise DtrlError(f"--context-length must be >= 1, got {config.context_length}")
    if (config.dataset is None) == (config.state_stats is None):
        raise DtrlError("give exactly one of --dataset and --state-stats: the model expects normalised states "
                        "and its Hugging Face config does not say how they were normalised")


def import_policy(config: ImportConfig) -> Path:
    """``dtrl hf import``: write the Hugging Face model ``config.source`` as a dtrl policy folder."""
    from dtrl.data import StateNormalizer, load_dataset
    from dtrl.tasks import get_task

    _check_import_options(config)
    task = get_task(config.task)
    out = _check_out(config.out, config.force)
    hf_model = load_hf_model(config.source)
    state_dim = hf_model.config.state_dim
    check_task_dims(task, state_dim, hf_model.config.act_dim, Path(config.source))
    if config.state_stats is not None:
        stats = StateStats.read(Path(config.state_stats), state_dim)
    else:
        normalizer = StateNormalizer.from_trajectories(load_dataset(config.dataset, task).trajectories)
        stats = StateStats(normalizer.mean, normalizer.std)
    context = config.context_length or stats.context_length or DEFAULT_CONTEXT_LENGTH
    reward_scale = config.reward_scale if config.reward_scale is not None else stats.reward_scale
    model = from_huggingface(hf_model, context, config.policy, config.init_log_std)
    return save_policy(out, model, StateNormalizer(stats.state_mean, stats.state_std), task.name,
                       reward_scale=reward_scale,
                       extra={"imported_from": f"huggingface:{config.source}", "eval_context_length": context})


def export_policy(config: ExportConfig) -> Path:
    """``dtrl hf export``: write the dtrl policy ``config.source`` as a Hugging Face model folder."""
    out = _check_out(config.out, config.force)
    return save_huggingface(out, load_policy(Path(config.source)), score=_run_score(Path(config.source)))


def _run_score(source: Path) -> dict | None:
    """The final evaluation of the run ``source`` (its final.json) for the model card; None for a policy
    folder or an unfinished run."""
    import json

    final = source / "final.json"
    try:
        return json.loads(final.read_text()) if final.is_file() else None
    except (OSError, ValueError):
        return None


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "import":
        config = parse_with_positional(ImportConfig, rest, "source", "SOURCE", "dtrl hf import",
                                       ImportConfig.__doc__)
        print(f"wrote {import_policy(config)}")
        return 0
    if command == "export":
        config = parse_with_positional(ExportConfig, rest, "source", "POLICY", "dtrl hf export", ExportConfig.__doc__)
        print(f"wrote {export_policy(config)}")
        return 0
    raise DtrlError(f"unknown hf command {command!r} (choose from import, export)")
