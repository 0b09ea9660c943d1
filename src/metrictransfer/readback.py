"""JSON files metrictransfer wrote and a later command reads back (a run's ``results.json``, a study's
manifest): one that a full disk truncated, a person edited or another program replaced is one line
naming the file and what to do, never a ``JSONDecodeError`` or ``KeyError`` traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metrictransfer.errors import DataError, MissingFileError
from metrictransfer.output_folder import verify_recorded


def read_json_object(path: str | os.PathLike[str], what: str, advice: str) -> dict[str, Any]:
    """The JSON object in ``path`` (``what`` it is, in words, for the message); ``advice`` says how to get
    a good one back."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{path} does not exist ({what}); {advice}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not text (byte {err.start} is not UTF-8), so not {what}; {advice}") from None
    except OSError as err:
        raise DataError(f"cannot read {path} ({what}): {err.strerror or err}; {advice}") from None
    try:
        value = json.loads(text)
    except ValueError as err:
        problem = f"{err.msg} at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)
        state = "empty" if not text.strip() else f"not valid JSON ({problem}: truncated or edited?)"
        raise DataError(f"{path} ({what}) is {state}; {advice}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} ({what}) holds a JSON {type(value).__name__}, not an object; {advice}")
    return value


def read_results(run: str | os.PathLike[str]) -> dict[str, Any]:
    """A finished run's ``results.json``, with the parts every reader uses checked: ``final`` (metric →
    number) and ``history`` (one object per evaluated epoch)."""
    path = Path(run) / "results.json"
    advice = f"rebuild it from the run's checkpoint with metrictransfer train --resume {Path(run)}, or restore it from a copy"
    if path.is_file():  # the bytes the run wrote, by the digest its manifest recorded: an edited figure is named
        verify_recorded(path, advice)
    results = read_json_object(path, "a run's results", advice)
    final, history = results.get("final"), results.get("history")
    if not isinstance(final, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in final.values()):
        raise DataError(f"{path}: 'final' must map each metric to a number, got {str(final)[:60]!r}; {advice}")
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise DataError(f"{path}: 'history' must be a list of one object per evaluated epoch, got {str(history)[:60]!r}; {advice}")
    return results
