"""``--json`` output that streams: rows are written as the database hands them over.

`echo_json_stream` prints exactly what ``json.dumps(obj, indent=2)`` would (byte for byte: the
listings' format is a contract), but an iterator anywhere in `obj` is written as a JSON list
item by item, and a zero-argument callable is called when its turn comes. So a whole-catalog
listing never holds every row, and the totals that follow the rows may be computed after them.

Why not ``json.dumps``: with ``indent`` the standard library falls back to its pure-Python
encoder, a generator that yields every bracket, key and value apart (about 5 us per value). Here
a dict of plain values is one function call and one ``str.join``; strings still go through the
standard library's C escaper, floats through ``float.__repr__``, as ``json`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

_ESCAPE = json.encoder.encode_basestring_ascii  # the C escaper json.dumps uses by default
_INF = float("inf")
_INDENT = "  "
_FLUSH_EVERY = 256  # list items per write: few writes, little held
_TEMPLATES: dict[tuple[tuple[Any, ...], str], str] = {}
_MAX_TEMPLATES = 1024


def _float(f: float) -> str:
    if f != f:
        return "NaN"
    if f == _INF:
        return "Infinity"
    if f == -_INF:
        return "-Infinity"
    return float.__repr__(f)


def _key(k: object) -> str:
    """A dict key as json.dumps writes it (non-string keys become strings)."""
    if isinstance(k, str):
        return _ESCAPE(k)
    if k is True or k is False or k is None:
        return _ESCAPE(json.dumps(k))
    if isinstance(k, int):
        return _ESCAPE(int.__repr__(k))
    if isinstance(k, float):
        return _ESCAPE(_float(k))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")


def encode(o: Any, ind: str = "") -> str:
    """`o` as ``json.dumps(o, indent=2)`` writes it, `ind` being the indent of its own line."""
    t = type(o)
    if t is str:
        return _ESCAPE(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if t is int:
        return int.__repr__(o)
    if t is float:
        return _float(o)
    if isinstance(o, dict):
        return _dict(o, ind) if o else "{}"
    if isinstance(o, (list, tuple)):
        if not o:
            return "[]"
        inner = "\n" + ind + _INDENT
        sub = ind + _INDENT
        return "[" + ",".join(inner + encode(v, sub) for v in o) + "\n" + ind + "]"
    if isinstance(o, str):
        return _ESCAPE(o)
    if isinstance(o, int):  # an int subclass (IntEnum): json writes int.__repr__
        return int.__repr__(o)
    if isinstance(o, float):
        return _float(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _template(keys: tuple[Any, ...], ind: str) -> str:
    """The dict's text with a ``%s`` per value: built once per shape (a listing's rows share
    theirs), so a row costs one ``%`` instead of a concatenation per key."""
    tpl = _TEMPLATES.get((keys, ind))
    if tpl is None:
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.clear()
        inner = "\n" + ind + _INDENT
        parts = [inner + _key(k).replace("%", "%%") + ": %s" for k in keys]
        tpl = "{" + ",".join(parts) + "\n" + ind + "}"
        if all(type(k) is str for k in keys):  # 1 == True: only string keys are told apart
            _TEMPLATES[keys, ind] = tpl
    return tpl


def _dict(o: dict[Any, Any], ind: str) -> str:
    sub = ind + _INDENT
    values = []
    for v in o.values():
        t = type(v)  # the plain values inline: one call per dict, not per value
        if t is str:
            values.append(_ESCAPE(v))
        elif v is None:
            values.append("null")
        elif t is int:
            values.append(int.__repr__(v))
        elif t is float:
            values.append(_float(v))
        else:
            values.append(encode(v, sub))
    return _template(tuple(o), ind) % tuple(values)


def _chunks(o: Any, ind: str) -> Iterator[str]:
    """`o` in pieces: iterators stream item by item, callables are called when reached."""
    if callable(o):
        o = o()
    if isinstance(o, dict) and any(callable(v) or _is_stream(v) for v in o.values()):
        if not o:
            yield "{}"
            return
        inner = "\n" + ind + _INDENT
        sep = "{"
        for k, v in o.items():
            # The key goes out with its value's first piece: a stream that fails before its
            # first row (a bad pattern, a database error) has printed nothing.
            pending = sep + inner + _key(k) + ": "
            for chunk in _chunks(v, ind + _INDENT):
                yield pending + chunk
                pending = ""
            sep = ","
        yield "\n" + ind + "}"
    elif _is_stream(o):
        yield from _list_chunks(o, ind)
    else:
        yield encode(o, ind)


def _is_stream(o: object) -> bool:
    return isinstance(o, Iterator)


def _list_chunks(items: Iterable[Any], ind: str) -> Iterator[str]:
    inner = "\n" + ind + _INDENT
    sub = ind + _INDENT
    batch: list[str] = []
    first = True
    for item in items:
        batch.append(("[" if first else ",") + inner + encode(item, sub))
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
    """``json.dumps(o, indent=2)``, iterators and callables in `o` resolved (see the module)."""
    return "".join(_chunks(o, ""))


def echo_json_stream(o: Any, write: Callable[[str], Any] | None = None) -> None:
    """Print `o` as `echo_json` does (indent 2, a newline after), streaming its iterators."""
    out = write or (lambda text: click.echo(text, nl=False))
    for chunk in _chunks(o, ""):
        out(chunk)
    out("\n")
