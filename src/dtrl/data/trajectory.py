"""One episode (or episode fragment) as numpy arrays, the unit every sampler and buffer holds."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np


@dataclass
class Trajectory:
    observations: np.ndarray
    """[T, obs_dim] float32, observation before each action"""
    actions: np.ndarray
    """[T, act_dim] float32, in [-1, 1]"""
    rewards: np.ndarray
    """[T] float32"""
    terminated: bool = False
    """the episode ended in a terminal state (no bootstrapping past the last step)"""
    truncated: bool = False
    """the episode was cut by the time limit or the end of the dataset"""

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    def returns_to_go(self, gamma: float = 1.0) -> np.ndarray:
        """g_h = sum_{h' >= h} gamma^(h'-h) r_h' (float64 accumulation, float32 result)."""
        out = np.zeros(len(self.rewards), dtype=np.float64)
        running = 0.0
        for h in range(len(self.rewards) - 1, -1, -1):
            running = float(self.rewards[h]) + gamma * running
            out[h] = running
        return out.astype(np.float32)


def split_episodes(
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
) -> list[Trajectory]:
    """Cut flat D4RL arrays into trajectories at terminals or timeouts (a dangling tail is kept,
    marked truncated). A step flagged both terminal and timeout is a termination (the env ended there;
    the time limit only happened to fall on it), said once on stderr."""
    both = int(np.count_nonzero(np.logical_and(terminals, timeouts)))
    if both:
        print(f"dtrl: warning: {both} step(s) are marked both terminal and timeout; treated as terminations",
              file=sys.stderr)
    ends = np.flatnonzero(np.logical_or(terminals, timeouts))
    trajectories: list[Trajectory] = []
    start = 0
    unterminated_tail = len(rewards) and (not len(ends) or ends[-1] != len(rewards) - 1)
    for end in list(ends) + ([len(rewards) - 1] if unterminated_tail else []):
        stop = int(end) + 1
        if stop <= start:
            continue
        trajectories.append(
            Trajectory(
                observations=np.asarray(observations[start:stop], dtype=np.float32),
                actions=np.asarray(actions[start:stop], dtype=np.float32),
                rewards=np.asarray(rewards[start:stop], dtype=np.float32),
                terminated=bool(terminals[end]),
                truncated=not bool(terminals[end]),
            )
        )
        start = stop
    return trajectories
