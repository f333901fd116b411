"""Speed of GRPO-DT's group rollouts (Algorithm 1 line 6), the hot loop of every iteration.

Measures env-steps/s of ``dtrl.rollout.rollout_from_snapshots`` (restore G env copies per reset point,
L_traj sampled + L_eval mean-action steps, context ``--context-length``) and, in the same run, what it
is compared with:

    raw MuJoCo time = mujoco.mj_step for the same number of env steps x frame_skip, one core
    bound time      = raw MuJoCo time + policy time (the model calls alone, on the same batch sizes
                      as the rollout made them: the copies still running; random inputs, no env)

and reports achieved / bound and achieved / raw (the issue's target: >= 0.8 of single-core raw MuJoCo
with one env thread, >= 1.4x that with two). One torch thread unless --threads.

    python benchmarks/speed/bench_grpo_rollouts.py [--policy RUN_OR_POLICY_DIR] [--branches 64 256] [--workers 0 2]
        [--env-threads 1 2] [--context-length 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import numpy as np
import torch


def fresh_policy(task_name: str):
    """A cpu-preset-sized DT (as `dtrl pretrain --preset cpu` makes), freshly initialised."""
    from dtrl.algos.pretrain import cpu_preset as pretrain_cpu
    from dtrl.data import StateNormalizer
    from dtrl.envs import make
    from dtrl.models import build_model
    from dtrl.models.checkpoint import LoadedPolicy
    from dtrl.tasks import get_task

    task = get_task(task_name)
    env = make(task)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    model = build_model(pretrain_cpu(task.name).model, obs_dim, act_dim)
    fields = {f.name for f in dataclasses.fields(LoadedPolicy)}
    values = dict(model=model, normalizer=StateNormalizer.identity(obs_dim), reward_scale=task.reward_scale,
                  task_name=task.name, meta={})
    return LoadedPolicy(**{k: v for k, v in values.items() if k in fields})


def raw_mujoco_seconds(task, env_steps: int) -> float:
    """Time of ``env_steps`` x frame_skip bare mj_step calls on the task's model (no Python env)."""
    import mujoco

    from dtrl.envs import make

    env = make(task, seed=0)
    env.reset(seed=0)
    inner = env.unwrapped
    model, data = inner.model, inner.data
    frame_skip = int(getattr(inner, "frame_skip", 1))
    qpos0, qvel0 = data.qpos.copy(), data.qvel.copy()
    rng = np.random.default_rng(0)
    controls = rng.uniform(-1, 1, size=(256, model.nu))
    start = time.perf_counter()
    for i in range(env_steps):
        data.ctrl[:] = controls[i % 256]
        mujoco.mj_step(model, data, nstep=frame_skip)
        if i % 50 == 49:  # keep the state physical (a falling hopper gets more contacts, slower)
            data.qpos[:], data.qvel[:] = qpos0, qvel0
    seconds = time.perf_counter() - start
    env.close()
    return seconds


@torch.inference_mode()
def policy_seconds(policy, batches: list[int], prefill: int, obs_dim: int, context: int | None = None) -> float:
    """Time of the model calls alone, as the rollout makes them: call j on ``batches[j]`` rows (the
    copies still running), each an act + sample + log-prob + append_action on random states, after a
    prefill of ``prefill`` steps; with context 1 every step starts from a fresh cache, as the rollout
    does (the rows of ended copies leave a full-window cache)."""
    model = policy.model
    states = torch.randn(batches[0], obs_dim)
    rtg = torch.full((batches[0],), 3.0)
    cache = model.new_cache(batches[0], max_steps=context)
    start = time.perf_counter()
    for t in range(prefill):
        model.act(cache, rtg, states, torch.full((batches[0],), t, dtype=torch.long))
        model.append_action(cache, torch.zeros(batches[0], model.act_dim))
    for t, batch in enumerate(batches, start=prefill):
        if context == 1:
            cache = model.new_cache(batch, max_steps=1)
        elif batch < cache.batch_size:
            cache = cache.select_rows(torch.arange(batch))
        dist = model.act(cache, rtg[:batch], states[:batch], torch.full((batch,), t, dtype=torch.long))
        action = dist.sample()
        dist.log_prob(action)
        model.append_action(cache, action)
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="hopper-random")
    parser.add_argument("--policy", default=None, help="pretrained run / policy dir (default: fresh cpu-size DT)")
    parser.add_argument("--branches", type=int, nargs="+", default=[64, 256], help="sub-trajectories per call")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="env worker processes")
    parser.add_argument("--sub-trajectory-length", type=int, default=15)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--env-threads", type=int, nargs="+", default=[1, 2],
                        help="threads stepping the env copies (BatchedEnv num_threads; fast-path envs)")
    parser.add_argument("--context-length", type=int, default=1,
                        help="T_eval of the rollouts (the cpu preset's hopper value: 1); 0: the full window")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trajectory-mode", choices=["sample", "mean"], default="mean",
                        help="the trajectory reset points come from: a sampled episode (as GRPO) or the mean-action "
                             "one (longer for a weak policy, so branches run their full L_traj + L_eval steps)")
    return parser.parse_args()


def branch_setup(args: argparse.Namespace, task, policy, trajectory, branches: int, context: int | None):
    """(GRPO config, reset points) for ``branches`` sub-trajectories: groups of 8, reset points drawn as
    train() draws them (the cpu preset's variance is the current policy's)."""
    from dtrl.algos import grpo

    config = dataclasses.replace(grpo.cpu_preset(task.name), group_size=8,
                                 reset_points_per_trajectory=branches // 8, trajectories_per_batch=1,
                                 sub_trajectory_length=args.sub_trajectory_length, eval_steps=args.eval_steps,
                                 max_parallel_branches=branches)
    rng = np.random.default_rng(0)
    trajectories = [trajectory]
    if config.active_sampling_variance == "current":
        trajectories = grpo.with_current_variance(policy, trajectories, context, "cpu")
    return config, grpo.branch_starts(trajectories, config, policy.model.receptive_field, rng)


def best_rollout(task, policy, starts, config, context: int | None, workers: int, env_threads: int, repeats: int):
    """(seconds, result) of the fastest of ``repeats`` group rollouts, after one short warm-up."""
    from dtrl.envs import BatchedEnv
    from dtrl.rollout import rollout_from_snapshots

    with BatchedEnv(task, len(starts), num_workers=workers, num_threads=env_threads) as envs:
        rollout_from_snapshots(policy, envs, starts, 2, 0, task.gamma, context_length=context)  # warm-up
        best = None
        for _ in range(repeats):
            start = time.perf_counter()
            result = rollout_from_snapshots(policy, envs, starts, config.sub_trajectory_length,
                                            config.eval_steps, task.gamma, context_length=context)
            seconds = time.perf_counter() - start
            best = (seconds, result) if best is None or seconds < best[0] else best
    return best


def table_row(task, policy, trajectory, starts, context: int | None, workers: int, env_threads: int,
              seconds: float, result) -> str:
    """One row: the rollout against raw MuJoCo and against the bound (raw MuJoCo + the model calls alone)."""
    history = policy.model.receptive_field
    steps = result.env_steps
    batches = [int(np.sum(result.lengths > j)) for j in range(int(result.lengths.max()))]
    mj = raw_mujoco_seconds(task, steps)
    prefill = min(history if context is None else context - 1, int(starts[0].timestep))
    pol = policy_seconds(policy, batches, prefill, trajectory.observations.shape[1], context)
    bound = steps / (mj + pol)
    rate = steps / seconds
    return (f"| {len(starts)} | {workers} | {env_threads} | {steps} | {seconds:.2f} | {rate:,.0f} | {mj:.2f} | "
            f"{pol:.2f} | {bound:,.0f} | {rate / bound:.2f} | {rate / (steps / mj):.2f} |")


def main() -> None:
    from dtrl.envs import BatchedEnv
    from dtrl.models.loading import load_policy
    from dtrl.rollout import rollout_episodes
    from dtrl.tasks import get_task

    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    task = get_task(args.task)
    policy = load_policy(args.policy, task=task) if args.policy else fresh_policy(task.name)
    policy.model.eval()
    history = policy.model.receptive_field
    with BatchedEnv(task, 1) as envs:
        (trajectory,) = rollout_episodes(policy, envs, task, task.eval_rtg, [0], mode=args.trajectory_mode,
                                         record_snapshots=True)
    print(f"# {task.name}: {args.trajectory_mode} trajectory of {len(trajectory)} steps; "
          f"model receptive field {history} steps; "
          f"torch threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    context = args.context_length or None
    print(f"# context length {context or 'full window'}; `raw 1-thread`: achieved / the single-core bare mj_step rate")
    print("| branches | workers | env threads | env steps | rollout s | env-steps/s | raw mj_step s | policy s "
          "| bound env-steps/s | achieved / bound | achieved / raw 1-thread |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for branches in args.branches:
        config, starts = branch_setup(args, task, policy, trajectory, branches, context)
        for workers, env_threads in [(w, t) for w in args.workers for t in args.env_threads]:
            seconds, result = best_rollout(task, policy, starts, config, context, workers, env_threads, args.repeats)
            print(table_row(task, policy, trajectory, starts, context, workers, env_threads, seconds, result))

if __name__ == "__main__":
    main()
