"""The TD3 twin critic that ODT+TD3 and Q-guided GRPO share: its options, the critic with its target
copy and optimiser, target policy smoothing and the TD loss over DT windows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from dtrl.algos.dt_finetune import DTFinetuneConfig
from dtrl.errors import DtrlError
from dtrl.models.critics import TwinQ, default_hidden_dim, default_layer_norm
from dtrl.objectives import masked_mean, td3_target


@dataclass
class TD3CriticConfig(DTFinetuneConfig):
    """TD3 twin-critic settings shared by ODT+TD3 and GRPO-Q (each adds its own policy_noise and
    policy_delay)."""

    gamma: float = 0.99
    """TD3 discount"""
    tau: float = 0.005
    """Polyak rate of the target DT and target critics"""
    noise_clip: float = 0.5
    """c: the smoothing noise is clipped to [-c, c]"""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics"""
    critic_hidden_dim: int | None = None
    """critic MLP width (default: 256 MuJoCo, 512 otherwise)"""
    critic_layer_norm: bool | None = None
    """LayerNorm in the critics (default: on Adroit and AntMaze)"""
    critic_activation: Literal["silu", "relu"] = "silu"
    """nonlinearity of the critic MLPs"""
    critic_weight_decay: float = 0.0
    """decoupled weight decay of the critics' optimiser (AdamW; 0 is Adam)"""

    def validate(self) -> None:
        super().validate()
        if not self.critic_lr > 0 or self.critic_weight_decay < 0:
            raise DtrlError("critic-lr must be > 0 and critic-weight-decay >= 0")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise DtrlError("gamma and tau must be in (0, 1]")


def smoothed_target_actions(mean_actions: torch.Tensor, noise_std: float, noise_clip: float) -> torch.Tensor:
    """TD3 target policy smoothing: clip(a' + clip(ε, -c, c), -1, 1), ε ~ N(0, σ²)."""
    noise = (torch.randn_like(mean_actions) * noise_std).clamp(-noise_clip, noise_clip)
    return (mean_actions + noise).clamp(-1.0, 1.0)


def window_critic_loss(critic, critic_target, target_model, batch: dict, gamma: float, noise_std: float,
                       noise_clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Twin-Q TD loss on every transition (s_t, a_t, r_t, s_{t+1}) inside a batch of windows.

    The next action at s_{t+1} is the target DT's prediction at position t+1 of the same window
    (its context: the window's tokens up to s_{t+1}). The last position has no s_{t+1} in the
    window: it is trained only when it is terminal (target r_t). Returns (loss, metrics)."""
    states, actions, mask = batch["states"], batch["actions"], batch["mask"]
    with torch.no_grad():
        target_dist = target_model(states, actions, batch["returns_to_go"], batch["timesteps"], mask)
        next_actions = smoothed_target_actions(target_dist.mean[:, 1:], noise_std, noise_clip)
        next_q1, next_q2 = critic_target(states[:, 1:], next_actions)
        pad = torch.zeros_like(next_q1[:, :1])
        target = td3_target(batch["rewards"], batch["dones"], torch.cat([next_q1, pad], 1),
                            torch.cat([next_q2, pad], 1), gamma)
        has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
        valid = mask & (has_next | batch["dones"].bool())
    q1, q2 = critic(states, actions)
    loss = masked_mean((q1 - target) ** 2 + (q2 - target) ** 2, valid)
    return loss, {"losses/critic": loss.item(), "charts/q_mean": float(masked_mean(q1.detach(), valid))}


def build_critic(config: TD3CriticConfig, task, obs_dim: int, act_dim: int, device: str):
    """(twin critic, its frozen target copy, its optimiser), sized per domain unless the config says
    otherwise."""
    critic = TwinQ(obs_dim, act_dim, hidden_dim=config.critic_hidden_dim or default_hidden_dim(task.domain),
                   activation=config.critic_activation,
                   layer_norm=default_layer_norm(task.domain) if config.critic_layer_norm is None
                   else config.critic_layer_norm).to(device)
    optimizer = (torch.optim.AdamW(critic.parameters(), lr=config.critic_lr, weight_decay=config.critic_weight_decay)
                 if config.critic_weight_decay > 0 else torch.optim.Adam(critic.parameters(), lr=config.critic_lr))
    return critic, copy.deepcopy(critic).requires_grad_(False), optimizer
