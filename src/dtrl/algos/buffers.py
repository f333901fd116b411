"""Replay storage of the online loops (stable-baselines3 keeps buffers apart from algorithms too):
whole trajectories (ODT, PPO-DT, Q-guided GRPO; Algorithm 1/2 line 3), transitions (the TD3 and IQL
critics), K-step windows over buffered trajectories, and the cutting of trajectories into segments
whose recomputed log-probs equal the sampling-time ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from dtrl.data import Trajectory, sample_proportional_to_length
from dtrl.errors import DtrlError
from dtrl.rollout import Segment, TokenHistory


class TrajectoryBuffer:
    """FIFO buffer of whole trajectories, sampled with probability proportional to their length
    (ODT's replay buffer; Algorithm 1/2 line 3).

    ODT seeds it with the top offline trajectories by return and then replaces the oldest entries by
    online ones; PPO and GRPO-Q use it empty-started as a plain FIFO of recent rollouts.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise DtrlError(f"trajectory buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.trajectories: list[Trajectory] = []
        self.extras: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def num_transitions(self) -> int:
        return sum(len(t) for t in self.trajectories)

    def add(self, trajectory: Trajectory, extra: dict[str, np.ndarray] | None = None) -> None:
        """Append one trajectory (with optional per-step arrays, e.g. sampling-time log-probs and
        RTGs); the oldest is dropped once the buffer is full."""
        if len(trajectory) == 0:
            return
        self.trajectories.append(trajectory)
        self.extras.append(extra or {})
        if len(self.trajectories) > self.capacity:
            del self.trajectories[0]
            del self.extras[0]

    def seed_with_top(self, trajectories: Sequence[Trajectory]) -> None:
        """Fill the buffer with the ``capacity`` highest-return trajectories, in increasing order of
        return so the FIFO replaces the worst ones first (ODT)."""
        ranked = sorted(trajectories, key=lambda t: t.episode_return)
        for trajectory in ranked[-self.capacity:]:
            self.add(trajectory)

    def sample_indices(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of ``count`` trajectories drawn with replacement, p(tau) = |tau| / sum |tau'|."""
        if not self.trajectories:
            raise DtrlError("cannot sample from an empty trajectory buffer")
        return sample_proportional_to_length([len(t) for t in self.trajectories], count, rng)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "trajectories": [_trajectory_to_dict(t) for t in self.trajectories],
                "extras": self.extras}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.trajectories = [_trajectory_from_dict(d) for d in state["trajectories"]]
        self.extras = list(state["extras"])


def _trajectory_to_dict(t: Trajectory) -> dict:
    return {"observations": t.observations, "actions": t.actions, "rewards": t.rewards,
            "terminated": t.terminated, "truncated": t.truncated}


def _trajectory_from_dict(d: dict) -> Trajectory:
    return Trajectory(np.asarray(d["observations"]), np.asarray(d["actions"]), np.asarray(d["rewards"]),
                      bool(d["terminated"]), bool(d["truncated"]))


class ReplayBuffer:
    """Ring buffer of transitions (s, a, r, s', done) for TD3 / IQL critics.

    ``done`` is 1 only for true terminations: a time-limit cut still bootstraps from s'. The last
    step of a truncated trajectory has no recorded s' in a D4RL-layout dataset; it is kept out of the
    buffer unless the caller passes ``final_observation``.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        if capacity < 1:
            raise DtrlError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.observations = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.next_observations = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add_batch(self, obs, actions, rewards, next_obs, dones) -> None:
        count = len(rewards)
        if count > self.capacity:  # only the newest `capacity` transitions survive anyway
            obs, actions, rewards, next_obs, dones = (x[-self.capacity:]
                                                      for x in (obs, actions, rewards, next_obs, dones))
            count = self.capacity
        idx = (self.position + np.arange(count)) % self.capacity
        self.observations[idx] = obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.next_observations[idx] = next_obs
        self.dones[idx] = dones
        self.position = int((self.position + count) % self.capacity)
        self.size = int(min(self.size + count, self.capacity))

    def add_trajectory(self, trajectory: Trajectory, final_observation: np.ndarray | None = None,
                       reward_transform=None) -> None:
        """Add the transitions of one trajectory. ``final_observation`` is s' after the last action
        (needed to keep the last transition of a time-limit-truncated episode)."""
        T = len(trajectory)
        if T == 0:
            return
        obs = trajectory.observations
        rewards = trajectory.rewards if reward_transform is None else reward_transform(trajectory.rewards)
        dones = np.zeros(T, dtype=np.float32)
        if trajectory.terminated:
            dones[-1] = 1.0
            last = obs[-1] if final_observation is None else final_observation  # unused: done masks it
            next_obs = np.concatenate([obs[1:], np.asarray(last, np.float32)[None]], axis=0)
            keep = T
        elif final_observation is not None:
            next_obs = np.concatenate([obs[1:], np.asarray(final_observation, np.float32)[None]], axis=0)
            keep = T
        else:
            next_obs = obs[1:]
            keep = T - 1
        self.add_batch(obs[:keep], trajectory.actions[:keep], rewards[:keep], next_obs[:keep], dones[:keep])

    def sample(self, batch_size: int, rng: np.random.Generator,
               device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise DtrlError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)
        as_tensor = lambda x: torch.as_tensor(x[idx], device=device)  # noqa: E731
        return {"observations": as_tensor(self.observations), "actions": as_tensor(self.actions),
                "rewards": as_tensor(self.rewards), "next_observations": as_tensor(self.next_observations),
                "dones": as_tensor(self.dones)}

    def state_dict(self) -> dict:
        n = self.size
        # Stored in insertion order, oldest first, so a reload keeps the FIFO order.
        order = (np.arange(n) + (self.position if n == self.capacity else 0)) % self.capacity
        return {"capacity": self.capacity, "observations": self.observations[order], "actions": self.actions[order],
                "rewards": self.rewards[order], "next_observations": self.next_observations[order],
                "dones": self.dones[order]}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.size = 0, 0
        self.add_batch(state["observations"], state["actions"], state["rewards"], state["next_observations"],
                       state["dones"])



class WindowSampler:
    """K-step windows over a ``TrajectoryBuffer`` (trajectories drawn ∝ length, then the window's
    last step uniformly), like ``dtrl.data.SequenceSampler`` but also carrying the per-step arrays
    stored with each trajectory (``extra``: sampling-time RTGs, log-probs ...) and ``dones`` (True
    at the last step of a terminated trajectory), which the critic-based loops need.

    ``rtg``: 'recorded' uses the stored ``extra['returns_to_go']`` (the RTG the policy was
    conditioned on: PPO, GRPO-Q never relabel); 'hindsight' recomputes g_t = sum_{t'>=t} r_t' from
    the rewards (ODT's relabeling, used by ODT+TD3). Returned RTGs are divided by ``reward_scale``.
    """

    def __init__(self, buffer: TrajectoryBuffer, context_length: int, reward_scale: float, normalizer,
                 rng: np.random.Generator, rtg: Literal["recorded", "hindsight"]):
        trajectories = buffer.trajectories
        self.context_length = context_length
        self.rng = rng
        self.lengths = np.array([len(t) for t in trajectories], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.fields: dict[str, np.ndarray] = {
            "states": normalizer.normalize(np.concatenate([t.observations for t in trajectories]).astype(np.float32)),
            "actions": np.concatenate([t.actions for t in trajectories]).astype(np.float32),
            "rewards": np.concatenate([t.rewards for t in trajectories]).astype(np.float32),
            "timesteps": np.concatenate([np.arange(n, dtype=np.int64) for n in self.lengths]),
        }
        dones = np.zeros(int(self.lengths.sum()), dtype=np.float32)
        for start, trajectory in zip(self.starts, trajectories):
            dones[start + len(trajectory) - 1] = float(trajectory.terminated)
        self.fields["dones"] = dones
        if rtg == "hindsight":
            raw_rtg = np.concatenate([t.returns_to_go() for t in trajectories])
        else:
            if any("returns_to_go" not in extra for extra in buffer.extras):
                raise DtrlError("rtg='recorded' needs every buffered trajectory stored with its returns_to_go")
            raw_rtg = np.concatenate([extra["returns_to_go"] for extra in buffer.extras])
        self.fields["returns_to_go"] = (np.asarray(raw_rtg, np.float64) / reward_scale).astype(np.float32)
        for key in (buffer.extras[0].keys() if buffer.extras else ()):
            if key != "returns_to_go" and all(key in extra for extra in buffer.extras):
                self.fields[key] = np.concatenate([extra[key] for extra in buffer.extras])

    def sample(self, batch_size: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        traj = sample_proportional_to_length(self.lengths, batch_size, self.rng)
        end = np.minimum((self.rng.random(batch_size) * self.lengths[traj]).astype(np.int64), self.lengths[traj] - 1)
        return self.gather(traj, end, device)

    def gather(self, traj: np.ndarray, end: np.ndarray, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Windows of K steps ending at step ``end[b]`` of trajectory ``traj[b]``, left-padded with
        zeros (``mask`` False)."""
        K = self.context_length
        local = np.asarray(end)[:, None] - K + 1 + np.arange(K)[None, :]
        mask = local >= 0
        flat = self.starts[np.asarray(traj)][:, None] + np.maximum(local, 0)
        batch = {}
        for key, values in self.fields.items():
            window = values[flat]
            window[~mask] = 0
            batch[key] = torch.as_tensor(window, device=device)
        batch["mask"] = torch.as_tensor(mask, device=device)
        return batch


def trajectory_segments(trajectory: Trajectory, extra: dict[str, np.ndarray], segment_length: int,
                        history_length: int) -> list[tuple[Any, slice]]:
    """Cut one buffered trajectory into consecutive ``dtrl.rollout.Segment``s of ``segment_length``
    steps, each carrying the ``history_length`` steps before it as context, so that
    ``segments_to_batch(...).log_probs(model)`` reproduces the sampling-time log-probs when
    ``history_length >= model.receptive_field``. Returns (segment, slice of its steps) pairs;
    ``extra`` must hold the recorded ``returns_to_go`` and ``log_probs``."""
    rtg = np.asarray(extra["returns_to_go"], np.float32)
    log_probs = np.asarray(extra["log_probs"], np.float32)
    timesteps = np.arange(len(trajectory), dtype=np.int64)
    pieces = []
    for start in range(0, len(trajectory), segment_length):
        steps = slice(start, min(start + segment_length, len(trajectory)))
        first = max(0, start - history_length)
        history = TokenHistory(trajectory.observations[first:start], trajectory.actions[first:start],
                               rtg[first:start], timesteps[first:start])
        pieces.append((Segment(history=history, observations=trajectory.observations[steps],
                               actions=trajectory.actions[steps], returns_to_go=rtg[steps],
                               timesteps=timesteps[steps], log_probs=log_probs[steps],
                               rewards=trajectory.rewards[steps]), steps))
    return pieces


def scatter_steps(per_segment: Sequence[np.ndarray], width: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """[B, width] tensor holding each segment's per-step values at its (right-aligned, since
    ``segments_to_batch`` left-pads) training positions, 0 elsewhere."""
    out = np.zeros((len(per_segment), width), np.float32)
    for row, values in enumerate(per_segment):
        if len(values):
            out[row, width - len(values):] = values
    return torch.as_tensor(out, device=device)


def rollout_extra(rollout) -> dict[str, np.ndarray]:
    """What PPO / GRPO-Q keep per step beside the trajectory: the RTG the policy was conditioned on
    and the sampling-time log-prob (never relabeled, never recomputed)."""
    return {"returns_to_go": rollout.returns_to_go.astype(np.float32),
            "log_probs": rollout.log_probs.astype(np.float32)}
