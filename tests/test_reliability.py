"""What a user meets on a bad day: a full disk ends a command with one line and damages nothing."""

import hashlib
import os
import subprocess
import uuid

import pytest
import torch

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
