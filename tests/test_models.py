"""Models: action distribution maths, KV-cached == uncached inference, checkpoints, losses, LAMB."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dtrl.config import ModelConfig
from dtrl.errors import DtrlError
from dtrl.models import ActionDistribution, DecisionTransformer, Reinformer, build_model
from dtrl.models.critics import MLP, TanhGaussianActor, TwinQ, ValueNet, default_hidden_dim
from dtrl.models.distributions import log_one_minus_tanh_sq
from dtrl.optim import Lamb, linear_warmup, make_optimizer

OBS, ACT = 5, 2


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: extra threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(**overrides) -> ModelConfig:
    values = dict(n_layer=3, n_head=2, embed_dim=32, context_length=3, dropout=0.0, max_timestep=200)
    values.update(overrides)
    return ModelConfig(**values)


def random_episode(batch: int, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, steps, OBS, generator=gen)
    actions = torch.rand(batch, steps, ACT, generator=gen) * 2 - 1
    returns_to_go = torch.randn(batch, steps, generator=gen)
    timesteps = torch.arange(steps).expand(batch, steps)
    return states, actions, returns_to_go, timesteps


def rollout_with_cache(model, states, actions, returns_to_go, timesteps):
    """Step through an episode with the KV cache; returns per-step (mu, log_std, rtg fed) [B, T, ...]."""
    cache = model.new_cache(states.shape[0])
    mus, log_stds, rtgs = [], [], []
    with torch.no_grad():
        for t in range(states.shape[1]):
            dist = model.act(cache, returns_to_go[:, t], states[:, t], timesteps[:, t])
            mus.append(dist.mu)
            log_stds.append(dist.log_std if dist.log_std is not None else dist.mu * 0)
            rtgs.append(dist.returns_to_go)
            model.append_action(cache, actions[:, t])
    return torch.stack(mus, 1), torch.stack(log_stds, 1), torch.stack(rtgs, 1)


# ---------------------------------------------------------------------------------------------
# ActionDistribution


def reference_log_prob(mu, log_std, actions):
    """Independent float64 reference: Normal(mu, std).log_prob(atanh a) - log(1 - a^2), summed."""
    mu, std, a = mu.double(), log_std.double().exp(), actions.double()
    base = torch.distributions.Normal(mu, std).log_prob(torch.atanh(a))
    return (base - torch.log(1 - a * a)).sum(-1)


def test_log_prob_matches_float64_reference_including_near_boundary():
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(4, 6, 3, generator=gen) * 2
    log_std = torch.rand(4, 6, 3, generator=gen) * 3 - 2.5
    actions = (torch.rand(4, 6, 3, generator=gen) * 2 - 1) * 0.999
    # near-boundary actions, representable in float32: 1 - 1e-6-ish and the largest float32 below 1
    actions[0, 0] = torch.tensor([0.999999, -0.999999, 0.9999999])
    actions[0, 1] = torch.tensor([float(np.nextafter(np.float32(1), np.float32(0)))] * 3)
    actions[0, 2] = torch.tensor([-0.99999994, 0.5, 1e-7])
    dist = ActionDistribution(mu, log_std)
    ours = dist.log_prob(actions)
    ref = reference_log_prob(mu, log_std, actions.float())
    assert ours.shape == (4, 6)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-4)


def test_log_prob_works_for_single_step_shape_and_has_gradients():
    mu = torch.zeros(3, ACT, requires_grad=True)
    log_std = torch.zeros(3, ACT, requires_grad=True)
    dist = ActionDistribution(mu, log_std)
    lp = dist.log_prob(torch.zeros(3, ACT))
    assert lp.shape == (3,)
    torch.testing.assert_close(lp, torch.full((3,), -ACT * 0.5 * math.log(2 * math.pi)))
    lp.sum().backward()
    assert mu.grad is not None and log_std.grad is not None


def test_stable_log_det_matches_naive_form_where_naive_is_accurate():
    u = torch.linspace(-8, 8, 101, dtype=torch.float64)
    naive = torch.log(1 - torch.tanh(u) ** 2)
    torch.testing.assert_close(log_one_minus_tanh_sq(u), naive, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(log_one_minus_tanh_sq(torch.tensor([-500.0, 500.0]))).all()


def test_sample_log_prob_equals_recomputed_log_prob_bitwise():
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(64, 4, generator=gen) * 4  # many samples land near the boundary
    log_std = torch.full((64, 4), 1.5)
    dist = ActionDistribution(mu, log_std)
    action = dist.sample(generator=gen)
    assert action.dtype == torch.float32 and (action.abs() < 1).all()
    own = dist.log_prob(action)
    recomputed = ActionDistribution(mu.clone(), log_std.clone()).log_prob(action.clone())
    assert torch.equal(own, recomputed)
    # and a float64 copy of the stored action gives the same value too (canonical float32 path)
    assert torch.equal(dist.log_prob(action.double()), own)


def test_mean_variance_and_entropy_estimate():
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(2, 3, generator=gen)
    log_std = torch.randn(2, 3, generator=gen) * 0.3 - 0.5
    dist = ActionDistribution(mu, log_std)
    torch.testing.assert_close(dist.mean, torch.tanh(mu))
    torch.testing.assert_close(dist.variance, (2 * log_std).exp().mean(-1))
    # the one-sample entropy estimate is unbiased: its average matches -E[log p(a)]
    torch.manual_seed(0)
    many = ActionDistribution(mu.expand(20000, 2, 3), log_std.expand(20000, 2, 3))
    entropy = many.entropy().mean(0)
    monte_carlo = -many.log_prob(many.sample()).mean(0)
    torch.testing.assert_close(entropy, monte_carlo, atol=0.03, rtol=0)


def test_deterministic_distribution():
    mu = torch.randn(2, 4, ACT)
    dist = ActionDistribution(mu, None)
    torch.testing.assert_close(dist.mean, torch.tanh(mu))
    assert torch.equal(dist.sample(), dist.mean)
    assert torch.equal(dist.variance, torch.zeros(2, 4))
    with pytest.raises(DtrlError, match="deterministic"):
        dist.log_prob(torch.zeros(2, 4, ACT))
    with pytest.raises(DtrlError, match="deterministic"):
        dist.entropy()


# ---------------------------------------------------------------------------------------------
# Cached == uncached inference


@pytest.mark.parametrize("architecture", ["dt", "reinformer"])
@pytest.mark.parametrize("policy", ["gaussian", "deterministic"])
def test_cached_rollout_equals_uncached_forward(architecture, policy):
    torch.manual_seed(0)
    model = build_model(small_config(architecture=architecture, policy=policy), OBS, ACT).eval()
    steps = 17  # far beyond the context (K = 3 timesteps = 9 tokens), 3 layers
    states, actions, returns_to_go, timesteps = random_episode(4, steps)
    cached_mu, cached_log_std, fed_rtg = rollout_with_cache(model, states, actions, returns_to_go, timesteps)
    if architecture == "dt":
        assert torch.equal(fed_rtg, returns_to_go)
    with torch.no_grad():
        full = model(states, actions, fed_rtg, timesteps)
    torch.testing.assert_close(cached_mu, full.mu, atol=1e-5, rtol=1e-5)
    if policy == "gaussian":
        torch.testing.assert_close(cached_log_std, full.log_std, atol=1e-5, rtol=1e-5)
    # the sliding window matters: a plain causal forward over all 17 steps would differ
    assert not torch.allclose(full.mu[:, :3], full.mu[:, 10:13], atol=1e-3)


def test_cached_rollout_without_timestep_embedding_and_with_padding_rows():
    torch.manual_seed(1)
    model = build_model(small_config(timestep_embedding=False, context_length=2, n_layer=2), OBS, ACT).eval()
    states, actions, returns_to_go, timesteps = random_episode(3, 9, seed=4)
    cached_mu, _, _ = rollout_with_cache(model, states, actions, returns_to_go, timesteps)
    with torch.no_grad():
        full = model(states, actions, returns_to_go, timesteps)
    torch.testing.assert_close(cached_mu, full.mu, atol=1e-5, rtol=1e-5)


def test_sliding_window_band_within_training_window_is_plain_causal():
    torch.manual_seed(2)
    model = build_model(small_config(context_length=4), OBS, ACT).eval()
    states, actions, returns_to_go, timesteps = random_episode(2, 6, seed=5)
    with torch.no_grad():
        full = model(states, actions, returns_to_go, timesteps)
        # the last 4 steps alone (timesteps kept): step 5 sees exactly what it saw before, up to
        # layer-wise spread; steps within one window of the start must equal a fresh window's output
        window = model(states[:, :4], actions[:, :4], returns_to_go[:, :4], timesteps[:, :4])
    torch.testing.assert_close(window.mu, full.mu[:, :4], atol=1e-6, rtol=1e-6)


def test_left_padding_mask_equals_unpadded_forward():
    torch.manual_seed(3)
    model = build_model(small_config(), OBS, ACT).eval()
    states, actions, returns_to_go, timesteps = random_episode(1, 5, seed=6)
    pad = 3
    mask = torch.tensor([[False] * pad + [True] * 5])
    padded = [torch.cat([torch.full_like(x[:, :pad], 7.0), x], dim=1) for x in (states, actions, returns_to_go)]
    padded_t = torch.cat([torch.zeros(1, pad, dtype=torch.long), timesteps], dim=1)
    with torch.no_grad():
        ref = model(states, actions, returns_to_go, timesteps)
        out = model(*padded, padded_t, mask)
    torch.testing.assert_close(out.mu[:, pad:], ref.mu, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out.mu).all()


@pytest.mark.parametrize("architecture", ["dt", "reinformer"])
def test_prefill_with_mixed_history_lengths_continues_exactly(architecture):
    torch.manual_seed(4)
    model = build_model(small_config(architecture=architecture), OBS, ACT).eval()
    states, actions, returns_to_go, timesteps = random_episode(3, 14, seed=7)
    if architecture == "reinformer":  # condition on the model's own return predictions, as a rollout would
        _, _, returns_to_go = rollout_with_cache(model, states, actions, returns_to_go, timesteps)
    with torch.no_grad():
        full = model(states, actions, returns_to_go, timesteps)
    # each row's history is the last h steps before step 10 (h = 10, 6, 2), left padded to 10
    start, lengths = 10, [10, 6, 2]
    mask = torch.tensor([[i >= start - h for i in range(start)] for h in lengths])
    cache = model.new_cache(3)
    with torch.no_grad():
        model.prefill(cache, states[:, :start], actions[:, :start], returns_to_go[:, :start], timesteps[:, :start],
                      mask)
        for t in range(start, 14):
            dist = model.act(cache, returns_to_go[:, t], states[:, t], timesteps[:, t])
            model.append_action(cache, actions[:, t])
    # row 0 has 10 steps of history >= receptive field (3 layers x 3 = 9): exact
    torch.testing.assert_close(dist.mu[0], full.mu[0, 13], atol=1e-5, rtol=1e-5)
    # rows 1 and 2 equal an uncached forward over their own truncated histories
    for row, h in ((1, 6), (2, 2)):
        with torch.no_grad():
            sl = slice(start - h, 14)
            short = model(states[row:row + 1, sl], actions[row:row + 1, sl], returns_to_go[row:row + 1, sl],
                          timesteps[row:row + 1, sl])
        torch.testing.assert_close(dist.mu[row], short.mu[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["dt", "reinformer"])
def test_receptive_field_history_reproduces_log_probs(architecture):
    # float64, so that rounding (~1e-15) cannot hide the weak influence of a token 3 layers away
    torch.manual_seed(5)
    model = build_model(small_config(architecture=architecture), OBS, ACT).double().eval()
    states, actions, returns_to_go, timesteps = (x.double() if x.is_floating_point() else x
                                                 for x in random_episode(2, 30, seed=8))
    field = model.receptive_field
    assert field == 3 * 3
    with torch.no_grad():
        full = model(states, actions, returns_to_go, timesteps)
        seg = slice(20, 25)
        # the exact minimum is ceil((n_layer (3K - 1) - 1) / 3) = 8 steps; one less changes the result
        for history, should_match in ((field, True), (8, True), (7, False), (2, False)):
            sl = slice(seg.start - history, seg.stop)
            part = model(states[:, sl], actions[:, sl], returns_to_go[:, sl], timesteps[:, sl])
            difference = (part[:, history:].log_prob(actions[:, seg])
                          - full[:, seg].log_prob(actions[:, seg])).abs().max()
            assert (float(difference) < 1e-11) == should_match, (history, float(difference))


def test_reset_rows_starts_those_rows_afresh():
    torch.manual_seed(6)
    model = build_model(small_config(), OBS, ACT).eval()
    states, actions, returns_to_go, timesteps = random_episode(2, 12, seed=9)
    cache = model.new_cache(2)
    with torch.no_grad():
        for t in range(6):
            model.act(cache, returns_to_go[:, t], states[:, t], timesteps[:, t])
            model.append_action(cache, actions[:, t])
        model.reset_rows(cache, torch.tensor([True, False]))
        mus = []
        for t in range(6, 12):
            # row 0 starts a new episode at timestep 0 with the data of steps 6..11
            ts = timesteps[:, t].clone()
            ts[0] = t - 6
            mus.append(model.act(cache, returns_to_go[:, t], states[:, t], ts).mu)
            model.append_action(cache, actions[:, t])
        fresh = model(states[:1, 6:], actions[:1, 6:], returns_to_go[:1, 6:], timesteps[:1, :6])
        full = model(states[1:], actions[1:], returns_to_go[1:], timesteps[1:])
    mus = torch.stack(mus, 1)
    torch.testing.assert_close(mus[0], fresh.mu[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mus[1], full.mu[0, 6:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["dt", "reinformer"])
def test_select_rows_continues_the_kept_rows_exactly_as_before(architecture):
    """Rollouts drop ended episodes from the cache mid-way (with a pending action in flight)."""
    torch.manual_seed(7)
    model = build_model(small_config(architecture=architecture), OBS, ACT).eval()
    states, actions, returns_to_go, timesteps = random_episode(4, 12, seed=3)
    full, kept = model.new_cache(4), None
    index = torch.tensor([1, 3])
    with torch.no_grad():
        for t in range(12):
            if t == 5:
                kept = full.select_rows(index)
            mu_full = model.act(full, returns_to_go[:, t], states[:, t], timesteps[:, t]).mu
            model.append_action(full, actions[:, t])
            if kept is not None:
                mu_kept = model.act(kept, returns_to_go[index, t], states[index, t], timesteps[index, t]).mu
                model.append_action(kept, actions[index, t])
                torch.testing.assert_close(mu_kept, mu_full[index], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("architecture", ["dt", "reinformer"])
def test_cache_for_a_few_steps_acts_as_the_full_size_cache(architecture):
    """``new_cache(B, max_steps=k)`` has fewer slots (cheaper) and the same actions for <= k steps."""
    torch.manual_seed(8)
    model = build_model(small_config(architecture=architecture, context_length=5), OBS, ACT).eval()
    states, actions, returns_to_go, timesteps = random_episode(3, 3, seed=5)
    big, small = model.new_cache(3), model.new_cache(3, max_steps=3)
    assert small.kv.slots < big.kv.slots
    with torch.no_grad():
        for t in range(3):
            mu_big = model.act(big, returns_to_go[:, t], states[:, t], timesteps[:, t]).mu
            mu_small = model.act(small, returns_to_go[:, t], states[:, t], timesteps[:, t]).mu
            torch.testing.assert_close(mu_small, mu_big, atol=1e-6, rtol=1e-6)
            model.append_action(big, actions[:, t])
            model.append_action(small, actions[:, t])


def test_cache_misuse_is_reported():
    model = build_model(small_config(), OBS, ACT).eval()
    cache = model.new_cache(1)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="append_action"):
            model.append_action(cache, torch.zeros(1, ACT))
        model.act(cache, torch.zeros(1), torch.zeros(1, OBS), torch.zeros(1, dtype=torch.long))
        with pytest.raises(RuntimeError, match="twice"):
            model.act(cache, torch.zeros(1), torch.zeros(1, OBS), torch.zeros(1, dtype=torch.long))


def test_invalid_model_config_is_a_dtrl_error():
    with pytest.raises(DtrlError, match="divisible"):
        DecisionTransformer(small_config(embed_dim=30, n_head=4), OBS, ACT)


# ---------------------------------------------------------------------------------------------
# Losses and temperature


def tiny_regression_data(steps: int = 4, batch: int = 32, seed: int = 0):
    """Actions are a fixed function of the state, so a small model can fit them."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, steps, OBS, generator=gen)
    actions = torch.tanh(states[..., :ACT] * 0.8)
    returns_to_go = torch.randn(batch, steps, generator=gen)
    timesteps = torch.arange(steps).expand(batch, steps)
    mask = torch.ones(batch, steps, dtype=torch.bool)
    mask[:4, :2] = False  # some left padding
    return states, actions, returns_to_go, timesteps, mask


@pytest.mark.parametrize("policy", ["deterministic", "gaussian"])
def test_pretraining_losses_decrease(policy):
    torch.manual_seed(0)
    model = build_model(small_config(policy=policy, n_layer=2, embed_dim=32, context_length=4), OBS, ACT)
    data = tiny_regression_data()
    optimizer = make_optimizer("adamw", model.policy_parameters(), lr=3e-3, weight_decay=1e-4)
    losses = []
    for _ in range(200):
        loss, metrics = model.pretrain_loss(*data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(metrics["mse"] if policy == "deterministic" else metrics["nll"]))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - (0.5 if policy == "gaussian" else 0.0)
    if policy == "deterministic":
        assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])


def test_nll_entropy_loss_definition():
    model = build_model(small_config(), OBS, ACT)
    states, actions, returns_to_go, timesteps, mask = tiny_regression_data()
    dist = model(states, actions, returns_to_go, timesteps, mask)
    torch.manual_seed(0)
    loss, nll, entropy = model.nll_entropy_loss(dist, actions, mask)
    expected_nll = -dist.log_prob(actions)[mask].mean()
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(loss, nll - model.temperature.detach() * entropy)
    torch.testing.assert_close(model.temperature, torch.tensor(model.config.init_temperature))
    assert model.target_entropy == -ACT


@pytest.mark.parametrize("entropy_value, direction", [(1.0, -1), (-5.0, +1)])
def test_temperature_moves_toward_target_entropy(entropy_value, direction):
    model = build_model(small_config(), OBS, ACT)  # target entropy -2
    optimizer = torch.optim.Adam([model.log_temperature], lr=1e-2)
    start = float(model.temperature.detach())
    for _ in range(50):
        loss = model.temperature_loss(torch.tensor(entropy_value))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (float(model.temperature.detach()) - start) * direction > 0.1 * start


def test_policy_parameters_exclude_the_temperature():
    model = build_model(small_config(), OBS, ACT)
    ids = {id(p) for p in model.policy_parameters()}
    assert id(model.log_temperature) not in ids
    assert len(ids) == len(list(model.parameters())) - 1


# ---------------------------------------------------------------------------------------------
# Reinformer


def test_reinformer_act_ignores_target_and_feeds_its_return_prediction():
    torch.manual_seed(7)
    model = Reinformer(small_config(architecture="reinformer"), OBS, ACT).eval()
    states = torch.randn(3, OBS)
    t = torch.zeros(3, dtype=torch.long)
    outs = []
    for target in (torch.zeros(3), torch.full((3,), 100.0)):
        cache = model.new_cache(3)
        with torch.no_grad():
            outs.append(model.act(cache, target, states, t))
    assert torch.equal(outs[0].mu, outs[1].mu)
    with torch.no_grad():
        _, predicted = model.forward_with_returns(states[:, None], torch.zeros(3, 1, ACT), torch.zeros(3, 1),
                                                  t[:, None])
    torch.testing.assert_close(outs[0].returns_to_go, predicted[:, 0], atol=1e-6, rtol=1e-6)


def test_reinformer_loss_learns_an_upper_expectile_of_the_return():
    torch.manual_seed(8)
    model = Reinformer(small_config(architecture="reinformer", n_layer=1, context_length=1, expectile=0.9), OBS, ACT)
    batch = 64
    states = torch.randn(batch, 1, OBS)
    actions = torch.tanh(states[..., :ACT])
    returns_to_go = torch.where(torch.arange(batch) % 2 == 0, 0.0, 1.0)[:, None]  # same states, return 0 or 1
    states[1::2] = states[0::2]
    timesteps = torch.zeros(batch, 1, dtype=torch.long)
    optimizer = torch.optim.Adam(model.policy_parameters(), lr=3e-3)
    for _ in range(300):
        loss, metrics = model.pretrain_loss(states, actions, returns_to_go, timesteps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert {"return_loss", "nll", "entropy"} <= set(metrics)
    with torch.no_grad():
        _, predicted = model.forward_with_returns(states, actions, returns_to_go, timesteps)
    # the 0.9-expectile of a fair {0, 1} coin is 0.9: well above the mean 0.5
    assert 0.75 < float(predicted.mean()) < 1.0
    torch.testing.assert_close(model.return_loss(states, actions, returns_to_go, timesteps),
                               metrics["return_loss"], atol=0.05, rtol=0.5)


# ---------------------------------------------------------------------------------------------
# Checkpoints


class FakeTask:
    pass


def make_normalizer(dim: int):
    from dtrl.data import StateNormalizer

    return StateNormalizer(np.linspace(-1, 1, dim).astype(np.float32), np.linspace(0.5, 2, dim).astype(np.float32))


@pytest.mark.parametrize("architecture", ["dt", "reinformer"])
def test_checkpoint_round_trip_is_exact(tmp_path, architecture):
    from dtrl.models.checkpoint import save_policy
    from dtrl.models.loading import load_policy

    torch.manual_seed(9)
    model = build_model(small_config(architecture=architecture), 11, 3).eval()
    with torch.no_grad():
        model.log_temperature.fill_(-1.234)
    normalizer = make_normalizer(11)
    run = tmp_path / "run"
    save_policy(run / "policy", model, normalizer, "hopper-medium", extra={"algo": "test", "iteration": 3})
    loaded = load_policy(run, task="hopper-medium")  # run dir -> RUN/policy
    assert loaded.task_name == "hopper-medium" and loaded.reward_scale == 1000.0
    assert loaded.meta["extra"] == {"algo": "test", "iteration": 3}
    assert type(loaded.model) is type(model) and not loaded.model.training
    assert (np.array_equal(loaded.normalizer.mean, normalizer.mean)
            and np.array_equal(loaded.normalizer.std, normalizer.std))
    gen = torch.Generator().manual_seed(0)
    states, actions = torch.randn(2, 7, 11, generator=gen), torch.rand(2, 7, 3, generator=gen) * 2 - 1
    rtg, ts = torch.randn(2, 7, generator=gen), torch.arange(7).expand(2, 7)
    with torch.no_grad():
        a, b = model(states, actions, rtg, ts), loaded.model(states, actions, rtg, ts)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.log_std, b.log_std)
    assert torch.equal(model.temperature, loaded.model.temperature)
    # saving again replaces the directory in place and leaves no temporary siblings
    save_policy(run / "policy", loaded.model, normalizer, "hopper-medium")
    assert sorted(p.name for p in run.iterdir()) == ["policy"]
    assert sorted(p.name for p in (run / "policy").iterdir()) == ["model.json", "model.safetensors", "normalizer.json"]
    assert json.loads((run / "policy" / "model.json").read_text())["model"]["architecture"] == architecture


def test_loading_for_a_task_with_other_dims_is_one_line_error(tmp_path):
    from dtrl.models.checkpoint import save_policy
    from dtrl.models.loading import load_policy

    model = build_model(small_config(), OBS, ACT)
    save_policy(tmp_path / "policy", model, make_normalizer(OBS), "hopper-medium")
    with pytest.raises(DtrlError) as info:
        load_policy(tmp_path / "policy", task="hopper-medium")
    message = str(info.value)
    assert "\n" not in message and "5" in message and "11" in message and "2" in message and "3" in message


def test_loading_missing_or_corrupt_policy_is_dtrl_error(tmp_path):
    from dtrl.models.checkpoint import save_policy
    from dtrl.models.loading import load_policy

    with pytest.raises(DtrlError, match="does not exist"):
        load_policy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DtrlError, match="model.json"):
        load_policy(tmp_path / "empty")
    save_policy(tmp_path / "p", build_model(small_config(), OBS, ACT), make_normalizer(OBS), "hopper-medium")
    (tmp_path / "p" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DtrlError, match="cannot load the weights"):
        load_policy(tmp_path / "p")


# ---------------------------------------------------------------------------------------------
# Critics


def test_critics_shapes_and_defaults():
    assert default_hidden_dim("mujoco") == 256 and default_hidden_dim("adroit") == 512
    mlp = MLP(4, 3, hidden_dim=8, n_layers=2, layer_norm=True)
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp) == 3
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in mlp) == 2
    assert sum(isinstance(m, torch.nn.SiLU) for m in mlp) == 2
    states, actions = torch.randn(6, OBS), torch.rand(6, ACT) * 2 - 1
    assert ValueNet(OBS, hidden_dim=16)(states).shape == (6,)
    q = TwinQ(OBS, ACT, hidden_dim=16)
    q1, q2 = q(states, actions)
    assert q1.shape == (6,) and not torch.equal(q1, q2)
    torch.testing.assert_close(q.min_q(states, actions), torch.minimum(q1, q2))
    actor = TanhGaussianActor(OBS, ACT, hidden_dim=16, log_std_min=-3.0, log_std_max=1.0)
    dist = actor(states)
    assert dist.sample().shape == (6, ACT) and dist.log_prob(actions).shape == (6,)
    assert (dist.log_std >= -3.0).all() and (dist.log_std <= 1.0).all()
    torch.testing.assert_close(dist.log_prob(actions).double(), reference_log_prob(dist.mu, dist.log_std, actions),
                               rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# LAMB


def lamb_reference(w, grads, lr, weight_decay, beta1=0.9, beta2=0.999, eps=1e-8):
    """LAMB by hand (You et al. 2019, no bias correction as in LAMB v3), numpy float64."""
    w = np.array(w, np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for g in grads:
        g = np.array(g, np.float64)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        update = m / (np.sqrt(v) + eps) + weight_decay * w
        trust = min(np.linalg.norm(w), 10.0) / (np.linalg.norm(update) + eps)
        w = w - lr * trust * update
    return w


@pytest.mark.parametrize("start", [[1.0, -2.0, 0.5], [20.0, -30.0, 5.0]])  # second: ||w|| > 10 (clamped)
def test_lamb_step_matches_hand_computation(start):
    grads = [[0.5, 0.25, -1.0], [-0.1, 0.3, 0.2]]
    w = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = Lamb([w], lr=0.1, weight_decay=0.01)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    np.testing.assert_allclose(w.detach().numpy(), lamb_reference(start, grads, 0.1, 0.01), rtol=1e-12, atol=1e-12)


def test_lamb_trust_ratio_makes_step_size_relative_to_weight_norm():
    for scale in (1.0, 100.0):  # ||w|| 0.5 and 50 (clamped to 10): steps are lr * min(||w||, 10) long
        w = torch.nn.Parameter(torch.tensor([0.3, 0.4]) * scale)
        optimizer = Lamb([w], lr=0.01)
        w.grad = torch.tensor([1.0, -3.0])
        before = w.detach().clone()
        optimizer.step()
        assert math.isclose(float((w.detach() - before).norm()), 0.01 * min(0.5 * scale, 10.0), rel_tol=1e-5)


def test_make_optimizer_and_warmup():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer("lamb", params, 1e-3, 1e-4), Lamb)
    assert isinstance(make_optimizer("adamw", params, 1e-3, 1e-4), torch.optim.AdamW)
    with pytest.raises(DtrlError, match="unknown optimizer"):
        make_optimizer("sgd", params, 1e-3)
    optimizer = make_optimizer("lamb", params, 1e-3)
    scheduler = linear_warmup(optimizer, 4)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(lrs, [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    # LAMB state survives a state_dict round trip (resume)
    params[0].grad = torch.ones(2)
    optimizer.step()
    clone = make_optimizer("lamb", [torch.nn.Parameter(params[0].detach().clone())], 1e-3)
    clone.load_state_dict(optimizer.state_dict())
    assert clone.state_dict()["param_groups"][0]["step"] == optimizer.state_dict()["param_groups"][0]["step"]


def test_gpt_output_index_equals_full_forward_rows():
    from dtrl.models.gpt import GPT

    torch.manual_seed(10)
    gpt = GPT(small_config(), tokens_per_step=3).eval()
    x = torch.randn(2, 20, 32)
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, :5] = False
    index = torch.tensor([1, 4, 7, 13, 19])
    with torch.no_grad():
        for token_valid in (None, valid):
            full = gpt(x, token_valid)
            part = gpt(x, token_valid, output_index=index)
            torch.testing.assert_close(part, full[:, index], atol=1e-5, rtol=1e-5)


def test_rsample_is_differentiable_and_inside_the_box():
    mu = torch.zeros(8, ACT, requires_grad=True)
    log_std = torch.zeros(8, ACT, requires_grad=True)
    action = ActionDistribution(mu, log_std).rsample()
    assert action.shape == (8, ACT) and (action.abs() < 1).all()
    action.sum().backward()
    assert mu.grad.abs().sum() > 0 and log_std.grad.abs().sum() > 0


@pytest.mark.parametrize("architecture", ["dt", "reinformer"])
def test_bfloat16_autocast_keeps_distribution_maths_in_float32(architecture):
    model = build_model(small_config(architecture=architecture), OBS, ACT)
    data = tiny_regression_data(batch=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dist = model(*data[:4], data[4])
        loss, metrics = model.pretrain_loss(*data)
    assert dist.mu.dtype == torch.float32 and dist.log_std.dtype == torch.float32
    assert dist.log_prob(data[1]).dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and model.action_mu.weight.grad is not None


def test_failed_save_leaves_the_previous_policy_intact(tmp_path):
    from dtrl.models.checkpoint import save_policy
    from dtrl.models.loading import load_policy

    model = build_model(small_config(), OBS, ACT)
    save_policy(tmp_path / "policy", model, make_normalizer(OBS), "hopper-medium", extra={"iteration": 1})

    class BrokenNormalizer:
        def to_dict(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_policy(tmp_path / "policy", model, BrokenNormalizer(), "hopper-medium", extra={"iteration": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    assert load_policy(tmp_path / "policy").meta["extra"] == {"iteration": 1}
