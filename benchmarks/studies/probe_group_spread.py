"""How much signal GRPO-DT's groups carry for a saved policy: the within-group score spread, the share
of groups the ε_GRPO rule keeps, and how that changes with the group size G and L_traj.

A stalled run (benchmarks/results/grpo.md, "The L_traj 45 robustness study") ends with a within-group
score std of 2.5-5 and half its groups dropped by ε_GRPO. Before spending a study's CPU on a lever
(group size, L_traj, ε_GRPO), this measures what the lever would change in the groups themselves, on
the stalled policy, in a minute of one core:

    python benchmarks/studies/probe_group_spread.py RUN [RUN ...] --group-sizes 4 8 16 32 \
        --sub-trajectory-lengths 15 45 --out benchmarks/results/group_spread.csv

For each run's final policy (``RUN/policy``, or ``--policy best_policy``), with the run's own config
(L_eval, γ, T_eval, g_online, active sampling): ``--episodes`` full episodes are collected as in line 2 of
Algorithm 1, ``--reset-points`` reset points drawn in each as in lines 4-5, and from each a group of
max(G) sub-trajectories rolled out (line 6). A group of size G is the first G members of that group
(the members are i.i.d. given the reset point), so every G is measured on the same reset points.
Reported per (run, L_traj, G): mean group score, mean within-group std, the share of groups kept at
each ``--epsilons`` value, and the share of groups whose members fall at different steps (the spread
that comes from surviving longer rather than from rewards along the way).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from dtrl import objectives
from dtrl.algos.dt_finetune import online_targets, prepare_policy, segment_history_length
from dtrl.algos.grpo import GRPOConfig, branch_starts, rollout_groups, with_current_variance
from dtrl.envs import BatchedEnv
from dtrl.rollout import rollout_episodes
from dtrl.tasks import get_task

COLUMNS = ["run", "policy", "final_normalized", "sub_trajectory_length", "group_size", "groups", "mean_score",
           "mean_std_within_group", "median_std_within_group", "share_falling_at_different_steps",
           "episode_length_mean"]


def run_config(run: Path, policy: str) -> GRPOConfig:
    """The run's GRPO config, finetuning from its saved policy instead of the pretrained DT."""
    saved = json.loads((run / "config.json").read_text())
    fields = {field.name for field in dataclasses.fields(GRPOConfig)}
    config = GRPOConfig(**{key: value for key, value in saved.items() if key in fields})
    return dataclasses.replace(config, init=str(run / policy), init_temperature=None, threads=1)


def probe(run: Path, policy_name: str, lengths: list[int], group_sizes: list[int], episodes: int,
          reset_points: int, epsilons: list[float], seed: int) -> list[dict]:
    config = run_config(run, policy_name)
    task = get_task(config.task)
    policy = prepare_policy(config, task, "cpu")
    online_rtg, _ = online_targets(config, task)
    gamma = task.gamma if config.gamma is None else config.gamma
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the episodes' sampled actions: the same seed probes the same reset points
    with BatchedEnv(task, episodes, seed=seed) as collect:
        trajectories = rollout_episodes(policy, collect, task, online_rtg, [seed + i for i in range(episodes)],
                                        mode="sample", record_snapshots=True, context_length=config.context_length)
    episode_length = float(np.mean([len(t) for t in trajectories]))
    if config.active_sampling_variance == "current" and config.reset_sampling == "active":
        trajectories = with_current_variance(policy, trajectories, config.context_length, "cpu")
    largest = max(group_sizes)
    probe_config = dataclasses.replace(config, group_size=largest, reset_points_per_trajectory=reset_points)
    starts = branch_starts(trajectories, probe_config, segment_history_length(policy.model, config.context_length),
                           rng)
    final = json.loads((run / "final.json").read_text()).get("eval_normalized_mean", "")
    rows = []
    for length in lengths:
        torch.manual_seed(seed)
        with BatchedEnv(task, min(len(starts), 8 * largest), seed=seed) as branch_envs:
            _, scores, rewards, _ = rollout_groups(policy, branch_envs, starts,
                                                   dataclasses.replace(probe_config, sub_trajectory_length=length),
                                                   gamma, "cpu")
        scores = scores.reshape(-1, largest)
        fall_steps = np.array([len(r) for r in rewards]).reshape(-1, largest)
        for size in group_sizes:
            group, falls = scores[:, :size], fall_steps[:, :size]
            std = group.std(axis=1, ddof=1)
            row = {"run": str(run), "policy": policy_name, "final_normalized": final, "sub_trajectory_length": length,
                   "group_size": size, "groups": len(group), "mean_score": float(group.mean()),
                   "mean_std_within_group": float(std.mean()), "median_std_within_group": float(np.median(std)),
                   "share_falling_at_different_steps": float((falls.min(axis=1) != falls.max(axis=1)).mean()),
                   "episode_length_mean": episode_length}
            # the groups the trainer's ε_GRPO rule keeps (config.deviation_rule), at each ε
            row.update({f"kept_at_eps_{eps:g}": float(objectives.group_advantages(
                torch.as_tensor(group), min_deviation=eps, deviation_rule=config.deviation_rule).valid.numpy().mean())
                for eps in epsilons})
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished GRPO-DT run directories")
    parser.add_argument("--policy", default="policy", help="which saved policy of the run (policy, best_policy)")
    parser.add_argument("--sub-trajectory-lengths", type=int, nargs="+", default=[15, 45])
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--episodes", type=int, default=4, help="full episodes to draw reset points from")
    parser.add_argument("--reset-points", type=int, default=4, help="reset points per episode")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--out", type=Path, required=True, help="CSV of every (run, L_traj, G) (rows of runs "
                        "already in it are kept and not probed again)")
    args = parser.parse_args()
    if min(args.group_sizes) < 2:
        parser.error("--group-sizes must be >= 2 (a group needs a baseline)")
    missing = [str(run) for run in args.runs if not (run / "final.json").is_file()]
    if missing:
        parser.error(f"not finished runs (no final.json): {', '.join(missing)}")
    columns = COLUMNS + [f"kept_at_eps_{eps:g}" for eps in args.epsilons]
    rows = list(csv.DictReader(args.out.open())) if args.out.is_file() else []
    done = {(row["run"], row["policy"]) for row in rows}
    for run in args.runs:
        if (str(run), args.policy) in done:
            continue
        rows.extend(probe(run, args.policy, args.sub_trajectory_lengths, args.group_sizes, args.episodes,
                          args.reset_points, args.epsilons, args.seed))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as handle:  # after every run: a stopped probe loses nothing
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    kept = columns[len(COLUMNS):]
    print("| run | final | L_traj | G | mean score | std within group (mean / median) | falls differ | "
          + " | ".join(k.replace("kept_at_eps_", "kept ε ") for k in kept) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(kept))
    for row in rows:
        print(f"| {Path(row['run']).name} | {float(row['final_normalized']):.1f} | {row['sub_trajectory_length']} "
              f"| {row['group_size']} "
              f"| {float(row['mean_score']):.1f} | {float(row['mean_std_within_group']):.1f} / "
              f"{float(row['median_std_within_group']):.1f} | {float(row['share_falling_at_different_steps']):.2f} | "
              + " | ".join(f"{float(row[k]):.2f}" for k in kept) + " |")


if __name__ == "__main__":
    main()
