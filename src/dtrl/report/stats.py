"""Numbers over runs: per-run scores (start, final, best, late), intervals over seeds (Student-t; rliable's
stratified bootstrap), what each column spent, and ablations paired seed by seed with a reference."""

from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np

from dtrl.config import key_values, value_matches
from dtrl.errors import DtrlError
from dtrl.report.load import (
    OFFLINE_ALGOS,
    GroupResult,
    RunResult,
    flatten_config,
    relative_path,
    training_means,
    with_added_options,
)


def score_points(run: RunResult) -> list[tuple[int, float]]:
    """(iteration, score) of each of a run's evaluations with a finite score."""
    key = "eval_normalized_mean" if run.metric == "normalized" else "eval_return_mean"
    return [(row["iteration"], row[key]) for row in run.metrics
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]


def best_so_far(run: RunResult) -> float | None:
    values = [value for _, value in score_points(run)]
    return max(values) if values else None


def start_score(run: RunResult) -> float | None:
    """The iteration-0 evaluation of a finetuning run: the policy it starts from (the pretrained DT,
    IQL after its offline phase, a fresh SB3 policy), evaluated as its later iterations are. None
    for offline pretraining runs, whose iteration 0 is an untrained model, and runs without one."""
    if run.algo in (*OFFLINE_ALGOS, "pretrain"):  # load_run's labels of pretraining runs
        return None
    points = score_points(run)
    return points[0][1] if points and points[0][0] == 0 else None


def late_mean(run: RunResult) -> float | None:
    """Mean of a run's evaluations over the last quarter of its iterations: a run's end state measured
    with more episodes than its final evaluation alone."""
    points = score_points(run)
    if not points:
        return None
    last = points[-1][0]
    return float(np.mean([value for iteration, value in points if iteration >= 0.75 * last]))


def t_interval(values: np.ndarray) -> tuple[float, float, float] | None:
    """Mean and 95% Student-t interval of the mean; None below 2 values or without scipy (the
    ``report`` extra). With a handful of pairs a bootstrap interval would be just [min, max]."""
    try:
        from scipy import stats
    except ImportError:
        return None
    if len(values) < 2:
        return None
    mean = float(values.mean())
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def bootstrap_estimates(values, reps: int, seed: int = 0) -> dict[str, float]:
    """IQM and mean of one score per seed, each with its 95% stratified-bootstrap CI (rliable):
    keys iqm, iqm_lo, iqm_hi, mean, mean_lo, mean_hi. Seeded, so a table regenerates. Raises
    ImportError without rliable."""
    from rliable import library as rly
    from rliable import metrics as rly_metrics

    def aggregate(x: np.ndarray) -> np.ndarray:
        return np.array([rly_metrics.aggregate_iqm(x), rly_metrics.aggregate_mean(x)])

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    point, interval = rly.get_interval_estimates({"x": np.asarray(values, float)[:, None]}, aggregate, reps=reps)
    (iqm, mean), ((iqm_lo, mean_lo), (iqm_hi, mean_hi)) = point["x"], interval["x"]
    return {"iqm": float(iqm), "iqm_lo": float(iqm_lo), "iqm_hi": float(iqm_hi),
            "mean": float(mean), "mean_lo": float(mean_lo), "mean_hi": float(mean_hi)}


def interval_estimates(groups: dict[tuple[str, str], GroupResult], reps: int, seed: int = 0) -> list[dict] | None:
    """IQM and mean of the final and best-so-far scores per (task, algorithm) with 95%
    stratified-bootstrap CIs over seeds (rliable); None when rliable is not installed."""
    try:
        import rliable  # noqa: F401
    except ImportError:
        return None

    rows = []
    for (task, label), group in sorted(groups.items()):
        finals = [r.final for r in group.runs if r.final is not None]
        bests = [best_so_far(r) for r in group.runs if r.final is not None]
        if not finals:
            continue
        row = {"task": task, "algorithm": label, "metric": group.metric, "n_seeds": len(finals)}
        for name, values in (("final", finals), ("best", bests)):
            row.update({f"{name}_{key}": value for key, value in bootstrap_estimates(values, reps, seed).items()})
        rows.append(row)
    return rows


def across_tasks_rows(groups: dict[tuple[str, str], GroupResult], reps: int, seed: int = 0) -> list[dict]:
    """Each column's final scores over all the report's normalised-score tasks at once, the aggregates
    Agarwal et al. (2021) recommend beside per-task means: rliable's IQM and mean with 95% stratified-
    bootstrap intervals (runs resampled within each task), and the probability that a GRPO-DT run beats
    this column's run on a task drawn at random (rliable's probability of improvement, with its interval).
    A column counts only with the same number (>= 2) of finished runs on every task, else its row says
    why not; [] below two such tasks or columns, or without rliable."""
    try:
        from rliable import library as rly
        from rliable import metrics as rly_metrics
    except ImportError:
        return []
    tasks = sorted({g.task for g in groups.values() if g.metric == "normalized" and g.scores})
    labels = sorted({label for (task, label) in groups if task in tasks})
    matrices: dict[str, np.ndarray] = {}
    rows = []
    for label in labels:
        counts = [len(groups[(task, label)].scores) if (task, label) in groups else 0 for task in tasks]
        if min(counts) >= 2 and len(set(counts)) == 1:
            # [runs, tasks]: the order of runs within a task does not matter to a stratified bootstrap
            matrices[label] = np.array([groups[(task, label)].scores for task in tasks], float).T
        else:
            rows.append({"algorithm": label, "tasks": len(tasks), "runs_per_task": " ".join(map(str, counts))})
    if len(tasks) < 2 or len(matrices) < 2:
        return []

    def aggregate(x: np.ndarray) -> np.ndarray:
        return np.array([rly_metrics.aggregate_iqm(x), rly_metrics.aggregate_mean(x)])

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    point, interval = rly.get_interval_estimates(matrices, aggregate, reps=reps)
    grpo = matrices.get("GRPO-DT")
    pairs = {label: [grpo, m] for label, m in matrices.items() if grpo is not None and label != "GRPO-DT"}
    if pairs:
        np.random.seed(seed)
        p_point, p_interval = rly.get_interval_estimates(pairs, rly_metrics.probability_of_improvement, reps=reps)
    counted = []
    for label, matrix in matrices.items():
        (iqm, mean), ((iqm_lo, mean_lo), (iqm_hi, mean_hi)) = point[label], interval[label]
        row = {"algorithm": label, "tasks": len(tasks), "runs_per_task": str(len(matrix)),
               "iqm": float(iqm), "iqm_lo": float(iqm_lo), "iqm_hi": float(iqm_hi),
               "mean": float(mean), "mean_lo": float(mean_lo), "mean_hi": float(mean_hi),
               "p_grpo_better": None, "p_grpo_better_lo": None, "p_grpo_better_hi": None}
        if label in pairs:
            row.update(p_grpo_better=float(np.squeeze(p_point[label])),
                       p_grpo_better_lo=float(np.squeeze(p_interval[label])[0]),
                       p_grpo_better_hi=float(np.squeeze(p_interval[label])[1]))
        counted.append(row)
    counted.sort(key=lambda r: -r["iqm"])
    return counted + rows


# The reading rule of Table 1 on the medium tasks (benchmarks/results/table1-cpu.md, written before their
# runs): Kendall's tau >= 0.6 (at most 3 of 15 pairs of six columns swapped) is agreement, above 0 in part.
TAU_AGREES = 0.6


def grpo_verdict(ranked: list[GroupResult], intervals: dict[tuple[str, str], tuple[float, float]]) -> str | None:
    """Whether GRPO-DT wins a task by the reading rule: *wins* if it has the highest mean of every column
    and its 95% interval lies above both the runner-up's and PPO-DT's; *ahead, not apart* if it has the
    highest mean but cannot be separated from one of them (or no intervals are known); *does not win*
    otherwise. None without a GRPO-DT column. ``ranked``: the task's columns, best mean first."""
    if not any(g.label == "GRPO-DT" for g in ranked):
        return None
    if ranked[0].label != "GRPO-DT":
        return "does not win"
    task = ranked[0].task
    lo = intervals.get((task, "GRPO-DT"), (None, None))[0]
    rivals = {ranked[1].label} | ({"PPO-DT"} if any(g.label == "PPO-DT" for g in ranked) else set())
    highs = [intervals.get((task, label), (None, None))[1] for label in rivals]
    apart = lo is not None and all(high is not None and lo > high for high in highs)
    return "wins" if apart else "ahead, not apart"


def tau_verdict(tau: float | None) -> str | None:
    """The reading rule's word for a Kendall's tau between our order and the paper's."""
    if tau is None:
        return None
    # tau is a ratio of pair counts (9 / 15 = 0.6 exactly), computed in floating point: compare with a margin
    return "agrees" if tau >= TAU_AGREES - 1e-9 else "in part" if tau > 1e-9 else "does not agree"


def ranking_rows(groups: dict[tuple[str, str], GroupResult], statistics: list[dict] | None,
                 paper: dict[str, dict[str, float]]) -> list[dict]:
    """Per task with two or more columns: who wins (highest mean final score over seeds), the runner-up,
    and whether their 95% intervals (rliable's, from ``statistics``) are apart, and whether GRPO-DT wins
    (``grpo_verdict``); then the ranking of the columns the paper's Table 1 also has (``paper``: {task:
    {label: paper mean}}): its best against ours, Kendall's tau between the two orders (scipy; None below
    3 columns) with the rule's word for it where every column of the paper's row is here, and GRPO-DT's
    rank in each (1 = best). The question a reader of a comparison asks first: does the paper's ranking
    hold here."""
    # one seed's "interval" is a point: it separates nothing
    intervals = {(row["task"], row["algorithm"]): (row["final_mean_lo"], row["final_mean_hi"])
                 for row in statistics or [] if row["n_seeds"] >= 2}
    by_task: dict[str, list[GroupResult]] = defaultdict(list)
    for group in groups.values():
        if group.scores:
            by_task[group.task].append(group)
    rows = []
    for task, task_groups in sorted(by_task.items()):
        if len(task_groups) < 2:
            continue
        ranked = sorted(task_groups, key=lambda g: (-g.mean, g.label))
        first, second = ranked[0], ranked[1]
        lo1, hi1 = intervals.get((task, first.label), (None, None))
        lo2, hi2 = intervals.get((task, second.label), (None, None))
        paper_means = paper.get(task, {}) if first.metric == "normalized" else {}
        shared = [g for g in ranked if g.label in paper_means]
        paper_order = sorted(shared, key=lambda g: (-paper_means[g.label], g.label))
        row = {"task": task, "columns": len(ranked),
               "winner": first.label, "winner_mean": first.mean, "winner_lo": lo1, "winner_hi": hi1,
               "runner_up": second.label, "runner_up_mean": second.mean, "runner_up_lo": lo2, "runner_up_hi": hi2,
               "apart": None if lo1 is None or hi2 is None else bool(lo1 > hi2),
               "shared": len(shared),
               "ours_best_shared": shared[0].label if shared else None,
               "paper_best": paper_order[0].label if paper_order else None,
               "paper_best_mean": paper_means[paper_order[0].label] if paper_order else None,
               "kendall_tau": _kendall_tau([g.mean for g in shared], [paper_means[g.label] for g in shared]),
               "grpo_rank_ours": None, "grpo_rank_paper": None}
        row["same_best"] = None if not shared else row["ours_best_shared"] == row["paper_best"]
        row["grpo_verdict"] = grpo_verdict(ranked, intervals)
        # the rule's thresholds are for the paper's whole row (six columns): fewer say less
        row["tau_verdict"] = tau_verdict(row["kendall_tau"]) if len(shared) == len(paper_means) else None
        for order, key in ((shared, "grpo_rank_ours"), (paper_order, "grpo_rank_paper")):
            row[key] = next((i + 1 for i, g in enumerate(order) if g.label == "GRPO-DT"), None)
        rows.append(row)
    return rows


def _kendall_tau(ours: list[float], paper: list[float]) -> float | None:
    """Kendall's tau-b of two orders of the same columns; None below 3 columns or without scipy."""
    if len(ours) < 3:
        return None
    try:
        from scipy.stats import kendalltau
    except ImportError:
        return None
    tau = kendalltau(ours, paper).statistic
    return None if math.isnan(tau) else float(tau)


def improvement_rows(groups: dict[tuple[str, str], GroupResult]) -> list[dict]:
    """Per (task, column): final − start of each run that has both, its mean with a 95% Student-t
    interval over runs, and how many runs ended above where they started."""
    rows = []
    for (task, label), group in sorted(groups.items()):
        pairs = [(start, run.final) for run in group.runs
                 if run.final is not None and (start := start_score(run)) is not None]
        if not pairs:
            continue
        starts, finals = (np.array(values, float) for values in zip(*pairs))
        gains = finals - starts
        interval = t_interval(gains)
        rows.append({"task": task, "algorithm": label, "runs": len(pairs), "start_mean": float(starts.mean()),
                     "final_mean": float(finals.mean()), "gain_mean": float(gains.mean()),
                     "gain_lo": interval[1] if interval else None, "gain_hi": interval[2] if interval else None,
                     "improved": int((gains > 0).sum())})
    return rows


_COUNTERS = ("iteration", "env_steps", "grad_updates", "wall_time_s")


def _counts(run: RunResult) -> tuple[dict, dict] | None:
    """The counters (iteration, env steps, gradient updates, wall time) at the run's last evaluation and at
    its iteration 0 (what came before the loop, e.g. IQL's offline updates; zeros without such a row).
    Evaluation rows only, the rows evaluations.csv keeps, so a report rebuilt from it says the same."""
    rows = [row for row in run.metrics
            if isinstance(row.get("env_steps"), (int, float)) and row.get("eval_return_mean") is not None]
    if not rows:
        return None
    last = max(rows, key=lambda row: row["iteration"])
    first = next((row for row in rows if row["iteration"] == 0), {})
    return ({key: float(last.get(key) or 0) for key in _COUNTERS},
            {key: float(first.get(key) or 0) for key in _COUNTERS})


def compute_rows(groups: dict[tuple[str, str], GroupResult]) -> list[dict]:
    """Per (task, column): what its runs spent, as means over runs. The methods spend a budget of
    iterations very differently (samples, updates, time), which a score per iteration hides. The
    per-iteration rates leave out what came before iteration 1 (IQL's offline phase)."""
    rows = []
    for (task, label), group in sorted(groups.items()):
        # finished runs only: an unfinished run's spend so far is not what its method spends
        counts = [c for run in group.runs if run.finished and (c := _counts(run)) is not None and c[0]["iteration"] > 0]
        if not counts:
            continue
        mean = {key: float(np.mean([last[key] for last, _ in counts])) for key in _COUNTERS}
        rate = {key: float(np.mean([(last[key] - first[key]) / (last["iteration"] - first["iteration"])
                                    for last, first in counts])) for key in ("env_steps", "grad_updates")}
        minutes = [last["wall_time_s"] / 60 for last, _ in counts]
        rows.append({"task": task, "algorithm": label, "runs": len(counts), "iterations": mean["iteration"],
                     "env_steps": mean["env_steps"], "grad_updates": mean["grad_updates"],
                     "env_steps_per_iteration": rate["env_steps"],
                     "grad_updates_per_iteration": rate["grad_updates"],
                     "wall_minutes_mean": float(np.mean(minutes)), "wall_minutes_min": min(minutes),
                     "wall_minutes_max": max(minutes)})
    return rows


def at_time_rows(groups: dict[tuple[str, str], GroupResult], minutes: float) -> list[dict]:
    """Per (task, column): the score of each run's last evaluation at or before ``minutes`` of its
    wall-clock time, with the iterations and env steps it had reached. Runs evaluated by then only, and
    finished runs or runs that got that far (an unfinished run short of it says nothing of that time).
    Pretraining columns (DT) are left out: their clock is pretraining's, not a finetuning budget's, and
    the DT a finetuning run starts from is the finished one, whatever its pretraining took."""
    key = {"normalized": "eval_normalized_mean", "raw": "eval_return_mean"}
    rows = []
    for (task, label), group in sorted(groups.items()):
        if group.algo in OFFLINE_ALGOS:
            continue
        reached = []
        for run in group.runs:
            times = [row["wall_time_s"] for row in run.metrics if isinstance(row.get("wall_time_s"), (int, float))]
            if not run.finished and max(times, default=0.0) < 60 * minutes:
                continue
            by_then = [row for row in run.metrics if isinstance(row.get("wall_time_s"), (int, float))
                       and row["wall_time_s"] <= 60 * minutes and isinstance(row.get(key[run.metric]), (int, float))
                       and math.isfinite(row[key[run.metric]])]
            if by_then:
                last = max(by_then, key=lambda row: row["iteration"])
                reached.append((float(last[key[run.metric]]), last["iteration"], last.get("env_steps") or 0,
                                run.final))
        if not reached:
            continue
        scores, iterations, env_steps, finals = zip(*reached)
        rows.append({"task": task, "algorithm": label, "runs": len(reached), "minutes": minutes,
                     "score_mean": float(np.mean(scores)), "score_std": float(np.std(scores)),
                     "iterations": float(np.mean(iterations)), "env_steps": float(np.mean(env_steps)),
                     "final_mean": float(np.mean([f for f in finals if f is not None]))})
    return rows


def _last_finite(run: RunResult, key: str) -> tuple[float | None, object]:
    """The last finite value of ``key`` among a run's evaluations, with that row."""
    for row in reversed(run.metrics):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value), row
    return None, None


def other_rtg_rows(groups: dict[tuple[str, str], GroupResult]) -> list[dict]:
    """Per (task, column) evaluated at a second target RTG (``--eval-other-rtg``): the final score at
    the method's own RTG and at the other, over the runs that have both. The methods default to
    different RTGs (g_online or the task's eval RTG), so a comparison at one RTG needs the other too."""
    rows = []
    for (task, label), group in sorted(groups.items()):
        kind = "normalized" if group.metric == "normalized" else "return"
        own, other, rtgs = [], [], set()
        for run in group.runs:
            value, row = _last_finite(run, f"eval_other_{kind}_mean")
            if value is None or run.final is None:
                continue
            own.append(run.final)
            other.append(value)
            rtgs.add((row.get("eval_target_rtg"), row.get("eval_other_target_rtg")))
        if not own:
            continue
        (own_rtg, other_rtg), = rtgs if len(rtgs) == 1 else {(None, None)}
        rows.append({"task": task, "algorithm": label, "runs": len(own), "own_rtg": own_rtg,
                     "own_mean": float(np.mean(own)), "own_std": float(np.std(own)), "other_rtg": other_rtg,
                     "other_mean": float(np.mean(other)), "other_std": float(np.std(other))})
    return rows


def training_curve(run: RunResult, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iteration, mean of ``key`` since the previous evaluation) at each of the run's evaluations."""
    evaluations = [m for m in run.metrics if m.get("eval_return_mean") is not None]
    points = [(float(row["iteration"]), means[key]) for row, means in zip(evaluations, training_means(run, (key,)))
              if means[key] is not None]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def training_rows(groups: dict[tuple[str, str], GroupResult], keys: tuple[str, ...]) -> list[dict]:
    """Per (task, column, key): the first and the last between-evaluation mean of each run, averaged over runs."""
    rows = []
    for (task, label), group in sorted(groups.items()):
        for key in keys:
            curves = [y for _, y in (training_curve(run, key) for run in group.runs) if len(y)]
            if curves:
                rows.append({"task": task, "algorithm": label, "metric": key, "runs": len(curves),
                             "first_mean": float(np.mean([y[0] for y in curves])),
                             "last_mean": float(np.mean([y[-1] for y in curves]))})
    return rows


def parse_reference(items: tuple[str, ...]) -> dict[str, str]:
    """``("learning_rate=0.001", ...)`` -> {"learning_rate": "0.001", ...}."""
    found = key_values(items, "--reference", "a config key as in config.json")
    return {key: values[-1] for key, values in found.items()}


def reference_group(groups: list[GroupResult], reference: dict[str, str]) -> GroupResult | None:
    """The one column of a (task, algorithm) whose runs all have the reference values (a key a run's
    config lacks is today's preset default where the option was added after the run, else None); None if
    no column has them."""
    found = [g for g in groups if g.runs and all(
        value_matches(with_added_options(run, flatten_config(run.config), reference).get(key), text)
        for run in g.runs for key, text in reference.items())]
    if len(found) > 1:
        raise DtrlError(f"--reference {' '.join(f'{k}={v}' for k, v in reference.items())} matches "
                        f"{len(found)} columns of {found[0].task} ({', '.join(g.label for g in found)}): "
                        "add KEY=VALUE for the hyperparameter that tells them apart")
    return found[0] if found else None


def _pair_key(run: RunResult) -> tuple[str, str]:
    init = run.config.get("init")
    return str(run.seed), os.path.normpath(str(init)) if init else ""


def same_starting_weights(run: RunResult, other: RunResult) -> bool:
    """False when both runs recorded the digest of the DT they started from and the digests differ."""
    digests = run.config.get("init_weights_sha256"), other.config.get("init_weights_sha256")
    return not all(digests) or digests[0] == digests[1]


def paired_runs(groups: dict[tuple[str, str], GroupResult], reference: dict[str, str]) -> tuple[list[dict], int]:
    """Every finished run of a variant with the reference's finished run of the same task, algorithm,
    seed and pretrained DT (``init``, and the digest of its weights where both runs recorded one): an
    ablation measured as differences within pairs, which cancels what the seed and the DT contribute to
    both. Returns (pairs, runs of variants left unpaired)."""
    by_algo: dict[tuple[str, str], list[GroupResult]] = defaultdict(list)
    for group in groups.values():
        by_algo[(group.task, group.algo)].append(group)
    rows, unpaired = [], 0
    for (task, _), algo_groups in sorted(by_algo.items()):
        ref = reference_group(algo_groups, reference)
        if ref is None:
            continue
        # reference runs by seed and DT path; one path may hold other weights on another machine, so a
        # key may have several reference runs, told apart by the digests of the DTs they started from
        ref_runs: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
        for run in ref.runs:
            if run.finished and run.final is not None:
                same = [other for other in ref_runs[_pair_key(run)] if same_starting_weights(run, other)]
                if same:
                    raise DtrlError(f"--reference: two runs of {ref.label} on {task} have seed {run.seed} and "
                                    f"init {_pair_key(run)[1] or 'none'} ({same[0].path}, {run.path})")
                ref_runs[_pair_key(run)].append(run)
        for group in sorted(algo_groups, key=lambda g: g.label):
            if group is ref:
                continue
            seen: set[tuple[str, str, str]] = set()
            for run in sorted(group.runs, key=_pair_key):
                candidates = ref_runs.get(_pair_key(run), [])
                base = next((other for other in candidates if same_starting_weights(run, other)), None)
                key = (*_pair_key(run), str(run.config.get("init_weights_sha256") or ""))
                if base is None or not run.finished or run.final is None or key in seen:
                    # unfinished, or no reference run (or a second run) of its seed and DT: same path and,
                    # where both recorded it, the same weights
                    unpaired += 1
                    continue
                seen.add(key)
                # what else tells the two runs apart (e.g. a variant run made with another lr): the pair
                # then measures more than the ablation's switch
                others = [f"{key}={run.variant.get(key)} (reference {base.variant.get(key)})"
                          for key in sorted(set(run.variant) | set(base.variant))
                          if key not in reference and run.variant.get(key) != base.variant.get(key)]
                rows.append({"task": task, "variant": group.label, "reference": ref.label, "seed": run.seed,
                             "init": run.config.get("init") or "", "reference_final": base.final,
                             "variant_final": run.final, "reference_late": late_mean(base),
                             "variant_late": late_mean(run), "reference_run": relative_path(base.path),
                             "variant_run": relative_path(run.path), "other_differences": "; ".join(others)})
    return rows, unpaired
