"""Task registry: a dataset name (``hopper-medium``) -> environment, data sources and the paper's
per-domain settings (Table 6), plus D4RL reference scores for normalisation.

Any other gymnasium MuJoCo env id (``HalfCheetah-v5``, ``Swimmer-v5`` ...) is a valid task too:
``get_task`` builds a generic entry for it with no reference scores, so scores are raw returns.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from dtrl.errors import DtrlError


@dataclass(frozen=True)
class Task:
    name: str
    """registry name, e.g. ``hopper-medium``; for a generic env the env id itself"""
    env_id: str
    """gymnasium environment id"""
    family: str
    """env family: hopper | walker2d | ant | antmaze | door | hammer | pen | generic"""
    domain: str
    """paper domain: mujoco | antmaze | adroit | generic (selects Table 5/6 settings)"""
    level: str | None = None
    """dataset level: random | medium | medium-replay | umaze | umaze-diverse | human | cloned"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for ``gymnasium.make``"""
    max_episode_steps: int = 1000
    """episode horizon (time limit), as D4RL used it"""
    ref_min_score: float | None = None
    """D4RL random-policy return (normalised score 0)"""
    ref_max_score: float | None = None
    """D4RL expert return (normalised score 100)"""
    reward_scale: float = 1.0
    """returns-to-go are divided by this before entering the model (ODT convention)"""
    online_rtg: float = 0.0
    """target return-to-go for online rollouts (paper Table 6 'RTG')"""
    eval_rtg: float = 0.0
    """target return-to-go for evaluation (ODT convention: half the online target on MuJoCo)"""
    context_train: int = 20
    """context length K for training (Table 6 T_train)"""
    context_eval: int = 20
    """context length K used at evaluation in the paper (Table 6 T_eval)"""
    gamma: float = 0.99
    """discount for GRPO sub-trajectory scores (Table 6)"""
    minari_id: str | None = None
    """Minari dataset id that replaces the D4RL file, when one exists"""
    d4rl_name: str | None = None
    """the D4RL dataset name the paper used (for the paper's Table 1 lookup)"""
    buildable: tuple[str, ...] = ("random",)
    """levels ``dtrl data build`` can make for this env"""

    @property
    def has_reference(self) -> bool:
        return self.ref_min_score is not None and self.ref_max_score is not None

    def normalize(self, raw_return: float) -> float | None:
        """D4RL normalised score: 100 * (R - min) / (max - min); None without reference scores."""
        if not self.has_reference:
            return None
        return 100.0 * (raw_return - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


@lru_cache(maxsize=1)
def reference_scores() -> dict[str, tuple[float, float]]:
    text = resources.files("dtrl.resources").joinpath("d4rl_ref_scores.csv").read_text()
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {r["family"]: (float(r["ref_min_score"]), float(r["ref_max_score"])) for r in csv.DictReader(rows)}


# Table 6 per domain/level: (online RTG, gamma, context train, context eval). Eval RTG follows ODT.
_LOCOMOTION = {
    "hopper": dict(env_id="Hopper-v5", online_rtg=7200.0, eval_rtg=3600.0),
    "walker2d": dict(env_id="Walker2d-v5", online_rtg=10000.0, eval_rtg=5000.0),
    # D4RL's Ant-v2 observation had 111 dims with (always-zero) contact forces; Minari's Ant-v5
    # datasets use 105 dims with contact forces included, which we keep as the gymnasium default.
    "ant": dict(env_id="Ant-v5", online_rtg=12000.0, eval_rtg=6000.0),
}
_MINARI_LOCOMOTION = {"medium": "mujoco/{env}/medium-v0"}

_ADROIT = {
    "door": dict(env_id="AdroitHandDoor-v1", max_episode_steps=200, online_rtg=3000.0, eval_rtg=3000.0),
    "hammer": dict(env_id="AdroitHandHammer-v1", max_episode_steps=200, online_rtg=4000.0, eval_rtg=4000.0,
                   context_eval=5),
    # D4RL's pen episodes are 100 steps (its reference scores assume that horizon).
    "pen": dict(env_id="AdroitHandPen-v1", max_episode_steps=100, online_rtg=6000.0, eval_rtg=6000.0),
}


def _build_registry() -> dict[str, Task]:
    refs = reference_scores()
    tasks: dict[str, Task] = {}
    for family, spec in _LOCOMOTION.items():
        for level in ("random", "medium", "medium-replay"):
            minari = _MINARI_LOCOMOTION.get(level)
            tasks[f"{family}-{level}"] = Task(
                name=f"{family}-{level}", family=family, domain="mujoco", level=level,
                max_episode_steps=1000, ref_min_score=refs[family][0], ref_max_score=refs[family][1],
                reward_scale=1000.0, gamma=0.995, context_train=20, context_eval=1,
                minari_id=minari.format(env=family) if minari else None,
                d4rl_name=f"{family}-{level}-v2", buildable=("random", "medium", "medium-replay"),
                **spec,
            )
    for level, context_train, context_eval in (("umaze", 5, 1), ("umaze-diverse", 1, 5)):
        ref = refs[f"antmaze-{level}"]
        tasks[f"antmaze-{level}"] = Task(
            name=f"antmaze-{level}", env_id="AntMaze_UMaze-v5", family="antmaze", domain="antmaze",
            level=level,
            # D4RL antmaze: 27-dim ant state without contact forces, episode ends on reaching the goal.
            env_kwargs={"continuing_task": False, "include_cfrc_ext_in_observation": False},
            max_episode_steps=700, ref_min_score=ref[0], ref_max_score=ref[1], reward_scale=1.0,
            online_rtg=2.0, eval_rtg=1.0, gamma=1.0, context_train=context_train, context_eval=context_eval,
            minari_id=f"D4RL/antmaze/{level}-v1", d4rl_name=f"antmaze-{level}-v2",
        )
    for family, spec in _ADROIT.items():
        spec = dict(spec)
        context_eval = spec.pop("context_eval", 1)
        for level in ("human", "cloned"):
            tasks[f"{family}-{level}"] = Task(
                name=f"{family}-{level}", family=family, domain="adroit", level=level,
                ref_min_score=refs[family][0], ref_max_score=refs[family][1], reward_scale=1000.0,
                gamma=0.99, context_train=5, context_eval=context_eval,
                minari_id=f"D4RL/{family}/{level}-v2", d4rl_name=f"{family}-{level}-v1", **spec,
            )
    return tasks


TASKS: dict[str, Task] = _build_registry()


def _generic_task(env_id: str) -> Task:
    """A task for any gymnasium MuJoCo env id: horizon from its spec, raw-return scores."""
    import gymnasium as gym

    from dtrl.envs import register_all

    register_all()
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        known = ", ".join(sorted(TASKS))
        raise DtrlError(f"unknown task {env_id!r}: not a dtrl task ({known}) nor a gymnasium env id ({exc})") from None
    entry = str(spec.entry_point)
    if "mujoco" not in entry:
        raise DtrlError(f"unknown task {env_id!r}: gymnasium env {env_id} is not a MuJoCo env ({entry})")
    steps = spec.max_episode_steps or 1000
    return Task(name=env_id, env_id=env_id, family="generic", domain="generic", max_episode_steps=steps,
                reward_scale=1000.0, online_rtg=0.0, eval_rtg=0.0, gamma=0.995, context_train=20,
                context_eval=20, buildable=("random", "medium", "medium-replay"))


def get_task(name: str) -> Task:
    """Resolve a registry name (``hopper-medium``, also ``hopper-medium-v2``) or a gymnasium env id."""
    key = name.strip()
    if key in TASKS:
        return TASKS[key]
    for suffix in ("-v0", "-v1", "-v2"):
        if key.endswith(suffix) and key[: -len(suffix)] in TASKS:
            return TASKS[key[: -len(suffix)]]
    return _generic_task(key)


def with_online_rtg(task: Task, rtg: float) -> Task:
    return dataclasses.replace(task, online_rtg=rtg)


def tasks_table() -> list[dict[str, Any]]:
    return [
        {
            "task": t.name, "env_id": t.env_id, "max_steps": t.max_episode_steps,
            "ref_min": t.ref_min_score, "ref_max": t.ref_max_score, "reward_scale": t.reward_scale,
            "online_rtg": t.online_rtg, "eval_rtg": t.eval_rtg, "gamma": t.gamma,
            "minari_id": t.minari_id or "-", "build": ",".join(t.buildable),
        }
        for t in TASKS.values()
    ]


def main(argv: list[str]) -> int:
    """``dtrl tasks``: print the registry."""
    from rich.console import Console
    from rich.table import Table

    if argv and argv[0] in ("-h", "--help"):
        print("usage: dtrl tasks\n\nPrint the paper's 17 tasks: env id, horizon, D4RL reference scores, "
              "reward scale, target RTGs (Table 6), Minari id and buildable dataset levels.\n"
              "Any other gymnasium MuJoCo env id is accepted as a task too (raw returns, no reference).")
        return 0
    rows = tasks_table()
    table = Table(title="dtrl tasks (any other gymnasium MuJoCo env id works too: raw returns)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    Console(width=200).print(table)
    return 0
