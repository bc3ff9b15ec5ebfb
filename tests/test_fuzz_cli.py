"""Property-based fuzzing of the CLI's parsers: any text gives a value or a clean refusal.

The parsers are called in process over arbitrary text mixed with the tokens that broke them
before (unicode digits, numbers past int64, 'nan', 'inf', '1e400', '@@', ':=,'); the only
allowed exceptions are `MgrError` and `click.BadParameter`, and every accepted value is checked
to be in range. A few examples also go through the real click group in process (``CliRunner``):
exit code 0, 1 or 2 and never a traceback.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from manager.errors import MgrError

MAX = 2**63 - 1
TOKENS = [
    "0", "1", "7", "32", "00", "-", "+", ".", "e", "E", "_", " ", "\t", "\n", "\u2003",
    "²", "٣", "١٠", "１", "Ⅻ", "nan", "NaN", "inf", "-inf", "infinity", "1e400", "1e22", "1e-400",
    "9" * 25, "9" * 400, str(MAX), str(MAX + 1), "8589934592", "@", "@@", "v", "V", "s", "S",
    ":", "=", ",", ":=,", "KB", "MiB", "gib", "B", "none", "off", "true", "false", "null",
    "synthetic", "pets", "vtab1k", "imagefolder", "num_classes", "per_class", "img_size", "seed",
    "task", "skip_bad", "max_pixels", "deit_tiny_patch16_224", "depth", "embed_dim", "drop_rate",
    "qkv_bias", "a", "pets-2", "cuda", "cpu", "mps", "auto",
]  # fmt: skip

# Arbitrary unicode, and sequences of the tokens above with a little noise between them.
texts = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=2)), max_size=8).map("".join),
)
specs = st.builds(
    lambda name, pairs: name + ":" + ",".join(f"{k}={v}" for k, v in pairs),
    st.sampled_from(["synthetic", "pets", "vtab1k", "imagefolder", "nosuch", ""]),
    st.lists(st.tuples(st.sampled_from(TOKENS), texts), max_size=4),
)
refs = st.builds(lambda a, b: f"{a}@{b}", st.sampled_from(["a", "pets", "A", ""]), texts)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI_RUNS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def outcome(fn: Callable[[str], Any], text: str) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, None)`` for a clean refusal; anything else propagates."""
    try:
        return True, fn(text)
    except (MgrError, click.BadParameter):
        return False, None


# --- the parsers, in process -------------------------------------------------------------------


@FAST
@given(st.one_of(texts, st.sampled_from(TOKENS)))
def test_parse_size(text: str) -> None:
    from manager.units import parse_optional_size, parse_size

    ok, value = outcome(parse_size, text)
    assert not ok or (type(value) is int and 0 <= value <= MAX)
    ok, value = outcome(parse_optional_size, text)
    assert not ok or value is None or (type(value) is int and 0 <= value <= MAX)


@FAST
@given(st.one_of(texts, refs))
def test_parse_version_ref(text: str) -> None:
    from manager.names import parse_version_ref

    ok, value = outcome(parse_version_ref, text)
    if ok:
        name, number = value
        assert name.isascii() and (number is None or 1 <= number <= MAX)


@FAST
@given(st.one_of(texts, specs))
def test_split_spec_and_spec_validation(text: str) -> None:
    from manager.datasets.registry import validate_dataset_spec
    from manager.specs import split_spec, validate_backbone_spec

    outcome(split_spec, text)
    ok, value = outcome(validate_dataset_spec, text)
    if ok and value[0] == "synthetic":
        from manager.datasets.synthetic import OPTIONS

        for key, v in value[1].items():
            assert type(v) is int and OPTIONS[key].min <= v <= OPTIONS[key].max
    ok, value = outcome(validate_backbone_spec, text.replace("synthetic", "deit_tiny_patch16_224"))
    if ok:
        for v in value[1].values():
            assert not isinstance(v, float) or math.isfinite(v)


def _param_types() -> list[click.ParamType]:
    from manager.cli import types

    return [
        types.Int64(),
        types.Int64(1, 4096),
        types.SEED,
        types.FiniteFloat(),
        types.FiniteFloat(0, 1, max_open=True),
        types.FiniteFloat(0, min_open=True),
        types.Size(),
        types.Size(allow_none=True),
        types.VersionRefType(),
        types.Groups(),
        types.DEVICE,
        types.BackboneSpec(),
        types.DatasetSpec(),
    ]


@FAST
@given(st.one_of(texts, specs, refs))
def test_param_types_convert(text: str) -> None:
    from manager.cli.types import FiniteFloat, Int64

    for param_type in _param_types():
        ok, value = outcome(lambda t, p=param_type: p.convert(t, None, None), text)
        if ok and isinstance(param_type, Int64):
            assert param_type.min <= value <= param_type.max
        if ok and isinstance(param_type, FiniteFloat):
            assert math.isfinite(value)


# --- the real click group, in process ----------------------------------------------------------


@pytest.fixture(scope="module")
def runner_home():
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        yield home


def _run(home: Path, args: list[str], **env: str):
    from click.testing import CliRunner

    from manager.cli import main

    # In the home's temporary folder: a relative path in a fuzzed value (``sqlite:///NAME`` is
    # NAME in the working folder) once left a fresh catalog in the checkout.
    with contextlib.chdir(home.parent):
        result = CliRunner().invoke(main, args, env={"MGR_HOME": str(home), **env})
    # An exception other than SystemExit is one click did not turn into a message: a bug.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args,
        result.exc_info,
    )
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert "Traceback" not in result.output, result.output
    return result


@CLI_RUNS
@given(texts)
@example(str(MAX + 1))
@example("9" * 400)
def test_cli_budget_set(runner_home: Path, text: str) -> None:
    _run(runner_home, ["budget", "set", "--", text])


@CLI_RUNS
@given(texts)
@example("9" * 400)
def test_cli_task_add_budget(runner_home: Path, text: str) -> None:
    # An accepted budget makes the name taken: the next accepted one is refused as a duplicate.
    _run(runner_home, ["task", "add", "t", "--budget", text, "--dataset", "synthetic"])


@CLI_RUNS
@given(st.one_of(texts, refs))
@example("a@²")
@example("a@99999999999999999999999")
def test_cli_switch(runner_home: Path, text: str) -> None:
    _run(runner_home, ["switch", "--", text])


@CLI_RUNS
@given(texts)
@example("99999999999999999999999")
def test_cli_train_seed(runner_home: Path, text: str) -> None:
    _run(runner_home, ["train", "nosuch", "--seed", text])


# --- issue 18: times past the calendar, catalog URLs, file names of any length ------------------

times = st.one_of(
    texts,
    st.builds(
        lambda n, unit: f"{n}{unit}",
        st.integers(0, 10**9 - 1),
        st.sampled_from(["s", "m", "h", "d", "w", "h ago"]),
    ),
    st.builds(
        lambda y, tz: f"{y:04d}-{'12-31T23:59:59' if y > 5000 else '01-01T00:00'}{tz}",
        st.integers(1, 9999),
        st.sampled_from(["", "Z", "+14:00", "-12:00", "+23:59", "-23:59", "+00:00"]),
    ),
)


@FAST
@given(times)
@example("999999999h")
@example("10000000d")
@example("9999-12-31T23:59:59-12:00")
@example("0001-01-01T00:00+14:00")
@example("0001-01-01")
def test_parse_when(text: str) -> None:
    from datetime import timezone

    from manager.catalog.timeline import parse_when

    ok, value = outcome(parse_when, text)
    assert not ok or value.tzinfo == timezone.utc


urls = st.builds(
    lambda scheme, user, host, port, db: f"{scheme}://{user}{host}{port}/{db}",
    st.sampled_from(["postgresql", "postgresql+psycopg", "sqlite", "mysql", "nosuch", ""]),
    st.sampled_from(["", "u@", "u:p@", "u:p:q@", "@", "u:%zz@"]),
    st.sampled_from(["127.0.0.1", "", "[::1]", "h h", "[", "é"]),
    st.one_of(st.just(""), st.builds(lambda t: ":" + t, st.one_of(texts, st.sampled_from(TOKENS)))),
    texts,
)


@FAST
@given(st.one_of(urls, texts))
@example("postgresql://u:p@127.0.0.1:abc/x")
@example("postgresql://u:p@127.0.0.1:99999999999999999999/x")
def test_catalog_url(text: str) -> None:
    from manager.catalog.db import make_engine, sqlite_file

    outcome(sqlite_file, text)  # never raises but MgrError
    ok, engine = outcome(make_engine, text)
    if ok:
        engine.dispose()


names = st.one_of(
    st.text(min_size=1, max_size=600),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from(["a", "é", "/", "x/", ".", "\u2003"]),
        st.integers(1, 700),
    ),
)


def confined(base: Path, text: str) -> Path:
    """``base / text`` made unable to leave ``base``: the root and ``..`` parts dropped.

    ``Path("/tmp/x") / "/etc"`` is ``/etc``, and ``..`` climbs out; both once wrote fuzzed files
    at the file system's root. What is left keeps the hard part: folders, long and odd names.
    """
    parts = [p for p in Path(text).parts if p != ".." and not p.startswith("/")]  # "/", "//"
    target = base.joinpath(*parts) if parts else base / "empty"
    assert target == base or base in target.parents, (text, target)
    return target


@FAST
@given(names)
@example("a" * 300)
@example("x/" + "a" * 300)
@example("afile/sub")
@example("/" + "a" * 3)
@example("//")
@example("../../escaped")
def test_user_file_names(tmp_path_factory, text: str) -> None:
    from manager.home import Home
    from manager.store.fs import Store

    base = tmp_path_factory.getbasetemp() / "fuzz-names"
    base.mkdir(exist_ok=True)
    (base / "afile").write_text("keep")
    store = Store(Home(base / "home"))
    if "\x00" in text:
        return  # no OS path holds a NUL; click refuses it before
    ok, real = outcome(lambda t: store.write_user_file(confined(base, t), b"png"), text)
    assert not ok or base in real.parents, real
    assert (base / "afile").read_text() == "keep"


@CLI_RUNS
@given(times)
@example("999999999h")
@example("0001-01-01T00:00+14:00")
def test_cli_history_at(runner_home: Path, text: str) -> None:
    _run(runner_home, ["history", "--at", text])


@CLI_RUNS
@given(
    st.one_of(urls.filter(lambda u: "127.0.0.1" in u or u.startswith("sqlite")), texts).filter(
        lambda u: "\x00" not in u  # no environment variable can hold a NUL
    )
)
@example("postgresql://u:p@127.0.0.1:abc/x")
@example("sqlite:///fuzzed-relative.db")
@example("sqlite:///" + "a" * 300)  # a name the OS refuses: one line, no errno
def test_cli_catalog_url(runner_home: Path, text: str) -> None:
    before = set(Path.cwd().iterdir())
    _run(runner_home, ["task", "list"], MGR_DB_URL=text)
    assert set(Path.cwd().iterdir()) == before  # nothing written where pytest runs


@CLI_RUNS
@given(names.filter(lambda t: "\x00" not in t))
@example("a" * 300 + ".png")
@example("/" + "a" * 3 + ".png")
@example("../../escaped.png")
def test_cli_plot_file_names(runner_home: Path, text: str) -> None:
    plots = runner_home.parent / "plots"
    plots.mkdir(exist_ok=True)
    target = confined(plots, text)
    with contextlib.chdir(plots):  # a relative name, had one slipped through, stays in here
        result = _run(runner_home, ["storage", "--plot", str(target)])
    if result.exit_code == 0:  # written exactly where asked, and said so
        assert f"storage plot: {os.path.realpath(target)}\n" in result.output
        assert target.is_file()
