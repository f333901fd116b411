"""The RL math every finetuning algorithm shares: pure functions, torch tensors in and out.

GRPO-DT (paper Algorithm 1) uses ``group_advantages`` (Eq. 2), ``clipped_surrogate`` (Eq. 1 at
level "token", Eq. 3 at level "sequence", GSPO at level "geometric"), ``approx_kl``,
``active_sampling_probs`` and ``discounted_return``. PPO, ODT, ODT+TD3 and IQL use
``lambda_returns``, ``ppo_value_loss``, ``td3_target``, ``expectile_loss`` and ``hindsight_rtg``.

Shapes: log-probabilities and masks are ``[batch, time]`` (mask True where a step is real), a
sequence's advantage is ``[batch]``. Nothing here keeps state or touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

RatioLevel = Literal["token", "sequence", "geometric"]
RATIO_LEVELS: tuple[str, ...] = ("token", "sequence", "geometric")

# exp() of a summed log-ratio over a long sub-trajectory can overflow float32 (exp(89) = inf). The
# clipped objective has zero gradient far outside [1-eps, 1+eps] whenever the advantage sign agrees
# with the clip, and an exploding gradient when it does not; clamping the log-ratio here keeps the
# loss finite and changes nothing for ratios within e^±20.
MAX_LOG_RATIO = 20.0


def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is True (all of them without a mask); 0
    when no position is valid."""
    if mask is None:
        return values.mean()
    maskf = mask.to(values.dtype)
    return (values * maskf).sum() / maskf.sum().clamp_min(1.0)


# --------------------------------------------------------------------------------------------
# GRPO: group-normalised advantages (Eq. 2) with the paper's minimum-deviation rule (Table 6)
# --------------------------------------------------------------------------------------------


class GroupAdvantages(NamedTuple):
    advantages: Tensor
    """[N, G] normalised advantages; 0 for members of dropped groups (and, with rule 'member',
    for members closer than min_deviation to their group mean)"""
    valid: Tensor
    """[N] bool: the group carries a learning signal (kept for the update)"""


def group_advantages(
    scores: Tensor,
    min_std: float = 1e-6,
    min_deviation: float = 0.0,
    deviation_rule: Literal["group", "member"] = "group",
) -> GroupAdvantages:
    """Eq. (2): ``A_ki = (r_ki - mean_i r_ki) / std_i r_ki`` over each group (row) of ``scores [N, G]``.

    ``min_deviation`` is the paper's ε_GRPO, "the minimum deviation of a sub-trajectory's raw
    reward from the mean reward of its group" (Table 6). Our reading, selected by ``deviation_rule``:

    * ``"group"`` (default): a group whose largest ``|r_ki - mean|`` is below ε_GRPO is noise (all
      members scored alike), so it is dropped: ``valid`` False and advantages 0. With ε_GRPO = 0
      only groups with identical scores are dropped.
    * ``"member"``: each member whose own ``|r_ki - mean|`` is below ε_GRPO gets advantage 0 (it is
      neither better nor worse than its group); a group is valid while any member keeps a signal.

    The std is the unbiased sample std (TRL's convention), floored at ``min_std`` so that a group of
    near-identical scores that passes the ε rule cannot divide by ~0.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [num_groups, group_size], got shape {tuple(scores.shape)}")
    if scores.shape[1] < 2:
        raise ValueError("a group needs at least 2 members to have a baseline")
    if deviation_rule not in ("group", "member"):
        raise ValueError(f"deviation_rule must be 'group' or 'member', got {deviation_rule!r}")
    scores = scores.float()
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, keepdim=True).clamp_min(min_std)
    deviation = (scores - mean).abs()
    advantages = (scores - mean) / std
    if deviation_rule == "group":
        # "<" with ε = 0 never drops, so identical scores are caught explicitly (max deviation 0).
        max_deviation = deviation.max(dim=1).values
        valid = (max_deviation >= min_deviation) & (max_deviation > 0)
        advantages = advantages * valid[:, None]
    else:
        keep = (deviation >= min_deviation) & (deviation > 0)
        advantages = advantages * keep
        valid = keep.any(dim=1)
    return GroupAdvantages(advantages, valid)


# --------------------------------------------------------------------------------------------
# Importance ratios and the clipped surrogate (Eq. 1 token level, Eq. 3 sequence level, GSPO)
# --------------------------------------------------------------------------------------------


def _check_shapes(logp_new: Tensor, logp_old: Tensor, mask: Tensor) -> None:
    if logp_new.shape != logp_old.shape or logp_new.shape != mask.shape or logp_new.dim() != 2:
        raise ValueError(
            "logp_new, logp_old and mask must all be [batch, time]; got "
            f"{tuple(logp_new.shape)}, {tuple(logp_old.shape)}, {tuple(mask.shape)}"
        )


def log_importance_ratio(logp_new: Tensor, logp_old: Tensor, mask: Tensor, level: RatioLevel) -> Tensor:
    """Log of the importance ratio at ``level``: ``[batch, time]`` for "token", ``[batch]`` otherwise.

    * ``"token"``: ``log w_t = log π_θ(a_t|·) - log π_old(a_t|·)`` per step (Eq. 1); padded steps 0.
    * ``"sequence"``: ``Σ_t log w_t`` — the full sequence likelihood ratio
      ``π_θ(τ|s_k,g_k) / π_old(τ|s_k,g_k)`` of the paper's Eq. (3).
    * ``"geometric"``: ``(1/|τ|) Σ_t log w_t`` — GSPO's geometric mean of the token ratios (Zheng
      et al., 2025). TRL calls this level ``"sequence"``; the paper reports Eq. (3) works better.
    """
    _check_shapes(logp_new, logp_old, mask)
    if level not in RATIO_LEVELS:
        raise ValueError(f"level must be one of {RATIO_LEVELS}, got {level!r}")
    maskf = mask.to(logp_new.dtype)
    token = (logp_new - logp_old) * maskf
    if level == "token":
        return token.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    summed = token.sum(dim=1)
    if level == "geometric":
        summed = summed / maskf.sum(dim=1).clamp_min(1.0)
    return summed.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def _per_sequence_objective(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> Tensor:
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    return torch.minimum(unclipped, clipped)


def clipped_surrogate(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    level: RatioLevel,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> Tensor:
    """The PPO/GRPO clipped surrogate as a loss to *minimise* (the negated objective, no KL term).

    ``min(w·A, clip(w, 1-ε, 1+ε_high)·A)`` with ``w`` from ``log_importance_ratio`` at ``level``:

    * ``"token"`` (Eq. 1): per-step terms, averaged over each sequence's valid steps, then over
      sequences (sequences without valid steps are left out).
    * ``"sequence"`` (Eq. 3) and ``"geometric"`` (GSPO): one term per sequence, averaged over the
      sequences that have at least one valid step.

    ``clip_eps_high`` (default ``clip_eps``) allows an asymmetric clip range (DAPO / TRL's
    ``epsilon_high``).
    """
    clip_high = clip_eps if clip_eps_high is None else clip_eps_high
    if advantages.shape != logp_new.shape[:1]:
        raise ValueError(f"advantages must be [batch]={tuple(logp_new.shape[:1])}, got {tuple(advantages.shape)}")
    log_ratio = log_importance_ratio(logp_new, logp_old, mask, level)
    ratio = torch.exp(log_ratio)
    has_steps = mask.any(dim=1)
    if level == "token":
        maskf = mask.to(logp_new.dtype)
        per_step = _per_sequence_objective(ratio, advantages[:, None], clip_eps, clip_high) * maskf
        per_sequence = per_step.sum(dim=1) / maskf.sum(dim=1).clamp_min(1.0)
    else:
        per_sequence = _per_sequence_objective(ratio, advantages, clip_eps, clip_high)
    count = has_steps.sum().clamp_min(1)
    return -(per_sequence * has_steps).sum() / count


@dataclass
class SurrogateStats:
    """Diagnostics of one clipped-surrogate evaluation (plain floats, ready to log)."""

    clip_fraction: float
    """share of ratios (steps at level 'token', sequences otherwise) outside [1-ε, 1+ε_high]"""
    ratio_mean: float
    """mean importance ratio at the chosen level"""
    ratio_min: float
    """smallest importance ratio"""
    ratio_max: float
    """largest importance ratio"""
    approx_kl: float
    """per-step KL estimate (r-1) - log r (Schulman's k3), averaged over valid steps"""


@torch.no_grad()
def surrogate_stats(
    logp_new: Tensor,
    logp_old: Tensor,
    mask: Tensor,
    level: RatioLevel,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> SurrogateStats:
    """Clip fraction, ratio mean/min/max and approximate KL for the ratios ``clipped_surrogate`` uses."""
    clip_high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(log_importance_ratio(logp_new, logp_old, mask, level))
    ratio = ratio[mask] if level == "token" else ratio[mask.any(dim=1)]
    if ratio.numel() == 0:
        return SurrogateStats(0.0, 1.0, 1.0, 1.0, 0.0)
    clipped = (ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_high)
    return SurrogateStats(
        clip_fraction=clipped.float().mean().item(),
        ratio_mean=ratio.mean().item(),
        ratio_min=ratio.min().item(),
        ratio_max=ratio.max().item(),
        approx_kl=approx_kl(logp_new, logp_old, mask).item(),
    )


def approx_kl(logp_new: Tensor, logp_old: Tensor, mask: Tensor) -> Tensor:
    """Per-step KL(π_old ‖ π_θ) estimate ``(r - 1) - log r`` with ``r = π_θ/π_old`` (Schulman's k3,
    non-negative, unbiased under samples from π_old), averaged over valid steps; differentiable, so
    ``kl_beta * approx_kl(...)`` can serve as the KL penalty of Eq. (1)/(3)."""
    _check_shapes(logp_new, logp_old, mask)
    log_ratio = (logp_new - logp_old).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return masked_mean(torch.expm1(log_ratio) - log_ratio, mask)


# --------------------------------------------------------------------------------------------
# Reset-point selection and sub-trajectory scores
# --------------------------------------------------------------------------------------------


def active_sampling_probs(variances: Tensor, temperature: float = 1.0, uniform: bool = False) -> Tensor:
    """Reset-point distribution over a trajectory's steps: ``p_t = softmax(σ_t² / temperature)``.

    The paper's active sampling (Sec. 3.2) uses temperature 1 on the per-step action variance
    ``σ_t²`` of the policy; ``uniform=True`` gives every step the same probability (the ablation of
    Fig. 1e). ``variances`` is ``[T]``; the result sums to 1.
    """
    if variances.dim() != 1 or variances.numel() == 0:
        raise ValueError(f"variances must be a non-empty [T] vector, got shape {tuple(variances.shape)}")
    if uniform:
        return torch.full_like(variances, 1.0 / variances.numel(), dtype=torch.float32)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(variances.float() / temperature, dim=0)


def discounted_return(rewards: Tensor, gamma: float, mask: Tensor | None = None) -> Tensor:
    """``Σ_t γ^t r_t`` along the last dim (the score of a sub-trajectory plus its evaluation steps);
    steps where ``mask`` is False (after an episode ended) contribute nothing."""
    steps = rewards.shape[-1]
    discounts = gamma ** torch.arange(steps, dtype=torch.float64, device=rewards.device)
    weighted = rewards.double() * discounts
    if mask is not None:
        weighted = weighted * mask.double()
    return weighted.sum(dim=-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def hindsight_rtg(rewards: Tensor, gamma: float = 1.0) -> Tensor:
    """Hindsight return relabeling (ODT): the RTG at step t is the return achieved from t on,
    ``g_t = Σ_{k≥t} γ^{k-t} r_k`` along the last dim (γ = 1: the plain reverse cumulative sum)."""
    if gamma == 1.0:
        return rewards.flip(-1).cumsum(-1).flip(-1)
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


# --------------------------------------------------------------------------------------------
# Baselines: PPO (λ-returns, value loss), TD3 (targets), IQL (expectile)
# --------------------------------------------------------------------------------------------


def lambda_returns(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
    episode_ends: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (CleanRL convention), time along dim 0 (``[T]`` or ``[T, N]``).

    ``values[t] = V(s_t)``, ``next_values[t] = V(s_{t+1})``, ``dones[t]`` True when ``s_{t+1}`` is
    terminal (no bootstrap). ``episode_ends[t]`` (default ``dones``) is True when the episode ends at
    t for any reason — terminal or time limit — and stops the λ-trace; on a time limit pass
    ``dones`` False and ``episode_ends`` True so the value of the truncated state is bootstrapped.

    ``δ_t = r_t + γ(1-done_t)V(s_{t+1}) - V(s_t)``, ``A_t = δ_t + γλ(1-end_t)A_{t+1}``.
    Returns ``(advantages, returns)`` with ``returns = advantages + values`` (the λ-returns).
    """
    ends = dones if episode_ends is None else episode_ends
    not_done = 1.0 - dones.to(values.dtype)
    not_end = 1.0 - ends.to(values.dtype)
    deltas = rewards + gamma * not_done * next_values - values
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * not_end[t] * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_value_loss(values: Tensor, returns: Tensor, old_values: Tensor | None = None,
                   clip_eps: float | None = None) -> Tensor:
    """``0.5 · mean((V - R)²)``; with ``old_values`` and ``clip_eps`` the CleanRL clipped variant
    ``0.5 · mean(max((V - R)², (V_old + clip(V - V_old, ±ε) - R)²))``."""
    unclipped = (values - returns) ** 2
    if old_values is None or clip_eps is None:
        return 0.5 * unclipped.mean()
    clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    return 0.5 * torch.maximum(unclipped, (clipped_values - returns) ** 2).mean()


def td3_target(reward: Tensor, done: Tensor, next_q1: Tensor, next_q2: Tensor, gamma: float) -> Tensor:
    """Clipped double-Q target ``r + γ(1 - done)·min(Q1', Q2')`` (Fujimoto et al., 2018); ``done``
    is True only for terminal transitions (time limits still bootstrap). No gradient flows."""
    with torch.no_grad():
        return reward + gamma * (1.0 - done.to(reward.dtype)) * torch.minimum(next_q1, next_q2)


def expectile_loss(diff: Tensor, expectile: float, mask: Tensor | None = None) -> Tensor:
    """Asymmetric L2 of IQL / Reinformer: ``mean(|τ - 1(diff < 0)| · diff²)`` with
    ``diff = target - prediction`` (over the positions where ``mask`` is True); τ > 0.5 pushes the
    prediction towards an upper expectile."""
    if not 0.0 < expectile < 1.0:
        raise ValueError(f"expectile must be in (0, 1), got {expectile}")
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return masked_mean(weight * diff**2, mask)
