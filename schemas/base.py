"""Schema building blocks: one declaration per raw column drives parsing, cleaning and the feature spec.

A dataset declares its canonical columns once, as ``dict[name, Column]``. From that declaration the
pipeline derives the range checks, the raw ``tf.io`` feature spec written to ``OUT/metadata`` and the
serving signature's inputs; the trainer derives its feature groups. Nothing here imports TensorFlow
at module import time, so Beam workers and light tools can read a schema cheaply.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

FLOAT = "float"
INT = "int"
STRING = "string"
_DTYPES = (FLOAT, INT, STRING)

FEATURE = "feature"  # written to the raw tf.Examples and taken by the serving signature
LABEL = "label"  # written to the raw tf.Examples, never a serving input
INTERNAL = "internal"  # used by the pipeline (times, keys, values of later events), never written


@dataclasses.dataclass(frozen=True)
class Column:
    """One canonical column: its type, what it is for and which values are valid."""

    dtype: str
    role: str = FEATURE
    description: str = ""
    min_value: float | None = None
    max_value: float | None = None
    required: bool = True  # optional columns may be missing (None); missing is never zero
    kind: str = "numeric"  # numeric | categorical | time | location
    outcome: bool = False  # known only after the event (the label and what it derives from)

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if self.role not in (FEATURE, LABEL, INTERNAL):
            raise ValueError(f"unknown role {self.role!r}")

    def check(self, name: str, value: Any) -> str | None:
        """Returns a reason naming the column when ``value`` is not valid, else None."""
        if value is None:
            return None if not self.required else f"{name}: missing"
        if self.dtype in (FLOAT, INT):
            if isinstance(value, float) and not math.isfinite(value):
                return f"{name}: not a finite number ({value!r})"
            if self.min_value is not None and value < self.min_value:
                return f"{name}: {value!r} below minimum {self.min_value!r}"
            if self.max_value is not None and value > self.max_value:
                return f"{name}: {value!r} above maximum {self.max_value!r}"
        elif self.dtype == STRING and value == "":
            return f"{name}: empty" if self.required else None
        return None


@dataclasses.dataclass(frozen=True)
class DatasetSchema:
    """Everything the pipeline and the trainer need to know about one dataset's columns."""

    name: str
    columns: Mapping[str, Column]
    label: str
    task: str  # "classification" | "regression"
    feature_sets: Mapping[str, tuple[str, ...]]
    split_fractions: tuple[float, float, float]
    key_columns: tuple[str, ...] = ()  # identify a record in prediction outputs
    # The record's natural key, known at prediction time: its own events are left out of its windows
    # by it, and re-sent events count once by it (with the event's kind).
    natural_key: tuple[str, ...] = ()

    def __post_init__(self):
        if self.columns[self.label].role != LABEL:
            raise ValueError(f"label {self.label!r} must have role {LABEL!r}")
        for set_name, names in self.feature_sets.items():
            unknown = [n for n in names if n not in self.feature_names]
            if unknown:
                raise ValueError(f"feature set {set_name!r} names unknown features {unknown}")
        unknown = [n for n in self.natural_key if n not in self.columns]
        if unknown:
            raise ValueError(f"natural key names unknown columns {unknown}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(n for n, c in self.columns.items() if c.role == FEATURE)

    @property
    def example_columns(self) -> tuple[str, ...]:
        """Columns written to raw tf.Examples: the features and the label."""
        return tuple(n for n, c in self.columns.items() if c.role in (FEATURE, LABEL))

    def check(self, record: Mapping[str, Any], labelled: bool = True) -> str | None:
        """First range/presence violation of ``record`` as a reason naming the field, else None.

        ``labelled=False`` (records to predict) lets outcome columns be missing; present ones are still checked.
        """
        for name, column, numeric, low, high in self._checks:
            value = record.get(name)
            if value is None:
                if column.required and not (column.outcome and not labelled):
                    return column.check(name, value)
            elif numeric:
                if (
                    (value.__class__ is float and not -math.inf < value < math.inf)
                    or (low is not None and value < low)
                    or (high is not None and value > high)
                ):
                    return column.check(name, value)
            elif value == "" and column.required:
                return column.check(name, value)
        return None

    @functools.cached_property
    def _checks(self) -> tuple:
        """(name, column, numeric, min, max) per column: what :meth:`check` tests, row after row.
        The reason itself is always :meth:`Column.check`'s."""
        return tuple(
            (name, c, c.dtype in (FLOAT, INT), c.min_value, c.max_value) for name, c in self.columns.items()
        )

    def raw_feature_spec(self) -> dict:
        """The ``tf.io`` parse spec of raw tf.Examples: required columns fixed, optional ones VarLen."""
        import tensorflow as tf

        tf_types = {FLOAT: tf.float32, INT: tf.int64, STRING: tf.string}
        spec = {}
        for name in self.example_columns:
            column = self.columns[name]
            dtype = tf_types[column.dtype]
            spec[name] = (
                tf.io.FixedLenFeature([], dtype) if column.required else tf.io.VarLenFeature(dtype)
            )
        return spec

    def serving_feature_spec(self) -> dict:
        """The raw feature spec minus the label: what a serving request carries."""
        spec = self.raw_feature_spec()
        spec.pop(self.label)
        return spec


def transformed_name(name: str) -> str:
    """The one naming rule for transformed features."""
    return f"{name}_xf"
