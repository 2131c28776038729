"""Reading raw inputs: expand patterns (local, globs, gs://), detect each file's layout, read lines.

Layout detection happens when the graph is built: the first line of every matched file is read
(gzip is handled by the extension) and matched against the dataset's layouts, so a wrong file fails
at once with a message, not halfway through a Dataflow job. Lines are read as bytes; decoding is
the parser's job, so a non-UTF-8 line becomes a rejected row instead of a crashed pipeline.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.records.dataset import InputError, Layout
from pipeline.records.verdicts import Reject

logger = logging.getLogger(__name__)

BOM = "\ufeff"


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str
    layout: str
    header: str  # the file's first line ("" for headerless layouts)
    size: int = 0  # bytes; 0 when unknown (the file is then read whole, by one worker)


def expand(patterns: str | Sequence[str]) -> list[tuple[str, int]]:
    """(path, size in bytes) of all files matching comma-separated ``patterns``; an error names each
    pattern that matched nothing."""
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    files: list[tuple[str, int]] = []
    for pattern in patterns:
        matched = [
            (m.path, m.size_in_bytes) for r in FileSystems.match([pattern]) for m in r.metadata_list if m.size_in_bytes > 0
        ]
        if not matched:
            raise InputError(f"--input {pattern!r} matches no non-empty file")
        files.extend(sorted(matched))
    return files


def first_line(path: str, read_bytes: int = 64 << 10) -> str:
    """The first line of ``path`` (decompressed by extension), BOM and line end stripped.

    A compressed file is read ``read_bytes`` at a time: Beam's default (16 MiB) would decompress
    the whole of a typical file for its header (25 ms a 2 MB gzip file, for every input file)."""
    from apache_beam.io.filesystem import CompressedFile, CompressionTypes

    compression = CompressionTypes.detect_compression_type(path)
    if compression in (CompressionTypes.UNCOMPRESSED, CompressionTypes.GZIP, CompressionTypes.BZIP2):
        with open_input(path) as f:
            raw = f.readline()
    else:
        with CompressedFile(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED), compression,
                            read_size=read_bytes) as f:
            raw = f.readline()
    return raw.decode("utf-8", errors="replace").lstrip(BOM).rstrip("\r\n")


@contextlib.contextmanager
def open_input(path: str):
    """``path`` opened for reading bytes, decompressed by its extension.

    gzip and bzip2 are read by Python's readers (gzip through ISA-L where the ``isal`` package is
    installed, a dependency: 0.12 s instead of zlib's 0.32 s for the 41 MB of gzip at 1M flights).
    They raise on a file that ends before its end-of-stream marker, which becomes an InputError
    naming the file: Beam's compressed reader returns the first part of such a truncated file without
    a word, and the rows of the rest would be lost unseen (tested). Other compressions are Beam's.
    """
    import bz2
    import gzip

    from apache_beam.io.filesystem import CompressionTypes

    compression = CompressionTypes.detect_compression_type(path)
    if compression == CompressionTypes.GZIP:
        try:
            from isal import igzip as gzip_module
            from isal.isal_zlib import error as codec_error
        except ImportError:
            gzip_module = gzip
            from zlib import error as codec_error
        def reader(raw):
            return gzip_module.GzipFile(fileobj=raw, mode="rb")

        errors, name = (EOFError, gzip.BadGzipFile, codec_error), "gzip"
    elif compression == CompressionTypes.BZIP2:
        reader, errors, name = bz2.BZ2File, (EOFError,), "bzip2"  # damaged data raises OSError, as it is
    else:
        with FileSystems.open(path) as f:
            yield f
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        try:
            with reader(raw) as f:
                yield f
        except errors as e:
            raise InputError(f"{path} cannot be decompressed as {name} ({e}): a truncated or damaged file? "
                             "Its rows would be lost: replace it, or leave it out of --input") from e


def detect_layout(line: str, layouts: Mapping[str, Layout], path: str = "") -> Layout:
    for layout in layouts.values():
        if layout.detect(line):
            return layout
    raise InputError(
        f"cannot tell the layout of {path or 'input'} from its first line {line[:200]!r}; "
        f"known layouts: {', '.join(layouts)} (name one with --input_format)"
    )


def plan_inputs(patterns, layouts: Mapping[str, Layout], input_format: str | None = None) -> list[InputFile]:
    """Resolves the input files and the layout of each."""
    if input_format and input_format not in layouts:
        raise InputError(f"--input_format {input_format!r} is not one of: {', '.join(layouts)}")
    plan = []
    for path, size in expand(patterns):
        line = first_line(path)
        layout = layouts[input_format] if input_format else detect_layout(line, layouts, path)
        plan.append(InputFile(path, layout.name, line if layout.has_header else "", size))
        logger.info("input %s: layout %s", path, layout.name)
    return plan


CHUNK_LINES = 10_000  # lines per element after reading: big enough that per-element costs vanish
RANGE_BYTES = 64 << 20  # an uncompressed file is read in ranges of this size, in parallel on a cluster


@dataclasses.dataclass(frozen=True)
class ReadRange:
    """Lines of ``path`` that start in [start, end) (end None: to the end of the file)."""

    path: str
    start: int
    end: int | None
    skip_header: bool


def read_ranges(path: str, size: int, has_header: bool, range_bytes: int = RANGE_BYTES) -> list[ReadRange]:
    """The ranges a file is read in: byte ranges of an uncompressed file, a compressed one whole."""
    from apache_beam.io.filesystem import CompressionTypes

    if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED or size <= range_bytes:
        return [ReadRange(path, 0, None, has_header)]
    starts = range(0, size, range_bytes)
    return [ReadRange(path, s, min(s + range_bytes, size), has_header and s == 0) for s in starts]


def read_lines(rng: ReadRange, chunk_lines: int = CHUNK_LINES):
    """Yields (path, [line bytes, ...]) chunks of the lines starting in the range, header skipped.

    A range that does not start the file begins after the first line end at or after ``start - 1``,
    so each line is read by exactly the range it starts in. Line ends are kept; the parser strips them.
    """
    with open_input(rng.path) as f:
        pos = 0
        if rng.start:
            f.seek(rng.start - 1)
            pos = rng.start - 1 + len(f.readline())
        if rng.skip_header:
            pos += len(f.readline())
        chunk: list[bytes] = []
        for lines in _line_blocks(f):
            if rng.end is not None:  # only the lines that start before the range's end
                starts = list(itertools.accumulate(map(len, lines), initial=pos))
                keep = bisect.bisect_left(starts, rng.end, hi=len(lines))
                pos = starts[keep]
                lines = lines[:keep]
            chunk.extend(lines)
            while len(chunk) >= chunk_lines:
                yield rng.path, chunk[:chunk_lines]
                chunk = chunk[chunk_lines:]
            if rng.end is not None and pos >= rng.end:
                break
        if chunk:
            yield rng.path, chunk


READ_BYTES = 1 << 20


def _line_blocks(f, read_bytes: int | None = None):
    """The rest of file ``f`` as lists of lines (ends kept, a last line without one as it is), read
    ``read_bytes`` at a time and cut at b"\n" only, what ``readline`` gives line by line (whose cost
    a line, in Beam's compressed files, was a second a million lines)."""
    rest = b""
    while True:
        data = f.read(read_bytes or READ_BYTES)
        if not data:
            if rest:
                yield [rest]
            return
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        if parts:
            yield [part + b"\n" for part in parts]


READ = "read"
LINES = "lines"


class ReadRawLines(beam.PTransform):
    """Reads every planned file as ``(path, [line_bytes, ...])`` chunks, each file's header skipped.

    Returns a dict: ``read`` (the chunks as read from the files, what the manifest counts as read)
    and ``lines`` (the same chunks, where parsing takes them). Uncompressed files are cut into byte
    ranges and compressed ones read whole; the chunks are then redistributed (``Reshuffle``) so that
    parsing runs on every worker even for a single input file, and counted before it, so that a
    chunk lost on the way fails the manifest's reconciliation. Where one process runs everything
    (:func:`single_process`), there is no other worker to give chunks to, and the reshuffle would
    only copy every line once more: it is left out.
    """

    def __init__(self, plan: Sequence[InputFile], layouts: Mapping[str, Layout], chunk_lines: int = CHUNK_LINES):
        super().__init__()
        self._plan = list(plan)
        self._layouts = layouts
        self._chunk_lines = chunk_lines

    def expand(self, pbegin):
        ranges = [rng for f in self._plan for rng in read_ranges(f.path, f.size, self._layouts[f.layout].has_header)]
        chunks = pbegin | "ListRanges" >> beam.Create(ranges) | "ReadChunks" >> beam.FlatMap(read_lines, self._chunk_lines)
        if single_process(pbegin.pipeline.options):
            return {READ: chunks, LINES: chunks}
        return {READ: chunks, LINES: chunks | "ReshuffleChunks" >> beam.Reshuffle()}


def single_process(options) -> bool:
    """Whether the pipeline runs on the DirectRunner in one process (its in-memory mode, the default)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    if name is not None:
        name = name.rsplit(".", 1)[-1]  # --runner apache_beam.runners.portability.fn_api_runner.FnApiRunner
    direct = name in (None, "DirectRunner", "direct", "FnApiRunner", "BundleBasedDirectRunner")
    return direct and (options.view_as(DirectOptions).direct_running_mode or "in_memory") == "in_memory"


def parser_factory(plan: Sequence[InputFile], layouts: Mapping[str, Layout], context=None):
    """``source -> parse(line_text)`` for the files of ``plan``; picklable for Beam workers.

    The returned parser also rejects a repeated header line (files concatenated with their headers).
    """
    by_path = {f.path: f for f in plan}
    return _ParserFactory(by_path, layouts)


class _ParserFactory:
    def __init__(self, by_path, layouts):
        self._by_path = by_path
        self._layouts = layouts

    def _spec(self, source: str) -> InputFile:
        spec = self._by_path.get(source)
        if spec is None:  # a runner may normalise the path; fall back on the file name
            matches = [f for p, f in self._by_path.items() if p.endswith(source) or source.endswith(p)]
            if len(matches) != 1:
                raise KeyError(f"no layout planned for {source}")
            spec = matches[0]
        return spec

    def __call__(self, source: str):
        spec = self._spec(source)
        parse = self._layouts[spec.layout].make_parser(spec.header)
        header = spec.header

        def parse_line(text: str) -> dict:
            if header and text == header:
                raise Reject("line: repeated header line")
            return parse(text)

        return parse_line

    def block(self, source: str):
        """``source``'s block parser (see :class:`Layout`), or None when its layout has none."""
        spec = self._spec(source)
        make = self._layouts[spec.layout].make_block_parser
        if make is None:
            return None
        parse = make(spec.header)
        header = spec.header

        def parse_block(texts: list[str], verdicts) -> tuple[dict, list[int], dict | None]:
            if header:
                verdicts.fail(np.array([text == header for text in texts], dtype=bool), "line: repeated header line")
            return parse(texts, verdicts)

        return parse_block
