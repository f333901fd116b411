import csv
import importlib
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from dtrl.cli import main as cli_main
from dtrl.errors import DtrlError
from dtrl.report import ReportConfig, build_report, episodes, mean_std_curve, paper_dataset_name
from dtrl.report import budget as report_budget
from dtrl.report import claims as report_claims

STUDIES = Path(__file__).resolve().parents[1] / "benchmarks" / "studies"

# final normalised scores we plant: (task, algo) -> one per seed
FINALS = {
    ("hopper-random", "grpo"): [90.0, 100.0, 110.0],
    ("hopper-random", "odt"): [30.0, 31.0, 32.0],
    ("walker2d-medium", "grpo"): [50.0, 60.0, 70.0],
    ("walker2d-medium", "odt"): [80.0, 80.0, 83.0],
}


def study_script(monkeypatch, name: str):
    """A command-line script of benchmarks/studies/, imported as a module (they import one another)."""
    monkeypatch.syspath_prepend(str(STUDIES))
    return importlib.import_module(name)


def make_run(path, config: dict, rows: list[dict]) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"run_info": {"seed": config.get("seed")}, **config}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def eval_rows(final: float, iterations: int = 4, env_steps_per_iteration: int = 1000, every: int = 1) -> list[dict]:
    """A learning curve rising linearly to ``final``, evaluated every ``every`` iterations."""
    rows = []
    for it in range(1, iterations + 1):
        row = {"iteration": it, "env_steps": it * env_steps_per_iteration, "grad_updates": it * 10,
               "wall_time_s": 2.0 * it, "losses/policy": 0.1}
        if it % every == 0 or it == iterations:
            score = final * it / iterations
            row.update(eval_return_mean=score * 30.0, eval_normalized_mean=score, eval_normalized_std=1.0,
                       eval_length_mean=100.0 + it)
        rows.append(row)
    return rows


def make_final_runs(root, finals: dict[tuple[str, str], list[float]]) -> None:
    """Runs under ``root``/task/algo/seedN (seeds from 1) whose curves end at the given final scores."""
    for (task, algo), scores in finals.items():
        for seed, final in enumerate(scores, start=1):
            make_run(root / task / algo / f"seed{seed}", {"task": task, "algo": algo, "seed": seed}, eval_rows(final))


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for (task, algo), finals in FINALS.items():
        for seed, final in enumerate(finals):
            make_run(root / task / algo / f"seed{seed}", {"task": task, "algo": algo, "seed": seed, "lr": 1e-4},
                     eval_rows(final))
    return root


def test_table_means_stds_bold_and_paper_column(runs_root, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["report", str(runs_root), "--out", str(out), "--bootstrap-reps", "100"]) == 0
    printed = capsys.readouterr().out

    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["task", "ODT", "ODT (paper)", "GRPO-DT", "GRPO-DT (paper)"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[1:3])}
    # hopper-random: GRPO 100 ± std([90,100,110]) = 8.16 is best; paper GRPO-DT 99.20 ± 3.80, ODT 30.43 ± 0.01,
    # neither bold: the paper's best on hopper-random is PPO-DT's 107.0, not a column here
    assert rows["hopper-random"][1:] == ["31.00 ± 0.82", "30.43 ± 0.01", "**100.00 ± 8.16**", "99.20 ± 3.80"]
    # walker2d-medium: ODT mean 81 beats GRPO 60; paper: ODT 76.49, GRPO-DT 158.34 (bold)
    assert rows["walker2d-medium"][1:] == ["**81.00 ± 1.41**", "76.49 ± 0.78", "60.00 ± 8.16", "**158.34 ± 3.75**"]
    assert "3 seed(s) per cell" in md
    # what the ± are: ours the population std (np.std, ddof 0: std([90, 100, 110]) = 8.16 above), the paper's as printed
    assert ("Our ± is the population standard deviation (ddof = 0, np.std) of the final scores over seeds; a "
            "*(paper)* column's ± is the std over 3 seeds that the paper's Table 1 prints") in md
    assert md.index("| walker2d-medium |") < md.index("Our ± is the population standard deviation")
    # per-run list: no iteration-0 evaluation here; the last quarter of iterations 1-4 is 3 and 4 (82.5, 110)
    assert "| hopper-random | GRPO-DT | 2 | – | 110.00 | 110.00 | 96.25 | 4 | no |" in md
    assert "100.00 ± 8.16" in printed and str(out / "report.csv") in printed

    with open(out / "report.csv") as handle:
        csv_rows = {(r["task"], r["algorithm"]): r for r in csv.DictReader(handle)}
    assert len(csv_rows) == 4
    grpo = csv_rows[("hopper-random", "GRPO-DT")]
    assert float(grpo["mean"]) == 100.0 and float(grpo["std"]) == pytest.approx(np.std([90, 100, 110]), abs=1e-4)
    assert grpo["n_seeds"] == "3" and float(grpo["paper_mean"]) == 99.20 and float(grpo["paper_std"]) == 3.80

    for task in ("hopper-random", "walker2d-medium"):
        png = out / f"curves_{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_last_evaluation_counts_and_x_axes(tmp_path):
    root = tmp_path / "runs"
    rows = eval_rows(50.0, iterations=5, every=2)  # evaluations at 2, 4, 5
    rows.append({"iteration": 6, "env_steps": 6000, "eval_normalized_mean": None})  # a NaN evaluation
    make_run(root / "a", {"task": "hopper-medium-v2", "algo": "ppo", "seed": 0}, rows)
    for x in (("env_steps",), ("wall_time_s",)):
        result = build_report(ReportConfig(run_dirs=(str(root),), out=str(tmp_path / x[0]), x=x, bootstrap_reps=100))
        (group,) = result["groups"].values()
        assert group.task == "hopper-medium" and group.label == "PPO-DT"  # -v2 suffix folded in
        assert group.scores == [50.0]
        assert (tmp_path / x[0] / "curves_hopper-medium.png").is_file()
    # several x axes: one figure with a panel each (wider than one panel)
    assert cli_main(["report", str(root), "--out", str(tmp_path / "all"), "--x", "iterations", "env_steps",
                     "wall_time_s", "--bootstrap-reps", "50"]) == 0
    from PIL import Image

    one = Image.open(tmp_path / "env_steps" / "curves_hopper-medium.png").size
    three = Image.open(tmp_path / "all" / "curves_hopper-medium.png").size
    assert three[0] > 2.5 * one[0] and three[1] == one[1]
    with pytest.raises(DtrlError, match="--x takes one or more of iterations, env_steps, wall_time_s, got steps"):
        build_report(ReportConfig(run_dirs=(str(root),), out=str(tmp_path / "bad"), x=("steps",)))


def test_hyperparameter_variants_become_separate_columns(tmp_path):
    root = tmp_path / "runs"
    for clip, finals in ((0.1, [10.0, 20.0]), (0.2, [40.0, 60.0])):
        for seed, final in enumerate(finals):
            make_run(root / f"clip{clip}-seed{seed}",
                     {"task": "hopper-random", "algo": "grpo", "seed": seed, "clip_eps": clip,
                      "init": f"runs/pretrain/seed{seed}", "out": f"runs/clip{clip}-seed{seed}"},
                     eval_rows(final))
    result = build_report(ReportConfig(run_dirs=(str(root),), out=str(tmp_path / "out"), bootstrap_reps=100))
    means = {label: g.mean for (_, label), g in result["groups"].items()}
    assert means == {"GRPO-DT (clip_eps=0.1)": 15.0, "GRPO-DT (clip_eps=0.2)": 50.0}
    assert "**50.00 ± 10.00**" in result["markdown"]


def test_raw_returns_for_tasks_without_reference_and_pretrain_runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "cheetah", {"task": "HalfCheetah-v5", "algo": "grpo", "seed": 0},
             [{"iteration": 1, "env_steps": 10, "eval_return_mean": 1234.5, "eval_normalized_mean": None}])
    make_run(root / "pre", {"task": "hopper-random", "seed": 0,
                            "run_info": {"command": ["/venv/bin/dtrl", "pretrain"]}},
             [{"iteration": 1, "eval_return_mean": 300.0, "eval_normalized_mean": 9.8}])
    make_run(root / "dt", {"task": "hopper-random", "seed": 0, "algo": "pretrain", "model": {"architecture": "dt"}},
             [{"iteration": 1, "eval_return_mean": 300.0, "eval_normalized_mean": 2.5}])
    make_run(root / "rf", {"task": "hopper-random", "seed": 0, "algo": "pretrain",
                           "model": {"architecture": "reinformer"}},
             [{"iteration": 1, "eval_return_mean": 300.0, "eval_normalized_mean": 3.5}])
    result = build_report(ReportConfig(run_dirs=tuple(str(root / n) for n in ("cheetah", "pre", "dt", "rf")),
                                       out=str(tmp_path / "o"), bootstrap_reps=100))
    groups = result["groups"]
    assert groups[("HalfCheetah-v5", "GRPO-DT")].metric == "raw"
    assert groups[("HalfCheetah-v5", "GRPO-DT")].scores == [1234.5]
    assert groups[("hopper-random", "pretrain")].scores == [9.8]
    assert groups[("hopper-random", "DT")].scores == [2.5]
    assert groups[("hopper-random", "Reinformer")].scores == [3.5]
    assert "HalfCheetah-v5 (raw return)" in result["markdown"]
    assert "1.98" in result["markdown"]  # the paper's DT on hopper-random-v2 beside ours


def test_curves_interpolated_when_seeds_evaluate_at_different_points():
    a = (np.array([0.0, 10.0]), np.array([0.0, 10.0]))
    b = (np.array([0.0, 5.0, 10.0]), np.array([0.0, 10.0, 10.0]))
    x, mean, std = mean_std_curve([a, b])
    assert x[0] == 0.0 and x[-1] == 10.0 and len(x) == 100
    mid = np.argmin(abs(x - 5.0))
    assert mean[mid] == pytest.approx((x[mid] + min(2 * x[mid], 10)) / 2)
    same_x, same_mean, same_std = mean_std_curve([a, (a[0], np.array([2.0, 4.0]))])
    assert same_x.tolist() == [0.0, 10.0] and same_mean.tolist() == [1.0, 7.0] and same_std.tolist() == [1.0, 3.0]


def test_paper_names():
    assert paper_dataset_name("hopper-random") == "hopper-random-v2"
    assert paper_dataset_name("door-human") == "door-human-v1"
    assert paper_dataset_name("antmaze-umaze") == "antmaze-umaze-v2"


def test_the_non_dt_reference_lines_are_named_and_come_after_the_papers_columns(tmp_path):
    root = tmp_path / "runs"
    for algo in ("sb3-sac", "grpo", "sb3-ppo", "iql"):
        make_run(root / algo, {"task": "hopper-random", "algo": algo, "seed": 0}, eval_rows(10.0))
    header = next(line for line in build_report(ReportConfig(run_dirs=(str(root),), out=str(tmp_path / "out"),
                                                             bootstrap_reps=100))["markdown"].splitlines()
                  if line.startswith("| task"))
    assert header.index("IQL") < header.index("GRPO-DT") < header.index("SB3 PPO") < header.index("SB3 SAC")
    assert "sb3" not in header


def test_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(DtrlError, match="no run directories"):
        build_report(ReportConfig(run_dirs=()))
    with pytest.raises(DtrlError, match="contains none"):
        build_report(ReportConfig(run_dirs=(str(tmp_path),)))
    make_run(tmp_path / "bad", {"task": "hopper-random", "algo": "grpo", "seed": 0}, [])
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"iteration": 1}\n{oops\n{"iteration": 3}\n')
    assert cli_main(["report", str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dtrl: error:") and "metrics.jsonl:2" in err and "\n" not in err
    make_run(tmp_path / "noeval", {"task": "hopper-random", "algo": "grpo", "seed": 0}, [{"iteration": 1}])
    with pytest.raises(DtrlError, match="has an evaluation"):
        build_report(ReportConfig(run_dirs=(str(tmp_path / "noeval"),), out=str(tmp_path / "o")))


def test_pretrained_dt_is_drawn_as_the_level_finetuning_starts_from(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    root = tmp_path / "runs"
    make_run(root / "dt", {"task": "hopper-random", "seed": 0, "algo": "pretrain"}, eval_rows(8.0, iterations=30))
    make_run(root / "grpo", {"task": "hopper-random", "seed": 0, "algo": "grpo"}, eval_rows(16.0, iterations=5))
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    build_report(ReportConfig(run_dirs=(str(root / "dt"), str(root / "grpo")), out=str(tmp_path / "o")))
    (ax,) = figures[0].axes
    labels = {line.get_label(): line for line in ax.lines}
    dt_line = labels["DT pretrained, final (n=1)"]
    assert np.allclose(dt_line.get_ydata(), 8.0)  # a horizontal level, not a curve over pretraining steps
    assert max(labels["GRPO-DT (n=1)"].get_xdata()) == 5


def test_statistics_and_a_report_rebuilt_from_its_evaluations_csv(runs_root, tmp_path):
    out = tmp_path / "report"
    first = build_report(ReportConfig(run_dirs=(str(runs_root),), out=str(out), bootstrap_reps=200))
    with open(out / "statistics.csv") as handle:
        stats = {(r["task"], r["algorithm"]): r for r in csv.DictReader(handle)}
    grpo = stats[("hopper-random", "GRPO-DT")]
    # finals 90, 100, 110: mean and IQM 100 (the IQM of 3 values is the middle one, weighted as rliable does)
    assert float(grpo["final_mean"]) == pytest.approx(100.0) and float(grpo["final_iqm"]) == pytest.approx(100.0)
    assert float(grpo["final_mean_lo"]) <= 100.0 <= float(grpo["final_mean_hi"])
    assert 90.0 <= float(grpo["final_mean_lo"]) and float(grpo["final_mean_hi"]) <= 110.0
    assert float(grpo["best_mean"]) >= float(grpo["final_mean"])
    assert "## Statistics over seeds" in (out / "report.md").read_text()
    assert (out / "performance_profile_hopper-random.png").read_bytes()[:4] == b"\x89PNG"
    # every evaluation row is in evaluations.csv, and the report rebuilt from it alone is the same table
    with open(out / "evaluations.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"iteration", "env_steps", "grad_updates", "wall_time_s", "eval_normalized_mean"} <= set(rows[0])
    assert [float(r["eval_length_mean"]) for r in rows[:4]] == [101.0, 102.0, 103.0, 104.0]
    assert len(rows) == sum(sum(1 for m in run.metrics if m.get("eval_return_mean") is not None)
                            for run in first["runs"])
    again = build_report(ReportConfig(from_csv=(str(out / "evaluations.csv"),), out=str(tmp_path / "again"),
                                      bootstrap_reps=200))
    assert again["markdown"] == first["markdown"]
    assert {m["eval_length_mean"] for run in again["runs"] for m in run.metrics} == {101, 102, 103, 104}
    # runs both on disk and in the CSV (a study continued across sessions) count once, the copy that
    # got further: here the CSV's, for a run whose directory holds only its first two iterations
    partial = runs_root / "hopper-random" / "grpo" / "seed2"
    lines = (partial / "metrics.jsonl").read_text().splitlines(keepends=True)
    (partial / "metrics.jsonl").write_text("".join(lines[:2]))
    both = build_report(ReportConfig(run_dirs=(str(runs_root),), from_csv=(str(out / "evaluations.csv"),),
                                     out=str(tmp_path / "both"), bootstrap_reps=200))
    assert both["markdown"] == first["markdown"] and len(both["runs"]) == len(first["runs"])
    with pytest.raises(DtrlError, match="not an evaluations.csv"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        build_report(ReportConfig(from_csv=(str(tmp_path / "bad.csv"),), out=str(tmp_path / "x")))


def test_finished_only_counts_finished_runs_and_lists_the_others(runs_root, tmp_path):
    finished = runs_root / "hopper-random" / "grpo" / "seed0"
    (finished / "final.json").write_text(json.dumps({"iteration": 4}))
    result = build_report(ReportConfig(run_dirs=(str(runs_root / "hopper-random" / "grpo"),), out=str(tmp_path / "r"),
                                       bootstrap_reps=100, finished_only=True))
    assert [len(group.runs) for group in result["groups"].values()] == [1]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "90.00" in md and "2 unfinished run(s) are listed above but not counted" in md
    with open(tmp_path / "r" / "evaluations.csv") as handle:  # all three stay in the CSV
        assert len({row["run"] for row in csv.DictReader(handle)}) == 3
    counted = build_report(ReportConfig(run_dirs=(str(runs_root / "hopper-random" / "grpo"),),
                                        out=str(tmp_path / "all"), bootstrap_reps=100))
    assert [len(group.runs) for group in counted["groups"].values()] == [3]
    assert "2 run(s) have not finished" in (tmp_path / "all" / "report.md").read_text()
    (finished / "final.json").unlink()
    with pytest.raises(DtrlError, match="none of the 3 run"):
        build_report(ReportConfig(run_dirs=(str(runs_root / "hopper-random" / "grpo"),), out=str(tmp_path / "n"),
                                  finished_only=True))


def test_an_ablation_reported_from_two_studies_csvs_is_paired_by_seed_and_dt(tmp_path, monkeypatch, capsys):
    """A lever study beside the study it varies, each committed as its own evaluations.csv: rebuilt
    from the CSVs alone, the runs split by the hyperparameter again and pair by (seed, pretrained DT)."""
    # its two DTs are a sweep's (one per pretraining seed: runs/pretrain/dt/seedN), so one column holds both
    monkeypatch.chdir(tmp_path)
    finals = {("base", 0, "dt0"): 60.0, ("base", 1, "dt0"): 55.0, ("base", 2, "dt0"): 38.0,
              ("base", 0, "dt1"): 37.0, ("lever", 0, "dt0"): 61.0, ("lever", 1, "dt0"): 49.0,
              ("lever", 2, "dt0"): 58.0}
    for (study, seed, dt), final in finals.items():
        lr = 1e-3 if study == "base" else 3e-4
        # the reference also evaluated at a second RTG: that does not make it another variant
        make_run(tmp_path / "runs" / study / f"seed{seed}-{dt}",
                 {"task": "hopper-random", "algo": "grpo", "seed": seed, "learning_rate": lr,
                  "init": f"runs/pretrain/dt/seed{dt[-1]}", "out": "elsewhere", "eval_other_rtg": study == "base"},
                 eval_rows(final, iterations=8))
        (tmp_path / "runs" / study / f"seed{seed}-{dt}" / "final.json").write_text("{}")
    for study in ("base", "lever"):
        build_report(ReportConfig(run_dirs=(f"runs/{study}",), out=f"results/{study}", bootstrap_reps=50))
        with open(f"results/{study}/evaluations.csv") as handle:  # within its own study nothing varies
            assert {row["label"] for row in csv.DictReader(handle)} == {"GRPO-DT"}
    code = cli_main(["report", "--from-csv", "results/base/evaluations.csv", "results/lever/evaluations.csv",
                     "--reference", "learning_rate=1e-3", "--out", "both", "--bootstrap-reps", "200"])
    assert code == 0
    with open(tmp_path / "both" / "paired.csv") as handle:
        pairs = list(csv.DictReader(handle))
    # seed 0's DT1 run has no lever partner; the three DT0 seeds pair up
    assert [(p["seed"], p["init"]) for p in pairs] == [(str(s), "runs/pretrain/dt/seed0") for s in (0, 1, 2)]
    assert {p["variant"] for p in pairs} == {"GRPO-DT (learning_rate=0.0003)"}
    assert {p["reference"] for p in pairs} == {"GRPO-DT (learning_rate=0.001)"}
    assert [float(p["variant_final"]) - float(p["reference_final"]) for p in pairs] == [1.0, -6.0, 20.0]
    # the curve rises linearly to the final score over 8 iterations: the last quarter (6, 7, 8) averages 7/8 of it
    assert float(pairs[0]["reference_late"]) == pytest.approx(60.0 * 7 / 8)
    assert (tmp_path / "both" / "paired_curves_hopper-random.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "both" / "report.md").read_text()
    assert "## Paired differences against the reference (learning_rate=1e-3)" in md
    # Δ final 1, -6, 20: mean 5, sd 13.45, t(0.975, 2) = 4.303 -> ±33.4 (a bootstrap of 3 values would
    # give just their range)
    assert "| 3 | +5.0 [-28.4, +38.4] | 2/3 |" in md and "0: 60.0 → 61.0; 1: 55.0 → 49.0; 2: 38.0 → 58.0" in md
    # an unfinished lever run is not paired (its "late" evaluations would not be late) but counted; the
    # reference's init spelled with a trailing slash is the same DT
    make_run(tmp_path / "runs" / "base" / "seed3-dt0", {"task": "hopper-random", "algo": "grpo", "seed": 3,
                                                        "learning_rate": 1e-3, "init": "runs/pretrain/dt/seed0/"},
             eval_rows(50.0, iterations=8))
    (tmp_path / "runs" / "base" / "seed3-dt0" / "final.json").write_text("{}")
    make_run(tmp_path / "runs" / "lever" / "seed3-dt0", {"task": "hopper-random", "algo": "grpo", "seed": 3,
                                                         "learning_rate": 3e-4, "init": "runs/pretrain/dt/seed0"},
             eval_rows(10.0, iterations=2))
    more = build_report(ReportConfig(run_dirs=("runs/base", "runs/lever"), out="more", bootstrap_reps=50,
                                     reference=("learning_rate=0.001",)))
    assert [p["seed"] for p in more["pairs"]] == [0, 1, 2]
    assert "1 run(s) of the variants are not paired" in (tmp_path / "more" / "report.md").read_text()
    (tmp_path / "runs" / "lever" / "seed3-dt0" / "final.json").write_text("{}")
    more = build_report(ReportConfig(run_dirs=("runs/base", "runs/lever"), out="more", bootstrap_reps=50,
                                     reference=("learning_rate=0.001",)))
    assert [p["seed"] for p in more["pairs"]] == [0, 1, 2, 3]
    # the same DT path holding other weights (pretrained again on another machine) is not the same DT:
    # runs that recorded the digests of their DTs pair only when the digests agree
    for study, digest in (("base", "aaa"), ("lever", "bbb")):
        config_file = tmp_path / "runs" / study / "seed3-dt0" / "config.json"
        config = json.loads(config_file.read_text())
        config["run_info"]["init_weights_sha256"] = digest
        config_file.write_text(json.dumps(config))
    more = build_report(ReportConfig(run_dirs=("runs/base", "runs/lever"), out="more", bootstrap_reps=50,
                                     reference=("learning_rate=0.001",)))
    assert [p["seed"] for p in more["pairs"]] == [0, 1, 2]
    assert {label for _, label in more["groups"]} == {"GRPO-DT (learning_rate=0.0003)", "GRPO-DT (learning_rate=0.001)"}
    rebuilt = build_report(ReportConfig(from_csv=("more/evaluations.csv",), out="rebuilt", bootstrap_reps=50,
                                        reference=("learning_rate=0.001",)))
    assert [p["seed"] for p in rebuilt["pairs"]] == [0, 1, 2]
    # a reference run of that other DT (same path, weights "bbb") is the lever run's partner
    again = tmp_path / "runs" / "base" / "seed3-dt0-again"
    make_run(again, {"task": "hopper-random", "algo": "grpo", "seed": 3, "learning_rate": 1e-3,
                     "init": "runs/pretrain/dt/seed0"}, eval_rows(20.0, iterations=8))
    (again / "final.json").write_text("{}")
    again_config = json.loads((again / "config.json").read_text())
    again_config["run_info"]["init_weights_sha256"] = "bbb"
    (again / "config.json").write_text(json.dumps(again_config))
    both_dts = build_report(ReportConfig(run_dirs=("runs/base", "runs/lever"), out="more", bootstrap_reps=50,
                                         reference=("learning_rate=0.001",)))
    assert [(p["seed"], p["reference_final"]) for p in both_dts["pairs"]][3] == (3, 20.0)
    shutil.rmtree(again)
    config_file.write_text(json.dumps({**config, "run_info": {**config["run_info"], "init_weights_sha256": "aaa"}}))
    more = build_report(ReportConfig(run_dirs=("runs/base", "runs/lever"), out="more", bootstrap_reps=50,
                                     reference=("learning_rate=0.001",)))
    assert [p["seed"] for p in more["pairs"]] == [0, 1, 2, 3]
    # CSVs written before configs and episode lengths were stored still load, under the label they carry
    with open("results/base/evaluations.csv") as handle:
        rows = list(csv.DictReader(handle))
    old_columns = [c for c in rows[0] if c not in ("config", "eval_length_mean")]
    with open("old.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    old = build_report(ReportConfig(from_csv=("old.csv",), out="old", bootstrap_reps=50))
    assert {label for _, label in old["groups"]} == {"GRPO-DT"}
    # ... and when such a CSV holds the copy of a run that got further than its directory, the run keeps
    # the directory's config: it is still labelled and paired by it
    metrics = tmp_path / "runs" / "base" / "seed0-dt0" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:3]))
    (tmp_path / "runs" / "base" / "seed0-dt0" / "final.json").unlink()
    mixed = build_report(ReportConfig(run_dirs=("runs/base", "runs/lever"), from_csv=("old.csv",), out="mixed",
                                      bootstrap_reps=50, reference=("learning_rate=0.001",)))
    assert [p["seed"] for p in mixed["pairs"]] == [0, 1, 2, 3] and mixed["pairs"][0]["reference_final"] == 60.0
    capsys.readouterr()
    assert cli_main(["report", "--from-csv", "results/base/evaluations.csv", "--reference", "lr"]) == 2
    assert "--reference takes KEY=VALUE" in capsys.readouterr().err
    assert cli_main(["report", "--from-csv", "results/base/evaluations.csv", "results/lever/evaluations.csv",
                     "--reference", "learning_rate=0.01", "--out", "none"]) == 2
    assert "no finished run of another variant has a finished reference run" in capsys.readouterr().err


def curve(scores: list[float]) -> list[dict]:
    """One evaluation per iteration with these normalised scores."""
    return [{"iteration": it, "env_steps": it * 100, "grad_updates": it, "wall_time_s": float(it),
             "eval_return_mean": s * 30.0, "eval_normalized_mean": s} for it, s in enumerate(scores, 1)]


def test_a_tuning_grid_chooses_each_methods_setting_and_the_comparison_specs_run_it(tmp_path, monkeypatch, capsys):
    """dtrl report --choose ranks each method's grid columns by the chosen criterion, and the flags it
    writes to chosen.csv become Table 1's and the claims' settings (benchmarks/calibrate_budget.py)."""
    monkeypatch.chdir(tmp_path)
    # grpo: lr 1e-3 ends highest (final 50) but falls at the end; lr 3e-4 holds a higher late level
    curves = {("grpo", 1e-3, "linear"): [10, 20, 30, 40, 70, 70, 70, 50],   # final 50, late 63.3
              ("grpo", 3e-4, "linear"): [10, 20, 30, 40, 60, 65, 65, 45],   # final 45, late 58.3
              ("grpo", 3e-4, "constant"): [10, 20, 30, 40, 66, 66, 66, 66],  # final 66, late 66
              ("odt", 1e-4, "constant"): [5, 5, 5, 5, 5, 5, 5, 5],
              ("odt", 1e-4, "linear"): [5, 5, 5, 5, 9, 9, 9, 9]}
    for (algo, lr, schedule), scores in curves.items():
        run = tmp_path / "runs" / "tuning" / algo / f"seed0-{lr}-{schedule}"
        make_run(run, {"task": "hopper-random", "algo": algo, "seed": 0, "learning_rate": lr,
                       "learning_rate_schedule": schedule, "init": "runs/pretrain/seed0"}, curve(scores))
        (run / "final.json").write_text("{}")
    # an unfinished run is left out with --finished-only, however well it did so far
    make_run(tmp_path / "runs" / "tuning" / "odt" / "seed0-0.001-constant",
             {"task": "hopper-random", "algo": "odt", "seed": 0, "learning_rate": 1e-3,
              "learning_rate_schedule": "constant"}, curve([90, 90]))
    assert cli_main(["report", "runs/tuning", "--finished-only", "--choose", "late", "--out", "tuning",
                     "--bootstrap-reps", "50"]) == 0
    with open("tuning/chosen.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["algo"], r["rank"], r["chosen"], r["flags"]) for r in rows] == [
        ("grpo", "1", "True", "--learning-rate 0.0003 --learning-rate-schedule constant"),
        ("grpo", "2", "False", "--learning-rate 0.001 --learning-rate-schedule linear"),
        ("grpo", "3", "False", "--learning-rate 0.0003 --learning-rate-schedule linear"),
        ("odt", "1", "True", "--learning-rate 0.0001 --learning-rate-schedule linear"),
        ("odt", "2", "False", "--learning-rate 0.0001 --learning-rate-schedule constant")]
    # the last quarter of 8 evaluations is iterations 6-8
    assert float(rows[1]["score"]) == pytest.approx((70 + 70 + 50) / 3) and float(rows[1]["final_mean"]) == 50
    md = (tmp_path / "tuning" / "report.md").read_text()
    assert "## Chosen settings (late score)" in md
    assert "One seed per column: a ranking of single runs" in md and "1 unfinished run(s) are not ranked" in md
    assert "| hopper-random | GRPO-DT | 1 | **GRPO-DT (learning_rate=0.0003, learning_rate_schedule=constant)** |" in md
    # by the final score, the same grid ranks lr 1e-3 above lr 3e-4 linear
    by_final = build_report(ReportConfig(run_dirs=("runs/tuning",), finished_only=True, choose="final",
                                         out="final", bootstrap_reps=50))["choices"]
    assert [r["flags"] for r in by_final if r["algo"] == "grpo"][1:] == [
        "--learning-rate 0.001 --learning-rate-schedule linear",
        "--learning-rate 0.0003 --learning-rate-schedule linear"]

    # the chosen flags go into the specs of the comparison, which still parse for every trial
    presets = study_script(monkeypatch, "calibrate_budget").cpu_presets("hopper-random")
    budget = tmp_path / "budget.csv"
    with open(budget, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=report_budget.COLUMNS)
        writer.writeheader()
        writer.writerows({"task": "hopper-random", "method": m, "minutes": 20, "iterations": 3, "env_steps": 1,
                          "grad_updates": 1, "wall_time_s": 1, "cpu": "x", "date": "d", "commit": "c"}
                         for m in report_budget.METHODS)
    with pytest.raises(DtrlError, match="no chosen setting for grpo-q, ppo, odt-td3, iql, sb3-sac, sb3-ppo"):
        report_budget.write_specs("hopper-random", 20.0, tmp_path / "sweeps", budget, Path("tuning/chosen.csv"),
                                  presets=presets)
    with open("tuning/chosen.csv", "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writerows({**rows[0], "algo": m, "flags": "--learning-rate 0.001"}
                         for m in report_budget.METHODS if m not in ("grpo", "odt"))
    # a choice that does not set every option of the grid (its grid was not all in the report)
    with pytest.raises(DtrlError, match="the setting chosen for grpo-q .* does not set --learning-rate-schedule"):
        report_budget.write_specs("hopper-random", 20.0, tmp_path / "sweeps", budget, Path("tuning/chosen.csv"),
                                  presets=presets)
    text = Path("tuning/chosen.csv").read_text().replace("--learning-rate 0.001\n",
                                                           "--learning-rate 0.001 --learning-rate-schedule linear\n")
    # ... or one that sets what the comparison's specs set themselves (here a claim's switch)
    Path("tuning/chosen.csv").write_text(text.replace("schedule linear\n", "schedule linear --hindsight-relabel\n"))
    with pytest.raises(DtrlError, match="sets --hindsight-relabel, which the comparison's specs set themselves"):
        report_budget.write_specs("hopper-random", 20.0, tmp_path / "sweeps", budget, Path("tuning/chosen.csv"),
                                  presets=presets)
    Path("tuning/chosen.csv").write_text(text)
    # a method calibrated again (--again, after its code got faster) keeps one row: the new one
    report_budget.record_row({"task": "hopper-random", "method": "grpo", "minutes": 20.0, "iterations": 7,
                              "env_steps": 2, "grad_updates": 2, "wall_time_s": 2, "cpu": "x", "date": "e",
                              "commit": "f"}, budget)
    assert [(r["method"], r["iterations"]) for r in report_budget.read_budget(budget)].count(("grpo", "7")) == 1
    assert len(report_budget.read_budget(budget)) == len(report_budget.METHODS)
    report_budget.write_specs("hopper-random", 20.0, tmp_path / "sweeps", budget, Path("tuning/chosen.csv"),
                              presets=presets)
    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    table1 = tomllib.loads((tmp_path / "sweeps" / "table1_cpu.toml").read_text())
    assert "--learning-rate 0.0003 --learning-rate-schedule constant" in " ".join(table1["algo_args"]["grpo"])
    assert table1["algo_args"]["grpo"][:2] == ["--iterations", "7"]
    assert "--dataset data/{task}.hdf5 --learning-rate 0.0001 --learning-rate-schedule linear" in " ".join(
        table1["algo_args"]["odt"])
    claim = tomllib.loads((tmp_path / "sweeps" / "claims.toml").read_text())
    assert claim["algo_args"]["ppo"][-4:] == ["--learning-rate", "0.001", "--learning-rate-schedule", "linear"]
    # the preset's own value (false) is Table 1's run, not rerun
    assert claim["studies"]["fig1a_relabel"]["overrides"] == {"hindsight_relabel": [True]}
    tuning = tomllib.loads((tmp_path / "sweeps" / "tuning_cpu.toml").read_text())
    assert "--learning-rate" not in tuning["algo_args"]["grpo"]  # the grid itself sets the lr
    # Table 1 and the claims (paired with it) score held-out seeds, each with its pretrained DT
    assert not set(table1["seeds"]) & set(tuning["seeds"]) and claim["seeds"] == table1["seeds"]
    pretrain = tomllib.loads((Path(__file__).resolve().parents[1] / "sweeps" / "pretrain.toml").read_text())
    assert set(table1["seeds"]) | set(tuning["seeds"]) <= set(pretrain["seeds"])
    capsys.readouterr()
    assert cli_main(["sweep", str(tmp_path / "sweeps" / "table1_cpu.toml"), "--dry-run"]) == 0
    assert "--learning-rate 0.0003 --learning-rate-schedule constant" in capsys.readouterr().out
    # every claim's trials: the tuned setting plus its switch, into runs/claims/<claim>
    assert cli_main(["sweep", str(tmp_path / "sweeps" / "claims.toml"), "--dry-run", "--only", "algo=ppo"]) == 0
    out = capsys.readouterr().out
    assert "3 trials (of 36, by --only)" in out and out.count("--learning-rate 0.001 --learning-rate-schedule linear "
                                                             "--hindsight-relabel") == 3
    assert "runs/claims/fig1a_relabel/hopper-random/ppo/seed1-hindsight_relabel=true" in out


def test_each_finetuning_run_is_measured_against_the_policy_it_started_from(tmp_path):
    """The improvement section compares each run's final score with its own iteration-0 evaluation;
    offline pretraining runs (whose iteration 0 is an untrained model) have no such row."""
    for seed, scores in ((0, [5, 7, 9]), (1, [5, 4, 3])):
        rows = curve(scores)
        for row in rows:
            row["iteration"] -= 1  # evaluations at iterations 0, 1, 2
        make_run(tmp_path / "runs" / f"odt{seed}", {"task": "hopper-random", "algo": "odt", "seed": seed}, rows)
    pretrain = curve([0.5, 6.0])
    pretrain[0]["iteration"] = 0
    make_run(tmp_path / "runs" / "dt", {"task": "hopper-random", "algo": "pretrain", "seed": 0}, pretrain)
    result = build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "out"),
                                       bootstrap_reps=50))
    md = (tmp_path / "out" / "report.md").read_text()
    # Δ = +4 and -2: mean +1, sd 4.24, t(0.975, 1) = 12.71 -> ±38.1
    assert "| hopper-random | ODT | 2 | 5.0 | 6.0 | +1.0 [-37.1, +39.1] | 1/2 |" in md
    assert "| hopper-random | DT |" not in md.split("## Improvement over the starting point")[1].split("##")[0]
    assert tmp_path / "out" / "improvement.csv" in result["files"]


def test_paired_curves_draw_each_variant_beside_only_its_paired_reference_runs(tmp_path, monkeypatch):
    import dtrl.report.plots as plots

    for lr, seeds in ((1e-3, (0, 1, 2)), (3e-4, (0, 1)), (3e-3, (2,))):
        for seed in seeds:
            run = tmp_path / "runs" / f"lr{lr}-seed{seed}"
            make_run(run, {"task": "hopper-random", "algo": "grpo", "seed": seed, "learning_rate": lr,
                           "init": "runs/pretrain/dt0"}, eval_rows(10.0 * (seed + 1), iterations=4))
            (run / "final.json").write_text("{}")
    drawn = []
    original = plots.draw_curves

    def record(axes, groups, x_names, colors, **options):
        drawn.append(sorted((g.label, sorted(r.seed for r in g.runs)) for g in groups))
        original(axes, groups, x_names, colors, **options)

    monkeypatch.setattr(plots, "draw_curves", record)
    build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "out"), bootstrap_reps=50,
                              reference=("learning_rate=0.001",)))
    # paired_curves_<task>.png: one row per variant, with the reference's runs of its seeds only; then
    # curves_<task>.png with every run of every column
    assert drawn == [
        [("GRPO-DT (learning_rate=0.0003)", [0, 1]), ("GRPO-DT (learning_rate=0.001)", [0, 1])],
        [("GRPO-DT (learning_rate=0.001)", [2]), ("GRPO-DT (learning_rate=0.003)", [2])],
        [("GRPO-DT (learning_rate=0.0003)", [0, 1]), ("GRPO-DT (learning_rate=0.001)", [0, 1, 2]),
         ("GRPO-DT (learning_rate=0.003)", [2])]]
    assert (tmp_path / "out" / "paired_curves_hopper-random.png").is_file()


def test_episode_lengths_splits_a_score_into_speed_and_survival_by_phase(tmp_path, monkeypatch, capsys):
    """dtrl.report.episodes (benchmarks/studies/episode_lengths.py) reads a report's evaluations.csv: per phase
    of the runs, the mean over runs of score, episode length, return per step and the share of evaluations at
    the time limit."""
    episode_lengths = study_script(monkeypatch, "episode_lengths")
    # two runs of 8 iterations: iteration 0 (start) and two evaluations per quarter
    for seed, lengths in enumerate(([50, 100, 100, 200, 200, 300, 300, 1000, 1000],
                                    [50, 100, 100, 400, 400, 300, 300, 500, 500])):
        rows = [{"iteration": it, "env_steps": it, "eval_normalized_mean": float(it), "eval_return_mean": 2.0 * n,
                 "eval_length_mean": float(n)} for it, n in enumerate(lengths)]
        make_run(tmp_path / "runs" / f"seed{seed}",
                 {"task": "hopper-random", "algo": "grpo", "seed": seed, "iterations": 8}, rows)
    build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "r"), bootstrap_reps=20))
    runs = episodes.read_runs([str(tmp_path / "r" / "evaluations.csv")], finished_only=False)
    table = {row[0]: row[1:] for row in episodes.phase_table(runs, max_steps=1000)}
    assert list(table) == ["start", "0-25%", "25-50%", "50-75%", "75-100%"]
    assert table["start"] == pytest.approx((2, 0.0, 50.0, 2.0, 0.0))
    assert table["25-50%"] == pytest.approx((2, 3.5, 300.0, 2.0, 0.0))  # lengths 200 and 400
    assert table["75-100%"] == pytest.approx((2, 7.5, 750.0, 2.0, 0.5))  # one run at the limit
    episode_lengths.main([str(tmp_path / "r" / "evaluations.csv")])
    printed = capsys.readouterr().out
    assert "hopper-random, GRPO-DT: 2 runs" in printed and "| 75-100% | 2 | 7.5 | 750 | 2.00 | 50% |" in printed
    # a run in two files (a study continued across sessions) counts once, by the copy that got further,
    # and a copy that stopped early is split by the iterations it was set to do (8), not by how far it got
    with open(tmp_path / "r" / "evaluations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(tmp_path / "partial.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for row in rows if row["run"].endswith("seed0") and int(row["iteration"]) <= 4)
    for files in (["partial.csv", "r/evaluations.csv"], ["r/evaluations.csv", "partial.csv"]):
        both = episodes.read_runs([str(tmp_path / f) for f in files], finished_only=False)
        assert sorted(len(run.metrics) for run in both.values()) == [9, 9]
    partial = episodes.read_runs([str(tmp_path / "partial.csv")], finished_only=False)
    assert [row[:3] for row in episodes.phase_table(partial, max_steps=1000)] == [
        ("start", 1, 0.0), ("0-25%", 1, 1.5), ("25-50%", 1, 3.5)]
    # a CSV written before episode lengths were stored is refused, not read as zeros
    (tmp_path / "old.csv").write_text("run,finished,iteration,eval_normalized_mean,eval_return_mean\nr,1,0,1,1\n")
    with pytest.raises(DtrlError, match="no eval_length_mean column"):
        episodes.read_runs([str(tmp_path / "old.csv")], finished_only=False)
    with pytest.raises(SystemExit, match="error: .*old.csv has no eval_length_mean column"):
        episode_lengths.main([str(tmp_path / "old.csv")])


def test_claims_table_pairs_each_switch_with_table_1_and_applies_the_verdict_rule(tmp_path, monkeypatch):
    """dtrl.report.claims (benchmarks/studies/claims_table.py): each claim's runs against Table 1's run of the
    same method, seed and DT;
    a verdict only where both intervals (final, late) lie on one side, pending below 3 pairs, and pairs
    whose runs differ in more than the switch left out."""
    claims_table = study_script(monkeypatch, "claims_table")
    presets = study_script(monkeypatch, "calibrate_budget").cpu_presets("hopper-random")
    monkeypatch.chdir(tmp_path)
    # every switched value the claims' specs run has the paper's direction written down
    for claim, (algos, overrides) in report_claims.CLAIMS.items():
        for algo in algos:
            (switch, _), = overrides.items()
            kept = report_claims.without_preset_values(presets, [algo], overrides)[switch]
            assert set(kept) == set(report_claims.PAPER[claim][2]), claim
    preset = {"hindsight_relabel": False, "reset_sampling": "active", "sub_trajectory_length": 15,
              "ratio_level": "sequence", "learning_rate": 1e-3}

    def run(root, algo, seed, scores, finished=True, rtg=7200.0, **switched):
        path = tmp_path / "runs" / root / algo / "-".join([f"seed{seed}", *map(str, switched.values())])
        target = {"eval_target_rtg": rtg} if rtg else {}
        make_run(path, {"task": "hopper-random", "algo": algo, "seed": seed, "init": f"runs/pretrain/seed{seed}",
                        **preset, **switched}, [{**row, "iteration": row["iteration"] - 1, **target}
                                                for row in curve(scores)])
        if finished:
            (path / "final.json").write_text("{}")

    for seed in (1, 2, 3):
        run("table1", "grpo", seed, [7, 20, 40, 50 + seed, 60 + seed])
        run("table1", "ppo", seed, [7, 20, 30, 30, 30])
        run("table1", "grpo-q", seed, [7, 10, 20, 25, 30 + 2 * seed])
        run("table1", "odt", seed, [7, 9, 11, 13, 15], rtg=3600.0)
        # relabelling falls in every pair (agrees); uniform reset points rise (disagrees); L_traj 5 goes
        # both ways (inconclusive); PPO's relabelled runs: 2 of 3 finished (pending)
        # relabelled runs are evaluated at the task's eval RTG, Table 1's GRPO-DT and PPO-DT at g_online
        run("claims/fig1a_relabel", "grpo", seed, [7, 20, 20, 10, 10 - seed], rtg=3600.0, hindsight_relabel=True)
        run("claims/fig1a_relabel", "ppo", seed, [7, 9, 9, 9, 9], finished=seed < 3, rtg=3600.0,
            hindsight_relabel=True)
        run("claims/fig1e_reset_sampling", "grpo", seed, [7, 30, 60, 80 + seed, 90], rtg=None, reset_sampling="uniform")
        run("claims/fig3a_sub_trajectory_length", "grpo", seed, [7, 20, 40, 50 + seed, 60 + (-12, 9, 4)[seed - 1]],
            sub_trajectory_length=5)
        # token ratios: lower at the end on every seed (final) but higher over the last quarter (late)
        run("claims/fig1d_ratio_level", "grpo", seed, [7, 20, 40, 90, 55 + seed], ratio_level="token")
        # geometric ratios run at another lr (a spec older than Table 1's): never paired, however they did
        run("claims/fig1d_ratio_level", "grpo", seed, [7, 1, 1, 1, 1], ratio_level="geometric",
            learning_rate=3e-4)
    for study in ("table1", *(f"claims/{c}" for c in ("fig1a_relabel", "fig1e_reset_sampling",
                                                      "fig3a_sub_trajectory_length", "fig1d_ratio_level"))):
        build_report(ReportConfig(run_dirs=(f"runs/{study}",), out=f"results/{study}", bootstrap_reps=20))
    assert claims_table.main(["--table1", "results/table1/evaluations.csv", "--claims", "results/claims",
                              "--out", "claims.md"]) == 0
    with open("claims.csv", newline="") as handle:
        rows = {(r["claim"], r["method"], r["value"]): r for r in csv.DictReader(handle)}
    relabel = rows[("fig1a_relabel", "grpo", "true")]
    assert relabel["verdict"] == "agrees" and float(relabel["d_final"]) == pytest.approx(-(60 + 2) + (10 - 2))
    # beside the Δs, each side's own scores (mean with a bootstrap interval, per seed) and the claim's report
    assert float(relabel["preset_final"]) == pytest.approx(62.0) and float(relabel["value_final"]) == pytest.approx(8.0)
    assert float(relabel["preset_final_lo"]) <= 62.0 <= float(relabel["preset_final_hi"]) <= 63.0
    assert relabel["finals"] == "1: 61.0 → 9.0; 2: 62.0 → 8.0; 3: 63.0 → 7.0"
    assert relabel["report"] == "results/claims/fig1a_relabel/report.md"
    assert "[report](results/claims/fig1a_relabel/report.md)" in Path("claims.md").read_text()
    assert rows[("fig1a_relabel", "ppo", "true")]["verdict"] == "pending (2 of 3 pairs)"
    # the RTG each side was scored at, from the runs' eval_target_rtg; a Δ across two RTGs is pointed out
    text = Path("claims.md").read_text()
    assert (relabel["preset_rtg"], relabel["value_rtg"]) == ("7200", "3600")
    assert "| 0/3 | agrees | 7200 → 3600 |" in text and "| scored at RTG |" in text
    assert "| Fig. 1e | grpo | reset_sampling | active → uniform |" in text and "| disagrees | 7200 → – |" in text
    assert "| Fig. 1b | grpo | full_trajectories | false → true | 0 | 0 |" in text  # no pairs: no RTG
    assert ("Scored at different target RTGs (preset → switched), so their Δ holds the change of target too: "
            "Fig. 1a grpo false → true (7200 → 3600); Fig. 1a ppo false → true (7200 → 3600); "
            "Fig. 3c grpo-q ODT (3600 → 7200).") in text
    assert (rows[("fig3c_q_guided", "grpo-q", "its start")]["preset_rtg"], rows[("fig3c_q_guided", "grpo-q", "ODT")]
            ["preset_rtg"]) == ("7200", "3600")
    assert rows[("fig1e_reset_sampling", "grpo", "uniform")]["verdict"] == "disagrees"
    assert rows[("fig3a_sub_trajectory_length", "grpo", "5")]["verdict"] == "inconclusive"
    assert rows[("fig3a_sub_trajectory_length", "grpo", "45")]["verdict"] == "pending (0 of 3 pairs)"
    token = rows[("fig1d_ratio_level", "grpo", "token")]
    assert token["verdict"] == "inconclusive" and float(token["d_final_hi"]) < 0 < float(token["d_late_lo"])
    geometric = rows[("fig1d_ratio_level", "grpo", "geometric")]
    assert (geometric["runs"], geometric["pairs"], geometric["excluded"]) == ("3", "0", "3")
    assert geometric["verdict"] == "pending (0 of 3 pairs)" and "learning_rate=0.0003" in geometric["excluded_because"]
    # Fig. 3c from Table 1 alone: Q-guided GRPO against its start, and beside three columns (no verdict)
    assert rows[("fig3c_q_guided", "grpo-q", "its start")]["verdict"] == "agrees"
    against_grpo = rows[("fig3c_q_guided", "grpo-q", "GRPO-DT")]
    assert against_grpo["verdict"] == "no claim" and float(against_grpo["d_final"]) == pytest.approx(-30 + 2)
    assert rows[("fig3c_q_guided", "grpo-q", "ODT")]["pairs"] == "3"
    assert rows[("fig3c_q_guided", "grpo-q", "ODT+TD3")]["verdict"] == "pending (0 of 3 pairs)"
    # the claims' own verdicts: pending while any value is, else one verdict or mixed
    verdicts = dict(line.split(" | ")[0::2] for line in Path("claims.md").read_text().splitlines()
                    if line.startswith("| Fig. ") and line.count(" | ") == 2)
    assert verdicts == {"| Fig. 1a": "**pending** |", "| Fig. 1b": "**pending** |", "| Fig. 1c": "**pending** |",
                        "| Fig. 1d": "**pending** |", "| Fig. 1e": "**disagrees** |", "| Fig. 3a": "**pending** |",
                        "| Fig. 3b": "**pending** |", "| Fig. 3c": "**agrees** |"}
    values = [{"expected": -1, "verdict": "agrees"}, {"expected": -1, "verdict": "inconclusive"},
              {"expected": 0, "verdict": "no claim"}]
    assert report_claims.claim_verdict(values) == "mixed" and report_claims.claim_verdict(values[:1]) == "agrees"
    assert "Excluded pairs" in Path("claims.md").read_text()
    assert ("Regenerate: `python benchmarks/studies/claims_table.py --table1 results/table1/evaluations.csv --claims "
            "results/claims --task hopper-random --out claims.md`") in Path("claims.md").read_text()
    # the hand-written reading of the curves goes after the computed tables, when there is one
    assert "What the curves show" not in Path("claims.md").read_text()
    Path("results/claims/notes.md").write_text("**Fig. 1a.** Relabelling peaks early, then falls.\n")
    assert claims_table.main(["--table1", "results/table1/evaluations.csv", "--claims", "results/claims",
                              "--out", "claims.md"]) == 0
    text = Path("claims.md").read_text()
    assert text.index("| Fig. 3c | grpo-q |") < text.index("**Fig. 1a.** Relabelling peaks early, then falls.")
    # dtrl report --reference says so too when a pair differs in more than the reference's keys
    mixed = build_report(ReportConfig(run_dirs=("runs/table1", "runs/claims/fig1d_ratio_level"), out="mixed",
                                      reference=("ratio_level=sequence",), bootstrap_reps=20))
    assert {p["other_differences"] for p in mixed["pairs"]} == {"", "learning_rate=0.0003 (reference 0.001)"}
    assert "pair(s) differ in more than the reference's keys" in Path("mixed/report.md").read_text()


def test_only_reports_the_runs_whose_config_matches(tmp_path, monkeypatch, capsys):
    """--only: a GRPO-DT ablation reported beside the GRPO-DT runs of Table 1's whole evaluations.csv,
    without its other methods; columns named by what still varies among the runs kept."""
    monkeypatch.chdir(tmp_path)
    for algo, seed, ratio, lr in [("grpo", 1, "sequence", 1e-3), ("grpo", 2, "sequence", 3e-4),
                                  ("ppo", 1, "sequence", 1e-3), ("grpo", 1, "token", 1e-3)]:
        study = "table1" if ratio == "sequence" else "claim"
        path = tmp_path / "runs" / study / algo / f"seed{seed}"
        make_run(path, {"task": "hopper-random", "algo": algo, "seed": seed, "ratio_level": ratio,
                        "learning_rate": lr}, eval_rows(10.0 * seed))
        (path / "final.json").write_text("{}")
    build_report(ReportConfig(run_dirs=("runs/table1",), out="table1", bootstrap_reps=20))
    assert cli_main(["report", "runs/claim", "--from-csv", "table1/evaluations.csv", "--only", "algo=grpo",
                     "--out", "claim", "--bootstrap-reps", "20"]) == 0
    with open("claim/evaluations.csv") as handle:
        kept = {(row["run"], row["label"]) for row in csv.DictReader(handle)}
    assert {run for run, _ in kept} == {"runs/table1/grpo/seed1", "runs/table1/grpo/seed2", "runs/claim/grpo/seed1"}
    # seed 1 alone: learning_rate no longer tells its runs apart, ratio_level does
    one_seed = build_report(ReportConfig(run_dirs=("runs",), only=("seed=1", "algo=grpo"), out="seed1",
                                         bootstrap_reps=20))
    assert {run.label for run in one_seed["runs"]} == {"GRPO-DT (ratio_level=sequence)", "GRPO-DT (ratio_level=token)"}
    # a key given twice matches either value
    both = build_report(ReportConfig(run_dirs=("runs",), only=("algo=ppo", "algo=grpo"), out="both", bootstrap_reps=20))
    assert len(both["runs"]) == 4
    assert cli_main(["report", "runs", "--only", "ratio=token"]) == 2
    assert "--only ratio: no run's config.json has this key" in capsys.readouterr().err
    assert cli_main(["report", "runs", "--only", "algo=iql"]) == 2
    assert "--only algo=iql: none of the 4 run(s) matches" in capsys.readouterr().err


def test_report_shows_both_target_rtgs_and_what_each_method_spent(tmp_path):
    """Table 1 at CPU scale reports both evaluation RTGs where runs have them (--eval-other-rtg), and per
    column the iterations, env steps, updates (per iteration without IQL's offline phase) and wall time of
    its finished runs, at their last evaluation."""
    for seed, (own, other) in enumerate(((50.0, 40.0), (70.0, 44.0))):
        rows = [{"iteration": it, "env_steps": 5000 * it, "grad_updates": 4 * it, "wall_time_s": 60.0 * it,
                 "eval_normalized_mean": own * it / 2, "eval_return_mean": 30 * own * it / 2,
                 "eval_target_rtg": 7200.0, "eval_other_normalized_mean": other * it / 2,
                 "eval_other_return_mean": 30 * other * it / 2, "eval_other_target_rtg": 3600.0} for it in range(3)]
        path = tmp_path / "runs" / "grpo" / f"seed{seed}"
        # a training row after the last evaluation (a run killed mid-interval, then marked finished):
        # the counters are read at the last evaluation, as from evaluations.csv
        make_run(path, {"task": "hopper-random", "algo": "grpo", "seed": seed},
                 rows + [{"iteration": 3, "env_steps": 15000, "grad_updates": 12, "wall_time_s": 180.0}])
        (path / "final.json").write_text("{}")
    # an unfinished run's spend so far is left out
    make_run(tmp_path / "runs" / "grpo" / "seed9", {"task": "hopper-random", "algo": "grpo", "seed": 9},
             [{"iteration": 1, "env_steps": 99, "grad_updates": 99, "wall_time_s": 9.0, "eval_normalized_mean": 1.0,
               "eval_return_mean": 30.0}])
    # IQL: 5000 offline updates before iteration 1, then 1000 steps and 1000 updates per iteration
    make_run(tmp_path / "runs" / "iql" / "seed0", {"task": "hopper-random", "algo": "iql", "seed": 0},
             [{"iteration": it, "env_steps": 1000 * it, "grad_updates": 5000 + 1000 * it, "wall_time_s": 120.0 * it,
               "eval_normalized_mean": 5.0, "eval_return_mean": 150.0} for it in range(5)])
    (tmp_path / "runs" / "iql" / "seed0" / "final.json").write_text("{}")
    # a pretrained DT evaluated during its pretraining: its clock is not a finetuning budget's
    make_run(tmp_path / "runs" / "pretrain" / "seed0", {"task": "hopper-random", "algo": "pretrain", "seed": 0},
             [{"iteration": it, "env_steps": 0, "grad_updates": 100 * it, "wall_time_s": 60.0 * it,
               "eval_normalized_mean": 3.0 * it, "eval_return_mean": 90.0 * it} for it in range(4)])
    result = build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "r"), bootstrap_reps=20,
                                       at_minutes=1.5))
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| hopper-random | GRPO-DT | 2 | 7200 | 60.00 ± 10.00 | 3600 | 42.00 ± 2.00 |" in md
    # their ± say what they are (np.std: std([50, 70]) = 10 above)
    population = "the population standard deviation (ddof = 0, np.std)"
    assert f"mean ± std over the runs that have both; ± is {population} over those runs." in md
    assert f"Score: mean ± std over the runs, ± being {population}." in md
    # at 1.5 minutes: GRPO-DT's runs had evaluated iteration 1 (at 60 s), IQL only its iteration 0
    assert "## Score after 1.5 minutes of wall-clock time" in md
    assert "| hopper-random | GRPO-DT | 2 | 30.00 ± 5.00 | 1 | 5,000 | 60.00 |" in md
    assert "| hopper-random | IQL | 1 | 5.00 ± 0.00 | 0 | 0 | 5.00 |" in md
    at_time = md.split("## Score after 1.5 minutes")[1].split("\n## ")[0]
    assert "| hopper-random | DT |" in md and "| hopper-random | DT |" not in at_time
    assert "Pretrained DTs are not listed" in at_time
    with pytest.raises(DtrlError, match="--at-minutes must be >= 0"):
        build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "r3"), at_minutes=-1))
    assert "| hopper-random | IQL |" not in md.split("## Both target RTGs")[1].split("##")[0]  # no second RTG
    assert "| hopper-random | GRPO-DT | 2 | 2 | 10,000 | 8 | 5,000.0 | 4.0 | 2.0 (2.0–2.0) |" in md
    assert "| hopper-random | IQL | 1 | 4 | 4,000 | 9,000 | 1,000.0 | 1,000.0 | 8.0 (8.0–8.0) |" in md
    assert {p.name for p in result["files"]} >= {"other_rtg.csv", "compute.csv", "at_time.csv"}
    # both come back from the committed CSV alone
    again = build_report(ReportConfig(from_csv=(str(tmp_path / "r" / "evaluations.csv"),), out=str(tmp_path / "r2"),
                                      bootstrap_reps=20))
    assert {p.name for p in again["files"]} >= {"other_rtg.csv", "compute.csv"}
    assert (tmp_path / "r2" / "compute.csv").read_text() == (tmp_path / "r" / "compute.csv").read_text()


def test_a_grid_is_drawn_one_row_of_panels_per_algorithm(tmp_path):
    """A tuning grid (several columns per algorithm) gets one row of curves per algorithm, legends naming
    only what sets a column apart; a one-column-per-method table keeps one panel."""
    import matplotlib.image

    for algo in ("grpo", "odt"):
        for lr in (1e-4, 1e-3):
            make_run(tmp_path / "grid" / algo / f"lr{lr}", {"task": "hopper-random", "algo": algo, "seed": 0,
                                                           "learning_rate": lr}, eval_rows(10.0))
            if lr == 1e-4:
                make_run(tmp_path / "table" / algo, {"task": "hopper-random", "algo": algo, "seed": 0,
                                                     "learning_rate": lr}, eval_rows(10.0))
    heights = {}
    for name in ("grid", "table"):
        build_report(ReportConfig(run_dirs=(str(tmp_path / name),), out=str(tmp_path / f"r_{name}"),
                                  bootstrap_reps=20))
        heights[name] = matplotlib.image.imread(tmp_path / f"r_{name}" / "curves_hopper-random.png").shape[0]
    assert heights["grid"] == 2 * heights["table"]
    from dtrl.report import _variant_text, group_runs, load_runs

    groups = group_runs(load_runs((str(tmp_path / "grid"),), ()))
    assert sorted(_variant_text(g) for g in groups.values()) == ["learning_rate=0.0001", "learning_rate=0.0001",
                                                                  "learning_rate=0.001", "learning_rate=0.001"]


def test_training_metrics_are_averaged_between_evaluations_kept_in_the_csv_and_drawn(tmp_path, capsys):
    # evaluations at iterations 2 and 4; the loss logged at 1..4 is 1, 2, 3, 4 (seed 0) or twice that (seed 1)
    for seed in (0, 1):
        rows = eval_rows(10.0, iterations=4, every=2)
        for row in rows:
            row["losses/actor_q"] = (seed + 1) * float(row["iteration"])
        make_run(tmp_path / "runs" / f"seed{seed}", {"task": "hopper-random", "algo": "odt-td3", "seed": seed}, rows)
    out = tmp_path / "report"
    first = build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(out), bootstrap_reps=50,
                                      training_metrics=("losses/actor_q",)))
    with open(out / "evaluations.csv") as handle:
        rows = list(csv.DictReader(handle))
    # the mean since the previous evaluation: (1 + 2) / 2 and (3 + 4) / 2, doubled for seed 1
    assert [float(r["losses/actor_q"]) for r in rows] == [1.5, 3.5, 3.0, 7.0]
    with open(out / "training.csv") as handle:
        (summary,) = list(csv.DictReader(handle))
    assert summary["metric"] == "losses/actor_q" and summary["runs"] == "2"
    assert float(summary["first_mean"]) == pytest.approx(2.25) and float(summary["last_mean"]) == pytest.approx(5.25)
    assert "## Training metrics" in (out / "report.md").read_text()
    assert ("the figure `training_<task>`, mean ± std over seeds, ± being the population standard deviation (ddof = 0, "
            "np.std).") in (out / "report.md").read_text()
    assert (out / "training_hopper-random.png").read_bytes()[:4] == b"\x89PNG"
    # rebuilt from the CSV alone (no --training-metrics), the column and the section come back unchanged
    again = tmp_path / "again"
    build_report(ReportConfig(from_csv=(str(out / "evaluations.csv"),), out=str(again), bootstrap_reps=50))
    assert (again / "evaluations.csv").read_text() == (out / "evaluations.csv").read_text()
    assert (again / "training.csv").read_text() == (out / "training.csv").read_text()
    assert len(first["runs"]) == 2
    # a key no run logs: a one-line error naming the keys they do log
    code = cli_main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "x"),
                     "--training-metrics", "losses/nope"])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert "losses/nope: no run logs it" in err and "losses/actor_q" in err and "\n" not in err
    with pytest.raises(DtrlError, match="already a column of evaluations.csv"):
        build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "y"),
                                  training_metrics=("wall_time_s",)))


def test_a_preset_change_gets_the_calibrated_budget_scaled_by_its_cost_against_the_preset(tmp_path, monkeypatch,
                                                                                          capsys):
    """benchmarks/studies/calibrate_budget.py --variant: the preset and the changed preset run side by side for
    the same minutes; the change's budget is the calibrated iterations times their ratio of iterations,
    one row per (task, method, flags, minutes) in budget_variants.csv."""
    calibrate = study_script(monkeypatch, "calibrate_budget")
    budget = tmp_path / "budget.csv"
    report_budget.record_row({"task": "hopper-random", "method": "grpo", "minutes": 20.0, "iterations": 781,
                              "env_steps": 3, "grad_updates": 3, "wall_time_s": 1200, "cpu": "x", "date": "d",
                              "commit": "c"}, budget)
    runs = []

    def fake_calibrate(method, args, flags=(), label=None):
        runs.append((method, flags, label))
        # here the preset completes 600 iterations and the change (3x the sampled steps) 300
        return {"iterations": 300 if flags else 600, "env_steps": 7 if flags else 5}

    monkeypatch.setattr(calibrate, "calibrate", fake_calibrate)
    monkeypatch.setattr(calibrate, "ensure_inputs", lambda *a: None)
    variants = tmp_path / "variants.csv"
    argv = ["calibrate_budget.py", "--methods", "grpo", "--variant", "--sub-trajectory-length 45", "--budget-csv",
            str(budget), "--variants-csv", str(variants), "--runs", str(tmp_path / "runs")]
    for _ in range(2):  # measured again: the new row replaces the old one
        monkeypatch.setattr(sys, "argv", argv)
        calibrate.main()
    assert set(runs[:2]) == {("grpo", (), "grpo-preset"),
                             ("grpo", ("--sub-trajectory-length", "45"), "grpo-sub-trajectory-length-45")}
    rows = report_budget.read_budget(variants)
    assert [(r["flags"], r["budget"], r["calibrated_iterations"]) for r in rows] == [
        ("--sub-trajectory-length 45", "390", "781")]  # round(781 * 300 / 600)
    assert "grpo --sub-trajectory-length 45: 390 iterations at equal compute" in capsys.readouterr().out
    # a method without a calibration of its own has nothing to scale
    monkeypatch.setattr(sys, "argv", [*argv[:2], "ppo", *argv[3:]])
    with pytest.raises(SystemExit, match="ppo has no 20-minute calibration on hopper-random"):
        calibrate.main()
    monkeypatch.setattr(sys, "argv", [*argv[:2], "grpo", "ppo", *argv[3:]])
    with pytest.raises(SystemExit, match="give the one method whose preset it changes"):
        calibrate.main()


def test_report_md_records_the_command_that_regenerates_it(tmp_path, monkeypatch):
    """report.md names the `dtrl report` command that made it (every option not at its default, and --out),
    from the CLI or from build_report; run again, that command rewrites the same report."""
    monkeypatch.chdir(tmp_path)
    for (task, algo), finals in FINALS.items():
        for seed, final in enumerate(finals):
            path = tmp_path / "runs" / f"{task}-{algo}-{seed}"
            make_run(path, {"task": task, "algo": algo, "seed": seed, "learning_rate": 1e-3 if seed else 3e-4,
                            "init": f"runs/pretrain/seed{seed}"}, eval_rows(final))
            (path / "final.json").write_text("{}")
    build_report(ReportConfig(run_dirs=("runs",), out="out dir", x=("iterations", "env_steps"), finished_only=True,
                              at_minutes=0.1, only=("algo=grpo", "algo=odt"), bootstrap_reps=20))
    first = Path("out dir/report.md").read_text()
    (made_by,) = [line for line in first.splitlines() if line.startswith("Made by: ")]
    assert made_by == ("Made by: `dtrl report runs --bootstrap-reps 20 --out 'out dir' --x iterations env_steps "
                       "--finished-only --at-minutes 0.1 --only algo=grpo algo=odt`")
    assert first.splitlines()[:3] == ["# dtrl report", "", made_by]
    words = shlex.split(made_by.removeprefix("Made by: ").strip("`"))
    Path("out dir/report.md").unlink()
    assert words[:2] == ["dtrl", "report"] and cli_main(words[1:]) == 0
    assert Path("out dir/report.md").read_text() == first
    # from the command line, the same: defaults are left out, --out is always there
    assert cli_main(["report", "--from-csv", "out dir/evaluations.csv", "--out", "again", "--bootstrap-reps",
                     "2000", "--choose", "final"]) == 0
    assert "Made by: `dtrl report --from-csv 'out dir/evaluations.csv' --out again --choose final`" in Path(
        "again/report.md").read_text()


def test_runs_from_different_starting_points_are_never_pooled(tmp_path, monkeypatch, capsys):
    """A GRPO-DT run from a Hugging Face DT and one from a dtrl pretrain are two columns, not one method with
    two seeds; a sweep's seedN DTs (one DT per seed, as in Table 1) stay one column; --label names columns
    and refuses to join two."""
    monkeypatch.chdir(tmp_path)
    base = {"task": "hopper-random", "algo": "grpo", "lr": 1e-4}
    make_run(tmp_path / "runs" / "hf-grpo" / "seed0", {**base, "seed": 0, "init": "hf:hf/dt"}, eval_rows(40.0))
    make_run(tmp_path / "runs" / "pt-grpo" / "seed1", {**base, "seed": 1, "init": "runs/pt"}, eval_rows(60.0))
    groups = build_report(ReportConfig(run_dirs=("runs",), out=str(tmp_path / "r1")))["groups"]
    assert sorted(label for _, label in groups) == ["GRPO-DT (from init=hf:hf/dt)", "GRPO-DT (from init=runs/pt)"]
    assert all(len(group.scores) == 1 for group in groups.values())
    # one DT per seed from a sweep (runs/pretrain/.../seedN): one column of 2 seeds
    for seed in (0, 1):
        make_run(tmp_path / "sweep" / f"seed{seed}",
                 {**base, "seed": seed, "init": f"runs/pretrain/hopper-random/dt/seed{seed}"}, eval_rows(50.0 + seed))
    groups = build_report(ReportConfig(run_dirs=("sweep",), out=str(tmp_path / "r2")))["groups"]
    assert [(label, len(group.scores)) for (_, label), group in groups.items()] == [("GRPO-DT", 2)]
    # --label names a column; the name is in the table and survives a rebuild from the CSV given the same label
    labels = ("GRPO-DT from HF=runs/hf-grpo", "GRPO-DT from dtrl=runs/pt-grpo/*")
    result = build_report(ReportConfig(run_dirs=("runs",), label=labels, out=str(tmp_path / "r3")))
    assert sorted(label for _, label in result["groups"]) == ["GRPO-DT from HF", "GRPO-DT from dtrl"]
    assert "--label 'GRPO-DT from HF=runs/hf-grpo'" in (tmp_path / "r3" / "report.md").read_text()
    rebuilt = build_report(ReportConfig(from_csv=(str(tmp_path / "r3" / "evaluations.csv"),), label=labels,
                                        out=str(tmp_path / "r4")))
    assert (tmp_path / "r4" / "report.csv").read_text() == (tmp_path / "r3" / "report.csv").read_text()
    assert sorted(label for _, label in rebuilt["groups"]) == ["GRPO-DT from HF", "GRPO-DT from dtrl"]
    # a label over runs of two columns, a name taken, a pattern matching nothing: one-line errors
    for label, message in ((["GRPO-DT=runs"], "belong to 2 columns"),
                           (["A=runs/hf-grpo", "A=runs/pt-grpo"], "already has a column named 'A'"),
                           (["x=nothing/*"], "no run's path matches"), (["GRPO-DT"], "NAME=GLOB")):
        assert cli_main(["report", "runs", "--label", *label, "--out", str(tmp_path / "r5")]) == 2
        assert message in capsys.readouterr().err


def test_an_option_added_after_a_run_does_not_split_its_seeds(tmp_path):
    """A run made before `--dynamic-sampling` existed has no such key; it did what the option's default
    (the preset's value) does, so it pools with a later run at that default, and not with one that set it."""
    base = {"task": "hopper-random", "algo": "grpo", "preset": "paper-small", "learning_rate": 5e-5}
    make_run(tmp_path / "runs" / "old" / "seed1", {**base, "seed": 1}, eval_rows(12.0))
    make_run(tmp_path / "runs" / "new" / "seed2",
             {**base, "seed": 2, "dynamic_sampling": False, "dynamic_sampling_rounds": 3, "video_every": 0},
             eval_rows(13.0))
    groups = build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "r1")))["groups"]
    assert [(label, len(group.scores)) for (_, label), group in groups.items()] == [("GRPO-DT", 2)]
    make_run(tmp_path / "runs" / "ds" / "seed1", {**base, "seed": 1, "dynamic_sampling": True,
                                                   "dynamic_sampling_rounds": 3}, eval_rows(20.0))
    groups = build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "r2")))["groups"]
    assert sorted((label, len(group.scores)) for (_, label), group in groups.items()) == [
        ("GRPO-DT (dynamic_sampling=False)", 2), ("GRPO-DT (dynamic_sampling=True)", 1)]
    # the old run is the reference of an ablation of the option (seed 1 pairs with seed 1), and --only selects it
    for run in ("old/seed1", "new/seed2", "ds/seed1"):
        (tmp_path / "runs" / run / "final.json").write_text("{}")
    report = build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "r3"),
                                       reference=("dynamic_sampling=false",)))
    assert [(p["seed"], p["reference_final"], p["variant_final"]) for p in report["pairs"]] == [(1, 12.0, 20.0)]
    report = build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "r4"),
                                       only=("dynamic_sampling=false",)))
    assert sorted(str(run.path.relative_to(tmp_path / "runs")) for run in report["runs"]) == ["new/seed2", "old/seed1"]


def test_run_phases_averages_each_metric_over_the_rows_that_record_it(monkeypatch):
    run_phases = study_script(monkeypatch, "run_phases")
    rows = eval_rows(40.0, iterations=8, every=2)  # evaluations at 2, 4, 6, 8: 10, 20, 30, 40
    for row in rows:
        row["grpo/groups_dropped"] = row["iteration"]
    means = run_phases.phase_means(rows, 1, 4, ["eval_normalized_mean", "grpo/groups_dropped", "absent"])
    assert means[:2] == [15.0, 2.5] and np.isnan(means[2])
    text = run_phases.table("run", rows, ["1-4", "5-8"], ["eval_normalized_mean"])
    assert text.splitlines()[-2:] == ["| 1-4 | 15.0 |", "| 5-8 | 35.0 |"]


def test_table1_on_another_task_takes_the_tuned_settings_at_that_tasks_budgets(tmp_path, monkeypatch, capsys):
    """Issue 38: walker2d-medium's Table 1 runs each method's setting tuned on hopper-random at budgets
    calibrated on walker2d-medium; hopper-random's specs and budget.md section are left as they are."""
    monkeypatch.chdir(tmp_path)
    budget = tmp_path / "budget.csv"
    with open(budget, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=report_budget.COLUMNS)
        writer.writeheader()
        for task, iterations in (("hopper-random", 3), ("walker2d-medium", 5)):
            writer.writerows({"task": task, "method": m, "minutes": 20, "iterations": iterations, "env_steps": 1,
                              "grad_updates": 1, "wall_time_s": 1, "cpu": "x", "date": "d", "commit": "c"}
                             for m in report_budget.METHODS)
    chosen = tmp_path / "chosen.csv"
    with open(chosen, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["task", "algo", "chosen", "flags"])
        writer.writeheader()
        flags = "--learning-rate 0.001 --learning-rate-schedule linear"
        writer.writerows({"task": "hopper-random", "algo": m, "chosen": "True", "flags": flags}
                         for m in report_budget.METHODS)
    calibrate = study_script(monkeypatch, "calibrate_budget")
    report_budget.write_specs("hopper-random", 20.0, tmp_path / "sweeps", budget, chosen,
                              presets=calibrate.cpu_presets("hopper-random"))
    (tmp_path / "budget.md").write_text((tmp_path / "budget.md").read_text() + "\nNotes (by hand): kept.\n")
    hopper_specs = {p.name: p.read_text() for p in (tmp_path / "sweeps").iterdir()}
    with pytest.raises(DtrlError, match="no chosen setting for .* on walker2d-medium"):  # no tuning there
        report_budget.write_specs("walker2d-medium", 20.0, tmp_path / "sweeps", budget, chosen,
                                  presets=calibrate.cpu_presets("walker2d-medium"))
    written = report_budget.write_specs("walker2d-medium", 20.0, tmp_path / "sweeps", budget, chosen,
                                        presets=calibrate.cpu_presets("walker2d-medium"), tuned_task="hopper-random")
    assert [p.name for p in written] == ["table1_cpu_walker2d-medium.toml", "budget.md"]
    assert {p.name: p.read_text() for p in (tmp_path / "sweeps").iterdir() if p.name in hopper_specs} == hopper_specs
    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    spec = tomllib.loads((tmp_path / "sweeps" / "table1_cpu_walker2d-medium.toml").read_text())
    assert spec["tasks"] == ["walker2d-medium"] and spec["algo_args"]["grpo"][:2] == ["--iterations", "5"]
    assert spec["algo_args"]["grpo"][-5:] == ["--learning-rate", "0.001", "--learning-rate-schedule", "linear",
                                              "--eval-other-rtg"]
    assert cli_main(["sweep", str(tmp_path / "sweeps" / "table1_cpu_walker2d-medium.toml"), "--dry-run"]) == 0
    assert "runs/table1_cpu/walker2d-medium/odt/seed1" in capsys.readouterr().out
    # budget.md: hopper-random's section and notes stay; walker2d-medium gets its own, replaced when rewritten
    for _ in range(2):
        report_budget.write_specs("walker2d-medium", 20.0, tmp_path / "sweeps", budget, chosen,
                                  presets=calibrate.cpu_presets("walker2d-medium"), tuned_task="hopper-random")
        text = (tmp_path / "budget.md").read_text()
        assert text.startswith("# Equal-compute budgets: hopper-random") and "Notes (by hand): kept." in text
        assert text.count("## walker2d-medium, 20 minutes") == 1 and text.count("| grpo | 5 |") == 1
    report_budget.write_specs("hopper-random", 20.0, tmp_path / "sweeps", budget, chosen,
                              presets=calibrate.cpu_presets("hopper-random"))
    assert (tmp_path / "budget.md").read_text().count("## walker2d-medium, 20 minutes") == 1  # kept by hopper's
    # hopper-medium: the SB3 lines read no dataset and hopper-random's are on the same env (Hopper-v5), so they
    # are neither calibrated nor run again; IQL reads the dataset and must be
    with open(budget, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=report_budget.COLUMNS)
        writer.writerows({"task": "hopper-medium", "method": m, "minutes": 20, "iterations": 7, "env_steps": 1,
                          "grad_updates": 1, "wall_time_s": 1, "cpu": "x", "date": "d", "commit": "c"}
                         for m in ("grpo", "grpo-q", "ppo", "odt", "odt-td3"))
    with pytest.raises(DtrlError, match="no calibration yet for iql on hopper-medium"):
        report_budget.write_specs("hopper-medium", 20.0, tmp_path / "sweeps", budget, chosen,
                                  presets=calibrate.cpu_presets("hopper-medium"), tuned_task="hopper-random")
    with open(budget, "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=report_budget.COLUMNS).writerow(
            {"task": "hopper-medium", "method": "iql", "minutes": 20, "iterations": 7, "env_steps": 1,
             "grad_updates": 1, "wall_time_s": 1, "cpu": "x", "date": "d", "commit": "c"})
    report_budget.write_specs("hopper-medium", 20.0, tmp_path / "sweeps", budget, chosen,
                              presets=calibrate.cpu_presets("hopper-medium"), tuned_task="hopper-random")
    text = (tmp_path / "sweeps" / "table1_cpu_hopper-medium.toml").read_text()
    spec = tomllib.loads(text)
    assert spec["algos"] == ["grpo", "grpo-q", "ppo", "odt", "odt-td3", "iql"] and set(spec["algo_args"]) == \
        set(spec["algos"])
    assert "# sb3-ppo: not run on hopper-medium" in text and "--share-across-tasks sb3-ppo" in text
    assert "walker2d" not in text  # Walker2d's SB3 runs are another env's


def test_who_wins_each_task_and_whether_the_papers_ranking_holds(tmp_path):
    finals = {("hopper-random", "ppo"): [100, 105, 110], ("hopper-random", "grpo"): [90, 100, 110],
              ("hopper-random", "sb3-ppo"): [108, 112, 116],
              ("walker2d-medium", "ppo"): [50, 52, 54], ("walker2d-medium", "odt"): [30, 31, 32],
              ("walker2d-medium", "grpo"): [10, 11, 12],
              # the paper's six columns, in its order on hopper-medium; half-swapped on hopper-medium-replay
              ("hopper-medium", "grpo"): [120, 125, 130], ("hopper-medium", "ppo"): [100, 101, 102],
              ("hopper-medium", "odt-td3"): [95, 96, 97], ("hopper-medium", "odt"): [90, 91, 92],
              ("hopper-medium", "pretrain"): [60, 61, 62], ("hopper-medium", "iql"): [50, 51, 52],
              ("hopper-medium-replay", "grpo"): [100, 110, 120], ("hopper-medium-replay", "ppo"): [98, 104, 110],
              ("hopper-medium-replay", "odt-td3"): [49, 50, 51], ("hopper-medium-replay", "iql"): [39, 40, 41],
              ("hopper-medium-replay", "pretrain"): [19, 20, 21], ("hopper-medium-replay", "odt"): [10, 11, 12]}
    make_final_runs(tmp_path / "runs", finals)
    build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "out"), bootstrap_reps=200))
    with open(tmp_path / "out" / "ranking.csv") as handle:
        rows = {r["task"]: r for r in csv.DictReader(handle)}
    hopper, walker = rows["hopper-random"], rows["walker2d-medium"]
    # hopper-random: SB3 PPO wins overall, within PPO-DT's interval; of the paper's methods PPO-DT leads
    # here as in the paper (107.0 against GRPO-DT's 99.2)
    assert (hopper["winner"], hopper["runner_up"], hopper["apart"]) == ("SB3 PPO", "PPO-DT", "False")
    assert (hopper["shared"], hopper["ours_best_shared"], hopper["paper_best"], hopper["same_best"]) == \
        ("2", "PPO-DT", "PPO-DT", "True")
    assert hopper["kendall_tau"] == ""  # two columns order nothing
    # walker2d-medium: ours PPO-DT > ODT > GRPO-DT, the paper's GRPO-DT 158.3 > PPO-DT 109.5 > ODT 76.5:
    # one concordant pair of three, tau = (1 - 2) / 3
    assert (walker["winner"], walker["runner_up"], walker["apart"]) == ("PPO-DT", "ODT", "True")
    assert (walker["paper_best"], float(walker["paper_best_mean"]), walker["same_best"]) == ("GRPO-DT", 158.34, "False")
    assert float(walker["kendall_tau"]) == pytest.approx(-1 / 3)
    assert (walker["grpo_rank_ours"], walker["grpo_rank_paper"]) == ("3", "1")
    # the reading rule's verdicts: GRPO-DT wins only with the best mean and an interval above the runner-up's
    # and PPO-DT's; the orders agree at tau >= 0.6, in part above 0
    # (walker2d-medium compares 3 of the paper's 6 columns: a tau, but no verdict on the order)
    assert (hopper["grpo_verdict"], walker["grpo_verdict"], walker["tau_verdict"]) == \
        ("does not win", "does not win", "")
    medium, replay = rows["hopper-medium"], rows["hopper-medium-replay"]
    # hopper-medium: GRPO-DT [120, 130] above PPO-DT [100, 102]; our order is the paper's
    assert (medium["grpo_verdict"], float(medium["kendall_tau"]), medium["tau_verdict"]) == \
        ("wins", pytest.approx(1.0), "agrees")
    # hopper-medium-replay: GRPO-DT leads PPO-DT but [100, 120] overlaps [98, 110]; of the 15 pairs, GRPO-DT's
    # against PPO-DT, ODT+TD3, IQL and ODT and DT's against ODT are swapped: tau = (10 - 5) / 15
    assert (replay["winner"], replay["apart"], replay["grpo_verdict"]) == ("GRPO-DT", "False", "ahead, not apart")
    assert (float(replay["kendall_tau"]), replay["tau_verdict"]) == (pytest.approx(1 / 3), "in part")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| walker2d-medium | PPO-DT 52.0 [50.0, 54.0] | ODT 31.0 [30.0, 32.0] | yes | does not win | 3 | PPO-DT | " \
           "GRPO-DT 158.3 | no | -0.33 | – | 3 / 1 of 3 |" in text


def test_methods_without_a_dataset_run_once_per_env_and_count_in_each_of_its_tasks(tmp_path):
    def runs(task, algo, scores, **config):
        for seed, final in enumerate(scores, start=1):
            make_run(tmp_path / "runs" / task / algo / f"seed{seed}",
                     {"task": task, "algo": algo, "seed": seed, "preset": "cpu", **config}, eval_rows(final))

    runs("hopper-random", "sb3-ppo", [40, 80, 120])
    runs("hopper-medium", "ppo", [60, 70, 80], init="runs/pretrain/hopper-medium/pretrain/seed{seed}")
    runs("walker2d-medium", "ppo", [20, 30, 40], init="runs/pretrain/walker2d-medium/pretrain/seed{seed}")
    root = str(tmp_path / "runs")
    report = build_report(ReportConfig(run_dirs=(root,), out=str(tmp_path / "out"), bootstrap_reps=100,
                                       share_across_tasks=("sb3-ppo",)))
    groups = report["groups"]
    # hopper-medium's SB3 PPO column is hopper-random's 3 runs (Hopper-v5 both, same settings); Walker2d has none
    assert groups[("hopper-medium", "SB3 PPO")].scores == groups[("hopper-random", "SB3 PPO")].scores == [40, 80, 120]
    assert ("walker2d-medium", "SB3 PPO") not in groups
    text = (tmp_path / "out" / "report.md").read_text()
    assert "SB3 PPO on hopper-medium: the 3 hopper-random run(s) (--share-across-tasks" in text
    assert "--share-across-tasks sb3-ppo" in text  # the command that regenerates it
    # each run once in the runs list and in evaluations.csv, so a report rebuilt from it shares again
    assert len(report["runs"]) == 9
    with open(tmp_path / "out" / "evaluations.csv") as handle:
        assert {r["task"] for r in csv.DictReader(handle) if r["algorithm"] == "SB3 PPO"} == {"hopper-random"}
    # refused: a method that read a pretrained DT, and a task with runs of its own of the shared method
    with pytest.raises(DtrlError, match="read a dataset or a pretrained DT"):
        build_report(ReportConfig(run_dirs=(root,), out=str(tmp_path / "x"), share_across_tasks=("ppo",)))
    runs("hopper-medium", "sb3-ppo", [50, 50, 50])
    with pytest.raises(DtrlError, match="has sb3-ppo runs of its own beside those of hopper-"):
        build_report(ReportConfig(run_dirs=(root,), out=str(tmp_path / "y"), share_across_tasks=("sb3-ppo",)))


def test_report_tex_is_a_booktabs_table_with_intervals_and_bolds_what_the_seeds_cannot_separate(tmp_path):
    finals = {("hopper-random", "grpo"): [90, 100, 110], ("hopper-random", "ppo"): [85, 95, 105],
              ("hopper-random", "odt"): [30, 31, 32], ("walker2d-medium", "grpo"): [50, 60, 70],
              ("walker2d-medium", "odt"): [80, 80, 83], ("hopper-medium", "grpo"): [70]}
    make_final_runs(tmp_path / "runs", finals)
    result = build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "out"),
                                       bootstrap_reps=200, label=("my_ODT 100%=*/odt/*",)))
    tex = (tmp_path / "out" / "report.tex").read_text()
    assert tmp_path / "out" / "report.tex" in result["files"]
    with open(tmp_path / "out" / "statistics.csv") as handle:
        ci = {(r["task"], r["algorithm"]): (float(r["final_mean_lo"]), float(r["final_mean_hi"]))
              for r in csv.DictReader(handle)}
    rows = {line.split(" & ")[0]: [c.strip() for c in line.rstrip(" \\").split(" & ")[1:]]
            for line in tex.splitlines() if " & " in line}
    # header: the column labels, LaTeX-escaped (a label's _ and % would break the document)
    assert rows[""] == ["PPO-DT", "GRPO-DT", "my\\_ODT 100\\%"]
    assert tex.count("\\toprule") == tex.count("\\midrule") == tex.count("\\bottomrule") == 1
    assert "\\begin{tabular}{lccc}" in tex and "\\label{tab:dtrl-final}" in tex

    def cell(task, label, mean):
        lo, hi = ci[(task, label)]
        return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"
    # hopper-random: GRPO-DT 100 is best; PPO-DT's interval reaches 100, so the seeds cannot separate them;
    # ODT's [30, 32] does not
    assert ci[("hopper-random", "PPO-DT")][1] >= 100 > ci[("hopper-random", "my_ODT 100%")][1]
    assert rows["hopper-random"] == ["\\bfseries " + cell("hopper-random", "PPO-DT", 95),
                                     "\\bfseries " + cell("hopper-random", "GRPO-DT", 100),
                                     cell("hopper-random", "my_ODT 100%", 31)]
    # the paper's rows: its Table 1 (PPO-DT 107.0 ± 1.0 best on hopper-random); a relabelled ODT has no paper cell
    assert rows["hopper-random (paper)"] == ["\\bfseries 107.0 $\\pm$ 1.0", "99.2 $\\pm$ 3.8", "--"]
    assert rows["walker2d-medium"] == ["--", cell("walker2d-medium", "GRPO-DT", 60),
                                       "\\bfseries " + cell("walker2d-medium", "my_ODT 100%", 81)]
    assert rows["walker2d-medium (paper)"] == ["109.5 $\\pm$ 9.0", "\\bfseries 158.3 $\\pm$ 3.8", "--"]
    # one seed: its score alone, no interval of one point
    assert rows["hopper-medium"] == ["--", "70.0", "--"]
    assert "95\\% stratified-bootstrap interval of the mean, rliable] over 1--3 seeds (the score alone where one " \
           "seed has finished)" in tex
    # the paper's best is that of its whole row: where its best column (PPO-DT on hopper-random) is not in the
    # table, no paper cell is bold
    without_ppo = tmp_path / "without_ppo"
    for algo in ("odt", "grpo"):
        shutil.copytree(tmp_path / "runs" / "hopper-random" / algo, without_ppo / "hopper-random" / algo)
    build_report(ReportConfig(run_dirs=(str(without_ppo),), out=str(tmp_path / "out2"), bootstrap_reps=200))
    paper_row = next(line for line in (tmp_path / "out2" / "report.tex").read_text().splitlines()
                     if line.startswith("hopper-random (paper)"))
    assert paper_row == "hopper-random (paper) & 30.4 $\\pm$ 0.0 & 99.2 $\\pm$ 3.8 \\\\"


def test_figures_in_vector_formats_for_a_paper(runs_root, tmp_path, capsys):
    out = tmp_path / "report"
    # a format given twice is written once
    assert cli_main(["report", str(runs_root), "--out", str(out), "--bootstrap-reps", "50",
                     "--figures", "pdf", "svg", "pdf", "--training-metrics", "losses/policy"]) == 0
    printed = capsys.readouterr().out
    for name in ("curves", "performance_profile", "training"):
        for task in ("hopper-random", "walker2d-medium"):
            pdf = (out / f"{name}_{task}.pdf").read_bytes()
            # TrueType fonts embedded (pdf.fonttype 42), not Type 3, which many venues refuse
            assert pdf[:5] == b"%PDF-" and b"/Subtype /Type3" not in pdf
            assert b"/Subtype /CIDFontType2" in pdf or b"/Subtype /TrueType" in pdf
            assert b"<svg" in (out / f"{name}_{task}.svg").read_bytes()[:1000]
            assert not (out / f"{name}_{task}.png").exists() and printed.count(str(out / f"{name}_{task}.pdf")) == 1
    assert "--figures pdf svg" in (out / "report.md").read_text()  # the command that regenerates it
    assert cli_main(["report", str(runs_root), "--out", str(tmp_path / "o2"), "--figures", "eps"]) == 2
    err = capsys.readouterr().err
    assert "--figures" in err and "png" in err


def test_the_order_verdict_at_the_rules_thresholds():
    from dtrl.report.stats import tau_verdict

    # 6 columns, 12 of their 15 pairs in the same order and 3 swapped: tau = (12 - 3) / 15 = 0.6, the rule's bar
    assert [tau_verdict(t) for t in (9 / 15, 0.6 - 1e-12, 7 / 15, 1 / 15, 0.0, -1.0, None)] == \
        ["agrees", "agrees", "in part", "in part", "does not agree", "does not agree", None]


def test_across_tasks_aggregates_every_column_and_the_probability_grpo_dt_beats_it(tmp_path):
    from scipy.stats import trim_mean

    finals = {("hopper-random", "grpo"): [90, 100, 110], ("walker2d-medium", "grpo"): [50, 60, 70],
              ("hopper-random", "odt"): [30, 31, 32], ("walker2d-medium", "odt"): [20, 21, 22],
              ("hopper-random", "ppo"): [95, 100, 105], ("walker2d-medium", "ppo"): [55, 60, 200],
              ("hopper-random", "iql"): [10, 11, 12], ("walker2d-medium", "iql"): [10]}
    make_final_runs(tmp_path / "runs", finals)
    build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "out"), bootstrap_reps=500))
    with open(tmp_path / "out" / "across_tasks.csv") as handle:
        rows = {r["algorithm"]: r for r in csv.DictReader(handle)}
    grpo, odt, ppo = rows["GRPO-DT"], rows["ODT"], rows["PPO-DT"]
    # the point estimates are over all 6 runs of a column: the mean, and the IQM that drops PPO-DT's outlying 200
    assert float(grpo["mean"]) == pytest.approx(80.0) and float(ppo["mean"]) == pytest.approx(615 / 6)
    assert float(ppo["iqm"]) == pytest.approx(trim_mean([95, 100, 105, 55, 60, 200], 0.25)) == pytest.approx(90.0)
    assert float(ppo["iqm_lo"]) <= float(ppo["iqm"]) <= float(ppo["iqm_hi"])
    # every GRPO-DT run beats every ODT run on both tasks; against PPO-DT it is a coin toss or worse
    assert [float(odt[f"p_grpo_better{end}"]) for end in ("", "_lo", "_hi")] == [1.0, 1.0, 1.0]
    assert 0.3 < float(ppo["p_grpo_better"]) <= 0.5 and grpo["p_grpo_better"] == ""
    # IQL has one run on walker2d-medium: not counted, and said so
    assert rows["IQL"]["iqm"] == "" and rows["IQL"]["runs_per_task"] == "3 1"
    section = (tmp_path / "out" / "report.md").read_text().split("## Across tasks")[1].split("## ")[0]
    assert "Not counted" in section and "IQL (3 1)" in section
    # ODT's IQM: the middle half of 20, 21, 22, 30, 31, 32
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| PPO-DT", "| GRPO-DT", "| ODT"]  # by IQM
    assert lines[-1].startswith("| ODT | 3 | 26.0 [") and lines[-1].endswith("| 1.00 [1.00, 1.00] |")


def test_one_table_per_task_puts_each_columns_seeds_interval_start_and_spend_on_one_line(tmp_path):
    """The per-task table a paper's results section needs: every cell is the number another section of the
    report (or its CSV) gives, so pasting it cannot introduce an error the report does not have."""
    def curve(start: float, final: float) -> list[dict]:
        return [{"iteration": it, "env_steps": 1000 * it, "grad_updates": 1000 * it, "wall_time_s": 60.0 * it,
                 "eval_normalized_mean": start + (final - start) * it / 4,
                 "eval_return_mean": 30 * (start + (final - start) * it / 4)} for it in range(5)]

    for algo, finals in (("grpo", {1: 90.0, 2: 100.0, 3: 110.0}), ("odt", {1: 30.0, 3: 20.0})):
        for seed, final in finals.items():
            path = tmp_path / "runs" / algo / f"seed{seed}"
            make_run(path, {"task": "hopper-random", "algo": algo, "seed": seed},
                     curve(10.0 if algo == "grpo" else 25.0, final))
            (path / "final.json").write_text("{}")
    build_report(ReportConfig(run_dirs=(str(tmp_path / "runs"),), out=str(tmp_path / "r"), bootstrap_reps=50,
                              at_minutes=2))
    md = (tmp_path / "r" / "report.md").read_text()
    section = md.split("## One table per task")[1].split("\n## ")[0]
    with open(tmp_path / "r" / "statistics.csv") as handle:
        stats = {row["algorithm"]: row for row in csv.DictReader(handle)}

    def interval(algo: str) -> str:
        row = stats[algo]
        return f"{float(row['final_mean']):.1f} [{float(row['final_mean_lo']):.1f}, {float(row['final_mean_hi']):.1f}]"

    assert ("| column | seed 1 | seed 2 | seed 3 | final mean [95% CI] | paper | start | improved | at 2 min | "
            "env steps | updates | wall min |") in section
    # at 2 minutes each run had evaluated iteration 2: GRPO-DT 50, 55, 60 (std 4.1), ODT 27.5 and 22.5
    assert (f"| ODT | 30.0 | – | 20.0 | {interval('ODT')} | 30.4 | 25.0 | 1/2 | 25.0 ± 2.5 | 4k | 4.0k | "
            "4.0–4.0 |") in section
    assert (f"| GRPO-DT | 90.0 | 100.0 | 110.0 | **{interval('GRPO-DT')}** | 99.2 | 10.0 | 3/3 | 55.0 ± 4.1 | 4k | "
            "4.0k | 4.0–4.0 |") in section
    assert section.index("| ODT |") < section.index("| GRPO-DT |")  # the report's column order
    assert "within its first 2 minutes, ± being the population standard deviation (ddof = 0, np.std)" in section
