"""``BatchedEnv``: N copies of a task's env stepped together, in-process or over worker processes.

No auto-reset: a copy whose episode ended stays ended until ``reset`` or ``restore``; pass
``active`` to ``step`` to leave such copies (or any others) alone. Branching for GRPO is
``restore([snap] * G)``: G copies start from one exact state.

Worker processes each own a contiguous slice of the copies and exchange one pickled message per
call (the whole slice's actions in, its observations/rewards/flags out), so the per-call overhead
is per worker, not per copy. The same ``_EnvSlice`` code runs in-process and in workers, so both
give bit-identical results.

Hopper, Walker2d, HalfCheetah and Ant (gymnasium v5) step through a fast path (``fast.py``) that
calls ``mj_step`` directly and computes observations, rewards and flags for all copies with numpy,
bit-identical to stepping each copy's ``BranchableEnv``; other envs step copy by copy.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from dtrl.errors import DtrlError
from dtrl.tasks import Task, get_task

from .env import BranchableEnv, EnvSnapshot, make
from .fast import FastStepper, fast_stepper

# A call to the workers and back costs ~0.1-0.2 ms of wall clock (benchmarks/results/envs.md, on a
# loaded 2-core machine), about one Hopper step; with 8 copies per worker that fixed cost is a
# small fraction of the stepping it spreads. A judgement from those numbers, not tuned on a
# many-core machine.
MIN_ENVS_PER_WORKER = 8


def default_num_workers(num_envs: int, cpu_count: int | None = None) -> int:
    """Workers worth starting for ``num_envs`` copies: none on 1-2 cores or for few copies, else one
    per spare core with at least ``MIN_ENVS_PER_WORKER`` copies each (one core stays with the
    policy in the main process)."""
    cpus = cpu_count if cpu_count is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    spare = cpus - 1
    if spare < 2:
        return 0
    workers = min(spare, num_envs // MIN_ENVS_PER_WORKER)
    return workers if workers >= 2 else 0


class _EnvSlice:
    """A list of envs and the batched operations on them (runs in the main process or a worker).

    ``fast``: step through ``FastStepper`` where it covers the env (False: always copy by copy, the
    reference the fast path is tested against)."""

    def __init__(self, task: Task, count: int, fast: bool = True, num_threads: int = 1):
        self.envs: list[BranchableEnv] = [make(task) for _ in range(count)]
        obs_dim = self.envs[0].obs_dim if self.envs else 0
        self.last_obs = np.zeros((count, obs_dim), np.float32)
        self.fast: FastStepper | None = fast_stepper(self.envs, num_threads) if fast else None

    def reset(self, local: Sequence[int], seeds: Sequence[int | None]) -> np.ndarray:
        for i, seed in zip(local, seeds):
            self.last_obs[i] = self.envs[i].reset(seed=seed)[0]
        return self.last_obs[list(local)]

    def restore(self, local: Sequence[int], snapshots: Sequence[EnvSnapshot]) -> np.ndarray:
        for i, snap in zip(local, snapshots):
            self.last_obs[i] = self.envs[i].restore(snap)
        return self.last_obs[list(local)]

    def step(self, actions: np.ndarray, active: np.ndarray):
        count = len(self.envs)
        rewards = np.zeros(count, np.float64)
        terminated = np.zeros(count, bool)
        truncated = np.zeros(count, bool)
        if self.fast is not None and self.fast.accepts(actions):
            indices = np.flatnonzero(active)
            obs, rewards[indices], terminated[indices], truncated[indices] = self.fast.step(actions, indices)
            self.last_obs[indices] = obs
            return self.last_obs.copy(), rewards, terminated, truncated
        for i in np.flatnonzero(active):
            obs, rewards[i], terminated[i], truncated[i], _ = self.envs[i].step(actions[i])
            self.last_obs[i] = obs
        return self.last_obs.copy(), rewards, terminated, truncated

    def snapshot(self, local: Sequence[int]) -> list[EnvSnapshot]:
        return [self.envs[i].snapshot() for i in local]

    def close(self) -> None:
        if self.fast is not None:
            self.fast.close()
        for env in self.envs:
            env.close()


def _worker_main(conn, task: Task, count: int, fast: bool = True, num_threads: int = 1) -> None:
    """Worker process loop: build the slice, then answer (command, args) messages until "close"."""
    try:
        envs = _EnvSlice(task, count, fast, num_threads)
        conn.send(("ok", envs.fast is not None))
    except BaseException as exc:  # report construction failures instead of dying silently
        conn.send(("error", _describe(exc)))
        conn.close()
        return
    try:
        while True:
            command, args = conn.recv()
            if command == "close":
                break
            try:
                conn.send(("ok", getattr(envs, command)(*args)))
            except Exception as exc:
                conn.send(("error", _describe(exc)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # Ctrl-C reaches the whole process group; the parent reports it, or the parent is gone
    finally:
        envs.close()
        conn.close()


def _describe(exc: BaseException) -> tuple[bool, str]:
    """(is a DtrlError, message) — exceptions themselves may not pickle."""
    if isinstance(exc, DtrlError):
        return True, str(exc)
    return False, "".join(traceback.format_exception(exc)).rstrip()


def _raise_remote(worker: int, described: tuple[bool, str]) -> None:
    is_user_error, message = described
    if is_user_error:
        raise DtrlError(message)
    raise RuntimeError(f"BatchedEnv worker {worker} failed:\n{message}")


class BatchedEnv:
    """``num_envs`` copies of a task's env; see the module docstring.

    Args:
        task: task name, gymnasium MuJoCo env id, or ``Task``.
        num_envs: number of copies N.
        num_workers: worker processes (0: step in this process; None, the default:
            ``default_num_workers(num_envs)``, which is 0 on machines with 1-2 cores).
        seed: copy i's first ``reset()`` without seeds uses ``seed + i``.
        start_method: multiprocessing start method for workers (default: forkserver where
            available, else spawn; fork is unsafe once torch has started threads).
        fast: use the fast path (module docstring) where it covers the env; False steps every copy
            through ``BranchableEnv.step`` (same results, slower).
        num_threads: threads stepping the fast path's copies in this process (or in each worker);
            results do not depend on it. More threads than free cores only add switching.
    """

    def __init__(self, task: str | Task, num_envs: int, num_workers: int | None = None, seed: int = 0,
                 start_method: str | None = None, fast: bool = True, num_threads: int = 1):
        self.task = task if isinstance(task, Task) else get_task(task)
        if num_envs < 1:
            raise DtrlError(f"BatchedEnv needs num_envs >= 1, got {num_envs}")
        if num_workers is None:
            num_workers = default_num_workers(num_envs)
        if num_workers < 0:
            raise DtrlError(f"BatchedEnv needs num_workers >= 0, got {num_workers}")
        if num_threads < 1:
            raise DtrlError(f"BatchedEnv needs num_threads >= 1, got {num_threads}")
        self.num_envs = num_envs
        self.num_workers = min(num_workers, num_envs)
        self.seed = seed
        self._first_reset = True
        self._closed = False
        self._local: _EnvSlice | None = None
        self._conns: list = []
        self._procs: list = []
        self._fast, self._num_threads = fast, num_threads
        self.uses_fast_path = False  # the copies step through fast.py (it covers the env and `fast` is on)
        # Copy i lives in worker _owner[i] at position _position[i] of its slice.
        bounds = np.linspace(0, num_envs, max(self.num_workers, 1) + 1).round().astype(int)
        self._slices = [range(bounds[w], bounds[w + 1]) for w in range(len(bounds) - 1)]
        self._owner = np.concatenate([np.full(len(s), w) for w, s in enumerate(self._slices)])
        self._position = np.concatenate([np.arange(len(s)) for s in self._slices])

        if self.num_workers == 0:
            self._local = _EnvSlice(self.task, num_envs, fast, num_threads)
            spaces_from = self._local.envs[0]
            self.uses_fast_path = self._local.fast is not None
        else:
            self._start_workers(start_method)
            spaces_from = make(self.task)
            spaces_from.close()
        self.observation_space, self.action_space = spaces_from.observation_space, spaces_from.action_space
        self.obs_dim = self.observation_space.shape[0]
        self.act_dim = self.action_space.shape[0]
        self._last_obs = np.zeros((num_envs, self.obs_dim), np.float32)

    def _start_workers(self, start_method: str | None) -> None:
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        context = mp.get_context(start_method)
        if start_method == "forkserver":
            context.set_forkserver_preload(["dtrl.envs"])  # workers fork from a server with it imported
        try:
            for piece in self._slices:
                parent_end, child_end = context.Pipe()
                proc = context.Process(target=_worker_main, daemon=True,
                                       args=(child_end, self.task, len(piece), self._fast, self._num_threads))
                proc.start()
                child_end.close()
                self._conns.append(parent_end)
                self._procs.append(proc)
            self.uses_fast_path = all([self._receive(w) for w in range(len(self._conns))])
        except BaseException:
            self.close()
            raise

    # -- messaging -------------------------------------------------------------------------------
    def _receive(self, worker: int) -> Any:
        try:
            status, payload = self._conns[worker].recv()
        except EOFError:
            raise RuntimeError(f"BatchedEnv worker {worker} died (exit code {self._procs[worker].exitcode})") from None
        if status == "error":
            _raise_remote(worker, payload)
        return payload

    def _call(self, command: str, per_worker_args: dict[int, tuple]) -> dict[int, Any]:
        """Run ``command`` on the slices in ``per_worker_args`` (all workers in parallel)."""
        self._check_open()
        if self._local is not None:
            return {0: getattr(self._local, command)(*per_worker_args[0])} if 0 in per_worker_args else {}
        for w, args in per_worker_args.items():
            self._conns[w].send((command, args))
        results, first_error = {}, None
        for w in per_worker_args:  # drain every answer even after an error, so pipes stay in sync
            try:
                results[w] = self._receive(w)
            except Exception as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return results

    def _group(self, indices: Sequence[int]) -> dict[int, list[int]]:
        """Positions in ``indices`` grouped by owning worker, in order."""
        groups: dict[int, list[int]] = {}
        for k, i in enumerate(indices):
            groups.setdefault(int(self._owner[i]), []).append(k)
        return groups

    def _indices(self, indices: Sequence[int] | None) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.num_envs]
        if bad:
            raise DtrlError(f"env indices {bad[:5]} out of range for a BatchedEnv of {self.num_envs} copies")
        return indices

    def _per_copy(self, command: str, indices: list[int], values: Sequence[Any]) -> np.ndarray:
        """Apply ``command`` (reset/restore) with ``values[k]`` to copy ``indices[k]``; obs [len, O]."""
        groups = self._group(indices)
        results = self._call(command, {
            w: ([int(self._position[indices[k]]) for k in ks], [values[k] for k in ks]) for w, ks in groups.items()
        })
        obs = np.zeros((len(indices), self.obs_dim), np.float32)
        for w, ks in groups.items():
            obs[ks] = results[w]
        self._last_obs[indices] = obs
        return obs

    # -- public API ------------------------------------------------------------------------------
    def reset(self, seeds: Sequence[int | None] | None = None, indices: Sequence[int] | None = None) -> np.ndarray:
        """Start new episodes in the copies ``indices`` (default all), copy ``indices[k]`` seeded
        with ``seeds[k]``; returns their observations ``[len(indices), O]``. Without seeds the
        first reset uses ``seed + i`` and later ones continue each copy's RNG stream."""
        indices = self._indices(indices)
        if seeds is None:
            seeds = [self.seed + i for i in indices] if self._first_reset else [None] * len(indices)
        seeds = list(seeds)
        if len(seeds) != len(indices):
            raise DtrlError(f"reset got {len(seeds)} seeds for {len(indices)} env copies")
        self._first_reset = False
        return self._per_copy("reset", indices, seeds)

    def restore(self, snapshots: Sequence[EnvSnapshot], indices: Sequence[int] | None = None) -> np.ndarray:
        """Put copy ``indices[k]`` (default: copy k) into ``snapshots[k]``; the same snapshot may go
        to many copies (a GRPO group). Returns the observations ``[len(indices), O]``."""
        indices = self._indices(indices)
        snapshots = list(snapshots)
        if len(snapshots) != len(indices):
            raise DtrlError(f"restore got {len(snapshots)} snapshots for {len(indices)} env copies")
        return self._per_copy("restore", indices, snapshots)

    def step(self, actions: np.ndarray, active: np.ndarray | None = None):
        """Step the active copies with ``actions[i]``. Returns ``(obs [N,O], rewards [N],
        terminated [N], truncated [N])``; inactive copies keep their observation, reward 0, flags False."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self.act_dim):
            raise DtrlError(f"step needs actions of shape ({self.num_envs}, {self.act_dim}), got {actions.shape}")
        if active is None:
            active = np.ones(self.num_envs, bool)
        else:
            active = np.asarray(active, bool)
            if active.shape != (self.num_envs,):
                raise DtrlError(f"step needs active of shape ({self.num_envs},), got {active.shape}")
        results = self._call("step", {
            w: (actions[s.start:s.stop], active[s.start:s.stop])
            for w, s in enumerate(self._slices) if active[s.start:s.stop].any()
        })
        rewards = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for w, (obs, rew, term, trunc) in results.items():
            s = self._slices[w]
            self._last_obs[s.start:s.stop] = obs
            rewards[s.start:s.stop], terminated[s.start:s.stop], truncated[s.start:s.stop] = rew, term, trunc
        return self._last_obs.copy(), rewards, terminated, truncated

    def snapshot(self, indices: Sequence[int] | None = None) -> list[EnvSnapshot]:
        """Exact snapshots of the copies ``indices`` (default all), in that order."""
        indices = self._indices(indices)
        groups = self._group(indices)
        results = self._call("snapshot",
                             {w: ([int(self._position[indices[k]]) for k in ks],) for w, ks in groups.items()})
        snapshots: list[EnvSnapshot | None] = [None] * len(indices)
        for w, ks in groups.items():
            for k, snap in zip(ks, results[w]):
                snapshots[k] = snap
        return snapshots

    def _check_open(self) -> None:
        if self._closed:
            raise DtrlError("BatchedEnv is closed")

    def close(self) -> None:
        """Close every copy and stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._local is not None:
            self._local.close()
        for conn in self._conns:
            try:
                conn.send(("close", ()))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=1)
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> BatchedEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"BatchedEnv({self.task.name}, num_envs={self.num_envs}, num_workers={self.num_workers})"
