"""Deterministic train/valid/test assignment from a hash of a split key (e.g. the flight date).

The same key always lands in the same split, on any machine and in any rerun, and every row that
shares a key (all flights of a day) shares a split, so a day never straddles two splits.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline.records import model

SPLITS = ("train", "valid", "test")
AUTO = "auto"
# Below this many distinct coarse keys (e.g. days), whole-key splits are too lumpy to give three
# splits near the asked fractions, so "auto" moves to the next finer unit.
MIN_KEYS_FOR_COARSE_UNIT = 10


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """"60,20,20" or "0.6,0.2,0.2" -> (0.6, 0.2, 0.2); errors say what is wrong."""
    parts = [float(p) for p in text.split(",")] if isinstance(text, str) else [float(p) for p in text]
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


@functools.lru_cache(maxsize=1 << 16)  # split keys repeat (every flight of a day): hash each once
def hash_fraction(key: str) -> float:
    """A uniform number in [0, 1) from ``key``; stable across processes (unlike ``hash``)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(key: str, fractions: Sequence[float]) -> str:
    u = hash_fraction(key)
    train, valid, _ = fractions
    if u < train:
        return "train"
    if u < train + valid:
        return "valid"
    return "test"


def choose_unit(units: Sequence[str], split_by: str, n_coarse_keys: int) -> str:
    """The split unit: the named one, or for "auto" the coarsest with enough distinct keys."""
    if split_by != AUTO:
        if split_by not in units:
            raise ValueError(f"--split_by {split_by!r} is not one of: {', '.join((AUTO, *units))}")
        return split_by
    if len(units) == 1 or n_coarse_keys >= MIN_KEYS_FOR_COARSE_UNIT:
        return units[0]
    return units[1]


def unit_keys(unit, batch: pa.RecordBatch) -> list:
    """``unit``'s key for every record of ``batch``."""
    field = getattr(unit, "field", None)
    if field is None:
        return [unit(record) for record in batch.to_pylist()]
    names, codes = _distinct(batch, field)
    table = [unit({field: name}) for name in names]
    return [table[c] for c in codes.tolist()]


def _distinct(batch: pa.RecordBatch, field: str) -> tuple[list, np.ndarray]:
    """(the distinct values of ``field``, None last where one is missing; per row the index of its own)."""
    names, codes = model.codes(batch.column(field))
    if (codes < 0).any():
        codes = np.where(codes < 0, len(names), codes)
        names = [*names, None]
    return names, codes


class SplitRecords(beam.DoFn):
    """Record batches -> per split (a tagged output each), the batch of its records."""

    def __init__(self, units, split_by: str, fractions):
        self._units, self._split_by, self._fractions = units, split_by, fractions

    def process(self, batch: pa.RecordBatch, n_coarse_keys):
        unit = self._units[choose_unit(list(self._units), self._split_by, n_coarse_keys)]
        field = getattr(unit, "field", None)
        if field is not None:  # a split per distinct value, then per row by numpy
            names, codes = _distinct(batch, field)
            of_name = np.array([SPLITS.index(assign_split(unit({field: name}), self._fractions)) for name in names])
            per_row = of_name[codes]
        else:
            keys = unit_keys(unit, batch)
            per_row = np.array([SPLITS.index(assign_split(key, self._fractions)) for key in keys], dtype=np.int64)
        for i, split in enumerate(SPLITS):
            rows = np.flatnonzero(per_row == i)
            if len(rows):
                yield beam.pvalue.TaggedOutput(split, model.take(batch, rows))
