"""The run loop every training command shares (the part of stable-baselines3's ``learn()`` or TRL's
``Trainer`` that is not the algorithm): open or resume the run directory, restore the checkpointed
components, log the starting policy's score, hand out the iterations, and at the end of each one
evaluate when due, write the metrics row, keep the best policy, checkpoint when due and stop at the
time limit; then finish the run and close what it opened. An algorithm's ``train()`` builds its
models, opens a :class:`RunLoop` and holds only its own iteration:

    with RunLoop(config, ALGO, rng, components, evaluate=evaluate_now, saved_policy=saved, init=policy) as loop:
        envs = loop.closing(BatchedEnv(...))
        for iteration in loop:
            ...                                  # the algorithm
            loop.end_iteration(metrics)
        return loop.finish()

Also here: the env reset seeds, the clock, the checkpoint dict of a loop, the schedules of
evaluation and checkpoints, and the in-run evaluation.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtrl.config import CommonConfig, to_dict
from dtrl.errors import DtrlError
from dtrl.evaluation import evaluate
from dtrl.runs import BEST_POLICY_DIR, RunDir

# Env reset seeds, so that evaluation never replays a training episode: evaluation episode i of a
# run with seed s uses EVAL_SEED_OFFSET + s + i (the same episodes at every evaluation, as
# ``dtrl eval --seed`` does); training episodes use TRAINING_SEED_STRIDE * (s + 1) + ..., far above.
EVAL_SEED_OFFSET = 10_000
TRAINING_SEED_STRIDE = 1_000_000


def episode_seeds(config: CommonConfig, iteration: int, count: int, round_: int = 0) -> list[int]:
    """Distinct env reset seeds for the ``count`` rollouts of ``iteration`` (reproducible per run seed).
    A loop that collects several rounds per iteration gets fresh seeds for each later round, drawn
    from ``numpy.random.SeedSequence`` of (run seed, iteration, round): no arithmetic collisions."""
    if round_ > 0:
        return [int(s) for s in np.random.SeedSequence([config.seed, iteration, round_]).generate_state(count)]
    base = TRAINING_SEED_STRIDE * (config.seed + 1) + count * iteration
    return [base + i for i in range(count)]


# ----------------------------------------------------------------------------------------------
# The clock and the checkpoint dict of a loop


@dataclass
class Clock:
    """Wall time, env steps and gradient updates so far; checkpointed, so all three continue across
    a resume (``wall_time_s`` counts only time spent running, not the gap before the resume)."""

    wall_time_s: float = 0.0
    env_steps: int = 0
    grad_updates: int = 0

    def __post_init__(self) -> None:
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self.wall_time_s + time.perf_counter() - self._started

    def state_dict(self) -> dict:
        return {"wall_time_s": self.elapsed(), "env_steps": self.env_steps, "grad_updates": self.grad_updates}

    def load_state_dict(self, state: dict) -> None:
        self.wall_time_s = float(state["wall_time_s"])
        self.env_steps = int(state["env_steps"])
        self.grad_updates = int(state["grad_updates"])
        self._started = time.perf_counter()


def open_run(config: Any, algo: str, init=None):
    """Create ``config.out`` (config.json with ``algo`` set) or, with ``--resume``, reopen it.

    Returns ``(run, state)``: ``state`` is the last checkpoint's dict (None for a fresh run); loading
    it restores the global RNGs, so call this after the models are built. ``init`` (the loaded
    pretrained policy) puts the digest of its weights in ``run_info.init_weights_sha256``: a path
    names a DT only on the machine that trained it, and ablations are paired by the DT they start from."""
    # RunDir.resume refuses another algorithm or task, and a finished run asked for nothing more,
    # before it writes anything
    run = RunDir.open(config.out, {**to_dict(config), "algo": algo}, resume=config.resume, force=config.force)
    if init is not None and init.meta.get("weights_sha256"):
        run.record_start_info(init_weights_sha256=init.meta["weights_sha256"])
    state = run.load_state() if config.resume else None
    return run, state


def training_state(algo: str, iteration: int, rng: np.random.Generator | None, clock: Clock, rng_key: str = "rng",
                   **components: Any) -> dict:
    """The checkpoint dict of a training loop: ``algo``, ``iteration``, each component's
    ``state_dict()`` under its keyword (None for a component that is None), the clock and the numpy
    generator's state (under ``rng_key``; none without a generator)."""
    state = {"algo": algo, "iteration": iteration,
             **{key: None if part is None else part.state_dict() for key, part in components.items()},
             "clock": clock.state_dict()}
    if rng is not None:
        state[rng_key] = rng.bit_generator.state
    return state


def restore_training_state(state: dict, rng: np.random.Generator | None, clock: Clock, rng_key: str = "rng",
                           **components: Any) -> int:
    """Load a :func:`training_state` dict back into the components (None ones skipped), the clock
    and the generator; returns the iteration to resume from."""
    for key, part in components.items():
        if part is not None:
            if state.get(key) is None:
                raise DtrlError(f"--resume: the checkpoint has no {key} (the run was started without it); "
                                "resume it with the settings it was started with")
            part.load_state_dict(state[key])
    clock.load_state_dict(state["clock"])
    if rng is not None:
        rng.bit_generator.state = state[rng_key]
    return int(state["iteration"]) + 1


# ----------------------------------------------------------------------------------------------
# Schedules and the metrics row


def evaluation_due(iteration: int, total_iterations: int, eval_every: int, stopping: bool = False) -> bool:
    """Evaluate every ``eval_every`` iterations (1-based) and always after the last one (the planned
    last, or the one a ``--time-limit-s`` stops at: ``stopping``)."""
    return stopping or iteration == total_iterations or (eval_every > 0 and iteration % eval_every == 0)


def checkpoint_due(iteration: int, total_iterations: int, checkpoint_every: int, stopping: bool = False) -> bool:
    return stopping or iteration == total_iterations or iteration % checkpoint_every == 0


def scheduled_learning_rate(config, iteration: int) -> float:
    """The learning rate during ``iteration`` (1-based) under the config's ``learning_rate_schedule``
    (its ``learning_rate`` and ``iterations``)."""
    if config.learning_rate_schedule == "constant":
        return config.learning_rate
    return config.learning_rate * (1.0 - (iteration - 1) / config.iterations)


def set_learning_rate(optimizer, learning_rate: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    return learning_rate


def iteration_metrics(iteration: int, clock: Clock, **metrics: Any) -> dict:
    """One metrics.jsonl row: the contract keys first, then the algorithm's own."""
    row: dict[str, Any] = {"iteration": iteration, "env_steps": clock.env_steps, "grad_updates": clock.grad_updates,
                           "wall_time_s": round(clock.elapsed(), 3)}
    for key, value in metrics.items():
        row[key] = float(value.detach().cpu()) if isinstance(value, torch.Tensor) else value
    return row


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average per-update metric dicts into one row (keys of the first row)."""
    if not rows:
        return {}
    return {key: float(np.mean([row[key] for row in rows if key in row])) for key in rows[0]}


def rollout_charts(rollouts) -> dict[str, float]:
    """The mean return and length of an iteration's collected episodes."""
    return {"charts/episodic_return": float(np.mean([r.episode_return for r in rollouts])),
            "charts/episode_length": float(np.mean([len(r) for r in rollouts]))}


class StageTimer:
    """Wall time of the stages of one iteration, as ``time/<stage>_s`` metrics:
    ``with timer("update"): ...``."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{stage}_s"
            self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - started


def evaluate_policy(policy, task, config: CommonConfig, device: str, target_rtg: float | None = None,
                    context_length: int | None = None) -> dict:
    """In-run evaluation with the mean action on fixed seeds disjoint from the training seeds
    (``target_rtg`` and ``context_length``: see ``dtrl.evaluation.evaluate``)."""
    return evaluate(policy, task, episodes=config.eval_episodes, target_rtg=target_rtg,
                    seed=EVAL_SEED_OFFSET + config.seed, device=device, context_length=context_length,
                    num_threads=config.env_threads)


# ----------------------------------------------------------------------------------------------
# The policy a checkpoint saves, and the best one so far


@dataclass
class SavedPolicy:
    """What RUN/policy (and RUN/best_policy) hold: a DT and its normaliser, with ``info`` (how to
    evaluate it: algo, eval RTG, context) in its metadata."""

    model: torch.nn.Module
    normalizer: Any
    task_name: str
    info: dict = field(default_factory=dict)

    def save(self, run: RunDir, iteration: int, directory: str | None = None, **extra: Any) -> None:
        kwargs = {} if directory is None else {"directory": directory}
        run.save_policy(self.model, self.normalizer, self.task_name, extra={**self.info, "iteration": iteration,
                                                                            **extra}, **kwargs)


class BestPolicy:
    """RUN/best_policy: the policy of the best in-run evaluation so far (by mean return), as
    stable-baselines3's EvalCallback keeps best_model. Its return is read back from the saved
    policy, so a resumed run keeps comparing against it."""

    def __init__(self, run) -> None:
        self.run = run
        self.best_return = best_evaluated_return(run.path)

    def update(self, evaluation: dict, policy: SavedPolicy, iteration: int) -> None:
        score = evaluation["eval_return_mean"]
        if not (math.isfinite(score) and score > self.best_return):  # a NaN never becomes the best
            return
        self.best_return = evaluation["eval_return_mean"]
        policy.save(self.run, iteration, directory=BEST_POLICY_DIR, eval_return_mean=self.best_return,
                    eval_normalized_mean=evaluation["eval_normalized_mean"])


def best_evaluated_return(run_path) -> float:
    """The in-run evaluation return recorded with RUN/best_policy (-inf when there is none yet)."""
    meta = run_path / BEST_POLICY_DIR / "model.json"
    if not meta.is_file():
        return -math.inf
    return float(json.loads(meta.read_text()).get("extra", {}).get("eval_return_mean", -math.inf))


# ----------------------------------------------------------------------------------------------
# Live progress


class RunProgress:
    """What a running training command shows: on a terminal a live bar (iteration, env steps, the last
    evaluation, elapsed time, ETA; rich, as ``dtrl pretrain``), otherwise one line per evaluation
    (logs and pipes keep a readable record without a redrawn bar)."""

    def __init__(self, algo: str, total: int, done: int, live: bool | None = None) -> None:
        self.algo, self.total, self.done = algo, total, done
        self.live = sys.stdout.isatty() if live is None else live
        self.score = "-"
        self._bar = None
        self._started = time.perf_counter()

    def start(self) -> None:
        if not self.live or self._bar is not None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn(f"[bold]{self.algo}[/]"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("it  {task.fields[env_steps]} env steps  eval {task.fields[score]}"),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._bar.start()
        self._task = self._bar.add_task("", total=self.total, completed=self.done, env_steps="0", score=self.score)

    def update(self, iteration: int, clock: Clock, evaluation: dict) -> None:
        if evaluation:
            score = evaluation.get("eval_normalized_mean")
            self.score = (f"{score:.1f} normalised" if score is not None
                          else f"{evaluation.get('eval_return_mean', float('nan')):.1f} return")
        if self._bar is not None:
            self._bar.update(self._task, completed=iteration, env_steps=f"{clock.env_steps:,}", score=self.score)
        elif evaluation:
            elapsed = time.perf_counter() - self._started
            left = elapsed / max(1, iteration - self.done) * (self.total - iteration)
            print(f"{self.algo}: iteration {iteration}/{self.total}, {clock.env_steps:,} env steps, "
                  f"{clock.elapsed() / 60:.1f} min: {self.score} (ETA {left / 60:.0f} min)", flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ----------------------------------------------------------------------------------------------
# The loop


class RunLoop:
    """One training run from open to finish. Opening it creates (or with ``--resume`` reopens) the
    run directory and restores ``components`` (objects with ``state_dict``), the clock and ``rng``
    from the last checkpoint; ``state`` is that checkpoint (None for a fresh run), so a loop can read
    what it saved besides its components. Build the models before opening it: resuming restores the
    global RNGs.

    - ``evaluate()``: the in-run evaluation (mean action on fixed seeds), when due and at the end;
      ``initial_evaluation()`` scores iteration 0 of a fresh run (default ``evaluate``);
      ``log_iteration_zero=False``: the algorithm logs iteration 0 itself (IQL's offline phase).
    - ``saved_policy``: the DT a checkpoint writes to RUN/policy beside the training state (with
      ``keep_best``, also to RUN/best_policy when an evaluation beats the best so far);
      ``extra_state()`` adds loop-specific entries to the checkpoint. A loop whose policy is not a
      DT passes ``checkpoint(iteration)`` instead.
    - ``video(path)``: records the policy into ``path``, at the evaluations of every
      ``config.video_every``-th iteration (RUN/videos/iteration_N.mp4).
    - ``untimed_s``: seconds the time limit does not count (IQL's offline phase)."""

    def __init__(self, config, algo: str, rng: np.random.Generator | None = None, components: dict | None = None, *,
                 evaluate: Callable[[], dict], saved_policy: SavedPolicy | None = None, init=None,
                 rng_key: str = "rng", extra_state: Callable[[], dict] | None = None,
                 checkpoint: Callable[[int], None] | None = None, keep_best: bool = False,
                 initial_evaluation: Callable[[], dict] | None = None, log_iteration_zero: bool = True,
                 video: Callable[[Path], object] | None = None) -> None:
        self.config, self.algo, self.rng, self.rng_key = config, algo, rng, rng_key
        self.components = components or {}
        self.evaluate, self.saved_policy, self.extra_state = evaluate, saved_policy, extra_state
        self._checkpoint, self.video = checkpoint, video
        self.initial_evaluation = (initial_evaluation or evaluate) if log_iteration_zero else None
        self.clock = Clock()
        self.run, self.state = open_run(config, algo, init=init)
        self._closing = contextlib.ExitStack()
        self._closing.callback(self.run.close)
        self.start = 1
        if self.state is not None:
            try:
                self.start = restore_training_state(self.state, rng, self.clock, rng_key, **self.components)
            except BaseException:  # a checkpoint that does not fit: release the run directory, then say so
                self._closing.close()
                raise
        self.best = BestPolicy(self.run) if keep_best else None
        self.iteration = self.start - 1  # the last one done: what finish() reports when none is left to run
        self.last_evaluation: dict = {}
        self.stopping = False
        self.untimed_s = 0.0
        self.progress = RunProgress(algo, config.iterations, self.start - 1)
        self._evaluation: dict = {}

    def __enter__(self) -> RunLoop:
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.stop()
        self._closing.close()  # the envs the loop opened, then the run directory (its lock)

    def closing(self, resource):
        """Close ``resource`` (``close()``) when the loop ends, before the run directory."""
        self._closing.callback(resource.close)
        return resource

    def __iter__(self) -> Iterator[int]:
        """Iteration 0 of a fresh run (the starting policy's score, so every curve starts at the policy
        it finetunes), then the iterations left, until the last or the time limit."""
        self.log_start()
        self.progress.start()
        for iteration in range(self.start, self.config.iterations + 1):
            self.iteration = iteration
            yield iteration
            self.progress.update(iteration, self.clock, self._evaluation)
            if self.stopping:
                break
        self.progress.stop()

    def log_start(self) -> None:
        """Iteration 0 of a fresh run, once (iterating calls it; a loop with work to do between the
        starting score and iteration 1 calls it first)."""
        if self.state is None and self.initial_evaluation is not None and self.config.eval_every > 0:
            self.run.log(iteration_metrics(0, self.clock, **self.initial_evaluation()))
        self.initial_evaluation = None

    def out_of_time(self) -> bool:
        """True once the run has trained for ``time_limit_s`` seconds (0: no limit), not counting
        ``untimed_s``: the equal-wall-clock comparisons of Table 1 use it."""
        limit = self.config.time_limit_s
        return limit > 0 and self.clock.elapsed() - self.untimed_s >= limit

    def end_iteration(self, metrics: dict) -> dict:
        """The tail of every iteration, in this order: is the time limit reached; when an evaluation
        is due (every ``eval_every`` iterations and at the last one, planned or stopped at) evaluate
        and keep the best policy; one metrics row (``metrics``, the evaluation, ``time/eval_s``); when
        due, a checkpoint. Returns the evaluation ({} when none was due)."""
        config, iteration = self.config, self.iteration
        self.stopping = self.out_of_time()
        evaluation: dict = {}
        timer = StageTimer()
        if evaluation_due(iteration, config.iterations, config.eval_every, self.stopping):
            with timer("eval"):
                evaluation = self.evaluate()
            if self.best is not None:
                self.best.update(evaluation, self.saved_policy, iteration)
            if self.video is not None and iteration % config.video_every == 0:
                with timer("video"):
                    (self.run.path / "videos").mkdir(exist_ok=True)
                    self.video(self.run.path / "videos" / f"iteration_{iteration}.mp4")
        self.last_evaluation = evaluation or self.last_evaluation
        self._evaluation = evaluation
        self.run.log(iteration_metrics(iteration, self.clock, **metrics, **evaluation, **timer.metrics))
        if checkpoint_due(iteration, config.iterations, config.checkpoint_every, self.stopping):
            self.checkpoint(iteration)
        if self.stopping:
            print(f"time limit of {config.time_limit_s:.0f} s reached after iteration {iteration}", file=sys.stderr)
        return evaluation

    def checkpoint(self, iteration: int) -> None:
        """RUN/policy (the policy to evaluate, with the iteration in its metadata) and the resumable
        training state."""
        if self._checkpoint is not None:
            self._checkpoint(iteration)
            return
        state = training_state(self.algo, iteration, self.rng, self.clock, self.rng_key, **self.components)
        self.saved_policy.save(self.run, iteration)
        self.run.save_state({**state, **(self.extra_state() if self.extra_state else {})}, iteration)

    def finish(self) -> dict:
        """Write final.json (the last iteration and its evaluation, evaluating now if the last
        iteration had none) and print the completion line every training command prints; returns
        that summary."""
        evaluation = self.last_evaluation or self.evaluate()
        summary = {"algo": self.algo, "iteration": self.iteration, **evaluation}
        self.run.mark_finished(summary)
        score = evaluation.get("eval_normalized_mean")
        shown = f"normalised {score:.1f}" if score is not None else f"return {evaluation.get('eval_return_mean'):.1f}"
        print(f"{self.algo}: finished {self.iteration} iterations in {self.run.path}: {shown}")
        return summary
