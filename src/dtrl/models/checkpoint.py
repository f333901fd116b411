"""The on-disk policy format: a directory with

  model.safetensors   the model's tensors (safetensors: no pickle, loadable by other tools)
  model.json          how to rebuild it: ModelConfig, architecture, state/action dims, task, reward
                      scale, dtrl version, plus whatever ``extra`` the trainer adds (algo, iteration...)
  normalizer.json     the state normaliser's mean/std

``save_policy`` writes all three into a temporary sibling directory and swaps it in with renames, so a
crash never leaves a half-written policy; ``load_dt_policy`` accepts the policy directory or a run
directory (``RUN/policy``) and checks the model fits the task it will be run on.

The non-DT baseline's policy (IQL's MLP actor, ``"architecture": "iql-mlp"``) is kept in the same
layout: ``save_actor`` / ``load_actor``, and ``load_saved_policy`` returns whichever a folder holds.

This module knows only this format. ``dtrl.models.loading`` (``load_policy``, ``load_any_policy``) is
what callers use: it also takes ``hf:SOURCE``, a Hugging Face model (``dtrl.models.huggingface``,
which builds on this module).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dtrl
from dtrl.config import ModelConfig, from_dict, to_dict
from dtrl.errors import DtrlError
from dtrl.files import atomic_replace_directory

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
NORMALIZER_FILE = "normalizer.json"
FORMAT_VERSION = 1
ACTOR_ARCHITECTURE = "iql-mlp"
SB3_ARCHITECTURE = "sb3"
SB3_FILE = "sb3_model.zip"


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


def save_policy(directory, model, normalizer, task_name: str, extra: dict | None = None,
                reward_scale: float | None = None) -> Path:
    """Write ``model`` + ``normalizer`` to ``directory`` (replacing it atomically); returns the path.
    ``reward_scale`` defaults to the task's (an imported model keeps the one it was trained with)."""
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
        "reward_scale": float(get_task(task_name).reward_scale if reward_scale is None else reward_scale),
        "extra": dict(extra or {}),
    }
    return _write_policy_directory(directory, model, meta, normalizer)


def _write_policy_directory(directory, module, meta: dict, normalizer) -> Path:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory; contiguous CPU copies are enough
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in module.state_dict().items()}
    meta = {**meta, "weights_sha256": weights_digest(tensors)}

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / MODEL_FILE))
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        (staging / NORMALIZER_FILE).write_text(json.dumps(normalizer.to_dict()))

    return atomic_replace_directory(directory, fill)


def weights_digest(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: recorded in model.json
    and checked on load, so flipped bytes in model.safetensors are found, not run."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _load_weights(directory: Path, meta: dict) -> dict:
    """model.safetensors, checked against model.json's digest (policies saved before it was recorded
    are not checked) and for non-finite values."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = directory / MODEL_FILE
    try:
        state = load_file(str(file), device="cpu")
    except (OSError, SafetensorError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DtrlError(f"cannot load the weights in {file}: {first_line}") from None
    recorded = meta.get("weights_sha256")
    if recorded is not None and weights_digest(state) != recorded:
        raise DtrlError(f"{file} does not match the checksum in {META_FILE}: the file is damaged")
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DtrlError(f"{file} holds NaN or infinite weights ({', '.join(bad[:3])}): the model that was saved "
                        "had diverged")
    return state


def _read_policy_files(path: Path):
    """(policy directory, model.json's contents, the normaliser) of a policy or run directory."""
    from dtrl.data import StateNormalizer

    directory = _policy_directory(path)
    try:
        meta = json.loads((directory / META_FILE).read_text())
        normalizer = StateNormalizer.from_dict(json.loads((directory / NORMALIZER_FILE).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise DtrlError(f"cannot read the policy in {directory}: {exc}") from None
    return directory, meta, normalizer


def _policy_directory(path: Path) -> Path:
    if (path / META_FILE).is_file():
        return path
    if (path / "policy" / META_FILE).is_file():
        return path / "policy"
    if not path.exists():
        raise DtrlError(f"no policy at {path}: the path does not exist")
    raise DtrlError(f"no policy at {path}: expected {META_FILE} there or in {path / 'policy'}")


def load_dt_policy(path, task=None, device: str = "cpu") -> LoadedPolicy:
    """Load a Decision Transformer's policy directory (or ``RUN/policy``). With ``task`` (a Task or its
    name), refuse a model whose state/action sizes differ from that task's environment."""
    from dtrl.models import build_model

    directory, meta, normalizer = _read_policy_files(Path(path))
    if meta.get("architecture") not in ("dt", "reinformer"):
        raise DtrlError(f"{directory} holds a {meta.get('architecture')!r} policy, not a Decision Transformer")
    try:
        config = from_dict(ModelConfig, meta["model"])
        state_dim, act_dim = int(meta["state_dim"]), int(meta["act_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DtrlError(f"{directory / META_FILE} is malformed (missing or bad {exc})") from None

    if task is not None:
        check_task_dims(task, state_dim, act_dim, directory)
    if normalizer.obs_dim != state_dim:
        raise DtrlError(f"{directory}: normaliser has {normalizer.obs_dim} dims but the model takes {state_dim}")

    model = build_model(config, state_dim, act_dim)
    state = _load_weights(directory, meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DtrlError(f"cannot load the weights in {directory / MODEL_FILE}: {first_line}") from None
    model.to(device).eval()
    return LoadedPolicy(model, normalizer, float(meta.get("reward_scale", 1.0)), str(meta.get("task", "")), meta)


def check_task_dims(task, state_dim: int, act_dim: int, directory: Path) -> None:
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


# ----------------------------------------------------------------------------------------------
# Markov policies (IQL's MLP actor): act on the observation alone, no target return


@dataclass
class LoadedActor:
    """An MLP actor a ~ π(·|s) ready to evaluate, with the normaliser of its inputs."""

    actor: Any
    """dtrl.models.critics.TanhGaussianActor, in eval mode"""
    normalizer: Any
    """dtrl.data.StateNormalizer of the actor's inputs"""
    task_name: str
    """the task the actor was trained on"""
    meta: dict = field(default_factory=dict)
    """everything in model.json"""

    @torch.no_grad()
    def predict(self, observations: np.ndarray, device: str = "cpu") -> np.ndarray:
        """Mean actions [N, A] for raw observations [N, O] (what ``dtrl.evaluation.evaluate`` calls)."""
        states = torch.as_tensor(self.normalizer.normalize(observations), device=device)
        return self.actor(states).mean.float().cpu().numpy()


def save_actor(directory, actor, normalizer, task_name: str, obs_dim: int, act_dim: int, hidden_dim: int,
               n_layers: int, dropout: float, kind: str) -> Path:
    """Write an MLP actor of ``kind`` (``dtrl.models.critics.ACTORS``) in the policy layout (replacing
    ``directory`` atomically)."""
    meta = {"architecture": ACTOR_ARCHITECTURE, "actor": kind, "task": task_name, "obs_dim": obs_dim,
            "act_dim": act_dim, "hidden_dim": hidden_dim, "n_layers": n_layers, "actor_dropout": dropout,
            "dtrl_version": dtrl.__version__}
    return _write_policy_directory(directory, actor, meta, normalizer)


def load_actor(path, task=None, device: str = "cpu") -> LoadedActor:
    """Load an MLP actor from its policy directory or run directory; with ``task``, refuse one whose
    observation/action sizes differ from that task's environment."""

    from dtrl.models.critics import build_actor

    directory, meta, normalizer = _read_policy_files(Path(path))
    if meta.get("architecture") != ACTOR_ARCHITECTURE:
        raise DtrlError(f"{path} is not an IQL policy (architecture {meta.get('architecture')!r})")
    if task is not None:
        check_task_dims(task, int(meta["obs_dim"]), int(meta["act_dim"]), directory)
    # actors saved before the "actor" key existed were tanh-squashed Gaussians
    actor = build_actor(meta.get("actor", "tanh-gaussian"), meta["obs_dim"], meta["act_dim"], meta["hidden_dim"],
                        meta["n_layers"], meta["actor_dropout"])
    state = _load_weights(directory, meta)
    try:
        actor.load_state_dict(state)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DtrlError(f"cannot load the weights in {directory / MODEL_FILE}: {first_line}") from None
    return LoadedActor(actor.to(device).eval(), normalizer, str(meta.get("task", "")), meta)


# ----------------------------------------------------------------------------------------------
# stable-baselines3 models (the reference lines trained from scratch)


@dataclass
class LoadedSB3Policy:
    """A stable-baselines3 model acting with its deterministic action (``model.predict``)."""

    model: Any
    """a stable_baselines3 PPO or SAC"""
    task_name: str
    """the task it was trained on"""
    meta: dict = field(default_factory=dict)
    """everything in model.json"""

    def predict(self, observations: np.ndarray, device: str = "cpu") -> np.ndarray:
        actions, _ = self.model.predict(observations, deterministic=True)
        return np.asarray(actions, np.float32)


def save_sb3_policy(directory, model, task_name: str, algorithm: str) -> Path:
    """SB3's own zip plus model.json, in the policy layout (replacing ``directory`` atomically)."""
    meta = {"architecture": SB3_ARCHITECTURE, "algorithm": algorithm, "task": task_name,
            "dtrl_version": dtrl.__version__}

    def fill(staging: Path) -> None:
        model.save(staging / SB3_FILE)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))

    return atomic_replace_directory(directory, fill)


def load_sb3_policy(path, task=None, device: str = "cpu") -> LoadedSB3Policy:
    from stable_baselines3 import PPO, SAC

    directory = _policy_directory(Path(path))
    meta = json.loads((directory / META_FILE).read_text())
    algorithm = {"sac": SAC, "ppo": PPO}.get(meta.get("algorithm"))
    if meta.get("architecture") != SB3_ARCHITECTURE or algorithm is None:
        raise DtrlError(f"{path} holds no stable-baselines3 PPO or SAC policy")
    try:
        model = algorithm.load(directory / SB3_FILE, device=device)
    except (OSError, ValueError, KeyError) as exc:
        raise DtrlError(f"cannot load {directory / SB3_FILE}: {exc}") from None
    if task is not None:
        check_task_dims(task, model.observation_space.shape[0], model.action_space.shape[0], directory)
    return LoadedSB3Policy(model, str(meta.get("task", "")), meta)


def load_saved_policy(path, task=None, device: str = "cpu") -> LoadedPolicy | LoadedActor | LoadedSB3Policy:
    """Whatever policy the folder ``path`` holds: a Decision Transformer (``LoadedPolicy``), an MLP actor
    or a stable-baselines3 model."""
    directory = _policy_directory(Path(path))
    try:
        architecture = json.loads((directory / META_FILE).read_text()).get("architecture")
    except (OSError, json.JSONDecodeError) as exc:
        raise DtrlError(f"cannot read the policy in {directory}: {exc}") from None
    if architecture == ACTOR_ARCHITECTURE:
        return load_actor(directory, task=task, device=device)
    if architecture == SB3_ARCHITECTURE:
        return load_sb3_policy(directory, task=task, device=device)
    return load_dt_policy(directory, task=task, device=device)
