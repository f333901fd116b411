"""``dtrl report RUN_DIR... [--out DIR] [--x iterations|env_steps|wall_time_s ...]``: the paper's Table 1
and learning curves from run directories.

Reads only ``config.json`` and ``metrics.jsonl`` of each run (a folder given that is not itself a
run is searched for runs, so ``dtrl report runs/sweep`` works). Runs are grouped by (task,
algorithm); runs in one group that differ in a hyperparameter (say ``clip_eps``) or in what they
started from (``--init``, ``--dataset``: a Hugging Face DT and a dtrl pretrain are two columns; a sweep's
``seedN`` DTs are one) become separate columns labelled with it, so a column pools runs that differ in
the seed only; ``--label NAME=GLOB`` names a column. A run's final score is its last ``eval_normalized_mean`` (the D4RL
normalised return), or its last raw ``eval_return_mean`` for tasks without reference scores;
cells are mean ± std over seeds (population std, ddof=0), with the paper's Table 1 beside them.

Writes ``report.md`` (table + per-run list), ``report.csv`` (one row per group),
``evaluations.csv`` (every evaluation of every run with its iteration, env steps, gradient updates
and wall time: small enough to commit, and ``dtrl report --from-csv evaluations.csv`` rebuilds the
whole report from it without the run directories), ``curves_<task>.png`` (mean ± std band per
algorithm over seeds, on the ``--x`` axis) and, with the optional ``rliable`` extra
(``pip install dtrl[report]``), ``statistics.csv`` and a section of IQM and mean with 95%
stratified-bootstrap confidence intervals over seeds (Agarwal et al. 2021) of the final and the
best-so-far score, plus ``performance_profile_<task>.png``. Every finetuning run is also measured
against the policy it started from, its iteration-0 evaluation (``improvement.csv``). With ``--reference KEY=VALUE`` (an
ablation), each other variant is paired with the reference's run of the same seed and pretrained DT:
``paired.csv``, a section of mean paired differences and ``paired_curves_<task>.png``. With
``--choose final|late`` (a tuning grid), each (task, algorithm)'s columns are ranked by that score
and ``chosen.csv`` gives the command-line flags of the best. With ``--training-metrics KEY ...``
(``metrics.jsonl`` keys such as ``losses/actor_q``), each key's mean over the iterations between two
evaluations joins that evaluation's row of ``evaluations.csv`` (so ``--from-csv`` reads it back), with
``training_<task>.png`` (one panel per key, mean ± std over seeds) and a section of first and last values:
the losses that say why a run did or did not learn, kept where the run directories are not.
With two or more normalised-score tasks, ``across_tasks.csv`` and its section pool each column's runs
over the tasks (rliable's IQM, mean and probability of improvement of GRPO-DT over each column).
``report.tex`` is the final-score table for a paper (booktabs; mean with its 95% interval, the paper's
rows beside), and ``--figures png pdf`` writes every figure in each format asked for (PDF, SVG: vector).

The package, by concern: ``load`` (run directories and evaluations.csv files into runs and columns),
``stats`` (scores, intervals, pairs), ``tables`` (markdown, CSV and LaTeX, the tuning choice), ``plots``
(PNG, PDF, SVG), ``build`` (the command). The studies' own analyses live beside them: ``claims`` (the paper's claims and
their verdicts), ``budget`` (equal-compute budgets and the comparison's sweep specs), ``episodes``
(episode lengths by phase of a run); their command lines are in ``benchmarks/studies/``.
"""

from dtrl.report.build import ReportConfig, build_report, command_line, main
from dtrl.report.load import (
    ALGO_NAMES,
    EVALUATION_COLUMNS,
    GroupResult,
    RunResult,
    apply_labels,
    evaluation_rows,
    group_runs,
    label_variants,
    load_run,
    load_runs,
    runs_from_csv,
    select_runs,
    starting_point,
)
from dtrl.report.plots import _variant_text, draw_curves, mean_std_curve, plot_task
from dtrl.report.stats import (
    best_so_far,
    bootstrap_estimates,
    interval_estimates,
    late_mean,
    paired_runs,
    same_starting_weights,
    start_score,
    t_interval,
)
from dtrl.report.tables import choose_settings, markdown_table, paper_dataset_name, paper_table

__all__ = [
    "ALGO_NAMES", "EVALUATION_COLUMNS", "GroupResult", "ReportConfig", "RunResult", "_variant_text", "apply_labels",
    "best_so_far",
    "bootstrap_estimates", "build_report", "choose_settings", "command_line", "draw_curves", "evaluation_rows",
    "group_runs", "interval_estimates", "label_variants", "late_mean", "load_run", "load_runs", "main",
    "markdown_table", "mean_std_curve", "paired_runs", "paper_dataset_name", "paper_table", "plot_task",
    "runs_from_csv", "same_starting_weights", "select_runs", "start_score", "starting_point", "t_interval",
]
