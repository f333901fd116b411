"""Small MLPs shared by the critic-based algorithms: PPO's value net, TD3's twin Q, IQL's V, Q and actor.

Defaults follow the paper's Table 5 (PPO critic): 2 hidden layers, SiLU, hidden size 256 on MuJoCo and
512 elsewhere (``default_hidden_dim``), LayerNorm optional (the paper adds it on Adroit and AntMaze).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from dtrl.models.distributions import ActionDistribution

Activation = Literal["silu", "relu", "gelu", "tanh"]
_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def default_hidden_dim(domain: str) -> int:
    """Table 5: critic hidden size 256 for MuJoCo, 512 for the other domains."""
    return 256 if domain == "mujoco" else 512


def default_layer_norm(domain: str) -> bool:
    """A.3.1: LayerNorm in the critic on Adroit and AntMaze (after ODT+TD3), not on MuJoCo."""
    return domain in ("adroit", "antmaze")


class MLP(nn.Sequential):
    """in -> [Linear -> (LayerNorm) -> activation -> (Dropout)] x n_layers -> Linear -> out."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 256,
        n_layers: int = 2,
        activation: Activation = "silu",
        layer_norm: bool = False,
        dropout: float = 0.0,
    ):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (choose from {', '.join(_ACTIVATIONS)})")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers):
            layers.append(nn.Linear(width, hidden_dim))
            if layer_norm:
                layers.append(nn.LayerNorm(hidden_dim))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)


class ValueNet(nn.Module):
    """V(s): states [..., O] -> [...]."""

    def __init__(self, state_dim: int, hidden_dim: int = 256, n_layers: int = 2, activation: Activation = "silu",
                 layer_norm: bool = False):
        super().__init__()
        self.net = MLP(state_dim, 1, hidden_dim, n_layers, activation, layer_norm)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.net(states).squeeze(-1)


class TwinQ(nn.Module):
    """Two independent Q(s, a) heads (clipped double-Q): forward -> (q1, q2), each [...]."""

    def __init__(self, state_dim: int, act_dim: int, hidden_dim: int = 256, n_layers: int = 2,
                 activation: Activation = "silu", layer_norm: bool = False):
        super().__init__()
        self.q1 = MLP(state_dim + act_dim, 1, hidden_dim, n_layers, activation, layer_norm)
        self.q2 = MLP(state_dim + act_dim, 1, hidden_dim, n_layers, activation, layer_norm)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([states, actions], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def min_q(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self(states, actions))


class GaussianActor(nn.Module):
    """pi(a|s) = N(tanh(mu(s)), diag(exp(2 log_std))) with a learned state-independent log-std: IQL's
    actor in its official code (ikostrikov/implicit_q_learning's policy without tanh-squashed
    distribution; CORL's GaussianPolicy). Only the mean is squashed, so the log-likelihood of a
    dataset action at +-1 stays finite (a tanh-squashed distribution's goes to +-inf there); samples
    are clipped to [-1, 1] by whoever steps an env with them."""

    def __init__(self, state_dim: int, act_dim: int, hidden_dim: int = 256, n_layers: int = 2,
                 activation: Activation = "relu", layer_norm: bool = False, dropout: float = 0.0,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.trunk = MLP(state_dim, act_dim, hidden_dim, n_layers, activation, layer_norm, dropout)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, states: torch.Tensor) -> torch.distributions.Independent:
        mean = torch.tanh(self.trunk(states))
        std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp().expand_as(mean)
        return torch.distributions.Independent(torch.distributions.Normal(mean, std), 1)


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), sigma(s))): states [..., O] -> ``ActionDistribution`` over [...].

    The log-std is squashed into [log_std_min, log_std_max] the same way as the Decision Transformer's
    Gaussian head, so ``log_prob`` / ``mean`` / ``sample`` behave identically.
    """

    def __init__(self, state_dim: int, act_dim: int, hidden_dim: int = 256, n_layers: int = 2,
                 activation: Activation = "silu", layer_norm: bool = False, dropout: float = 0.0,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.trunk = MLP(state_dim, 2 * act_dim, hidden_dim, n_layers, activation, layer_norm, dropout)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, states: torch.Tensor) -> ActionDistribution:
        mu, raw_log_std = self.trunk(states).chunk(2, dim=-1)
        low, high = self.log_std_min, self.log_std_max
        log_std = low + 0.5 * (high - low) * (torch.tanh(raw_log_std) + 1.0)
        return ActionDistribution(mu, log_std)


ACTORS = {"gaussian": GaussianActor, "tanh-gaussian": TanhGaussianActor}


def build_actor(kind: str, state_dim: int, act_dim: int, hidden_dim: int, n_layers: int, dropout: float) -> nn.Module:
    """IQL's MLP actor of ``kind`` (``ACTORS``), with ReLU as in the IQL paper."""
    if kind not in ACTORS:
        raise ValueError(f"unknown actor {kind!r} (choose from {', '.join(ACTORS)})")
    return ACTORS[kind](state_dim, act_dim, hidden_dim=hidden_dim, n_layers=n_layers, activation="relu",
                        dropout=dropout)
