"""``dtrl sweep SPEC [--local | --address ADDR] [--max-concurrent N] [--resume]``: a grid of
tasks x algorithms x seeds x hyperparameter overrides, one Ray Tune trial per cell.

Each trial runs an ordinary ``dtrl`` command (``python -m dtrl finetune --algo grpo ...``) as a
subprocess of the trial's Ray worker and writes an ordinary run directory::

    OUT_ROOT/<task>/<algo>/seed<k>[-<field>=<value>...]/     config.json, metrics.jsonl, checkpoints/ ...
    OUT_ROOT/<task>/<algo>/seed<k>[-...].log                 the command's stdout and stderr

A subprocess (not an in-process call) because each run then owns its global RNGs, torch threads,
CUDA context and memory, and a crashing run cannot take the Ray worker down with it; it is killed
with its worker. ``dtrl report OUT_ROOT`` turns the result into tables and curves.

Resumable: ``--resume`` skips trials whose run has ``final.json``, continues interrupted ones that
have a checkpoint (their command gets ``--resume``) and restarts those that never reached one.
``--done evaluations.csv`` also skips trials an earlier ``dtrl report`` recorded as finished, so a
study whose run directories stayed on another machine continues from its committed CSVs.
See docs/sweeps.md for the spec format and for running on a Ray cluster.

The package: ``spec`` reads, validates and expands a sweep file into trials; ``run`` selects,
checks and runs single trials; ``launch`` is the command (its options, Ray Tune, the summary).
Every name is re-exported here, so ``from dtrl.sweep import ...`` works as it did for one module.
"""

from dtrl.sweep.launch import INSTALL_HINT, SweepConfig, _print_summary, main, run_sweep
from dtrl.sweep.run import finished_in_reports, run_trial, select_trials, trial_status, validate_trials
from dtrl.sweep.spec import (
    STUDY_KEYS,
    TRIAL_COMMANDS,
    Resources,
    SweepSpec,
    Trial,
    expand_trials,
    load_spec,
    spec_from_dict,
)

__all__ = [
    "INSTALL_HINT",
    "STUDY_KEYS",
    "TRIAL_COMMANDS",
    "Resources",
    "SweepConfig",
    "SweepSpec",
    "Trial",
    "_print_summary",
    "expand_trials",
    "finished_in_reports",
    "load_spec",
    "main",
    "run_sweep",
    "run_trial",
    "select_trials",
    "spec_from_dict",
    "trial_status",
    "validate_trials",
]
