"""Exact past-only lookback aggregates, computed per key in vectorised time buckets.

For each record (the *query*) at its prediction time ``t`` and each :class:`WindowFeature`, the
statistic is taken over the *events* of other records with the same key whose event time lies in
``[t - window, t)``: strictly before ``t``, never the record itself, zeros included.

Scaling: events and queries are grouped by time bucket (flights: the UTC day, every airport of it;
taxi: the UTC hour of all NYC), and inside a group the key (the airport) separates them: a query
sees only its own key's events. An event is also sent to the following buckets that its window
reaches (the "context rows"), so each group holds at most one bucket of queries plus ``window`` of
earlier events: no hot key holding a year, no side input holding all events, and a group's size is
set by the bucket, not by the input's length. Inside a group the work is a sort, a cumulative sum
and two ``numpy.searchsorted`` calls per event time. Groups of a whole bucket rather than of one
key and bucket are what makes the elements large: a chunk of 10,000 flights sends one element to
the day it covers instead of one to each of ~300 airports (about 20 rows each), and the runner's
and the coder's costs per element and per column vanish.

Shuffles: the features sharing a key field and query time form a key group (flights: the origin's
departure delay and taxi-out, and the destination's arrival delay). The records themselves travel
once, through the group of the key group with the most event times; each other key group is
computed from columnar blocks of its events and queries, and its results are sent to where the
record goes, so no join by id is needed afterwards.

Elements are columnar blocks, never single rows: each block of records sends one element per
bucket it touches, with arrays of event keys, ids, times and values, and the records as column
buffers (:mod:`pipeline.wire`), which come out of the shuffle still packed. The runner's cost per
element, which dominated a row-by-row graph, is paid per block. The groups a worker receives are
computed a batch at a time (numpy's cost per call, not per row, is what small groups spend most
on), each group's sums from its own values only. Exact copies of a record share their
fingerprint (``_id``) and their route, so they are de-duplicated in the final group.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from pipeline.columnar import encode, floats, select, take
from pipeline.compression import compress, decompress
from pipeline.rows import LINE, REJECTED, SOURCE, Block, HexIds, PackedText, as_block, dead_letter
from pipeline.wire import NumberColumn, TextColumn, column_values, column_wire, pack_block, unpack_block

ID = "_id"
RECORDS = "records"
ALL_KEYS = "*"


@dataclasses.dataclass(frozen=True)
class WindowFeature:
    """One windowed column.

    name: output column. key: record field whose value groups events and queries (None: one
    group for all records). event_time: field holding when this record's value became known (UTC
    epoch seconds). value: field averaged (None: count the events). query_time: field holding the
    record's own prediction time.
    """

    name: str
    key: str | None
    event_time: str
    query_time: str
    value: str | None = None

    @property
    def statistic(self) -> str:
        return "count" if self.value is None else "mean"

    @property
    def group(self) -> tuple:
        return (self.key, self.event_time, self.query_time)


def window_stats(event_t, event_id, event_values, query_t, query_id, window_s, event_group=None, query_group=None):
    """Per query: (sums, counts of present values, count of events) over [t - window, t), self excluded.

    event_values is (n_events, n_features) with NaN where a value is missing. With ``event_group``
    and ``query_group`` (integers), many groups are computed at once and a query sees only the
    events of its own group; ids need only be unique within a group. Each sum is added up from its
    own window's values (not a difference of running totals), so a group's results do not depend
    on the other groups computed with it. Pure numpy; the brute-force reference in the tests checks it.
    """
    event_t = np.asarray(event_t, dtype=np.int64)
    query_t = np.asarray(query_t, dtype=np.int64)
    event_id, query_id = np.asarray(event_id), np.asarray(query_id)
    n_e, n_q = len(event_t), len(query_t)
    vals = np.asarray(event_values, dtype=np.float64).reshape(n_e, -1)
    width = vals.shape[1]
    e_g = np.zeros(n_e, dtype=np.int64) if event_group is None else np.asarray(event_group, dtype=np.int64)
    q_g = np.zeros(n_q, dtype=np.int64) if query_group is None else np.asarray(query_group, dtype=np.int64)
    if not (n_e and n_q):
        return np.zeros((n_q, width)), np.zeros((n_q, width), dtype=np.int64), np.zeros(n_q, dtype=np.int64)
    # One time axis for all groups: group g's times shifted past every earlier group's, windows included.
    low = min(int(event_t.min()), int(query_t.min()) - window_s)
    stride = max(int(event_t.max()), int(query_t.max())) - low + 1
    e_key = e_g * stride + (event_t - low)
    q_key = q_g * stride + (query_t - low)
    # Ties broken by id: the float sums, and so the features, are the same in every run.
    order = np.lexsort((event_id, e_key))
    k_sorted = e_key[order]
    vals = vals[order]
    present = ~np.isnan(vals)
    filled = np.where(present, vals, 0.0)
    ccount = np.vstack([np.zeros((1, width), dtype=np.int64), np.cumsum(present, axis=0)])
    # Queries in time order: searchsorted walks forward, and reduceat, which also sums each gap
    # from one window's end to the next window's start (discarded), passes over the events once
    # (in the queries' own order, as many times as there are queries).
    by_time = np.argsort(q_key, kind="stable")
    lo, hi = np.empty(n_q, dtype=np.int64), np.empty(n_q, dtype=np.int64)
    lo[by_time] = np.searchsorted(k_sorted, q_key[by_time] - window_s, side="left")
    hi[by_time] = np.searchsorted(k_sorted, q_key[by_time], side="left")
    counts = ccount[hi] - ccount[lo]
    n_events = (hi - lo).astype(np.int64)
    # Window sums: reduceat over the (lo, hi) pairs; an empty window gives a value, zeroed after.
    bounds = np.empty(2 * n_q, dtype=np.int64)
    bounds[0::2], bounds[1::2] = lo[by_time], hi[by_time]
    sums = np.empty((n_q, width))
    sums[by_time] = np.add.reduceat(np.vstack([filled, np.zeros((1, width))]), bounds, axis=0)[0::2]
    sums[hi <= lo] = 0.0
    # A record is never its own past: remove its event where it falls inside its own window.
    codes, inverse = np.unique(np.concatenate([query_id, event_id[order]]), return_inverse=True)
    q_code = q_g * len(codes) + inverse[:n_q]
    e_code = e_g[order] * len(codes) + inverse[n_q:]
    _, qi, ei = np.intersect1d(q_code, e_code, return_indices=True)
    inside = (k_sorted[ei] >= q_key[qi] - window_s) & (k_sorted[ei] < q_key[qi])
    qi, ei = qi[inside], ei[inside]
    sums[qi] -= filled[ei]
    counts[qi] -= present[ei]
    n_events[qi] -= 1
    return sums, counts, n_events


# ---------------------------------------------------------------- the Beam side
# Groups are time buckets: every key's events and queries of a bucket meet in one group, where the
# key separates them (a query sees only its own key's events). A record whose final key or query
# time is missing is routed to a group of its own (_NO_KEY and its id), where it meets only its own
# partial results. Group elements are columnar blocks, one per kind of a chunk, packed together
# (_pack: coder, then zstd):
#   (_RECORDS, pack_block(Block))            the records; raw lines as PackedText, ids as HexIds
#   (_EVENTS, j, names, codes, ids, event times, values)
#                                            events of event-time group j: keys (names, int32 codes
#                                            into them), times int64, values float64 (n, n_features)
#   (_QUERIES, names, codes, ids, query times, route names, route codes)
#                                            queries of a key group computed apart, with the final
#                                            group each record goes to
#   (_PARTIALS, ids, {name: column_wire})    its results, sent to the records' groups
# ids: (width, raw bytes) for fingerprints (see _wire), else a list. Codes and times as raw bytes.
_RECORDS, _EVENTS, _QUERIES, _PARTIALS = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class _KeyGroup:
    """The features sharing a key field and a query time, split by event time: one shuffle by time bucket."""

    key: str | None
    query_time: str
    groups: tuple[tuple[str, tuple[WindowFeature, ...]], ...]  # (event_time, its features in order)

    @property
    def label(self) -> str:
        return f"{self.key or 'all'}_{self.query_time}"

    @property
    def names(self) -> list[str]:
        return [f.name for _, feats in self.groups for f in feats]


def _key_groups(features: Sequence[WindowFeature]) -> list[_KeyGroup]:
    """(key, query_time) -> event_time -> features, each in order of first appearance."""
    by_key: dict[tuple, dict[str, list[WindowFeature]]] = {}
    for f in features:
        by_key.setdefault((f.key, f.query_time), {}).setdefault(f.event_time, []).append(f)
    return [
        _KeyGroup(key, query_time, tuple((te, tuple(fs)) for te, fs in by_event.items()))
        for (key, query_time), by_event in by_key.items()
    ]


def _keys(block: Block, key_field) -> Sequence:
    return (ALL_KEYS,) * len(block) if key_field is None else block.get(key_field)


def _int64(column: Sequence) -> np.ndarray:
    """Numbers (none missing) as int64, read from their array where they are packed."""
    if isinstance(column, NumberColumn) and column.values.dtype == np.int64:
        if column.missing is None or not column.missing.any():
            return column.values
    return np.asarray(column, dtype=np.int64)


def _key_codes(keys: Sequence) -> tuple[list, np.ndarray]:
    """(the distinct keys, per row the index of its key among them): texts coded by pyarrow, keys of
    another type (a caller's bytes, which pyarrow would turn into text) one by one."""
    if isinstance(keys, TextColumn):
        return keys.names, keys.codes
    if len(keys) and set(map(type, keys)) == {str}:
        coded = encode(keys)
        return coded.values, coded.codes
    codes: dict = {}
    per_row = np.fromiter((codes.setdefault(k, len(codes)) for k in keys), dtype=np.int64, count=len(keys))
    return list(codes), per_row


class _KeyTable:
    """Keys of a batch's parts -> one set of codes, so that events and queries of a key share one."""

    def __init__(self):
        self._codes: dict = {}

    def codes(self, names: Sequence, codes) -> np.ndarray:
        """Codes (per row, into ``names``; int32 bytes or an array) -> this table's codes."""
        table = np.fromiter((self._codes.setdefault(k, len(self._codes)) for k in names), dtype=np.int64, count=len(names))
        codes = np.frombuffer(codes, dtype=np.int32) if isinstance(codes, bytes) else codes
        return table[codes] if len(codes) else np.zeros(0, dtype=np.int64)

    @property
    def names(self) -> list:
        return list(self._codes)

    def __len__(self) -> int:
        return len(self._codes)


def _split_by(codes: np.ndarray):
    """Row indices grouped by an integer per row: yields (value, rows in order) per distinct value."""
    if not len(codes):
        return
    distinct, inverse = np.unique(codes, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(distinct) == 1:
        yield int(distinct[0]), np.arange(len(codes))
        return
    order = np.argsort(inverse, kind="stable")
    cuts = np.cumsum(np.bincount(inverse, minlength=len(distinct)))[:-1]
    yield from zip(distinct.tolist(), np.split(order, cuts), strict=True)


_NO_KEY = "\x00"


def _bucket_key(bucket: int) -> str:
    """A group's key: its time bucket as text (a deterministic coder of its own, see WindowChunks.expand)."""
    return str(bucket)


def _route_codes(block: Block, kg: _KeyGroup, bucket_s: int) -> tuple[list[str], np.ndarray]:
    """Per record, the final group where it meets its events and partial results, as (the distinct
    group keys, per row the index of its own): the bucket of its query time, or for a record
    without a final key or query time, a group of its own (a mark and its id)."""
    times, ids = block.get(kg.query_time), block.get(ID)
    rows = _present(_keys(block, kg.key), times)
    codes = np.empty(len(block), dtype=np.int64)
    names: list[str] = []
    if rows:
        distinct, inverse = np.unique(_int64(take(times, rows)) // bucket_s, return_inverse=True)
        names = [_bucket_key(b) for b in distinct.tolist()]
        codes[rows] = inverse.reshape(-1)
    if len(rows) < len(block):
        keyed = set(rows)
        for i in range(len(block)):
            if i not in keyed:
                codes[i] = len(names)
                names.append(_NO_KEY + str(ids[i]))
    return names, codes


# Ids inside the group elements: fingerprints (lowercase hex) travel as their bytes, (width, raw
# bytes), and are read as a numpy array of fixed-width bytes; any other ids as a list.
def _packed_ids(block: Block) -> Block:
    """The block with its ids as :class:`~pipeline.rows.HexIds` where they are all hex."""
    ids = block.columns.get(ID)
    packed = None if ids is None else HexIds.of(ids)
    return block if packed is None or packed is ids else block.replace(**{ID: packed})


def _id_array(ids: Sequence, rows=None) -> np.ndarray:
    """The ids (at ``rows``) as a numpy array: fixed-width bytes for HexIds."""
    if isinstance(ids, HexIds):
        array = ids.array()
        return array if rows is None else array[np.asarray(rows, dtype=np.int64)]
    return np.array(list(ids) if rows is None else select(ids, rows))


def _wire(ids: np.ndarray):
    return (ids.dtype.itemsize, ids.tobytes()) if ids.dtype.kind == "S" else ids.tolist()


def _wire_len(wire) -> int:
    return len(wire[1]) // wire[0] if isinstance(wire, tuple) else len(wire)


def _hex_list(wire) -> list:
    width, raw = wire
    return list(HexIds(raw, width))


def _from_wire(wires: Sequence) -> np.ndarray:
    """The ids of ``wires`` one after the other, as one numpy array."""
    if wires and all(isinstance(w, tuple) for w in wires) and len({w[0] for w in wires}) == 1:
        return np.frombuffer(b"".join(w[1] for w in wires), dtype=f"S{wires[0][0]}")
    return np.array([x for w in wires for x in (_hex_list(w) if isinstance(w, tuple) else w)])


_CODER = beam.coders.FastPrimitivesCoder()


_ROWS = struct.Struct("<II")  # a packed element's header: (records or queries, events and partial results)


def _block_rows(block) -> tuple[int, int]:
    """(records or queries, events or partial results) in one of the blocks a window group gets."""
    kind = block[0]
    if kind == _RECORDS:
        return block[1][0], 0  # a packed block: (rows, names, wires)
    if kind == _QUERIES:
        return _wire_len(block[3]), 0
    if kind == _EVENTS:
        return 0, _wire_len(block[4])
    return 0, _wire_len(block[1])


def _pack(blocks: list) -> bytes:
    """A group's blocks from one chunk, encoded here with the coder the runner would use (a (str,
    bytes) pair has a coder every runner knows, see WindowChunks.expand), then compressed, after a
    header of their row counts (:func:`_packed_rows`), which the group's DoFn reads without unpacking.

    Every row crosses a window group's shuffle, and a runner holds or moves its elements as
    bytes: the in-memory runner keeps a group's whole input three times over while it builds it
    (at 1M flights its peak memory), and Dataflow bills shuffled bytes. zstd (level 1) more than halves them
    for a fraction of a microsecond a row (:mod:`pipeline.compression`; zlib where pyarrow lacks it).
    It replaced LZ4, which compressed about as fast but less: 1M flights peaked at 1.70-1.76 GiB
    with zstd, 1.90-2.02 GiB with LZ4, in the same time.
    """
    rows = [_block_rows(b) for b in blocks]
    header = _ROWS.pack(sum(r for r, _ in rows), sum(o for _, o in rows))
    return header + compress(_CODER.encode(blocks), "zstd")


def _packed_rows(data: bytes) -> tuple[int, int]:
    """(records or queries, events and partial results) of a :func:`_pack` ed element."""
    if len(data) < _ROWS.size:
        raise ValueError("not window group data: too short")
    return _ROWS.unpack_from(data)


def _unpack(data: bytes) -> list:
    try:
        return _CODER.decode(decompress(data[_ROWS.size:]))
    except ValueError as e:
        raise ValueError(f"not window group data: {e}") from None


def _by_value(values) -> dict:
    """value -> the indices where it occurs, in order."""
    groups: dict = {}
    for i, value in enumerate(values):
        rows = groups.get(value)
        if rows is None:
            groups[value] = [i]
        else:
            rows.append(i)
    return groups


def _present(*columns) -> list[int]:
    """Indices where every column has a value."""
    gaps = [c for c in columns if None in c]  # a scan in C (or of a packed column's mask); most have no gap
    if not gaps:
        return list(range(len(columns[0])))
    if all(isinstance(c, NumberColumn | TextColumn) for c in gaps):
        return np.flatnonzero(np.logical_and.reduce([c.present() for c in gaps])).tolist()
    return [i for i, values in enumerate(zip(*gaps, strict=True)) if None not in values]


def _floats(column: Sequence) -> np.ndarray:
    """Numbers (None where missing) as float64 with NaN for missing, from their array where packed."""
    if isinstance(column, NumberColumn):
        x = column.values.astype(np.float64)
        if column.missing is not None:
            x[column.missing] = np.nan
        return x
    return floats(column)


def _emit_events(block: Block, keys, kg: _KeyGroup, window_s: int, bucket_s: int, out: dict) -> None:
    """Adds to ``out[group key]`` the block's events of each event-time group as columnar blocks, at
    every bucket whose queries they can reach (an event at te counts for queries in (te, te + window])."""
    ids_all = block.get(ID)
    for j, (event_time, feats) in enumerate(kg.groups):
        times = block.get(event_time)
        rows = _present(keys, times)
        if not rows:
            continue
        te = _int64(take(times, rows))
        values = np.full((len(rows), len(feats)), np.nan)
        for k, f in enumerate(feats):
            if f.value is not None:
                values[:, k] = _floats(take(block.get(f.value), rows))
        ids = _id_array(ids_all, rows)
        names, codes = _key_codes(take(keys, rows))
        codes = codes.astype(np.int32)
        first, last = te // bucket_s, (te + window_s) // bucket_s
        for offset in range(int((last - first).max()) + 1):
            reach = np.flatnonzero(first + offset <= last)
            for bucket, sel in _split_by(first[reach] + offset):
                idx = reach[sel]
                # Raw bytes, not arrays: a small numpy array costs more to pickle and unpickle than its buffer.
                out.setdefault(_bucket_key(bucket), []).append(
                    (_EVENTS, j, names, codes[idx].tobytes(), _wire(ids[idx]), te[idx].tobytes(), values[idx].tobytes())
                )


def _compute(kg: _KeyGroup, blocks, q_t, q_id, q_g, window_s: int) -> dict[str, list]:
    """name -> per query value, for every feature of ``kg``; ``blocks[j]`` is (id codes, times,
    values, groups) of event-time group j, each (group, id) once, or None; ``q_id`` the queries' id
    codes (:func:`_id_codes`, shared with the events'), ``q_g`` their groups (a query sees only the
    events of its own group)."""
    q_t = _int64(q_t)
    out: dict[str, list] = {}
    for j, (_event_time, feats) in enumerate(kg.groups):
        if blocks[j] is None:
            sums = np.zeros((len(q_t), len(feats)))
            counts = np.zeros((len(q_t), len(feats)), dtype=np.int64)
            n_events = np.zeros(len(q_t), dtype=np.int64)
        else:
            ids, times, values, groups = blocks[j]
            # Group numbers made small (one code for each group present), whatever the keys and batch.
            _, codes = np.unique(np.concatenate([q_g, groups]), return_inverse=True)
            codes = codes.reshape(-1)
            sums, counts, n_events = window_stats(times, ids, values, q_t, q_id, window_s, codes[len(q_g):], codes[:len(q_g)])
        for k, f in enumerate(feats):
            if f.statistic == "count":
                out[f.name] = n_events.tolist()
            else:
                # Python floats divide exactly as float64 numpy scalars do; lists avoid per-item numpy indexing.
                out[f.name] = [s / c if c else None for s, c in zip(sums[:, k].tolist(), counts[:, k].tolist(), strict=True)]
    return out


def _event_blocks(kg: _KeyGroup, parts, pending: Sequence[int], table: _KeyTable) -> list:
    """Per event-time group, the event blocks ``parts`` (of the batch's groups ``pending``, one
    each) concatenated, as (ids, times, values, batch group, key code), or None; keys coded by
    ``table``. Exact copies are still there: see :func:`_dedupe_events`."""
    blocks = []
    for j in range(len(kg.groups)):
        mine = [(p, g) for p, g in zip(parts, pending, strict=True) if p[1] == j]
        if not mine:
            blocks.append(None)
            continue
        keys = np.concatenate([table.codes(p[2], p[3]) for p, _ in mine])
        ids = _from_wire([p[4] for p, _ in mine])
        times = np.frombuffer(b"".join(p[5] for p, _ in mine), dtype=np.int64)
        values = np.frombuffer(b"".join(p[6] for p, _ in mine), dtype=np.float64).reshape(len(ids), -1)
        group = np.repeat(np.array([g for _, g in mine], dtype=np.int64), [_wire_len(p[4]) for p, _ in mine])
        blocks.append((ids, times, values, group, keys))
    return blocks


def _dedupe_events(blocks: list, codes: list) -> list:
    """:func:`_event_blocks` with their ids replaced by ``codes`` (one array per block that is not
    None, see :func:`_id_codes`) and each (batch group, id) once, the first: an exact copy of a
    record sends the same events as its original, which count once."""
    codes = iter(codes)
    out = []
    for block in blocks:
        if block is None:
            out.append(None)
            continue
        _, times, values, group, keys = block
        ids = next(codes)
        first = _first_of_each(ids, group)
        if len(first) < len(ids):
            ids, times, values, group, keys = ids[first], times[first], values[first], group[first], keys[first]
        out.append((ids, times, values, group, keys))
    return out


def _id_codes(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Ids of several arrays -> int64 codes, the same code for the same id in any of them, in the
    order of the ids (so ties broken by code break as by id). One sort for all.

    Fingerprints (fixed-width bytes) sort by their first 8 bytes as an integer, four times faster
    than as bytes; should two different ids share those 8 bytes, all are sorted as bytes instead."""
    sizes = np.cumsum([len(a) for a in arrays])[:-1]
    arrays = [a for a in arrays if len(a)] or [np.zeros(0, dtype="S1")]  # an empty array says nothing of the kind
    if all(a.dtype.kind == "S" for a in arrays) and len({a.dtype.itemsize for a in arrays}) == 1:
        ids = np.concatenate(arrays)
        width = ids.dtype.itemsize
        codes = None
        if width >= 8 and len(ids):
            prefix = np.ascontiguousarray(ids.view(np.uint8).reshape(-1, width)[:, :8]).view(">u8").reshape(-1)
            _, first, codes = np.unique(prefix.astype(np.uint64), return_index=True, return_inverse=True)
            codes = codes.reshape(-1)
            if width > 8 and not np.array_equal(ids[first][codes], ids):  # two ids share a prefix
                codes = None
        if codes is None:
            codes = np.unique(ids, return_inverse=True)[1].reshape(-1)
    else:
        as_text = [np.array(_hex_list((a.dtype.itemsize, a.tobytes()))) if a.dtype.kind == "S" else a for a in arrays]
        codes = np.unique(np.concatenate(as_text), return_inverse=True)[1].reshape(-1)
    return np.split(codes.astype(np.int64), sizes)


def _with_groups(blocks: list, n_keys: int) -> list:
    """Event blocks from :func:`_event_blocks` as (ids, times, values, group): one group per (batch
    group, key)."""
    return [None if b is None else (b[0], b[1], b[2], b[3] * n_keys + b[4]) for b in blocks]


def _positions(ids: np.ndarray, wanted: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """Where each of ``wanted`` is in ``ids`` (unique id codes): a partial result finds its record
    (``shown``: the wanted ids as they are, for the error)."""
    order = np.argsort(ids, kind="stable")
    at = order[np.minimum(np.searchsorted(ids[order], wanted), len(ids) - 1)]
    missing = ids[at] != wanted
    if missing.any():
        raise ValueError(f"a partial window result has no record: id {shown[missing][0]!r}")
    return at


def _first_of_each(ids: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each (group, id), in order."""
    codes, inverse = np.unique(ids, return_inverse=True)
    _, first = np.unique(group * len(codes) + inverse.reshape(-1), return_index=True)
    first.sort()
    return first


def _in_global_window(out):
    """An output of ``finish_bundle`` (which must say its window): in the global window."""
    if isinstance(out, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value_at_end_of_window(out.value))
    return GlobalWindows.windowed_value_at_end_of_window(out)


class _Batched(beam.DoFn):
    """Collects the time-bucket groups of a bundle and computes them together, ``batch_rows`` rows
    at a time: numpy's cost per call, not per row, is what small groups spend most on."""

    batch_rows = 50_000

    def start_bundle(self):
        self._pending, self._rows = [], 0

    def _add(self, item, rows: int):
        self._pending.append(item)
        self._rows += rows
        if self._rows >= self.batch_rows:
            yield from self._flush()

    def _flush(self):
        pending, self._pending, self._rows = self._pending, [], 0
        if pending:
            yield from self._compute_batch(pending)

    def finish_bundle(self):
        yield from map(_in_global_window, self._flush())


class _Emitter(beam.DoFn):
    """Per chunk of records, the (group key, packed blocks) elements of :meth:`_emit`."""

    def process(self, chunk):
        yield from self._emit(chunk)


class _EmitEventsAndQueries(_Emitter):
    """A key group computed apart: per chunk, columnar blocks of its events and queries by time
    bucket; results go to each record's group in the final key group."""

    def __init__(self, kg: _KeyGroup, final: _KeyGroup, window_s: int, bucket_s: int):
        self._kg, self._final, self._window, self._bucket = kg, final, window_s, bucket_s

    def _emit(self, chunk):
        block = _packed_ids(as_block(chunk))
        keys = _keys(block, self._kg.key)
        out: dict = {}
        _emit_events(block, keys, self._kg, self._window, self._bucket, out)
        times = block.get(self._kg.query_time)
        rows = _present(keys, times)
        if rows:
            tq = _int64(take(times, rows))
            ids = _id_array(block.get(ID), rows)
            names, codes = _key_codes(take(keys, rows))
            codes = codes.astype(np.int32)
            route_names, route_codes = _route_codes(block, self._final, self._bucket)
            route_codes = route_codes[np.asarray(rows, dtype=np.int64)].astype(np.int32)
            for bucket, sel in _split_by(tq // self._bucket):
                out.setdefault(_bucket_key(bucket), []).append(
                    (_QUERIES, names, codes[sel].tobytes(), _wire(ids[sel]), tq[sel].tobytes(), route_names,
                     route_codes[sel].tobytes())
                )
        for group, blocks in out.items():
            yield group, _pack(blocks)


class _AggregateQueries(_Batched):
    def __init__(self, kg: _KeyGroup, window_s: int):
        self._kg, self._window = kg, window_s

    def process(self, element):
        _, lists = element
        lists = list(lists)  # unpacked where the batch is computed (a helper process, where there is one)
        rows = [_packed_rows(data) for data in lists]
        queries = sum(q for q, _ in rows)
        if queries:
            yield from self._add(lists, queries + sum(e for _, e in rows))

    @staticmethod
    def _opened(lists) -> tuple[list, list]:
        events, queries = [], []
        for blocks in map(_unpack, lists):
            for block in blocks:
                (events if block[0] == _EVENTS else queries).append(block)
        return events, queries

    def _compute_batch(self, pending):
        pending = [self._opened(lists) for lists in pending]
        queries = [(g, q) for g, (_, group_queries) in enumerate(pending) for q in group_queries]
        keys, routes = _KeyTable(), _KeyTable()
        q_key = np.concatenate([keys.codes(q[1], q[2]) for _, q in queries])
        q_route = np.concatenate([routes.codes(q[5], q[6]) for _, q in queries])
        ids = _from_wire([q[3] for _, q in queries])
        tq = np.frombuffer(b"".join(q[4] for _, q in queries), dtype=np.int64)
        q_batch = np.repeat(np.array([g for g, _ in queries], dtype=np.int64), [_wire_len(q[3]) for _, q in queries])
        parts = [part for events, _ in pending for part in events]
        groups = [g for g, (events, _) in enumerate(pending) for _ in events]
        events = _event_blocks(self._kg, parts, groups, keys)
        q_codes, *event_codes = _id_codes([ids, *(e[0] for e in events if e is not None)])
        events = _dedupe_events(events, event_codes)
        q_g = q_batch * len(keys) + q_key
        first = _first_of_each(q_codes, q_g)  # a copy's query is its original's
        ids, q_codes, tq, q_g, q_route = ids[first], q_codes[first], tq[first], q_g[first], q_route[first]
        stats = _compute(self._kg, _with_groups(events, len(keys)), tq, q_codes, q_g, self._window)
        route_names = routes.names
        for route, rows in _split_by(q_route):
            results = {name: column_wire(select(column, rows)) for name, column in stats.items()}
            yield route_names[route], _pack([(_PARTIALS, _wire(ids[rows]), results)])


class _EmitRecordsAndEvents(_Emitter):
    """The final key group: per chunk, the records (a block) at their groups and the events of the
    final key group at every bucket they reach. Every window column starts as missing (None)."""

    def __init__(self, kg: _KeyGroup, names, window_s: int, bucket_s: int):
        self._kg, self._names, self._window, self._bucket = kg, tuple(names), window_s, bucket_s

    def _emit(self, chunk):
        block = _packed_ids(as_block(chunk))
        blank = (None,) * len(block)
        block = block.replace(**dict.fromkeys(self._names, blank))
        out: dict = {}
        lines = block.columns.get(LINE)
        route_names, route_codes = _route_codes(block, self._kg, self._bucket)
        for route, rows in _split_by(route_codes):
            records = block if len(rows) == len(block) else block.take(rows.tolist())
            if lines is not None:  # read again only for a record with copies (_first_copies)
                records = records.replace(**{LINE: PackedText.of(records.columns[LINE])})
            out.setdefault(route_names[route], []).append((_RECORDS, pack_block(records)))
        _emit_events(block, _keys(block, self._kg.key), self._kg, self._window, self._bucket, out)
        for group, blocks in out.items():
            yield group, _pack(blocks)


def _first_copies(block: Block, codes: np.ndarray, line_columns: Sequence[Sequence]):
    """(rows kept, dead letters): of records sharing an id (exact copies), the first by (source,
    line) is kept, at the place of the first copy; the others are rejected as its duplicates.
    ``codes``: the ids' codes (see :func:`_id_codes`). ``line_columns``: the raw lines of the block's
    rows, in pieces, unpacked only if copies are found."""
    ids = block.get(ID)
    if not len(codes) or np.bincount(codes).max() <= 1:
        return None, []
    groups = _by_value(ids)
    sources, lines = block.get(SOURCE), [line for column in line_columns for line in column]
    keep, rejected = [], []
    for rows in groups.values():
        if len(rows) > 1:
            rows = sorted(rows, key=lambda i: (sources[i] or "", lines[i] or ""))
            for i in rows[1:]:
                rejected.append(dead_letter("dedupe", f"record: duplicate of a row in {sources[rows[0]] or ''}",
                                            sources[i] or "", lines[i] or ""))
        keep.append(rows[0])
    return keep, rejected


class _AggregateRecords(_Batched):
    """Time-bucket groups -> blocks of their records with their window columns.

    Exact copies of a record (same ``_id``, the fingerprint of its canonical fields) meet here, since
    they share their group: one is kept, the others are rejected as duplicates (``rejected``
    output). The group's size in rows (records, events and partial results) is recorded in the
    ``window/group_rows`` distribution, the figure that shows no group grows with the input's length.
    """

    def __init__(self, kg: _KeyGroup, window_s: int):
        self._kg, self._window = kg, window_s
        self._group_rows = beam.metrics.Metrics.distribution("window", "group_rows")

    def process(self, element):
        group, lists = element
        lists = list(lists)  # unpacked where the batch is computed (a helper process, where there is one)
        rows = [_packed_rows(data) for data in lists]
        records = sum(r for r, _ in rows)
        n_rows = records + sum(o for _, o in rows)
        self._group_rows.update(n_rows)
        if records:
            yield from self._add((not group.startswith(_NO_KEY), lists), n_rows)

    @staticmethod
    def _opened(keyed: bool, lists) -> tuple:
        record_blocks, events, partials = [], [], []
        for blocks in map(_unpack, lists):
            for block in blocks:
                kind = block[0]
                if kind == _RECORDS:
                    record_blocks.append(unpack_block(block[1]))
                elif kind == _EVENTS:
                    events.append(block)
                else:
                    partials.append(block)
        return keyed, record_blocks, events, partials

    def _compute_batch(self, pending):
        pending = [self._opened(*item) for item in pending]
        # Records of different groups never share an id (copies share their group), so the batch is
        # de-duplicated and given its partial results as a whole.
        blocks = [b for _, record_blocks, _, _ in pending for b in record_blocks]
        records = Block.concat([b.drop(LINE) for b in blocks])  # nothing downstream needs the raw text
        record_group = np.repeat(
            np.arange(len(pending)), [sum(len(b) for b in record_blocks) for _, record_blocks, _, _ in pending]
        )
        partials = [p for _, _, _, group_partials in pending for p in group_partials]
        partial_ids = _from_wire([p[1] for p in partials]) if partials else np.array([])
        parts = [part for _, _, events, _ in pending for part in events]
        groups = [g for g, (_, _, events, _) in enumerate(pending) for _ in events]
        table = _KeyTable()
        events = _event_blocks(self._kg, parts, groups, table)
        codes, partial_codes, *event_codes = _id_codes(
            [_id_array(records.get(ID)), partial_ids, *(e[0] for e in events if e is not None)]
        )
        events = _dedupe_events(events, event_codes)
        keep, rejected = _first_copies(records, codes, [b.get(LINE) for b in blocks])
        for entry in rejected:
            yield beam.pvalue.TaggedOutput(REJECTED, entry)
        if keep is not None:
            records, record_group, codes = records.take(keep), record_group[keep], codes[keep]
        updates: dict[str, list] = {}
        if partials:
            at = _positions(codes, partial_codes, partial_ids).tolist()
            start = 0
            for _, ids, values in partials:
                rows = at[start:start + _wire_len(ids)]
                start += len(rows)
                for name, wire in values.items():
                    target = updates.get(name)
                    if target is None:
                        target = updates[name] = list(records.get(name))
                    for i, value in zip(rows, column_values(wire), strict=True):
                        target[i] = value
        # Queries: the records of groups with a key (a record without one is alone with its partial results).
        keyed = np.array([has_key for has_key, _, _, _ in pending], dtype=bool)[record_group]
        rows = np.flatnonzero(keyed)
        if len(rows):
            q_key = table.codes(*_key_codes(take(_keys(records, self._kg.key), rows)))
            stats = _compute(
                self._kg, _with_groups(events, len(table)), take(records.get(self._kg.query_time), rows),
                codes[rows], record_group[rows] * len(table) + q_key, self._window,
            )
            all_rows = len(rows) == len(records)
            for name, column in stats.items():
                if all_rows:
                    updates[name] = column
                else:
                    target = updates.get(name)
                    if target is None:
                        target = updates[name] = list(records.get(name))
                    for i, value in zip(rows.tolist(), column, strict=True):
                        target[i] = value
        yield records.replace(**updates)


class WindowChunks(beam.PTransform):
    """PCollection of record lists -> ``records`` (lists of records with each :class:`WindowFeature`
    column) and ``rejected`` (exact duplicates, one dead letter each).

    Records need ``_id``: the fingerprint of their canonical fields, so equal for exact copies (see
    ``pipeline.rows.ParseChunks``), which are de-duplicated here, where they meet anyway.
    """

    def __init__(self, features: Sequence[WindowFeature], window_s: int, bucket_s: int = 86400):
        super().__init__()
        if window_s <= 0:
            raise ValueError("window must be positive")
        self._features = list(features)
        self._window = int(window_s)
        self._bucket = int(bucket_s)
        key_groups = _key_groups(self._features)
        if not key_groups:
            raise ValueError("no window features")
        # The records travel with the key group that has the most event times (fewest extra elements).
        final = max(range(len(key_groups)), key=lambda i: (len(key_groups[i].groups), -i))
        self._final = key_groups[final]
        self._others = [kg for i, kg in enumerate(key_groups) if i != final]

    def expand(self, chunks):
        names = [f.name for f in self._features]
        # Everything flattened into the final group is (string key, bytes) (see _group_key and
        # _pack): coders the runner knows, so the Flatten's inputs have the very coder the group
        # needs; with any other, each input would be decoded and encoded again on its way through.
        keyed = typing.Tuple[str, bytes]  # noqa: UP006 - Beam's type hints
        to_final = [
            chunks
            | "EmitRecordsAndEvents"
            >> beam.ParDo(_EmitRecordsAndEvents(self._final, names, self._window, self._bucket))
            .with_output_types(keyed)
        ]
        for kg in self._others:
            to_final.append(
                chunks
                | f"EmitEventsAndQueries_{kg.label}"
                >> beam.ParDo(_EmitEventsAndQueries(kg, self._final, self._window, self._bucket))
                | f"GroupByKeyAndTimeBucket_{kg.label}" >> beam.GroupByKey()
                | f"AggregateLookback_{kg.label}" >> beam.ParDo(_AggregateQueries(kg, self._window)).with_output_types(keyed)
            )
        grouped = to_final | "FlattenRecordsAndResults" >> beam.Flatten() if len(to_final) > 1 else to_final[0]
        return (
            grouped
            | "GroupByKeyAndTimeBucket" >> beam.GroupByKey()
            | "AggregateLookback"
            >> beam.ParDo(_AggregateRecords(self._final, self._window))
            .with_output_types(Block)
            .with_outputs(REJECTED, main=RECORDS)
        )


def _duplicate_id(entry):
    raise ValueError(f"LookbackAggregates needs a unique _id per record; a record repeats one: {entry}")


class LookbackAggregates(beam.PTransform):
    """Record by record: adds each :class:`WindowFeature` column to every record (``_id`` must be
    unique per record; a repeated one fails the pipeline). :class:`WindowChunks` on batches."""

    def __init__(self, features: Sequence[WindowFeature], window_s: int, bucket_s: int = 86400):
        super().__init__()
        self._windows = WindowChunks(features, window_s, bucket_s)

    def expand(self, records):
        out = (
            records
            | "BatchRecords" >> beam.BatchElements(min_batch_size=1, max_batch_size=4096)
            | "WindowChunks" >> self._windows
        )
        _ = out[REJECTED] | "FailOnRepeatedId" >> beam.Map(_duplicate_id)
        return out[RECORDS] | "Unbatch" >> beam.FlatMap(lambda chunk: chunk)
