"""Byte sizes as people write them ("300KB", "1.5MiB") and as we print them."""

from __future__ import annotations

import re
from decimal import Decimal

from manager.errors import BadInput

# Sizes and counts are stored as SQLite INTEGERs (signed 64-bit).
MAX_INT64 = 2**63 - 1
# More integer digits than this is above MAX_INT64 whatever the unit; checked before any
# arithmetic so a 10,000-digit "size" costs nothing.
_MAX_DIGITS = 20

# KB/MB/GB are SI (1000-based), as disks and `ls -l --si` count; KiB/MiB/GiB are 1024-based.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# ASCII digits only: \d alone would also take other scripts' digits ("٣").
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)", re.ASCII)

# Words that mean "no limit" where a size is optional (e.g. clearing a budget).
UNLIMITED = frozenset({"none", "unlimited", "off"})


def parse_size(text: str) -> int:
    """Parse "300KB", "1.5MiB", "2 GB", "1024" into a whole number of bytes (0..2**63-1)."""
    # Stripped first: a pattern with \s* on both sides of an optional unit backtracks
    # quadratically on a long run of spaces.
    m = _SIZE.fullmatch(str(text).strip())
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise BadInput(
            f"bad size {_short(text)}: use a number with an optional unit "
            "(B, KB, MB, GB, TB; KiB, MiB, GiB, TiB), e.g. 300KB or 1.5MiB"
        )
    number = m.group(1)
    too_big = len(number.partition(".")[0].lstrip("0")) > _MAX_DIGITS
    # Decimal is exact where float would round "9223372036854775808" down into range.
    value = None if too_big else round(Decimal(number) * _UNITS[unit])
    if value is None or value > MAX_INT64:
        raise BadInput(f"size {_short(text)} is too large: at most {MAX_INT64} bytes (8 EiB)")
    return value


def _short(text: object, limit: int = 40) -> str:
    """``repr`` of user input, cut so a pasted megabyte does not become the error message."""
    r = repr(str(text))
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def parse_optional_size(text: str) -> int | None:
    """Like `parse_size`, but "none"/"unlimited"/"off" mean no limit (None)."""
    if str(text).strip().lower() in UNLIMITED:
        return None
    return parse_size(text)


def format_size(n: int | float | None, binary: bool = False) -> str:
    """Render a byte count with three significant digits: "300 KB", "1.23 MB" ("-" for None)."""
    if n is None:
        return "-"
    base = 1024 if binary else 1000
    units = ["KiB", "MiB", "GiB", "TiB"] if binary else ["KB", "MB", "GB", "TB"]
    if abs(n) < base:
        return f"{int(n)} B"
    value = float(n)
    for unit in units:
        value /= base
        if abs(value) < base or unit == units[-1]:
            break
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f} {unit}"
