"""`dtrl demo`: every stage runs from the CLI, writes its artefact, and a second call reuses them."""

import json

import pytest
import torch

from dtrl.cli import main as cli


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The demo sets one torch thread for the whole process; later tests get the count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def demo_args(out):
    return ["demo", "--out", str(out), "--transitions", "3000", "--pretrain-steps", "4", "--iterations", "2",
            "--eval-episodes", "1", "--device", "cpu"]


def test_demo_runs_every_stage_then_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(demo_args(out)) == 0
    text = capsys.readouterr().out
    assert (out / "hopper-random.hdf5").is_file()
    for stage in ("pretrain", "grpo"):
        assert (out / stage / "final.json").is_file() and (out / stage / "policy" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    results = json.loads((out / "demo_results.json").read_text())
    assert set(results) == {"pretrained DT", "GRPO-DT"}
    assert all(r["eval_episodes"] == 1 for r in results.values())
    assert "GRPO-DT" in text and "learning curve" in text
    assert sorted((out / "report").glob("*.png"))

    stamp = (out / "grpo" / "metrics.jsonl").stat().st_mtime_ns
    assert cli(demo_args(out)) == 0  # everything is complete: no stage runs again
    text = capsys.readouterr().out
    assert "reusing" in text and (out / "grpo" / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_demo_rejects_bad_sizes_with_a_one_line_error(tmp_path, capsys):
    assert cli(["demo", "--out", str(tmp_path / "d"), "--iterations", "0"]) == 2
    assert capsys.readouterr().err.strip() == "dtrl: error: iterations must be >= 1, got 0"
    assert not (tmp_path / "d").exists()  # nothing was created
