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
- **One pool per process,** shared by every DoFn that offloads (a function is sent to a helper with
  its first task there and unpickled once); its processes are spawned (never forked from a process
  that has TensorFlow's threads) and end with the pipeline's last user, or at exit.
- **No thread beside the runner's:** elements and results travel through files in shared memory
  (``/dev/shm`` where it has room), the pipes carry only task numbers (:class:`_Pool`).

Functions are pickled with Beam's pickler, as Beam pickles DoFns for its own workers.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

QUEUED_PER_HELPER = 4  # tasks queued per helper before the runner's thread computes one itself
MAX_PENDING = 16  # results held back (waiting on an earlier element's helper) before the thread waits
_STOP = b""  # the task message that ends a helper
_READY = b"ready"  # a helper's first message: its imports are done


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
def _preload(modules) -> None:
    """Imports ``modules`` (in a thread of the helper's own, while it waits for or computes its first
    tasks). A module that fails to import here is left to the task that needs it, which imports it
    again and fails with the reason where it is reported."""
    import importlib

    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _serve(tasks, results, directory: str, preload=()) -> None:
    """A helper's loop: task number -> reads the task's file (function key, the function pickled the
    first time this helper sees it, element), computes, writes the result's file (ok, value or
    exception), answers with the number. Ends on _STOP or when the runner's end of the pipe closes.

    ``preload``: modules its later tasks need that take long to import (TensorFlow: about 3 s),
    imported beside the first tasks rather than by the first task that needs them, which would
    hold back every result after its own meanwhile."""
    import pickle
    import traceback

    from apache_beam.internal import pickler

    functions: dict = {}
    results.send_bytes(_READY)
    if preload:
        threading.Thread(target=_preload, args=(tuple(preload),), name="preload", daemon=True).start()
    while True:
        try:
            message = tasks.recv_bytes()
        except (EOFError, OSError):
            return
        if message == _STOP:  # nothing of this process's own is left to write: its teardown is skipped
            sys.stderr.flush()
            os._exit(0)
        path = os.path.join(directory, message.decode())
        try:
            with open(path, "rb") as f:
                key, payload, item = pickle.load(f)
            os.unlink(path)
            if payload is not None:
                functions[key] = pickler.loads(payload)
            outcome = (True, functions[key](item))
        except Exception as e:  # noqa: BLE001 - raised in the runner's thread at the element's place
            e.add_note(f"(in helper process {os.getpid()}):\n{traceback.format_exc()}")
            outcome = (False, e)
        answer = path + ".out"
        with open(answer, "wb") as f:
            try:
                pickle.dump(outcome, f, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:  # noqa: BLE001 - a result or exception that cannot be pickled
                f.seek(0)
                f.truncate()
                pickle.dump((False, RuntimeError(f"a helper's result could not be sent back: {e!r}")), f)
        results.send_bytes(message)


# ------------------------------------------------------------------ the runner's side
class _Task:
    """An element handed to a helper: its result, once the pool has collected it."""

    __slots__ = ("_pool", "finished", "value", "error")

    def __init__(self, pool: _Pool):
        self._pool, self.finished, self.value, self.error = pool, False, None, None

    def done(self) -> bool:
        if not self.finished:
            self._pool.collect()
        return self.finished

    def result(self):
        while not self.finished:
            self._pool.collect(block=True)
        if self.error is not None:
            raise self.error
        return self.value


class _Helper:
    """One helper process: task numbers go down one pipe and come back up another when done; the
    elements and results themselves go through files, written and read in one go by whichever
    process has them, so neither waits on the other to empty a pipe a piece at a time."""

    def __init__(self, context, directory: str, index: int, preload=()):
        tasks_out, self.tasks = context.Pipe(duplex=False)
        self.results, results_in = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(tasks_out, results_in, directory, tuple(preload)),
                                       name=f"pipeline-helper-{index}", daemon=True)
        self.process.start()
        tasks_out.close()  # the helper's ends: closed here, so that its death reads as the end of its pipe
        results_in.close()
        self.outstanding: dict[str, _Task] = {}
        self.known: set[str] = set()  # functions this helper has been sent
        self.ready = False
        self.alive = True


def _scratch_dir(min_free: int = 1 << 30) -> str:
    """A new directory for elements in transit: in shared memory (/dev/shm) where it has room, else
    the temporary directory."""
    import tempfile

    base = None
    with contextlib.suppress(OSError):
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= min_free and os.access("/dev/shm", os.W_OK):
            base = "/dev/shm"
    return tempfile.mkdtemp(prefix="pipeline-helpers-", dir=base)


class _Pool:
    """The process's helpers, started once and shared by every :class:`OrderedOffload`.

    No thread of ours runs beside the runner's: it writes a task's file and its number itself, and
    collects results when it looks for them (:meth:`collect`). A helper thread in this process would
    have to win the interpreter's lock from the busy runner thread for every piece of every transfer
    (a 2.5 MB result through a pipe took 220 ms so, against 4.5 ms with this process idle).
    """

    _lock = threading.RLock()
    _instance: _Pool | None = None

    def __init__(self, processes: int, preload=()):
        import multiprocessing

        self.processes = processes
        self.users = 0
        self._directory = _scratch_dir()
        self._next = 0
        context = multiprocessing.get_context("spawn")  # never forked from a process with TensorFlow's threads
        self._helpers = [_Helper(context, self._directory, i, preload) for i in range(processes)]
        logger.info("started %d helper process(es) for parsing, windowing, the transform and encoding (elements in transit in %s)",
                    processes, self._directory)

    @classmethod
    def acquire(cls, processes: int, preload=()) -> _Pool:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _Pool(processes, preload)
            cls._instance.users += 1
            return cls._instance

    def release(self) -> None:
        with _Pool._lock:
            self.users -= 1
            if self.users or _Pool._instance is not self:
                return
            _Pool._instance = None
            self._shutdown()

    def _shutdown(self) -> None:
        import shutil

        for helper in self._helpers:
            with contextlib.suppress(OSError):
                helper.tasks.send_bytes(_STOP)
        for helper in self._helpers:
            helper.process.join(timeout=10)
            if helper.process.is_alive():
                helper.process.terminate()
                helper.process.join()
            helper.tasks.close()
            helper.results.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    @property
    def ready(self) -> bool:
        """Whether a helper can take an element now (its imports are done)."""
        self.collect()
        return any(h.ready and h.alive for h in self._helpers)

    def wait_ready(self) -> None:
        """Waits until every helper has started (for tests, which want helpers from the first element)."""
        while not all(h.ready or not h.alive for h in self._helpers):
            self.collect(block=True, waiting_for_start=True)

    @property
    def in_flight(self) -> int:
        return sum(len(h.outstanding) for h in self._helpers)

    def submit(self, key: str, payload: bytes, item) -> _Task:
        import pickle

        with _Pool._lock:
            helper = min((h for h in self._helpers if h.ready and h.alive), key=lambda h: len(h.outstanding))
            self._next += 1
            name = f"t{self._next}"
            path = os.path.join(self._directory, name)
            try:
                with open(path, "wb") as f:
                    pickle.dump((key, None if key in helper.known else payload, item), f, protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            helper.known.add(key)
            task = helper.outstanding[name] = _Task(self)
            try:
                helper.tasks.send_bytes(name.encode())
            except OSError:
                self._lost(helper)
            return task

    def collect(self, block: bool = False, waiting_for_start: bool = False) -> None:
        """Takes in the results the helpers have finished; ``block``: waits for at least one message
        (a result, a helper's start or its death) where a task is outstanding."""
        from multiprocessing.connection import wait

        with _Pool._lock:
            live = [h for h in self._helpers if h.alive and (h.outstanding or not h.ready)]
            if block and live and (waiting_for_start or any(h.outstanding for h in live)):
                wait([h.results for h in live] + [h.process.sentinel for h in live])
            for helper in live:
                try:
                    while helper.results.poll():
                        self._receive(helper, helper.results.recv_bytes())
                except (EOFError, OSError):
                    self._lost(helper)
                    continue
                if not helper.process.is_alive() and not helper.results.poll():
                    self._lost(helper)

    def _receive(self, helper: _Helper, message: bytes) -> None:
        import pickle

        if message == _READY:
            helper.ready = True
            return
        name = message.decode()
        task = helper.outstanding.pop(name)
        path = os.path.join(self._directory, name + ".out")
        with open(path, "rb") as f:
            ok, value = pickle.load(f)
        os.unlink(path)
        if ok:
            task.value = value
        else:
            task.error = value
        task.finished = True

    def _lost(self, helper: _Helper) -> None:
        """A helper died: its outstanding elements fail (the bundle with them), with a clear error."""
        helper.alive = False
        helper.process.join(timeout=5)  # its pipe closes as it ends: wait the moment it takes to be reaped
        code = helper.process.exitcode
        for task in helper.outstanding.values():
            task.error = RuntimeError(
                f"a helper process died (exit code {code}) while computing an element; "
                "run with --helper_processes 0 to compute in this process"
            )
            task.finished = True
        helper.outstanding.clear()


@contextlib.contextmanager
def helpers_started(processes: int, preload=()):
    """Starts the helper processes now and keeps them until the block ends: started before the graph
    is built, they are ready (about a second of importing) when the first element comes. ``preload``:
    modules they import beside their first tasks (see :func:`_serve`)."""
    pool = _Pool.acquire(processes, preload) if processes > 0 else None
    try:
        yield
    finally:
        if pool is not None:
            pool.release()


def _label(fn) -> str:
    """A function's name for the log: ``Class.method`` of the instance's own class for a bound method,
    the function's for a ``functools.partial``."""
    fn = getattr(fn, "func", fn)
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
        task = None
        if pool is not None and pool.ready and pool.in_flight < QUEUED_PER_HELPER * pool.processes:
            try:
                task = pool.submit(self._key, self._payload, item)
            except Exception as e:  # noqa: BLE001 - the element cannot travel (not picklable, no room): computed here
                logger.warning("%s: an element could not be handed to a helper (%s); computed in this process",
                               _label(self._fn), e)
        if task is not None:
            self._pending.append(task)
            self.helped += 1
        else:
            self._pending.append(_Local(self._fn, item))
            self.here += 1
        while self._pending and (self._pending[0].done() or len(self._pending) > MAX_PENDING):
            yield self._pending.popleft().result()

    def drain(self):
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        """Drops what is pending (the bundle failed, or was drained) and releases the pool."""
        self._pending.clear()  # a helper's result still to come is read and dropped
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
    (as ``self._offload``) and closes it at teardown; the pool is never pickled with the DoFn.

    :meth:`offer` takes an element and yields the outputs ready (computed here without helpers),
    :meth:`drained` the rest, for ``finish_bundle``. :meth:`outputs_of` turns a result of
    ``helped_fn`` into outputs: by default the result is the list of them."""

    helpers = 0
    _offload = None

    def helped_fn(self):
        raise NotImplementedError

    def outputs_of(self, result):
        return result

    def offer(self, item):
        if self._offload is None:
            yield from self.outputs_of(self.helped_fn()(item))
            return
        for result in self._offload.put(item):
            yield from self.outputs_of(result)

    def drained(self):
        if self._offload is not None:
            for result in self._offload.drain():
                yield from map(in_global_window, self.outputs_of(result))

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

        def outputs_of(self, result):
            return (result,)

        def process(self, element):
            yield from self.offer(element)

        def finish_bundle(self):
            yield from self.drained()

    dofn = _OffloadMap()
    dofn.helpers = helpers
    return beam.ParDo(dofn)
