"""What the command line prints and says: whole numbers, honest figures, its own flags, copyable examples.

Invariants: no table splits a value across lines (a split price reads as another number); sizes are
1024-based and labelled so; a dry run's figures are the real run's; errors name the command line's flags;
the examples in ``--help`` are printed as written; a mistyped store path is refused, not created.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner
from factories import make_bars

from lumibot_duckdb import cli
from lumibot_duckdb.ab.harness import RunResult, render
from lumibot_duckdb.cli import main
from lumibot_duckdb.config import format_bytes, parse_bytes
from lumibot_duckdb.errors import BarsValidationError, ConfigError, StoreError
from lumibot_duckdb.ingest import load as ingest_module
from lumibot_duckdb.ingest.load import ingest
from lumibot_duckdb.sql import analytics
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey
from lumibot_duckdb.store.maintenance import compact

KEY = SeriesKey("ingest", "SPY", "day", quote="USD")


@pytest.fixture
def store(store_dir: Path):
    with DuckDBDataStorage(store_dir) as db:
        bars = make_bars("2019-01-02", 60, freq="1D", price=321.8599853515625)
        bars.index = pd.date_range("2019-01-02", periods=60, freq="1D", tz="America/New_York").tz_convert("UTC")
        db.write(KEY, bars)
        yield db


def run(*args: object, **kwargs: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], **kwargs)  # type: ignore[arg-type]
    return result.exit_code, result.output


# -- tables -------------------------------------------------------------------------------------------------
def test_no_number_is_split_across_lines(store: DuckDBDataStorage) -> None:
    """Issue 15: bollinger printed 321.8599853 on one line and 515625 on the next."""
    code, out = run("db-query", "SELECT * FROM bollinger('SPY', 20)", "--limit", "0", "--store", store.root)
    assert code == 0
    frame = analytics.bollinger(store, "SPY", 20)
    for column in ("close", "lower", "mid", "upper", "stddev"):
        for value in frame[column].dropna():
            assert str(float(value)) in out, (column, value)
    assert all(len(line) == len(out.splitlines()[1]) for line in out.splitlines()[1:4])  # one line per row


def test_summarize_headers_stay_whole(store: DuckDBDataStorage) -> None:
    code, out = run("db-query", "SUMMARIZE SELECT * FROM market_data", "--store", store.root)
    assert code == 0
    header = next(line for line in out.splitlines() if "column_name" in line)
    for name in ("column_name", "column_type", "approx_unique", "null_percentage"):
        assert name in header, name


def test_a_narrow_terminal_cuts_values_visibly_and_says_so(store: DuckDBDataStorage, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from rich.table import Table

    table = Table()
    for name in ("source", "symbol", "close", "upper"):
        cli._column(table, name, numeric=name in ("close", "upper"))
    table.add_row("ingest", "SPY", "321.8599853515625", "253.55753994881456")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "40")
    cli._print(table)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "…" in out and "cut to fit this 40-column terminal" in " ".join(out.split())
    assert all(len(line) <= 40 for line in out.splitlines() if "│" in line)


def test_sizes_are_1024_based_and_labelled_so(store: DuckDBDataStorage) -> None:
    assert format_bytes(512 * 2**20) == "512.0 MiB" and format_bytes(11_059) == "10.8 KiB"
    assert parse_bytes("512MiB", name="x") == 512 * 2**20 and parse_bytes("512MB", name="x") == 512 * 10**6
    code, out = run("db-status", "--store", store.root)
    assert code == 0 and "KiB" in out and " KB" not in out
    result = RunResult("s", "duckdb", "cold", 1.0, 0.5, 1, {}, 0, 100.0, 90.0, 5 * 2**20, 1000, [], 1.0)
    text = render([result])
    assert "5.0 MiB" in text and "peak RSS MiB" in text and " MB" not in text


# -- figures --------------------------------------------------------------------------------------------------
def test_compact_dry_run_figures_are_the_real_runs(store_dir: Path) -> None:
    """Issue 15: --dry-run said "35 files before, 35 after" where the real run left 6."""
    with DuckDBDataStorage(store_dir) as db:
        for key in (SeriesKey("test", "AAA", "minute"), SeriesKey("test", "BBB", "minute")):
            bars = make_bars("2023-12-31 23:00", 600)  # across a year boundary: two partitions
            for i in range(0, 600, 50):
                db.write(key, bars.iloc[i:i + 50])
            db.write(key, bars.iloc[100:130])  # an overlap
        before = sum(len(db.files(k)) for k in db.series())
        dry = compact(db, dry_run=True)
        assert sum(len(db.files(k)) for k in db.series()) == before  # a dry run changes nothing
        real = compact(db)
    assert dry.files_before == real.files_before == before > 4
    assert dry.files_after == real.files_after == 4 and dry.rewritten == real.rewritten  # one per year and series
    code, out = run("maintain", "compact", "--dry-run", "--store", store_dir)
    assert code == 0 and "4 files before, 4 after" in out  # already compact now


def test_progress_counts_rows_stored_not_bytes_read_ahead(tmp_path: Path, store_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: the bar reached 100 % after a second and then worked 25 s more."""
    bars = make_bars("2024-03-05 14:30", 3000)
    frame = pd.DataFrame({"timestamp": bars.index.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          **{c: bars[c] for c in ("open", "high", "low", "close", "volume")}})
    path = tmp_path / "AAA_1m.csv"
    frame.to_csv(path, index=False)
    seen: list[tuple[int, int]] = []

    class Bar:
        def __init__(self, total: int | None, show: bool) -> None:
            self.total, self.n = total, 0

        def update(self, rows: int) -> None:
            self.n += rows

        def set_postfix_str(self, text: str) -> None: ...
        def refresh(self) -> None: ...
        def close(self) -> None: ...

    bars_made: list[Bar] = []
    monkeypatch.setattr(ingest_module, "_progress_bar", lambda total, show: bars_made.append(Bar(total, show))
                        or bars_made[-1])
    block = ingest_module._FileIngest._block

    def watched(self, batch, mapping, offset):
        seen.append((bars_made[-1].n, offset))  # the bar, as the block starts, against the rows done before it
        return block(self, batch, mapping, offset)

    monkeypatch.setattr(ingest_module._FileIngest, "_block", watched)
    ingest(store_dir, path, chunk_bytes=16 * 1024, progress=True)
    assert len(seen) > 5 and all(n == done for n, done in seen)
    assert bars_made[-1].n == bars_made[-1].total == 3000  # the estimate, corrected to the rows read


# -- words ----------------------------------------------------------------------------------------------------
def test_cli_errors_name_flags_and_python_errors_name_keywords(tmp_path: Path, store_dir: Path) -> None:
    """Issue 15: CLI errors said `pass format=` and `timezone='…'`."""
    bars = make_bars("2024-03-05 14:30", 20)
    frame = pd.DataFrame({"timestamp": bars.index.strftime("%Y-%m-%d %H:%M:%S"),
                          **{c: bars[c] for c in ("open", "high", "low", "close", "volume")}})
    frame.loc[3, "high"] = 0.0
    data = tmp_path / "data.csv"
    frame.to_csv(data, index=False)
    bad = tmp_path / "AAA_1m.csv"
    frame.to_csv(bad, index=False)
    cases = [
        (["ingest", data, "--store", store_dir], "--symbol", "symbol="),
        (["ingest", bad, "--store", store_dir], "--repair", "on_invalid"),
        (["ingest", bad, "--tz", "Mars/Base", "--store", store_dir], "--tz", "timezone="),
        (["ingest", bad, "--time-column", "when", "--store", store_dir], "has no column 'when'", "time_column"),
        (["export", tmp_path / "x.txt", "--symbol", "AAA", "--store", store_dir], "--format", "format="),
    ]
    for args, flag, keyword in cases:
        code, out = run(*args)
        assert code == 1 and flag in out and keyword not in out, (args, out)
    with pytest.raises(ConfigError, match=r"pass symbol="):
        ingest(store_dir, data)
    with pytest.raises(BarsValidationError, match=r"on_invalid='repair'"):
        ingest(store_dir, bad)


def _examples(command: click.Command) -> list[str]:
    doc = inspect.getdoc(command.callback) or ""
    return [line.strip().removeprefix("Example: ") for line in doc.splitlines()
            if line.strip().startswith(("Example: lumibot-duckdb", "lumibot-duckdb "))]


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


@pytest.mark.parametrize(("path", "command"), _commands(main), ids=lambda v: " ".join(v) if isinstance(v, tuple)
                         else "")
def test_help_prints_every_example_whole_on_one_line(path: tuple[str, ...], command: click.Command) -> None:
    """Issue 15: click re-wrapped the one-line examples, so copying them broke them."""
    examples = _examples(command)
    if not isinstance(command, click.Group) or path == ("maintain",):
        assert examples, f"{' '.join(path)} --help has no example"
    code, out = run(*path, "--help", terminal_width=80)
    assert code == 0
    lines = [line.strip().removeprefix("Example: ") for line in out.splitlines()]
    for example in examples:
        assert example in lines, (example, out)


# -- store paths ------------------------------------------------------------------------------------------------
def test_a_store_in_a_folder_that_does_not_exist_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: DuckDBDataStorage('typo/path') created a store at the mistyped path."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=r"folder typo does not exist.*mkdir -p typo/path"):
        DuckDBDataStorage("typo/path")
    assert not (tmp_path / "typo").exists()
    DuckDBDataStorage("bars").close()  # a new store inside an existing folder: fine
    assert (tmp_path / "bars" / "bars").is_dir()
    DuckDBDataStorage("deep/er/store", create_parents=True).close()
    assert (tmp_path / "deep" / "er" / "store" / "bars").is_dir()
    monkeypatch.setenv("LUMIBOT_DUCKDB_CACHE_DIR", str(tmp_path / "configured" / "store"))
    DuckDBDataStorage().close()  # a deployment's setting: created, parents included
    assert (tmp_path / "configured" / "store" / "bars").is_dir()
    (tmp_path / "SPY_1d.csv").write_text("date,open,high,low,close\n2024-01-02,1,1,1,1\n")
    code, out = run("ingest", tmp_path / "SPY_1d.csv", "--store", "typo/bars")
    assert code == 1 and "mkdir -p typo/bars" in out and not (tmp_path / "typo").exists()


def test_the_default_store_folder_is_created_with_its_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUMIBOT_DUCKDB_CACHE_DIR")
    monkeypatch.setenv("LUMIBOT_CACHE_FOLDER", str(tmp_path / "fresh" / "machine"))
    monkeypatch.delitem(sys.modules, "lumibot.constants", raising=False)  # read the environment, not Lumibot's
    with DuckDBDataStorage() as db:
        assert db.root == tmp_path / "fresh" / "machine" / "duckdb" and (db.root / "bars").is_dir()
