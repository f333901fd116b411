"""The ``dtrl`` command. Each subcommand lives in the module that does its work and exposes
``main(argv) -> int``; this file only dispatches, so ``dtrl tasks`` does not import torch.

Errors the user can fix (``DtrlError``) print one line and exit 2; set ``DTRL_DEBUG=1`` for tracebacks.
A usage error (an unknown option, a bad value) starts with the same one line, naming the option and
the nearest valid one, followed by tyro's explanation. A closed stdout (``dtrl ... | head -1``) ends
the command quietly with exit 141 (128 + SIGPIPE), as other Unix tools do.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import os
import re
import sys

from dtrl.errors import DtrlError, NothingToDo
from dtrl.files import USER_FIXABLE_ERRNOS

# command -> (module, one-line help). "data" and "finetune" dispatch further inside their modules.
COMMANDS: dict[str, tuple[str, str]] = {
    "tasks": ("dtrl.tasks", "print the task registry (env ids, reference scores, target RTGs)"),
    "data": ("dtrl.data.cli", "build | info | export: make a D4RL-layout dataset locally, describe or export one"),
    "pretrain": ("dtrl.algos.pretrain", "offline pretraining of a Decision Transformer (or Reinformer)"),
    "finetune": ("dtrl.algos.finetune", "online finetuning: --algo grpo|grpo-q|ppo|odt|odt-td3|iql"),
    "eval": ("dtrl.evaluation", "evaluate a run's policy: D4RL-normalised return mean ± std"),
    "report": ("dtrl.report", "tables (markdown, CSV) and learning curves from run directories"),
    "sweep": ("dtrl.sweep", "a grid of seeds x tasks x algorithms x overrides on Ray Tune"),
    "hf": ("dtrl.hf_cli", "import | export: Hugging Face DecisionTransformerModel <-> dtrl policy"),
    "demo": ("dtrl.demo", "build data, pretrain, finetune (PPO-DT or GRPO-DT), evaluate before/after, curve and video"),
}

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a command whose reader went away"""


def usage() -> str:
    lines = ["usage: dtrl COMMAND [options]   (dtrl COMMAND --help for every option)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(argv)
        _flush_stdout()
        return code
    except BrokenPipeError:
        return _broken_pipe()


def _flush_stdout() -> None:
    stream = sys.stdout
    if stream is not None and not stream.closed:
        stream.flush()


def _broken_pipe() -> int:
    """stdout's reader went away: send what is still buffered to /dev/null (so the interpreter's
    last flush does not print 'Exception ignored ... BrokenPipeError') and exit quietly."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from dtrl import __version__

        print(f"dtrl {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        near = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        print(f"dtrl: error: unknown command {command!r} ({hint}choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    _quiet_rich_broken_pipe()
    _quiet_thread_disk_errors()
    return _run(command, rest)


def _run(command: str, rest: list[str]) -> int:
    """Run one subcommand; every error a user can fix becomes one line and exit 2."""
    usage_errors = _UsageErrors()
    try:
        with usage_errors:
            module = importlib.import_module(COMMANDS[command][0])
            return int(module.main(rest) or 0)
    except NothingToDo as done:
        print(f"dtrl: {done}")
        return 0
    except DtrlError as exc:
        return _one_line(exc, str(exc))
    except SystemExit as exit_:
        if usage_errors.text is None:
            raise
        print(usage_errors.first_line(), file=sys.stderr)
        print(usage_errors.text, end="", file=sys.stderr)
        return int(exit_.code) if isinstance(exit_.code, int) else 2
    except OSError as exc:  # a full disk, a permission, a read-only mount: one line, not a traceback
        if isinstance(exc, BrokenPipeError) or exc.errno not in USER_FIXABLE_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        return _one_line(exc, f"{exc.strerror}{where}")
    except MemoryError as exc:  # a size the checks up front could not foresee
        return _one_line(exc, f"out of memory{': ' + str(exc).splitlines()[0] if str(exc) else ''} "
                              "(lower the sizes: --batch-size, --model.context-length, ...)")
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        return _one_line(exc, f"out of memory: {str(exc).strip().splitlines()[-1][:300]} "
                              "(lower the sizes: --batch-size, --model.context-length, ...)")
    except KeyboardInterrupt:
        print("dtrl: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException, message: str) -> int:
    if os.environ.get("DTRL_DEBUG"):
        raise exc
    print(f"dtrl: error: {message}", file=sys.stderr)
    return 2


def _is_out_of_memory(exc: RuntimeError) -> bool:
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text
            or "CUDA out of memory" in text or "not enough memory" in text)


def _quiet_rich_broken_pipe() -> None:
    """rich (progress bars, tables) answers a closed stdout by exiting 1 without a word; make it raise
    BrokenPipeError instead, which ``main`` turns into the quiet exit every command gives."""
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - rich is a dependency
        return

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    Console.on_broken_pipe = on_broken_pipe


def _quiet_thread_disk_errors() -> None:
    """A full disk seen first by a writer thread (TensorBoard's) would print that thread's traceback;
    the main thread meets the same error at its next write and reports it on one line."""
    import threading

    if getattr(threading.excepthook, "_dtrl", False):
        return
    default = threading.excepthook

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in USER_FIXABLE_ERRNOS:
            return
        default(args)

    hook._dtrl = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class _UsageErrors:
    """While a command parses its options: when tyro rejects them, what it prints is kept (``text``)
    so that ``main`` can print one ``dtrl: error:`` line naming the option first, then tyro's text."""

    def __init__(self) -> None:
        self.event = None
        self.text: str | None = None
        self._stderr = None
        self._buffer: io.StringIO | None = None
        self._hook = None

    def __enter__(self) -> _UsageErrors:
        try:
            from tyro import _errors
        except ImportError:  # pragma: no cover - an older tyro without hooks: its own output only
            return self
        self._hook = _errors.on_parse_error(self._on_error)
        self._hook.__enter__()
        return self

    def _on_error(self, event) -> None:
        # tyro prints its explanation right after this and exits: keep the text for main
        self.event = event
        if self._buffer is None:
            self._stderr, self._buffer = sys.stderr, io.StringIO()
            sys.stderr = self._buffer

    def __exit__(self, *exc_info) -> None:
        if self._hook is not None:
            self._hook.__exit__(*exc_info)
        if self._buffer is not None:
            sys.stderr = self._stderr
            self.text = self._buffer.getvalue()
            self._buffer = None
        if self.text is not None and not isinstance(exc_info[1], SystemExit):
            # the command caught tyro's exit itself (a sweep validating its trials): show it now
            print(self.first_line(), file=sys.stderr)
            print(self.text, end="", file=sys.stderr)
            self.text = None

    def first_line(self) -> str:
        return "dtrl: error: " + usage_error_line(self.event, self.text or "")


def _option_name(argument) -> str:
    try:
        return str(argument.lowered.name_or_flags[0])
    except (AttributeError, IndexError, TypeError):
        return "an option"


def usage_error_line(event, text: str) -> str:
    """One line for a tyro parse error: what was wrong, the option it concerns and the nearest valid
    value or option (tyro's own 'Perhaps you meant' for an unknown option)."""
    kind = type(event).__name__
    prog = getattr(event, "prog", "dtrl")
    if kind == "UnrecognizedArgs":
        tokens = list(getattr(event, "tokens", []))
        options = [t for t in tokens if t.startswith("-")]
        if not options:
            return f"unexpected argument(s) {' '.join(tokens)} for {prog} (see {prog} --help)"
        suggested = re.findall(r"(?<![\w-])(--[A-Za-z0-9][\w.-]*)", text.partition("Perhaps you meant")[2]
                               or text.partition("similar to")[2])
        suggested = [s for s in suggested if s not in options]
        near = f"; did you mean {suggested[0]}?" if suggested else f"; no option of {prog} is close"
        return f"unrecognized option {', '.join(options)}{near} (see {prog} --help)"
    option = _option_name(getattr(event, "argument", None))
    if kind == "InvalidChoice":
        value, choices = str(event.value), [str(c) for c in event.choices]
        near = difflib.get_close_matches(value, choices, n=1, cutoff=0.4)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return f"{option}: invalid choice {value!r} ({hint}choose from {', '.join(choices)})"
    if kind == "BadValue":
        if getattr(event, "offending_value", None) is not None:
            return f"{option} takes no value, got {event.offending_value!r}"
        return f"{option} needs a value (see {prog} --help)"
    if kind == "InstantiationFailure":
        return f"{option}: {_value_hint(str(event.message))}"
    if kind == "MissingArgs":
        names = [_option_name(getattr(a, "arg", None)) for a in getattr(event, "missing_arguments", [])]
        return f"missing {', '.join(names) or 'a required argument'} (see {prog} --help)"
    first = next((line.strip(" │╭╮╰╯─") for line in text.splitlines() if line.strip(" │╭╮╰╯─")), "")
    return f"{first or 'invalid command line'} (see {prog} --help)"


def _value_hint(message: str) -> str:
    """tyro's 'invalid literal for int() with base 10: '1e12'' with the integer that was meant."""
    found = re.search(r"invalid literal for int\(\) with base 10: '(.*)'", message)
    if not found:
        return message.splitlines()[0] if message else "invalid value"
    value = found.group(1)
    try:
        number = float(value)
    except ValueError:
        return f"{value!r} is not an integer"
    if number.is_integer() and abs(number) < 2**53:
        return f"{value!r} is not an integer literal (write it as {int(number)})"
    return f"{value!r} is not an integer (nearest: {round(number)})"


if __name__ == "__main__":
    raise SystemExit(main())
