"""`dtrl demo`: every stage runs from the CLI, writes its artefact, and a second call reuses them;
it ends with the curve and, where MuJoCo renders headless, a video of the finetuned policy."""

import json

import pytest
import torch

from dtrl.cli import main as cli
from dtrl.errors import DtrlError
from dtrl.evaluation import headless_env


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The demo sets one torch thread for the whole process; later tests get the count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def demo_args(out, *extra):
    return ["demo", "--out", str(out), "--transitions", "3000", "--pretrain-steps", "4", "--iterations", "2",
            "--eval-episodes", "1", "--device", "cpu", *extra]


def renders() -> bool:
    try:
        headless_env("hopper-random", 0).close()
        return True
    except DtrlError:
        return False


@pytest.mark.parametrize(("algo", "label"), [("ppo", "PPO-DT"), ("grpo", "GRPO-DT")])
def test_demo_runs_every_stage_then_reuses_them(tmp_path, capsys, algo, label):
    out = tmp_path / "demo"
    extra = ["--algo", algo] if algo != "ppo" else []  # PPO-DT is the default
    if algo == "grpo":
        extra.append("--no-video")
    assert cli(demo_args(out, *extra)) == 0
    text = capsys.readouterr().out
    assert (out / "hopper-random.hdf5").is_file()
    for stage in ("pretrain", algo):
        assert (out / stage / "final.json").is_file() and (out / stage / "policy" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (out / algo / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows][-1] == 2
    results = json.loads((out / "demo_results.json").read_text())
    assert {"pretrained DT", label} <= set(results) and results["algo"] == algo and results["minutes"] > 0
    assert all(results[name]["eval_episodes"] == 1 for name in ("pretrained DT", label))
    assert label in text and "curve" in text and "iteration 2:" in text
    assert sorted((out / "report").glob("curves_*.png"))
    if algo == "ppo" and renders():  # the default records the finetuned policy
        assert results["video"] == str(out / "finetuned.mp4") and (out / "finetuned.mp4").stat().st_size > 0
    else:
        assert results["video"] is None and not list(out.glob("finetuned.*"))

    stamp = (out / algo / "metrics.jsonl").stat().st_mtime_ns
    assert cli(demo_args(out, *extra)) == 0  # everything is complete: no stage runs again
    text = capsys.readouterr().out
    assert "reusing" in text and (out / algo / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_demo_rejects_bad_sizes_with_a_one_line_error(tmp_path, capsys):
    assert cli(["demo", "--out", str(tmp_path / "d"), "--iterations", "0"]) == 2
    assert capsys.readouterr().err.strip() == "dtrl: error: iterations must be >= 1, got 0"
    assert not (tmp_path / "d").exists()  # nothing was created
