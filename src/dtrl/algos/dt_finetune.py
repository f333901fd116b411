"""What every Decision-Transformer finetuning loop (GRPO-DT, PPO-DT, Q-guided GRPO, ODT, ODT+TD3)
shares: their options (``DTFinetuneConfig``), loading ``--init`` and ``--dataset``, the optimisers and
their steps (policy, temperature, Polyak), the learning-rate schedule, the RTG targets, the in-run
evaluation of a DT, and ODT's supervised loss (ODT and ODT+TD3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from dtrl.algos.run_loop import EVAL_SEED_OFFSET, RunLoop, SavedPolicy, evaluate_policy
from dtrl.config import CommonConfig
from dtrl.data import load_dataset
from dtrl.envs import BatchedEnv
from dtrl.errors import DtrlError
from dtrl.evaluation import check_mp4_writer, record_video
from dtrl.models.loading import load_policy
from dtrl.optim import make_optimizer
from dtrl.tasks import Task


@dataclass
class DTFinetuneConfig(CommonConfig):
    """Options shared by the algorithms that finetune a pretrained DT (``--init``)."""

    init: str | None = None
    """pretrained DT: a `dtrl pretrain` run directory, a policy directory or hf:DIR, a Hugging Face
    DecisionTransformerModel with dtrl_state_stats.json beside it (required)"""
    iterations: int = 10
    """online iterations (paper: 'iteration' of Algorithm 1/2 line 1)"""
    learning_rate: float = Task.learning_rate
    """actor learning rate (paper Table 6 lr_a)"""
    weight_decay: float = 1e-4
    """actor decoupled weight decay (Table 5)"""
    grad_clip: float = 0.5
    """actor gradient-norm clip (Table 5; 0 disables)"""
    optimizer: Literal["lamb", "adamw"] = "lamb"
    """actor optimiser: LAMB (Table 5) or AdamW"""
    init_temperature: float | None = None
    """entropy temperature at the start of finetuning (Table 6 ETPR); None keeps the pretrained one"""
    temperature_learning_rate: float = 1e-4
    """Adam learning rate of the log-temperature (target entropy -dim(A)); 0 freezes the temperature"""
    online_rtg: float | None = None
    """target RTG of online rollouts (default: the task's, Table 6 'RTG')"""
    eval_rtg: float | None = None
    """target RTG of evaluation rollouts (default: the online RTG for methods trained without hindsight
    relabeling (GRPO-DT, PPO-DT, Q-guided GRPO), the task's eval target for ODT and ODT+TD3)"""
    learning_rate_schedule: Literal["constant", "linear"] = "constant"
    """'linear': the policy's learning rate falls linearly from learning_rate to 0 at the last of
    ``iterations`` (CleanRL's anneal_lr), so late updates cannot undo what was learned; the schedule
    follows the iteration count, not the time limit, so a seeded run stays reproducible"""
    eval_other_rtg: bool = False
    """also evaluate at the other of the two target RTGs (g_online and the task's evaluation target),
    logged as eval_other_*: methods are evaluated at different RTGs by default (g_online without
    relabeling, ODT's lower target with it), so a comparison reports both"""
    context_length: int | None = None
    """T_eval: timesteps of history the policy sees in every online rollout (collection, groups,
    evaluation), as the official ODT code truncates the model's input online; likelihoods and ratios
    are recomputed with the same context. None: the model's full sliding window (its training context).
    Presets: Table 6 for GRPO-DT, PPO-DT and Q-guided GRPO, the official code for ODT and ODT+TD3"""
    time_limit_s: float = 0.0
    """stop after the iteration during which this many seconds of training passed; that iteration is
    evaluated, checkpointed and its policy saved, as a last one would be (0: no limit; for
    equal-wall-clock comparisons)"""
    threads: int = 0
    """torch CPU threads (0: torch's default, one per core). The cpu presets use 1: their small models ran
    up to 35x slower with torch's default on a 2-core machine running another job (2 PPO-DT iterations:
    95 s against 3.8 s)"""
    video_every: int = 0
    """also record the first evaluation episode as RUN/videos/iteration_N.mp4 at the evaluations of every
    N-th iteration, rendered headless (EGL, else OSMesa; 0: no videos). Results do not depend on it"""
    video_fps: int = 0
    """--video-every's videos at most this many frames a second, rendering every k-th step (0: every step,
    the env's own rate; software rendering takes ~0.1 s a frame, so 25 renders Hopper's 125 five times faster)"""

    def validate(self) -> None:
        super().validate()
        if self.threads < 0:
            raise DtrlError(f"threads must be >= 0, got {self.threads}")
        if self.video_every < 0 or self.video_fps < 0:
            raise DtrlError(f"video-every and video-fps must be >= 0, got {self.video_every} and {self.video_fps}")
        if self.video_every > 0:
            check_mp4_writer()
        if self.time_limit_s < 0:
            raise DtrlError(f"time-limit-s must be >= 0, got {self.time_limit_s}")
        if self.iterations < 1:
            raise DtrlError(f"iterations must be >= 1, got {self.iterations}")
        if not self.learning_rate > 0:
            raise DtrlError(f"learning-rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.temperature_learning_rate < 0:
            raise DtrlError("weight-decay, grad-clip and temperature-learning-rate must be >= 0")
        if self.init_temperature is not None and not self.init_temperature > 0:
            raise DtrlError(f"init-temperature must be > 0, got {self.init_temperature}")
        if self.context_length is not None and self.context_length < 1:
            raise DtrlError(f"context-length must be >= 1, got {self.context_length}")

    def evaluates_at_online_rtg(self) -> bool:
        """Whether the default evaluation RTG is g_online: true for methods that never relabel."""
        return False


def prepare_policy(config: DTFinetuneConfig, task, device: str, stochastic: bool = True):
    """Load ``--init``, check it is a stochastic DT when ``stochastic`` (likelihood-based finetuning
    needs one; a deterministic actor can start from either kind, through its mean action), set the
    initial temperature, and put the model in eval mode: finetuning disables dropout (Table 5), and eval
    mode only affects dropout here, gradients still flow. Sets ``--threads`` first."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    policy = load_init_policy(config.init, task, device)
    model = policy.model.to(device)
    if stochastic and not getattr(model, "stochastic", True):
        raise DtrlError(f"{config.init} holds a deterministic DT (--model.policy deterministic); online finetuning "
                        "needs a Gaussian policy head (pretrain with --loss odt)")
    if config.init_temperature is not None:
        with torch.no_grad():
            model.log_temperature.fill_(float(np.log(config.init_temperature)))
    model.eval()
    return policy


def segment_history_length(model, context_length: int | None) -> int:
    """Steps of history a training segment must carry for its recomputed log-probs to equal the
    sampling-time ones: the model's receptive field with its full sliding window, T_eval - 1 with a
    short online context."""
    return int(model.receptive_field) if context_length is None else context_length - 1


def build_dt_optimizers(config: DTFinetuneConfig, model):
    """(actor optimiser over everything but the log-temperature, the log-temperature's Adam or None)."""
    params = [p for p in model.policy_parameters() if p.requires_grad]
    actor = make_optimizer(config.optimizer, params, lr=config.learning_rate, weight_decay=config.weight_decay)
    temperature = (torch.optim.Adam([model.log_temperature], lr=config.temperature_learning_rate)
                   if config.temperature_learning_rate > 0 else None)
    return actor, temperature


def online_targets(config: DTFinetuneConfig, task) -> tuple[float, float]:
    """(online RTG, evaluation RTG): the config's overrides, else the task's Table 6 values.

    A method that never relabels trains its policy only on RTG tokens that descend from g_online, so it
    is evaluated at g_online (the paper's Table 6 gives GRPO-DT one RTG); ODT relabels with achieved
    returns, so its policy is evaluated at the task's lower eval target (ODT's convention)."""
    online = float(task.online_rtg if config.online_rtg is None else config.online_rtg)
    if config.eval_rtg is not None:
        return online, float(config.eval_rtg)
    return online, online if config.evaluates_at_online_rtg() else float(task.eval_rtg)


def optimizer_step(loss: torch.Tensor, optimizer, grad_clip: float) -> float:
    """zero_grad, backward, clip the gradient norm of the optimiser's parameters at ``grad_clip``
    (0: no clipping), step; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    optimizer.step()
    return float(grad_norm)


def temperature_step(model, entropy: torch.Tensor, optimizer) -> None:
    """One Adam step of the log-temperature towards the target entropy -dim(A) (ODT's rule); a no-op
    when the temperature is frozen (``optimizer`` None). Its gradient is cleared either way, so the
    policy's loss never moves it."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        model.temperature_loss(entropy.detach()).backward()
        optimizer.step()
    model.log_temperature.grad = None


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """Polyak averaging: target <- tau * source + (1 - tau) * target."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)




def open_dt_run(config: DTFinetuneConfig, algo: str, rng: np.random.Generator, components: dict, policy, task,
                device, eval_rtg: float) -> RunLoop:
    """The RunLoop of a DT finetuning run: evaluated at ``eval_rtg`` with the run's online context, the
    finetuned DT saved as RUN/policy, its weights' digest recorded as what the run started from."""
    return RunLoop(config, algo, rng, components, init=policy,
                   evaluate=lambda: evaluate_dt_policy(policy, task, config, device, eval_rtg),
                   saved_policy=saved_dt_policy(algo, policy, policy.model, task, config, eval_rtg),
                   video=dt_video(policy, task, config, device, eval_rtg))


def dt_video(policy, task, config: DTFinetuneConfig, device, eval_rtg: float):
    """``--video-every``: the RunLoop's ``video(path)``, the first in-run evaluation episode of ``policy``
    (same seed, RTG and context) rendered into ``path``; None without videos."""
    if config.video_every <= 0:
        return None
    return lambda path: record_video(policy, task, path, target_rtg=eval_rtg, context_length=config.context_length,
                                     seed=EVAL_SEED_OFFSET + config.seed, device=device,
                                     max_fps=config.video_fps or None)


def collection_envs(loop: RunLoop, task, config: DTFinetuneConfig) -> BatchedEnv:
    """The env copies a loop collects its ``trajectories_per_iteration`` episodes in, closed with the loop."""
    return loop.closing(BatchedEnv(task, config.trajectories_per_iteration, seed=config.seed,
                                   num_threads=config.env_threads))


def saved_dt_policy(algo: str, policy, model, task, config: DTFinetuneConfig, eval_rtg: float) -> SavedPolicy:
    """RUN/policy of a DT finetuning run: ``model`` with the policy's normaliser and how ``dtrl eval``
    is to evaluate it (the run's evaluation RTG and online context)."""
    return SavedPolicy(model, policy.normalizer, task.name,
                       {"algo": algo, "eval_rtg": eval_rtg, "eval_context_length": config.context_length})


def load_init_policy(init: str | None, task, device: str):
    """The pretrained DT (``--init RUN``, a policy dir or ``hf:DIR``) as ``LoadedPolicy``; one-line errors."""
    if not init:
        raise DtrlError("--init is required: a pretrained DT run or policy directory (dtrl pretrain), or hf:DIR")
    return load_policy(init, task=task, device=device)


def load_offline_dataset(source: str | None, task, required: bool):
    """``--dataset FILE|MINARI_ID`` as ``dtrl.data.Dataset`` (None when not given and not required)."""
    if not source:
        if required:
            raise DtrlError("--dataset is required for this algorithm: a D4RL .hdf5 file or a Minari dataset id")
        return None
    return load_dataset(source, task)




def evaluate_dt_policy(policy, task, config: DTFinetuneConfig, device: str, eval_rtg: float) -> dict:
    """A DT finetuning run's evaluation: at ``eval_rtg`` with the run's online context and, with
    ``--eval-other-rtg``, also at the other target RTG (keys ``eval_other_*``)."""
    evaluation = evaluate_policy(policy, task, config, device, eval_rtg, config.context_length)
    if config.eval_other_rtg:
        online, _ = online_targets(config, task)
        other = float(task.eval_rtg) if eval_rtg == online else online
        if other != eval_rtg:
            extra = evaluate_policy(policy, task, config, device, other, config.context_length)
            evaluation.update({key.replace("eval_", "eval_other_", 1): value for key, value in extra.items()})
    return evaluation



# ----------------------------------------------------------------------------------------------
# ODT's supervised loss (ODT and ODT+TD3)


def offline_seed_trajectories(dataset, task):
    """Offline trajectories eligible for the replay buffer; AntMaze's 1-step trajectories are
    artefacts of its data generation and are dropped (paper A.3.1, following ODT+TD3)."""
    trajectories = dataset.trajectories
    if task.domain == "antmaze":
        trajectories = [t for t in trajectories if len(t) > 1]
    return trajectories


def supervised_loss(model, batch: dict, dist=None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """ODT objective on a window batch: (policy loss, entropy, metrics). ``dist``: the model's
    output on this batch when the caller already has it."""
    mask = batch["mask"]
    actions = batch["actions"].clamp(-1.0 + 1e-6, 1.0 - 1e-6)  # tanh head: |a| < 1
    if dist is None:
        dist = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], mask)
    loss, nll, entropy = model.nll_entropy_loss(dist, actions, mask)
    return loss, entropy, {"losses/action_nll": nll.item(), "losses/entropy": entropy.item(),
                           "losses/temperature": model.temperature.item()}
