"""Dead-letter and exclusion plumbing shared by every stage and dataset.

A stage never drops a row: it returns the clean record, or tags the row ``rejected`` (bad input,
with the stage and a reason naming the field) or ``excluded`` (valid input that is not labelled
data, e.g. a cancelled flight). Both kinds are written out and counted, so that
rows read = rows in splits + rows rejected + rows excluded.
"""

from __future__ import annotations

import array
import itertools
import json
import logging
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.compression import compress, decompress

logger = logging.getLogger(__name__)

REJECTED = "rejected"
EXCLUDED = "excluded"
SOURCE = "_source"  # internal record fields: where the row came from and its original text
LINE = "_line"


class Block:
    """Records as columns, moving between stages as one element: ``columns`` maps each field to a
    sequence (list or tuple) of its values, None where missing, all ``n`` long.

    Columns cost a fraction of what a list of dicts does to build, pickle and slice (one list a
    field instead of one dict a row), and numpy reads them directly. Iterating gives the records
    as dicts, for code that wants rows. A block is never changed once made: stages build new ones.
    """

    __slots__ = ("columns", "n")

    def __init__(self, columns: dict, n: int):
        self.columns = columns
        self.n = n

    @classmethod
    def from_records(cls, records) -> Block:
        """A block of ``records`` (dicts); a field some lack is None there."""
        records = list(records)
        names = dict.fromkeys(k for r in records for k in r)
        return cls({k: [r.get(k) for r in records] for k in names}, len(records))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        names = list(self.columns)
        for values in zip(*self.columns.values(), strict=True):
            yield dict(zip(names, values, strict=True))

    def __repr__(self) -> str:
        return f"Block({self.n} rows: {', '.join(self.columns)})"

    def get(self, name: str) -> Sequence:
        column = self.columns.get(name)
        return (None,) * self.n if column is None else column

    def take(self, rows: Sequence[int]) -> Block:
        """The rows at ``rows`` (indices), in that order."""
        if len(rows) == 1:
            i = rows[0]
            return Block({k: v.take(rows) if isinstance(v, PackedColumn) else (v[i],) for k, v in self.columns.items()}, 1)
        if not len(rows):
            return Block({k: () for k in self.columns}, 0)
        pick = operator.itemgetter(*rows)
        return Block({k: v.take(rows) if isinstance(v, PackedColumn) else pick(v) for k, v in self.columns.items()}, len(rows))

    def slice(self, start: int, stop: int) -> Block:
        stop = min(stop, self.n)
        return Block({k: v[start:stop] for k, v in self.columns.items()}, max(stop - start, 0))

    def replace(self, **columns) -> Block:
        """A new block with ``columns`` added or replaced (each ``n`` long) and the others shared."""
        return Block({**self.columns, **columns}, self.n)

    def drop(self, *names: str) -> Block:
        return Block({k: v for k, v in self.columns.items() if k not in names}, self.n)

    @staticmethod
    def concat(blocks: Sequence[Block]) -> Block:
        """The rows of ``blocks`` one after the other; a field some blocks lack is None there."""
        blocks = [b for b in blocks if b.n]
        if len(blocks) == 1:
            return blocks[0]
        names = dict.fromkeys(k for b in blocks for k in b.columns)
        columns = {}
        for k in names:
            parts = [b.get(k) for b in blocks]
            joined = type(parts[0]).concat(parts) if isinstance(parts[0], PackedColumn) else None
            columns[k] = list(itertools.chain.from_iterable(parts)) if joined is None else joined
        return Block(columns, sum(b.n for b in blocks))


class PackedColumn(Sequence):
    """A column kept in a compact form: equal to any sequence of the same values, never hashed.

    Block's ``take`` and ``concat`` keep a column packed where its class can (``take``, ``concat``);
    a slice (``column[a:b]``) must give a column of the same class. Any other use reads values.
    """

    __slots__ = ()

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None

    def take(self, rows: Sequence[int]) -> Sequence:
        """The values at ``rows``; a list unless the class keeps them packed."""
        return [self[i] for i in rows]

    @staticmethod
    def concat(parts: Sequence) -> Sequence | None:
        """The parts one after the other, packed, where they all allow it; else None (Block lists them)."""
        return None


class PackedText(PackedColumn):
    """A column of texts (str or None), kept as one zstd-compressed buffer (their lengths, then their
    UTF-8 bytes) until a value is read.

    For a column that must travel with its records but is seldom read: the raw line of each record
    crosses the windowing shuffle only so that an exact copy's dead letter can quote it. Packed, it
    costs about 40 bytes a row instead of about 100, and one object instead of one per row, and it is
    unpacked only where a value is read (there, for a group holding copies). Pickles as its buffer.
    """

    __slots__ = ("_blob", "_n", "_values")

    def __init__(self, blob: bytes, n: int, values: list | None = None):
        self._blob, self._n, self._values = blob, n, values

    @classmethod
    def of(cls, texts: Sequence) -> PackedText:
        encoded = [b"" if t is None else t.encode("utf-8") for t in texts]
        lengths = array.array("q", (-1 if t is None else len(e) for t, e in zip(texts, encoded, strict=True)))
        return cls(compress(lengths.tobytes() + b"".join(encoded), "zstd"), len(lengths))

    def _unpacked(self) -> list:
        if self._values is None:
            data, lengths = decompress(self._blob), array.array("q")
            lengths.frombytes(data[:8 * self._n])
            values, at = [], 8 * self._n
            for n in lengths:
                if n < 0:
                    values.append(None)
                else:
                    values.append(data[at:at + n].decode("utf-8"))
                    at += n
            self._values = values
        return self._values

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """The size of the packed buffer (what crosses a shuffle), without unpacking it."""
        return len(self._blob)

    def __getitem__(self, i):
        return self._unpacked()[i]

    def __iter__(self):
        return iter(self._unpacked())

    def __reduce__(self):
        return PackedText, (self._blob, self._n)


class HexIds(PackedColumn):
    """A column of ids that are all lowercase hex strings of one even length (the record
    fingerprints), kept as their bytes: half the size on the wire, one object instead of one a
    row, and numpy reads them as fixed-width bytes (:meth:`array`) without a string being made.
    Bytes sort as their hex strings do, so an order by id is the same either way. Reading a value
    gives the same string back."""

    __slots__ = ("raw", "width", "_values")

    def __init__(self, raw: bytes, width: int, values: list | None = None):
        self.raw, self.width, self._values = raw, width, values

    @classmethod
    def of(cls, ids: Sequence) -> HexIds | None:
        """The ids packed, or None where they are not all lowercase hex of one even length."""
        if isinstance(ids, HexIds):
            return ids
        if not len(ids) or not isinstance(ids[0], str) or not ids[0] or len(ids[0]) % 2:
            return None
        try:
            joined = "".join(ids)
        except TypeError:  # not all strings
            return None
        width = len(ids[0])
        if not joined.isascii() or joined != joined.lower() or set(map(len, ids)) != {width}:
            return None
        try:
            raw = bytes.fromhex(joined)
        except ValueError:
            return None
        if len(raw) * 2 != len(joined):  # fromhex skips whitespace
            return None
        return cls(raw, width // 2)

    @staticmethod
    def concat(parts: Sequence) -> HexIds | None:
        """The parts one after the other, if all are HexIds of one width; else None."""
        if not parts or not all(isinstance(p, HexIds) for p in parts) or len({p.width for p in parts}) != 1:
            return None
        return HexIds(b"".join(p.raw for p in parts), parts[0].width)

    def array(self):
        """The ids as a numpy array of fixed-width bytes (dtype ``S<width>``), sharing the buffer."""
        return np.frombuffer(self.raw, dtype=f"S{self.width}")

    def take(self, rows) -> HexIds:
        return HexIds(self.array()[np.asarray(rows, dtype=np.int64)].tobytes(), self.width)

    def __len__(self) -> int:
        return len(self.raw) // self.width

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return HexIds(self.raw[start * self.width:max(start, stop) * self.width], self.width)
            return [self[j] for j in range(start, stop, step)]
        if self._values is not None:
            return self._values[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("HexIds index out of range")
        return self.raw[i * self.width:(i + 1) * self.width].hex()

    def __iter__(self):
        if self._values is None:
            h, w = self.raw.hex(), 2 * self.width
            self._values = [h[j:j + w] for j in range(0, len(h), w)]
        return iter(self._values)

    def __reduce__(self):
        return HexIds, (self.raw, self.width)


def as_block(records) -> Block:
    """A block from a block or from records (dicts)."""
    return records if isinstance(records, Block) else Block.from_records(records)


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
