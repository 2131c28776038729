"""Verdicts on rows: rejected or excluded, with the stage and a reason naming the field.

A stage never drops a row: it returns the clean record, or tags the row ``rejected`` (bad input,
with the stage and a reason naming the field) or ``excluded`` (valid input that is not labelled
data, e.g. a cancelled flight). Both kinds are written out and counted, so that
rows read = rows in splits + rows rejected + rows excluded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

REJECTED = "rejected"
EXCLUDED = "excluded"


class Reject(Exception):
    """Raised by a parser: the row is bad input. The message names the field; ``stage``: the stage
    whose rule failed ("validate" for the schema's ranges)."""

    def __init__(self, reason: str, stage: str = "parse"):
        super().__init__(reason)
        self.stage = stage


class Exclude(Exception):
    """Raised by a parser: the row is valid but is not labelled data (e.g. cancelled)."""


class Verdicts:
    """Per row of a chunk: still a record, or the (kind, stage, reason) of the first rule it failed.

    A block parser applies its rules in order to all rows of a chunk at once; each rule fails the
    rows it finds bad, and a row keeps the reason of the first rule that failed it, so a row gets the
    same reason whatever else its chunk holds: the first rule, in the order written, that it breaks.
    """

    def __init__(self, n: int):
        self.ok = np.ones(n, dtype=bool)
        self.failures: dict[int, tuple[str, str, str]] = {}  # row -> (kind, stage, reason)

    def fail(self, mask: np.ndarray, reason, *, kind: str = REJECTED, stage: str = "parse") -> None:
        """Fails the rows where ``mask`` is True that no earlier rule failed; ``reason``: the text, or
        a function of the row's index giving it (called only for the rows failed here)."""
        for i in np.flatnonzero(np.asarray(mask, dtype=bool) & self.ok).tolist():
            self.ok[i] = False
            self.failures[i] = (kind, stage, reason(i) if callable(reason) else reason)


def dead_letter(stage: str, reason: str, source: str, line: str) -> dict:
    """The JSON-serialisable dead-letter entry for one row."""
    return {"stage": stage, "reason": reason, "source": source, "record": line}


def reason_key(reason: str) -> str:
    """The countable part of a reason: up to the first ':' after the field, values stripped."""
    head, sep, tail = reason.partition(": ")
    if not sep:
        return reason
    # "dep_delay: 9999 above maximum 3000" -> "dep_delay: above maximum"
    words = [w for w in tail.split() if not _is_value(w)]
    return f"{head}: {' '.join(words[:4])}".strip()


def _is_value(word: str) -> bool:
    if word[:1] in "'\"":  # a quoted input value; the full reason stays in the dead-letter file
        return True
    word = word.strip("'\"(),")
    if not word:
        return True
    try:
        float(word)
        return True
    except ValueError:
        return any(ch.isdigit() for ch in word)


def to_json_line(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)
