"""The report's figures: learning curves (``curves_<task>.png``, ``paired_curves_<task>.png``), training
metrics (``training_<task>.png``) and rliable's performance profiles. matplotlib is imported when drawing."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from dtrl.files import atomic_write_with
from dtrl.report.load import OFFLINE_ALGOS, GroupResult, RunResult, column_order, relative_path
from dtrl.report.stats import training_curve

X_KEYS = {"iterations": "iteration", "env_steps": "env_steps", "wall_time_s": "wall_time_s"}


X_LABELS = {"iterations": "iteration", "env_steps": "environment steps", "wall_time_s": "wall time (s)"}


def curve_points(run: RunResult, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, score) of every evaluation in a run, sorted by x."""
    y_key = "eval_normalized_mean" if run.metric == "normalized" else "eval_return_mean"
    points = [(row.get(x_key), row.get(y_key)) for row in run.metrics]
    points = [(float(x), float(y)) for x, y in points
              if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y)]
    points.sort()
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def mean_std_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds. Identical x grids are used as they are; otherwise every seed is
    linearly interpolated onto 100 points of the x range all seeds cover (no extrapolation)."""
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.array([]), np.array([]), np.array([])
    first_x = curves[0][0]
    if all(len(x) == len(first_x) and np.array_equal(x, first_x) for x, _ in curves):
        ys = np.stack([y for _, y in curves])
        return first_x, ys.mean(0), ys.std(0)
    lo = max(x[0] for x, _ in curves)
    hi = min(x[-1] for x, _ in curves)
    if hi <= lo:  # the seeds' ranges do not overlap: use the union, holding end values
        lo, hi = min(x[0] for x, _ in curves), max(x[-1] for x, _ in curves)
    grid = np.linspace(lo, hi, 100) if hi > lo else np.array([lo])
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(0), ys.std(0)


def _variant_text(group: GroupResult) -> str:
    """What sets a column apart within its algorithm (``lr=..., ...``), or its whole label."""
    variant = group.runs[0].variant if group.runs else {}
    start = [group.runs[0].start] if group.runs and group.runs[0].start else []
    return ", ".join([f"{key}={value}" for key, value in variant.items()] + start) or group.label


def draw_curves(axes, groups: list[GroupResult], x_names: tuple[str, ...], colors: dict[str, str],
                short_labels: bool = False) -> None:
    """Mean ± std over seeds of each column's learning curve on ``axes``, one per x axis in ``x_names``
    (``short_labels``: legend entries name only the hyperparameters that set a column apart)."""
    order = column_order({g.label for g in groups})
    offline_only = all(g.algo in OFFLINE_ALGOS for g in groups)
    for ax, x_name in zip(axes, x_names):
        x_key = X_KEYS[x_name]
        for group in sorted(groups, key=lambda g: order.index(g.label)):
            if group.algo in OFFLINE_ALGOS and not offline_only and group.scores:
                # a pretraining run's x axis (gradient steps) is not the finetuning runs' one: draw its
                # final score as a level. It is the DT as its pretraining evaluated it (full context); a
                # finetuning run's iteration 0 evaluates the same weights at its own context and RTG, so
                # the curves may start elsewhere (on walker2d-medium, far above this level at context 1)
                ax.axhline(group.mean, color="0.35", linestyle="--", linewidth=1.2,
                           label=f"{group.label} pretrained, final (n={len(group.scores)})")
                ax.axhspan(group.mean - group.std, group.mean + group.std, color="0.35", alpha=0.1)
                continue
            curves = [curve_points(r, x_key) for r in group.runs]
            x, mean, std = mean_std_curve(curves)
            if not len(x):
                continue
            n = sum(1 for run_x, _ in curves if len(run_x))
            name = _variant_text(group) if short_labels else group.label
            ax.plot(x, mean, color=colors[group.label], label=f"{name} (n={n})",
                    marker="o" if len(x) < 15 else None)
            ax.fill_between(x, mean - std, mean + std, color=colors[group.label], alpha=0.2, linewidth=0)
        ax.set_xlabel(X_LABELS[x_name])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("D4RL normalised return" if groups[0].metric == "normalized" else "return")
    if axes[0].lines:
        axes[0].legend(fontsize=8)


def _figure(rows: int, x_names: tuple[str, ...], labels: set[str]):
    """A figure of ``rows`` × len(x_names) panels sharing the y axis, and one colour per column label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, len(x_names), figsize=(6.4 * len(x_names), 4.2 * rows), sharey=True,
                             squeeze=False)
    return fig, axes, _figure_colors(labels)


def _figure_colors(labels: set[str]) -> dict[str, str]:
    """{label: colour}, in the report's column order."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(column_order(labels))}


def plot_task(task: str, groups: list[GroupResult], x_names: tuple[str, ...], out_file: Path,
              formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """``curves_<task>.png``: every column's learning curve, one panel per x axis. When an algorithm has
    several columns (a grid, an ablation), one row of panels per algorithm, so that a grid of 6 settings
    x 8 methods stays readable; the pretrained DT's level is drawn in every row."""
    by_algo: dict[str, list[GroupResult]] = defaultdict(list)
    for group in groups:
        by_algo[group.algo].append(group)
    offline = [g for g in groups if g.algo in OFFLINE_ALGOS]
    online = sorted(a for a in by_algo if a not in OFFLINE_ALGOS)
    if not any(len(by_algo[algo]) > 1 for algo in online):
        fig, axes, colors = _figure(1, x_names, {g.label for g in groups})
        draw_curves(axes[0], groups, x_names, colors)
        fig.suptitle(task)
        return save_figure(fig, out_file, formats)
    fig, axes, _ = _figure(len(online), x_names, {g.label for g in groups})
    for row, algo in zip(axes, online):
        row_groups = by_algo[algo] + offline
        colors = _figure_colors({g.label for g in row_groups})
        draw_curves(row, row_groups, x_names, colors, short_labels=True)
        row[0].set_title(f"{task}: {algo}", loc="left", fontsize=10)
    return save_figure(fig, out_file, formats)


def plot_paired_curves(pairs: list[dict], groups: dict[tuple[str, str], GroupResult], x_names: tuple[str, ...],
                       out: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """``paired_curves_<task>.png``: one row per variant, drawn beside the reference runs it is paired
    with only (the same seeds and pretrained DTs), not beside every reference run."""
    by_run = {(g.task, relative_path(r.path)): (g, r) for g in groups.values() for r in g.runs}
    rows: dict[str, dict[str, list[GroupResult]]] = defaultdict(dict)  # task -> variant -> [variant, reference]
    for task in sorted({p["task"] for p in pairs}):
        for variant in sorted({p["variant"] for p in pairs if p["task"] == task}):
            chosen = [p for p in pairs if p["task"] == task and p["variant"] == variant]
            row = []
            for side in ("variant_run", "reference_run"):
                group, _ = by_run[(task, chosen[0][side])]
                runs = [by_run[(task, p[side])][1] for p in chosen]
                row.append(GroupResult(task=task, label=group.label, algo=group.algo, metric=group.metric, runs=runs))
            rows[task][variant] = row
    files = []
    for task, variants in sorted(rows.items()):
        fig, axes, colors = _figure(len(variants), x_names, {g.label for row in variants.values() for g in row})
        for ax_row, row in zip(axes, variants.values()):
            draw_curves(ax_row, row, x_names, colors)
        fig.suptitle(f"{task}: paired runs (same seed and DT)")
        files += save_figure(fig, out / f"paired_curves_{task.replace('/', '_')}.png", formats)
    return files


def plot_training(task: str, groups: list[GroupResult], keys: tuple[str, ...], out_file: Path,
                  formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """``training_<task>.png``: one panel per key, each column's between-evaluation means over iterations;
    the paths written (none when no column recorded any of the keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _figure_colors({g.label for g in groups})
    order = column_order({g.label for g in groups})
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.2), squeeze=False)
    drawn = False
    for ax, key in zip(axes[0], keys):
        for group in sorted(groups, key=lambda g: order.index(g.label)):
            curves = [training_curve(run, key) for run in group.runs]
            x, mean, std = mean_std_curve(curves)
            if not len(x):
                continue
            drawn = True
            n = sum(1 for run_x, _ in curves if len(run_x))
            ax.plot(x, mean, color=colors[group.label], label=f"{group.label} (n={n})")
            ax.fill_between(x, mean - std, mean + std, color=colors[group.label], alpha=0.2, linewidth=0)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(X_LABELS["iterations"])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(task)
    if not drawn:
        plt.close(fig)
        return []
    return save_figure(fig, out_file, formats)


def plot_performance_profile(task: str, groups: list[GroupResult], out_file: Path, reps: int,
                             formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """rliable's score distribution (fraction of runs above each score, with CI bands) of the final
    scores; the paths written (none when rliable is missing or fewer than two seeds exist)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from rliable import library as rly
        from rliable import plot_utils
    except ImportError:
        return []
    scores = {g.label: np.asarray(g.scores, float)[:, None] for g in groups if len(g.scores) >= 2}
    if not scores:
        return []
    highest = max(float(v.max()) for v in scores.values())
    thresholds = np.linspace(0.0, max(highest, 1e-6) * 1.05, 81)
    np.random.seed(0)
    distributions, bands = rly.create_performance_profile(scores, thresholds, reps=reps)
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(distributions, thresholds, performance_profile_cis=bands,
                                         colors=dict(zip(scores, plt.cm.tab10.colors)), ax=ax,
                                         xlabel=r"final normalised return $\tau$" if groups[0].metric == "normalized"
                                         else r"final return $\tau$")
    ax.set_title(task)
    ax.legend(fontsize=8)
    return save_figure(fig, out_file, formats)


FIGURE_FORMATS = ("png", "pdf", "svg")
"""what ``--figures`` may ask for: PNG to look at, PDF and SVG (vector) to put in a paper"""


def save_figure(fig, out_file: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write ``fig`` atomically once per format (``out_file`` with that suffix), close it; the paths written.
    PDFs embed TrueType fonts (``pdf.fonttype`` 42): many venues refuse matplotlib's default Type 3."""
    import matplotlib
    import matplotlib.pyplot as plt

    fig.tight_layout()
    written = []
    try:
        for fmt in dict.fromkeys(formats):
            path = out_file.with_suffix(f".{fmt}")
            with matplotlib.rc_context({"pdf.fonttype": 42}):
                atomic_write_with(path, lambda temp, fmt=fmt: fig.savefig(temp, dpi=110, format=fmt))
            written.append(path)
    finally:
        plt.close(fig)
    return written
