"""``dtrl finetune --algo ALGO [options]``: pick an online finetuning algorithm and hand it the rest.

Each algorithm is one module in ``dtrl.algos`` with its own ``main(argv) -> int`` and config, so
``dtrl finetune --algo grpo --help`` lists GRPO-DT's options and only imports what GRPO needs.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from dtrl.errors import DtrlError

# --algo value -> (module in dtrl.algos[:its entry point, default main], one-line description)
ALGORITHMS: dict[str, tuple[str, str]] = {
    "grpo": ("grpo", "GRPO-DT (Algorithm 1): groups of sub-trajectories from env resets, sequence-level ratio"),
    "grpo-q": ("grpo_q", "Q-function-guided GRPO-DT (Algorithm 2): action groups scored by a TD3 critic"),
    "ppo": ("ppo", "PPO-DT: clipped surrogate with a value critic and λ-returns, no hindsight relabeling"),
    "odt": ("odt", "Online Decision Transformer: supervised NLL with hindsight return relabeling"),
    "odt-td3": ("odt_td3", "ODT+TD3: ODT loss plus TD3 policy gradients from a jointly trained critic"),
    "iql": ("iql", "IQL: implicit Q-learning (expectile value, advantage-weighted policy)"),
    "sb3-sac": ("sb3:main_sac", "reference line: stable-baselines3 SAC from scratch (no DT, no offline data)"),
    "sb3-ppo": ("sb3:main_ppo", "reference line: stable-baselines3 PPO from scratch (no DT, no offline data)"),
}


def usage() -> str:
    lines = [
        "usage: dtrl finetune --algo ALGO [options]   (dtrl finetune --algo ALGO --help for its options)",
        "",
        "Online finetuning of a pretrained Decision Transformer.",
        "",
        "algorithms:",
    ]
    lines += [f"  {name:<8} {text}" for name, (_, text) in ALGORITHMS.items()]
    return "\n".join(lines)


def split_algo(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--algo X`` / ``--algo=X`` out of ``argv`` wherever it is; return (X or None, the rest)."""
    rest: list[str] = []
    algo: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--algo":
            if i + 1 >= len(argv):
                raise DtrlError(f"--algo needs a value (choose from {', '.join(ALGORITHMS)})")
            algo = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--algo="):
            algo = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return algo, rest


def main(argv: list[str]) -> int:
    algo, rest = split_algo(list(argv))
    if algo is None:
        if not rest or rest[0] in ("-h", "--help"):
            print(usage())
            return 0
        raise DtrlError(f"finetune needs --algo (choose from {', '.join(ALGORITHMS)})")
    module, entry = _entry_point(algo)
    return int(getattr(module, entry)(with_task(rest)) or 0)


def _entry_point(algo: str):
    """(the algorithm's module, the name of its main function)."""
    module_name = algorithm_module(algo)
    entry = ALGORITHMS[algo][0].partition(":")[2]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise DtrlError(f"algorithm {algo!r} is not available in this dtrl installation "
                            f"({module_name} missing)") from None
        raise
    return module, entry or "main"


def algorithm_module(algo: str) -> str:
    """The module of ``--algo ALGO`` (``dtrl.algos.grpo``; its config's ``PRESETS`` live there)."""
    if algo not in ALGORITHMS:
        raise DtrlError(f"unknown algorithm {algo!r} (choose from {', '.join(ALGORITHMS)})")
    return f"dtrl.algos.{ALGORITHMS[algo][0].partition(':')[0]}"


def parse(argv: list[str]):
    """The config ``dtrl finetune ARGV`` would run with, validated, without running anything (what
    ``dtrl sweep`` checks every trial with before it starts Ray)."""
    algo, rest = split_algo(list(argv))
    if algo is None:
        raise DtrlError(f"finetune needs --algo (choose from {', '.join(ALGORITHMS)})")
    module, entry = _entry_point(algo)
    return getattr(module, entry.replace("main", "parse", 1))(with_task(rest))


def with_task(argv: list[str]) -> list[str]:
    """``argv`` with the task its inputs name, when it gives no ``--task``: the ``--dataset``'s task
    (``dtrl.data.task_of``; a ``--task`` that contradicts it is refused), else the task the ``--init``
    policy was trained on. Without either, a command given ``--dataset`` or ``--init`` is refused (one
    line: give --task) rather than run under a default task. An ``--init`` policy of another task than
    the one run is a warning (a policy moved to a sibling task, or to a generic env id, is legitimate).
    ``--help`` and commands with neither input are left as they are."""
    from dtrl.config import option_value
    from dtrl.data.task_of import same_task, task_for_dataset

    if "-h" in argv or "--help" in argv:
        return argv
    task, dataset, init = (option_value(argv, name) for name in ("task", "dataset", "init"))
    if dataset is None and init is None:
        return argv
    chosen = task_for_dataset(task, dataset, required=init is None) if dataset else task
    policy_task = init_task(init, required=chosen is None) if init else None
    chosen = chosen or policy_task
    if chosen is None:
        raise DtrlError(f"neither --dataset nor --init {init} names its task: give --task (see dtrl tasks)")
    if policy_task is not None and not same_task(policy_task, chosen):
        print(f"dtrl: warning: --init {init} is a policy of task {policy_task}; finetuning it on task {chosen}",
              file=sys.stderr)
    return argv if task is not None else [*argv, "--task", chosen]


def init_task(init: str, required: bool = True) -> str | None:
    """The task the ``--init`` policy records (``model.json`` of a policy or run directory; the stats
    file of an ``hf:DIR``), None when it records none or (``required=False``) cannot be read here."""
    from dtrl.models.checkpoint import META_FILE
    from dtrl.models.huggingface import STATS_FILE
    from dtrl.models.loading import HF_PREFIX

    path = Path(init[len(HF_PREFIX):] if init.startswith(HF_PREFIX) else init)
    files = [path / STATS_FILE] if init.startswith(HF_PREFIX) else [path / META_FILE, path / "policy" / META_FILE]
    found = next((file for file in files if file.is_file()), None)
    if found is None:
        if required and not path.exists():
            raise DtrlError(f"no policy at --init {init}: the path does not exist")
        if required:
            raise DtrlError(f"cannot tell the task of --init {init} (no {' or '.join(map(str, files))}): "
                            "give --task (see dtrl tasks)")
        return None
    try:
        task = json.loads(found.read_text()).get("task")
    except (OSError, ValueError, AttributeError) as exc:
        if required:
            raise DtrlError(f"cannot read the task of --init {init} from {found}: {exc}") from None
        return None
    return str(task) if task else None
