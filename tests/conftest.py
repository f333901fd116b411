"""Shared by the test modules: the session fixture ``tiny_files`` (a tiny hopper-random dataset and an
untrained DT in the checkpoint format, for the finetuning tests) and the helper ``read_metrics``
(``from conftest import read_metrics``)."""

import json

import numpy as np
import pytest
import torch

from dtrl.data.normalizer import StateNormalizer


def _random_hopper_dataset(path, episodes=8, max_steps=30):
    from dtrl.data.hdf5 import write_d4rl
    from dtrl.envs import make

    env = make("hopper-random", seed=0)
    rng = np.random.default_rng(0)
    rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        for t in range(max_steps):
            action = rng.uniform(-1, 1, 3).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            cut = (truncated or t == max_steps - 1) and not terminated
            for key, value in zip(rows, (obs, action, reward, terminated, cut)):
                rows[key].append(value)
            obs = next_obs
            if terminated or cut:
                break
    env.close()
    write_d4rl(path, {k: np.asarray(v, np.float32 if k in ("observations", "actions", "rewards") else bool)
                      for k, v in rows.items()}, {})


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """(dataset .hdf5, pretrained-policy dir) for hopper-random: random-action episodes and an
    untrained one-layer 16-wide DT in the checkpoint format (enough to exercise every code path)."""
    from dtrl.config import ModelConfig
    from dtrl.data import load_dataset
    from dtrl.models import DecisionTransformer
    from dtrl.models.checkpoint import save_policy

    root = tmp_path_factory.mktemp("finetune")
    dataset_path = root / "tiny-hopper.hdf5"
    _random_hopper_dataset(dataset_path)
    dataset = load_dataset(str(dataset_path), "hopper-random")
    torch.manual_seed(0)
    model = DecisionTransformer(ModelConfig(n_layer=1, n_head=1, embed_dim=16, context_length=4, dropout=0.0),
                                dataset.obs_dim, dataset.act_dim)
    save_policy(root / "policy", model, StateNormalizer.from_trajectories(dataset.trajectories), "hopper-random")
    return dataset_path, root / "policy"


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_line(capsys, code, *fragments) -> str:
    """The command exited 2 with one ``dtrl: error:`` line holding every fragment, and no traceback."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("dtrl: error: ") and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err
