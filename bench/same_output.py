"""Checks that two preprocessing outputs hold the same data: what a performance change must keep.

    python -m bench.same_output OUT_A OUT_B

Shards are read as gzip when named ``*.tfrecord.gz`` and uncompressed otherwise (``*.tfrecord``).
Compares, per split, the multiset of raw tf.Examples (parsed, re-serialized deterministically:
the encoder's feature-map order varies from run to run, and shard boundaries may move), the
transformed tf.Examples (ints and strings exactly, floats within 1e-5: tensorflow-transform's
analyzers are not bit-reproducible between two runs of the same code), the vocabularies and the other transform_fn assets, the raw and transformed schemas,
the dead-letter entries, and manifest.json except its wall time and largest window group. Exit 0 when all agree.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import sys


def _shard_records(pattern: str):
    """The serialized records of the shards matching ``pattern``: a ``*.tfrecord.gz`` shard read as
    gzip, any other (``*.tfrecord``) as uncompressed, so outputs of either kind compare."""
    import tensorflow as tf

    for path in sorted(glob.glob(pattern)):
        compression = "GZIP" if path.endswith(".gz") else ""
        yield from tf.data.TFRecordDataset([path], compression_type=compression)


def _records(pattern: str) -> list[bytes]:
    import tensorflow as tf

    out = []
    for raw in _shard_records(pattern):
        example = tf.train.Example.FromString(raw.numpy())
        out.append(example.SerializeToString(deterministic=True))
    return sorted(out)


def _features(pattern: str) -> list[tuple]:
    """Each example as a tuple of (name, values) sorted by name: floats as float, else as is."""
    import tensorflow as tf

    out = []
    for raw in _shard_records(pattern):
        example = tf.train.Example.FromString(raw.numpy())
        row = []
        for name in sorted(example.features.feature):
            f = example.features.feature[name]
            kind = f.WhichOneof("kind")
            row.append((name, kind, tuple(getattr(f, kind).value) if kind else ()))
        out.append(tuple(row))
    return out


def _close(ta: list[tuple], tb: list[tuple], tol: float) -> tuple[bool, float]:
    """Same multiset of examples, floats within ``tol``: matched after sorting on the exact
    (int and bytes) features and the floats rounded to 3 decimals."""

    def key(row):
        return tuple((n, k, tuple(round(x, 3) for x in v) if k == "float_list" else v) for n, k, v in row)

    if len(ta) != len(tb):
        return False, float("inf")
    worst = 0.0
    for ra, rb in zip(sorted(ta, key=key), sorted(tb, key=key), strict=True):
        for (na, ka, va), (nb, kb, vb) in zip(ra, rb, strict=True):
            if na != nb or ka != kb or len(va) != len(vb):
                return False, float("inf")
            if ka == "float_list":
                worst = max([worst, *(abs(x - y) for x, y in zip(va, vb, strict=True))])
            elif va != vb:
                return False, float("inf")
    return worst <= tol, worst


def _lines(pattern: str) -> list[str]:
    out = []
    for path in sorted(glob.glob(pattern)):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            out.extend(line for line in f.read().splitlines() if line)
    return sorted(out)


def _digest(items) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item if isinstance(item, bytes) else item.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _tree_files(root: str, sub: str) -> dict[str, str]:
    base = os.path.join(root, sub)
    out = {}
    for path in sorted(glob.glob(os.path.join(base, "**"), recursive=True)):
        if os.path.isfile(path) and "/variables/" not in path and not path.endswith(".pb"):
            with open(path, "rb") as f:
                out[os.path.relpath(path, base)] = hashlib.sha256(f.read()).hexdigest()[:16]
    return out


TOLERANCE = 1e-5


def compare(a: str, b: str, notes: list | None = None) -> list[str]:
    problems = []
    notes = [] if notes is None else notes
    for split in ("train", "valid", "test"):
        ra, rb = _records(os.path.join(a, "raw", split, "part-*")), _records(os.path.join(b, "raw", split, "part-*"))
        if ra != rb:
            problems.append(f"raw {split}: {len(ra)} vs {len(rb)} examples, digests {_digest(ra)} vs {_digest(rb)}")
        # tensorflow-transform's analyzers sum in whatever order batches arrive: two runs of the
        # same code already differ in the last bits of the z-scores, so these compare within TOLERANCE.
        ok, worst = _close(_features(os.path.join(a, split, "part-*")), _features(os.path.join(b, split, "part-*")),
                           TOLERANCE)
        if not ok:
            problems.append(f"transformed {split}: differ (largest float difference {worst})")
        else:
            notes.append(f"transformed {split}: same (largest float difference {worst:.2g})")
    for sub in ("rejected", "excluded"):
        la, lb = _lines(os.path.join(a, sub, "*")), _lines(os.path.join(b, sub, "*"))
        if la != lb:
            problems.append(f"{sub}: {len(la)} vs {len(lb)} entries differ")
    for sub in ("transform_fn/assets", "transformed_metadata", "metadata"):
        fa, fb = _tree_files(a, sub), _tree_files(b, sub)
        if fa != fb:
            problems.append(f"{sub}: files differ {sorted(set(fa.items()) ^ set(fb.items()))[:6]}")
    with open(os.path.join(a, "manifest.json")) as f:
        ma = json.load(f)
    with open(os.path.join(b, "manifest.json")) as f:
        mb = json.load(f)
    for m in (ma, mb):
        for key in ("wall_seconds", "largest_window_group"):  # timing, and a figure older runs lack
            m.pop(key, None)
        m.get("options", {}).pop("runner", None)
        m.pop("inputs", None)  # paths may differ
    if ma != mb:
        keys = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
        problems.append(f"manifest differs in {keys}")
    return problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    notes: list[str] = []
    problems = compare(*argv, notes=notes)
    for n in notes:
        print(n)
    for p in problems:
        print("DIFFERENT:", p)
    if not problems:
        print(f"same output: {argv[0]} and {argv[1]}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
