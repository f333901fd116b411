"""dtrl from Python: load a policy, act with it in your own loop, evaluate it, train one.

```python
import dtrl
policy = dtrl.load("runs/grpo")          # a run, a policy folder, or "hf:DIR"
actor = policy.actor()                    # the run's own target RTG and context unless given
action = actor.act(obs)                   # mean action (numpy); actor.observe(reward) after each step
scores = dtrl.evaluate(policy, episodes=5)                      # what `dtrl eval` prints, as a dict
result = dtrl.finetune("grpo", task="hopper-random", init="runs/pt", preset="cpu", iterations=2, out="runs/x")
```

``finetune`` and ``pretrain`` build the command line ``dtrl finetune`` / ``dtrl pretrain`` would get
(keyword = option name with underscores; ``True``/``False`` = ``--flag``/``--no-flag``; a nested
section as a dict: ``model={"n_layer": 2}``) and parse it with the same presets and validation, so a
call and a command that say the same thing give the same config.json. This module sits above
``dtrl.algos``; ``import dtrl`` loads it only when one of these names is first used.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from dtrl.config import resolve_device
from dtrl.errors import DtrlError
from dtrl.evaluation import Actor, default_context_length, default_target_rtg, evaluate_saved
from dtrl.models.loading import load_any_policy
from dtrl.tasks import get_task

__all__ = ["Policy", "evaluate", "finetune", "load", "pretrain"]


class Policy:
    """A loaded policy (``dtrl.load``): ``actor()`` to act step by step, ``evaluate()`` as ``dtrl eval``.
    The loaded object's fields (``model``, ``normalizer``, ``reward_scale``, ``task_name``, ``meta``, or
    ``predict`` for a Markov policy) are readable here too, so the rollout engine takes it as it is."""

    def __init__(self, loaded, source: str, device: str):
        self.loaded, self.source, self.device = loaded, source, device

    def __getattr__(self, name: str):
        if name == "loaded":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.loaded, name)

    @property
    def task(self):
        """The Task the policy was trained on."""
        return get_task(self.loaded.task_name)

    @property
    def target_rtg(self) -> float | None:
        """The return-to-go it is conditioned on by default (its trainer's evaluation RTG; None: Markov)."""
        return None if hasattr(self.loaded, "predict") else default_target_rtg(self.loaded, self.task)

    @property
    def context_length(self) -> int | None:
        """The timesteps of history it sees by default (its trainer's T_eval; None: its own window)."""
        return None if hasattr(self.loaded, "predict") else default_context_length(self.loaded)

    def actor(self, target_rtg: float | None = None, context_length: int | None = None) -> Actor:
        """A step-by-step actor (``reset``, ``act``, ``observe``) at ``target_rtg`` with ``context_length``
        (default: the values ``dtrl eval`` uses, recorded by the policy's trainer)."""
        if hasattr(self.loaded, "predict"):
            return Actor(self.loaded, device=self.device)
        return Actor(self.loaded, default_target_rtg(self.loaded, self.task, target_rtg),
                     default_context_length(self.loaded, context_length), device=self.device)

    def evaluate(self, episodes: int = 10, **options) -> dict:
        """``dtrl.evaluate(self, ...)``."""
        return evaluate(self, episodes=episodes, **options)

    def __repr__(self) -> str:
        return f"dtrl.Policy({self.source!r}, task={self.loaded.task_name!r}, device={self.device!r})"


def load(path, task: str | None = None, device: str = "auto") -> Policy:
    """The policy of a run folder (its ``policy/``), a policy folder, or ``"hf:DIR"`` (a Hugging Face
    DecisionTransformerModel with its ``dtrl_state_stats.json``), as ``dtrl eval`` loads it. ``task``:
    refuse a policy whose sizes do not fit that task (and name it for an ``hf:`` model that does not)."""
    device = resolve_device(device)
    return Policy(load_any_policy(str(path), task=task, device=device), str(path), device)


def evaluate(policy, episodes: int = 10, task: str | None = None, target_rtg: float | None = None,
             context_length: int | None = None, seed: int = 0, device: str | None = None, num_workers: int = 0,
             env_threads: int = 1) -> dict:
    """``dtrl eval`` from Python, with its defaults: mean-action episodes with env seeds ``seed, seed+1,
    ...`` on the policy's own task, at its trainer's target RTG and context. ``policy``: what ``load``
    returns, a path it takes, or any loaded policy. Returns ``task``, ``eval_normalized_mean/std``,
    ``eval_return_mean/std``, ``eval_length_mean``, ``eval_episodes``, ``eval_target_rtg`` and
    ``eval_context_length``."""
    if isinstance(policy, (str, Path)):
        policy = load(policy, task=task, device=device or "auto")
    device = device or getattr(policy, "device", None) or "auto"
    loaded = policy.loaded if isinstance(policy, Policy) else policy
    return evaluate_saved(loaded, task, episodes=episodes, target_rtg=target_rtg, context_length=context_length,
                          seed=seed, device=device, num_workers=num_workers, env_threads=env_threads)


def finetune(algo: str, **options) -> dict:
    """``dtrl finetune --algo ALGO --OPTION VALUE ...``: run (or ``resume=True``) online finetuning;
    returns the run's final summary (its ``final.json``). ``dtrl finetune --algo ALGO --help`` lists the
    options, e.g. ``finetune("grpo", task="hopper-random", init="runs/pt", preset="cpu", iterations=2,
    out="runs/x")``."""
    from dtrl.algos import finetune as dispatch

    argv = ["--algo", str(algo), *_argv(options)]
    module, _ = dispatch._entry_point(str(algo))
    config = _parse(dispatch.parse, argv, options, f"dtrl finetune --algo {algo}")
    return _summary(module.train(config), config)


def pretrain(**options) -> dict:
    """``dtrl pretrain --OPTION VALUE ...``: offline pretraining (e.g. ``pretrain(task="hopper-random",
    dataset="data/hopper-random.hdf5", preset="cpu", out="runs/pt")``); returns the final summary."""
    from dtrl.algos import pretrain as module

    config = _parse(module.parse, _argv(options), options, "dtrl pretrain")
    return _summary(module.train(config), config)


# ----------------------------------------------------------------------------------------------
# keywords -> the command line


def _argv(options: dict, prefix: str = "") -> list[str]:
    """``{"group_size": 16, "track": True, "model": {"n_layer": 2}}`` -> ``--group-size 16 --track
    --model.n-layer 2`` (None: left at its default)."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + prefix + key.replace("_", "-")
        if isinstance(value, dict):
            argv += _argv(value, f"{prefix}{key.replace('_', '-')}.")
        elif value is None:
            continue
        elif isinstance(value, bool):
            argv.append(flag if value else f"--{prefix}no-{key.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(_text, value)]
        else:
            argv += [flag, _text(value)]
    return argv


def _text(value) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _unknown(options: dict, config, prefix: str = "") -> list[str]:
    """The keywords (dotted when nested) that name no field of ``config``."""
    names = {field.name: field for field in dataclasses.fields(config)}
    unknown = []
    for key, value in options.items():
        if key not in names:
            unknown.append(prefix + key)
        elif isinstance(value, dict):
            inner = getattr(config, key)
            if dataclasses.is_dataclass(inner):
                unknown += _unknown(value, inner, f"{prefix}{key}.")
            else:
                unknown.append(prefix + key)
    return unknown


def _parse(parse, argv: list[str], options: dict, command: str):
    """``parse(argv)`` (the command's own parser: presets, overrides, validation), with unknown keywords
    named in one DtrlError before anything runs, and a refused value as a DtrlError, not SystemExit."""
    defaults = [word for key in ("task", "preset") if options.get(key) is not None
                for word in (f"--{key}", str(options[key]))]
    base = _quiet_parse(parse, argv[:2] + defaults if argv[:1] == ["--algo"] else defaults, command)
    unknown = _unknown({k: v for k, v in options.items() if k != "algo"}, base)
    if unknown:
        raise DtrlError(f"{command}: unknown option(s) {', '.join(sorted(unknown))} "
                        f"(see `{command} --help`; keywords are the option names with underscores)")
    return _quiet_parse(parse, argv, command)


def _quiet_parse(parse, argv: list[str], command: str):
    try:
        return parse(argv)
    except SystemExit:  # tyro printed why (a value of the wrong type, say)
        raise DtrlError(f"{command}: invalid options {' '.join(argv)} (the message above says why)") from None


def _summary(result, config) -> dict:
    """The run's final.json (what ``dtrl report`` and sweeps read), else what ``train`` returned."""
    final = Path(config.out) / "final.json"
    if final.is_file():
        return json.loads(final.read_text())
    return dict(result or {})
