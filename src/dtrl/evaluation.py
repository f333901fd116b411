"""Evaluation: a policy's return with the mean action and a fixed target RTG, D4RL-normalised.

``evaluate`` runs all episodes as one batch through the rollout engine (one model call per step
for every episode), with the settings it is given (the in-run evaluations). ``evaluate_saved`` is
``dtrl eval`` (and ``dtrl.evaluate``): a saved policy at the RTG and context its trainer recorded,
unless told otherwise. ``Actor`` acts one step at a time in a loop of your own, exactly as the rollout
engine does (the same KV cache, RTG bookkeeping and short context). ``dtrl eval RUN`` loads a run
directory's (or a policy directory's) policy and prints the normalised return mean ± std (raw
returns for tasks without reference scores). ``record_video`` renders the first of those episodes
headless into an MP4 or GIF (``dtrl eval --video``, ``--video-every`` during finetuning).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mujoco
import numpy as np
import tyro

from dtrl.config import reject_non_finite, resolve_device
from dtrl.envs import BatchedEnv, make
from dtrl.errors import DtrlError
from dtrl.models.loading import load_any_policy
from dtrl.rollout import rollout_episodes
from dtrl.rollout.stepping import _act, _fed_returns, _ShortContext
from dtrl.tasks import get_task


def evaluate(
    policy,
    task=None,
    episodes: int = 10,
    target_rtg: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    num_workers: int = 0,
    envs=None,
    context_length: int | None = None,
    num_threads: int = 1,
) -> dict:
    """Mean-action episodes with env seeds ``seed, seed+1, ...``.

    ``policy`` is anything with the act interface: a Decision Transformer policy (``model``,
    ``normalizer``, ``reward_scale``: rolled out by ``dtrl.rollout``, conditioned on ``target_rtg``,
    default ``task.eval_rtg``) or a Markov policy with ``predict(observations [N, O], device) -> mean
    actions [N, A]`` (IQL's actor; no target return), as SB3's ``evaluate_policy`` takes any model
    with ``predict``.

    Returns ``eval_return_mean/std``, ``eval_normalized_mean/std`` (None without reference scores),
    ``eval_length_mean``, ``eval_episodes``, ``eval_target_rtg`` and ``eval_context_length`` (None
    for a Markov policy). ``envs``: an existing ``BatchedEnv`` of exactly ``episodes`` copies to
    reuse; otherwise one is made (stepped by ``num_threads`` threads) and closed here.
    ``context_length``: timesteps of history a DT sees (Table 6's T_eval; None: its full sliding window).
    ``task``: a Task or its name (None: the task the policy was trained on).

    This is the engine with exactly the settings given (the in-run evaluations call it so); a saved
    policy evaluated as ``dtrl eval`` does it (at its trainer's RTG and context) is ``evaluate_saved``.
    """
    task = _task_of(policy, task)
    if episodes < 1:
        raise DtrlError(f"evaluation needs at least 1 episode, got {episodes}")
    markov = hasattr(policy, "predict")
    target = None if markov else task.eval_rtg if target_rtg is None else float(target_rtg)
    seeds = [seed + i for i in range(episodes)]
    own_envs = envs is None
    if own_envs:
        envs = BatchedEnv(task, episodes, num_workers=num_workers, seed=seed, num_threads=num_threads)
    try:
        if markov:
            returns, lengths = _markov_episodes(policy, envs, seeds, task.max_episode_steps, device)
        else:
            trajectories = rollout_episodes(policy, envs, task, target, seeds=seeds, mode="mean", device=device,
                                            context_length=context_length)
            returns = np.array([t.episode_return for t in trajectories], dtype=np.float64)
            lengths = np.array([len(t) for t in trajectories], dtype=np.float64)
    finally:
        if own_envs:
            envs.close()
    result = {
        "eval_return_mean": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_normalized_mean": None,
        "eval_normalized_std": None,
        "eval_length_mean": float(lengths.mean()),
        "eval_episodes": int(episodes),
        "eval_target_rtg": target,
        "eval_context_length": None if markov else context_length,
    }
    if task.has_reference:
        normalized = np.array([task.normalize(r) for r in returns], dtype=np.float64)
        result["eval_normalized_mean"] = float(normalized.mean())
        result["eval_normalized_std"] = float(normalized.std())
    return result


def _task_of(policy, task):
    """``task`` (a Task or its name) as a Task; None: the task the policy was trained on."""
    if task is None:
        name = getattr(policy, "task_name", None)
        if name is None:
            raise DtrlError("give the task to evaluate on: this policy does not record one")
        return get_task(name)
    return get_task(task) if isinstance(task, str) else task


def evaluate_saved(policy, task=None, episodes: int = 10, target_rtg: float | None = None,
                   context_length: int | None = None, seed: int = 0, device: str = "auto", num_workers: int = 0,
                   env_threads: int = 1) -> dict:
    """``dtrl eval``: a saved policy evaluated with the mean action, by default on the task it was trained
    on, at the RTG and with the context its trainer recorded (``default_target_rtg``,
    ``default_context_length``); ``{"task": name, **evaluate(...)}``. The defaults are ``EvalConfig``'s."""
    EvalConfig(run="-", task=None, episodes=episodes, target_rtg=target_rtg, context_length=context_length,
               seed=seed, device=device, num_workers=num_workers, env_threads=env_threads)  # the CLI's checks
    task = _task_of(policy, task)
    result = evaluate(policy, task, episodes=episodes, target_rtg=default_target_rtg(policy, task, target_rtg),
                      seed=seed, device=resolve_device(device), num_workers=num_workers, num_threads=env_threads,
                      context_length=default_context_length(policy, context_length))
    return {"task": task.name, **result}


class Actor:
    """A policy acting one step at a time in a loop of your own (``dtrl.load(...).actor()``).

    ``reset()`` at each episode start, ``act(observation) -> action`` (the mean action, numpy in and
    out), ``observe(reward)`` after each env step (the return-to-go: g_{t+1} = g_t - r_t). A Decision
    Transformer keeps its KV cache across steps, or rebuilds it from the last ``context_length - 1``
    steps, exactly as the rollout engine does: an episode gives the actions ``evaluate`` takes on it
    (tests/test_api.py). A Markov policy (IQL's actor, SB3) ignores the target and the rewards.
    """

    def __init__(self, policy, target_rtg: float | None = None, context_length: int | None = None,
                 device: str = "cpu"):
        if context_length is not None and context_length < 1:
            raise DtrlError(f"context_length must be >= 1, got {context_length}")
        self.policy, self.device = policy, device
        self.markov = hasattr(policy, "predict")
        self.target_rtg = None if self.markov else float(target_rtg)
        self.context_length = None if self.markov else context_length
        self.reset()

    def reset(self) -> None:
        """Start a new episode: timestep 0, the RTG back at the target, an empty context."""
        self.t = 0
        self.return_to_go = np.array([self.target_rtg or 0.0], np.float64)
        self._awaiting_reward = False
        self._short = self._cache = None
        if not self.markov:
            if self.context_length is None:
                self._cache = self.policy.model.new_cache(1)
            else:
                self._short = _ShortContext(self.policy, self.device, self.context_length, 1)

    def act(self, observation) -> np.ndarray:
        """The mean action [A] for the raw observation [O] at the current step."""
        obs = np.asarray(observation, dtype=np.float32).reshape(1, -1)
        if self.markov:
            return self.policy.predict(obs, self.device)[0]
        if self._awaiting_reward:
            raise DtrlError("call actor.observe(reward) after each env step, before the next act() "
                            "(the return-to-go the model is conditioned on needs it)")
        import torch

        rows = np.zeros(1, np.int64)
        model = self.policy.model
        with torch.inference_mode():
            cache = self._cache if self._short is None else self._short.cache(rows)
            timesteps = torch.full((1,), self.t, dtype=torch.long, device=self.device)
            dist, rtg_t = _act(self.policy, cache, obs, self.return_to_go, rows, timesteps, self.device)
            action = dist.mean
            model.append_action(cache, action)
            action_np = action.float().cpu().numpy()
            if self._short is not None:
                fed = _fed_returns(dist, rtg_t, self.return_to_go, self.policy.reward_scale)
                self._short.push(rows, obs, action_np, np.asarray(fed, np.float64), self.t)
        self._awaiting_reward = True
        return action_np[0]

    def observe(self, reward: float) -> None:
        """The reward of the step just taken: lowers the return-to-go, moves to the next timestep."""
        if self.markov:
            return
        # rounded to float32 first, as the rollout engine records rewards
        self.return_to_go -= float(np.float32(reward))
        self.t += 1
        self._awaiting_reward = False


def _markov_episodes(policy, envs, seeds: list[int], max_steps: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) of one episode per env copy with ``policy.predict``'s mean actions."""
    count = len(seeds)
    obs = np.asarray(envs.reset(seeds), dtype=np.float32)
    returns = np.zeros(count, np.float64)
    lengths = np.zeros(count, np.int64)
    active = np.ones(count, bool)
    for _ in range(max_steps):
        obs, reward, terminated, truncated = envs.step(policy.predict(obs, device), active)
        obs = np.asarray(obs, dtype=np.float32)
        returns[active] += np.asarray(reward, np.float64)[active]
        lengths[active] += 1
        active &= ~(np.asarray(terminated, bool) | np.asarray(truncated, bool))
        if not active.any():
            break
    return returns, lengths.astype(np.float64)


def default_target_rtg(policy, task, target_rtg: float | None = None) -> float:
    """``target_rtg`` if given; else the evaluation RTG the policy's trainer recorded (on the task it
    was trained on); else the task's evaluation target."""
    if target_rtg is not None:
        return float(target_rtg)
    recorded = policy.meta.get("extra", {}).get("eval_rtg")
    if recorded is not None and policy.task_name == task.name:
        return float(recorded)
    return float(task.eval_rtg)


def default_context_length(policy, context_length: int | None = None) -> int | None:
    """``context_length`` if given; else the short online context the policy's trainer recorded
    (GRPO-DT's T_eval); else None, the model's own sliding window."""
    if context_length is not None:
        return int(context_length)
    recorded = policy.meta.get("extra", {}).get("eval_context_length")
    return None if recorded is None else int(recorded)


# ----------------------------------------------------------------------------------------------
# Videos: MuJoCo renders without a display through EGL (MUJOCO_GL=egl) or, where EGL is missing,
# OSMesa; a MUJOCO_GL the user set is taken as it is. MP4 needs imageio's ffmpeg (the `video` extra).

HEADLESS_BACKENDS = ("egl", "osmesa")
VIDEO_SUFFIXES = (".mp4", ".gif")
GIF_MAX_FPS = 25  # GIF viewers clamp shorter frame delays: fewer frames, real-time playback


def check_video_path(path: str | Path, option: str = "--video") -> Path:
    """A ``.mp4`` / ``.gif`` path whose folder exists (checked before any work starts)."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise DtrlError(f"{option} {path}: give a .mp4 or .gif file")
    if path.is_dir() or not path.parent.is_dir():
        raise DtrlError(f"{option} {path}: " + ("it is a folder" if path.is_dir() else
                                                 f"the folder {path.parent} does not exist"))
    try:
        import imageio  # noqa: F401
    except ImportError:
        raise DtrlError("writing a video needs imageio: pip install 'dtrl[video]'") from None
    if path.suffix.lower() == ".mp4":
        check_mp4_writer()
    return path


def check_mp4_writer() -> None:
    """MP4 files are written by imageio's ffmpeg (the ``video`` extra)."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise DtrlError("writing an MP4 needs imageio-ffmpeg: pip install 'dtrl[video]' "
                        "(or give a .gif path)") from None


def headless_env(task, seed: int):
    """An env of ``task`` that renders ``rgb_array`` frames, on the first headless backend that works
    (MUJOCO_GL as set, else EGL, else OSMesa); a one-line DtrlError naming what is missing when none does."""
    chosen = os.environ.get("MUJOCO_GL")
    errors = []
    for backend in [chosen] if chosen else HEADLESS_BACKENDS:
        os.environ["MUJOCO_GL"] = backend
        env = None
        try:
            env = make(task, seed=seed, render_mode="rgb_array")
            _follow_the_agent(env)
            env.reset(seed=seed)
            if np.asarray(env.render()).ndim != 3:
                raise RuntimeError("no rgb_array frame")
            return env
        except Exception as exc:  # a backend that does not load is tried no further
            errors.append(f"{backend}: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
            if env is not None:
                env.close()
    if not chosen:
        del os.environ["MUJOCO_GL"]
    raise DtrlError("cannot render headless (" + "; ".join(errors) + "): install EGL (Debian: libegl1) or "
                    "OSMesa (libosmesa6), or set MUJOCO_GL to a backend that works here")


def _follow_the_agent(env) -> None:
    """Render from the model's own ``track`` camera where it has one (Hopper, Walker2d, Ant, HalfCheetah,
    ...). gymnasium 1.x renders these envs from a free camera, on which the default camera config's
    ``trackbodyid`` has no effect: the camera stays where the episode started and a hopper leaves the
    picture within two seconds."""
    renderer = getattr(env.unwrapped_env, "mujoco_renderer", None)
    if renderer is None:
        return
    camera = mujoco.mj_name2id(renderer.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    if camera != -1:
        renderer.camera_id = camera


def record_video(policy, task, path: str | Path, episodes: int = 1, target_rtg: float | None = None,
                 context_length: int | None = None, seed: int = 0, device: str = "cpu",
                 max_steps: int | None = None, max_fps: int | None = None) -> dict:
    """Render ``episodes`` episodes (seeds ``seed``, ``seed + 1``, ...: the first ones ``evaluate``
    scores with these settings) of ``policy`` acting with its mean action, one after the other, into
    ``path`` (.mp4 at the env's own frame rate, or .gif at most 25 frames a second; ``max_fps`` caps
    either by rendering every k-th step, which plays in real time and renders k times faster, as
    software rendering takes ~0.1 s a frame). Returns
    {"video": path, "frames": frames written, "returns": [each episode's return]}."""
    import imageio.v2 as imageio

    path, task = check_video_path(path), _task_of(policy, task)
    markov = hasattr(policy, "predict")
    actor = Actor(policy, target_rtg=None if markov else default_target_rtg(policy, task, target_rtg),
                  context_length=None if markov else default_context_length(policy, context_length), device=device)
    env = headless_env(task, seed)
    fps = int(round(env.unwrapped_env.metadata.get("render_fps", 30)))
    caps = [cap for cap in (max_fps, GIF_MAX_FPS if path.suffix.lower() == ".gif" else None) if cap]
    every = -(-fps // min(caps)) if caps else 1
    writer = (imageio.get_writer(path, fps=fps / every, macro_block_size=1) if path.suffix.lower() == ".mp4"
              else imageio.get_writer(path, mode="I", duration=1000 * every / fps, loop=0))
    frames, returns = 0, []
    try:
        for episode in range(episodes):
            episode_return, written = _render_episode(env, actor, seed + episode, writer, every, max_steps)
            returns.append(episode_return)
            frames += written
    finally:
        writer.close()
        env.close()
    return {"video": str(path), "frames": frames, "returns": returns}


def _render_episode(env, actor: Actor, seed: int, writer, every: int, max_steps: int | None) -> tuple[float, int]:
    """One episode, every ``every``-th frame written; (its return, frames written)."""
    obs, _ = env.reset(seed=seed)
    actor.reset()
    total, done, step, written = 0.0, False, 0, 0
    while not done and (max_steps is None or step < max_steps):
        if step % every == 0:
            writer.append_data(env.render())
            written += 1
        obs, reward, terminated, truncated, _ = env.step(actor.act(obs))
        actor.observe(reward)
        total, done, step = total + float(reward), terminated or truncated, step + 1
    return total, written


def format_result(result: dict) -> str:
    """'normalised 45.2 ± 3.1 (return 1500.3 ± 101.2, 10 episodes, length 512)' or the raw-return form."""
    raw = f"return {result['eval_return_mean']:.1f} ± {result['eval_return_std']:.1f}"
    tail = f"{result['eval_episodes']} episodes, mean length {result['eval_length_mean']:.0f}"
    if result.get("eval_normalized_mean") is None:
        return f"{raw} ({tail}; no reference scores for this task: raw return)"
    return f"normalised {result['eval_normalized_mean']:.1f} ± {result['eval_normalized_std']:.1f} ({raw}, {tail})"


@dataclass
class EvalConfig:
    """``dtrl eval``: evaluate a run's policy with the mean action."""

    run: tyro.conf.Positional[str]
    """a run directory (its policy/ is used), a policy directory, or hf:DIR (a Hugging Face DT with
    dtrl_state_stats.json beside it)"""
    task: str | None = None
    """task to evaluate on (default: the task the policy was trained on)"""
    episodes: int = 10
    """number of episodes (run as one batch)"""
    target_rtg: float | None = None
    """target return-to-go g_0 (default: the one the policy's trainer evaluated it at, e.g. g_online for
    GRPO-DT and PPO-DT; for pretrained DTs and other tasks, the task's evaluation target)"""
    context_length: int | None = None
    """timesteps of history the model sees (default: the short context the policy's trainer used, e.g.
    GRPO-DT's T_eval; otherwise the model's own sliding window)"""
    seed: int = 0
    """env seed of the first episode (episode i uses seed + i)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when available, else CPU"""
    num_workers: int = 0
    """worker processes for the env copies (0: step them in this process)"""
    env_threads: int = 1
    """threads stepping the env copies (see `dtrl finetune --help`); results do not depend on it"""
    json: bool = False
    """print the result as one JSON object instead of a sentence"""
    threads: int = 0
    """torch CPU threads (0: torch's default; 1 is much faster on a busy or 2-core machine)"""
    video: str | None = None
    """also record the first --video-episodes of the evaluated episodes, rendered headless (EGL, else
    OSMesa), into this .mp4 or .gif file"""
    video_episodes: int = 1
    """episodes in the --video file"""
    video_fps: int = 0
    """the --video file at most this many frames a second, rendering every k-th step (0: every step, the
    env's own rate; software rendering takes ~0.1 s a frame, so 25 renders Hopper's 125 five times faster)"""

    def __post_init__(self) -> None:
        reject_non_finite(self)
        self.validate()

    def validate(self) -> None:
        if self.episodes < 1:
            raise DtrlError(f"--episodes must be >= 1, got {self.episodes}")
        if self.context_length is not None and self.context_length < 1:
            raise DtrlError(f"--context-length must be >= 1, got {self.context_length}")
        if self.num_workers < 0 or self.threads < 0:
            raise DtrlError("--num-workers and --threads must be >= 0")
        if self.env_threads < 1:
            raise DtrlError(f"--env-threads must be >= 1, got {self.env_threads}")
        if self.video_fps < 0:
            raise DtrlError(f"--video-fps must be >= 0, got {self.video_fps}")
        if not 1 <= self.video_episodes <= self.episodes:
            raise DtrlError(f"--video-episodes must be in [1, --episodes], got {self.video_episodes}")
        if self.video is not None:
            check_video_path(self.video)


def main(argv: list[str]) -> int:
    config = tyro.cli(EvalConfig, args=argv, prog="dtrl eval",
                      description="Evaluate a run's (or a policy directory's) policy: mean action, target RTG; "
                                  "prints the D4RL-normalised return mean ± std.")
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    task = get_task(config.task) if config.task is not None else None
    policy = load_any_policy(config.run, task=task, device=device)
    result = evaluate_saved(policy, task, episodes=config.episodes, target_rtg=config.target_rtg,
                            context_length=config.context_length, seed=config.seed, device=device,
                            num_workers=config.num_workers, env_threads=config.env_threads)
    if config.video is not None:
        result["video"] = record_video(policy, task, config.video, episodes=config.video_episodes,
                                       target_rtg=config.target_rtg, context_length=config.context_length,
                                       seed=config.seed, device=device, max_fps=config.video_fps or None)["video"]
    if config.json:
        print(json.dumps(result))
    else:
        print(f"{result['task']}: {format_result(result)}" + (f"; video {result['video']}" if config.video else ""))
    return 0
