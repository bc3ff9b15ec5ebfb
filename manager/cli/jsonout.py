"""``--json`` listings that stream: rows are written as the database hands them over.

The layout is sqlite-utils': the document's frame is indented (an object's keys, a list's items,
one per line) and each item of a list is written compact on its own line. An iterator anywhere in
the frame is written item by item, and a zero-argument callable is called when its turn comes, so
a whole-catalog listing never holds every row and the totals after the rows may be computed after
them. The output is plain JSON for any parser and one row per line for ``grep``.

Why not ``json.dumps(obj, indent=2)``: with ``indent`` the standard library falls back to its
pure-Python encoder (about 5 us a value). A compact ``json.dumps`` of a row runs in its C encoder,
one call per row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

_INDENT = "  "
_FLUSH_EVERY = 256  # list items per write: few writes, little held


def _chunks(o: Any, ind: str) -> Iterator[str]:
    """`o` in pieces: the frame laid out, each list item compact on its line."""
    if callable(o):
        o = o()
    inner = "\n" + ind + _INDENT
    if isinstance(o, dict) and o:
        sep = "{"
        for k, v in o.items():
            if not isinstance(k, str):
                raise TypeError(f"a listing's keys are strings, not {type(k).__name__}")
            # The key goes out with its value's first piece: a stream that fails before its
            # first row (a bad pattern, a database error) has printed nothing.
            pending = sep + inner + json.dumps(k) + ": "
            for chunk in _chunks(v, ind + _INDENT):
                yield pending + chunk
                pending = ""
            sep = ","
        yield "\n" + ind + "}"
    elif isinstance(o, (Iterator, list, tuple)):
        yield from _items(o, inner, ind)
    else:
        yield json.dumps(o)


def _items(items: Iterable[Any], inner: str, ind: str) -> Iterator[str]:
    batch: list[str] = []
    first = True
    for item in items:
        batch.append(("[" if first else ",") + inner + json.dumps(item))
        first = False
        if len(batch) >= _FLUSH_EVERY:
            yield "".join(batch)
            batch.clear()
    if first:
        yield "[]"
        return
    batch.append("\n" + ind + "]")
    yield "".join(batch)


def dumps(o: Any) -> str:
    """`o` as `echo_json_stream` prints it (without the final newline)."""
    return "".join(_chunks(o, ""))


def echo_json_stream(o: Any, write: Callable[[str], Any] | None = None) -> None:
    """Print `o` (see the module), streaming its iterators, with a newline after."""
    out = write or (lambda text: click.echo(text, nl=False))
    for chunk in _chunks(o, ""):
        out(chunk)
    out("\n")
