"""Run directories: the one place a training command writes to, built so a crash loses little and
a resumed run continues exactly where the checkpoint left it.

Layout (``dtrl report`` reads only ``config.json`` and ``metrics.jsonl``)::

    RUN/
      config.json            resolved config + run_info (seed, versions, device, host, start time)
      metrics.jsonl          one JSON object per line: iteration, env_steps, grad_updates, wall_time_s, ...
      events.out.tfevents.*  the same numbers as TensorBoard scalars (tag = metric name)
      checkpoints/state.pt   the latest training state (torch.save; replaced atomically)
      policy/                the latest policy in the dtrl.models.checkpoint format
      final.json             written once the run finished (summary); its presence = finished

Typical use inside an algorithm loop::

    run = RunDir.open(cfg.out, to_dict(cfg), resume=cfg.resume, force=cfg.force)
    ... build models, optimisers, generators ...
    state = run.load_state()                    # None for a fresh run; restores global RNGs
    start = 0 if state is None else state["iteration"] + 1
    for iteration in range(start, cfg.iterations):
        ...
        run.log({"iteration": iteration, "env_steps": ..., "grad_updates": ..., "wall_time_s": run.wall_time_s()})
        if (iteration + 1) % cfg.checkpoint_every == 0:
            run.save_state({"iteration": iteration, "model": model.state_dict(), ...}, iteration)
    run.mark_finished({"eval_normalized_mean": ...})

Crash safety: every metrics line is fsynced; checkpoints and JSON files are written to a temp file
in the same directory then ``os.replace``d, so ``kill -9`` at any moment leaves either the old or
the new file, never a torn one. On resume, metrics lines past the checkpointed iteration are
dropped (they will be produced again) and TensorBoard purges the same steps.

Modules (every public name is importable from ``dtrl.runs`` itself): ``rundir`` (``RunDir``),
``layout`` (file names, atomic JSON, reading runs back), ``rng`` (seeding, RNG state),
``checkpoints`` (the NaN/Inf check, reading ``state.pt``), ``resume`` (what a resume checks and
rewrites), ``locks`` (one writer per run directory), ``tracking`` (Weights & Biases).
"""

import os  # noqa: F401  (``runs.os``: tests patch ``os.replace`` through it)

from dtrl.runs.layout import (
    BEST_POLICY_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    FINAL_FILE,
    LOCK_FILE,
    METRICS_FILE,
    POLICY_DIR,
    STATE_FILE,
    atomic_write_json,
    has_checkpoint,
    is_finished,
    iter_run_dirs,
    read_config,
    read_metrics,
)
from dtrl.runs.locks import remove_run_dir
from dtrl.runs.resume import changed_settings
from dtrl.runs.rng import capture_rng_state, restore_rng_state, seed_everything
from dtrl.runs.rundir import RunDir

__all__ = [
    "BEST_POLICY_DIR",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "FINAL_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "POLICY_DIR",
    "STATE_FILE",
    "RunDir",
    "atomic_write_json",
    "capture_rng_state",
    "changed_settings",
    "has_checkpoint",
    "is_finished",
    "iter_run_dirs",
    "read_config",
    "read_metrics",
    "remove_run_dir",
    "restore_rng_state",
    "seed_everything",
]
