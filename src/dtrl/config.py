"""Typed configs. Every command's options are one dataclass whose fields carry their help text
(CleanRL style) and are parsed by tyro. Presets (``cpu``, ``paper``) are functions
``(task) -> config`` that give the defaults; any field can then be overridden on the command line:

    dtrl finetune --algo grpo --task hopper-random --preset cpu --group-size 16 ...

``parse_config`` does that two-stage parse; every config validates itself when it is built
(``__post_init__``), so invalid values are refused before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from dtrl.errors import DtrlError

C = TypeVar("C")


def reject_non_finite(config) -> None:
    """Refuse NaN or ±inf in any float option of ``config`` (nested configs included): no option of
    dtrl means anything at infinity, and a NaN passes every ``<`` / ``>`` check silently."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise DtrlError(f"{f.name.replace('_', '-')} must be a finite number, got {value}")


MAX_SEED = 2**32 - 1
"""the largest seed: numpy, torch and gymnasium all take it (torch overflows past 2**64, and seeds
are offset for evaluation and worker envs)"""


def check_seed(seed: int, option: str = "seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise DtrlError(f"{option} must be in [0, {MAX_SEED}], got {seed}")


def memory_bytes(device: str) -> int | None:
    """Total memory of ``device`` ('cpu': this machine's RAM; 'cuda': the GPU's), None if unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_fits_in_memory(needed_bytes: int, what: str, device: str) -> None:
    """One-line DtrlError, before any run directory exists, when ``what`` needs more than all of
    ``device``'s memory (``needed_bytes`` is a lower bound, so a run that fits is never refused)."""
    total = memory_bytes(device)
    if total is not None and needed_bytes > total:
        raise DtrlError(f"{what} needs at least {needed_bytes / 2**30:.1f} GiB of memory, more than this "
                        f"{'GPU' if device.startswith('cuda') else 'machine'} has ({total / 2**30:.1f} GiB)")


@dataclass
class ModelConfig:
    """The Decision Transformer backbone (paper Table 5 for the ``paper`` preset)."""

    architecture: Literal["dt", "reinformer"] = "dt"
    """backbone: 'dt' (RTG, state, action tokens) or 'reinformer' (state, RTG, action; max-return head)"""
    policy: Literal["gaussian", "deterministic"] = "gaussian"
    """action head: tanh-squashed diagonal Gaussian (ODT, needed by RL finetuning) or deterministic (DT, MSE)"""
    n_layer: int = 4
    """number of transformer blocks"""
    n_head: int = 4
    """attention heads per block"""
    embed_dim: int = 512
    """token embedding width"""
    context_length: int = 20
    """K: number of timesteps (each 3 tokens) the model attends over"""
    dropout: float = 0.1
    """dropout during pretraining (finetuning disables it, Table 5)"""
    activation: Literal["silu", "gelu", "gelu_tanh", "relu"] = "silu"
    """MLP nonlinearity (Table 5: SiLU; 'relu' and 'gelu_tanh' exist for imported Hugging Face DTs)"""
    timestep_embedding: bool = True
    """add a learned embedding of the episode timestep to every token (ODT drops it on AntMaze)"""
    max_timestep: int = 1000
    """size of the timestep embedding table (>= the task horizon)"""
    log_std_min: float = -5.0
    """lower bound of the Gaussian head's log standard deviation"""
    log_std_max: float = 2.0
    """upper bound of the Gaussian head's log standard deviation"""
    init_temperature: float = 0.1
    """initial entropy temperature (learned, target entropy -dim(A))"""
    expectile: float = 0.99
    """Reinformer: expectile for the max-return head"""

    def __post_init__(self) -> None:
        reject_non_finite(self)
        self.validate()

    def step_bytes(self, batch_size: int) -> int:
        """A lower bound on the memory one training step of ``batch_size`` windows takes: each block's
        token activations and attention scores (3 tokens per timestep), in float32."""
        tokens = 3 * self.context_length
        return 4 * self.n_layer * batch_size * tokens * (self.embed_dim + self.n_head * tokens)

    def validate(self) -> None:
        for name in ("n_layer", "n_head", "embed_dim", "context_length", "max_timestep"):
            if getattr(self, name) < 1:
                raise DtrlError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.context_length > self.max_timestep:
            raise DtrlError(f"--model.context-length ({self.context_length}) must be <= --model.max-timestep "
                            f"({self.max_timestep}): a window longer than the longest episode holds only padding")
        if self.embed_dim % self.n_head:
            raise DtrlError(f"model.embed_dim ({self.embed_dim}) must be divisible by model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise DtrlError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.log_std_min >= self.log_std_max:
            raise DtrlError("model.log_std_min must be < model.log_std_max")
        if self.init_temperature <= 0:
            raise DtrlError(f"model.init_temperature must be > 0, got {self.init_temperature}")
        if not 0.0 < self.expectile < 1.0:
            raise DtrlError(f"model.expectile must be in (0, 1), got {self.expectile}")


@dataclass
class CommonConfig:
    """Options every training command shares (run directory, seed, device, evaluation)."""

    task: str = "hopper-medium"
    """task name from `dtrl tasks` or any gymnasium MuJoCo env id"""
    preset: str = "cpu"
    """named defaults: 'cpu' (small, minutes on a laptop CPU) or 'paper' (Tables 5-6, a GPU job)"""
    out: str = "runs/run"
    """run directory to create (refused if it exists, unless --force)"""
    seed: int = 0
    """seed for torch, numpy and the environments"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when available, else CPU"""
    force: bool = False
    """overwrite an existing run directory"""
    resume: bool = False
    """continue the run in --out from its last checkpoint"""
    eval_every: int = 10
    """evaluate every N iterations (0: only at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    checkpoint_every: int = 1
    """write a checkpoint every N iterations (a crash loses at most N)"""
    track: bool = False
    """also log to Weights & Biases, as CleanRL's --track (pip install 'dtrl[wandb]'); WANDB_MODE=offline
    works without a network (upload later with `wandb sync RUN/wandb/...`)"""
    wandb_project: str = "dtrl"
    """Weights & Biases project of --track"""
    wandb_entity: str | None = None
    """Weights & Biases entity (user or team) of --track; None: the logged-in default"""
    env_threads: int = 1
    """threads stepping the env copies of rollouts and evaluation (Hopper, Walker2d, HalfCheetah and Ant
    step through dtrl's batched path; other envs ignore it). Results do not depend on it. 2 on a free
    2-core machine: group rollouts ~1.4x faster (benchmarks/results/envs.md); keep 1 where other jobs
    share the cores (a sweep runs one trial per core)"""

    def __post_init__(self) -> None:
        # every construction path is checked (CLI, presets, dataclasses.replace, train(Config(...))),
        # as TRL's configs do; subclasses extend validate()
        reject_non_finite(self)
        self.validate()

    def validate(self) -> None:
        """Raise DtrlError for a value no run can use. Only values: required inputs (--init,
        --dataset) are checked where they are loaded, so a preset without them is a valid config."""
        for name in ("eval_episodes", "checkpoint_every", "env_threads"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise DtrlError(f"eval-every must be >= 0, got {self.eval_every}")
        check_seed(self.seed)
        model = getattr(self, "model", None)
        if isinstance(model, ModelConfig):
            model.validate()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DtrlError("--device cuda was asked for but torch sees no CUDA device (use --device auto or cpu)")
    return device


def parse_config(
    config_cls: type[C],
    argv: list[str],
    presets: dict[str, Callable[[str], C]],
    description: str,
    prog: str,
    task_of: Callable[[str | None, list[str]], str | None] | None = None,
) -> C:
    """Two-stage parse: ``--task`` and ``--preset`` pick the defaults, then tyro applies overrides.

    ``presets`` maps a preset name to a function of the task name returning a full config; it may
    raise DtrlError when the preset is not defined for that task. ``task_of(task, argv)`` (a command
    whose inputs name their task: ``--dataset``, ``--init``) returns the task to run given ``--task``
    (None when not given) and the whole command line, None to keep the config's default; it raises
    DtrlError for a ``--task`` that contradicts the inputs, or for none where the inputs name none.
    ``--help`` shows the defaults without it.
    """
    import tyro

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default=None)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(argv)
    base = config_cls()
    task = known.task or getattr(base, "task", None)
    preset = known.preset or getattr(base, "preset", "cpu")
    if preset not in presets:
        raise DtrlError(f"unknown preset {preset!r} (choose from {', '.join(presets)})")
    if "-h" in argv or "--help" in argv:
        default = presets[preset](task) if task is not None else base
    else:
        if task_of is not None:
            task = task_of(known.task, argv) or task
        if task is not None:
            from dtrl.tasks import get_task

            get_task(task)  # unknown task -> one-line error before anything else
        default = presets[preset](task)
    return tyro.cli(config_cls, args=argv, default=default, description=description, prog=prog)


def option_value(argv: list[str], option: str) -> str | None:
    """The value of the last ``--option VALUE`` / ``--option=VALUE`` in ``argv``, None when absent."""
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{option}" and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
        elif arg.startswith(f"--{option}="):
            value = arg.split("=", 1)[1]
    return value


def value_text(value) -> str:
    """A config value as typed on the command line (booleans lower-case, as tyro reads them)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def value_matches(value, text: str) -> bool:
    """A config value equals its command-line spelling (0.001 = 1e-3, True = true, None = null)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() == text.lower() or (value is None and text.lower() == "null")
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return str(value) == text


def key_values(items, option: str, keys: str) -> dict[str, list[str]]:
    """``("a=1", "b=x", "a=2")`` -> {"a": ["1", "2"], "b": ["x"]}; one-line error naming ``option``."""
    found: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DtrlError(f"{option} takes KEY=VALUE ({keys}), got {item!r}")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def option_args(name: str, value) -> list[str]:
    """Command-line form of setting config field ``name`` (dotted for nested ones) to ``value``, as
    tyro spells it: --clip-eps 0.1, --model.n-layer 2, --flag / --no-flag for booleans, several words
    for a list."""
    flag = ".".join(part.replace("_", "-") for part in name.split("."))
    if isinstance(value, bool):
        head, _, last = flag.rpartition(".")
        return [f"--{head + '.' if head else ''}{'' if value else 'no-'}{last}"]
    if isinstance(value, list):
        return [f"--{flag}", *map(value_text, value)]
    return [f"--{flag}", value_text(value)]


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(config_cls: type[C], data: dict) -> C:
    """Rebuild a (possibly nested) config dataclass from ``to_dict`` output, ignoring unknown keys
    (so a run written by an older dtrl still loads)."""
    defaults = config_cls()
    kwargs = {}
    for f in dataclasses.fields(config_cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = from_dict(type(default), value)
        kwargs[f.name] = value
    return config_cls(**kwargs)
