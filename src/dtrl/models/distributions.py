"""The policy's action distribution: a tanh-squashed diagonal Gaussian (ODT) or a deterministic action.

Works for any leading shape: ``[B, T, A]`` from the sequence forward, ``[B, A]`` from a cached step.

Log-likelihoods are a deterministic function of the *float32* action, evaluated in float64: the
pre-tanh value is ``atanh`` of the action clamped to the largest float32 below 1, and the Jacobian
term uses the stable form ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``. ``sample()`` returns
squashed actions and remembers the pre-tanh value it implies, so ``log_prob`` of the tensor it returned
skips the ``atanh`` and yet gives bit-identical numbers to recomputing it later from the stored action
(an importance ratio of a policy with itself is exactly 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dtrl.errors import DtrlError

# Largest float32 strictly below 1: tanh of any |u| >= ~8.7 rounds to 1.0 in float32, where atanh is
# infinite; actions are clamped here, so the pre-tanh value is at most atanh(this) ~ 8.66.
_MAX_ABS_ACTION = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))
_LOG_2PI = math.log(2 * math.pi)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 (autocast outputs) to float32; float32/float64 pass unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def log_one_minus_tanh_sq(pre_tanh: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), stable for large |u| (|u| is used so either sign is accurate)."""
    u = pre_tanh.abs()
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


def squash_pre_tanh(pre_tanh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 action tanh(u) clamped inside (-1, 1), and the float64 pre-tanh value it implies."""
    action = torch.tanh(pre_tanh).to(torch.float32).clamp(-_MAX_ABS_ACTION, _MAX_ABS_ACTION)
    return action, torch.atanh(action.double())


class ActionDistribution:
    """tanh(N(mu, sigma)) per action dimension, or a deterministic action (``log_std`` None)."""

    def __init__(
        self,
        mu: torch.Tensor,
        log_std: torch.Tensor | None,
        returns_to_go: torch.Tensor | None = None,
    ):
        self.mu = mu
        """pre-tanh Gaussian mean [..., A] (deterministic head: pre-tanh action)"""
        self.log_std = log_std
        """pre-tanh Gaussian log standard deviation [..., A]; None for the deterministic head"""
        self.returns_to_go = returns_to_go
        """the (scaled) return the model was conditioned on, [...] (Reinformer: its own prediction)"""
        self._sample: torch.Tensor | None = None
        self._sample_pre_tanh: torch.Tensor | None = None

    @property
    def deterministic(self) -> bool:
        return self.log_std is None

    @property
    def mean(self) -> torch.Tensor:
        """The action to take when acting greedily: tanh of the Gaussian mean."""
        return torch.tanh(self.mu)

    @property
    def std(self) -> torch.Tensor:
        if self.deterministic:
            return torch.zeros_like(self.mu)
        return self.log_std.exp()

    @property
    def variance(self) -> torch.Tensor:
        """Per step [...]: mean over action dims of the pre-tanh Gaussian variance (0 if deterministic)."""
        if self.deterministic:
            return torch.zeros(self.mu.shape[:-1], dtype=self.mu.dtype, device=self.mu.device)
        return (2.0 * self.log_std).exp().mean(dim=-1)

    @property
    def squashed_variance(self) -> torch.Tensor:
        """Per step [...]: mean over action dims of the variance of the *action* tanh(u), to first order
        (delta method): (1 - tanh(mu)^2)^2 sigma^2. Unlike the pre-tanh variance it does not grow
        without bound where the mean is saturated at +-1, where the actions barely vary."""
        if self.deterministic:
            return torch.zeros(self.mu.shape[:-1], dtype=self.mu.dtype, device=self.mu.device)
        slope = 1.0 - torch.tanh(self.mu) ** 2
        return (slope * slope * (2.0 * self.log_std).exp()).mean(dim=-1)

    def _require_stochastic(self, what: str) -> None:
        if self.deterministic:
            raise DtrlError(
                f"the deterministic policy head has no {what}; RL finetuning needs a model pretrained "
                "with --model.policy gaussian"
            )

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Squashed float32 actions [..., A] (no gradient). The deterministic head returns its action."""
        if self.deterministic:
            return self.mean.detach()
        with torch.no_grad():
            noise = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
            action, pre_tanh = squash_pre_tanh(self.mu + self.std * noise)
        self._sample, self._sample_pre_tanh = action, pre_tanh
        return action

    def rsample(self) -> torch.Tensor:
        """Reparameterised squashed sample tanh(mu + sigma * eps), differentiable in mu and log_std
        (for actor losses through a critic); not remembered by ``log_prob``."""
        if self.deterministic:
            return self.mean
        return torch.tanh(self.mu + self.std * torch.randn_like(self.mu))

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """log density of squashed actions [..., A], summed over action dims -> [...] (model dtype)."""
        self._require_stochastic("log-likelihood")
        if actions is self._sample:
            pre_tanh = self._sample_pre_tanh
        else:
            action = actions.to(torch.float32).clamp(-_MAX_ABS_ACTION, _MAX_ABS_ACTION)
            pre_tanh = torch.atanh(action.double())
        mu, log_std = self.mu.double(), self.log_std.double()
        z = (pre_tanh - mu) * torch.exp(-log_std)
        gaussian = -0.5 * z * z - log_std - 0.5 * _LOG_2PI
        return (gaussian - log_one_minus_tanh_sq(pre_tanh)).sum(dim=-1).to(self.mu.dtype)

    def entropy(self) -> torch.Tensor:
        """Entropy estimate per step [...]: exact Gaussian entropy + one reparameterised sample of
        E[log(1 - tanh(u)^2)] (the tanh change of variables), differentiable in mu and log_std."""
        self._require_stochastic("entropy")
        gaussian = (self.log_std + 0.5 * (1.0 + _LOG_2PI)).sum(dim=-1)
        pre_tanh = self.mu + self.std * torch.randn_like(self.mu)
        return gaussian + log_one_minus_tanh_sq(pre_tanh).sum(dim=-1)

    def __getitem__(self, index) -> ActionDistribution:
        """Index the leading (non-action) dims, e.g. ``dist[:, -1]`` for the last step."""
        return ActionDistribution(
            self.mu[index],
            None if self.log_std is None else self.log_std[index],
            None if self.returns_to_go is None else self.returns_to_go[index],
        )
