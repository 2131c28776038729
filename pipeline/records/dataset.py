"""What a dataset plugs into the stages, without Beam: its layouts, its split units, and the errors
that stop a run before it starts (so the server and the stages share them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


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
    # Optional: ``make_block_parser(header)`` returns a function taking a chunk of decoded lines and its
    # Verdicts and giving (columns, indices, events): the records of the lines at those indices, as
    # columns; every other line gets its reason in the Verdicts (see pipeline.datasets.columnar); the
    # events of every line, as columns (or None; see pipeline.stages.parse.ParseChunks).
    make_block_parser: Callable[[str], Callable[..., tuple[dict, list[int], dict | None]]] | None = None


class InputError(ValueError):
    """An input that cannot be read as any known layout; the message says what to do."""


class UsageError(ValueError):
    """A flag is missing or wrong; the message says which and what to do."""


def split_unit(field: str):
    """Marks a split-unit function (record -> key) as reading only ``field``: its keys are then
    computed once per distinct value of that column, not once per record."""

    def mark(fn):
        fn.field = field
        return fn

    return mark
