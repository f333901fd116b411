"""What ``RunDir.resume`` checks and rewrites: settings that changed, a run of another algorithm or
task, whether a finished run is asked for more, and the metrics lines past the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from dtrl.errors import DtrlError
from dtrl.files import atomic_write_text
from dtrl.runs.layout import METRICS_FILE, _jsonable, _parse_metrics

# Config keys that say how a run was started, not what it computes: they may differ on resume.
_LAUNCH_KEYS = ("resume", "force", "out")


def changed_settings(stored: dict, config: dict, ignore: tuple[str, ...] = ()) -> dict:
    """{key: {"was", "now"}} for every setting of ``config`` that differs from the run's stored
    config.json, leaving out how the run was launched and the keys in ``ignore``."""
    new = _jsonable(dict(config))
    return {key: {"was": stored.get(key), "now": new.get(key)} for key in sorted(set(new) | set(stored))
            if key not in _LAUNCH_KEYS and key != "run_info" and key not in ignore
            and new.get(key) != stored.get(key)}


def _check_same_run(path: Path, stored: dict, config: dict) -> None:
    """``--resume`` continues the same experiment: another algorithm or task is refused."""
    for key, what in (("algo", "algorithm"), ("task", "task")):
        was, now = stored.get(key), config.get(key)
        if was is not None and now is not None and was != now:
            raise DtrlError(f"--resume: {path} holds a run of {what} {was}, not {now} (nothing was changed)")


def _asks_for_more(stored: dict, config: dict) -> bool:
    """Whether resuming a finished run with ``config`` extends it: more iterations or steps, or a longer
    (or no) --time-limit-s for a run that stopped at its limit."""
    more = any(isinstance(config.get(key), int) and isinstance(stored.get(key), int) and config[key] > stored[key]
               for key in ("iterations", "steps"))
    limit, was = config.get("time_limit_s"), stored.get("time_limit_s")
    numbers = isinstance(limit, (int, float)) and isinstance(was, (int, float))
    longer = numbers and was > 0 and (limit == 0 or limit > was)
    return more or longer


def _truncate_metrics(path: Path, iteration: int) -> list[dict]:
    """Keep only metrics lines with ``iteration <= iteration`` (rewritten atomically); return them."""
    file = path / METRICS_FILE
    if not file.is_file():
        return []
    text = file.read_text()
    rows = _parse_metrics(text, file)
    kept = [row for row in rows if not isinstance(row.get("iteration"), (int, float)) or row["iteration"] <= iteration]
    torn_tail = bool(text) and not text.endswith("\n")
    if len(kept) != len(rows) or torn_tail:
        text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in kept)
        atomic_write_text(file, text)
    return kept
