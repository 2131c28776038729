"""Field parsing shared by every dataset's layouts: text -> typed value, or a Reject naming the field."""

from __future__ import annotations

import csv
import math

from pipeline.records.verdicts import Reject

# Text that means "no value". "NaN" and "inf" are not here: they are values, rejected as not finite.
MISSING = frozenset(("", "NA", "N/A", "null", "NULL", "None"))


def number(text: str, field: str) -> float | None:
    """A finite float, None when missing; anything else is rejected with the field's name."""
    if text in MISSING:
        return None
    try:
        value = float(text)
    except ValueError:
        raise Reject(f"{field}: not a number {text!r}") from None
    if not math.isfinite(value):
        raise Reject(f"{field}: not a finite number {text!r}")
    return value


def csv_fields(line: str, width: int, layout: str = "the header") -> list[str]:
    """One CSV line -> its fields; a malformed line or a wrong field count is rejected."""
    if line and '"' not in line and "\r" not in line and "\n" not in line:
        values = line.split(",")  # exactly what csv.reader gives for a line without quotes or line breaks
    else:
        try:
            values = next(csv.reader([line]))
        except csv.Error as e:
            raise Reject(f"line: not valid CSV ({e})") from None
    if len(values) != width:
        raise Reject(f"line: {len(values)} fields where {layout} has {width}")
    return values
