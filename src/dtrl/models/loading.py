"""Load a policy by what its path names: a policy folder or run folder in dtrl's format
(``dtrl.models.checkpoint``), or ``hf:SOURCE``, a Hugging Face DecisionTransformerModel
(``dtrl.models.huggingface``). What ``--init``, ``dtrl eval`` and the algorithms call.

This is the one module that knows both loaders: the format and the conversion do not import each
other's way back (``huggingface`` builds on ``checkpoint``, never the reverse).
"""

from __future__ import annotations

import re
from pathlib import Path

from dtrl.errors import DtrlError
from dtrl.models.checkpoint import LoadedActor, LoadedPolicy, LoadedSB3Policy, load_dt_policy, load_saved_policy
from dtrl.models.huggingface import load_huggingface_policy

HF_PREFIX = "hf:"
"""``hf:DIR`` or ``hf:owner/name`` names a Hugging Face DecisionTransformerModel wherever a policy is loaded"""

__all__ = ["HF_PREFIX", "check_hf_source", "load_any_policy", "load_policy"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_hf_source(source: str) -> None:
    """One-line DtrlError when ``source`` (what follows ``hf:``) names a local folder that does not
    exist: a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, or ``a/b`` where ``a`` is a local folder)
    rather than a Hub id ``owner/name``, which would otherwise be tried on the Hub for half a minute."""
    path = Path(source).expanduser()
    if path.exists():
        return
    first = source.split("/", 1)[0]
    local = (not _HUB_ID.fullmatch(source) or source.startswith((".", "~"))
             or ("/" in source and first not in ("", ".") and Path(first).is_dir()))
    if local:
        raise DtrlError(f"hf:{source}: no such folder ({source} does not exist; a Hugging Face Hub id is "
                        "owner/name)")


def load_policy(path, task=None, device: str = "cpu") -> LoadedPolicy:
    """Load a policy directory (or ``RUN/policy``), or ``hf:SOURCE``, a Hugging Face
    DecisionTransformerModel (``models.huggingface``). With ``task`` (a Task or its name), refuse a model
    whose state/action sizes differ from that task's environment."""
    if str(path).startswith(HF_PREFIX):
        check_hf_source(str(path)[len(HF_PREFIX):])
        return load_huggingface_policy(str(path)[len(HF_PREFIX):], task=task, device=device)
    return load_dt_policy(path, task=task, device=device)


def load_any_policy(path, task=None, device: str = "cpu") -> LoadedPolicy | LoadedActor | LoadedSB3Policy:
    """Whatever policy ``path`` holds: a Decision Transformer (``LoadedPolicy``, from a folder or
    ``hf:SOURCE``), an MLP actor or a stable-baselines3 model."""
    if str(path).startswith(HF_PREFIX):
        return load_policy(path, task=task, device=device)
    return load_saved_policy(path, task=task, device=device)
