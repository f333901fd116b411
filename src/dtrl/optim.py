"""Optimisers: LAMB for the Decision Transformer (paper Table 5, as ODT), AdamW/Adam for critics.

LAMB (You et al. 2019) is taken from ``pytorch-optimizer`` (maintained; works with torch 2.13) rather
than a copied file. We fix its options to the paper's algorithm: Adam moments, weight decay added to
the Adam direction *before* the per-tensor trust ratio ``min(||w||, 10) / ||update||`` (the ``phi``
clamp of the paper), so decay is decoupled from the moments but scaled by the trust ratio like the
rest of the step, so each tensor moves by exactly ``lr * min(||w||, 10)``. Adam's bias correction is
left out (as in LAMB v3): it is one scalar per step, which the trust ratio normalises away, so it only
changes the relative weight of the (1e-4) weight-decay term in the first few hundred steps. The tests
check a two-step update against a hand computation of these formulas.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from pytorch_optimizer import Lamb as _PytorchOptimizerLamb

from dtrl.errors import DtrlError

OptimizerName = Literal["lamb", "adamw", "adam"]


class Lamb(_PytorchOptimizerLamb):
    """LAMB with the paper's choices (see the module docstring); a ``torch.optim.Optimizer``."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            weight_decouple=False,  # You et al.: decay enters the update that the trust ratio scales
            grad_averaging=True,  # m <- beta1 m + (1 - beta1) g, as Adam
            max_grad_norm=0.0, pre_norm=False,  # gradient clipping is the training loop's job
            adam=False, rectify=False,
            # pytorch-optimizer otherwise divides the *trust-ratio-scaled* step by 1 - beta1^t (10x
            # at step 1), which breaks LAMB's ||step|| = lr * phi(||w||); this keeps the step at lr
            adam_debias=True,
        )


def make_optimizer(
    name: OptimizerName, params: Iterable, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """'lamb' (policy, Table 5), 'adamw' (PPO critic, Table 5) or 'adam'."""
    params = list(params)
    if name == "lamb":
        return Lamb(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise DtrlError(f"unknown optimizer {name!r} (choose from lamb, adamw, adam)")


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate ramps linearly from lr/warmup_steps to lr over the first ``warmup_steps`` steps
    (ODT's schedule), then stays; call ``scheduler.step()`` after each ``optimizer.step()``."""
    warmup = max(1, int(warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
