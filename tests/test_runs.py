import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from dtrl import runs
from dtrl.errors import DtrlError
from dtrl.runs import (
    RunDir,
    capture_rng_state,
    is_finished,
    read_config,
    read_metrics,
    restore_rng_state,
    seed_everything,
)

CONFIG = {"task": "hopper-random", "algo": "grpo", "seed": 7, "device": "cpu", "lr": 1e-4}


def test_create_writes_config_with_run_info(tmp_path):
    run = RunDir.create(tmp_path / "run", CONFIG)
    run.close()
    config = read_config(tmp_path / "run")
    assert {k: config[k] for k in CONFIG} == CONFIG
    info = config["run_info"]
    assert info["seed"] == 7 and info["device"] == "cpu"
    assert info["torch_version"] == torch.__version__
    for key in ("dtrl_version", "hostname", "start_time"):
        assert info[key]
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no temp files left behind


def test_what_a_run_started_from_is_recorded_once_and_a_resume_that_disagrees_is_told(tmp_path, capsys):
    run = RunDir.create(tmp_path / "run", CONFIG)
    run.record_start_info(init_weights_sha256="aaa")
    run.save_state({"iteration": 1}, 1)
    run.close()
    assert read_config(tmp_path / "run")["run_info"]["init_weights_sha256"] == "aaa"
    resumed = RunDir.resume(tmp_path / "run", CONFIG)
    resumed.record_start_info(init_weights_sha256="aaa")
    assert "differ" not in capsys.readouterr().err
    resumed.record_start_info(init_weights_sha256="bbb")
    resumed.close()
    assert "init_weights_sha256 differ from when the run started" in capsys.readouterr().err
    info = read_config(tmp_path / "run")["run_info"]
    assert info["init_weights_sha256"] == "aaa"  # the DT it started from, not the one found at the path now
    assert info["resumes"][-1]["changed"]["init_weights_sha256"] == {"was": "aaa", "now": "bbb"}
    # a run started before the digest was recorded does not get one on resume: its start is unknown
    old = RunDir.create(tmp_path / "old", CONFIG)
    old.save_state({"iteration": 1}, 1)
    old.close()
    resumed_old = RunDir.resume(tmp_path / "old", CONFIG)
    resumed_old.record_start_info(init_weights_sha256="bbb")
    resumed_old.close()
    assert "init_weights_sha256" not in read_config(tmp_path / "old")["run_info"]


def test_create_refuses_existing_dir_and_force_moves_it_aside(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    RunDir.create(path, CONFIG).close()  # an existing *empty* directory is fine
    (path / "notes.txt").write_text("precious")
    with pytest.raises(DtrlError, match="already exists.*--resume.*--force"):
        RunDir.create(path, CONFIG)
    assert (path / "notes.txt").read_text() == "precious"

    RunDir.create(path, {**CONFIG, "seed": 8}, force=True).close()
    backups = list(tmp_path.glob("run.bak-*"))
    assert len(backups) == 1
    assert (backups[0] / "notes.txt").read_text() == "precious"
    assert read_config(backups[0])["seed"] == 7
    assert read_config(path)["seed"] == 8 and not (path / "notes.txt").exists()


def test_resume_and_force_together_is_an_error(tmp_path):
    with pytest.raises(DtrlError, match="contradict"):
        RunDir.open(tmp_path / "run", CONFIG, resume=True, force=True)


def test_log_writes_jsonl_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir.create(tmp_path / "run", CONFIG)
    for iteration in range(3):
        run.log({"iteration": iteration, "env_steps": 100 * iteration, "losses/policy": 0.5 * iteration,
                 "charts/bad": float("nan") if iteration == 1 else np.float32(1.5), "note": "text",
                 "eval_normalized_mean": None})
    # the jsonl line is on disk (fsynced) before the writer is closed
    assert len(read_metrics(tmp_path / "run")) == 3
    run.close()

    rows = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert rows[1]["charts/bad"] is None and rows[0]["charts/bad"] == 1.5
    assert rows[2]["losses/policy"] == 1.0 and rows[0]["note"] == "text"
    assert "NaN" not in (tmp_path / "run" / "metrics.jsonl").read_text()

    events = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"env_steps", "losses/policy", "charts/bad"} <= set(scalars)
    assert "note" not in scalars and "iteration" not in scalars
    policy = acc.Scalars("losses/policy")
    assert [(e.step, e.value) for e in policy] == [(0, 0.0), (1, 0.5), (2, 1.0)]


def test_resume_purges_tensorboard_steps_after_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir.create(tmp_path / "run", CONFIG)
    for iteration in range(6):
        run.log({"iteration": iteration, "loss": float(iteration)})
        if iteration == 3:
            run.save_state({"iteration": iteration}, iteration)
    run.close()
    resumed = RunDir.resume(tmp_path / "run")
    for iteration in (4, 5):
        resumed.log({"iteration": iteration, "loss": 100.0 + iteration})
    resumed.close()
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0),
                                                                 (4, 104.0), (5, 105.0)]


def test_log_requires_iteration(tmp_path):
    with RunDir.create(tmp_path / "run", CONFIG) as run, pytest.raises(ValueError, match="iteration"):
        run.log({"env_steps": 1})


def test_failed_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "run", CONFIG)
    run.save_state({"weights": torch.ones(4), "step": 1}, iteration=1)

    def crash(*args):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(runs.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        run.save_state({"weights": torch.zeros(4), "step": 2}, iteration=2)
    monkeypatch.undo()

    state = run.load_state()
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(4))
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["state.pt"]  # temp file cleaned up
    run.close()


def test_nan_in_state_dict_is_refused_and_old_checkpoint_kept(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    run = RunDir.create(tmp_path / "run", CONFIG)
    run.save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, iteration=4)

    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(DtrlError,
                       match=r"iteration 5: state\['model'\]\['1.weight'\] contains NaN.*iteration 4 is kept"):
        run.save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, iteration=5)

    with torch.no_grad():
        model[1].weight[0, 0] = 0.0
    optimizer.state_dict()["state"][0]["exp_avg_sq"][0, 0] = float("inf")
    with pytest.raises(DtrlError, match=r"state\['optimizer'\]\['state'\]\[0\]\['exp_avg_sq'\] contains Inf"):
        run.save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, iteration=5)
    with pytest.raises(DtrlError, match=r"state\['buffer'\]\[1\] contains NaN"):
        run.save_state({"buffer": [np.zeros(2), np.array([1.0, np.nan])]}, iteration=5)

    state = run.load_state()
    assert torch.isfinite(state["model"]["1.weight"]).all()
    assert run.checkpoint_iteration == 4
    # a Python float -inf (e.g. "best return so far") is a legitimate value, not a divergence
    run.save_state({"best_return": float("-inf")}, iteration=6)
    # finite values whose sum overflows float32 are not mistaken for a divergence
    run.save_state({"huge": torch.full((4,), 3e38)}, iteration=7)
    assert run.load_state()["huge"][0] == torch.tensor(3e38)
    run.close()


def test_rng_capture_restore_repeats_next_draws():
    seed_everything(123)
    random.random(), np.random.rand(), torch.rand(1)
    saved = capture_rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.randn(3).tolist())
    torch.randn(100), np.random.rand(5), random.random()  # move every stream on
    restore_rng_state(saved)
    again = (random.random(), np.random.rand(3).tolist(), torch.randn(3).tolist())
    assert first == again


def test_seed_everything_is_deterministic():
    seed_everything(5)
    a = (random.random(), np.random.rand(), torch.rand(2).tolist())
    seed_everything(5)
    assert a == (random.random(), np.random.rand(), torch.rand(2).tolist())


def test_resume_drops_metrics_after_checkpoint_and_torn_line(tmp_path, capsys):
    run = RunDir.create(tmp_path / "run", CONFIG)
    for iteration in range(6):
        run.log({"iteration": iteration, "wall_time_s": 10.0 * iteration})
        if iteration == 3:
            run.save_state({"iteration": iteration}, iteration)
    run.close()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as handle:
        handle.write('{"iteration": 6, "wall_ti')  # a write torn by kill -9

    # lr changed; video_fps is an option the run's dtrl did not have yet: recorded, not a changed setting
    resumed = RunDir.resume(tmp_path / "run", {**CONFIG, "resume": True, "lr": 3e-4, "video_fps": 0})
    assert capsys.readouterr().err.strip().endswith("with changed settings: lr")
    assert resumed.checkpoint_iteration == 3
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [0, 1, 2, 3]
    assert resumed.load_state() == {"iteration": 3}
    assert resumed.wall_time_s() >= 30.0  # continues the wall clock of the kept lines
    resumed.log({"iteration": 4, "wall_time_s": resumed.wall_time_s()})
    resumed.close()
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [0, 1, 2, 3, 4]
    config = read_config(tmp_path / "run")
    assert config["lr"] == 3e-4  # changed settings are applied and recorded
    assert config["run_info"]["resumes"][0]["changed"] == {"lr": {"was": 1e-4, "now": 3e-4}}
    assert config["run_info"]["resumes"][0]["options_added_since"] == {"video_fps": 0}
    assert config["video_fps"] == 0


def test_resume_errors_are_one_line(tmp_path):
    with pytest.raises(DtrlError, match="no such run directory"):
        RunDir.resume(tmp_path / "missing")
    RunDir.create(tmp_path / "run", CONFIG).close()
    with pytest.raises(DtrlError, match="no checkpoint yet"):
        RunDir.resume(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DtrlError, match="cannot read checkpoint"):
        RunDir.resume(tmp_path / "run")


def test_read_metrics_reports_corrupt_line(tmp_path):
    RunDir.create(tmp_path / "run", CONFIG).close()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"iteration": 0}\nnot json\n{"iteration": 2}\n')
    with pytest.raises(DtrlError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(tmp_path / "run")
    with pytest.raises(DtrlError, match="not a run directory"):
        read_config(tmp_path)


def test_mark_finished(tmp_path):
    run = RunDir.create(tmp_path / "run", CONFIG)
    assert not is_finished(tmp_path / "run")
    run.mark_finished({"eval_normalized_mean": 91.5, "bad": float("nan")})
    assert is_finished(tmp_path / "run")
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["eval_normalized_mean"] == 91.5 and final["bad"] is None and "finished_at" in final


def _tree_digest(path):
    import hashlib

    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_refused_or_empty_resume_changes_nothing(tmp_path):
    from dtrl.errors import NothingToDo

    run = RunDir.create(tmp_path / "run", {**CONFIG, "algo": "grpo", "iterations": 5})
    run.log({"iteration": 1})
    run.save_state({"iteration": 1}, 1)
    run.mark_finished({"iteration": 5, "eval_normalized_mean": 50.0})
    run.close()
    before = _tree_digest(tmp_path / "run")
    with pytest.raises(DtrlError, match="holds a run of algorithm grpo, not ppo"):
        RunDir.resume(tmp_path / "run", {**CONFIG, "algo": "ppo", "iterations": 5})
    with pytest.raises(DtrlError, match="holds a run of task"):
        RunDir.resume(tmp_path / "run", {**CONFIG, "algo": "grpo", "task": "hopper-medium", "iterations": 5})
    for iterations in (5, 3):  # the same or fewer iterations: a finished run has nothing left to do
        with pytest.raises(NothingToDo, match="is finished .*eval_normalized_mean 50.0"):
            RunDir.resume(tmp_path / "run", {**CONFIG, "algo": "grpo", "iterations": iterations})
    assert _tree_digest(tmp_path / "run") == before


def test_resuming_a_finished_run_makes_it_unfinished_until_it_ends_again(tmp_path):
    run = RunDir.create(tmp_path / "run", {**CONFIG, "iterations": 5})
    run.log({"iteration": 1})
    run.save_state({"iteration": 1}, 1)
    run.mark_finished({"eval_normalized_mean": 50.0})
    resumed = RunDir.resume(tmp_path / "run", {**CONFIG, "iterations": 10})
    assert not is_finished(tmp_path / "run")
    assert read_config(tmp_path / "run")["run_info"]["resumes"][-1]["previous_final"]["eval_normalized_mean"] == 50.0
    resumed.mark_finished({"eval_normalized_mean": 60.0})
    assert is_finished(tmp_path / "run")


def _toy_training(run: RunDir, iterations: int, crash_after: int | None = None) -> None:
    """A tiny SGD loop drawing from every RNG kind an algorithm uses (torch, numpy global, python,
    its own np.random.Generator), checkpointing every iteration."""
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    rng = np.random.default_rng(run.config["seed"])
    state = run.load_state()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        start = state["iteration"] + 1
    for iteration in range(start, iterations):
        x = torch.randn(8, 4) + torch.from_numpy(rng.normal(size=(8, 4))).float()
        noise = np.random.normal() + random.gauss(0, 1)
        loss = ((model(x).squeeze(-1) - x.sum(-1) - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({"iteration": iteration, "losses/mse": loss.item(), "weight0": model.weight[0, 0].item()})
        run.save_state({"iteration": iteration, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "rng": rng.bit_generator.state}, iteration)
        if crash_after is not None and iteration == crash_after:
            run.log({"iteration": iteration + 1, "losses/mse": -1.0})  # logged, never checkpointed
            return


def test_resumed_run_reproduces_uninterrupted_metrics(tmp_path):
    config = {**CONFIG, "seed": 3}
    seed_everything(3)
    straight = RunDir.create(tmp_path / "straight", config)
    _toy_training(straight, iterations=6)
    straight.close()

    seed_everything(3)
    crashed = RunDir.create(tmp_path / "crashed", config)
    _toy_training(crashed, iterations=6, crash_after=2)
    crashed.close()
    torch.randn(50), np.random.rand(7), random.random()  # a new process would have other RNG states
    resumed = RunDir.resume(tmp_path / "crashed", config)
    _toy_training(resumed, iterations=6)
    resumed.close()

    assert read_metrics(tmp_path / "crashed") == read_metrics(tmp_path / "straight")


def test_kill_9_during_checkpointing_leaves_a_readable_checkpoint(tmp_path):
    """A child process checkpoints a few MB in a loop; SIGKILL at an arbitrary moment must leave
    a loadable checkpoint whose iteration matches the metrics kept on resume."""
    script = textwrap.dedent(f"""
        import torch
        from dtrl.runs import RunDir
        torch.set_num_threads(1)
        run = RunDir.create({str(tmp_path / "run")!r}, {{"seed": 0}})
        big = torch.arange(1_000_000, dtype=torch.float64)
        for iteration in range(100000):
            run.log({{"iteration": iteration}})
            run.save_state({{"iteration": iteration, "big": big + iteration}}, iteration)
            if iteration == 2:
                print("ready", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # a few more checkpoints in flight
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    resumed = RunDir.resume(tmp_path / "run")
    state = resumed.load_state(restore_rng=False)
    iteration = state["iteration"]
    assert iteration >= 2 and resumed.checkpoint_iteration == iteration
    # the whole tensor is the one saved with that iteration: not torn, not mixed with another save
    assert torch.equal(state["big"], torch.arange(1_000_000, dtype=torch.float64) + iteration)
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == list(range(iteration + 1))
    resumed.close()


def test_one_writer_per_run_and_crash_leftovers_removed_on_resume(tmp_path):
    run = RunDir.create(tmp_path / "run", CONFIG)
    run.log({"iteration": 1})
    run.save_state({"iteration": 1}, 1)
    # a second writer (another terminal, a mistyped sweep) is refused while the first holds the run
    with pytest.raises(DtrlError, match=r"is being written by pid \d+"):
        RunDir.resume(tmp_path / "run", CONFIG)
    with pytest.raises(DtrlError, match="is being written by"):  # nor may --force move it aside
        RunDir.create(tmp_path / "run", CONFIG, force=True)
    with pytest.raises(DtrlError, match="is being written by"):  # nor a second sweep's restart delete it
        runs.remove_run_dir(tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints").is_dir()
    run.close()
    # what a kill -9 during a checkpoint or a policy swap leaves behind
    (tmp_path / "run" / "checkpoints" / ".state.pt.123.abcd1234.tmp").write_bytes(b"half")
    (tmp_path / "run" / ".policy.123.abcd1234.tmp").mkdir()
    (tmp_path / "run" / ".policy.123.abcd1234.old").mkdir()
    (tmp_path / "run" / "best_policy").mkdir()
    (tmp_path / "run" / ".best_policy.123.abcd1234.old").mkdir()  # a swap that crashed between its renames
    (tmp_path / "run" / ".best_policy.123.abcd1234.old" / "model.json").write_text("{}")
    resumed = RunDir.resume(tmp_path / "run", CONFIG)
    leftovers = [p.name for p in (tmp_path / "run").rglob(".*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []
    resumed.close()


def test_track_logs_to_weights_and_biases_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir.create(tmp_path / "run", {**CONFIG, "track": True, "wandb_project": "dtrl-test"})
    run.log({"iteration": 1, "losses/policy": 0.5})
    run.close()
    wandb_id = read_config(tmp_path / "run")["run_info"]["wandb_id"]
    offline = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert offline and list(offline[0].glob("*.wandb"))  # the run's W&B record, ready for `wandb sync`


def test_an_interrupted_swap_puts_the_only_copy_back(tmp_path):
    run = RunDir.create(tmp_path / "run", CONFIG)
    run.save_state({"iteration": 1}, 1)
    run.close()
    aside = tmp_path / "run" / ".policy.99.deadbeef.old"  # the old policy moved aside, the new one never arrived
    aside.mkdir()
    (aside / "model.json").write_text('{"kept": true}')
    RunDir.resume(tmp_path / "run", CONFIG).close()
    assert json.loads((tmp_path / "run" / "policy" / "model.json").read_text()) == {"kept": True}
