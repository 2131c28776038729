"""The window store in Redis (``redis://HOST:PORT/DB``; Memorystore on Google Cloud), shared by replicas.

The same store as :class:`pipeline.online.store.MemoryWindowStore`, kept where several server replicas
(and the streaming job) see one copy. Per event kind ``g`` and key value: a sorted set of natural keys
scored by event time, so Redis itself returns a window's events in batch's order (time, then the natural
key's bytes); per kind, hashes of each event's values, its (time, values) order for de-duplication and
its key value; one sorted set per kind for retention. Adding is one Lua script per batch (atomic: two
replicas posting copies of one event store it once).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import redis

from pipeline.online.store import DEFAULT_LATENESS_S, event_rows, query_window, watermarks
from pipeline.records.windows import Query, WindowFeature, event_groups

_ADD = """
local p, window, lateness, kinds, n = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local wm = {}  -- per event kind
for g = 0, kinds - 1 do wm[tostring(g)] = tonumber(redis.call('GET', p .. ':watermark:' .. g) or '') end
local stored, dup, late, evicted = 0, 0, 0, 0
local function less(a, b)  -- byte by byte: Lua's own < follows the server's locale
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function put(g, kv, m, t, o, v)
  redis.call('ZADD', p .. ':z:' .. g .. ':' .. kv, t, m)
  redis.call('HSET', p .. ':o:' .. g, m, o)
  redis.call('HSET', p .. ':v:' .. g, m, v)
  redis.call('HSET', p .. ':k:' .. g, m, kv)
  redis.call('ZADD', p .. ':x:' .. g, t, m)
end
for i = 0, n - 1 do
  local b = 5 + i * 6
  local g, kv, m, t, o, v = ARGV[b], ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]), ARGV[b + 4], ARGV[b + 5]
  if wm[g] and t < wm[g] - window - lateness then
    late = late + 1
  else
    if (not wm[g]) or t > wm[g] then wm[g] = t end
    local old = redis.call('HGET', p .. ':o:' .. g, m)
    if old then
      dup = dup + 1
      if less(o, old) then
        redis.call('ZREM', p .. ':z:' .. g .. ':' .. redis.call('HGET', p .. ':k:' .. g, m), m)
        put(g, kv, m, t, o, v)
      end
    else
      stored = stored + 1
      put(g, kv, m, t, o, v)
    end
  end
end
for g = 0, kinds - 1 do
  local mark = wm[tostring(g)]
  if mark then
    redis.call('SET', p .. ':watermark:' .. g, mark)
    local horizon = '(' .. (mark - window - lateness)
    local old = redis.call('ZRANGEBYSCORE', p .. ':x:' .. g, '-inf', horizon)
    for _, m in ipairs(old) do
      redis.call('ZREM', p .. ':z:' .. g .. ':' .. redis.call('HGET', p .. ':k:' .. g, m), m)
      redis.call('HDEL', p .. ':o:' .. g, m)
      redis.call('HDEL', p .. ':v:' .. g, m)
      redis.call('HDEL', p .. ':k:' .. g, m)
    end
    redis.call('ZREMRANGEBYSCORE', p .. ':x:' .. g, '-inf', horizon)
    evicted = evicted + #old
  end
end
redis.call('HINCRBY', p .. ':counts', 'stored', stored)
redis.call('HINCRBY', p .. ':counts', 'duplicates', dup)
redis.call('HINCRBY', p .. ':counts', 'late', late)
redis.call('HINCRBY', p .. ':counts', 'evicted', evicted)
return {stored, dup, late}
"""

_WINDOW = """
local out = {}
for i = 1, #KEYS, 2 do
  local hits = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[1], '(' .. ARGV[2], 'WITHSCORES')
  local members = {}
  for j = 1, #hits, 2 do members[#members + 1] = hits[j] end
  local values = {}
  for j = 1, #members, 1000 do  -- unpack in slices: Lua's stack holds a few thousand values
    local part = redis.call('HMGET', KEYS[i + 1], unpack(members, j, math.min(j + 999, #members)))
    for _, v in ipairs(part) do values[#values + 1] = v end
  end
  out[#out + 1] = hits
  out[#out + 1] = values
end
return out
"""

_SIGN = 1 << 63
_BATCH = 2000  # events per script call


def _sortable(x: float) -> bytes:
    """8 bytes that order as the floats do, NaN after everything (as first_per_key's order)."""
    if x != x:
        return b"\xff" * 8
    bits = struct.unpack(">Q", struct.pack(">d", x))[0]
    return struct.pack(">Q", bits ^ 0xFFFFFFFFFFFFFFFF if bits & _SIGN else bits | _SIGN)


class RedisWindowStore:
    """The window store in Redis; ``prefix`` names its keys (one store per model and window)."""

    def __init__(self, features: Sequence[WindowFeature], window_s: int, url: str, lateness_s: int | None = None,
                 prefix: str | None = None):
        self.groups = event_groups(features)
        self.window = int(window_s)
        self.lateness = DEFAULT_LATENESS_S if lateness_s is None else int(lateness_s)
        self.prefix = prefix or "windows:" + ",".join(f.name for f in features) + f":{self.window}"
        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.client.ping()  # a wrong URL fails here, at startup, not at the first request
        self._add = self.client.register_script(_ADD)
        self._window = self.client.register_script(_WINDOW)
        self.received = 0

    def add(self, events) -> dict:
        out = {"stored": 0, "duplicates": 0, "late": 0}
        if events is None or not events.num_rows:
            return out
        args = []
        for g, t, key_value, own, vals in event_rows(self.groups, events):
            order = struct.pack(">Q", t + _SIGN) + b"".join(_sortable(v) for v in vals)
            args += [g, "" if key_value is None else key_value, own, t, order, struct.pack(f"<{len(vals)}d", *vals)]
        for start in range(0, len(args), 6 * _BATCH):
            part = args[start:start + 6 * _BATCH]
            stored, dup, late = self._add(keys=[self.prefix], args=[self.window, self.lateness, len(self.groups),
                                                                     len(part) // 6, *part])
            out["stored"] += stored
            out["duplicates"] += dup
            out["late"] += late
        self.client.hincrby(self.prefix + ":counts", "received", events.num_rows)
        return out

    def features(self, query: Query) -> dict:
        keys, wanted = [], []
        for g, group in enumerate(self.groups):
            key_value = None if group.key is None else query.keys.get(group.key)
            if group.key is not None and key_value is None:
                wanted.append((group, None))
                continue
            keys += [f"{self.prefix}:z:{g}:{'' if key_value is None else key_value}", f"{self.prefix}:v:{g}"]
            wanted.append((group, len(keys) // 2 - 1))
        found = self._window(keys=keys, args=[query.time - self.window, query.time]) if keys else []
        out = {}
        for group, at in wanted:
            hits, values = (found[2 * at], found[2 * at + 1]) if at is not None else ([], [])
            ids, times = hits[0::2], [int(float(t)) for t in hits[1::2]]
            width = len(group.features)
            vals = [struct.unpack(f"<{width}d", v) for v in values]
            out.update(query_window(group, query, self.window, times, ids, vals))
        return out

    def watermark(self) -> int | None:
        marks = self.client.mget([f"{self.prefix}:watermark:{g}" for g in range(len(self.groups))])
        return watermarks(self.groups, [None if m is None else int(float(m)) for m in marks])["watermark"]

    def status(self) -> dict:
        counts = {k.decode(): int(v) for k, v in self.client.hgetall(self.prefix + ":counts").items()}
        marks = [self.client.get(f"{self.prefix}:watermark:{g}") for g in range(len(self.groups))]
        kept = sum(self.client.hlen(f"{self.prefix}:o:{g}") for g in range(len(self.groups)))
        return {"received": 0, "stored": 0, "duplicates": 0, "late": 0, "evicted": 0, **counts,
                **watermarks(self.groups, [None if m is None else int(float(m)) for m in marks]), "window_seconds": self.window,
                "allowed_lateness_seconds": self.lateness, "kept": kept, "store": "redis"}

    def clear(self) -> None:
        """Deletes this store's keys (a fresh replay)."""
        for key in self.client.scan_iter(match=self.prefix + ":*", count=1000):
            self.client.delete(key)
