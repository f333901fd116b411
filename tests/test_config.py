from dataclasses import dataclass, field

import pytest

from dtrl.config import CommonConfig, ModelConfig, from_dict, parse_config, to_dict
from dtrl.errors import DtrlError


@dataclass
class ToyConfig(CommonConfig):
    group_size: int = 8
    """group size G"""
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise DtrlError(f"group-size must be >= 2, got {self.group_size}")


def _cpu(task):
    return ToyConfig(task=task, preset="cpu", group_size=4, model=ModelConfig(embed_dim=64, n_head=2))


def _paper(task):
    if task.startswith("door"):
        raise DtrlError(f"preset 'paper' is not defined for task {task}")
    return ToyConfig(task=task, preset="paper")


PRESETS = {"cpu": _cpu, "paper": _paper}


def parse(argv):
    return parse_config(ToyConfig, argv, PRESETS, "toy", "dtrl toy")


def test_preset_gives_defaults_and_flags_override():
    config = parse(["--task", "hopper-random", "--preset", "cpu", "--group-size", "6", "--model.n-layer", "2"])
    assert config.group_size == 6 and config.model.n_layer == 2 and config.model.embed_dim == 64
    paper = parse(["--task", "hopper-random", "--preset", "paper"])
    assert paper.group_size == 8 and paper.model.embed_dim == 512


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "hopper-random", "--preset", "gpu"], "unknown preset"),
        (["--task", "nope-task"], "unknown task"),
        (["--task", "door-human", "--preset", "paper"], "not defined for task"),
        (["--task", "hopper-random", "--group-size", "1"], "group-size must be >= 2"),
        (["--task", "hopper-random", "--eval-episodes", "0"], "eval-episodes must be >= 1"),
        (["--task", "hopper-random", "--model.embed-dim", "30", "--model.n-head", "4"], "divisible"),
    ],
)
def test_invalid_values_are_rejected_before_work(argv, message):
    with pytest.raises(DtrlError, match=message):
        parse(argv)


def test_round_trip_through_dict():
    config = parse(["--task", "hopper-random", "--model.n-layer", "3"])
    again = from_dict(ToyConfig, to_dict(config) | {"field_from_the_future": 1})
    assert again == config


@pytest.mark.parametrize("argv", [
    ["finetune", "--algo", "grpo", "--learning-rate", "inf"],
    ["finetune", "--algo", "ppo", "--clip-eps", "nan"],
    ["finetune", "--algo", "odt", "--weight-decay", "-inf"],
    ["finetune", "--algo", "iql", "--temperature", "nan"],
    ["finetune", "--algo", "sb3-sac", "--learning-rate", "nan"],
    ["pretrain", "--learning-rate", "nan"],
    ["pretrain", "--model.dropout", "nan"],
    ["eval", "runs/x", "--target-rtg", "inf"],
    ["data", "build", "hopper-random", "--out", "x.hdf5", "--learning-rate", "nan"],
])
def test_every_numeric_option_refuses_nan_and_inf(argv, tmp_path, capsys):
    from dtrl.cli import main as cli

    assert cli([*argv, "--task" if argv[0] in ("finetune", "pretrain") else "--seed",
                "hopper-random" if argv[0] in ("finetune", "pretrain") else "0"]) == 2
    assert "must be a finite number" in capsys.readouterr().err
