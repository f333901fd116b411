"""GRPO-DT's options and presets (as TRL keeps ``GRPOConfig`` beside its trainer): every switch of
Algorithm 1 and the paper's ablations, with the paper's values (``paper``), the paper's algorithm for a
small model (``paper-small``) and a 2-core CPU's scale (``cpu``). The loop is ``dtrl.algos.grpo``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from dtrl.algos.dt_finetune import DTFinetuneConfig
from dtrl.errors import DtrlError
from dtrl.tasks import Task, get_task


@dataclass
class GRPOConfig(DTFinetuneConfig):
    """GRPO-DT finetuning (Algorithm 1). Paper values: Table 5 (common) and Table 6 (per domain).

    Inherited from the shared finetuning config: init, iterations (T), learning_rate (lr_a),
    weight_decay, grad_clip, optimizer (LAMB), init_temperature (ETPR), temperature_learning_rate (α
    learned towards entropy -dim(A); 0 freezes it), online_rtg (g_online), eval_rtg (default
    g_online: Table 6 gives one RTG, and without relabeling the policy is only ever trained at RTGs
    that descend from it)."""

    trajectories_per_iteration: int = 1
    """full episodes collected per iteration into the trajectory buffer (line 2; paper: 1, Adroit 5)"""
    trajectory_buffer_size: int = 32
    """capacity of the FIFO buffer of full trajectories T_replay"""
    trajectories_per_batch: int = 16
    """full trajectories sampled (∝ length, with replacement) per iteration to branch from (line 3)"""
    reset_points_per_trajectory: int = 4
    """K: reset points sampled in each of those trajectories (line 5)"""
    group_size: int = 8
    """G: sub-trajectories rolled out from each reset point (line 6)"""
    sub_trajectory_length: int = Task.sub_trajectory_length
    """L_traj: sampled steps of a sub-trajectory (the part that is trained on)"""
    eval_steps: int = Task.eval_steps
    """L_eval: mean-action steps after a sub-trajectory that only score it"""
    gamma: float | None = None
    """discount of the sub-trajectory score over the L_traj + L_eval steps (default: the task's, Table 6)"""
    clip_eps: float = Task.clip_eps
    """ε: the importance ratio is clipped to [1-ε, 1+ε_high]"""
    clip_eps_high: float | None = None
    """upper clip ε_high (default ε; larger values give DAPO-style asymmetric clipping)"""
    min_group_deviation: float = Task.min_group_deviation
    """ε_GRPO: groups whose largest |score - group mean| is below this carry no signal (Table 6)"""
    deviation_rule: Literal["group", "member"] = "group"
    """how ε_GRPO applies: 'group' drops whole groups below it, 'member' zeroes members close to the mean"""
    advantage_std_floor: float = 1e-6
    """floor of the group std in Eq. (2), so near-identical scores cannot divide by ~0"""
    kl_beta: float = 0.0
    """β: weight of the KL(π_old‖π_θ) penalty of Eq. (3) (k3 estimator; the paper gives no value)"""
    ratio_level: Literal["sequence", "token", "geometric"] = "sequence"
    """importance ratio: 'sequence' = Eq. (3) full sub-trajectory likelihood ratio, 'token' = Eq. (1)
    per-step ratios, 'geometric' = GSPO's geometric mean (TRL's 'sequence'); ablation Fig. 1d"""
    old_log_probs: Literal["behaviour", "refresh"] = "behaviour"
    """π_old of the ratio: 'behaviour' = the log-probs the sub-trajectory was sampled with (sub-trajectories
    from earlier iterations are importance-corrected towards the policy that drew them); 'refresh' =
    recomputed with the current policy at the start of each iteration (PPO's θ_old), so every
    first-epoch ratio is 1"""
    sub_trajectory_buffer_size: int = 2048
    """capacity of the FIFO sub-trajectory buffer T_sub (line 8)"""
    epochs: int = 1
    """passes over the sub-trajectory buffer per iteration (line 9)"""
    minibatch_size: int = Task.batch_size
    """sub-trajectories per gradient step (Table 6 'BS')"""
    reset_sampling: Literal["active", "uniform"] = "active"
    """reset points drawn from softmax(action variance) ('active', Sec. 3.2) or uniformly (ablation Fig. 1e)"""
    active_sampling_temperature: float = 1.0
    """temperature of the active-sampling softmax (the paper: 1)"""
    active_sampling_variance: Literal["pre_tanh", "squashed", "current"] = "pre_tanh"
    """which per-step action variance active sampling softmaxes: of the pre-tanh Gaussian recorded when
    the trajectory was rolled out (log-std up to 2 makes it swing from ~uniform to near-argmax), of the
    squashed action tanh(u) (first order), or the pre-tanh one recomputed under the *current* policy
    (a buffered trajectory's recorded variance is that of an older policy)"""
    consistent_group_states: bool = True
    """all G members of a group start from the same reset point (off: each member from its own; Fig. 1c)"""
    full_trajectories: bool = False
    """ablation Fig. 1b: naive GRPO on groups of G whole episodes from one initial state (no resets)"""
    hindsight_relabel: bool = False
    """ablation Fig. 1a: train sub-trajectories with RTG tokens relabelled by the return they achieved
    (breaks the importance ratio; see docs/grpo.md for the exact relabeling)"""
    dynamic_sampling: bool = False
    """refill the groups ε_GRPO drops (line 7) with groups from fresh reset points of freshly drawn buffered
    trajectories until the iteration holds as many kept groups as it rolled out at first, as DAPO's
    dynamic sampling does for LLMs (at most ``dynamic_sampling_rounds`` extra rounds; the last round's
    surplus kept groups are left out). Not in the paper; the paper-scale study's lever"""
    dynamic_sampling_rounds: int = 3
    """the most extra rounds of groups dynamic sampling rolls out in one iteration"""
    num_workers: int = 0
    """env worker processes for the group rollouts (0: step the envs in this process)"""
    max_parallel_branches: int = 512
    """at most this many sub-trajectories are rolled out together (more are done in chunks)"""
    keep_best_policy: bool = True
    """also save the policy of the best in-run evaluation so far (by mean return) to RUN/best_policy, as
    stable-baselines3's EvalCallback keeps best_model; RUN/policy is always the last one"""
    policy_averaging: float = 0.0
    """decay of an exponential moving average of the policy's weights, updated once per iteration (not
    in the paper; 0: off). When on, the average is the policy that is evaluated and saved, and the
    iterate's own evaluation is logged as eval_iterate_*. Rollouts always use the iterate (on-policy)."""

    def validate(self) -> None:
        super().validate()
        positive = ("trajectories_per_iteration", "trajectory_buffer_size", "trajectories_per_batch",
                    "reset_points_per_trajectory", "sub_trajectory_length", "sub_trajectory_buffer_size",
                    "epochs", "minibatch_size", "max_parallel_branches")
        for name in positive:
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise DtrlError(f"group-size must be >= 2 (a group needs a baseline), got {self.group_size}")
        if self.eval_steps < 0:
            raise DtrlError(f"eval-steps must be >= 0, got {self.eval_steps}")
        if self.gamma is not None and not 0.0 <= self.gamma <= 1.0:
            raise DtrlError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.clip_eps <= 0 or (self.clip_eps_high is not None and self.clip_eps_high <= 0):
            raise DtrlError("clip-eps and clip-eps-high must be > 0")
        if self.min_group_deviation < 0 or self.kl_beta < 0:
            raise DtrlError("min-group-deviation and kl-beta must be >= 0")
        if self.active_sampling_temperature <= 0:
            raise DtrlError("active-sampling-temperature must be > 0")
        if self.num_workers < 0:
            raise DtrlError(f"num-workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.policy_averaging < 1.0:
            raise DtrlError(f"policy-averaging must be in [0, 1), got {self.policy_averaging}")
        self._validate_dynamic_sampling()
        self._validate_lengths()

    def _validate_lengths(self) -> None:
        # a branch ends at the episode's time limit anyway; a longer window only allocates (N x steps arrays)
        horizon = get_task(self.task).max_episode_steps
        for name in ("sub_trajectory_length", "eval_steps"):
            if getattr(self, name) > horizon:
                raise DtrlError(f"--{name.replace('_', '-')} ({getattr(self, name)}) must be <= the horizon of "
                                f"{self.task} ({horizon} steps)")

    def _validate_dynamic_sampling(self) -> None:
        if self.dynamic_sampling_rounds < 0:
            raise DtrlError(f"dynamic-sampling-rounds must be >= 0, got {self.dynamic_sampling_rounds}")
        if self.dynamic_sampling and self.full_trajectories:
            raise DtrlError("dynamic-sampling refills groups of sub-trajectories; full-trajectories has none to refill")

    def evaluates_at_online_rtg(self) -> bool:
        return not self.hindsight_relabel  # the relabeling ablation trains at achieved returns, as ODT


def paper_preset(task_name: str) -> GRPOConfig:
    """Tables 5-6 and Appendix A.3: 16 trajectories x 4 reset points x 8 members = 512
    sub-trajectories per iteration, buffers of 32 trajectories / 2048 sub-trajectories; the per-task
    values of Table 6 come from the task registry."""
    task = get_task(task_name)
    return GRPOConfig(
        task=task.name, preset="paper", out=f"runs/grpo-{task.name}-paper", iterations=500,
        # a generic env has no Table 6 RTG: None lets --online-rtg or the task decide
        online_rtg=None if task.domain == "generic" else task.online_rtg,
        trajectories_per_iteration=5 if task.domain == "adroit" else 1,
        trajectory_buffer_size=32, trajectories_per_batch=16, reset_points_per_trajectory=4, group_size=8,
        sub_trajectory_length=task.sub_trajectory_length, eval_steps=task.eval_steps, gamma=task.gamma,
        clip_eps=task.clip_eps, min_group_deviation=task.min_group_deviation, sub_trajectory_buffer_size=2048,
        epochs=1, minibatch_size=task.batch_size, learning_rate=task.learning_rate, optimizer="lamb",
        weight_decay=1e-4, grad_clip=0.5, init_temperature=task.init_temperature, context_length=task.context_eval,
        eval_every=10, eval_episodes=10, checkpoint_every=1,
    )


def cpu_preset(task_name: str) -> GRPOConfig:
    """Small enough to learn visibly within an hour on a 2-core CPU (see docs/grpo.md): 2 trajectories
    x 2 reset points x 8 members = 32 sub-trajectories per iteration (paper: 512), L_eval at most 300
    (paper: up to 400), a 256-entry sub-trajectory buffer with minibatches of 64, AdamW at 1e-3 decaying
    linearly to 0 over the 900 iterations (about an hour for hopper here), a temperature that can
    fall within the run, and active sampling on the current policy's action variance. T_eval is the
    paper's."""
    config = paper_preset(task_name)
    return dataclasses.replace(
        config, preset="cpu", out=f"runs/grpo-{config.task}-cpu", iterations=900,
        # the decay stops late updates undoing what was learned (the runs that chose each value of
        # this preset: docs/grpo.md, Presets)
        learning_rate_schedule="linear",
        trajectories_per_batch=2, reset_points_per_trajectory=2, group_size=8,
        # L_eval must outlast the policy's failures, or the scores stop telling falling from standing
        eval_steps=min(config.eval_steps, 300), sub_trajectory_buffer_size=256, minibatch_size=64, epochs=1,
        learning_rate=1e-3, optimizer="adamw", temperature_learning_rate=1e-2, max_parallel_branches=64,
        # reset points from the action variance under the current policy, not the one recorded when a
        # buffered trajectory was sampled: the only lever of the seed-sensitivity study that met its
        # pre-registered rule (benchmarks/results/grpo.md, "The levers")
        active_sampling_variance="current",
        eval_every=25, eval_episodes=5, checkpoint_every=10, threads=1,
    )


def paper_small_preset(task_name: str) -> GRPOConfig:
    """The paper's algorithm (``paper``: every value of Tables 5-6 and A.3 that shapes GRPO-DT's
    statistics, 512 sub-trajectories per iteration, LAMB at Table 6's lr_a, 500 iterations) run on a
    CPU with a small model: for a DT from ``dtrl pretrain --preset cpu``. Only what does not change a
    run's results differs: one torch thread (a small model's matmuls are fastest on one), the env
    copies stepped on two threads (results do not depend on it), and a checkpoint every 10 iterations
    instead of every one (each pickles the trajectory buffer with its snapshots)."""
    config = paper_preset(task_name)
    return dataclasses.replace(config, preset="paper-small", out=f"runs/grpo-{config.task}-paper-small", threads=1,
                               env_threads=2, checkpoint_every=10)


PRESETS = {"cpu": cpu_preset, "paper": paper_preset, "paper-small": paper_small_preset}
