"""A second core for the in-process runner: a DoFn's pure, CPU-bound step run by a helper process.

The DirectRunner's in-memory mode runs every stage in one Python thread, so on a machine with more
cores the others sit idle, and its multi-processing mode loses more to moving elements between
processes than it gains (BENCHMARKS.md). :class:`OrderedOffload` lets a DoFn hand a pure function
of one element (parsing a chunk of lines, encoding a record batch as tf.Examples) to helper
processes while the runner's thread goes on with the rest of the stage:

- **Same output:** results come back in the order their elements came in, whoever computed them,
  so a run with helpers writes what a run without them writes.
- **No idle wait:** the runner's thread computes an element itself when the helpers already have
  enough queued (and while they are still starting), instead of waiting for them.
- **Nothing lost:** an exception in a helper is raised in the DoFn, as it would have been there; a
  helper that dies fails the bundle with a clear error.
- **One pool per process,** shared by every DoFn that offloads (a function is sent with its tasks
  and unpickled once per helper); its processes are spawned (never forked from a process that has
  TensorFlow's threads) and end with the pipeline's last user, or at exit.

Functions are pickled with Beam's pickler, as Beam pickles DoFns for its own workers.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import threading

logger = logging.getLogger(__name__)

QUEUED_PER_HELPER = 4  # tasks queued per helper before the runner's thread computes one itself
MAX_PENDING = 16  # results held back (waiting on an earlier element's helper) before the thread waits


def auto_helpers(requested: int | None, single_process: bool, input_bytes: int, min_bytes: int = 8 << 20) -> int:
    """Helper processes to use: ``requested`` where given (>= 0); otherwise one per core beyond the
    first, where the runner is the in-process one (elsewhere the runner parallelises) and the input
    is large enough (``min_bytes``) to repay a helper's start (about a second of importing)."""
    if requested is not None:
        if requested < 0:
            raise ValueError(f"helper processes must be >= 0, got {requested}")
        return requested
    if not single_process or input_bytes < min_bytes:
        return 0
    return max(0, min((os.cpu_count() or 1) - 1, 2))


# ------------------------------------------------------------------ the helper process side
_FUNCTIONS: dict = {}


def _warm() -> int:
    return os.getpid()


def _call(key: str, payload: bytes, item):
    fn = _FUNCTIONS.get(key)
    if fn is None:
        from apache_beam.internal import pickler

        fn = _FUNCTIONS[key] = pickler.loads(payload)
    return fn(item)


# ------------------------------------------------------------------ the runner's side
class _Pool:
    """The process's helpers: a spawn-context process pool, started once and shared."""

    _lock = threading.Lock()
    _instance: _Pool | None = None

    def __init__(self, processes: int):
        import concurrent.futures
        import multiprocessing

        self.processes = processes
        self.users = 0
        self.in_flight = 0
        self._executor = concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        self._ready = [self._executor.submit(_warm) for _ in range(processes)]
        logger.info("started %d helper process(es) for parsing and encoding", processes)

    @classmethod
    def acquire(cls, processes: int) -> _Pool:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _Pool(processes)
            cls._instance.users += 1
            return cls._instance

    def release(self) -> None:
        with _Pool._lock:
            self.users -= 1
            last = self.users == 0 and _Pool._instance is self
            if last:
                _Pool._instance = None
        if last:  # outside the lock: finishing tasks take it (_done)
            self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return all(f.done() for f in self._ready)

    def submit(self, key: str, payload: bytes, item):
        with _Pool._lock:
            self.in_flight += 1
        future = self._executor.submit(_call, key, payload, item)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future) -> None:
        with _Pool._lock:
            self.in_flight -= 1


@contextlib.contextmanager
def helpers_started(processes: int):
    """Starts the helper processes now and keeps them until the block ends: started before the graph
    is built, they are ready (about a second of importing) when the first element comes."""
    pool = _Pool.acquire(processes) if processes > 0 else None
    try:
        yield
    finally:
        if pool is not None:
            pool.release()


def _label(fn) -> str:
    """A function's name for the log: ``Class.method`` of the instance's own class for a bound method."""
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", repr(fn))
    return f"{type(owner).__name__}.{name}" if owner is not None else name


class _Local:
    """A result computed in the runner's thread (or its exception), in the queue of results."""

    def __init__(self, fn, item):
        try:
            self._value, self._error = fn(item), None
        except Exception as e:  # noqa: BLE001 - raised again in order, as a helper's would be
            self._value, self._error = None, e

    def done(self) -> bool:
        return True

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


class OrderedOffload:
    """``fn(item)`` for each item :meth:`put`, computed by helper processes or here, its results
    handed back in the order the items came: :meth:`put` yields those ready, :meth:`drain` the rest.

    ``processes`` 0 computes everything here (no pool at all). ``fn`` must be picklable by Beam's
    pickler and pure: what it does to its own state stays in the helper.
    """

    def __init__(self, fn, processes: int):
        self._fn = fn
        self._pending: collections.deque = collections.deque()
        self.helped = self.here = 0  # elements computed by helpers, and in this thread
        self._pool = _Pool.acquire(processes) if processes > 0 else None
        if self._pool is not None:
            from apache_beam.internal import pickler

            self._payload = pickler.dumps(fn)
            self._key = hashlib.blake2b(self._payload, digest_size=16).hexdigest()

    def put(self, item):
        pool = self._pool
        if pool is not None and pool.ready and pool.in_flight < QUEUED_PER_HELPER * pool.processes:
            self._pending.append(pool.submit(self._key, self._payload, item))
            self.helped += 1
        else:
            self._pending.append(_Local(self._fn, item))
            self.here += 1
        while self._pending and (self._pending[0].done() or len(self._pending) > MAX_PENDING):
            yield self._result(self._pending.popleft())

    def drain(self):
        while self._pending:
            yield self._result(self._pending.popleft())

    @staticmethod
    def _result(entry):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return entry.result()
        except BrokenProcessPool as e:
            raise RuntimeError(f"a helper process died while computing an element ({e}); "
                               "run with --helper_processes 0 to compute in this process") from e

    def close(self) -> None:
        """Drops what is pending (the bundle failed, or was drained) and releases the pool."""
        for entry in self._pending:
            if hasattr(entry, "cancel"):
                entry.cancel()
        self._pending.clear()
        if self._pool is not None:
            logger.info("%s: %d elements computed by helper processes, %d in the runner's thread",
                        _label(self._fn), self.helped, self.here)
            self._pool.release()
            self._pool = None


def in_global_window(out):
    """An output of ``finish_bundle`` (which must say its window): in the global window."""
    import apache_beam as beam
    from apache_beam.transforms.window import GlobalWindows

    if isinstance(out, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value_at_end_of_window(out.value))
    return GlobalWindows.windowed_value_at_end_of_window(out)


class HelpedDoFn:
    """A DoFn mixin: ``helpers`` > 0 starts an :class:`OrderedOffload` of :meth:`helped_fn` at setup
    (as ``self._offload``) and closes it at teardown; the pool is never pickled with the DoFn."""

    helpers = 0
    _offload = None

    def helped_fn(self):
        raise NotImplementedError

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_offload", None)  # the helpers' pool is this process's
        return state

    def setup(self):
        if self.helpers:
            self._offload = OrderedOffload(self.helped_fn(), self.helpers)

    def teardown(self):
        if self._offload is not None:
            self._offload.close()
            self._offload = None


def offload_map(fn, helpers: int):
    """``beam.Map(fn)`` whose ``fn`` runs in :class:`OrderedOffload` (helpers 0: as ``beam.Map``).
    For the global window (batch pipelines), where Map's outputs keep their input's."""
    import apache_beam as beam

    if not helpers:
        return beam.Map(fn)

    class _OffloadMap(HelpedDoFn, beam.DoFn):
        def helped_fn(self):
            return fn

        def process(self, element):
            yield from self._offload.put(element)

        def finish_bundle(self):
            yield from map(in_global_window, self._offload.drain())

    dofn = _OffloadMap()
    dofn.helpers = helpers
    return beam.ParDo(dofn)
