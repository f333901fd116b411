"""``dtrl finetune --algo ALGO [options]``: pick an online finetuning algorithm and hand it the rest.

Each algorithm is one module in ``dtrl.algos`` with its own ``main(argv) -> int`` and config, so
``dtrl finetune --algo grpo --help`` lists GRPO-DT's options and only imports what GRPO needs.
"""

from __future__ import annotations

import importlib

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
    return int(getattr(module, entry)(rest) or 0)


def _entry_point(algo: str):
    """(the algorithm's module, the name of its main function)."""
    if algo not in ALGORITHMS:
        raise DtrlError(f"unknown algorithm {algo!r} (choose from {', '.join(ALGORITHMS)})")
    module_part, _, entry = ALGORITHMS[algo][0].partition(":")
    module_name = f"dtrl.algos.{module_part}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise DtrlError(f"algorithm {algo!r} is not available in this dtrl installation "
                            f"({module_name} missing)") from None
        raise
    return module, entry or "main"


def parse(argv: list[str]):
    """The config ``dtrl finetune ARGV`` would run with, validated, without running anything (what
    ``dtrl sweep`` checks every trial with before it starts Ray)."""
    algo, rest = split_algo(list(argv))
    if algo is None:
        raise DtrlError(f"finetune needs --algo (choose from {', '.join(ALGORITHMS)})")
    module, entry = _entry_point(algo)
    return getattr(module, entry.replace("main", "parse", 1))(rest)
