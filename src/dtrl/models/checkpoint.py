"""The on-disk policy format: a directory with

  model.safetensors   the model's tensors (safetensors: no pickle, loadable by other tools)
  model.json          how to rebuild it: ModelConfig, architecture, state/action dims, task, reward
                      scale, dtrl version, plus whatever ``extra`` the trainer adds (algo, iteration...)
  normalizer.json     the state normaliser's mean/std

``save_policy`` writes all three into a temporary sibling directory and swaps it in with renames, so a
crash never leaves a half-written policy; ``load_policy`` accepts the policy directory or a run
directory (``RUN/policy``) and checks the model fits the task it will be run on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dtrl
from dtrl.config import ModelConfig, from_dict, to_dict
from dtrl.errors import DtrlError

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
NORMALIZER_FILE = "normalizer.json"
FORMAT_VERSION = 1


@dataclass
class LoadedPolicy:
    """A policy ready to roll out: the model (eval mode) and what its inputs need."""

    model: Any
    """DecisionTransformer or Reinformer, on the requested device, in eval mode"""
    normalizer: Any
    """dtrl.data.StateNormalizer the model's states were normalised with"""
    reward_scale: float
    """returns-to-go are divided by this before entering the model"""
    task_name: str
    """the task the policy was trained on"""
    meta: dict = field(default_factory=dict)
    """everything in model.json (including the trainer's ``extra``)"""


def save_policy(directory, model, normalizer, task_name: str, extra: dict | None = None) -> Path:
    """Write ``model`` + ``normalizer`` to ``directory`` (replacing it atomically); returns the path."""
    from safetensors.torch import save_file

    from dtrl.tasks import get_task

    directory = Path(directory)
    meta = {
        "format_version": FORMAT_VERSION,
        "dtrl_version": dtrl.__version__,
        "architecture": model.config.architecture,
        "model": to_dict(model.config),
        "state_dim": model.state_dim,
        "act_dim": model.act_dim,
        "task": task_name,
        "reward_scale": float(get_task(task_name).reward_scale),
        "extra": dict(extra or {}),
    }
    # safetensors refuses tensors that share memory; clone-free contiguous CPU copies are enough
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(tensors, str(staging / MODEL_FILE))
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        (staging / NORMALIZER_FILE).write_text(json.dumps(normalizer.to_dict()))
        for name in (MODEL_FILE, META_FILE, NORMALIZER_FILE):
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        if directory.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.rename(directory, retired / directory.name)
            os.rename(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _policy_directory(path: Path) -> Path:
    if (path / META_FILE).is_file():
        return path
    if (path / "policy" / META_FILE).is_file():
        return path / "policy"
    if not path.exists():
        raise DtrlError(f"no policy at {path}: the path does not exist")
    raise DtrlError(f"no policy at {path}: expected {META_FILE} there or in {path / 'policy'}")


def load_policy(path, task=None, device: str = "cpu") -> LoadedPolicy:
    """Load a policy directory (or ``RUN/policy``). With ``task`` (a Task or its name), refuse a model
    whose state/action sizes differ from that task's environment."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from dtrl.data import StateNormalizer
    from dtrl.models import build_model

    directory = _policy_directory(Path(path))
    try:
        meta = json.loads((directory / META_FILE).read_text())
        normalizer = StateNormalizer.from_dict(json.loads((directory / NORMALIZER_FILE).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise DtrlError(f"cannot read the policy in {directory}: {exc}") from None
    if meta.get("architecture") not in ("dt", "reinformer"):
        raise DtrlError(f"{directory} holds a {meta.get('architecture')!r} policy, not a Decision Transformer")
    try:
        config = from_dict(ModelConfig, meta["model"])
        state_dim, act_dim = int(meta["state_dim"]), int(meta["act_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DtrlError(f"{directory / META_FILE} is malformed (missing or bad {exc})") from None

    if task is not None:
        _check_task_dims(task, state_dim, act_dim, directory)
    if normalizer.obs_dim != state_dim:
        raise DtrlError(f"{directory}: normaliser has {normalizer.obs_dim} dims but the model takes {state_dim}")

    model = build_model(config, state_dim, act_dim)
    try:
        state = load_file(str(directory / MODEL_FILE), device="cpu")
        model.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DtrlError(f"cannot load the weights in {directory / MODEL_FILE}: {first_line}") from None
    model.to(device).eval()
    return LoadedPolicy(model, normalizer, float(meta.get("reward_scale", 1.0)), str(meta.get("task", "")), meta)


def _check_task_dims(task, state_dim: int, act_dim: int, directory: Path) -> None:
    from dtrl.envs import make
    from dtrl.tasks import get_task

    task = get_task(task) if isinstance(task, str) else task
    env = make(task)
    try:
        env_obs, env_act = env.obs_dim, env.act_dim
    finally:
        env.close()
    if (env_obs, env_act) != (state_dim, act_dim):
        raise DtrlError(
            f"the policy in {directory} takes obs dim {state_dim} / action dim {act_dim}, but task "
            f"{task.name} has obs dim {env_obs} / action dim {env_act}"
        )
