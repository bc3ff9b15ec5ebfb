"""Sizes and task names: pure functions, in process."""

from __future__ import annotations

import pytest

from manager.errors import MgrError
from manager.names import validate_task_name
from manager.units import format_size, parse_optional_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300KB", 300_000),
        ("300kb", 300_000),
        ("1.5MiB", 1_572_864),
        ("2GB", 2_000_000_000),
        ("1024", 1024),
        ("12 MB", 12_000_000),
        (" 7 b ", 7),
        ("1KiB", 1024),
        ("0.5kib", 512),
        ("3GiB", 3 * 1024**3),
        ("1TB", 10**12),
        ("0", 0),
        (".5KB", 500),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "KB", "-1KB", "1.2.3", "12XB", "1e3", "nan", "inf", "1 K B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(MgrError, match="bad size") as info:
        parse_size(text)
    assert "\n" not in str(info.value)


def test_optional_size() -> None:
    assert parse_optional_size("none") is None
    assert parse_optional_size("Unlimited") is None
    assert parse_optional_size("1KB") == 1000


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 KB"),
        (300_000, "300 KB"),
        (1_234_567, "1.23 MB"),
        (12_345_678, "12.3 MB"),
        (None, "-"),
    ],
)
def test_format_size(n: int | None, text: str) -> None:
    assert format_size(n) == text


def test_format_size_binary() -> None:
    assert format_size(1_572_864, binary=True) == "1.50 MiB"


@pytest.mark.parametrize("name", ["flowers102", "a", "pets-v2", "x_1", "9lives", "a" * 64])
def test_good_names(name: str) -> None:
    assert validate_task_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Flowers", "-x", "_x", "a b", "a/b", "..", ".hidden", "é", "a" * 65, "x\n"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(MgrError, match="bad task name"):
        validate_task_name(name)
