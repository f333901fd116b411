import pytest

from dtrl.cli import main
from dtrl.errors import DtrlError
from dtrl.tasks import TASKS, get_task


def test_registry_has_the_papers_17_datasets_and_the_larger_d4rl_ones():
    expected = {f"{e}-{kind}" for e in ("hopper", "walker2d", "ant") for kind in ("random", "medium", "medium-replay")}
    expected |= {"antmaze-umaze", "antmaze-umaze-diverse"}
    expected |= {f"{e}-{kind}" for e in ("door", "hammer", "pen") for kind in ("human", "cloned")}
    assert len(expected) == 17
    beyond = {f"antmaze-{maze}-{kind}" for maze in ("medium", "large") for kind in ("play", "diverse")}
    beyond |= {f"relocate-{level}" for level in ("human", "cloned", "expert")}
    assert set(TASKS) == expected | beyond
    relocate, large = get_task("relocate-human"), get_task("antmaze-large-diverse")
    assert (relocate.env_id, relocate.ref_min_score, relocate.ref_max_score) == ("AdroitHandRelocate-v1", -6.425911,
                                                                                   4233.877797728884)
    assert (large.env_id, large.max_episode_steps, large.minari_id) == ("AntMaze_Large-v5", 1000,
                                                                         "D4RL/antmaze/large-diverse-v1")


def test_gymnasium_robotics_mujoco_envs_are_generic_tasks():
    for env_id in ("AntMaze_Large-v5", "PointMaze_Medium-v3", "AdroitHandRelocate-v1"):
        assert get_task(env_id).domain == "generic"
    assert get_task("AntMaze_Large-v5").family == "antmaze"
    with pytest.raises(DtrlError, match="not a MuJoCo env"):
        get_task("CartPole-v1")


def test_normalisation_uses_d4rl_reference_scores():
    hopper = get_task("hopper-medium")
    assert hopper.normalize(-20.272305) == pytest.approx(0.0)
    assert hopper.normalize(3234.3) == pytest.approx(100.0)
    assert get_task("antmaze-umaze").normalize(1.0) == pytest.approx(100.0)


def test_table6_settings():
    assert get_task("hopper-random").online_rtg == 7200
    assert get_task("walker2d-medium").gamma == 0.995
    assert get_task("door-human").gamma == 0.99
    assert get_task("antmaze-umaze").gamma == 1.0
    assert get_task("pen-cloned").max_episode_steps == 100


def test_v2_suffix_and_generic_env_id():
    assert get_task("hopper-medium-v2").name == "hopper-medium"
    generic = get_task("HalfCheetah-v5")
    assert generic.family == "generic" and not generic.has_reference
    assert generic.normalize(123.0) is None
    assert generic.max_episode_steps == 1000


def test_unknown_and_non_mujoco_tasks_are_rejected():
    with pytest.raises(DtrlError, match="unknown task"):
        get_task("hoppr-medium")
    with pytest.raises(DtrlError, match="not a MuJoCo env"):
        get_task("CartPole-v1")


def test_cli_tasks_prints_table(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "hopper-medium" in out and "AdroitHandPen-v1" in out


def test_cli_unknown_command_is_one_line_error(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dtrl: error: unknown command") and "\n" not in err
