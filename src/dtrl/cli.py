"""The ``dtrl`` command. Each subcommand lives in the module that does its work and exposes
``main(argv) -> int``; this file only dispatches, so ``dtrl tasks`` does not import torch.

Errors the user can fix (``DtrlError``) print one line and exit 2; set ``DTRL_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import importlib
import os
import sys

from dtrl.errors import DtrlError, NothingToDo
from dtrl.files import USER_FIXABLE_ERRNOS

# command -> (module, one-line help). "data" and "finetune" dispatch further inside their modules.
COMMANDS: dict[str, tuple[str, str]] = {
    "tasks": ("dtrl.tasks", "print the task registry (env ids, reference scores, target RTGs)"),
    "data": ("dtrl.data.cli", "build | info: make a D4RL-layout dataset locally, or describe one"),
    "pretrain": ("dtrl.algos.pretrain", "offline pretraining of a Decision Transformer (or Reinformer)"),
    "finetune": ("dtrl.algos.finetune", "online finetuning: --algo grpo|grpo-q|ppo|odt|odt-td3|iql"),
    "eval": ("dtrl.evaluation", "evaluate a run's policy: D4RL-normalised return mean ± std"),
    "report": ("dtrl.report", "tables (markdown, CSV) and learning curves from run directories"),
    "sweep": ("dtrl.sweep", "a grid of seeds x tasks x algorithms x overrides on Ray Tune"),
    "hf": ("dtrl.hf_cli", "import | export: Hugging Face DecisionTransformerModel <-> dtrl policy"),
    "demo": ("dtrl.demo", "build data, pretrain, finetune with GRPO-DT, evaluate before/after"),
}


def usage() -> str:
    lines = ["usage: dtrl COMMAND [options]   (dtrl COMMAND --help for every option)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from dtrl import __version__

        print(f"dtrl {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"dtrl: error: unknown command {command!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(rest) or 0)
    except NothingToDo as done:
        print(f"dtrl: {done}")
        return 0
    except DtrlError as exc:
        if os.environ.get("DTRL_DEBUG"):
            raise
        print(f"dtrl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a permission, a read-only mount: one line, not a traceback
        if exc.errno not in USER_FIXABLE_ERRNOS or os.environ.get("DTRL_DEBUG"):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"dtrl: error: {exc.strerror}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
