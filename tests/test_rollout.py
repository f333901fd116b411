"""The rollout engine: RTG bookkeeping, determinism, branching from snapshots, and the contract that
a training batch built from recorded segments reproduces the sampling-time log-probs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtrl.config import ModelConfig
from dtrl.data import StateNormalizer
from dtrl.envs import BatchedEnv, make
from dtrl.models import build_model
from dtrl.models.checkpoint import LoadedPolicy
from dtrl.rollout import (
    BranchStart,
    RolloutTrajectory,
    Segment,
    TokenHistory,
    rollout_episodes,
    rollout_from_snapshots,
    segments_to_batch,
)
from dtrl.tasks import get_task

# One torch thread: on a busy 2-core machine torch's default (one per core) is many times slower.
torch.set_num_threads(1)

TASK = get_task("hopper-medium")
TARGET = 3600.0


def make_policy(architecture: str = "dt", seed: int = 0) -> LoadedPolicy:
    torch.manual_seed(seed)
    config = ModelConfig(architecture=architecture, n_layer=2, n_head=2, embed_dim=32, context_length=4,
                         dropout=0.1, max_timestep=TASK.max_episode_steps)
    model = build_model(config, 11, 3)
    # Make the policy depend visibly on its inputs (the small GPT-2 init is nearly constant) and
    # keep episodes long enough to branch from.
    with torch.no_grad():
        model.action_mu.weight.mul_(2.0)
    rng = np.random.default_rng(seed)
    normalizer = StateNormalizer(rng.normal(size=11).astype(np.float32) * 0.1,
                                 rng.uniform(0.5, 2.0, size=11).astype(np.float32))
    return LoadedPolicy(model, normalizer, TASK.reward_scale, TASK.name)


@pytest.fixture(scope="module")
def policy() -> LoadedPolicy:
    return make_policy()


@pytest.fixture(scope="module")
def envs():
    envs = BatchedEnv(TASK, 4, num_workers=0, seed=0)
    yield envs
    envs.close()


@pytest.fixture(scope="module")
def sampled(policy, envs) -> list[RolloutTrajectory]:
    torch.manual_seed(1)
    return rollout_episodes(policy, envs, TASK, TARGET, seeds=[3, 4, 5, 6], mode="sample", record_snapshots=True,
                            max_steps=60)


class RecordingModel(torch.nn.Module):
    """Wraps a model to record the RTG and state tokens ``act`` receives."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.returns: list[torch.Tensor] = []
        self.states: list[torch.Tensor] = []

    def new_cache(self, batch_size, max_steps=None):
        return self.inner.new_cache(batch_size, max_steps)

    def act(self, cache, returns_to_go, states, timesteps):
        self.returns.append(returns_to_go.clone())
        self.states.append(states.clone())
        return self.inner.act(cache, returns_to_go, states, timesteps)

    def append_action(self, cache, actions):
        self.inner.append_action(cache, actions)


def test_rtg_bookkeeping_and_scaling(policy, envs):
    recorder = RecordingModel(policy.model)
    wrapped = LoadedPolicy(recorder, policy.normalizer, policy.reward_scale, TASK.name)
    trajectories = rollout_episodes(wrapped, envs, TASK, TARGET, seeds=[0, 1, 2, 3], mode="sample", max_steps=25)
    lengths = np.array([len(traj) for traj in trajectories])
    for i, traj in enumerate(trajectories):
        T = len(traj)
        # the model runs on the episodes still going (ascending): episode i's row at step t
        row = [int(np.sum(lengths[:i] > t)) for t in range(T)]
        assert 0 < T <= 25
        assert traj.observations.shape == (T, 11) and traj.actions.shape == (T, 3)
        np.testing.assert_array_equal(traj.timesteps, np.arange(T))
        assert traj.returns_to_go[0] == TARGET
        # g_{t+1} = g_t - r_t, in raw units
        np.testing.assert_allclose(traj.returns_to_go[1:], traj.returns_to_go[:-1] - traj.rewards[:-1], rtol=0,
                                   atol=1e-9)
        # the model got g_t / reward_scale and normalised states
        assert [len(r) for r in recorder.returns[:T]] == [int(np.sum(lengths > t)) for t in range(T)]
        fed = torch.stack([r[k] for r, k in zip(recorder.returns[:T], row)]).double().numpy()
        np.testing.assert_allclose(fed, traj.returns_to_go / TASK.reward_scale, rtol=1e-6)
        fed_states = torch.stack([s[k] for s, k in zip(recorder.states[:T], row)]).numpy()
        np.testing.assert_allclose(fed_states, policy.normalizer.normalize(traj.observations), rtol=1e-6)
        assert np.all(np.isfinite(traj.log_probs)) and np.all(traj.action_variance > 0)
        assert traj.terminated or traj.truncated
        assert traj.target_rtg == TARGET and traj.seed == i


def test_mean_mode_is_deterministic(policy, envs):
    torch.manual_seed(0)
    first = rollout_episodes(policy, envs, TASK, TARGET, seeds=[7, 8, 9, 10], mode="mean", max_steps=30)
    torch.manual_seed(123)  # a different torch RNG state must not matter
    second = rollout_episodes(policy, envs, TASK, TARGET, seeds=[7, 8, 9, 10], mode="mean", max_steps=30)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
    sampled = rollout_episodes(policy, envs, TASK, TARGET, seeds=[7, 8, 9, 10], mode="sample", max_steps=30)
    assert not np.array_equal(sampled[0].actions, first[0].actions)


def test_rollout_restores_train_mode(policy, envs):
    policy.model.train()
    rollout_episodes(policy, envs, TASK, TARGET, seeds=[0, 1, 2, 3], mode="mean", max_steps=3)
    assert policy.model.training
    policy.model.eval()


def _segment_from_trajectory(traj: RolloutTrajectory, t: int, length: int, history: int) -> Segment:
    return Segment(traj.history(t, history), traj.observations[t:t + length], traj.actions[t:t + length],
                   traj.returns_to_go[t:t + length], traj.timesteps[t:t + length], traj.log_probs[t:t + length],
                   traj.rewards[t:t + length])


def _assert_log_probs_reproduced(policy, segments):
    batch = segments_to_batch(segments, policy.normalizer, policy.reward_scale)
    policy.model.eval()
    with torch.no_grad():
        recomputed = batch.log_probs(policy.model)
    mask = batch.train_mask
    assert int(mask.sum()) == sum(len(s) for s in segments)
    np.testing.assert_allclose(recomputed[mask].numpy(), batch.log_probs_old[mask].numpy(), rtol=0, atol=1e-5)
    ratio = torch.exp(recomputed[mask] - batch.log_probs_old[mask])
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    # history and padding are context only
    assert not bool((mask & ~batch.mask).any())
    return batch


def test_log_probs_reproduced_from_reset_and_mid_episode(policy, sampled):
    receptive = policy.model.receptive_field
    segments = []
    for traj in sampled:
        segments.append(_segment_from_trajectory(traj, 0, 6, receptive))  # from the reset: no history
        t = min(len(traj) - 3, receptive + 5)
        segments.append(_segment_from_trajectory(traj, t, 3, receptive))  # with a full history
    batch = _assert_log_probs_reproduced(policy, segments)
    assert batch.mask.shape[1] == max(len(s.history) + len(s) for s in segments)
    # the history is what makes them equal: without it the mid-episode log-probs differ
    blind = segments_to_batch(segments[1::2], policy.normalizer, policy.reward_scale, history_length=0)
    with torch.no_grad():
        deviation = (blind.log_probs(policy.model) - blind.log_probs_old)[blind.train_mask].abs().max()
    assert deviation > 1e-3


def test_branch_group_from_one_snapshot(policy, sampled):
    traj = max(sampled, key=len)
    t = min(len(traj) - 1, policy.model.receptive_field + 3)
    start = traj.branch_start(t, policy.model.receptive_field)
    assert isinstance(start, BranchStart) and len(start.history) == min(t, policy.model.receptive_field)
    group_envs = BatchedEnv(TASK, 5, num_workers=0)
    try:
        torch.manual_seed(2)
        result = rollout_from_snapshots(policy, group_envs, [start] * 4, sampled_steps=5, mean_steps=6, gamma=0.9)
    finally:
        group_envs.close()
    first_obs = np.stack([seg.observations[0] for seg in result.segments])
    np.testing.assert_array_equal(first_obs, np.repeat(traj.observations[t][None], 4, axis=0))
    assert all(seg.returns_to_go[0] == traj.returns_to_go[t] for seg in result.segments)
    assert all(seg.timesteps[0] == t for seg in result.segments)
    actions = np.stack([seg.actions[0] for seg in result.segments])
    assert len(np.unique(actions, axis=0)) == 4  # sampled: the group explores
    assert result.scores.shape == (4,) and result.lengths.shape == (4,)


def test_branch_score_is_discounted_return_and_log_probs_match(policy, sampled):
    gamma, L, M = 0.95, 4, 5
    starts = []
    for traj in sampled:
        for t in (0, 2, len(traj) // 2, len(traj) - 1):  # empty, short and full histories, near the end
            starts.append(traj.branch_start(t, policy.model.receptive_field))
    branch_envs = BatchedEnv(TASK, len(starts), num_workers=0)
    try:
        result = rollout_from_snapshots(policy, branch_envs, starts, sampled_steps=L, mean_steps=M, gamma=gamma)
    finally:
        branch_envs.close()
    # branches from the last step of a terminated episode end early: the active mask is exercised
    assert result.terminated.any() and (result.lengths < L + M).any() and (result.lengths == L + M).any()
    discounts = gamma ** np.arange(L + M)
    np.testing.assert_allclose(result.scores, result.step_rewards @ discounts, rtol=1e-12)
    for i, (start, seg) in enumerate(zip(starts, result.segments)):
        n = int(result.lengths[i])
        assert len(seg) == min(n, L)
        assert np.all(result.step_rewards[i, n:] == 0)
        if n < L + M:
            assert result.terminated[i] or result.truncated[i]
        # the RTG keeps decreasing by the rewards inside the branch
        np.testing.assert_allclose(seg.returns_to_go, start.return_to_go - np.concatenate(
            [[0.0], np.cumsum(seg.rewards[:-1], dtype=np.float64)]), atol=1e-9)
        # the rewards are the env's: replaying the sampled actions from the snapshot in a fresh env
        env = make(TASK)
        obs = env.restore(start.snapshot)
        np.testing.assert_array_equal(obs, seg.observations[0])
        for j in range(len(seg)):
            np.testing.assert_array_equal(obs, seg.observations[j])
            obs, reward, *_ = env.step(seg.actions[j])
            assert reward == pytest.approx(float(seg.rewards[j]), abs=1e-6)
        env.close()
    assert result.env_steps == int(result.lengths.sum())
    _assert_log_probs_reproduced(policy, result.segments)


def test_reinformer_log_probs_reproduced():
    policy = make_policy("reinformer", seed=3)
    envs = BatchedEnv(TASK, 3, num_workers=0)
    try:
        torch.manual_seed(4)
        trajs = rollout_episodes(policy, envs, TASK, TARGET, seeds=[0, 1, 2], record_snapshots=True, max_steps=20)
        # the Reinformer conditions on its own return prediction, which is what gets recorded
        assert trajs[0].returns_to_go[0] != TARGET
        starts = [traj.branch_start(len(traj) // 2, policy.model.receptive_field) for traj in trajs]
        result = rollout_from_snapshots(policy, envs, starts, sampled_steps=3, mean_steps=2, gamma=1.0)
    finally:
        envs.close()
    _assert_log_probs_reproduced(policy, [_segment_from_trajectory(t, 0, 5, 8) for t in trajs])
    _assert_log_probs_reproduced(policy, result.segments)


def test_segments_to_batch_layout(policy):
    history = TokenHistory(np.ones((3, 11), np.float32), np.full((3, 3), 0.5, np.float32),
                           np.array([3000.0, 2990.0, 2980.0]), np.array([4, 5, 6]))
    seg = Segment(history, np.zeros((2, 11), np.float32), np.zeros((2, 3), np.float32), np.array([2970.0, 2960.0]),
                  np.array([7, 8]), np.array([-1.0, -2.0], np.float32), np.array([10.0, 10.0], np.float32))
    short = Segment(TokenHistory.empty(11, 3), np.zeros((1, 11), np.float32), np.zeros((1, 3), np.float32),
                    np.array([100.0]), np.array([0]), np.array([-3.0], np.float32), np.array([1.0], np.float32))
    batch = segments_to_batch([seg, short], policy.normalizer, 1000.0)
    assert batch.states.shape == (2, 5, 11)
    assert batch.mask.tolist() == [[True] * 5, [False] * 4 + [True]]
    assert batch.train_mask.tolist() == [[False] * 3 + [True] * 2, [False] * 4 + [True]]
    np.testing.assert_allclose(batch.returns_to_go[0].numpy(), [3.0, 2.99, 2.98, 2.97, 2.96], rtol=1e-6)
    assert batch.timesteps[0].tolist() == [4, 5, 6, 7, 8]
    assert batch.log_probs_old.tolist() == [[0, 0, 0, -1, -2], [0, 0, 0, 0, -3]]
    assert float(batch.states[1, :4].abs().sum()) == 0.0  # padding stays zero
    trimmed = segments_to_batch([seg], policy.normalizer, 1000.0, history_length=1)
    assert trimmed.timesteps[0].tolist() == [6, 7, 8]


def test_branch_needs_snapshots(policy, envs):
    traj = rollout_episodes(policy, envs, TASK, TARGET, seeds=[0, 1, 2, 3], max_steps=3)[0]
    from dtrl.errors import DtrlError

    with pytest.raises(DtrlError, match="record_snapshots"):
        traj.branch_start(0, 4)


# ---------------------------------------------------------------------------------------------- short context


def _window_log_probs(policy, segments, context_length):
    batch = segments_to_batch(segments, policy.normalizer, policy.reward_scale)
    windows = batch.train_step_windows(context_length)
    with torch.no_grad():
        recomputed = windows.log_probs(policy.model)[:, -1]
    return batch, windows, recomputed


def test_short_context_rollouts_and_their_log_probs(policy, envs):
    """T_eval: the model sees only the last ``context_length`` steps, online and when the ratio's
    log-probs are recomputed from per-step windows; a context longer than the episode is the full one."""
    policy.model.eval()
    seeds = [3, 4, 5, 6]
    full = rollout_episodes(policy, envs, TASK, TARGET, seeds=seeds, mode="mean", max_steps=25)
    long = rollout_episodes(policy, envs, TASK, TARGET, seeds=seeds, mode="mean", max_steps=25, context_length=1000)
    one = rollout_episodes(policy, envs, TASK, TARGET, seeds=seeds, mode="mean", max_steps=25, context_length=1)
    for a, b in zip(full, long):
        np.testing.assert_allclose(a.actions, b.actions, atol=1e-5)
    # with one step of context the action is a function of (g_t, s_t, t) alone
    traj = one[0]
    states = torch.as_tensor(policy.normalizer.normalize(traj.observations), dtype=torch.float32)[:, None]
    rtg = torch.as_tensor(traj.returns_to_go / policy.reward_scale, dtype=torch.float32)[:, None]
    with torch.no_grad():
        dist = policy.model(states, torch.zeros(len(traj), 1, 3), rtg, torch.as_tensor(traj.timesteps)[:, None])
    np.testing.assert_allclose(dist.mean[:, 0].numpy(), traj.actions, atol=1e-5)
    n = min(len(full[0]), len(traj))  # the first step has no history either way; later ones differ
    np.testing.assert_allclose(full[0].actions[0], traj.actions[0], atol=1e-5)
    assert not np.allclose(full[0].actions[1:n], traj.actions[1:n], atol=1e-3)

    # sampled episodes and branches with a context of 2: each step's window reproduces its log-prob
    torch.manual_seed(5)
    sampled = rollout_episodes(policy, envs, TASK, TARGET, seeds=seeds, record_snapshots=True, max_steps=40,
                               context_length=2)
    segments = [_segment_from_trajectory(traj, len(traj) // 2, 4, 1) for traj in sampled]
    starts = [traj.branch_start(len(traj) // 2, 1) for traj in sampled]
    result = rollout_from_snapshots(policy, envs, starts, sampled_steps=4, mean_steps=3, gamma=1.0, context_length=2)
    for segs in (segments, result.segments):
        batch, windows, recomputed = _window_log_probs(policy, segs, 2)
        assert windows.states.shape[:2] == (int(batch.train_mask.sum()), 2)
        np.testing.assert_allclose(recomputed.numpy(), batch.log_probs_old[batch.train_mask].numpy(), atol=1e-5)
        # the rows' full context is not what they were sampled with
        with torch.no_grad():
            whole = batch.log_probs(policy.model)[batch.train_mask]
        assert (whole - batch.log_probs_old[batch.train_mask]).abs().max() > 1e-3
    from dtrl.errors import DtrlError

    with pytest.raises(DtrlError, match="context length"):
        rollout_episodes(policy, envs, TASK, TARGET, seeds=seeds, max_steps=2, context_length=0)
