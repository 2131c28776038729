"""Record ids: a hash of each value, folded column by column with numpy (see :func:`row_ids`).

Each value gets a 128-bit hash (two 64-bit lanes) that depends on the value alone, and each lane of
a row folds its columns' hashes in order: h = mix(h + value's hash). Values: None one constant; a
text its length and UTF-8 bytes folded 8 at a time (blake2b beyond _LONG_TEXT bytes); a number by
its value as a float64 (True, 1 and 1.0 are the same number, and are written as the same feature;
-0.0 is not 0.0, every NaN is one NaN), an integer no float64 holds exactly by its repr; anything
else (bytes, ...) by its type and repr (blake2b). An id is 96 bits. Not a cryptographic hash: two
different records share an id with a chance of about 2^-96, which is what de-duplication needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.records.model import ID_BYTES, ID_TYPE

LANE_SEEDS = (0x6A09E667F3BCC908, 0xBB67AE8584CAA73B)  # the first of SHA-512's initial words
_NONE_HASH = (0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1)
_FLOAT_KEYS = (0x510E527FADE682D1, 0x9B05688C2B3E6C1F)
_CANONICAL_NAN = 0x7FF8000000000000
_TEXT_SEEDS = (0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179)


def _mix(x):
    """splitmix64's finalizer on a uint64 array (a bijection that spreads every input bit), in place."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _float_hashes(x) -> tuple:
    """Both lanes' hashes of a float64 array."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64).copy()
    bits[np.isnan(x)] = np.uint64(_CANONICAL_NAN)
    return tuple(_mix(bits ^ np.uint64(key)) for key in _FLOAT_KEYS)


def _digest_hashes(tag: bytes, data: bytes) -> tuple[int, int]:
    digest = hashlib.blake2b(tag + data, digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def _value_hash(value) -> tuple[int, int]:
    """One value's two lane hashes: the rule every column path below must agree with."""
    if value is None:
        return _NONE_HASH
    if isinstance(value, str):
        a, b = _text_hashes(pa.array([value], type=pa.large_string()))
        return int(a[0]), int(b[0])
    if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):  # bool: True == 1 == 1.0
        if isinstance(value, (int, np.integer)) and not _float_holds(value):
            return _digest_hashes(b"i", repr(int(value)).encode())
        a, b = _float_hashes(np.array([float(value)]))
        return int(a[0]), int(b[0])
    return _digest_hashes(b"r", f"{type(value).__name__}:{value!r}".encode("utf-8", "backslashreplace"))


_LONG_TEXT = 256  # UTF-8 bytes; a longer text is hashed by blake2b


def _text_hashes(texts) -> tuple:
    """Both lanes' hashes of each text of a pyarrow string array without nulls (the distinct texts of
    a column): the length, then the UTF-8 bytes 8 at a time (zero-padded), folded with :func:`_mix`
    over all texts at once; a text over _LONG_TEXT bytes by blake2b instead."""
    texts = texts.cast(pa.large_string()) if not pa.types.is_large_string(texts.type) else texts
    d = len(texts)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset:texts.offset + d + 1]
    data = np.frombuffer(texts.buffers()[2] or b"", dtype=np.uint8)
    lengths = np.diff(offsets)
    lanes = [_mix(np.full(d, seed, dtype=np.uint64) ^ lengths.astype(np.uint64)) for seed in _TEXT_SEEDS]
    short = lengths <= _LONG_TEXT
    width = 8 * int(-(-lengths[short].max() // 8)) if short.any() else 0
    if width:
        padded = np.zeros((d, width), dtype=np.uint8)
        padded[np.arange(width) < np.where(short, lengths, 0)[:, None]] = (
            data[offsets[0]:offsets[-1]] if short.all() else np.concatenate([data[offsets[i]:offsets[i + 1]] for i in np.flatnonzero(short)])
        )
        words = padded.view("<u8")
        with np.errstate(over="ignore"):
            for k in range(width // 8):  # a text's own words only, so its hash never depends on the others
                rows = np.flatnonzero(short & (lengths > 8 * k))
                for lane in lanes:
                    lane[rows] = _mix(lane[rows] + words[rows, k])
    for i in np.flatnonzero(~short):
        lanes[0][i], lanes[1][i] = _digest_hashes(b"s", texts[int(i)].as_py().encode("utf-8"))
    return tuple(lanes)


def _float_holds(integer) -> bool:
    try:
        return float(integer) == integer and abs(float(integer)) < 2.0**63
    except OverflowError:
        return False


def _column_hashes(column: pa.Array):
    """Both lanes' hashes of every value of an Arrow column: per distinct text for texts, vectorized
    for numbers, value by value for anything else (and an integer no float64 holds exactly)."""
    n = len(column)
    kind = column.type
    if pa.types.is_dictionary(kind):
        lanes = _text_hashes(column.dictionary.cast(pa.large_string()))
        indices = column.indices.fill_null(len(column.dictionary)).to_numpy(zero_copy_only=False)
        return tuple(np.append(lane, np.uint64(none))[indices] for lane, none in zip(lanes, _NONE_HASH, strict=True))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _text_lanes(column)
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        present = column.is_valid().to_numpy(zero_copy_only=False)
        filled = column.fill_null(False if pa.types.is_boolean(kind) else 0).to_numpy(zero_copy_only=False)
        hashes = _number_hashes(filled, present, pa.types.is_integer(kind))
        if hashes is not None:
            return hashes
    if pa.types.is_null(kind):
        return np.full(n, _NONE_HASH[0], dtype=np.uint64), np.full(n, _NONE_HASH[1], dtype=np.uint64)
    table = {}
    pairs = np.array([_cached_hash(table, v) for v in column.to_pylist()], dtype=np.uint64).reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _text_lanes(texts) -> tuple:
    """Both lanes' hashes of each value of a pyarrow string array (None: its own constant), hashed
    once per distinct text."""
    coded = texts.dictionary_encode()
    codes = coded.indices.fill_null(len(coded.dictionary)).to_numpy(zero_copy_only=False)
    return tuple(np.append(lane, np.uint64(none))[codes] for lane, none in zip(_text_hashes(coded.dictionary), _NONE_HASH, strict=True))


def _number_hashes(filled: np.ndarray, present: np.ndarray | None, integers: bool):
    """Both lanes' hashes of numbers (``filled``: any value where ``present`` is False), or None
    where an integer has no exact float64 (the caller then hashes value by value)."""
    x = filled.astype(np.float64)
    if integers:
        with np.errstate(invalid="ignore"):
            exact = (np.abs(x) < 2.0**63) & (x.astype(np.int64) == filled)
        if not exact.all():
            return None
    a, b = _float_hashes(x)
    if present is not None and not present.all():
        a[~present], b[~present] = _NONE_HASH
    return a, b


def _cached_hash(table: dict, value):
    if isinstance(value, float) and value == 0:  # 0.0 == -0.0 as a key, not as a value here
        return _value_hash(value)
    try:
        key = (type(value), value)
        hashes = table.get(key)
    except TypeError:  # unhashable
        return _value_hash(value)
    if hashes is None:
        hashes = table[key] = _value_hash(value)
    return hashes


def row_ids(columns: Sequence[pa.Array], n: int) -> bytes:
    """The ids of ``n`` rows whose values are ``columns`` (Arrow arrays, in order): ID_BYTES bytes a
    row, row after row."""
    lanes = [np.full(n, seed, dtype=np.uint64) for seed in LANE_SEEDS]
    with np.errstate(over="ignore"):
        for values in columns:
            for lane, hashes in zip(lanes, _column_hashes(values), strict=True):
                lane += hashes
                _mix(lane)
    raw = np.empty((n, ID_BYTES), dtype=np.uint8)
    raw[:, :8] = lanes[0].astype(">u8").view(np.uint8).reshape(n, 8)
    raw[:, 8:] = lanes[1].astype(">u8").view(np.uint8).reshape(n, 8)[:, :ID_BYTES - 8]
    return raw.tobytes()


def fingerprints(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.Array:
    """Stable ids of the records of ``batch``, one a record: equal for records whose ``columns``
    hold equal values, whatever batch or file they came from (so exact copies share theirs), as
    12 fixed-size bytes each."""
    n = batch.num_rows
    raw = row_ids([batch.column(name) for name in columns], n)
    return pa.FixedSizeBinaryArray.from_buffers(ID_TYPE, n, [None, pa.py_buffer(raw)])


def fingerprint(record: dict, columns: Sequence[str]) -> bytes:
    """The id of one record (a dict, a field it lacks missing), hashed value by value by the rule
    every column path of :func:`fingerprints` agrees with: the same bytes it gives the record in a batch."""
    lanes = [np.full(1, seed, dtype=np.uint64) for seed in LANE_SEEDS]
    with np.errstate(over="ignore"):
        for name in columns:
            for lane, h in zip(lanes, _value_hash(record.get(name)), strict=True):
                lane += np.uint64(h)
                _mix(lane)
    return (lanes[0].astype(">u8").tobytes() + lanes[1].astype(">u8").tobytes())[:ID_BYTES]
