"""dtrl: online finetuning of Decision Transformers with pure reinforcement-learning gradients.

The Python API (``dtrl.api``): ``dtrl.load``, ``dtrl.evaluate``, ``dtrl.finetune``, ``dtrl.pretrain``.
They are loaded on first use, so ``import dtrl`` stays light (no torch) and the CLI starts fast.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "finetune", "load", "pretrain"]

_API = ("evaluate", "finetune", "load", "pretrain", "Policy")


def __getattr__(name: str):
    # PEP 562 lazy attributes. importlib, not an import statement: dtrl.api sits at the top of the layers
    # and many modules below read dtrl.__version__, so an import here would be a cycle (test_architecture)
    if name in _API:
        return getattr(importlib.import_module("dtrl.api"), name)
    raise AttributeError(f"module 'dtrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
