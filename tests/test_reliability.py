"""What a user meets on a bad day: a full disk ends a command with one line and damages nothing."""

import hashlib
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

from conftest import one_line
from dtrl.cli import main as cli
from dtrl.errors import DtrlError
from dtrl.runs import RunDir

TASK = "hopper-random"


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and a kernel that lets this container mount one; skipped otherwise)."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root, or mounting is not permitted)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_that_does_not_fit_is_one_line_and_keeps_the_last_one(small_disk):
    run = RunDir.create(small_disk / "run", {"task": TASK, "algo": "test", "seed": 0})
    run.save_state({"iteration": 1, "weights": torch.zeros(1000)}, 1)
    before = digest(small_disk / "run" / "checkpoints")
    with pytest.raises(DtrlError, match="cannot write .*state.pt: No space left on device"):
        run.save_state({"iteration": 2, "weights": torch.zeros(1_000_000)}, 2)  # 4 MB on a 256 KiB disk
    assert digest(small_disk / "run" / "checkpoints") == before  # the last good checkpoint, no temp file
    run.close()


def test_finetuning_on_a_full_disk_ends_with_one_line(small_disk, tmp_path, capsys):
    from dtrl.config import ModelConfig
    from dtrl.data import StateNormalizer
    from dtrl.models import build_model
    from dtrl.models.checkpoint import save_policy

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=2, n_head=1, embed_dim=64, context_length=4, dropout=0.0), 11, 3)
    save_policy(tmp_path / "policy", model, StateNormalizer.identity(11), TASK)
    code = cli(["finetune", "--algo", "grpo", "--task", TASK, "--preset", "cpu", "--init", str(tmp_path / "policy"),
                "--out", str(small_disk / "grpo"), "--iterations", "50", "--device", "cpu", "--eval-every", "0",
                "--trajectories-per-batch", "1", "--reset-points-per-trajectory", "1", "--group-size", "2",
                "--eval-steps", "5", "--checkpoint-every", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("dtrl: error: ")
    assert "No space left on device" in err[-1] and "Traceback" not in "\n".join(err)


def test_data_build_checks_its_output_folder_before_collecting(tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        assert cli(["data", "build", TASK, "--out", str(read_only / "d.hdf5"), "--transitions", "100"]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "Read-only file system" in err and "checked before building" in err
    finally:
        subprocess.run(["umount", "-l", str(read_only)], capture_output=True)


def _tiny_policy(path, weights_fill=None):
    from dtrl.config import ModelConfig
    from dtrl.data import StateNormalizer
    from dtrl.models import build_model
    from dtrl.models.checkpoint import save_policy

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=1, embed_dim=16, context_length=4, dropout=0.0), 11, 3)
    if weights_fill is not None:
        with torch.no_grad():
            next(model.parameters()).fill_(weights_fill)
    save_policy(path, model, StateNormalizer.identity(11), TASK)
    return path


def test_damaged_or_non_finite_weights_are_refused_at_load(tmp_path):
    from dtrl.models.loading import load_policy

    policy = _tiny_policy(tmp_path / "policy")
    load_policy(policy, task=TASK)  # intact: loads
    weights = policy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for offset in range(len(data) - 64, len(data)):  # 64 flipped bytes in the tensor data, header intact
        data[offset] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DtrlError, match="does not match the checksum"):
        load_policy(policy, task=TASK)
    assert cli(["eval", str(policy), "--episodes", "1"]) == 2
    with pytest.raises(DtrlError, match="NaN or infinite weights"):
        load_policy(_tiny_policy(tmp_path / "nan", weights_fill=float("nan")), task=TASK)


def test_saved_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        policy = _tiny_policy(tmp_path / "policy")
        run = RunDir.create(tmp_path / "run", {"task": TASK, "algo": "test", "seed": 0})
        run.save_state({"iteration": 1}, 1)
        run.close()
    finally:
        os.umask(previous)
    assert (policy.stat().st_mode & 0o777) == 0o755
    assert (policy / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run" / "checkpoints" / "state.pt").stat().st_mode & 0o777 == 0o644


def test_data_build_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk, capsys):
    # 20k random Hopper transitions do not fit in 256 KiB
    assert cli(["data", "build", TASK, "--out", str(small_disk / "d.hdf5"), "--transitions", "20000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"dtrl: error: cannot write {small_disk / 'd.hdf5'}: No space left on device"
    assert not any("Traceback" in line for line in err) and list(small_disk.iterdir()) == []


# --- issue 40: the last ways in ------------------------------------------------------------------

DTRL = [sys.executable, "-m", "dtrl"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.hdf5"
    assert cli(["data", "build", TASK, "--out", str(path), "--transitions", "600", "--no-progress"]) == 0
    return path


def _variant(dataset, folder, name, **replace):
    import h5py

    from dtrl.data import read_attrs, read_d4rl

    arrays = {k: v for k, v in read_d4rl(dataset).items() if "/" not in k}
    arrays.update({k: (v(arrays[k]) if callable(v) else v) for k, v in replace.items()})
    path = folder / f"{name}.hdf5"
    with h5py.File(path, "w") as f:  # as a foreign tool would write it: no dtrl checks on the way
        for key, value in arrays.items():
            f.create_dataset(key, data=np.asarray(value))
        for key, value in read_attrs(dataset).items():
            f.attrs[key] = value
    return path


def _huge_observation(observations):
    observations = observations.copy()
    observations[3, 2] = 3e38
    return observations


MALFORMED = {
    "rewards (N, 2)": (dict(rewards=lambda r: np.stack([r, r], 1)), "rewards must hold one value"),
    "terminals (N, 2)": (dict(terminals=lambda t: np.stack([t, t], 1)), "terminals must hold one"),
    "string rewards": (dict(rewards=lambda r: np.array([b"x"] * len(r))), "rewards must hold numbers"),
    "observations near 3e38": (dict(observations=_huge_observation), "observations up to 3e+38"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_arrays_are_one_line_in_info_pretrain_and_iql(case, dataset, tmp_path, capsys):
    replace, message = MALFORMED[case]
    bad = _variant(dataset, tmp_path, "bad", **replace)
    one_line(capsys, cli(["data", "info", str(bad)]), message, str(bad))
    one_line(capsys, cli(["pretrain", "--task", TASK, "--dataset", str(bad), "--out", str(tmp_path / "p")]), message)
    one_line(capsys, cli(["finetune", "--algo", "iql", "--task", TASK, "--dataset", str(bad),
                          "--out", str(tmp_path / "i")]), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.hdf5"]


def test_a_fifo_as_dataset_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "d.hdf5"
    os.mkfifo(fifo)
    one_line(capsys, cli(["data", "info", str(fifo)]), "not a regular file", str(fifo))
    one_line(capsys, cli(["pretrain", "--task", TASK, "--dataset", str(fifo), "--out", str(tmp_path / "p")]),
             "not a regular file")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("options, message", [
    (["--batch-size", "1000000000000"], "needs at least"),
    (["--model.context-length", "100000"], "--model.context-length (100000) must be <= --model.max-timestep"),
    (["--seed", "100000000000000000000000"], "seed must be in [0, 4294967295]"),
    (["--model.max-timestep", "5", "--model.context-length", "5"], "--model.max-timestep 5 is shorter than"),
])
def test_huge_or_short_sizes_are_refused_before_the_run_dir(options, message, dataset, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pretrain", "--task", TASK, "--dataset", str(dataset), "--out", str(out), "--steps", "1", *options]
    one_line(capsys, cli(argv), message)
    assert not out.exists()
    assert cli(argv[:7] + ["--steps", "1", "--eval-episodes", "1", "--eval-every", "0"]) == 0  # the rerun is free


@pytest.mark.parametrize("option", ["--sub-trajectory-length", "--eval-steps"])
def test_grpo_windows_longer_than_the_horizon_are_refused_before_the_run_dir(option, tmp_path, capsys):
    out = tmp_path / "grpo"
    argv = ["finetune", "--algo", "grpo", "--task", TASK, "--init", str(tmp_path / "none"), "--out", str(out),
            option, "100000000"]
    one_line(capsys, cli(argv), f"{option} (100000000) must be <= the horizon of {TASK} (1000 steps)")
    assert not out.exists()


@pytest.mark.parametrize("argv, first", [
    (["pretrain", "--task", TASK, "--batchsize", "3"], "unrecognized option --batchsize; did you mean --batch-size?"),
    (["pretrain", "--task", TASK, "--batch-size", "1e12"], "--batch-size: '1e12' is not an integer literal "
                                                          "(write it as 1000000000000)"),
    (["pretrain", "--task", TASK, "--model.policy", "gauss"], "--model.policy: invalid choice 'gauss' "
                                                             "(did you mean 'gaussian'?"),
    (["data", "info", "x.hdf5", "--tsk", TASK], "unrecognized option --tsk; did you mean --task?"),
])
def test_usage_errors_start_with_one_line_naming_the_option(argv, first, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dtrl: error: {first}"), err
    assert len(err.splitlines()) > 2 and "For full helptext" in err  # tyro's explanation follows


def test_unknown_data_command_lists_export(capsys):
    one_line(capsys, cli(["data", "exprt"]), "did you mean 'export'?", "build, info, export")


def _closed_stdout(args, cwd):
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(DTRL + args, stdout=write, stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=300)
    finally:
        os.close(write)
    return done


@pytest.mark.parametrize("args", [["--help"], ["tasks"], ["data", "info", "{dataset}"], ["report", "{run}"],
                                  ["eval", "{run}", "--episodes", "1"], ["pretrain", "--help"],
                                  ["data", "build", TASK, "--out", "{tmp}/b.hdf5", "--transitions", "200"]])
def test_a_closed_pipe_ends_quietly(args, dataset, tmp_path):
    run = tmp_path / "run"
    if "{run}" in args:
        assert cli(["pretrain", "--task", TASK, "--dataset", str(dataset), "--out", str(run), "--steps", "1",
                    "--eval-episodes", "1"]) == 0
    args = [a.format(dataset=dataset, run=run, tmp=tmp_path) for a in args]
    done = _closed_stdout(args, tmp_path)
    assert done.returncode in (0, 141) and "Traceback" not in done.stderr and "Exception" not in done.stderr, done


def test_data_build_refuses_the_same_file_twice_and_a_replay_out_it_would_ignore(tmp_path, capsys):
    out = tmp_path / "x.hdf5"
    one_line(capsys, cli(["data", "build", "hopper-medium", "--out", str(out), "--replay-out", str(out)]),
             "--out and --replay-out are the same file")
    one_line(capsys, cli(["data", "build", TASK, "--out", str(out), "--replay-out", str(tmp_path / "r.hdf5")]),
             "--replay-out is for medium builds")
    assert list(tmp_path.iterdir()) == []


def test_data_build_on_a_full_disk_fails_before_collecting(small_disk, capsys):
    (small_disk / "fill").write_bytes(b"\0" * ((256 << 10) - 16384))  # 16 KiB left: an empty file still fits
    one_line(capsys, cli(["data", "build", "hopper-medium", "--out", str(small_disk / "m.hdf5")]),
             "No space left on device", "checked before building anything")
    assert sorted(p.name for p in small_disk.iterdir()) == ["fill"]


def test_pretrain_with_too_little_space_for_a_checkpoint_is_one_line_and_leaves_nothing(small_disk, dataset, capsys):
    out = small_disk / "run"
    one_line(capsys, cli(["pretrain", "--task", TASK, "--dataset", str(dataset), "--out", str(out), "--steps", "1"]),
             "cannot write", "state.pt: No space left on device")
    assert list(small_disk.iterdir()) == []


def test_pretrain_on_a_full_disk_leaves_no_lock_or_empty_folder(small_disk, dataset, capsys):
    (small_disk / "fill").write_bytes(b"\0" * (256 << 10))
    out = small_disk / "run"
    code = cli(["pretrain", "--task", TASK, "--dataset", str(dataset), "--out", str(out), "--steps", "1"])
    one_line(capsys, code, "No space left on device", str(out))
    assert sorted(p.name for p in small_disk.iterdir()) == ["fill"]


def test_torch_save_on_a_full_disk_names_the_file_without_a_disk(tmp_path, monkeypatch):
    """The ENOSPC torch.save hides behind "[enforce fail] unexpected pos" is the one reported
    (a fake disk: every write after the first 4 KiB raises ENOSPC)."""
    import errno

    import dtrl.files

    class Full(dtrl.files._RecordingFile):
        written = 0

        def write(self, data):
            Full.written += len(data)
            if Full.written > 4096:
                self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise self.error
            return super().write(data)

    run = RunDir.create(tmp_path / "run", {"task": TASK, "algo": "test", "seed": 0})
    run.save_state({"iteration": 1}, 1)
    before = digest(tmp_path / "run" / "checkpoints")
    monkeypatch.setattr(dtrl.files, "_RecordingFile", Full)
    with pytest.raises(DtrlError, match=r"cannot write .*state.pt: No space left on device$"):
        run.save_state({"iteration": 2, "weights": torch.zeros(100_000)}, 2)
    monkeypatch.undo()
    assert digest(tmp_path / "run" / "checkpoints") == before
    run.close()


def test_close_in_finally_never_masks_the_first_error(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "run", {"task": TASK, "algo": "test", "seed": 0})
    run.log({"iteration": 0, "x": 1.0})

    def failing_close():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run._writer, "close", failing_close)
    with pytest.raises(ValueError, match="the real error"):
        try:
            raise ValueError("the real error")
        finally:
            run.close()
    assert not (tmp_path / "run").exists()  # a fresh run that never checkpointed: nothing to resume, removed
    run2 = RunDir.create(tmp_path / "run2", {"task": TASK, "algo": "test", "seed": 0})
    run2.log({"iteration": 0, "x": 1.0})
    monkeypatch.setattr(run2._writer, "close", failing_close)
    with pytest.raises(DtrlError, match="cannot write .*events"):  # no error in flight: close's own is raised
        run2.close()
    assert run2._lock is None  # the lock is released all the same


def test_a_failed_fresh_run_can_be_rerun_but_a_checkpointed_one_is_kept(tmp_path):
    with pytest.raises(MemoryError), RunDir.create(tmp_path / "a", {"task": TASK, "algo": "t", "seed": 0}):
        raise MemoryError
    assert not (tmp_path / "a").exists()
    with pytest.raises(MemoryError), RunDir.create(tmp_path / "b", {"task": TASK, "algo": "t", "seed": 0}) as run:
        run.save_state({"iteration": 1}, 1)
        raise MemoryError
    assert (tmp_path / "b" / "checkpoints" / "state.pt").is_file()


def test_metrics_on_a_full_disk_name_the_file(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "run", {"task": TASK, "algo": "test", "seed": 0})

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DtrlError, match=r"cannot write .*metrics.jsonl: No space left on device"):
        run.log({"iteration": 0})
    monkeypatch.undo()
    run.close()


def test_a_sweep_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_bytes(b'tasks = ["hopper-random"]\n# caf\xe9\n')
    one_line(capsys, cli(["sweep", str(spec)]), "is not UTF-8 text", str(spec))


def test_a_missing_local_folder_after_hf_is_not_looked_up_on_the_hub(tmp_path, capsys):
    import time

    started = time.monotonic()
    one_line(capsys, cli(["eval", f"hf:{tmp_path / 'missing'}", "--task", TASK]), "no such folder")
    one_line(capsys, cli(["eval", "hf:./missing/model", "--task", TASK]), "no such folder")
    assert time.monotonic() - started < 20


def test_mujoco_warnings_go_to_stderr_not_a_log_file(tmp_path, monkeypatch, capfd):
    import mujoco

    import dtrl.envs  # noqa: F401  (installs the handler)

    monkeypatch.chdir(tmp_path)
    model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><body><joint type="free"/><geom size=".1"/>'
                                           '</body></worldbody></mujoco>')
    data = mujoco.MjData(model)
    data.qvel[:] = 1e30
    mujoco.mj_step(model, data)
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_a_trial_option_tyro_rejects_in_a_sweep_is_shown_before_the_sweep_error(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(f'tasks = ["{TASK}"]\nalgos = ["grpo"]\nseeds = [0]\nout_root = "{tmp_path / "runs"}"\n'
                    'args = ["--bogus-opt", "1"]\n')
    assert cli(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dtrl: error: unrecognized option --bogus-opt") and "Unrecognized options" in err
    assert err.strip().splitlines()[-1].endswith("its arguments do not parse (see above)")
    assert sys.stderr is sys.__stderr__ or "capture" in type(sys.stderr).__module__  # stderr is given back
