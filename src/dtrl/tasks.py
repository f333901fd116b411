"""Task registry: a dataset name (``hopper-medium``) -> environment, data sources and the paper's
per-domain settings (Table 6), plus D4RL reference scores for normalisation.

Any other gymnasium MuJoCo env id (``HalfCheetah-v5``, ``Swimmer-v5`` ...) is a valid task too:
``get_task`` builds a generic entry for it with no reference scores, so scores are raw returns.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from dtrl.errors import DtrlError


@dataclass(frozen=True)
class Task:
    """One task: its env, reference scores and paper Table 6 row. The defaults of the Table 6 fields are
    the MuJoCo row, and the finetuning configs take their own defaults from them (one home)."""

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
    context_eval: int = 1
    """T_eval (Table 6): timesteps of context the policy sees online (rollouts and evaluation)"""
    gamma: float = 0.99
    """discount for GRPO sub-trajectory scores (Table 6)"""
    batch_size: int = 256
    """minibatch size of the online updates (Table 6 'BS')"""
    learning_rate: float = 5e-5
    """actor learning rate of the online updates (Table 6 lr_a)"""
    clip_eps: float = 0.2
    """clip ε of the importance ratio (Table 6)"""
    sub_trajectory_length: int = 15
    """L_traj (Table 6): sampled steps of a GRPO sub-trajectory"""
    eval_steps: int = 400
    """L_eval (Table 6): mean-action steps that score a GRPO sub-trajectory"""
    min_group_deviation: float = 2.0
    """ε_GRPO (Table 6): groups whose scores deviate less than this from their mean are dropped"""
    init_temperature: float = 0.2
    """ETPR (Table 6): entropy temperature at the start of finetuning"""
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


# Paper Table 6, per dataset (the rows GRPO-DT, PPO-DT and Q-guided GRPO read through Task):
# (BS, g_online, gamma, lr_a, L_traj, L_eval, clip eps, eps_GRPO, ETPR, T_eval).
_TABLE6: dict[str, tuple[int, float, float, float, int, int, float, float, float, int]] = {
    "hopper-medium": (256, 7200, 0.995, 5e-5, 15, 400, 0.2, 2.0, 0.20, 1),
    "hopper-medium-replay": (256, 7200, 0.995, 5e-5, 15, 400, 0.2, 2.0, 0.20, 1),
    "hopper-random": (256, 7200, 0.995, 5e-5, 15, 400, 0.2, 2.0, 0.20, 1),
    "walker2d-medium": (256, 10000, 0.995, 5e-5, 15, 400, 0.3, 2.0, 0.04, 1),
    "walker2d-medium-replay": (256, 10000, 0.995, 5e-5, 15, 400, 0.3, 2.0, 0.04, 1),
    "walker2d-random": (256, 10000, 0.995, 5e-5, 15, 400, 0.3, 2.0, 0.20, 1),
    "ant-medium": (256, 12000, 0.995, 5e-5, 15, 200, 0.3, 2.0, 0.04, 1),
    "ant-medium-replay": (256, 12000, 0.995, 5e-5, 15, 200, 0.3, 2.0, 0.04, 1),
    "ant-random": (256, 12000, 0.995, 5e-5, 15, 200, 0.3, 2.0, 0.20, 1),
    "door-cloned": (512, 3000, 0.99, 3e-5, 10, 100, 0.3, 0.5, 0.10, 1),
    "door-human": (512, 3000, 0.99, 3e-5, 10, 100, 0.3, 0.4, 0.04, 1),
    "pen-cloned": (512, 6000, 0.99, 3e-5, 3, 30, 0.3, 0.0, 0.02, 1),
    "pen-human": (512, 6000, 0.99, 3e-5, 3, 30, 0.3, 0.0, 0.02, 1),
    "hammer-cloned": (512, 4000, 0.99, 3e-5, 10, 100, 0.3, 0.0, 0.05, 5),
    "hammer-human": (512, 4000, 0.99, 3e-5, 10, 100, 0.3, 0.8, 0.05, 5),
    "antmaze-umaze": (256, 2, 1.0, 5e-5, 10, 200, 0.2, 0.0, 0.05, 1),
    "antmaze-umaze-diverse": (256, 2, 1.0, 5e-5, 10, 200, 0.2, 0.0, 0.05, 5),
}
# A gymnasium MuJoCo env outside the paper gets the settings of its closest kind: random-data locomotion.
_GENERIC_TABLE6_ROW = "hopper-random"
# D4RL datasets beyond the paper's 17 take the row of the paper's closest task (the paper has none):
# the larger AntMazes antmaze-umaze's, relocate door-cloned's with its own target return (the experts
# score ~4200; ODT+TD3's commands condition relocate on 50 at rewards / 100, i.e. 5000)
_TABLE6_STAND_IN = {**{f"antmaze-{maze}-{kind}": ("antmaze-umaze", {}) for maze in ("medium", "large")
                       for kind in ("play", "diverse")},
                    **{f"relocate-{level}": ("door-cloned", {"online_rtg": 5000.0})
                       for level in ("human", "cloned", "expert")}}


def _table6_fields(name: str) -> dict[str, Any]:
    row, overrides = (name, {}) if name in _TABLE6 else _TABLE6_STAND_IN[name]
    bs, rtg, gamma, lr, l_traj, l_eval, clip, eps_grpo, etpr, t_eval = _TABLE6[row]
    return dict(batch_size=bs, online_rtg=float(rtg), gamma=gamma, learning_rate=lr, sub_trajectory_length=l_traj,
                eval_steps=l_eval, clip_eps=clip, min_group_deviation=eps_grpo, init_temperature=etpr,
                context_eval=t_eval) | overrides


# Per family: env id, horizon and the evaluation RTG (ODT's convention: half of g_online on MuJoCo).
_LOCOMOTION = {
    "hopper": dict(env_id="Hopper-v5", eval_rtg=3600.0),
    "walker2d": dict(env_id="Walker2d-v5", eval_rtg=5000.0),
    # D4RL's Ant-v2 observation had 111 dims with (always-zero) contact forces; Minari's Ant-v5
    # datasets use 105 dims with contact forces included, which we keep as the gymnasium default.
    "ant": dict(env_id="Ant-v5", eval_rtg=6000.0),
}
_MINARI_LOCOMOTION = {"medium": "mujoco/{env}/medium-v0"}

_ADROIT = {
    "door": dict(env_id="AdroitHandDoor-v1", max_episode_steps=200, eval_rtg=3000.0),
    "hammer": dict(env_id="AdroitHandHammer-v1", max_episode_steps=200, eval_rtg=4000.0),
    # D4RL's pen episodes are 100 steps (its reference scores assume that horizon).
    "pen": dict(env_id="AdroitHandPen-v1", max_episode_steps=100, eval_rtg=6000.0),
}


# D4RL evaluates (and ODT / ODT+TD3 finetune) AntMaze from a fixed start cell to a fixed goal cell;
# gymnasium-robotics' default maps draw both at random each episode. These are the evaluation maps
# Minari's D4RL AntMaze datasets record as their eval env (r: reset cell, g: goal cell).
_R, _G = "r", "g"
ANTMAZE_EVAL_MAPS = {
    "umaze": [[1, 1, 1, 1, 1],
              [1, 0, 0, _R, 1],
              [1, 0, 1, 1, 1],
              [1, 0, 0, _G, 1],
              [1, 1, 1, 1, 1]],
    "medium": [[1, 1, 1, 1, 1, 1, 1, 1],
               [1, _R, 0, 1, 1, 0, 0, 1],
               [1, 0, 0, 1, 0, 0, 0, 1],
               [1, 1, 0, 0, 0, 1, 1, 1],
               [1, 0, 0, 1, 0, 0, 0, 1],
               [1, 0, 1, 0, 0, 1, 0, 1],
               [1, 0, 0, 0, 1, 0, _G, 1],
               [1, 1, 1, 1, 1, 1, 1, 1]],
    "large": [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
              [1, _R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
              [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
              [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
              [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
              [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
              [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
              [1, 0, 0, 1, 0, 0, 0, 1, 0, _G, 0, 1],
              [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]],
}


def _build_registry() -> dict[str, Task]:
    refs = reference_scores()
    tasks: dict[str, Task] = {}
    for family, spec in _LOCOMOTION.items():
        for level in ("random", "medium", "medium-replay"):
            name = f"{family}-{level}"
            minari = _MINARI_LOCOMOTION.get(level)
            tasks[name] = Task(
                name=name, family=family, domain="mujoco", level=level,
                max_episode_steps=1000, ref_min_score=refs[family][0], ref_max_score=refs[family][1],
                reward_scale=1000.0, context_train=20,
                minari_id=minari.format(env=family) if minari else None,
                d4rl_name=f"{name}-v2", buildable=("random", "medium", "medium-replay"),
                **spec, **_table6_fields(name),
            )
    for level, context_train in (("umaze", 5), ("umaze-diverse", 1)):
        name = f"antmaze-{level}"
        ref = refs[name]
        tasks[name] = Task(
            name=name, env_id="AntMaze_UMaze-v5", family="antmaze", domain="antmaze",
            level=level,
            # D4RL antmaze: 27-dim ant state without contact forces, episode ends on reaching the goal,
            # fixed start and goal cells
            env_kwargs={"continuing_task": False, "include_cfrc_ext_in_observation": False,
                        "maze_map": ANTMAZE_EVAL_MAPS["umaze"]},
            max_episode_steps=700, ref_min_score=ref[0], ref_max_score=ref[1], reward_scale=1.0,
            eval_rtg=1.0, context_train=context_train,
            minari_id=f"D4RL/antmaze/{level}-v1", d4rl_name=f"{name}-v2", **_table6_fields(name),
        )
    # D4RL's larger AntMazes (not in the paper): 1000-step episodes, the umaze settings
    for maze in ("medium", "large"):
        for kind in ("play", "diverse"):
            name = f"antmaze-{maze}-{kind}"
            tasks[name] = Task(
                name=name, env_id=f"AntMaze_{maze.capitalize()}-v5", family="antmaze", domain="antmaze",
                level=f"{maze}-{kind}",
                env_kwargs={"continuing_task": False, "include_cfrc_ext_in_observation": False,
                            "maze_map": ANTMAZE_EVAL_MAPS[maze]},
                max_episode_steps=1000, ref_min_score=0.0, ref_max_score=1.0, reward_scale=1.0, eval_rtg=1.0,
                context_train=5, minari_id=f"D4RL/antmaze/{maze}-{kind}-v1", d4rl_name=f"{name}-v2",
                buildable=(), **_table6_fields(name),
            )
    for level in ("human", "cloned", "expert"):  # Adroit relocate (not in the paper)
        name = f"relocate-{level}"
        low, high = refs["relocate"]
        tasks[name] = Task(
            name=name, env_id="AdroitHandRelocate-v1", family="relocate", domain="adroit", level=level,
            max_episode_steps=200, ref_min_score=low, ref_max_score=high, reward_scale=1000.0, eval_rtg=5000.0,
            context_train=5, minari_id=f"D4RL/relocate/{level}-v2", d4rl_name=f"{name}-v1", **_table6_fields(name),
        )
    for family, spec in _ADROIT.items():
        for level in ("human", "cloned"):
            name = f"{family}-{level}"
            tasks[name] = Task(
                name=name, family=family, domain="adroit", level=level,
                ref_min_score=refs[family][0], ref_max_score=refs[family][1], reward_scale=1000.0,
                context_train=5,
                minari_id=f"D4RL/{family}/{level}-v2", d4rl_name=f"{family}-{level}-v1", **spec,
                **_table6_fields(name),
            )
    return tasks


TASKS: dict[str, Task] = _build_registry()

_gymnasium_robotics_registered = False


def register_all() -> None:
    """Register gymnasium-robotics envs (AntMaze, Adroit) with gymnasium, once: task names and
    generic env ids resolve through gymnasium's registry, and ``dtrl.envs`` makes them from it."""
    global _gymnasium_robotics_registered
    if _gymnasium_robotics_registered:
        return
    import contextlib
    import io

    import gymnasium as gym

    # gymnasium-robotics 1.4.2 prints a notice on import: the dense rewards of the Adroit door and
    # hammer v1 envs changed in 1.2.1 without a version bump (v2 ids come with 1.4.3). Known and
    # noted in docs; kept off stderr because every BatchedEnv worker process would repeat it.
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
    except ImportError:
        pass  # gymnasium's own envs do not need it; a task that does gets ROBOTICS_HINT with its error
    else:
        gym.register_envs(gymnasium_robotics)
    _gymnasium_robotics_registered = True


ROBOTICS_HINT = ("AntMaze and Adroit come from gymnasium-robotics, which is not installed: "
                 "pip install gymnasium-robotics")


def gymnasium_robotics_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("gymnasium_robotics") is not None


# gymnasium's own MuJoCo envs, and gymnasium-robotics' MuJoCo ones (mazes with the ant or the point
# mass, the Adroit hand, Fetch, the Shadow hand, the Franka kitchen)
_MUJOCO_ENTRY_POINTS = ("mujoco", "gymnasium_robotics.envs.maze", "gymnasium_robotics.envs.adroit_hand",
                        "gymnasium_robotics.envs.fetch", "gymnasium_robotics.envs.shadow_dexterous_hand",
                        "gymnasium_robotics.envs.franka_kitchen")


def _generic_task(env_id: str) -> Task:
    """A task for any gymnasium MuJoCo env id: horizon from its spec, raw-return scores."""
    import gymnasium as gym

    register_all()
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        known = ", ".join(sorted(TASKS))
        hint = "" if gymnasium_robotics_installed() else f"; {ROBOTICS_HINT}"
        raise DtrlError(f"unknown task {env_id!r}: not a dtrl task ({known}) nor a gymnasium env id "
                        f"({exc}){hint}") from None
    entry = str(spec.entry_point)
    if not any(kind in entry for kind in _MUJOCO_ENTRY_POINTS):
        raise DtrlError(f"unknown task {env_id!r}: gymnasium env {env_id} is not a MuJoCo env ({entry})")
    steps = spec.max_episode_steps or 1000
    # g_online 0: no reference return to aim at (the GRPO-DT preset asks the caller for one)
    settings = _table6_fields(_GENERIC_TABLE6_ROW) | dict(online_rtg=0.0)
    family = "antmaze" if env_id.startswith("AntMaze") else "generic"  # the ant's stale xpos (envs/snapshot.py)
    return Task(name=env_id, env_id=env_id, family=family, domain="generic", max_episode_steps=steps,
                reward_scale=1000.0, eval_rtg=0.0, context_train=20,
                buildable=("random", "medium", "medium-replay"), **settings)


def get_task(name: str) -> Task:
    """Resolve a registry name (``hopper-medium``, also ``hopper-medium-v2``) or a gymnasium env id."""
    key = name.strip()
    if key in TASKS:
        return TASKS[key]
    for suffix in ("-v0", "-v1", "-v2"):
        if key.endswith(suffix) and key[: -len(suffix)] in TASKS:
            return TASKS[key[: -len(suffix)]]
    return _generic_task(key)


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
