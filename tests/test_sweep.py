import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from dtrl.cli import main as cli_main
from dtrl.errors import DtrlError
from dtrl.runs import RunDir, is_finished, read_config, read_metrics
from dtrl.sweep import expand_trials, finished_in_reports, load_spec, run_trial, spec_from_dict, trial_status


def write_spec(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------------------
# spec and grid


def test_toml_spec_expands_to_the_grid(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.toml", """
        command = "finetune"
        algos = ["grpo", "ppo"]
        tasks = ["hopper-random", "walker2d-medium-v2"]
        seeds = [0, 1]
        out_root = "runs/x"
        args = ["--init", "pre/{task}/seed{seed}", "--preset", "cpu"]
        [overrides]
        clip_eps = [0.1, 0.2]
        "model.n_layer" = [2]
        normalize_advantages = [false]
        [resources]
        cpus = 2
        gpus = 0.5
    """))
    assert spec.resources.cpus == 2 and spec.resources.gpus == 0.5
    trials = expand_trials(spec, tmp_path / "out")
    assert len(trials) == 2 * 2 * 2 * 2
    first = trials[0]
    assert first.task == "hopper-random" and first.algo == "grpo" and first.seed == 0
    assert first.run_dir == str(tmp_path / "out" / "hopper-random" / "grpo" /
                                "seed0-clip_eps=0.1-model.n_layer=2-normalize_advantages=false")
    assert first.log_file == first.run_dir + ".log"
    assert first.argv == ["finetune", "--algo", "grpo", "--task", "hopper-random", "--seed", "0",
                          "--out", first.run_dir, "--init", "pre/hopper-random/seed0", "--preset", "cpu",
                          "--clip-eps", "0.1", "--model.n-layer", "2", "--no-normalize-advantages"]
    # -v2 names are folded into the registry name for directories and --task
    assert {t.task for t in trials} == {"hopper-random", "walker2d-medium"}
    assert len({t.run_dir for t in trials}) == len(trials)


def test_json_spec_with_args_table_and_defaults(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.json", json.dumps(
        {"command": "pretrain", "tasks": ["hopper-medium"], "args": {"dataset": "d/{task}.hdf5", "compile": True}})))
    (trial,) = expand_trials(spec, tmp_path)
    assert trial.argv == ["pretrain", "--task", "hopper-medium", "--seed", "0", "--out", trial.run_dir,
                          "--dataset", "d/hopper-medium.hdf5", "--compile"]
    assert trial.run_dir == str(tmp_path / "hopper-medium" / "pretrain" / "seed0")


def test_algo_args_reach_only_their_algorithm(tmp_path):
    spec = spec_from_dict({"tasks": ["hopper-random"], "algos": ["grpo", "odt"], "args": ["--preset", "cpu"],
                           "algo_args": {"odt": ["--dataset", "data/{task}.hdf5"]}})
    grpo, odt = expand_trials(spec, tmp_path)
    assert grpo.argv[-2:] == ["--preset", "cpu"]
    assert odt.argv[-4:] == ["--preset", "cpu", "--dataset", "data/hopper-random.hdf5"]


@pytest.mark.parametrize("raw, message", [
    ({"algos": ["grpo"]}, "'tasks' is required"),
    ({"tasks": ["hopper-random"], "algos": ["grpo"], "algo_args": {"odt": ["--x"]}}, "'algos' does not list"),
    ({"tasks": ["hopper-random"], "algos": ["odt"], "algo_args": {"odt": ["--out", "x"]}}, "must not set --out"),
    ({"tasks": ["hopper-random"], "algos": ["grpo"], "sedes": [1]}, "unknown key.*sedes"),
    ({"tasks": ["hopper-random"]}, "needs 'algos'"),
    ({"tasks": ["hopper-random"], "algos": ["trpo"]}, "unknown algo.*trpo"),
    ({"tasks": ["no-such-task"], "algos": ["grpo"]}, "unknown task"),
    ({"tasks": ["hopper-random"], "algos": ["grpo"], "seeds": ["a"]}, "seeds.*integers"),
    ({"tasks": ["hopper-random"], "algos": ["grpo"], "overrides": {"clip_eps": 0.1}}, "non-empty list"),
    ({"tasks": ["hopper-random"], "algos": ["grpo"], "args": ["--seed", "3"]}, "must not set --seed"),
    ({"tasks": ["hopper-random"], "command": "report"}, "not a dtrl training command"),
    ({"tasks": ["hopper-random"], "algos": ["grpo"], "resources": {"cpus": 0}}, "cpus > 0"),
])
def test_spec_errors_are_one_line(raw, message):
    with pytest.raises(DtrlError, match=message):
        spec_from_dict(raw)


def test_bad_placeholder_and_file_errors(tmp_path):
    spec = spec_from_dict({"tasks": ["hopper-random"], "algos": ["grpo"], "args": ["--init", "{dataset}"]})
    with pytest.raises(DtrlError, match="placeholder"):
        expand_trials(spec, tmp_path)
    with pytest.raises(DtrlError, match="not found"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(DtrlError, match="s.toml"):
        load_spec(write_spec(tmp_path / "s.toml", "tasks = [\n"))


# ---------------------------------------------------------------------------------------------
# one trial, with a stand-in program (what Ray runs, without Ray)

# A stand-in for `python -m dtrl` that writes the run-directory files run_trial looks at, without
# importing torch (a real dtrl command runs in the Ray test below).
FAKE_DTRL = """
import json, os, sys
args = sys.argv[1:]
out = args[args.index("--out") + 1]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\\n")
resume = "--resume" in args
if not resume:
    if os.path.exists(out):
        sys.exit("refusing: run directory exists")  # what RunDir.create does without --force
    os.makedirs(os.path.join(out, "checkpoints"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"task": "hopper-random", "algo": "grpo", "seed": 0}, f)
start = int(open(os.path.join(out, "checkpoints", "state.pt")).read()) + 1 if resume else 0
for it in range(start, 3):
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"iteration": it, "eval_normalized_mean": 10.0 * it}) + "\\n")
    with open(os.path.join(out, "checkpoints", "state.pt"), "w") as f:
        f.write(str(it))
    if it == 1 and os.environ.get("FAKE_CRASH_ONCE") and not resume:
        print("simulated crash", flush=True)
        sys.exit(3)
with open(os.path.join(out, "final.json"), "w") as f:
    json.dump({"eval_normalized_mean": 20.0}, f)
"""


@pytest.fixture
def fake_trial(tmp_path, monkeypatch):
    program = tmp_path / "fake_dtrl.py"
    program.write_text(FAKE_DTRL)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    run_dir = tmp_path / "out" / "hopper-random" / "grpo" / "seed0"
    trial = {"run_dir": str(run_dir), "log_file": str(run_dir) + ".log", "cwd": str(tmp_path), "cpus": 1,
             "argv": ["finetune", "--algo", "grpo", "--out", str(run_dir)], "program": [sys.executable, str(program)]}

    def read_calls():
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return trial, read_calls


def test_trial_crash_then_resume_then_skip(fake_trial, monkeypatch):
    trial, calls = fake_trial
    assert trial_status(trial["run_dir"]) == "new"
    monkeypatch.setenv("FAKE_CRASH_ONCE", "1")
    with pytest.raises(RuntimeError, match=r"exited with 3.*\n(.*\n)*simulated crash"):
        run_trial(trial)
    assert trial_status(trial["run_dir"]) == "resume"

    result = run_trial(trial)  # continues from the checkpoint of iteration 1
    assert result["status"] == "resumed" and result["eval_normalized_mean"] == 20.0
    assert calls()[-1][-1] == "--resume"
    assert [r["iteration"] for r in read_metrics(trial["run_dir"])] == [0, 1, 2]
    assert is_finished(trial["run_dir"])

    n_calls = len(calls())
    assert run_trial(trial)["status"] == "skipped"
    assert len(calls()) == n_calls  # a finished trial does not start its program
    log = Path(trial["log_file"]).read_text()
    assert log.count("=== ") == 2 and "new:" in log and "resume:" in log


def test_summary_after_ctrl_c_counts_trials_ray_never_started(fake_trial, capsys):
    """Ctrl-C stops Ray before it starts the queued trials: their results carry no config."""
    from types import SimpleNamespace

    from dtrl.sweep import _print_summary

    trial, _ = fake_trial
    results = [SimpleNamespace(config={"trial": trial}, error=None, metrics={}), SimpleNamespace(config=None)]
    assert _print_summary(results, 1, "spec.toml") == 1
    captured = capsys.readouterr()
    assert "0 trial(s) done, 0 failed, 1 stopped, 1 not started, 1 already finished and skipped" in captured.out
    assert "continue with: dtrl sweep spec.toml --resume" in captured.err


def test_trial_without_checkpoint_is_restarted(fake_trial):
    trial, calls = fake_trial
    RunDir.create(trial["run_dir"], {"task": "hopper-random"}).close()  # died before its first checkpoint
    assert trial_status(trial["run_dir"]) == "restart"
    assert run_trial(trial)["status"] == "ran"
    assert "--resume" not in calls()[-1]
    assert read_config(trial["run_dir"])["algo"] == "grpo"


def test_sweep_refuses_existing_out_root_without_resume_and_dry_run(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", f"""
        tasks = ["hopper-random"]
        algos = ["grpo"]
        seeds = [0, 1]
        out_root = "{tmp_path / 'out'}"
    """)
    RunDir.create(tmp_path / "out" / "hopper-random" / "grpo" / "seed0", {"seed": 0}).mark_finished({})
    assert cli_main(["sweep", str(spec)]) == 2
    assert "already holds 1 of this sweep's runs; use --resume" in capsys.readouterr().err
    assert cli_main(["sweep", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 new, 0 to resume, 0 to restart, 1 finished" in out
    assert "[finished] dtrl finetune --algo grpo --task hopper-random --seed 0" in out
    assert cli_main(["sweep", str(spec), "--local", "--address", "auto"]) == 2


def test_trials_finished_in_a_committed_report_are_skipped(tmp_path, capsys):
    """A study continued on another machine: its run directories are gone, its evaluations.csv is not."""
    spec = write_spec(tmp_path / "s.toml", f"""
        tasks = ["hopper-random"]
        algos = ["grpo"]
        seeds = [0, 1, 2]
        out_root = "{tmp_path / 'out'}"
    """)
    runs = tmp_path / "out" / "hopper-random" / "grpo"
    header = "task,algorithm,label,metric,seed,run,finished,iteration\n"
    report = tmp_path / "evaluations.csv"
    report.write_text(header + f"hopper-random,grpo,GRPO-DT,normalized,0,{runs / 'seed0'},1,10\n"
                      f"hopper-random,grpo,GRPO-DT,normalized,1,{runs / 'seed1'},0,5\n")
    assert cli_main(["sweep", str(spec), "--dry-run", "--done", str(report)]) == 0
    out = capsys.readouterr().out
    assert "2 new, 0 to resume, 0 to restart, 0 finished and skipped, 1 finished in --done reports" in out
    assert "[reported] dtrl finetune --algo grpo --task hopper-random --seed 0" in out
    assert "[     new] dtrl finetune --algo grpo --task hopper-random --seed 1" in out  # unfinished there: rerun
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert cli_main(["sweep", str(spec), "--dry-run", "--done", str(tmp_path / "other.csv")]) == 2
    assert "is not an evaluations.csv of dtrl report" in capsys.readouterr().err
    assert cli_main(["sweep", str(spec), "--dry-run", "--done", str(tmp_path / "missing.csv")]) == 2


def test_missing_ray_gives_install_hint(tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path / "s.toml", f"""
        tasks = ["hopper-random"]
        algos = ["grpo"]
        out_root = "{tmp_path / 'out'}"
    """)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert cli_main(["sweep", str(spec)]) == 2
    assert "pip install 'ray[tune]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Ray Tune for real: two tiny pretraining runs


def test_ray_runs_two_trials_and_second_invocation_skips_them(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray.tune")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["data", "build", "hopper-random", "--out", "data.hdf5", "--transitions", "200"]) == 0
    spec = write_spec(tmp_path / "sweep.toml", """
        command = "pretrain"
        tasks = ["hopper-random"]
        seeds = [0, 1]
        out_root = "out"
        args = ["--dataset", "data.hdf5", "--steps", "2", "--steps-per-iteration", "1", "--batch-size", "2",
                "--warmup-steps", "1", "--eval-every", "0", "--eval-episodes", "1", "--model.n-layer", "1",
                "--model.embed-dim", "8", "--model.n-head", "1", "--device", "cpu"]
        [resources]
        cpus = 1
    """)
    capsys.readouterr()
    assert cli_main(["sweep", str(spec), "--local", "--num-cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s) done, 0 failed, 0 stopped" in out
    for seed in (0, 1):
        run_dir = tmp_path / "out" / "hopper-random" / "pretrain" / f"seed{seed}"
        assert is_finished(run_dir), (run_dir.with_suffix(".log").read_text()
                                      if run_dir.with_suffix(".log").exists() else "")
        config = read_config(run_dir)
        assert config["seed"] == seed and config["task"] == "hopper-random" and config["steps"] == 2
        assert read_metrics(run_dir)[-1]["grad_updates"] == 2
        assert (run_dir / "policy").is_dir()
    mtimes = [os.path.getmtime(tmp_path / "out" / "hopper-random" / "pretrain" / f"seed{s}" / "final.json")
              for s in (0, 1)]

    assert cli_main(["sweep", str(spec), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "2 finished and skipped" in out and "nothing to run" in out
    assert mtimes == [os.path.getmtime(tmp_path / "out" / "hopper-random" / "pretrain" / f"seed{s}" / "final.json")
                      for s in (0, 1)]

    assert cli_main(["report", "out", "--out", "report"]) == 0
    assert "| hopper-random |" in (tmp_path / "report" / "report.md").read_text()


def test_every_trial_is_validated_before_ray_starts(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('command = "finetune"\nalgos = ["grpo", "ppo"]\ntasks = ["hopper-random"]\n'
                    f'out_root = "{tmp_path / "out"}"\nargs = ["--init", "runs/x"]\n'
                    "[overrides]\nclip_eps = [0.2, -1.0]\n")
    assert cli_main(["sweep", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "clip_eps=-1.0" in err and "must be > 0" in err and not (tmp_path / "out").exists()


def test_a_trial_is_not_resumed_with_settings_its_run_did_not_start_with(tmp_path, capsys):
    """A study continued in a later session, after a preset default changed: resuming its
    interrupted runs with the new default would switch their settings halfway through."""
    from dtrl.algos import finetune
    from dtrl.config import to_dict
    from dtrl.runs import CHECKPOINT_DIR, STATE_FILE

    spec = write_spec(tmp_path / "s.toml", f"""
        tasks = ["hopper-random"]
        algos = ["grpo"]
        seeds = [0]
        out_root = "{tmp_path / 'out'}"
        args = ["--preset", "cpu", "--init", "runs/x"]
    """)
    run_dir = tmp_path / "out" / "hopper-random" / "grpo" / "seed0"
    (trial,) = expand_trials(load_spec(spec), tmp_path / "out")
    started = to_dict(finetune.parse(trial.argv[1:]))
    # the run was started under an earlier default, with fewer iterations and another thread count, by a
    # dtrl without the keep_best_policy option (an option added since is not a changed setting)
    del started["keep_best_policy"]
    RunDir.create(run_dir, {**started, "algo": "grpo", "active_sampling_variance": "pre_tanh",
                            "iterations": 10, "threads": 2})
    (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
    (run_dir / CHECKPOINT_DIR / STATE_FILE).write_bytes(b"")
    assert cli_main(["sweep", str(spec), "--resume", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "its run was started with other settings than the spec now gives " \
           "(active_sampling_variance 'pre_tanh' -> 'current'); pin the run's values" in err
    # pinned in the spec, it continues (more iterations and another thread count are allowed)
    spec.write_text(spec.read_text().replace('"runs/x"]', '"runs/x", "--active-sampling-variance", "pre_tanh"]'))
    assert cli_main(["sweep", str(spec), "--resume", "--dry-run"]) == 0
    assert "0 new, 1 to resume" in capsys.readouterr().out


def test_only_runs_the_matching_share_of_a_sweep(tmp_path, capsys):
    """--only splits one sweep between cores or machines without copying its spec."""
    spec = write_spec(tmp_path / "s.toml", f"""
        tasks = ["hopper-random"]
        algos = ["grpo", "ppo"]
        seeds = [0, 1]
        out_root = "{tmp_path / 'out'}"
        [overrides]
        learning_rate = [0.0001, 0.001]
    """)
    assert cli_main(["sweep", str(spec), "--dry-run", "--only", "algo=ppo", "learning_rate=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "2 trials (of 8, by --only)" in out and out.count("dtrl finetune --algo ppo") == 2
    assert out.count("--learning-rate 0.001") == 2 and "--algo grpo" not in out
    # a repeated key matches either value
    assert cli_main(["sweep", str(spec), "--dry-run", "--only", "seed=0", "seed=1", "algo=grpo"]) == 0
    assert "4 trials (of 8, by --only)" in capsys.readouterr().out
    for only, message in ((["lr=1e-3"], "--only lr: not a key of this sweep's trials"),
                          (["algo=sac"], "no trial of this sweep matches"),
                          (["algo"], "--only takes KEY=VALUE")):
        assert cli_main(["sweep", str(spec), "--dry-run", "--only", *only]) == 2
        assert message in capsys.readouterr().err


def test_one_spec_runs_several_studies_each_in_its_own_folder(tmp_path, capsys):
    """A paper's ablations in one spec: each study is the shared keys with its own on top, and its
    runs land where a spec of its own (out_root/<study>) would put them, so its results stay apart."""
    shared = """
        tasks = ["hopper-random"]
        seeds = [1, 2]
        out_root = "{root}"
        args = ["--preset", "cpu"]
        [algo_args]
        grpo = ["--iterations", "7"]
        ppo = ["--iterations", "9"]
    """
    spec_path = write_spec(tmp_path / "all.toml", shared.format(root=tmp_path / "claims") + """
        [studies.relabel]
        algos = ["grpo", "ppo"]
        overrides = { hindsight_relabel = [true] }
        [studies.ratio]
        algos = ["grpo"]
        seeds = [1]
        [studies.ratio.overrides]
        ratio_level = ["token", "geometric"]
    """)
    spec = load_spec(spec_path)
    trials = expand_trials(spec, tmp_path / "claims")
    assert [t.study for t in trials] == ["relabel"] * 4 + ["ratio"] * 2
    # the same trials, argv included, as one spec per study in the study's folder
    alone = load_spec(write_spec(tmp_path / "relabel.toml", """
        algos = ["grpo", "ppo"]""" + shared.format(root=tmp_path / "claims" / "relabel") + """
        [overrides]
        hindsight_relabel = [true]
    """))
    assert [(t.run_dir, t.argv) for t in trials[:4]] == [(t.run_dir, t.argv) for t in
                                                       expand_trials(alone, tmp_path / "claims" / "relabel")]
    ratio = trials[4]
    assert ratio.name == "ratio/hopper-random/grpo/seed1-ratio_level=token"  # Ray's trial name, the progress lines
    assert ratio.run_dir == str(tmp_path / "claims" / "ratio" / "hopper-random" / "grpo" / "seed1-ratio_level=token")
    assert ratio.argv[-4:] == ["--iterations", "7", "--ratio-level", "token"]  # ppo's args are not its
    # one study, or one switch value, by --only; a key of one study does not match the other's trials
    assert cli_main(["sweep", str(spec_path), "--dry-run", "--only", "study=ratio"]) == 0
    assert "2 trials (of 6, by --only)" in capsys.readouterr().out
    assert cli_main(["sweep", str(spec_path), "--dry-run", "--only", "ratio_level=geometric"]) == 0
    out = capsys.readouterr().out
    assert "1 trials (of 6, by --only)" in out and "seed1-ratio_level=geometric" in out


@pytest.mark.parametrize("studies, message", [
    ({"a": {"algos": ["grpo"], "resources": {"cpus": 2}}}, "studies.a sets resources, which only the whole sweep"),
    ({"a/b": {"algos": ["grpo"]}}, "not a folder name"),
    ({"a": {"algos": ["grpo"], "seeds": ["x"]}}, "studies.a: 'seeds' must be integers"),
    ({"a": {}}, "studies.a: command 'finetune' needs 'algos'"),
    ({"a": {"algos": ["ppo"]}}, "algo_args for grpo, which no study runs"),
    ([], "'studies' must be a table"),
    ({"a": {"algos": ["grpo"], "algo_args": ["--x"]}}, "'studies.a.algo_args' must be a table"),
])
def test_study_errors_are_one_line(studies, message):
    raw = {"tasks": ["hopper-random"], "algo_args": {"grpo": ["--iterations", "7"]}, "studies": studies}
    with pytest.raises(DtrlError, match=message):
        spec_from_dict(raw)


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec_file", sorted((REPO / "sweeps").rglob("*.toml")), ids=lambda p: p.name)
def test_every_committed_spec_loads(spec_file):
    assert expand_trials(load_spec(spec_file), REPO / "runs" / "x")


def test_the_claims_spec_still_names_every_committed_claims_run(monkeypatch):
    """The claims study spans sessions and machines: its committed rows must keep matching its trials,
    or `--done` would not skip them and a new session would run them again."""
    monkeypatch.chdir(REPO)  # the committed rows name runs relative to the repository root
    spec = load_spec("sweeps/claims.toml")
    trial_dirs = {Path(t.run_dir).resolve() for t in expand_trials(spec, Path(spec.out_root).absolute())}
    done = finished_in_reports(sorted(str(p) for p in Path("benchmarks/results/claims").glob("*/evaluations.csv")))
    committed = {run for run in done if (REPO / "runs" / "claims") in run.parents}
    assert committed and committed <= trial_dirs
