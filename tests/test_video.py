"""Videos: `dtrl eval --video` and `--video-every` render evaluation episodes headless (EGL, else
OSMesa). Where neither works, the rendering tests are skipped with the reason; the refusals are not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtrl.cli import main as cli
from dtrl.errors import DtrlError
from dtrl.evaluation import evaluate, headless_env, record_video
from dtrl.models.loading import load_policy

TASK = "hopper-random"


@pytest.fixture(scope="module")
def renders():
    try:
        headless_env(TASK, 0).close()
    except DtrlError as exc:
        pytest.skip(f"no headless rendering here: {exc}")


def read_frames(path) -> list[np.ndarray]:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return [frame for frame in reader]


def test_eval_video_holds_the_evaluated_episode(renders, tiny_files, tmp_path, capsys):
    _, policy_dir = tiny_files
    video = tmp_path / "hopper.mp4"
    assert cli(["eval", str(policy_dir), "--episodes", "2", "--video", str(video), "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["video"] == str(video)
    frames = read_frames(video)
    assert len(frames) > 1 and frames[0].ndim == 3 and frames[0].shape[2] == 3
    assert frames[0].std() > 0  # a picture, not a blank frame
    # the video's episode is the first one `dtrl eval` scored: same seed, mean action, RTG and context
    policy = load_policy(policy_dir, task=TASK)
    recorded = record_video(policy, TASK, tmp_path / "again.gif", target_rtg=result["eval_target_rtg"])
    first = evaluate(policy, TASK, episodes=1, target_rtg=result["eval_target_rtg"], seed=0)
    assert recorded["returns"][0] == pytest.approx(first["eval_return_mean"], rel=1e-5)
    assert len(frames) == first["eval_length_mean"]  # one frame per step (MP4: every frame)
    assert cli(["eval", str(policy_dir), "--episodes", "1", "--video", str(tmp_path / "fast.mp4"), "--video-fps", "25",
                "--threads", "1"]) == 0
    assert len(read_frames(tmp_path / "fast.mp4")) == -(-first["eval_length_mean"] // 5)  # Hopper: 125 / 25


def test_the_camera_follows_the_agent(renders):
    """gymnasium 1.x's free camera stays where the episode started; the video's camera (the model's
    `track` camera) keeps a hopper that moved 6 m in the picture."""
    import mujoco

    env = headless_env(TASK, 0)
    raw = env.unwrapped_env

    def hopper_pixels() -> int:  # the hopper is orange-brown; floor and sky are not
        frame = np.asarray(env.render()).astype(int)
        return int(((frame[..., 0] - frame[..., 2]) > 60).sum())

    try:
        assert hopper_pixels() > 500
        raw.data.qpos[0] += 6.0
        mujoco.mj_forward(raw.model, raw.data)
        assert hopper_pixels() > 500
        raw.mujoco_renderer.camera_id = -1  # gymnasium's default: the hopper is out of the picture
        assert hopper_pixels() == 0
    finally:
        env.close()


def test_max_fps_renders_every_kth_step_in_real_time(renders, tiny_files, tmp_path):
    """`dtrl demo` caps its video at 25 frames a second: Hopper's 125 become every 5th step, played at 25."""
    import imageio.v2 as imageio

    policy = load_policy(tiny_files[1], task=TASK)
    full = record_video(policy, TASK, tmp_path / "full.mp4", max_steps=42)
    capped = record_video(policy, TASK, tmp_path / "capped.mp4", max_steps=42, max_fps=25)
    assert capped["returns"] == full["returns"]  # the same steps, fewer frames of them
    assert full["frames"] == 42 and capped["frames"] == 9 == len(read_frames(capped["video"]))  # steps 0, 5, ..., 40
    with imageio.get_reader(capped["video"]) as reader:
        assert reader.get_meta_data()["fps"] == pytest.approx(25)


def test_video_every_records_at_the_evaluations_without_changing_the_run(renders, tiny_files, tmp_path):
    dataset, policy_dir = tiny_files

    def run(out, *extra):
        argv = ["finetune", "--algo", "odt", "--task", TASK, "--init", str(policy_dir), "--dataset", str(dataset),
                "--out", str(out), "--updates-per-iteration", "2", "--batch-size", "4", "--buffer-size", "4",
                "--eval-episodes", "1", "--eval-every", "1", "--device", "cpu", "--iterations", "2", *extra]
        assert cli(argv) == 0
        return [{k: v for k, v in json.loads(line).items() if not (k.startswith("time/") or k == "wall_time_s")}
                for line in (out / "metrics.jsonl").read_text().splitlines()]

    with_videos = run(tmp_path / "v", "--video-every", "2", "--video-fps", "25")
    assert sorted(p.name for p in (tmp_path / "v" / "videos").iterdir()) == ["iteration_2.mp4"]
    assert with_videos == run(tmp_path / "plain")  # recording draws no random numbers the run uses
    frames = read_frames(tmp_path / "v" / "videos" / "iteration_2.mp4")  # every 5th of the episode's steps
    assert len(frames) == -(-with_videos[-1]["eval_length_mean"] // 5)


def test_bad_video_paths_are_refused_before_any_work(tiny_files, tmp_path, capsys):
    _, policy_dir = tiny_files
    for path, message in ((tmp_path / "x.avi", "give a .mp4 or .gif file"),
                          (tmp_path / "missing" / "x.mp4", "does not exist")):
        assert cli(["eval", str(policy_dir), "--video", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dtrl: error:") and message in err[0]
    assert cli(["finetune", "--algo", "odt", "--task", TASK, "--video-every", "-1"]) == 2
    assert "video-every and video-fps must be >= 0" in capsys.readouterr().err
    assert cli(["eval", str(policy_dir), "--video", str(tmp_path / "x.mp4"), "--video-fps", "-1"]) == 2
    assert "--video-fps must be >= 0" in capsys.readouterr().err
