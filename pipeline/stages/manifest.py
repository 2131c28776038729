"""Counts by stage, reason and split, computed in the pipeline, and ``OUT/manifest.json``.

Counts are data (a PCollection written to ``OUT/_counts``), not runner metrics, so they are exact
on every runner. After the run the driver turns them into the manifest and checks that
rows read = rows in splits + rows rejected + rows excluded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.records.verdicts import reason_key
from pipeline.stages.split import choose_unit

logger = logging.getLogger(__name__)

COUNTS_DIR = "_counts"
SEP = "|"


def read_count(chunk) -> tuple[str, int]:
    """A chunk of raw lines, ``(path, [line, ...])``, as its count of rows read."""
    return "read", len(chunk[1])


def rejected_key(entry: Mapping) -> str:
    return SEP.join(("rejected", entry["stage"], reason_key(entry["reason"])))


def excluded_key(entry: Mapping) -> str:
    return SEP.join(("excluded", reason_key(entry["reason"])))


def batch_split_keys(batch, split: str, optional_columns) -> list[tuple[str, int]]:
    """Count keys of an Arrow record batch of the split, as ``(key, n)`` pairs: the split's rows, and per
    optional column the rows where it is present.

    A missing value is an empty list in the batch (see ``pipeline.stages.tfxio.to_record_batch``), so a
    column's present count is its number of non-empty lists; zero counts are left out.
    """
    import numpy as np
    import pyarrow.compute as pc

    pairs = [(SEP.join(("split", split)), batch.num_rows)]
    for c in optional_columns:
        lengths = pc.list_value_length(batch.column(c)).to_numpy(zero_copy_only=False)
        n = int(np.count_nonzero(lengths > 0))
        if n:
            pairs.append((SEP.join(("present", split, c)), n))
    return pairs


def _weighted(element) -> tuple[str, int]:
    """A count key (weight 1) or a ``(key, n)`` pair, as a pair."""
    return (element, 1) if isinstance(element, str) else (element[0], int(element[1]))


def split_unit_keys(n_coarse_keys: int, units, split_by: str) -> list[str]:
    """The split unit used and how many distinct values of the coarsest unit the input has."""
    unit = choose_unit(units, split_by, n_coarse_keys)
    return [SEP.join(("split_unit", unit)), SEP.join(("coarse_keys", f"{units[0]}={n_coarse_keys}"))]


class WriteCounts(beam.PTransform):
    """PCollection of count keys (str, one each) or ``(key, n)`` pairs -> ``OUT/_counts/counts.jsonl`` of [key, n].

    Pairs let a stage count a whole batch in one element instead of one element per row.
    """

    def __init__(self, output_dir: str):
        super().__init__()
        self._path = os.path.join(output_dir, COUNTS_DIR, "counts")

    def expand(self, keys):
        return (
            keys
            | "WeightKeys" >> beam.Map(_weighted)
            | "CountByKey" >> beam.CombinePerKey(sum)
            | "FormatCounts" >> beam.MapTuple(lambda k, n: json.dumps([k, n]))
            | "WriteCountsFile" >> beam.io.WriteToText(self._path, file_name_suffix=".jsonl", shard_name_template="")
        )


def read_counts(output_dir: str) -> dict[str, int]:
    path = os.path.join(output_dir, COUNTS_DIR, "counts.jsonl")
    counts: dict[str, int] = {}
    with FileSystems.open(path) as f:
        for line in f.read().decode("utf-8").splitlines():
            if line.strip():
                key, n = json.loads(line)
                counts[key] = counts.get(key, 0) + n
    return counts


def summarize(counts: Mapping[str, int], split_names) -> dict:
    """Nested counts and the reconciliation check."""
    unit, coarse_keys = None, ""
    rejected: dict[str, dict[str, int]] = {}
    excluded: dict[str, int] = {}
    splits = {s: 0 for s in split_names}
    present: dict[str, dict[str, int]] = {}
    for key, n in sorted(counts.items()):
        kind, *rest = key.split(SEP)
        if kind == "rejected":
            rejected.setdefault(rest[0], {})[rest[1]] = n
        elif kind == "excluded":
            excluded[rest[0]] = n
        elif kind == "split":
            splits[rest[0]] = n
        elif kind == "present":
            present.setdefault(rest[0], {})[rest[1]] = n
        elif kind == "split_unit":
            unit = rest[0]
        elif kind == "coarse_keys":
            coarse_keys = rest[0]
    read = counts.get("read", 0)
    n_rejected = sum(sum(v.values()) for v in rejected.values())
    n_excluded = sum(excluded.values())
    n_written = sum(splits.values())
    return {
        "rows_read": read,
        "rows_written": n_written,
        "rows_rejected": n_rejected,
        "rows_excluded": n_excluded,
        "reconciled": read == n_written + n_rejected + n_excluded,
        "splits": splits,
        "split_unit": unit,
        "distinct_coarse_split_keys": coarse_keys,
        "rejected": rejected,
        "excluded": excluded,
        "present_values": present,
    }


def write_json(path: str, payload: Mapping) -> None:
    with FileSystems.create(path) as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode("utf-8"))


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("apache-beam", "tensorflow", "tensorflow-transform", "tfx-bsl", "pyarrow", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
