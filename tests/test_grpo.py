"""GRPO-DT (Algorithm 1): groups, RTG bookkeeping, ratios, the CLI loop, resume; and the finetune dispatcher."""

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from dtrl.algos import grpo
from dtrl.algos.finetune import ALGORITHMS
from dtrl.algos.finetune import main as finetune_main
from dtrl.algos.run_loop import best_evaluated_return, scheduled_learning_rate
from dtrl.errors import DtrlError

TASK = "hopper-random"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: intra-op threads only contend (10x slower ops)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory):
    """A freshly initialised stochastic DT saved in the policy format (no pretraining needed)."""
    from dtrl.config import ModelConfig
    from dtrl.data import StateNormalizer
    from dtrl.models import build_model
    from dtrl.models.checkpoint import save_policy

    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=1, embed_dim=32, context_length=4, max_timestep=1000, dropout=0.0,
                         init_temperature=0.1)
    path = tmp_path_factory.mktemp("policy") / "tiny"
    save_policy(path, build_model(config, 11, 3), StateNormalizer.identity(11), TASK)
    return path


@pytest.fixture(scope="module")
def loaded(tiny_policy_dir):
    from dtrl.models.loading import load_policy

    policy = load_policy(tiny_policy_dir, task=TASK)
    policy.model.eval()
    return policy


def small_config(**overrides) -> grpo.GRPOConfig:
    config = dataclasses.replace(
        grpo.cpu_preset(TASK), trajectories_per_batch=2, reset_points_per_trajectory=2, group_size=4,
        sub_trajectory_length=5, eval_steps=5, minibatch_size=8, sub_trajectory_buffer_size=32,
        # the tests call line 5's helpers on trajectories as recorded; train() refreshes them first
        # for the cpu preset's 'current' variance (test_current_variance_of_a_fresh_trajectory_...)
        device="cpu", active_sampling_variance="pre_tanh",
    )
    return dataclasses.replace(config, **overrides)


@pytest.fixture(scope="module")
def trajectory(loaded):
    from dtrl.envs import BatchedEnv
    from dtrl.rollout import rollout_episodes
    from dtrl.tasks import get_task

    torch.manual_seed(1)
    task = get_task(TASK)
    with BatchedEnv(task, 1) as envs:
        (episode,) = rollout_episodes(loaded, envs, task, 7200.0, [3], mode="sample", record_snapshots=True)
    assert len(episode) >= 8  # a random DT still keeps the hopper up for a few steps
    return episode


def group_rollout(loaded, trajectory, config, seed=0, with_rewards=False):
    from dtrl.envs import BatchedEnv

    rng = np.random.default_rng(seed)
    starts = grpo.branch_starts([trajectory], config, loaded.model.receptive_field, rng)
    with BatchedEnv(TASK, len(starts)) as envs:
        segments, scores, rewards, steps = grpo.rollout_groups(loaded, envs, starts, config, gamma=0.99,
                                                               device="cpu")
    return (starts, segments, scores, steps, rewards) if with_rewards else (starts, segments, scores, steps)


# ---------------------------------------------------------------------------------------------- groups


def test_a_group_starts_from_one_state_with_the_recorded_rtg(loaded, trajectory):
    config = small_config(reset_points_per_trajectory=2)
    starts, segments, scores, _ = group_rollout(loaded, trajectory, config)
    G = config.group_size
    assert len(segments) == 2 * G and scores.shape == (2 * G,)
    for k in range(2):
        members = segments[k * G:(k + 1) * G]
        t = starts[k * G].timestep
        for seg in members:
            # identical first observation = the trajectory's observation at the reset point
            np.testing.assert_array_equal(seg.observations[0], trajectory.observations[t])
            # RTG at the reset point is the one the full rollout had there (no relabeling) ...
            assert seg.returns_to_go[0] == pytest.approx(trajectory.returns_to_go[t])
            # ... and decreases by the rewards received along the sub-trajectory
            np.testing.assert_allclose(seg.returns_to_go[1:], seg.returns_to_go[:-1] - seg.rewards[:-1], rtol=1e-6)
            assert seg.timesteps[0] == t
            # the context before the reset point travels with it (receptive field, or all there is)
            assert len(seg.history) == min(t, loaded.model.receptive_field)
        # sampled actions differ between members (a group explores)
        assert not np.allclose(members[0].actions, members[1].actions)


def test_inconsistent_groups_start_from_different_states(loaded, trajectory):
    config = small_config(consistent_group_states=False, reset_points_per_trajectory=1)
    starts = grpo.branch_starts([trajectory], config, loaded.model.receptive_field, np.random.default_rng(0))
    assert len(starts) == config.group_size
    assert len({s.timestep for s in starts}) == config.group_size


def test_reset_points_follow_action_variance():
    class FakeTrajectory:
        action_variance = np.array([0.0, 0.0, 0.0, 6.0], np.float32)

    rng = np.random.default_rng(0)
    draws = np.concatenate([grpo.sample_reset_points(FakeTrajectory, 1, rng, uniform=False, temperature=1.0)
                            for _ in range(400)])
    share_active = np.mean(draws == 3)  # softmax: e^6 / (3 + e^6) = 0.993
    draws_uniform = np.concatenate([grpo.sample_reset_points(FakeTrajectory, 1, rng, uniform=True, temperature=1.0)
                                    for _ in range(400)])
    assert share_active > 0.97
    assert 0.15 < np.mean(draws_uniform == 3) < 0.35
    # K distinct points when the trajectory is long enough
    assert len(set(grpo.sample_reset_points(FakeTrajectory, 4, rng, uniform=False, temperature=1.0))) == 4


@pytest.mark.parametrize("context_length", [None, 1, 3])
def test_first_epoch_ratio_is_one_and_relabeling_breaks_it(loaded, trajectory, context_length):
    from dtrl.rollout import segments_to_batch

    config = small_config(context_length=context_length)
    _, segments, scores, _, rewards = group_rollout(loaded, trajectory, config, seed=1, with_rewards=True)
    batch = segments_to_batch(segments, loaded.normalizer, loaded.reward_scale)
    with torch.no_grad():
        log_probs, entropy = grpo.policy_outputs(loaded.model, batch, context_length)
    assert bool((log_probs[~batch.train_mask] == 0).all())
    stats = grpo.objectives.surrogate_stats(log_probs, batch.log_probs_old, batch.train_mask, "sequence", 0.2)
    assert abs(stats.ratio_max - 1) < 1e-4 and abs(stats.ratio_min - 1) < 1e-4
    assert torch.isfinite(entropy[batch.train_mask]).all()

    relabeled = [grpo.relabel_with_achieved_return(s, r) for s, r in zip(segments, rewards)]
    # ODT's relabel: the undiscounted return the branch achieved from each step on (L_traj + L_eval steps)
    for segment, branch, rewards_of in zip(relabeled, segments, rewards):
        expected = [rewards_of[j:].sum() for j in range(len(branch))]
        np.testing.assert_allclose(segment.returns_to_go, expected, rtol=1e-5)
        # the history keeps its reward differences: shifted by the first token's change
        shift = segment.returns_to_go[0] - branch.returns_to_go[0]
        np.testing.assert_allclose(segment.history.returns_to_go, branch.history.returns_to_go + shift, rtol=1e-5)
    assert len(rewards[0]) > len(segments[0])  # the L_eval steps count towards the achieved return
    batch = segments_to_batch(relabeled, loaded.normalizer, loaded.reward_scale)
    with torch.no_grad():
        log_probs, _ = grpo.policy_outputs(loaded.model, batch, context_length)
    stats = grpo.objectives.surrogate_stats(log_probs, batch.log_probs_old, batch.train_mask, "sequence", 0.2)
    assert max(abs(stats.ratio_max - 1), abs(stats.ratio_min - 1)) > 1e-3


def test_sub_trajectory_buffer_is_fifo():
    buffer = grpo.SubTrajectoryBuffer(3)
    for i in range(5):
        buffer.add(np.zeros(i + 1), float(i), iteration=i)
    assert [(adv, sampled_in) for _, adv, sampled_in in buffer.items] == [(2.0, 2), (3.0, 3), (4.0, 4)]
    clone = grpo.SubTrajectoryBuffer(1)
    clone.load_state_dict(buffer.state_dict())
    assert len(clone) == 3 and clone.items.maxlen == 3
    clone.load_state_dict({"capacity": 3, "items": [(np.zeros(2), 1.0)]})  # a checkpoint of an older dtrl
    assert list(clone.items)[0][1:] == (1.0, 0)


def test_paper_small_preset_is_the_paper_algorithm_but_for_settings_that_leave_results_unchanged():
    """--preset paper-small: every field of `paper` except torch/env threads, the checkpoint interval,
    the run name and the preset's own name (none of which changes what a seeded run computes)."""
    for name in ("hopper-random", "walker2d-medium", "door-human"):
        paper, small = grpo.paper_preset(name), grpo.paper_small_preset(name)
        differing = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(small, f.name)}
        assert differing == {"preset", "out", "threads", "env_threads", "checkpoint_every"}, (name, differing)
    small = grpo.paper_small_preset("hopper-random")
    assert (small.trajectories_per_batch * small.reset_points_per_trajectory * small.group_size,
            small.sub_trajectory_buffer_size, small.minibatch_size, small.optimizer, small.iterations,
            small.eval_every, small.eval_episodes) == (512, 2048, 256, "lamb", 500, 10, 10)
    assert grpo.parse(["--task", "hopper-random", "--preset", "paper-small"]) == small


def test_paper_preset_follows_table6():
    door = grpo.paper_preset("door-human")
    assert (door.minibatch_size, door.sub_trajectory_length, door.eval_steps, door.clip_eps,
            door.min_group_deviation, door.init_temperature, door.trajectories_per_iteration) == (512, 10, 100, 0.3,
                                                                                                 0.4, 0.04, 5)
    hopper = grpo.paper_preset("hopper-random")
    assert hopper.trajectories_per_batch * hopper.reset_points_per_trajectory * hopper.group_size == 512
    assert (hopper.gamma, hopper.learning_rate, hopper.online_rtg) == (0.995, 5e-5, 7200.0)
    # T_eval, the online context: 1 for MuJoCo, 5 for hammer and umaze-diverse
    assert (hopper.context_length, grpo.paper_preset("hammer-human").context_length,
            grpo.paper_preset("antmaze-umaze-diverse").context_length) == (1, 5, 5)
    # the cpu preset scales the amount of work, not the per-task settings of Table 6
    for name in ("hopper-random", "door-human", "pen-cloned"):
        paper, cpu = grpo.paper_preset(name), grpo.cpu_preset(name)
        assert cpu.eval_steps == min(paper.eval_steps, 300)
        for field in ("sub_trajectory_length", "group_size", "clip_eps", "min_group_deviation", "gamma",
                      "online_rtg", "init_temperature", "ratio_level", "reset_sampling"):
            assert getattr(cpu, field) == getattr(paper, field), field
        # the paper's active sampling uses the variance recorded at sampling; the cpu preset recomputes it
        # under the current policy (the levers study, benchmarks/results/grpo.md)
        assert (paper.active_sampling_variance, cpu.active_sampling_variance) == ("pre_tanh", "current")


# ---------------------------------------------------------------------------------------------- CLI


def cli_args(policy_dir, out, iterations, *extra):
    return ["--algo", "grpo", "--task", TASK, "--preset", "cpu", "--init", str(policy_dir), "--out", str(out),
            "--iterations", str(iterations), "--device", "cpu", "--trajectories-per-batch", "2",
            "--reset-points-per-trajectory", "2", "--group-size", "4", "--sub-trajectory-length", "5",
            "--eval-steps", "5", "--minibatch-size", "8", "--sub-trajectory-buffer-size", "24",
            "--eval-every", "2", "--eval-episodes", "1", "--checkpoint-every", "1", "--min-group-deviation", "0",
            *extra]


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cli_runs_two_iterations_and_writes_a_policy(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    assert finetune_main(cli_args(tiny_policy_dir, out, 2)) == 0
    initial, *rows = read_metrics(out)
    # iteration 0: the init policy, evaluated as later iterations are (the curve starts at the pretrained DT)
    from dtrl.evaluation import evaluate
    from dtrl.models.loading import load_policy
    from dtrl.tasks import get_task

    task = get_task(TASK)
    # no relabeling: the policy is evaluated at the RTG it is trained at, g_online, with T_eval (1) steps of context
    expected = evaluate(load_policy(tiny_policy_dir, task=TASK), task, episodes=1, seed=10_000,
                        target_rtg=task.online_rtg, context_length=1)
    assert initial["iteration"] == 0 and initial["env_steps"] == 0
    assert initial["eval_target_rtg"] == rows[-1]["eval_target_rtg"] == task.online_rtg != task.eval_rtg
    assert initial["eval_return_mean"] == pytest.approx(expected["eval_return_mean"])
    assert [r["iteration"] for r in rows] == [1, 2]
    for key in ("env_steps", "grad_updates", "wall_time_s", "grpo/mean_group_score", "grpo/groups_dropped",
                "losses/policy", "losses/clipfrac", "losses/approx_kl", "losses/ratio_max", "losses/entropy",
                "charts/temperature"):
        assert key in rows[-1]
    assert rows[1]["env_steps"] > rows[0]["env_steps"] > 0
    assert "eval_normalized_mean" in rows[1] and "eval_normalized_mean" not in rows[0]
    # iteration 1 trains only on fresh sub-trajectories: the first update's ratios are 1
    assert rows[0]["losses/first_update_ratio_max_dev"] < 1e-4
    assert (out / "policy" / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["algo"] == "grpo"
    # the best in-run evaluation's policy is kept beside the last one (only iteration 2 was evaluated)
    best = json.loads((out / "best_policy" / "model.json").read_text())["extra"]
    assert best["iteration"] == 2 and best["eval_return_mean"] == pytest.approx(rows[1]["eval_return_mean"])
    assert best_evaluated_return(out) == best["eval_return_mean"]


def test_dtrl_eval_defaults_to_the_target_rtg_and_context_the_trainer_recorded(tiny_policy_dir, tmp_path, capsys):
    from dtrl.cli import main as dtrl
    from dtrl.tasks import get_task

    task = get_task(TASK)
    out = tmp_path / "run"
    assert finetune_main(cli_args(tiny_policy_dir, out, 1, "--context-length", "2")) == 0
    row = read_metrics(out)[-1]
    assert row["eval_context_length"] == 2
    results = {}
    for name, path in (("grpo", out), ("pretrained", tiny_policy_dir), ("override", out)):
        capsys.readouterr()
        extra = ["--target-rtg", "123", "--context-length", "5"] if name == "override" else []
        assert dtrl(["eval", str(path), "--episodes", "1", "--device", "cpu", "--json", *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        results[name] = (result["eval_target_rtg"], result["eval_context_length"])
    assert results == {"grpo": (task.online_rtg, 2), "pretrained": (task.eval_rtg, None), "override": (123.0, 5)}
    # the in-run evaluation and dtrl eval see the same policy the same way (seeds 10_000 + run seed)
    capsys.readouterr()
    assert dtrl(["eval", str(out), "--episodes", "1", "--seed", "10000", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["eval_return_mean"] == pytest.approx(row["eval_return_mean"])
    assert dtrl(["eval", str(out), "--context-length", "0"]) == 2


def test_default_eval_rtg_is_online_only_for_methods_that_never_relabel():
    from dtrl.algos import grpo_q, odt, odt_td3, ppo
    from dtrl.algos.dt_finetune import online_targets
    from dtrl.tasks import get_task

    task = get_task(TASK)
    online, odt_style = task.online_rtg, task.eval_rtg
    expected = {grpo.GRPOConfig: online, ppo.PPOConfig: online, grpo_q.GRPOQConfig: online,
                odt.ODTConfig: odt_style, odt_td3.ODTTD3Config: odt_style}
    for config_class, target in expected.items():
        assert online_targets(config_class(), task) == (online, target), config_class.__name__
    assert online_targets(grpo.GRPOConfig(hindsight_relabel=True), task) == (online, odt_style)
    assert online_targets(odt.ODTConfig(eval_rtg=5.0), task) == (online, 5.0)


def test_resume_equals_uninterrupted(tiny_policy_dir, tmp_path):
    # (in 'refresh' mode, which also shows that every iteration's first ratios are then 1, and with the
    # weight average on, which is then part of the checkpoint; the lr constant, since a linear schedule
    # follows --iterations, which the split run changes)
    full, split = tmp_path / "full", tmp_path / "split"
    refresh = ("--old-log-probs", "refresh", "--policy-averaging", "0.5", "--eval-every", "1",
               "--learning-rate-schedule", "constant")
    assert finetune_main(cli_args(tiny_policy_dir, full, 3, *refresh)) == 0
    assert finetune_main(cli_args(tiny_policy_dir, split, 2, *refresh)) == 0
    assert finetune_main(cli_args(tiny_policy_dir, split, 3, *refresh, "--resume")) == 0
    a, b = read_metrics(full), read_metrics(split)
    assert [r["iteration"] for r in b] == [0, 1, 2, 3]  # the resumed part does not evaluate iteration 0 again
    timing = lambda row: {k: v for k, v in row.items() if k != "wall_time_s" and not k.startswith("time/")}  # noqa: E731
    for ra, rb in zip(a, b):
        assert timing(ra) == timing(rb)
    for row in a[1:]:
        assert row["grad_updates"] > 0 and row["losses/first_update_ratio_max_dev"] < 1e-4


def test_env_threads_do_not_change_the_run(tiny_policy_dir, tmp_path):
    """--env-threads steps the env copies on more threads; each copy is still stepped alone."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert finetune_main(cli_args(tiny_policy_dir, one, 2, "--eval-every", "1")) == 0
    assert finetune_main(cli_args(tiny_policy_dir, two, 2, "--eval-every", "1", "--env-threads", "2")) == 0
    timing = lambda row: {k: v for k, v in row.items() if k != "wall_time_s" and not k.startswith("time/")}  # noqa: E731
    assert [timing(row) for row in read_metrics(one)] == [timing(row) for row in read_metrics(two)]
    with pytest.raises(DtrlError, match="env-threads must be >= 1"):
        finetune_main(cli_args(tiny_policy_dir, tmp_path / "bad", 1, "--env-threads", "0"))


def test_policy_averaging_saves_and_evaluates_the_average(tiny_policy_dir, tmp_path):
    from safetensors.torch import load_file

    out, decay = tmp_path / "averaged", 0.75
    assert finetune_main(cli_args(tiny_policy_dir, out, 1, "--policy-averaging", str(decay), "--eval-every", "1")) == 0
    row = read_metrics(out)[-1]
    assert row["eval_target_rtg"] == row["eval_iterate_target_rtg"]
    assert "eval_iterate_normalized_mean" in row and "eval_normalized_mean" in row
    pretrained = load_file(str(tiny_policy_dir / "model.safetensors"))
    saved = load_file(str(out / "policy" / "model.safetensors"))
    iterate = torch.load(out / "checkpoints" / "state.pt", weights_only=False)["state"]["model"]
    moved = 0
    for name, weight in saved.items():
        if name == "log_temperature":  # set to the preset's ETPR before averaging starts
            continue
        # one iteration: average = decay * pretrained + (1 - decay) * the iterate after its update
        expected = decay * pretrained[name].double() + (1 - decay) * iterate[name].double()
        torch.testing.assert_close(weight.double(), expected, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(iterate[name], pretrained[name]))
    assert moved > 0  # the update changed the iterate, so the test can tell the average from either end
    with pytest.raises(DtrlError, match="policy-averaging"):
        finetune_main(cli_args(tiny_policy_dir, tmp_path / "bad", 1, "--policy-averaging", "1"))


@pytest.mark.parametrize("flags", [("--full-trajectories",), ("--full-trajectories", "--ratio-level", "token"),
                                   ("--hindsight-relabel", "--ratio-level", "token"),
                                   ("--active-sampling-variance", "squashed"),
                                   ("--active-sampling-variance", "current"),
                                   ("--no-consistent-group-states", "--reset-sampling", "uniform")])
def test_ablation_switches_run(tiny_policy_dir, tmp_path, flags):
    out = tmp_path / "ablation"
    assert finetune_main(cli_args(tiny_policy_dir, out, 1, "--eval-every", "0", "--eval-episodes", "1", *flags)) == 0
    (row,) = read_metrics(out)
    # one group per initial state (full trajectories: 1 episode seed), else 2 trajectories x 2 reset points
    groups = 1 if "--full-trajectories" in flags else 4
    kept = (groups - row["grpo/groups_dropped"]) * 4  # G = 4 members each
    assert row["iteration"] == 1 and row["env_steps"] > 0 and row["grpo/groups_total"] == groups
    assert row["grpo/sub_buffer_size"] == kept > 0  # --min-group-deviation 0 keeps every group that varies
    assert row["grad_updates"] == math.ceil(kept / 8)  # one epoch of minibatches of 8 over T_sub


def test_threads_option_sets_torch_threads_and_rejects_negative(tiny_policy_dir, tmp_path):
    torch.set_num_threads(2)
    try:
        assert finetune_main(cli_args(tiny_policy_dir, tmp_path / "t", 1, "--eval-every", "0", "--threads", "1")) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    with pytest.raises(DtrlError, match="threads must be >= 0"):
        finetune_main(cli_args(tiny_policy_dir, tmp_path / "u", 1, "--threads", "-1"))


def test_missing_init_is_a_one_line_error(tmp_path):
    with pytest.raises(DtrlError, match="--init"):
        finetune_main(["--algo", "grpo", "--task", TASK, "--out", str(tmp_path / "x")])


# ---------------------------------------------------------------------------------------------- dispatcher


def test_dispatcher_lists_algorithms_and_rejects_unknown(capsys):
    assert finetune_main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ALGORITHMS:
        assert name in text
    with pytest.raises(DtrlError, match="unknown algorithm 'sac'.*grpo"):
        finetune_main(["--algo", "sac"])
    with pytest.raises(DtrlError, match="needs --algo"):
        finetune_main(["--task", TASK])


def test_dispatcher_passes_the_rest_to_the_algorithm(capsys):
    with pytest.raises(SystemExit) as exc:
        finetune_main(["--task", TASK, "--algo=grpo", "--help"])
    assert exc.value.code == 0
    assert "--group-size" in capsys.readouterr().out


def test_linear_learning_rate_schedule(tiny_policy_dir, tmp_path):
    config = small_config(learning_rate=1e-3, iterations=4, learning_rate_schedule="linear")
    assert [scheduled_learning_rate(config, i) for i in (1, 2, 3, 4)] == pytest.approx([1e-3, 7.5e-4, 5e-4,
                                                                                            2.5e-4])
    assert scheduled_learning_rate(dataclasses.replace(config, learning_rate_schedule="constant"), 4) == 1e-3
    out = tmp_path / "run"
    assert finetune_main(cli_args(tiny_policy_dir, out, 2, "--learning-rate", "1e-3",
                                  "--learning-rate-schedule", "linear")) == 0
    assert [row["charts/learning_rate"] for row in read_metrics(out)[1:]] == pytest.approx([1e-3, 5e-4])


# ---------------------------------------------------------------------------------------------- line 9, by hand


def five_step_segments(loaded, trajectory, count):
    config = small_config(reset_points_per_trajectory=2)
    _, segments, _, _ = group_rollout(loaded, trajectory, config, seed=2)
    chosen = [s for s in segments if len(s) == 5][:count]
    assert len(chosen) == count
    return config, chosen


def summed_log_probs(policy, segments, context_length):
    from dtrl.rollout import segments_to_batch

    batch = segments_to_batch(segments, policy.normalizer, policy.reward_scale)
    with torch.no_grad():
        log_probs, _ = grpo.policy_outputs(policy.model, batch, context_length)
    return log_probs.sum(dim=1)


def one_update(loaded, config, items, learning_rate=1e-3):
    """update_policy on a fresh copy of the policy, temperature ~0 (no entropy pull), plain SGD."""
    policy = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    with torch.no_grad():
        policy.model.log_temperature.fill_(-30.0)
    buffer = grpo.SubTrajectoryBuffer(len(items))
    for segment, advantage in items:
        buffer.add(segment, advantage)
    optimizer = torch.optim.SGD([p for p in policy.model.policy_parameters() if p.requires_grad], lr=learning_rate)
    stats = grpo.update_policy(policy, buffer, optimizer, None, dataclasses.replace(config, minibatch_size=len(items)),
                               np.random.default_rng(0), "cpu")
    return policy, stats


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_one_update_moves_the_sequence_log_prob_with_the_advantage_sign(loaded, trajectory, advantage):
    config, (segment,) = five_step_segments(loaded, trajectory, 1)
    before = summed_log_probs(loaded, [segment], config.context_length)
    policy, stats = one_update(loaded, config, [(segment, advantage)])
    after = summed_log_probs(policy, [segment], config.context_length)
    assert stats["updates"] == 1 and stats["losses/clipfrac"] == 0.0  # a fresh sub-trajectory: ratio 1
    assert float(after - before) * advantage > 0
    # the step is first order: it moves the sequence log-prob by roughly lr * |grad|^2, no more
    assert abs(float(after - before)) < 1.0


def test_positive_and_negative_sequences_move_apart(loaded, trajectory):
    config, (good, bad) = five_step_segments(loaded, trajectory, 2)
    before = summed_log_probs(loaded, [good, bad], config.context_length)
    policy, _ = one_update(loaded, config, [(good, 1.0), (bad, -1.0)])
    after = summed_log_probs(policy, [good, bad], config.context_length)
    change = after - before
    assert float(change[0]) > float(change[1])  # first order: the gap widens by lr * |g_good - g_bad|^2 / 2


def test_clip_fraction_and_ratio_match_a_hand_computation(loaded, trajectory):
    # two sub-trajectories sampled by exactly this policy (ratio 1) and two whose behaviour log-probs
    # were 0.01 lower at each of their 5 steps: sequence ratio e^0.05 = 1.0513, outside [1 - ε, 1 + ε]
    config, segments = five_step_segments(loaded, trajectory, 4)
    shifted = [dataclasses.replace(s, log_probs=s.log_probs - np.float32(0.01)) for s in segments[2:]]
    items = [(s, 1.0) for s in [*segments[:2], *shifted]]
    _, stats = one_update(loaded, dataclasses.replace(config, clip_eps=1e-3), items)
    assert stats["losses/clipfrac"] == 0.5
    assert stats["losses/ratio_max"] == pytest.approx(math.exp(0.05), rel=1e-4)
    assert stats["losses/ratio_min"] == pytest.approx(1.0, abs=1e-4)
    assert stats["losses/first_update_ratio_max_dev"] == pytest.approx(math.exp(0.05) - 1, rel=1e-3)


def test_full_trajectory_mode_keeps_only_its_own_recent_episodes(tiny_policy_dir, tmp_path):
    # sub-trajectory mode here: 2 x 2 x 4 = 16 per iteration in a buffer of 24, about 2 iterations of data;
    # full-trajectory mode keeps as many iterations of its own data: 2 x (1 seed x G = 4 episodes) = 8
    config = small_config(full_trajectories=True, trajectories_per_batch=2, reset_points_per_trajectory=2,
                          group_size=4, sub_trajectory_buffer_size=24)
    assert grpo.sub_buffer_capacity(config) == 8
    assert grpo.sub_buffer_capacity(dataclasses.replace(config, full_trajectories=False)) == 24
    out = tmp_path / "full"
    assert finetune_main(cli_args(tiny_policy_dir, out, 3, "--full-trajectories", "--eval-every", "0")) == 0
    assert [row["grpo/sub_buffer_size"] for row in read_metrics(out)] == [4, 8, 8]


def test_diagnostics_of_the_buffer_ages_and_the_reset_distribution(tiny_policy_dir, tmp_path):
    out = tmp_path / "diag"
    assert finetune_main(cli_args(tiny_policy_dir, out, 2, "--eval-every", "0")) == 0
    first, second = read_metrics(out)
    # iteration 1 trains on its own sub-trajectories only (age 0); iteration 2 also replays those of
    # iteration 1 (age 1), sampled by the policy before its update
    assert "diagnostics/clipfrac_age0" in first and "diagnostics/clipfrac_age1" not in first
    assert 0.0 <= second["diagnostics/clipfrac_age1"] <= 1.0 and second["diagnostics/abs_log_ratio_age1"] > 0.0
    assert first["losses/first_update_ratio_max_dev"] < 1e-4  # before the first step the ratios are 1
    assert all(0.0 <= row["grpo/reset_entropy"] <= 1.0 for row in (first, second))


def test_group_spread_probe_measures_every_group_size_on_the_same_reset_points(tiny_policy_dir, tmp_path,
                                                                               monkeypatch, capsys):
    """benchmarks/studies/probe_group_spread.py: per (L_traj, G) of a finished run, seeded; rows already in the
    CSV are kept; an unfinished run is refused."""
    import csv
    import importlib
    import sys
    from pathlib import Path

    run = tmp_path / "finished"
    assert finetune_main(cli_args(tiny_policy_dir, run, 1, "--eval-every", "0")) == 0
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks" / "studies"))
    probe = importlib.import_module("probe_group_spread")

    def rows_of(out, *runs):
        monkeypatch.setattr(sys, "argv", ["probe_group_spread.py", *map(str, runs), "--sub-trajectory-lengths", "3",
                                          "5", "--group-sizes", "2", "4", "--episodes", "2", "--reset-points", "3",
                                          "--epsilons", "0", "1", "1000", "--out", str(out)])
        probe.main()
        return list(csv.DictReader(out.open()))

    rows = rows_of(tmp_path / "a.csv", run)
    assert [(r["sub_trajectory_length"], r["group_size"]) for r in rows] == [("3", "2"), ("3", "4"), ("5", "2"),
                                                                              ("5", "4")]
    for row in rows:
        assert row["groups"] == "6"  # 2 episodes x 3 reset points
        kept = [float(row[f"kept_at_eps_{eps}"]) for eps in ("0", "1", "1000")]
        assert kept[0] >= kept[1] >= kept[2] == 0.0  # a larger ε keeps fewer groups; none deviate by 1000
        assert 0.0 <= float(row["share_falling_at_different_steps"]) <= 1.0
        assert float(row["mean_std_within_group"]) >= 0.0
    assert rows_of(tmp_path / "b.csv", run) == rows  # seeded: the same groups again
    assert rows_of(tmp_path / "a.csv", run) == rows  # already probed: kept, not probed again
    assert "| finished |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        rows_of(tmp_path / "c.csv", tmp_path / "no-run")
    assert exit_info.value.code == 2 and "not finished runs" in capsys.readouterr().err


def test_reset_entropy_is_one_for_uniform_and_low_for_a_peaked_variance():
    class Flat:
        action_variance = np.zeros(50, np.float32)

    class Peaked:
        action_variance = np.array([0.0] * 49 + [30.0], np.float32)

    config = small_config()
    assert grpo.reset_entropy([Flat], config) == pytest.approx(1.0)
    assert grpo.reset_entropy([Peaked], config) < 0.05
    # uniform reset points (Fig. 1e) read no variance, so the cpu preset's 'current' one is not computed
    uniform = small_config(reset_sampling="uniform", active_sampling_variance="current")
    assert grpo.reset_entropy([Peaked], uniform) == pytest.approx(1.0)


def test_resume_of_a_finished_run_from_the_cli_changes_nothing(tiny_policy_dir, tmp_path, capsys):
    import hashlib

    from dtrl.cli import main as cli

    out = tmp_path / "done"
    assert finetune_main(cli_args(tiny_policy_dir, out, 1, "--eval-every", "0")) == 0

    def digest():
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}

    before = digest()
    assert cli(["finetune", *cli_args(tiny_policy_dir, out, 1, "--eval-every", "0", "--resume")]) == 0
    assert "is finished" in capsys.readouterr().out
    ppo = ["finetune", "--algo", "ppo", "--task", TASK, "--init", str(tiny_policy_dir), "--out", str(out),
           "--resume", "--iterations", "1", "--device", "cpu"]
    assert cli(ppo) == 2
    assert "holds a run of algorithm grpo, not ppo" in capsys.readouterr().err
    assert digest() == before


def test_squashed_variance_is_the_variance_of_the_action():
    from dtrl.models.distributions import ActionDistribution

    mu = torch.tensor([[0.0, 0.0], [3.0, -3.0]], dtype=torch.float64)
    log_std = torch.full((2, 2), math.log(0.05), dtype=torch.float64)
    dist = ActionDistribution(mu, log_std)
    # the pre-tanh variance is the same at both states; the action barely moves where tanh saturates
    assert dist.variance[0] == pytest.approx(dist.variance[1])
    assert dist.squashed_variance[1] < 1e-3 * dist.squashed_variance[0]
    generator = torch.Generator().manual_seed(0)
    samples = torch.tanh(mu + log_std.exp() * torch.randn((200_000, 2, 2), generator=generator, dtype=torch.float64))
    monte_carlo = samples.var(dim=0).mean(dim=-1)
    torch.testing.assert_close(dist.squashed_variance, monte_carlo, rtol=0.05, atol=1e-12)


def test_current_variance_of_a_fresh_trajectory_is_the_recorded_one(loaded, trajectory):
    (refreshed,) = grpo.with_current_variance(loaded, [trajectory], None, "cpu")
    np.testing.assert_allclose(refreshed.current_variance, trajectory.action_variance, rtol=1e-5, atol=1e-7)
    assert not hasattr(trajectory, "current_variance")  # the buffered original is untouched


def _groups(valid: list[bool], group_size: int, env_steps: int, tag: str) -> grpo.GroupBatch:
    n = len(valid)
    return grpo.GroupBatch([f"{tag}{i}" for i in range(n * group_size)], np.arange(n * group_size).reshape(n, -1),
                           np.ones((n, group_size)), np.array(valid), env_steps,
                           [f"{tag}r{i}" for i in range(n * group_size)])


def test_append_groups_takes_extra_groups_up_to_the_one_that_brings_the_wanted_kept_groups():
    first = _groups([True, False, False], 2, 100, "a")
    # two kept groups wanted: extra's third group brings the second kept one; the rest is left out
    merged = grpo.append_groups(first, _groups([False, True, True, True], 2, 50, "b"), 2, 2)
    assert merged.valid.tolist() == [True, False, False, False, True, True]
    assert merged.segments == [f"a{i}" for i in range(6)] + ["b0", "b1", "b2", "b3", "b4", "b5"]
    assert merged.branch_rewards[-1] == "br5" and merged.scores.shape == (6, 2)
    assert merged.env_steps == 150  # every rolled-out group's env steps count, the left-out ones' too
    # fewer kept groups than wanted: all of extra is appended
    merged = grpo.append_groups(first, _groups([False, True], 2, 50, "b"), 2, 2)
    assert merged.valid.tolist() == [True, False, False, False, True]


@pytest.mark.parametrize("deviation, rounds, groups_total", [("1e9", 2, 12), ("0", 0, 4)])
def test_dynamic_sampling_refills_dropped_groups_from_fresh_reset_points(tiny_policy_dir, tmp_path, deviation,
                                                                          rounds, groups_total):
    """ε_GRPO so high that every group is dropped: each iteration rolls out its 4 groups, then 2 more
    rounds of 4 (--dynamic-sampling-rounds 2), and keeps none; ε_GRPO 0 keeps every group: no refill."""
    out = tmp_path / f"ds{deviation}"
    args = cli_args(tiny_policy_dir, out, 2, "--eval-every", "0", "--dynamic-sampling",
                    "--dynamic-sampling-rounds", "2")
    args[args.index("--min-group-deviation") + 1] = deviation
    assert finetune_main(args) == 0
    rows = [row for row in read_metrics(out) if row["iteration"] > 0]
    assert [row["grpo/refill_rounds"] for row in rows] == [rounds, rounds]
    assert [row["grpo/groups_total"] for row in rows] == [groups_total, groups_total]
    assert [row["grpo/groups_dropped"] for row in rows] == [groups_total if rounds else 0] * 2
    plain = tmp_path / f"plain{deviation}"
    args = cli_args(tiny_policy_dir, plain, 2, "--eval-every", "0")
    args[args.index("--min-group-deviation") + 1] = deviation
    assert finetune_main(args) == 0
    plain_rows = [row for row in read_metrics(plain) if row["iteration"] > 0]
    assert all(row["grpo/groups_total"] == 4 and "grpo/refill_rounds" not in row for row in plain_rows)
    if rounds:  # the refills cost env steps
        assert rows[-1]["env_steps"] > plain_rows[-1]["env_steps"]


def test_dynamic_sampling_is_refused_with_full_trajectories():
    with pytest.raises(DtrlError, match="dynamic-sampling"):
        small_config(dynamic_sampling=True, full_trajectories=True)
    with pytest.raises(DtrlError, match="dynamic-sampling-rounds"):
        small_config(dynamic_sampling_rounds=-1)
