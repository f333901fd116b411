"""``--track``: Weights & Biases offline, read back from its own files (issue 39.4): one history row per
logged iteration, no TensorBoard event file in W&B's folder, one run per run folder for TensorBoard."""

from __future__ import annotations

import struct
import time
from collections import Counter

import pytest

from dtrl.runs import RunDir, read_config

CONFIG = {"task": "hopper-random", "algo": "grpo", "seed": 0, "track": True, "wandb_project": "dtrl-test"}


def wandb_records(path) -> list:
    """The protobuf records of a ``.wandb`` file (W&B's LevelDB-style log: a 7-byte ``:W&B`` header, then
    32 KiB blocks of chunks, each with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, chunks, pending = 7, 32768, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # a block's zero-filled tail
            position += left
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    records = []
    for raw in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def test_track_logs_one_history_row_per_iteration_outside_tensorboards_tree(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.io_wrapper import GetLogdirSubdirectories

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir.create(tmp_path / "runs" / "a", CONFIG)
    for iteration in range(3):
        run.log({"iteration": iteration, "losses/policy": 0.5 * iteration, "env_steps": 100 * iteration,
                 "eval_normalized_mean": 10.0 + iteration, "flag": True})
        run._tensorboard().flush()
        time.sleep(0.5)  # give a TensorBoard watcher the time to find (and copy) the event file
    run.close()

    wandb_id = read_config(tmp_path / "runs" / "a")["run_info"]["wandb_id"]
    (offline,) = (tmp_path / "runs" / "a" / "wandb").glob(f"offline-run-*-{wandb_id}")
    (record_file,) = offline.glob("*.wandb")
    records = wandb_records(record_file)
    deadline = time.monotonic() + 30
    while not any(r.HasField("exit") for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)  # W&B's service process may still be writing the file after wandb.finish()
        records = wandb_records(record_file)
    kinds = Counter(r.WhichOneof("record_type") for r in records)
    assert kinds["history"] == 3 and kinds["tbrecord"] == 0
    rows = [{item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
            for r in records if r.HasField("history")]
    assert [row["iteration"] for row in rows] == ["0", "1", "2"]
    assert [float(row["eval_normalized_mean"]) for row in rows] == [10.0, 11.0, 12.0]
    assert "flag" not in rows[0]
    # TensorBoard lists the folders holding an event file: one per run, none inside W&B's files
    assert not [p for p in (tmp_path / "runs" / "a" / "wandb").rglob("*") if "tfevents" in p.name]
    assert list(GetLogdirSubdirectories(str(tmp_path / "runs"))) == [str(tmp_path / "runs" / "a")]
