"""Reference lines that are not Decision Transformers: stable-baselines3's PPO and SAC trained from
scratch on the task, with the same evaluation, run directory and budget axes as every dtrl method —
"what plain RL reaches with the same compute and no pretrained DT".

    dtrl finetune --algo sb3-sac --task hopper-random --iterations 100 --out runs/sac
    dtrl finetune --algo sb3-ppo --task hopper-random --iterations 100 --out runs/ppo-mlp

One iteration is ``env_steps_per_iteration`` environment steps of ``model.learn`` (SB3's own loop,
untouched), then, when due, a mean-action evaluation on the seeds every dtrl method is evaluated on.
Hyperparameters are SB3's defaults, with rl-baselines3-zoo's MuJoCo value for SAC's learning_starts
(10000) and PPO's rollout length set to one iteration (``n_steps = env_steps_per_iteration``), so an
iteration is the same number of env steps for both; no pretraining, no offline data. The model is
saved as RUN/policy (``dtrl eval RUN`` works).
Resuming continues from the last checkpoint's model (and SAC's replay buffer), but SB3 does not
expose its internal RNG streams, so a resumed run is not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from dtrl.algos.run_loop import RunLoop, evaluate_policy, scheduled_learning_rate
from dtrl.config import CommonConfig, parse_config, resolve_device
from dtrl.envs import make
from dtrl.errors import DtrlError
from dtrl.files import atomic_write
from dtrl.models.checkpoint import LoadedSB3Policy, save_sb3_policy
from dtrl.runs import seed_everything
from dtrl.tasks import get_task


@dataclass
class SB3Config(CommonConfig):
    """stable-baselines3 PPO or SAC from scratch (MLP policy), evaluated like every dtrl method."""

    algorithm: Literal["sac", "ppo"] = "sac"
    """set by --algo sb3-sac / sb3-ppo"""
    iterations: int = 10
    """iterations of env_steps_per_iteration environment steps (one metrics row each)"""
    env_steps_per_iteration: int = 1000
    """environment steps per iteration"""
    learning_rate: float = 3e-4
    """Adam learning rate of every network (SB3's default)"""
    learning_rate_schedule: Literal["constant", "linear"] = "constant"
    """'linear': falls to 0 at the last of ``iterations`` (SB3's progress-based schedule)"""
    learning_starts: int = 10_000
    """SAC: random-action steps before the first update (rl-baselines3-zoo's MuJoCo value)"""
    time_limit_s: float = 0.0
    """stop after the iteration during which this many seconds of training passed (0: no limit)"""
    threads: int = 1
    """torch CPU threads (the MLPs are small: one thread is fastest on a shared machine)"""

    def validate(self) -> None:
        super().validate()
        for name in ("iterations", "env_steps_per_iteration"):
            if getattr(self, name) < 1:
                raise DtrlError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise DtrlError(f"learning-rate must be a positive number, got {self.learning_rate}")
        if self.learning_starts < 0 or self.time_limit_s < 0 or self.threads < 0:
            raise DtrlError("learning-starts, time-limit-s and threads must be >= 0")


def cpu_preset(task_name: str) -> SB3Config:
    return SB3Config(task=get_task(task_name).name, preset="cpu", iterations=100, env_steps_per_iteration=1000,
                     eval_every=5, eval_episodes=5)


def paper_preset(task_name: str) -> SB3Config:
    return SB3Config(task=get_task(task_name).name, preset="paper", iterations=1000, env_steps_per_iteration=1000,
                     eval_every=10, eval_episodes=10)


PRESETS = {"cpu": cpu_preset, "paper": paper_preset}


def build_model(config: SB3Config, env, device: str):
    from stable_baselines3 import PPO, SAC

    if config.algorithm == "sac":
        return SAC("MlpPolicy", env, learning_rate=config.learning_rate, learning_starts=config.learning_starts,
                   seed=config.seed, device=device, verbose=0)
    # one PPO rollout per iteration, so that an iteration is env_steps_per_iteration steps as for SAC
    return PPO("MlpPolicy", env, learning_rate=config.learning_rate, n_steps=config.env_steps_per_iteration,
               seed=config.seed, device=device, verbose=0)


def set_learning_rate(model, config: SB3Config, iteration: int) -> float:
    """The iteration's learning rate under ``learning_rate_schedule`` (as the DT methods), given to
    SB3 as a constant for this learn()."""
    model.learning_rate = scheduled_learning_rate(config, iteration)
    model._setup_lr_schedule()  # SB3 reads the schedule from model.learning_rate here
    return model.learning_rate


def gradient_steps(model) -> int:
    """Gradient steps so far: SAC counts them; PPO counts epochs, each of n_steps / batch_size minibatches."""
    updates = int(getattr(model, "_n_updates", 0))
    if hasattr(model, "n_epochs"):
        return updates * math.ceil(model.n_steps * model.n_envs / model.batch_size)
    return updates


def load_or_build_model(config: SB3Config, env, state: dict | None, checkpoint_dir, device: str):
    """A fresh model, or the one (and SAC's replay buffer) the resumed checkpoint names."""
    from stable_baselines3 import PPO, SAC

    if state is None:
        return build_model(config, env, device)
    # the model and replay files the checkpoint names (written before it)
    model = (SAC if config.algorithm == "sac" else PPO).load(checkpoint_dir / state["model_file"], env=env,
                                                              device=device)
    if state.get("replay_file"):
        model.load_replay_buffer(checkpoint_dir / state["replay_file"])
    return model


def save_checkpoint(run, model, config: SB3Config, task, clock, iteration: int) -> None:
    """The model and SAC's replay buffer under this iteration's names, each written whole (atomic),
    then the state that names them, then the previous ones go: a crash at any point leaves a state
    whose files exist and belong to its iteration."""
    checkpoint_dir = run.path / "checkpoints"
    save_sb3_policy(run.path / "policy", model, task.name, config.algorithm)
    files = {"model_file": f"model-{iteration}.zip"}
    atomic_write(checkpoint_dir / files["model_file"], model.save)
    if config.algorithm == "sac":
        files["replay_file"] = f"replay-{iteration}.pkl"
        atomic_write(checkpoint_dir / files["replay_file"], model.save_replay_buffer)
    run.save_state({"algo": f"sb3-{config.algorithm}", "iteration": iteration, "clock": clock.state_dict(), **files},
                   iteration)
    for old in checkpoint_dir.glob("*-*.*"):
        if old.name not in files.values() and old.name.startswith(("model-", "replay-")):
            old.unlink(missing_ok=True)


def train(config: SB3Config) -> dict:
    task = get_task(config.task)
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    env = make(task, seed=config.seed)
    model = None  # built once the loop knows whether it resumes

    with RunLoop(config, f"sb3-{config.algorithm}",
                 evaluate=lambda: evaluate_policy(LoadedSB3Policy(model, task.name), task, config, device),
                 checkpoint=lambda iteration: save_checkpoint(loop.run, model, config, task, loop.clock,
                                                              iteration)) as loop:
        loop.closing(env)
        model = load_or_build_model(config, env, loop.state, loop.run.path / "checkpoints", device)
        for iteration in loop:
            learning_rate = set_learning_rate(model, config, iteration)
            model.learn(total_timesteps=config.env_steps_per_iteration, reset_num_timesteps=False)
            loop.clock.env_steps, loop.clock.grad_updates = int(model.num_timesteps), gradient_steps(model)
            loop.end_iteration({"charts/learning_rate": learning_rate})
        return loop.finish()


def _parse(argv: list[str], algorithm: str) -> SB3Config:
    return parse_config(SB3Config, [*argv, "--algorithm", algorithm], PRESETS, description=__doc__.split("\n\n")[0],
                        prog=f"dtrl finetune --algo sb3-{algorithm}")


def parse_sac(argv: list[str]) -> SB3Config:
    return _parse(argv, "sac")


def parse_ppo(argv: list[str]) -> SB3Config:
    return _parse(argv, "ppo")


def main_sac(argv: list[str]) -> int:
    train(parse_sac(argv))
    return 0


def main_ppo(argv: list[str]) -> int:
    train(parse_ppo(argv))
    return 0
