"""Build D4RL-style datasets locally (``dtrl data build``), the way D4RL made its MuJoCo levels:

* ``random``: uniform random actions, whole episodes until N transitions.
* ``medium``: a SAC agent (stable-baselines3) trained until its evaluation return reaches about one
  third of the expert reference return (D4RL's definition: normalised score ~33), then rolled out
  with stochastic actions for N transitions.
* ``medium-replay``: that same training's replay buffer, from the first step up to the medium point.

Human / cloned Adroit demonstrations and AntMaze's planner data cannot be recreated this way; those
tasks only build ``random`` here (labelled as such in the file) and load their real data from Minari.
Terminals and timeouts follow D4RL: ``terminals`` = the env terminated, ``timeouts`` = the time limit
(or the end of the collection) cut the episode.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dtrl.config import reject_non_finite
from dtrl.data.hdf5 import write_d4rl
from dtrl.data.task_of import TASK_ATTR, build_task_name
from dtrl.errors import DtrlError
from dtrl.tasks import TASKS, Task, get_task

LEVELS = ("random", "medium", "medium-replay")


# Collection env i of a build with seed s starts from reset seed ENV_SEED_STRIDE * s + i (later
# episodes continue that env's own RNG), so builds with different seeds never share an episode.
ENV_SEED_STRIDE = 10_000

@dataclass
class BuildConfig:
    """``dtrl data build TASK-LEVEL --out FILE``: make a D4RL-layout dataset with a local behaviour policy."""

    dataset: str = ""
    """TASK-LEVEL to build, e.g. hopper-random, walker2d-medium, ant-medium-replay, door-random,
    or GYM_ENV_ID-LEVEL for any gymnasium MuJoCo env (HalfCheetah-v5-medium, needs --target-return)"""
    out: str = ""
    """output .hdf5 file (refused if it exists, unless --force)"""
    transitions: int = 1_000_000
    """transitions to collect for random / medium (D4RL used 1M; 200k is plenty on a CPU)"""
    seed: int = 0
    """seed for the environments, the random policy and SAC"""
    force: bool = False
    """overwrite an existing --out file"""
    replay_out: str = ""
    """medium only: also write the same training's medium-replay dataset to this file (one SAC run for both)"""
    target_return: float | None = None
    """medium: raw evaluation return at which SAC stops (default: the return of normalised score
    --target-score; required for envs without D4RL reference scores)"""
    target_score: float = 100.0 / 3.0
    """medium: D4RL-normalised score at which SAC stops (D4RL: about 1/3 of expert)"""
    sac_steps: int = 1_000_000
    """medium: most SAC environment steps; stops earlier when the target is reached (a warning and
    the last policy if it never is)"""
    learning_starts: int = 5000
    """SAC: random-action steps before the first gradient update"""
    batch_size: int = 256
    """SAC: minibatch size"""
    learning_rate: float = 3e-4
    """SAC: Adam learning rate (actor, critics, entropy coefficient)"""
    net_arch: tuple[int, ...] = (256, 256)
    """SAC: hidden layer sizes of actor and critics"""
    eval_every: int = 5000
    """medium: evaluate the SAC policy every N training steps to check the target"""
    eval_episodes: int = 5
    """medium: episodes per evaluation (stochastic actions, like the data that will be collected)"""
    rollout_envs: int = 8
    """environments stepped together while collecting (the policy runs on a batch of observations)"""
    progress: bool = True
    """show rich progress bars with ETA"""

    def validate(self) -> None:
        reject_non_finite(self)
        if not self.dataset:
            raise DtrlError("missing TASK-LEVEL to build (e.g. dtrl data build hopper-medium --out hopper-medium.hdf5)")
        if not self.out:
            raise DtrlError("--out FILE is required (the .hdf5 file to write)")
        if not self.out.endswith((".hdf5", ".h5")):
            raise DtrlError(f"--out {self.out} must end in .hdf5 or .h5")
        for name in ("transitions", "eval_every", "eval_episodes", "rollout_envs", "batch_size"):
            if getattr(self, name) < 1:
                raise DtrlError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("sac_steps", "learning_starts"):
            if getattr(self, name) < 0:
                raise DtrlError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.replay_out and not self.replay_out.endswith((".hdf5", ".h5")):
            raise DtrlError(f"--replay-out {self.replay_out} must end in .hdf5 or .h5")


def resolve_dataset_name(name: str) -> tuple[Task, str]:
    """``TASK-LEVEL`` -> (a task for that environment, level). Accepts registry names
    (``hopper-medium-replay``), ``FAMILY-random`` for load-only families (``door-random``,
    ``antmaze-umaze-random``) and ``GYM_ID-LEVEL`` (``HalfCheetah-v5-medium``)."""
    name = name.strip()
    for suffix in ("-v0", "-v1", "-v2"):
        if name.endswith(suffix) and name[: -len(suffix)] in TASKS:
            name = name[: -len(suffix)]
    if name in TASKS:
        task = TASKS[name]
        if task.level in LEVELS:
            return task, task.level
        alternatives = ", ".join(f"{task.name}-{lvl}" if task.domain == "antmaze" else f"{task.family}-{lvl}"
                                 for lvl in task.buildable)
        raise DtrlError(f"{name} data ({task.level}) cannot be built locally as D4RL made it; load it from Minari "
                        f"({task.minari_id}) instead; buildable here: {alternatives}")
    for level in sorted(LEVELS, key=len, reverse=True):  # medium-replay before medium
        if not name.endswith("-" + level):
            continue
        prefix = name[: -len(level) - 1]
        if prefix in TASKS:  # antmaze-umaze-random
            return dataclasses.replace(TASKS[prefix], level=level), level
        family_tasks = [t for t in TASKS.values() if t.family == prefix]
        if family_tasks:  # door-random
            return dataclasses.replace(family_tasks[0], level=level), level
        return dataclasses.replace(get_task(prefix), level=level), level  # HalfCheetah-v5-medium
    raise DtrlError(f"cannot read a dataset level from {name!r}: expected TASK-LEVEL with LEVEL one of "
                    f"{', '.join(LEVELS)} (e.g. hopper-medium)")


def make_env(task: Task, seed: int | None = None):
    """The task's environment: flat float32 observation, its env kwargs and time limit."""
    from dtrl.envs import make

    return make(task, seed=seed)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    disable=not enabled)


def collect(
    task: Task,
    policy: Callable[[np.ndarray], np.ndarray],
    n_transitions: int,
    seed: int,
    num_envs: int = 8,
    progress: bool = True,
    description: str = "rollout",
) -> dict[str, np.ndarray]:
    """Run ``policy`` (obs batch [n, O] -> actions [n, A]) in ``num_envs`` envs until ``n_transitions``
    transitions of finished episodes exist; the last episode is cut to fit and marked as a timeout.
    Returns D4RL arrays, episodes in the order they finished."""
    envs = [make_env(task) for _ in range(num_envs)]
    observations = np.stack([env.reset(seed=ENV_SEED_STRIDE * seed + i)[0]
                             for i, env in enumerate(envs)]).astype(np.float32)
    running: list[dict[str, list]] = [{k: [] for k in ("obs", "act", "rew", "next", "term")} for _ in envs]
    finished: list[dict[str, np.ndarray]] = []
    n_done = 0
    with _progress(progress) as bar:
        bar_task = bar.add_task(description, total=n_transitions, info="")
        while n_done < n_transitions:
            actions = np.asarray(policy(observations), dtype=np.float32)
            for i, env in enumerate(envs):
                next_obs, reward, terminated, truncated, _ = env.step(actions[i])
                episode = running[i]
                episode["obs"].append(observations[i].copy())
                episode["act"].append(actions[i])
                episode["rew"].append(float(reward))
                episode["next"].append(np.asarray(next_obs, dtype=np.float32))
                episode["term"].append(bool(terminated))
                if terminated or truncated:
                    finished.append({k: np.asarray(v) for k, v in episode.items()})
                    finished[-1]["timeout"] = np.zeros(len(episode["rew"]), bool)
                    finished[-1]["timeout"][-1] = not terminated
                    n_done += len(episode["rew"])
                    returns = [float(e["rew"].sum()) for e in finished[-20:]]
                    bar.update(bar_task, completed=min(n_done, n_transitions),
                               info=f"episodes {len(finished)}  return(last 20) {np.mean(returns):.0f}")
                    running[i] = {k: [] for k in episode}
                    next_obs, _ = env.reset()
                observations[i] = next_obs
    for env in envs:
        env.close()
    arrays = {
        "observations": np.concatenate([e["obs"] for e in finished]).astype(np.float32),
        "actions": np.concatenate([e["act"] for e in finished]).astype(np.float32),
        "rewards": np.concatenate([e["rew"] for e in finished]).astype(np.float32),
        "next_observations": np.concatenate([e["next"] for e in finished]).astype(np.float32),
        "terminals": np.concatenate([e["term"] for e in finished]).astype(bool),
        "timeouts": np.concatenate([e["timeout"] for e in finished]).astype(bool),
    }
    arrays = {k: v[:n_transitions] for k, v in arrays.items()}
    if not arrays["terminals"][-1]:
        arrays["timeouts"][-1] = True  # the last episode was cut by the collection budget
    return arrays


def medium_target(task: Task, config: BuildConfig) -> float:
    if config.target_return is not None:
        return float(config.target_return)
    if not task.has_reference:
        raise DtrlError(f"{task.env_id} has no D4RL reference scores: give the medium stopping point with "
                        "--target-return R (raw evaluation return)")
    return task.ref_min_score + config.target_score / 100.0 * (task.ref_max_score - task.ref_min_score)


def train_sac_to_target(task: Task, config: BuildConfig, target: float, log: Callable[[str], None]):
    """SAC until the stochastic evaluation return reaches ``target`` (or ``config.sac_steps``).
    Returns (model, info dict)."""
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    env = make_env(task, seed=config.seed)
    eval_env = make_env(task, seed=config.seed + 12345)
    model = SAC(
        "MlpPolicy", env, learning_rate=config.learning_rate, buffer_size=max(config.sac_steps, 1),
        learning_starts=config.learning_starts, batch_size=config.batch_size, train_freq=1, gradient_steps=1,
        policy_kwargs={"net_arch": list(config.net_arch)}, seed=config.seed, device="cpu", verbose=0,
    )
    info: dict[str, Any] = {"reached": False, "eval_return": float("nan"), "steps": 0, "evaluations": []}

    def evaluate() -> float:
        returns = []
        for _ in range(config.eval_episodes):
            obs, _ = eval_env.reset()
            total, done = 0.0, False
            while not done:
                action, _ = model.predict(obs, deterministic=False)
                obs, reward, terminated, truncated, _ = eval_env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return float(np.mean(returns))

    class StopAtTarget(BaseCallback):
        def __init__(self, bar, bar_task):
            super().__init__()
            self.bar, self.bar_task = bar, bar_task

        def _on_step(self) -> bool:
            steps = self.num_timesteps
            if info["reached"]:
                # Stop one step after the medium point: SB3 stores a step's transition only after this
                # callback returns, so returning False at the medium step itself would drop it.
                return False
            if steps % 100 == 0:
                self.bar.update(self.bar_task, completed=steps)
            if steps % config.eval_every or steps < config.learning_starts:
                return True
            score = evaluate()
            info["evaluations"].append((steps, score))
            info["eval_return"], info["steps"] = score, steps
            normalized = task.normalize(score)
            text = f"eval return {score:.0f}" + (f" (normalised {normalized:.1f})" if normalized is not None else "")
            self.bar.update(self.bar_task, completed=steps, info=f"{text} / target {target:.0f}")
            if not config.progress:
                log(f"SAC step {steps}: {text} (target {target:.0f})")
            if score >= target:
                info["reached"] = True
                # The policy as evaluated; the one gradient step SB3 takes before the stop is undone below.
                info["policy_state"] = copy.deepcopy(model.policy.state_dict())
            return True

    # One thread: SAC's small MLPs gain nothing from more, and on a shared CPU extra threads slow it
    # down several-fold (measured: 67 steps/s with 1 thread vs 28 with 2 under load).
    torch.set_num_threads(1)
    with _progress(config.progress) as bar:
        bar_task = bar.add_task("SAC to medium", total=config.sac_steps, info=f"target return {target:.0f}")
        model.learn(total_timesteps=max(config.sac_steps, 1), callback=StopAtTarget(bar, bar_task))
    if info["reached"]:
        model.policy.load_state_dict(info.pop("policy_state"))
    else:
        info["steps"] = int(model.num_timesteps)
        info["eval_return"] = float(np.mean([evaluate()]))
        log(f"warning: SAC did not reach the target return {target:.1f} within {config.sac_steps} steps "
            f"(last evaluation {info['eval_return']:.1f}); using the last policy")
    eval_env.close()
    return model, info


def replay_buffer_arrays(model) -> dict[str, np.ndarray]:
    """The SAC replay buffer as D4RL arrays (single env, episodes contiguous), env-scale actions."""
    buffer = model.replay_buffer
    n = buffer.buffer_size if buffer.full else buffer.pos
    dones = buffer.dones[:n, 0].astype(bool)
    timeouts = buffer.timeouts[:n, 0].astype(bool) & dones
    # SB3 stores actions rescaled to [-1, 1]; D4RL stores what the env received.
    actions = model.policy.unscale_action(buffer.actions[:n, 0]).astype(np.float32)
    arrays = {
        "observations": buffer.observations[:n, 0].astype(np.float32),
        "actions": actions,
        "rewards": buffer.rewards[:n, 0].astype(np.float32),
        "next_observations": buffer.next_observations[:n, 0].astype(np.float32),
        "terminals": dones & ~timeouts,
        "timeouts": timeouts,
    }
    if n and not dones[-1]:
        arrays["timeouts"][-1] = True  # training stopped mid-episode
    return arrays


def _attrs(task: Task, level: str, builder: str, config: BuildConfig, n: int, **extra: Any) -> dict[str, Any]:
    from dtrl import __version__

    base = {"generic": task.env_id, "antmaze": task.name}.get(task.domain, task.family)
    attrs = {
        "task": task.name, "env_id": task.env_id, "level": level, "dataset": f"{base}-{level}",
        "builder": builder, "seed": config.seed, "n_transitions": n, "dtrl_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # the task this data is (hopper-medium-replay for the replay buffer of a hopper-medium build;
        # "" where no dtrl task is, as door-random): what --dataset without --task trains on
        TASK_ATTR: build_task_name(task, level) or "",
    }
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return attrs


def _check_out(path: str, force: bool, needs_bytes: int = 0) -> None:
    if os.path.exists(path) and not force:
        raise DtrlError(f"{path} already exists (use --force to overwrite it)")
    if os.path.isdir(path):
        raise DtrlError(f"{path} is a directory")
    # before an hour of SAC, not after it: the folder must take a file of the size the data needs
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        probe_bytes = min(max(needs_bytes, 1), PROBE_BYTES)
        check_writable(folder, probe_bytes)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise DtrlError(f"cannot write {path}: {exc.strerror} (checked before building anything)") from None
    if free < needs_bytes:
        raise DtrlError(f"cannot write {path}: it needs at least {needs_bytes / 1e6:.1f} MB and {free / 1e6:.1f} MB "
                        "are free on that disk (checked before building anything)")


PROBE_BYTES = 1 << 20
"""the most bytes the pre-build check writes (and deletes) to see that the output folder takes data"""


def check_writable(folder: str, size: int) -> None:
    """Write ``size`` bytes to a hidden file in ``folder``, fsync and delete it: an OSError when the
    folder cannot take them (read-only, no permission, a full disk: an empty file would still fit)."""
    probe = os.path.join(folder, f".dtrl-write-check-{os.getpid()}")
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def dataset_bytes_lower_bound(task: Task, transitions: int) -> int:
    """Fewest bytes a D4RL file of ``transitions`` rows of ``task`` can take: float32 observations,
    actions and rewards at gzip's best ratio on such data (~10x), plus the HDF5 header."""
    from dtrl.data.dataset import _env_spaces

    spaces = _env_spaces(task)
    return transitions * (spaces.obs_dim + spaces.act_dim + 1) * 4 // 10 + 16_384


def _check_outputs(config: BuildConfig, task: Task, level: str) -> None:
    """Everything about --out and --replay-out that can be refused before any data is collected."""
    if config.replay_out and level == "medium-replay":
        raise DtrlError("--replay-out is for medium builds; for medium-replay give the file as --out")
    if config.replay_out and level != "medium":
        raise DtrlError(f"--replay-out is for medium builds (one SAC run writes both files); a {level} build has no "
                        "replay buffer to write")
    if config.replay_out and os.path.realpath(config.replay_out) == os.path.realpath(config.out):
        raise DtrlError(f"--out and --replay-out are the same file ({config.out}): the replay data would be "
                        "overwritten by the medium data; give two paths")
    needs = dataset_bytes_lower_bound(task, config.transitions) if level != "medium-replay" else 0
    _check_out(config.out, config.force, needs)
    if config.replay_out:
        _check_out(config.replay_out, config.force)


def build(config: BuildConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the dataset(s) described by ``config``; returns a summary (paths, phase times, returns)."""
    config.validate()
    task, level = resolve_dataset_name(config.dataset)
    _check_outputs(config, task, level)
    load_only = task.domain in ("adroit", "antmaze")
    if level != "random" and level not in task.buildable:
        raise DtrlError(f"{task.env_id} supports only {', '.join(task.buildable)} builds here "
                        f"(its real data is load-only: Minari {task.minari_id})")
    if load_only:
        log(f"note: {task.family} {level} is a locally built uniform-random dataset, not D4RL/Minari data "
            f"(the real {task.family} datasets are load-only: {task.minari_id})")
    summary: dict[str, Any] = {"task": task.name, "level": level, "phases": {}, "files": {}}
    seconds = summary["phases"]
    import torch

    torch.manual_seed(config.seed)

    if level == "random":
        rng = np.random.default_rng(config.seed)
        env = make_env(task)
        low, high = env.action_space.low, env.action_space.high
        env.close()
        start = time.perf_counter()
        arrays = collect(task, lambda obs: rng.uniform(low, high, size=(len(obs), len(low))), config.transitions,
                         config.seed, config.rollout_envs, config.progress, "random rollout")
        seconds["rollout"] = time.perf_counter() - start
        builder = "uniform random actions" + (" (locally built; not the D4RL/Minari data)" if load_only else "")
        write_d4rl(config.out, arrays, _attrs(task, level, builder, config, len(arrays["rewards"])))
        summary["files"][config.out] = arrays
        return _finish(summary, task, log)

    target = medium_target(task, config)
    start = time.perf_counter()
    model, info = train_sac_to_target(task, config, target, log)
    seconds["sac_training"] = time.perf_counter() - start
    summary["sac"] = {"steps": int(info["steps"]), "eval_return": float(info["eval_return"]), "target": float(target),
                      "reached": bool(info["reached"]), "evaluations": info["evaluations"]}
    sac_attrs = dict(sac_steps=int(info["steps"]), sac_eval_return=float(info["eval_return"]),
                     target_return=float(target), target_reached=bool(info["reached"]),
                     sac_settings=f"lr {config.learning_rate}, batch {config.batch_size}, net {list(config.net_arch)}, "
                                  f"learning_starts {config.learning_starts}, train_freq 1")
    log(f"SAC: {info['steps']} steps in {seconds['sac_training']:.0f} s, evaluation return {info['eval_return']:.1f} "
        f"(target {target:.1f})")

    replay_path = config.out if level == "medium-replay" else config.replay_out
    if replay_path:
        arrays = replay_buffer_arrays(model)
        write_d4rl(replay_path, arrays, _attrs(task, "medium-replay", "stable-baselines3 SAC replay buffer up to the "
                                               "medium point", config, len(arrays["rewards"]), **sac_attrs))
        summary["files"][replay_path] = arrays
    if level == "medium":
        start = time.perf_counter()

        def policy(obs: np.ndarray) -> np.ndarray:
            action, _ = model.predict(obs, deterministic=False)
            return action

        arrays = collect(task, policy, config.transitions, config.seed + 1, config.rollout_envs, config.progress,
                         "medium rollout")
        seconds["rollout"] = time.perf_counter() - start
        write_d4rl(config.out, arrays, _attrs(task, "medium", "stable-baselines3 SAC at the medium point, stochastic "
                                              "actions", config, len(arrays["rewards"]), **sac_attrs))
        summary["files"][config.out] = arrays
    return _finish(summary, task, log)


def _finish(summary: dict[str, Any], task: Task, log: Callable[[str], None]) -> dict[str, Any]:
    from dtrl.data.trajectory import split_episodes

    for path, arrays in list(summary["files"].items()):
        trajectories = split_episodes(arrays["observations"], arrays["actions"], arrays["rewards"],
                                      arrays["terminals"], arrays["timeouts"])
        returns = np.array([t.episode_return for t in trajectories])
        normalized = [task.normalize(r) for r in returns]
        entry = {"transitions": len(arrays["rewards"]), "episodes": len(trajectories),
                 "return_mean": float(returns.mean()), "return_std": float(returns.std())}
        if normalized[0] is not None:
            entry["normalized_mean"] = float(np.mean(normalized))
            entry["normalized_std"] = float(np.std(normalized))
        summary["files"][path] = entry
        text = (f"wrote {path}: {entry['transitions']} transitions, {entry['episodes']} episodes, "
                f"return {entry['return_mean']:.1f} ± {entry['return_std']:.1f}")
        if "normalized_mean" in entry:
            text += f", normalised {entry['normalized_mean']:.1f} ± {entry['normalized_std']:.1f}"
        log(text)
    return summary
