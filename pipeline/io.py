"""Reading raw inputs: expand patterns (local, globs, gs://), detect each file's layout, read lines.

Layout detection happens when the graph is built: the first line of every matched file is read
(gzip is handled by the extension) and matched against the dataset's layouts, so a wrong file fails
at once with a message, not halfway through a Dataflow job. Lines are read as bytes; decoding is
the parser's job, so a non-UTF-8 line becomes a rejected row instead of a crashed pipeline.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)

BOM = "\ufeff"


@dataclasses.dataclass(frozen=True)
class Layout:
    """One published file layout of a dataset.

    ``detect(first_line)`` says whether a file's first line is this layout's header (or, for a
    headerless layout, looks like its first record). ``make_parser(header)`` returns the function
    turning one decoded line into a canonical record.
    """

    name: str
    has_header: bool
    detect: Callable[[str], bool]
    make_parser: Callable[[str], Callable[[str], dict]]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str
    layout: str
    header: str  # the file's first line ("" for headerless layouts)


class InputError(ValueError):
    """An input that cannot be read as any known layout; the message says what to do."""


def expand(patterns: str | Sequence[str]) -> list[str]:
    """All files matching comma-separated ``patterns``; an error names each pattern that matched nothing."""
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    paths: list[str] = []
    for pattern in patterns:
        matched = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list if m.size_in_bytes > 0]
        if not matched:
            raise InputError(f"--input {pattern!r} matches no non-empty file")
        paths.extend(sorted(matched))
    return paths


def first_line(path: str) -> str:
    """The first line of ``path`` (decompressed by extension), BOM and line end stripped."""
    with FileSystems.open(path) as f:
        raw = f.readline()
    return raw.decode("utf-8", errors="replace").lstrip(BOM).rstrip("\r\n")


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
    for path in expand(patterns):
        line = first_line(path)
        layout = layouts[input_format] if input_format else detect_layout(line, layouts, path)
        plan.append(InputFile(path, layout.name, line if layout.has_header else ""))
        logger.info("input %s: layout %s", path, layout.name)
    return plan


class ReadRawLines(beam.PTransform):
    """Reads every planned file as ``(path, line_bytes)``, skipping each file's header line."""

    def __init__(self, plan: Sequence[InputFile], layouts: Mapping[str, Layout]):
        super().__init__()
        self._plan = list(plan)
        self._layouts = layouts

    def expand(self, pbegin):
        branches = []
        for has_header in (True, False):
            paths = [f.path for f in self._plan if self._layouts[f.layout].has_header == has_header]
            if not paths:
                continue
            label = "WithHeader" if has_header else "Headerless"
            branches.append(
                pbegin
                | f"List{label}Files" >> beam.Create(paths)
                | f"Read{label}Lines"
                >> beam.io.ReadAllFromText(
                    skip_header_lines=1 if has_header else 0,
                    with_filename=True,
                    coder=beam.coders.BytesCoder(),
                )
            )
        return branches | "FlattenInputs" >> beam.Flatten() if len(branches) > 1 else branches[0]


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

    def __call__(self, source: str):
        from pipeline.rows import Reject

        spec = self._by_path.get(source)
        if spec is None:  # a runner may normalise the path; fall back on the file name
            matches = [f for p, f in self._by_path.items() if p.endswith(source) or source.endswith(p)]
            if len(matches) != 1:
                raise KeyError(f"no layout planned for {source}")
            spec = matches[0]
        parse = self._layouts[spec.layout].make_parser(spec.header)
        header = spec.header

        def parse_line(text: str) -> dict:
            if header and text == header:
                raise Reject("line: repeated header line")
            return parse(text)

        return parse_line
