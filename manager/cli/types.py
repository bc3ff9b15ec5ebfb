"""Click parameter types: every number, size, version and spec is checked before a command runs.

Each type refuses what would otherwise fail deep inside (a traceback from SQLite, torch or timm)
or, worse, run: NaN learning rates, sizes past int64, ``str.isdigit`` digits like "²". All parse
ASCII only, so "٣" or "1_000" is not a number here, as it is not in a catalog or a shell script.
Nothing here imports torch at module level.
"""

from __future__ import annotations

import math
import re
from typing import Any

import click

from manager.errors import MgrError
from manager.train.config import MAX_EPOCHS as MAX_EPOCHS  # the typo guard TrainConfig applies
from manager.train.config import MAX_SEED

MIN_INT64, MAX_INT64 = -(2**63), 2**63 - 1
_INT = re.compile(r"\s*([+-]?)([0-9]+)\s*", re.ASCII)
_FLOAT = re.compile(r"\s*[+-]?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::([0-9]{1,3}))?", re.ASCII)
MAX_DEVICE_INDEX = 127  # torch's device index is an int8


def _show(value: Any, limit: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _bounds(
    lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False
) -> str:
    left = "" if lo is None else f"{lo:g}{'<' if lo_open else '<='}"
    right = "" if hi is None else f"{'<' if hi_open else '<='}{hi:g}"
    return f"{left}x{right}"


class Int64(click.ParamType):
    """A whole number in ``[min, max]`` (default: the whole signed 64-bit range).

    Catalog columns and torch seeds are int64, and a value past it fails far from its cause.
    """

    name = "integer"

    def __init__(self, min: int | None = None, max: int | None = None):
        self.min = MIN_INT64 if min is None else min
        self.max = MAX_INT64 if max is None else max

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number: int | None = value
        else:
            m = _INT.fullmatch(str(value))
            if m is None:
                self.fail(f"{_show(value)} is not a whole number", param, ctx)
            sign, digits = m.group(1), m.group(2).lstrip("0") or "0"
            # Past 19 digits it is outside int64 whatever the range; int() of it only costs time.
            number = int(sign + digits) if len(digits) <= 19 else None
        if number is None or not self.min <= number <= self.max:
            self.fail(f"{_show(value)} is not in the range {self._range()}", param, ctx)
        return number

    def _range(self) -> str:
        return f"{self.min}..{self.max}"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        lo = "" if self.min == MIN_INT64 else str(self.min)
        hi = "" if self.max == MAX_INT64 else str(self.max)
        return "INTEGER" if not (lo or hi) else f"INTEGER RANGE {lo}..{hi}"

    def __repr__(self) -> str:
        return f"Int64({self.min}, {self.max})"


class FiniteFloat(click.ParamType):
    """A finite number in a range; NaN and infinity are always refused.

    click's FloatRange lets ``nan`` through (every comparison with NaN is false), and a NaN
    learning rate trains for hours to a NaN model.
    """

    name = "float"

    def __init__(
        self,
        min: float | None = None,
        max: float | None = None,
        min_open: bool = False,
        max_open: bool = False,
    ):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif _FLOAT.fullmatch(str(value)):
            number = float(str(value))
        else:
            self.fail(f"{_show(value)} is not a finite number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{_show(value)} is not a finite number", param, ctx)
        lo, hi = self.min, self.max
        below = lo is not None and (number <= lo if self.min_open else number < lo)
        above = hi is not None and (number >= hi if self.max_open else number > hi)
        if below or above:
            rng = _bounds(lo, hi, self.min_open, self.max_open)
            self.fail(f"{_show(value)} is not in the range {rng}", param, ctx)
        return number

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        if self.min is None and self.max is None:
            return "FLOAT"
        return f"FLOAT RANGE {_bounds(self.min, self.max, self.min_open, self.max_open)}"

    def __repr__(self) -> str:
        return f"FiniteFloat({self.min}, {self.max})"


class Size(click.ParamType):
    """A byte size, "300KB" or "1.5MiB" (0..2**63-1 bytes), as an int; with ``allow_none``,
    "none"/"unlimited"/"off" give None."""

    name = "size"

    def __init__(self, allow_none: bool = False):
        self.allow_none = allow_none

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        from manager.units import MAX_INT64 as max_size
        from manager.units import parse_optional_size, parse_size

        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= max_size:
            return value
        try:
            return parse_optional_size(value) if self.allow_none else parse_size(value)
        except MgrError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SIZE"


class _Validated(click.ParamType):
    """A text value checked by ``check`` (which raises MgrError) and passed on unchanged."""

    def check(self, text: str) -> None:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            self.check(text)
        except MgrError as exc:
            self.fail(str(exc), param, ctx)
        return text


class VersionRefType(_Validated):
    """``TASK``, ``TASK@VERSION`` (``TASK@vN`` too) or ``TASK@ALIAS``, checked by
    `parse_version_selector` (whether the alias exists is the catalog's to say)."""

    name = "TASK[@VERSION|@ALIAS]"

    def check(self, text: str) -> None:
        from manager.names import parse_version_selector

        parse_version_selector(text)


class Groups(_Validated):
    """Consolidator branches: ``g`` per branch, comma separated, each with an optional ``s``
    ("96,96s"); empty means the default structure.

    The form is ``manager.adapters.config.parse_groups``'s (what ``ConsolidatorConfig`` reads);
    whether ``g`` divides the model's widths is known once the backbone is built, and the
    trainer checks it before training.
    """

    name = "groups"

    def check(self, text: str) -> None:
        from manager.adapters.config import parse_groups

        if text.replace(" ", ""):
            parse_groups(text, where="--groups")


class Device(click.ParamType):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether it exists is checked where
    torch is imported)."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        m = _DEVICE.fullmatch(text)
        if m is None or (m.group(1) is not None and int(m.group(1)) > MAX_DEVICE_INDEX):
            self.fail(
                f"{_show(value)} is not a device: use auto, cpu, cuda, cuda:N or mps", param, ctx
            )
        return text

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[auto|cpu|cuda|cuda:N|mps]"


class BackboneSpec(_Validated):
    """``NAME[:key=value,...]`` for timm, with the type and range of common keys checked."""

    name = "backbone"

    def check(self, text: str) -> None:
        from manager.specs import validate_backbone_spec

        validate_backbone_spec(text)


class DatasetSpec(_Validated):
    """``NAME[:key=value,...]`` of a registered data set, its options checked by the kind."""

    name = "dataset"

    def check(self, text: str) -> None:
        # Imports torch (and registers every kind): only when a spec is given.
        from manager.datasets.registry import validate_dataset_spec

        validate_dataset_spec(text)


INT64 = Int64()
SEED = Int64(0, MAX_SEED)  # torch.manual_seed and numpy take 0..2**63-1
DEVICE = Device()

device_option = click.option(
    "--device",
    type=DEVICE,
    default="auto",
    show_default=True,
    help="Where to run: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps.",
)
