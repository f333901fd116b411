"""What goes into and comes out of ``checkpoints/state.pt``: the NaN/Inf check a state passes before
it is saved, and reading a checkpoint back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dtrl.errors import DtrlError


def _find_non_finite(value: Any, where: str) -> str | None:
    """Name of the first floating tensor/array inside ``value`` holding NaN or Inf, else None.

    Python float scalars are not checked: ``best_return = -inf`` is a legitimate initial value.
    """
    import torch

    if isinstance(value, torch.nn.Module):
        value = value.state_dict()
    if isinstance(value, torch.Tensor):
        return _non_finite_tensor(value, where)
    if isinstance(value, np.ndarray):
        return _non_finite_array(value, where)
    if isinstance(value, dict):
        items = ((f"{where}[{key!r}]", item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for name, item in items:
        found = _find_non_finite(item, name)
        if found:
            return found
    return None


def _non_finite_tensor(value, where: str) -> str | None:
    import torch

    if (value.is_floating_point() or value.is_complex()) and value.numel():
        # Fast path: NaN/Inf anywhere make the sum non-finite. A finite tensor whose sum
        # overflows takes the exact element-wise check, so the answer is always exact.
        tensor = value.detach()
        if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            return f"{where} contains {kind}"
    return None


def _non_finite_array(value: np.ndarray, where: str) -> str | None:
    if np.issubdtype(value.dtype, np.inexact) and value.size and not np.isfinite(value).all():
        return f"{where} contains {'NaN' if np.isnan(value).any() else 'Inf'}"
    return None


def _load_checkpoint(file: Path) -> dict:
    import torch

    try:
        # weights_only=False: our own checkpoints hold numpy RNG states, generator states and
        # normaliser arrays. Only load run directories you trust (shared policies use safetensors).
        payload = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # a foreign or damaged file: the user must decide what to do with it
        raise DtrlError(f"cannot read checkpoint {file}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or "iteration" not in payload or "state" not in payload:
        raise DtrlError(f"{file} is not a dtrl checkpoint (no iteration/state)")
    return payload
