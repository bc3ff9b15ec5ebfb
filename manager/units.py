"""Byte sizes as people write them ("300KB", "1.5MiB") and as we print them."""

from __future__ import annotations

import re

from manager.errors import MgrError

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
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")

# Words that mean "no limit" where a size is optional (e.g. clearing a budget).
UNLIMITED = frozenset({"none", "unlimited", "off"})


def parse_size(text: str) -> int:
    """Parse "300KB", "1.5MiB", "2 GB", "1024" into a whole number of bytes."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise MgrError(
            f"bad size {text!r}: use a number with an optional unit "
            "(B, KB, MB, GB, TB; KiB, MiB, GiB, TiB), e.g. 300KB or 1.5MiB"
        )
    return round(float(m.group(1)) * _UNITS[unit])


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
