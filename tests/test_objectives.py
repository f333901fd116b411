"""Hand-computed checks of dtrl.objectives (Eq. 1-3, ε_GRPO rule, active sampling, λ-returns ...)."""

import math

import pytest
import torch

from dtrl import objectives as O


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# ---------------------------------------------------------------- group advantages (Eq. 2)


def test_group_advantages_normalises_each_group():
    scores = t([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]])
    adv, valid = O.group_advantages(scores)
    # group 1: mean 2, unbiased std 1 -> -1, 0, 1 ; group 2: mean 12, std sqrt(12)
    assert torch.allclose(adv[0], t([-1.0, 0.0, 1.0]))
    s = math.sqrt(((-2) ** 2 * 2 + 4**2) / 2)
    assert torch.allclose(adv[1], t([-2 / s, -2 / s, 4 / s]))
    assert valid.tolist() == [True, True]


def test_group_rule_drops_groups_below_min_deviation():
    scores = t([[1.0, 1.5, 2.0], [0.0, 0.0, 3.0], [5.0, 5.0, 5.0]])
    adv, valid = O.group_advantages(scores, min_deviation=0.6)
    # max |r - mean|: 0.5 (< 0.6, dropped), 2.0 (kept), 0 (dropped)
    assert valid.tolist() == [False, True, False]
    assert torch.all(adv[0] == 0) and torch.all(adv[2] == 0)
    assert torch.allclose(adv[1], t([-1.0, -1.0, 2.0]) / math.sqrt(3.0))


def test_identical_scores_are_dropped_even_with_zero_epsilon():
    adv, valid = O.group_advantages(t([[2.0, 2.0, 2.0, 2.0]]), min_deviation=0.0)
    assert valid.tolist() == [False]
    assert torch.all(adv == 0) and torch.isfinite(adv).all()


def test_member_rule_zeroes_members_close_to_the_mean():
    scores = t([[0.0, 1.9, 2.1, 4.0]])  # mean 2, deviations 2, .1, .1, 2
    adv, valid = O.group_advantages(scores, min_deviation=0.5, deviation_rule="member")
    std = scores.std().item()
    assert torch.allclose(adv, t([[-2 / std, 0.0, 0.0, 2 / std]]))
    assert valid.tolist() == [True]


def test_min_std_floor_bounds_advantages():
    adv, _ = O.group_advantages(t([[0.0, 1e-9]]), min_std=1e-3)
    assert adv.abs().max().item() <= 1e-9 / 1e-3 + 1e-12


# ---------------------------------------------------------------- clipped surrogate (Eq. 1, 3, GSPO)

LOGP_OLD = t([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_all_levels_equal_minus_mean_advantage_when_ratio_is_one():
    adv = t([0.5, -2.0])
    for level in O.RATIO_LEVELS:
        loss = O.clipped_surrogate(LOGP_OLD.clone(), LOGP_OLD, adv, MASK, level, 0.2)
        assert loss.item() == pytest.approx(-(0.5 - 2.0) / 2)


def test_sequence_level_uses_summed_log_ratio_and_clips_both_sides():
    # seq 0: log-ratio sum 0.1+0.1+0.1 = 0.3 -> w = e^0.3 = 1.3499 (clipped to 1.2 for A > 0)
    # seq 1: log-ratio sum -0.2 - 0.3 = -0.5 (third step masked) -> w = e^-0.5 = 0.6065;
    #        A < 0: min(w·A, 0.8·A) = 0.8·A (clipped at the low side)
    new = LOGP_OLD + t([[0.1, 0.1, 0.1], [-0.2, -0.3, 5.0]])
    adv = t([1.0, -1.0])
    loss = O.clipped_surrogate(new, LOGP_OLD, adv, MASK, "sequence", 0.2)
    assert loss.item() == pytest.approx(-(1.2 * 1.0 + 0.8 * -1.0) / 2, abs=1e-6)
    # unclipped branch: A < 0 with ratio above 1 keeps the (more pessimistic) unclipped term
    adv2 = t([-1.0, 1.0])
    loss2 = O.clipped_surrogate(new, LOGP_OLD, adv2, MASK, "sequence", 0.2)
    assert loss2.item() == pytest.approx(-(math.exp(0.3) * -1.0 + math.exp(-0.5) * 1.0) / 2, abs=1e-6)


def test_geometric_level_uses_mean_log_ratio():
    new = LOGP_OLD + t([[0.1, 0.1, 0.1], [-0.2, -0.3, 5.0]])
    adv = t([1.0, 1.0])
    loss = O.clipped_surrogate(new, LOGP_OLD, adv, MASK, "geometric", 0.5)
    # w0 = e^(0.3/3) = e^0.1, w1 = e^(-0.5/2) = e^-0.25; both inside [0.5, 1.5]
    assert loss.item() == pytest.approx(-(math.exp(0.1) + math.exp(-0.25)) / 2, abs=1e-6)


def test_token_level_averages_valid_steps_then_sequences():
    new = LOGP_OLD + t([[0.0, 0.5, -0.5], [0.1, -1.0, 9.0]])
    adv = t([1.0, -1.0])
    loss = O.clipped_surrogate(new, LOGP_OLD, adv, MASK, "token", 0.2)
    seq0 = (1.0 + 1.2 + math.exp(-0.5)) / 3  # A>0: min(w, clip(w)) -> 1, 1.2 (clipped), e^-.5 (unclipped)
    seq1 = (-math.exp(0.1) + -0.8) / 2  # A<0: -max(w, clip(w)) -> -e^.1, -0.8 (clip of e^-1); step 3 masked
    assert loss.item() == pytest.approx(-(seq0 + seq1) / 2, abs=1e-6)


def test_asymmetric_clip_high():
    new = LOGP_OLD + t([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0]])
    adv = t([1.0, 0.0])
    loss = O.clipped_surrogate(new, LOGP_OLD, adv, MASK, "sequence", 0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-1.28 / 2, abs=1e-6)


def test_sequences_without_valid_steps_are_left_out():
    mask = torch.tensor([[True, True, True], [False, False, False]])
    adv = t([1.0, 100.0])
    for level in O.RATIO_LEVELS:
        loss = O.clipped_surrogate(LOGP_OLD.clone(), LOGP_OLD, adv, mask, level, 0.2)
        assert loss.item() == pytest.approx(-1.0)


def test_surrogate_gradient_flows_only_through_unclipped_terms():
    new = (LOGP_OLD + t([[0.1, 0.1, 0.1], [-0.1, 0.0, 0.0]])).requires_grad_(True)
    adv = t([1.0, 1.0])
    O.clipped_surrogate(new, LOGP_OLD, adv, MASK, "sequence", 0.2).backward()
    assert torch.all(new.grad[0] == 0)  # ratio e^0.3 clipped at 1.2 with A > 0: no gradient
    assert new.grad[1, 0].item() == pytest.approx(-math.exp(-0.1) / 2, abs=1e-6)
    assert new.grad[1, 2].item() == 0.0  # masked step


def test_huge_log_ratios_stay_finite():
    new = LOGP_OLD + 500.0
    loss = O.clipped_surrogate(new, LOGP_OLD, t([-1.0, -1.0]), MASK, "sequence", 0.2)
    assert torch.isfinite(loss)


def test_bad_shapes_and_levels_are_rejected():
    with pytest.raises(ValueError):
        O.clipped_surrogate(LOGP_OLD, LOGP_OLD, t([1.0, 1.0]), MASK, "tokens", 0.2)
    with pytest.raises(ValueError):
        O.clipped_surrogate(LOGP_OLD, LOGP_OLD, t([1.0]), MASK, "token", 0.2)
    with pytest.raises(ValueError):
        O.clipped_surrogate(LOGP_OLD[:, :2], LOGP_OLD, t([1.0, 1.0]), MASK, "token", 0.2)


def test_surrogate_stats_and_approx_kl():
    new = LOGP_OLD + t([[0.1, 0.1, 0.1], [-0.2, -0.3, 5.0]])
    stats = O.surrogate_stats(new, LOGP_OLD, MASK, "sequence", 0.2)
    assert stats.clip_fraction == pytest.approx(1.0)  # e^0.3 > 1.2 and e^-0.5 < 0.8
    assert stats.ratio_max == pytest.approx(math.exp(0.3), rel=1e-5)
    assert stats.ratio_min == pytest.approx(math.exp(-0.5), rel=1e-5)
    kl_steps = [math.expm1(x) - x for x in (0.1, 0.1, 0.1, -0.2, -0.3)]
    assert stats.approx_kl == pytest.approx(sum(kl_steps) / 5, rel=1e-5)
    token = O.surrogate_stats(new, LOGP_OLD, MASK, "token", 0.2)
    assert token.clip_fraction == pytest.approx(1 / 5)  # only -0.3 -> e^-0.3 = 0.74 < 0.8
    same = O.surrogate_stats(LOGP_OLD, LOGP_OLD, MASK, "token", 0.2)
    assert same.approx_kl == 0.0 and same.ratio_mean == 1.0 and same.clip_fraction == 0.0


# ---------------------------------------------------------------- active sampling, returns


def test_active_sampling_probs_is_softmax_of_variance():
    var = t([0.0, 1.0, 2.0])
    p = O.active_sampling_probs(var)
    z = 1 + math.e + math.e**2
    assert torch.allclose(p, t([1 / z, math.e / z, math.e**2 / z]))
    assert torch.allclose(O.active_sampling_probs(var, uniform=True), t([1 / 3] * 3))
    sharp = O.active_sampling_probs(var, temperature=0.5)
    assert sharp[2] > p[2]


def test_discounted_return_and_mask():
    r = t([[1.0, 2.0, 4.0]])
    assert O.discounted_return(r, 0.5).item() == pytest.approx(1 + 1 + 1)
    assert O.discounted_return(r, 0.5, mask=torch.tensor([[True, True, False]])).item() == pytest.approx(2.0)


def test_hindsight_rtg():
    r = t([1.0, 2.0, 3.0])
    assert O.hindsight_rtg(r).tolist() == [6.0, 5.0, 3.0]
    assert torch.allclose(O.hindsight_rtg(r, gamma=0.5), t([1 + 0.5 * (2 + 1.5), 2 + 1.5, 3.0]))


def test_lambda_returns_hand_computed():
    rewards = t([1.0, 1.0, 1.0])
    values = t([0.5, 0.5, 0.5])
    next_values = t([0.5, 0.5, 2.0])
    dones = torch.tensor([False, False, True])
    adv, ret = O.lambda_returns(rewards, values, next_values, dones, gamma=0.9, lam=0.5)
    d0 = d1 = 1 + 0.9 * 0.5 - 0.5  # 0.95
    d2 = 1 - 0.5  # terminal: no bootstrap
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(adv, t([a0, a1, a2]))
    assert torch.allclose(ret, adv + values)
    # time limit at t=1: bootstrap V(s_2) but cut the trace
    ends = torch.tensor([False, True, True])
    adv2, _ = O.lambda_returns(rewards, values, next_values, torch.tensor([False, False, False]),
                               gamma=0.9, lam=0.5, episode_ends=ends)
    assert adv2[1].item() == pytest.approx(d1)
    assert adv2[2].item() == pytest.approx(1 + 0.9 * 2.0 - 0.5)


def test_td3_target_expectile_and_value_loss():
    target = O.td3_target(t([1.0, 1.0]), torch.tensor([False, True]), t([3.0, 3.0]), t([2.0, 5.0]), 0.5)
    assert target.tolist() == [2.0, 1.0]
    diff = t([2.0, -2.0])
    assert O.expectile_loss(diff, 0.9).item() == pytest.approx((0.9 * 4 + 0.1 * 4) / 2)
    v, R, v_old = t([1.0, 3.0]), t([0.0, 0.0]), t([0.0, 0.0])
    assert O.ppo_value_loss(v, R).item() == pytest.approx(0.5 * (1 + 9) / 2)
    # clipped values 0.5, 0.5 -> (0.25, 0.25); max with unclipped (1, 9)
    assert O.ppo_value_loss(v, R, v_old, clip_eps=0.5).item() == pytest.approx(0.5 * (1 + 9) / 2)
    assert O.ppo_value_loss(t([-1.0]), t([1.0]), t([0.0]), clip_eps=0.5).item() == pytest.approx(0.5 * 4)
