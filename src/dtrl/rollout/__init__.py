"""The batched rollout engine every online algorithm uses.

Two entry points, both stepping all N env copies together with one batched, KV-cached model call
per step under ``torch.inference_mode``:

- ``rollout_episodes``: N full episodes from env resets (data collection, GRPO's full trajectories,
  evaluation with the mean action). Records everything the algorithms need per step: observations,
  actions, rewards, raw returns-to-go, timesteps, log-probs of the taken action, the action
  variance (GRPO's active sampling) and, when asked, env snapshots (GRPO's reset points).
- ``rollout_from_snapshots``: GRPO's groups (Algorithm 1, line 6). Copy i is restored to the
  snapshot of ``starts[i]`` and its model cache is prefilled with the token history before that
  reset point, so the model sees exactly the context it saw when the trajectory was sampled. Then
  L sampled steps (the sub-trajectory that training re-evaluates, a ``Segment``) and M mean-action
  steps (only to score it): score_i = discounted return over the L + M steps.

``segments_to_batch`` turns segments into padded tensors on which ``model.forward`` reproduces the
sampling-time log-probs (history prefix marked as context only), which is what makes the importance
ratio of the first update exactly 1.

RTG bookkeeping (raw units, float64): g_0 = target, g_{t+1} = g_t - r_t; the model gets
g_t / reward_scale. States are normalised with the policy's normaliser before entering the model;
everything recorded here is raw (unnormalised observations, unscaled RTGs). A Reinformer conditions
on its own max-return prediction instead of g_t; that prediction is what gets recorded as its RTG,
because it is what ``forward`` must be fed to reproduce the log-probs.

Beyond the model contract's ``new_cache`` / ``act`` / ``append_action``, branching uses
``model.prefill(cache, states, actions, returns_to_go, timesteps, mask)`` to load left-padded
histories of different lengths into one cache in a single pass, and the loops call the model on the
copies still running only (``cache.select_rows`` drops the others; ``new_cache(B, max_steps)`` sizes
a short-context cache). A row's actions then differ from a full-batch call only by float rounding
(the kernels' blocking depends on the batch size), so runs stay bit-reproducible on one machine but
are not bit-equal to runs of dtrl before this change.

Modules (every name below is importable from ``dtrl.rollout`` itself):

- ``episodes``: ``rollout_episodes``, ``RolloutTrajectory``
- ``branches``: ``rollout_from_snapshots``, ``BranchStart``, ``BranchResult``
- ``batches``: ``TokenHistory``, ``Segment``, ``SegmentBatch``, ``segments_to_batch``
- ``stepping``: what both loops share (``Policy``, model inputs, KV caches, one env step)
"""

from dtrl.rollout.batches import Segment, SegmentBatch, TokenHistory, segments_to_batch
from dtrl.rollout.branches import BranchResult, BranchStart, rollout_from_snapshots
from dtrl.rollout.episodes import RolloutTrajectory, rollout_episodes
from dtrl.rollout.stepping import Policy

__all__ = [
    "BranchResult",
    "BranchStart",
    "Policy",
    "RolloutTrajectory",
    "Segment",
    "SegmentBatch",
    "TokenHistory",
    "rollout_episodes",
    "rollout_from_snapshots",
    "segments_to_batch",
]
