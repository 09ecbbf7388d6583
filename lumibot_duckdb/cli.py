"""The ``lumibot-duckdb`` command: a thin layer over the library (parse, call, print).

Before any command runs, the ``.env`` files a Lumibot backtest started in the current folder would
load are loaded (:func:`lumibot_duckdb.config.load_dotenv`), so the command line and backtests agree
on the store. Errors name the command line's flags (:func:`lumibot_duckdb.errors.surface`). Tables
never split a value across lines: piped, they are as wide as they need; in a terminal narrower than
a table, cut values end in ``…`` and a line says so. Times are shown in Lumibot's default time zone,
said under every table, daily bars as dates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lumibot_duckdb.errors import LumibotDuckDBError, surface

if TYPE_CHECKING:
    from rich.table import Table

    from lumibot_duckdb.store import DuckDBDataStorage

STORE_OPTION = click.option(
    "--store", "store_dir", metavar="DIR|s3://BUCKET/PREFIX", default=None,
    help="The store: a folder or s3://bucket/prefix (default: LUMIBOT_DUCKDB_STORE, else LUMIBOT_DUCKDB_CACHE_DIR, "
         "from the environment or a .env file as Lumibot reads it, else <Lumibot cache>/duckdb).")
NAIVE = "naive = America/New_York, Lumibot's default time zone"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        with surface("cli"):
            try:
                return super().invoke(ctx)
            except LumibotDuckDBError as exc:
                raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(package_name="lumibot-duckdb")
def main() -> None:
    """One DuckDB + Parquet bar store behind Lumibot's backtesting data sources."""
    from lumibot_duckdb.config import load_dotenv

    load_dotenv([Path.cwd()])  # the .env (and .env.local) Lumibot would load for a backtest started here


# -- printing -----------------------------------------------------------------------------------------
def _table(title: str | None = None, *, caption: str | None = None) -> Table:
    from rich.table import Table

    return Table(title=title, caption=caption, caption_justify="left")


def _column(table: Table, name: str, *, numeric: bool = False) -> None:
    """A column whose values stay on one line (cut with … only if a terminal is too narrow)."""
    table.add_column(name, justify="right" if numeric else "left", no_wrap=True, overflow="ellipsis")


def _print(*items: Any) -> None:
    """Print rich tables and lines: as wide as needed when piped, cut visibly (…) in a narrow terminal."""
    import sys

    from rich.console import Console
    from rich.table import Table

    tables = [t for t in items if isinstance(t, Table)]
    natural = max((Console(width=100_000).measure(t).maximum for t in tables), default=0)
    if sys.stdout.isatty():
        console = Console(highlight=False)
    else:
        console = Console(width=max(natural, 100), highlight=False, soft_wrap=True)
    for item in items:
        console.print(item, markup=False)
    if natural > console.width:
        console.print(f"(Values ending in … are cut to fit this {console.width}-column terminal; a wider one, "
                      "or --json / --format csv, shows them whole.)")


def _zone() -> str:
    from lumibot_duckdb.config import default_timezone

    return default_timezone()


def _local(ts: Any, *, dates: bool = False) -> str:
    """A time in the display zone: a date for daily bars (``dates``) at local midnight, else minutes
    (seconds if any)."""
    import pandas as pd

    if ts is None:
        return "-"
    local = pd.Timestamp(ts).tz_convert(_zone())
    if dates and local == local.normalize():
        return local.strftime("%Y-%m-%d")
    return local.strftime("%Y-%m-%d %H:%M:%S" if local.second or local.microsecond else "%Y-%m-%d %H:%M")


def _size(n: float) -> str:
    from lumibot_duckdb.config import format_bytes

    return format_bytes(n)


# -- ingest and export (lumibot_duckdb.ingest.load, lumibot_duckdb.sql.export) ------------------------------


def _mapping(items: tuple[str, ...]) -> dict[str, str]:
    from lumibot_duckdb.errors import ConfigError

    mapping = {}
    for item in items:
        field, equals, column = item.partition("=")
        if not equals or not field.strip() or not column:
            raise ConfigError(f"--column {item!r}: write FIELD=COLUMN, e.g. --column close=\"Adj Close\".")
        mapping[field.strip()] = column
    return mapping


@main.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--source", default="ingest", show_default=True, help="Source name of the series written.")
@click.option("--symbol", default=None, help="Symbol (default: a symbol column, else the file name: SPY_1d.csv).")
@click.option("--timeframe", default=None,
              help="minute, hour or day, or 1m/1h/1d (default: file name, else bar spacing).")
@click.option("--asset-type", default="stock", show_default=True, help="stock, crypto, future, index, forex…")
@click.option("--quote", default="USD", show_default=True, help="Quote currency of the series.")
@click.option("--tz", "timezone", default=None,
              help="Time zone of naive timestamps (default: America/New_York, Lumibot's default time zone).")
@click.option("--layout", type=click.Choice(["auto", "yahoo", "polygon", "alpaca", "generic"]), default="auto",
              show_default=True, help="Column layout; auto reads it from the header.")
@click.option("--time-column", default=None, help="The column holding the bar times (default: from the header).")
@click.option("--column", "columns", multiple=True, metavar="FIELD=COLUMN",
              help="Read a bar field from this column, e.g. --column close=\"Adj Close\" (repeatable).")
@click.option("--repair", is_flag=True, help="Drop invalid rows, sort and de-duplicate instead of rejecting the file.")
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def ingest_command(paths: tuple[Path, ...], source: str, symbol: str | None, timeframe: str | None,
                   asset_type: str, quote: str, timezone: str | None, layout: str, time_column: str | None,
                   columns: tuple[str, ...], repair: bool, store_dir: str | None, as_json: bool,
                   progress: bool | None) -> None:
    """Load CSV, zstd-compressed CSV (.csv.zst) or Parquet bar files (or folders of them) into the store.

    Yahoo, Polygon, Alpaca and generic timestamp,open,high,low,close,volume layouts are read from
    the header, and so is pandas' own DataFrame.to_csv() / to_parquet() output; name other columns
    with --time-column and --column. Naive timestamps are in America/New_York (Lumibot's default
    time zone) unless --tz says otherwise. Invalid rows (unparseable, missing or negative values,
    high/low not bracketing open/close, future bars, duplicates, unsorted rows) reject the file
    unless --repair is given. Ingesting a file again adds nothing; where a file overlaps stored
    bars, the stored bars win. Weekly and monthly bars are refused: the store keeps the minute,
    hour and day bars Lumibot backtests on.

    \b
    Example: lumibot-duckdb ingest data/SPY_1d_2019.csv data/TLT_1d_2019.csv --store ./bars
    Example: lumibot-duckdb ingest prices.csv --symbol SPY --time-column when --column close="Adj Close"

    Then backtest offline, without an API key (Python):

    \b
        from datetime import datetime
        from lumibot.backtesting import PandasDataBacktesting
        from lumibot_duckdb.sources.pandas_data import pandas_data
        MyStrategy.backtest(PandasDataBacktesting, datetime(2019, 2, 1), datetime(2019, 12, 31),
                            pandas_data=pandas_data("./bars", ["SPY", "TLT"], timeframe="day"))
    """
    import json

    from lumibot_duckdb.ingest.load import ingest

    with _writable_store(store_dir) as store:
        report = ingest(store, list(paths), source=source, symbol=symbol, timeframe=timeframe,
                        asset_type=asset_type, quote=quote, timezone=timezone, layout=layout, time_column=time_column,
                        columns=_mapping(columns), on_invalid="repair" if repair else "reject", progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1, default=str))
        return
    table = _table(f"Ingest into {report.store}")
    for name in ("file", "layout", "series", "read", "added", "present", "conflicts", "repairs", "status"):
        _column(table, name, numeric=name in ("read", "added", "present", "conflicts"))
    for item in report.files:
        table.add_row(Path(item.path).name, item.layout, "\n".join(item.series), f"{item.rows_read:,}",
                      f"{item.rows_added:,}", f"{item.rows_present:,}", f"{item.conflicts:,}",
                      "\n".join(f"{k} ({v:,})" for k, v in item.repairs.items()) or "-", item.status)
    notes = [f"{Path(item.path).name}: {note}" for item in report.files for note in item.notes]
    _print(table, *notes,
           f"{len(report.files)} file(s), {report.rows_read:,} rows read, {report.rows_added:,} added, "
           f"{report.rows_present:,} already stored, {report.conflicts:,} conflicting (stored kept), "
           f"{report.seconds:.2f} s")


@main.command("export")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--symbol", default=None, help="Export this series (with --source, --timeframe… where it is not the "
                                             "only one of its symbol).")
@click.option("--query", default=None, help="Export the result of one SELECT over market_data, symbols…")
@click.option("--source", default=None, help="Source of the series (default: the one the store holds).")
@click.option("--timeframe", default=None, help="minute, hour or day, or 1m/1h/1d (default: the one held).")
@click.option("--asset-type", default=None, help="Asset type of the series (default: the one held).")
@click.option("--quote", default=None, help="Quote currency of the series (default: the one held).")
@click.option("--exchange", default=None, help="Venue of the series (CCXT exchange id), if any.")
@click.option("--adjustment", default=None, help="raw, split, all… (default: the one held).")
@click.option("--start", default=None, help=f"First time exported (series only; {NAIVE}).")
@click.option("--end", default=None, help=f"Export bars before this time (series only; {NAIVE}).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="Default: from the file extension.")
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export_command(output: Path, symbol: str | None, query: str | None, source: str | None, timeframe: str | None,
                   asset_type: str | None, quote: str | None, exchange: str | None, adjustment: str | None,
                   start: str | None, end: str | None, fmt: str | None, store_dir: str | None,
                   as_json: bool) -> None:
    """Write a stored series, or a SQL query's result, to a CSV or Parquet file (whole or not at all).

    A series is named by its symbol and, where the store holds several for it, --source,
    --timeframe, --quote, --adjustment…; a name it does not hold is an error saying what it holds.
    Times in the file are UTC, written with their offset.

    \b
    Example: lumibot-duckdb export spy.csv --symbol SPY --timeframe day --store ./bars
    Example: lumibot-duckdb export counts.parquet --query "SELECT symbol, count(*) FROM market_data GROUP BY 1"
    """
    import dataclasses
    import json

    from lumibot_duckdb.errors import ConfigError
    from lumibot_duckdb.sql.export import export
    from lumibot_duckdb.store.naming import SeriesName

    if (symbol is None) == (query is None):
        raise ConfigError("Pass either --symbol (a series) or --query (one SELECT), not both and not neither.")
    what = query if query is not None else SeriesName(symbol, source=source, timeframe=timeframe,
                                                      asset_type=asset_type, quote=quote, exchange=exchange,
                                                      adjustment=adjustment)
    result = export(store_dir, what, output, format=fmt, start=start, end=end)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result)))
        return
    click.echo(f"{result.rows:,} rows written to {result.path} ({result.format}, {_size(result.bytes)})"
               + (f" from {result.series}" if result.series else ""))
    if result.note:
        click.echo(result.note)


# -- status, query, maintenance (lumibot_duckdb.sql.query, lumibot_duckdb.store.maintenance) --------------------


def _existing_store(store_dir: str | None, *, write: bool = False) -> DuckDBDataStorage:
    """The store to inspect or maintain; a folder that does not exist is an error, not a new empty store.

    ``write``: the command changes the store, so an S3 store is opened as a writer (it probes the service).
    """
    from lumibot_duckdb.config import Settings, is_remote
    from lumibot_duckdb.errors import ConfigError
    from lumibot_duckdb.store import DuckDBDataStorage

    location = Settings.resolve(store=store_dir, use_duckdb=True).location
    if not is_remote(location) and not (Path(location) / "bars").is_dir():
        raise ConfigError(f"No store at {location} (no bars/ folder). Pass --store DIR|s3://BUCKET/PREFIX or set "
                          "LUMIBOT_DUCKDB_STORE / LUMIBOT_DUCKDB_CACHE_DIR (in the environment or a .env file).")
    return DuckDBDataStorage(location, role="write" if write else None)


def _writable_store(store_dir: str | None) -> DuckDBDataStorage:
    """The store a command writes into (created if it is a new folder; an S3 store opened as a writer)."""
    from lumibot_duckdb.store import DuckDBDataStorage

    return DuckDBDataStorage(store_dir, role="write")



def _series_cells(key: Any) -> tuple[str, str, str, str, str]:
    """A series as ``db-status``, ``fetch`` and ``import-cache`` show it: source, symbol, type, timeframe, adj."""
    pair = f"{key.symbol}/{key.quote}" if key.asset_type in ("crypto", "forex") and key.quote else key.symbol
    venue = f"@{key.exchange}" if key.exchange else ""
    return key.source, pair + venue, key.asset_type, key.timeframe, key.adjustment


@main.command("db-status")
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON (coverage and gaps included).")
@click.option("--source", default=None, help="Only series of this source.")
@click.option("--symbol", default=None, help="Only series of this symbol.")
def db_status(store_dir: str | None, as_json: bool, source: str | None, symbol: str | None) -> None:
    """What the store holds: per source and per series, the covered range, gaps, bars, files, bytes
    on disk and bytes per bar; empty answers waiting to be asked again; quarantined (damaged) and
    leftover temporary files.

    Read from file names and Parquet footers only: fast on large stores. Times are shown in
    America/New_York (Lumibot's default time zone; --json gives UTC), daily ones as dates; a
    covered range runs up to, not including, its "until" time. Sizes are 1024-based (KiB, MiB).

    \b
    Example: lumibot-duckdb db-status --store ./bars
    Example: lumibot-duckdb db-status --json | jq '.series[] | select(.gaps != [])'
    """
    import dataclasses
    import json

    from lumibot_duckdb.store.maintenance import status

    with _existing_store(store_dir) as store:
        report = status(store)
    if source or symbol:  # (symbols match exactly, case kept, as in every other command)
        keep = [s for s in report.series if (source is None or s.key.source == source.strip().lower())
                and (symbol is None or s.key.symbol == symbol.strip())]
        if not keep and report.series:
            held = sorted({s.key.symbol for s in report.series} if symbol else {s.key.source for s in report.series})
            asked = " and ".join(f for f in (f"--symbol {symbol}" if symbol else "",
                                             f"--source {source}" if source else "") if f)
            raise click.ClickException(f"No series of {report.location or report.root} matches {asked}; it holds "
                                       f"{'symbols' if symbol else 'sources'} {', '.join(held[:20])}"
                                       f"{', …' if len(held) > 20 else ''}.")
        report = dataclasses.replace(report, series=keep)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
        return
    per_bar = f"{report.bytes / report.rows:.1f} B/bar" if report.rows else "-"
    lines: list[Any] = [f"{report.location or report.root}: {len(report.series)} series, {report.rows:,} bars, "
                        f"{report.files:,} files, {_size(report.bytes)} ({per_bar})"]
    zone = (f"Times in {_zone()} (Lumibot's default time zone), daily ones as dates; each range runs from "
            "'covered from' up to, not including, 'covered until'.")
    if not report.series:
        lines.append("The store is empty. Load bars with `lumibot-duckdb ingest FILE…` or run a backtest.")
    else:
        sources = _table("Sources", caption=zone)
        for name in ("source", "series", "symbols", "files", "bars", "on disk", "B/bar", "covered from",
                     "covered until"):
            _column(sources, name, numeric=name not in ("source", "covered from", "covered until"))
        for row in report.sources():
            sources.add_row(row["source"], str(row["series"]), str(row["symbols"]), f"{row['files']:,}",
                            f"{row['rows']:,}", _size(row["bytes"]),
                            "-" if row["bytes_per_bar"] is None else f"{row['bytes_per_bar']:.1f}",
                            _local(row["covered_from"], dates=True), _local(row["covered_to"], dates=True))
        series = _table("Series", caption=zone)
        flagged = any(s.flags for s in report.series)
        for name in ("source", "symbol", "type", "timeframe", "adj", "covered from", "covered until", "gaps",
                     "bars", "files", "on disk", "B/bar", *(("flags",) if flagged else ())):
            _column(series, name, numeric=name in ("gaps", "bars", "files", "on disk", "B/bar"))
        for s in report.series:
            cells = [*_series_cells(s.key),
                     _local(s.coverage[0].start, dates=True) if s.coverage else "-",
                     _local(s.coverage[-1].end, dates=True) if s.coverage else "-", str(len(s.gaps)),
                     f"{s.rows:,}", str(s.files), _size(s.bytes),
                     "-" if s.bytes_per_bar is None else f"{s.bytes_per_bar:.1f}"]
            if flagged:
                cells.append(", ".join(_flag(name, value) for name, value in s.flags.items()) or "-")
            series.add_row(*cells)
        lines += [sources, series]
        rounded = [s for s in report.series if "rounded" in s.flags]
        if rounded:
            lines.append(f"{len(rounded)} series hold bars imported from Lumibot's CCXT cache, rounded to 3 decimals "
                         "(import-cache --include-rounded). To replace them with the exchange's own prices: "
                         "`lumibot-duckdb maintain prune --source ccxt --symbol BASE`, then fetch.")
    waiting = [(s.key, a) for s in report.series for a in s.waiting]
    if waiting:
        lines.append(f"{len(waiting)} empty answer(s) over ranges where the market was open, each asked again once "
                     "at the first request after the time shown (`lumibot-duckdb maintain forget-empty` asks at "
                     "the next one):")
        lines += [f"  {key}  {answer.file.interval}  answered empty {_local(answer.asked)}, asked again after "
                  f"{_local(answer.recheck_after)}" for key, answer in waiting[:20]]
        if len(waiting) > 20:
            lines.append(f"  … and {len(waiting) - 20} more (--json lists them all)")
    if report.quarantined:
        lines.append(f"{len(report.quarantined)} quarantined file(s) in {report.root / '.quarantine'} (damaged, set "
                     "aside; their ranges are fetched again).")
    stale = [f for f in report.temporary if f.age_seconds >= 3600]
    if stale:
        lines.append(f"{len(stale)} leftover temporary file(s) ({_size(sum(f.bytes for f in stale))}); remove them "
                     "with `lumibot-duckdb maintain clean-tmp`.")
    _print(*lines)


def _flag(name: str, value: Any) -> str:
    if name == "rounded" and isinstance(value, dict):
        return f"rounded to {value.get('decimals', 3)} decimals ({value.get('bars', 0):,} bars)"
    return name


@main.command("db-query")
@click.argument("sql", required=False)
@click.option("--file", "sql_file", type=click.File("r"), default=None, help="Read the SQL from a file ('-' = stdin).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Output format.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (required for parquet; csv/json print to stdout without it).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most this many rows (default: 50 for table output, all otherwise; 0 = all).")
@click.option("--timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Stop the statement after this many seconds (0 = no limit).")
@click.option("--memory-limit", default=None,
              help="Memory DuckDB may use, and the most a table or --limit'ed result may hold (e.g. 4GB; "
                   "0 = DuckDB's default). Default: a quarter of the machine's memory, at most 2 GiB.")
@click.option("--max-temp", default="4GiB", show_default=True,
              help="Disk DuckDB may spill to when a query needs more than its memory (0 = no limit).")
@STORE_OPTION
def db_query(sql: str | None, sql_file: Any, fmt: str, output: Path | None, limit: int | None, timeout: float,
             memory_limit: str | None, max_temp: str, store_dir: str | None) -> None:
    """Run one read-only SQL statement (a SELECT) over the store.

    \b
    Views: market_data (one row per bar: ts, source, symbol, asset_type, quote,
           exchange, timeframe, adjustment, open, high, low, close, volume, vwap,
           trade_count, adj_close, dividend, split_ratio, metadata), symbols,
           data_sources, coverage, files.
    Analytics (table macros; options tf := 'day'|'hour'|'minute' (or '1d', '1m'…),
    src := 'yahoo', as_of := '2024-03-01 15:00' (no bar after it is used),
    since := …; naive times are America/New_York):
      sma(sym, n)  ema(sym, n [, sma_seed := true])  bollinger(sym, n [, k := 2])
      rsi(sym, n)  vwap(sym [, tz := 'America/New_York'])
      volatility(sym, n [, annualize := 252])  rolling_corr(sym_a, sym_b, n)
      asof_align(['SPY', 'TLT'])         (sym NULL = every symbol of the timeframe)
    A symbol the store does not hold is an error saying what it holds.

    The table shows times in America/New_York (Lumibot's default time zone), daily bars as
    dates; csv, json and parquet keep UTC. Anything that would change the store or touch other
    files (INSERT, CREATE, COPY, ATTACH, INSTALL, SET, PRAGMA, several statements…) is refused;
    only files of the store can be read.
    A statement is stopped at --timeout, and at --memory-limit (plus --max-temp of spill files);
    csv, json and parquet output is written as it comes, so its size is not held in memory.

    \b
    Examples:
      lumibot-duckdb db-query "SELECT * FROM symbols"
      lumibot-duckdb db-query "SELECT ts, rsi FROM rsi('SPY', 14) ORDER BY ts DESC" --limit 5
      lumibot-duckdb db-query "FROM market_data WHERE symbol = 'SPY'" --format parquet -o spy.parquet
      lumibot-duckdb db-query "SELECT symbol, count(*) FROM market_data GROUP BY ALL" --timeout 600
    """
    import sys

    from lumibot_duckdb.config import parse_bytes
    from lumibot_duckdb.errors import ConfigError
    from lumibot_duckdb.sql.query import TABLE_LIMIT, Limits, default_memory, query, stream, write_stream

    if (sql is None) == (sql_file is None):
        raise ConfigError("Give the SQL as an argument or with --file, not both and not neither. "
                          "Example: lumibot-duckdb db-query \"SELECT * FROM symbols\"")
    text = sql if sql is not None else sql_file.read()
    if fmt == "table" and output is not None:
        raise ConfigError("--output needs --format csv, json or parquet.")
    memory = default_memory() if memory_limit is None else parse_bytes(memory_limit, name="--memory-limit")
    limits = Limits(seconds=timeout or None, memory=memory, temp=parse_bytes(max_temp, name="--max-temp"))
    wanted = (TABLE_LIMIT if fmt == "table" else 0) if limit is None else limit
    if fmt != "table":
        with _existing_store(store_dir) as store, \
                stream(store, text, limit=wanted or None, limits=limits, printable=fmt != "parquet") as (schema, rows):
            capped = _Capped(rows, wanted or None)
            written = write_stream(schema, iter(capped), fmt=fmt, output=output,
                                   out=None if output is not None else sys.stdout)
        if output is not None:
            click.echo(f"{written:,} rows written to {output} ({fmt})", err=True)
        if capped.more:
            click.echo(f"(only the first {wanted:,} rows: --limit)", err=True)
        return
    with _existing_store(store_dir) as store:
        result = query(store, text, limit=wanted or None, limits=limits, printable=True)
    table, zoned = _result_table(result.table)
    more = f"; more exist (--limit {wanted * 10} or --limit 0 for all)" if result.truncated else ""
    lines: list[Any] = [table]
    if zoned:
        lines.append(f"Times in {_zone()} (Lumibot's default time zone); --format csv or json gives UTC.")
    if result.table.num_rows == 0:
        lines.append("0 rows: nothing matched. (A series the store does not hold would be an error; "
                     "`lumibot-duckdb db-status` shows what it holds.)")
    else:
        lines.append(f"{result.table.num_rows:,} row(s){more}")
    _print(*lines)


def _zoned(value: Any) -> Any:
    """A zoned time in the display zone, or its text where pandas cannot hold it (past 2262, before 1677)."""
    import pandas as pd

    try:
        return pd.Timestamp(value).tz_convert(_zone())
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _result_table(rows: Any) -> tuple[Table, bool]:
    """A query result as a table: numbers whole, times with a zone in the display zone (dates when every
    value is a local midnight). Also says whether any column was zoned."""
    import pyarrow.types as kinds

    table = _table()
    columns: list[list[str]] = []
    zoned = False
    from lumibot_duckdb.sql.query import python_values

    for field, column in zip(rows.schema, rows.columns):
        values = python_values(column)  # (times Python cannot hold come as text: printed as they are)
        numeric = kinds.is_integer(field.type) or kinds.is_floating(field.type) or kinds.is_decimal(field.type)
        if kinds.is_timestamp(field.type) and field.type.tz is not None:
            zoned = True
            stamps = [v if v is None or isinstance(v, str) else _zoned(v) for v in values]
            daily = all(v is None or isinstance(v, str) or (v.hour, v.minute, v.second, v.microsecond, v.nanosecond)
                        == (0, 0, 0, 0, 0) for v in stamps)  # (normalize() overflows near pandas' last day)
            text = ["NULL" if v is None else v if isinstance(v, str) else _local(v, dates=daily) for v in stamps]
        else:
            text = ["NULL" if v is None else str(v) for v in values]
        _column(table, field.name, numeric=numeric)
        columns.append(text)
    for row in zip(*columns):
        table.add_row(*row)
    return table, zoned


class _Capped:
    """The first ``rows`` rows of an iterator of record batches (all if None); ``more`` tells whether there were
    others (the stream asks for one row more than it shows)."""

    def __init__(self, batches: Any, rows: int | None) -> None:
        self.batches, self.left, self.more = batches, rows, False

    def __iter__(self) -> Any:
        for batch in self.batches:
            if self.left is None:
                yield batch
            elif self.left <= 0:
                self.more = self.more or batch.num_rows > 0
            elif batch.num_rows > self.left:
                self.more = True
                yield batch.slice(0, self.left)
                self.left = 0
            else:
                self.left -= batch.num_rows
                yield batch


@main.group("maintain", cls=_Group)
def maintain() -> None:
    """Keep the store tidy and sound: compact, clean-tmp, prune, verify, seal, forget-empty.

    Safe while backtests read the store: rewrites take the series' lock, publish the new file
    before removing the old ones, and readers retry. Commands that delete have --dry-run.

    \b
    Example: lumibot-duckdb maintain verify --store ./bars
    """


def _selection(function: Any) -> Any:
    for option in reversed([
        click.option("--source", default=None, help="Only series of this source (polygon, yahoo, ingest…)."),
        click.option("--symbol", default=None, help="Only series of exactly this symbol (case kept: spy is not SPY)."),
        click.option("--symbol-glob", default=None,
                     help="Only series whose symbol matches this shell pattern, case kept (e.g. 'BTC*', 'SP?')."),
        click.option("--timeframe", default=None, help="Only series of this timeframe (minute, hour, day)."),
    ]):
        function = option(function)
    return function


@maintain.command("compact")
@_selection
@click.option("--dry-run", is_flag=True, help="Only say which series would be rewritten.")
@click.option("--lake-grace", default="1h", show_default=True,
              help="DuckLake stores: keep snapshots, replaced files and unreferenced files younger than this "
                   "(readers and writers may still use them).")
@STORE_OPTION
def maintain_compact(source: str | None, symbol: str | None, symbol_glob: str | None, timeframe: str | None,
                     dry_run: bool, lake_grace: str, store_dir: str | None) -> None:
    """Rewrite fragmented or overlapping partitions as one sorted file per covered range.

    Every bar is kept; where two files overlap, the newer file's bars win (as on every read). On a
    DuckLake store, DuckLake's own upkeep follows: small files merged, old snapshots expired, the files
    they alone used and files no snapshot knows (left by a writer that died) deleted; safe while writers
    commit (each step retried on conflicts).

    \b
    Example: lumibot-duckdb maintain compact --source polygon --store ./bars
    """
    from lumibot_duckdb.store.maintenance import compact, parse_age

    grace = parse_age(lake_grace)
    with _existing_store(store_dir, write=not dry_run) as store:
        report = compact(store, source=source, symbol=symbol, timeframe=timeframe, symbol_glob=symbol_glob,
                         dry_run=dry_run, lake_grace=grace)
    verb = "would rewrite" if dry_run else "rewrote"
    click.echo(f"{report.series} series checked, {verb} {len(report.rewritten)}: "
               f"{report.files_before:,} files before, {report.files_after:,} after.")
    if report.lake is not None:
        lake = report.lake
        click.echo(f"DuckLake upkeep: {lake['files_before']:,} data files before, {lake['files_after']:,} after; "
                   f"{lake['expire']} snapshot(s) expired, {lake['cleanup']} old file(s) and {lake['orphans']} "
                   f"orphaned file(s) deleted ({lake['seconds']:.1f} s).")
    for name in report.rewritten:
        click.echo(f"  {name}")


@maintain.command("clean-tmp")
@click.option("--older-than", default="1h", show_default=True,
              help="Remove temporary files not modified for this long (30m, 2h, 1d); younger ones may be live.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@STORE_OPTION
def maintain_clean_tmp(older_than: str, dry_run: bool, store_dir: str | None) -> None:
    """Remove files a stopped writer left in the store's .tmp/ folder.

    \b
    Example: lumibot-duckdb maintain clean-tmp --older-than 2h --dry-run
    """
    from lumibot_duckdb.store.maintenance import clean_tmp, parse_age

    age = parse_age(older_than)
    with _existing_store(store_dir) as store:
        report = clean_tmp(store, older_than=age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(report.removed)} temporary file(s) ({_size(report.bytes)}); "
               f"kept {report.kept_fresh} younger than {older_than}.")
    for path in report.removed:
        click.echo(f"  {path}")


@maintain.command("prune")
@click.option("--before", default=None, help=f"Remove bars before this date/time ({NAIVE}), e.g. 2020-01-01.")
@_selection
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@STORE_OPTION
def maintain_prune(before: str | None, source: str | None, symbol: str | None, symbol_glob: str | None,
                   timeframe: str | None, dry_run: bool, yes: bool, store_dir: str | None) -> None:
    """Remove old bars (before a date) or whole series (of a source, symbol or timeframe).

    The coverage of removed time goes with the bars, so a backtest that asks for it fetches it
    again. A file that straddles --before is rewritten to keep the later bars.

    \b
    Example: lumibot-duckdb maintain prune --before 2020-01-01 --source polygon --dry-run
    """
    from lumibot_duckdb.store.maintenance import prune

    with _existing_store(store_dir, write=not dry_run) as store:
        plan = prune(store, before=before, source=source, symbol=symbol, timeframe=timeframe,
                     symbol_glob=symbol_glob, dry_run=True)
        if dry_run or plan.series == 0 or (plan.files_removed + plan.files_rewritten) == 0:
            click.echo(f"{plan.series} series selected: would remove {plan.files_removed} file(s), rewrite "
                       f"{plan.files_rewritten}, {plan.bars_removed:,} bar(s).")
            for line in plan.details:
                click.echo(f"  {line}")
            return
        if not yes:
            click.confirm(f"Remove {plan.bars_removed:,} bar(s) from {plan.series} series?", abort=True)
        report = prune(store, before=before, source=source, symbol=symbol, timeframe=timeframe,
                       symbol_glob=symbol_glob)
    click.echo(f"{report.series} series: removed {report.files_removed} file(s), rewrote {report.files_rewritten}, "
               f"{report.bars_removed:,} bar(s) gone.")


@maintain.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quarantine", is_flag=True,
              help="Set every damaged file aside in .quarantine/ now (as the next read would), so its range is "
                   "fetched again.")
@STORE_OPTION
def maintain_verify(as_json: bool, quarantine: bool, store_dir: str | None) -> None:
    """Read every file and check the store with the checks every read runs (checksums, schema and types,
    series, covered ranges, sorted unique bars) plus names, partitions and overlapping files that
    disagree. Changes nothing unless --quarantine. Exits 1 when an error is found (warnings:
    files without a checksum, quarantined files, leftover temporary files, overlaps that agree, do not fail).

    \b
    Example: lumibot-duckdb maintain verify --store ./bars && echo sound
    """
    import json

    from lumibot_duckdb.store.maintenance import verify

    with _existing_store(store_dir) as store:
        report = verify(store, quarantine=quarantine)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for problem in report.problems:
            click.echo(f"{problem.severity.upper():7} {problem.kind:<20} {problem.path}\n        {problem.message}")
        click.echo(f"{report.files_checked:,} file(s) of {report.series_checked} series checked: "
                   f"{len(report.errors)} error(s), {len(report.problems) - len(report.errors)} warning(s).")
        if report.quarantined:
            click.echo(f"{len(report.quarantined)} damaged file(s) set aside in .quarantine/; their ranges are "
                       "fetched again by the next backtest that needs them.")
    if not report.ok:
        raise SystemExit(1)


@maintain.command("seal")
@_selection
@click.option("--dry-run", is_flag=True, help="Only count the files that would be sealed.")
@STORE_OPTION
def maintain_seal(source: str | None, symbol: str | None, symbol_glob: str | None, timeframe: str | None,
                  dry_run: bool, store_dir: str | None) -> None:
    """Give files written before checksums existed their checksum, so every read can prove them intact.

    Each file is checked first; a damaged one is listed and left alone (never sealed). The same bars,
    range and publish time are kept. Safe while backtests read the store.

    \b
    Example: lumibot-duckdb maintain seal --store ./bars
    """
    from lumibot_duckdb.store.maintenance import seal

    with _existing_store(store_dir) as store:
        report = seal(store, source=source, symbol=symbol, timeframe=timeframe, symbol_glob=symbol_glob,
                      dry_run=dry_run)
    verb = "would seal" if dry_run else "sealed"
    click.echo(f"{report.series} series: {verb} {report.sealed} file(s); {report.already} already sealed; "
               f"{len(report.damaged)} damaged (left alone, see `maintain verify`).")
    for line in report.damaged:
        click.echo(f"  {line}")


@maintain.command("forget-empty")
@_selection
@click.option("--start", default=None, help=f"Only empty answers from this time ({NAIVE}), e.g. 2024-03-01.")
@click.option("--end", default=None, help=f"Only empty answers before this time ({NAIVE}).")
@click.option("--dry-run", is_flag=True, help="Only list the empty answers that would be forgotten.")
@STORE_OPTION
def maintain_forget_empty(source: str | None, symbol: str | None, symbol_glob: str | None, timeframe: str | None,
                          start: str | None, end: str | None, dry_run: bool, store_dir: str | None) -> None:
    """Forget stored "no bars here" answers of a series (over a range), so the next backtest asks the
    provider again: for a provider that answered nothing during an outage. Bars are never removed.

    Empty answers are also asked again once by themselves, a day after they were given
    (`db-status` lists those waiting).

    \b
    Example: lumibot-duckdb maintain forget-empty --source polygon --symbol SPY --start 2024-03-01 --end 2024-04-01
    """
    from lumibot_duckdb.store.maintenance import forget_empty

    with _existing_store(store_dir) as store:
        report = forget_empty(store, source=source, symbol=symbol, timeframe=timeframe, symbol_glob=symbol_glob,
                              start=start, end=end, dry_run=dry_run)
    verb = "would forget" if dry_run else "forgot"
    click.echo(f"{report.series} series: {verb} {report.files_removed} empty answer(s); the next request for "
               "their ranges asks the provider again.")
    for line in report.ranges:
        click.echo(f"  {line}")


# -- bring your data: import-cache and fetch (lumibot_duckdb.ingest.cache, lumibot_duckdb.fetch) ------------
@main.command("import-cache")
@click.argument("cache", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--source", "sources", multiple=True, type=click.Choice(["polygon", "yahoo", "alpaca", "ccxt"]),
              help="Only this source's cache (repeat for several; default all four).")
@click.option("--include-rounded", is_flag=True,
              help="Also import CCXT caches whose prices Lumibot rounded to 3 decimals (flagged in db-status).")
@click.option("--symbols", default="",
              help="Alpaca symbols to recognise in Lumibot's shared bar cache beyond those its window CSVs name "
                   "(comma-separated; BTC/USD for crypto, OCC symbols for options).")
@click.option("--dry-run", is_flag=True, help="Only report what would be imported; write nothing.")
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def import_cache_command(cache: Path | None, sources: tuple[str, ...], include_rounded: bool, symbols: str,
                         dry_run: bool, store_dir: str | None, as_json: bool, progress: bool | None) -> None:
    """Import the caches Lumibot already filled (Polygon, Yahoo, Alpaca, CCXT) into the store.

    CACHE is Lumibot's cache folder (default: LUMIBOT_CACHE_FOLDER, else Lumibot's own). Bars go
    under the series keys the DuckDB data sources read, with only the coverage the legacy files
    prove (no placeholder guesswork, no forward-filled rows, no session Lumibot merely believes it
    holds), so backtests on the DuckDB path then ask their provider nothing for those ranges. The
    legacy cache is only read, never changed. Running it again adds nothing. CCXT caches rounded
    to 3 decimals by Lumibot are skipped unless --include-rounded. Alpaca's shared bar cache is
    recognised with the key in ALPACA_API_KEY (environment or .env).

    \b
    Example: lumibot-duckdb import-cache --dry-run
    Example: lumibot-duckdb import-cache ~/.cache/lumibot/1.0 --source polygon --store ./bars
    """
    import json

    from lumibot_duckdb.config import is_remote
    from lumibot_duckdb.ingest.cache import import_cache

    names = [s.strip() for s in symbols.split(",") if s.strip()]
    target = _writable_store(store_dir) if store_dir and is_remote(store_dir) else store_dir
    report = import_cache(target, cache, sources=list(sources) or None, include_rounded=include_rounded,
                          dry_run=dry_run, symbols=names, credentials=_dotenv_credentials(), progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        _print_import(report)
    if report.failed:
        raise SystemExit(1)


def _dotenv_credentials() -> list[str] | None:
    """Alpaca keys from the environment and a .env file found as Lumibot finds one (unless LUMIBOT_DISABLE_DOTENV)."""
    import os

    values = [os.environ.get("ALPACA_API_KEY", ""), os.environ.get("ALPACA_OAUTH_TOKEN", "")]
    if os.environ.get("LUMIBOT_DISABLE_DOTENV", "").strip().lower() not in ("1", "true", "yes", "on"):
        try:
            from dotenv import dotenv_values, find_dotenv

            found = dotenv_values(find_dotenv(usecwd=True)) if find_dotenv(usecwd=True) else {}
            values += [str(found.get("ALPACA_API_KEY") or ""), str(found.get("ALPACA_OAUTH_TOKEN") or "")]
        except ImportError:
            pass
    return [v for v in dict.fromkeys(values) if v]


def _print_import(report: Any) -> None:
    verb = "would import" if report.dry_run else "imported"
    zone = (f"Times in {_zone()} (Lumibot's default time zone), daily ones as dates; 'covered to' is the end of the "
            "range, not included.")
    table = _table(f"Lumibot caches in {report.cache} → store {report.store}" + (" (dry run)" if report.dry_run
                                                                                  else ""), caption=zone)
    for name in ("source", "legacy file", "series", "bars", "already stored", "covered from", "covered to",
                 "left out", "status"):
        _column(table, name, numeric=name in ("bars", "already stored"))
    for item in report.items:
        left = "; ".join(f"{n:,} {why}" for why, n in item.skipped.items()) or "-"
        table.add_row(item.source, _legacy_name(item, report.cache), item.series or "-", f"{item.bars:,}",
                      f"{item.present:,}", _local_text(item.first), _local_text(item.last), left, item.status)
    lines: list[Any] = [table]
    for item in report.items:
        lines += [f"  {_legacy_name(item, report.cache)}: {text}" for text in ([item.reason] if item.reason else [])
                  + item.notes]
    for source, row in report.by_source().items():
        lines.append(f"{source}: {row['files']} file(s), {row['imported']} {verb}, {row['skipped']} skipped, "
                     f"{row['failed']} failed; {row['bars']:,} bars {verb}, {row['present']:,} already stored, "
                     f"{row['rows_left_out']:,} rows left out")
    lines.append(f"{report.bars:,} bars {verb} in {report.seconds:.1f} s. The legacy cache was only read.")
    _print(*lines)


def _legacy_name(item: Any, cache: str) -> str:
    """A legacy file by its name; a shared-bar series folder (named by a hash) as ``shared bars <hash>…``."""
    path = Path(item.legacy)
    if path.parent.parent.name == item.source and "bars" in path.parts:
        return f"shared bars {path.name[:12]}…"
    return path.name


def _local_text(text: str | None) -> str:
    """A UTC stamp of a report (ISO text), as the tables show times (:func:`_local`)."""
    return _local(text, dates=True) if text else "-"


@main.command("fetch")
@click.argument("symbols", nargs=-1)
@click.option("--source", required=True, type=click.Choice(["polygon", "yahoo", "alpaca", "ccxt"]),
              help="The provider, as the data source of that name asks it.")
@click.option("--symbols-file", type=click.File("r"), default=None,
              help="A file with one symbol per line ('#' comments; '-' = stdin), added to SYMBOLS.")
@click.option("--timeframe", default="day", show_default=True, help="minute, hour or day (Yahoo: day).")
@click.option("--start", default=None, help="First day fetched (YYYY-MM-DD).")
@click.option("--end", default=None, help="Last day fetched, included (default: today).")
@click.option("--days", type=click.IntRange(min=1), default=None, help="The N days up to --end (instead of --start).")
@click.option("--asset-type", default=None,
              help="stock (default), crypto (pairs such as BTC/USD; CCXT's default), option (OCC contracts, "
                   "e.g. SPY240119C00470000), index, future.")
@click.option("--quote", default=None, help="Quote currency when a symbol gives none (default USD; USDT on CCXT).")
@click.option("--exchange", default="binance", show_default=True, help="CCXT exchange id.")
@click.option("--adjustment", type=click.Choice(["split", "all"]), default="split", show_default=True,
              help="Alpaca stocks: split (as run_backtest asks) or all (auto_adjust=True).")
@click.option("--refresh", is_flag=True, help="Ask for the whole range again, even what is stored.")
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar per series (default: when stderr is a terminal; LUMIBOT_DUCKDB_PROGRESS).")
def fetch_command(symbols: tuple[str, ...], source: str, symbols_file: Any, timeframe: str, start: str | None,
                  end: str | None, days: int | None, asset_type: str | None, quote: str | None, exchange: str,
                  adjustment: str, refresh: bool, store_dir: str | None, as_json: bool,
                  progress: bool | None) -> None:
    """Fill the store for a universe, without running a backtest (a nightly job, say).

    Asks each provider exactly what a backtest of that source over the range would, through the
    same code, and stores it under the same series db-status lists: only what the store lacks,
    answers with no bars recorded, requests retried and paced like a backtest's. Interrupt it
    (Ctrl-C) and run it again: what completed stays, only the rest is asked. Ends with a summary
    per series; exits 1 when a series failed, 130 when interrupted. Credentials as Lumibot reads
    them: POLYGON_API_KEY; ALPACA_API_KEY and ALPACA_API_SECRET (environment or .env). Backtests
    also read a little before their first day: start a week or more earlier.

    \b
    Example: lumibot-duckdb fetch --source polygon SPY QQQ IWM --timeframe minute --start 2023-01-01 --end 2023-12-31
    Example: lumibot-duckdb fetch --source ccxt BTC/USDT ETH/USDT --timeframe minute --days 30
    Example: lumibot-duckdb fetch --source yahoo --symbols-file universe.txt --start 2000-01-01
    """
    import json

    from lumibot_duckdb.fetch import fetch, read_symbols

    names = list(symbols) + (read_symbols(symbols_file.read()) if symbols_file is not None else [])
    with _warnings_above_bars():
        report = fetch(_writable_store(store_dir), source=source, symbols=names, timeframe=timeframe, start=start,
                       end=end, days=days, asset_type=asset_type, quote=quote, exchange=exchange,
                       adjustment=adjustment, refresh=refresh, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        _print_fetch(report)
    if report.interrupted:
        raise SystemExit(130)
    if not report.ok:
        raise SystemExit(1)


@contextlib.contextmanager
def _warnings_above_bars() -> Iterator[None]:
    """Our warnings (a retry, say) printed above the progress bars instead of through them."""
    import logging
    import sys

    from tqdm import tqdm

    class AboveBars(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record), file=sys.stderr)

    from lumibot_duckdb.log import package_logger

    logger = package_logger()  # under Lumibot's logger: LUMIBOT_LOG_LEVEL still decides what is shown
    handler = AboveBars(level=logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _print_fetch(report: Any) -> None:
    from lumibot_duckdb.store import SeriesKey

    zone = (f"Times in {_zone()} (Lumibot's default time zone), daily ones as dates; each range runs from "
            "'covered from' up to, not including, 'covered to'.")
    table = _table(f"fetch {report.source} {report.timeframe} {report.start}..{report.end} → store {report.store}",
                   caption=zone)
    numeric = ("chunks", "requests", "retries", "bars", "gaps", "s")
    for name in ("source", "symbol", "type", "timeframe", "adj", "status", *numeric[:4], "covered from", "covered to",
                 *numeric[4:]):
        _column(table, name, numeric=name in numeric)
    for item in report.series:
        key = SeriesKey(**item.key) if item.key else None
        cells = _series_cells(key) if key else (report.source, item.symbol, "-", report.timeframe, "-")
        table.add_row(*cells, item.status, f"{item.chunks:,}", f"{item.requests:,}", f"{item.retries:,}",
                      f"{item.bars:,}", _local_text(item.covered_from), _local_text(item.covered_to),
                      str(item.gaps), f"{item.seconds:.1f}")
    lines: list[Any] = [table]
    lines += [f"{item.symbol}: {item.error}" for item in report.series if item.error]
    done = sum(1 for s in report.series if s.status in ("fetched", "present", "not settled"))
    lines.append(f"{done} of {len(report.series)} series complete, {report.requests:,} provider requests, "
                 f"{report.bars:,} bars stored, {report.seconds:.1f} s.")
    if report.interrupted:
        lines.append("Interrupted. Every answer stored so far is kept; run the same command again to fetch only "
                     "the rest.")
    _print(*lines)


@main.command("sync")
@click.argument("source", metavar="SOURCE")
@click.argument("target", metavar="TARGET")
@click.option("--dry-run", is_flag=True, help="Only say what would be pushed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sync_command(source: str, target: str, dry_run: bool, as_json: bool) -> None:
    """Push what SOURCE holds and TARGET lacks into TARGET (each a folder, s3://bucket/prefix or ducklake:…).

    Only ranges TARGET does not cover are written (a range both hold keeps TARGET's bars), and notes TARGET
    has not got; running it again pushes nothing. TARGET is opened as a writer (on S3: under each series'
    lease, after probing that the service honours conditional writes).

    \b
    Example: lumibot-duckdb sync ./bars s3://team-bars/lumibot
    Example: lumibot-duckdb sync ./bars "ducklake:postgres:dbname=lake host=db.internal"

    A reader's own fills (gaps it fetched from a provider and kept locally) are under
    <LUMIBOT_DUCKDB_CACHE_DIR>/s3/<bucket>/<prefix>/: `db-status --store s3://…` names that folder.
    """
    import dataclasses
    import json

    from lumibot_duckdb.store import DuckDBDataStorage
    from lumibot_duckdb.store.sync import sync

    with _existing_store(source) as origin, DuckDBDataStorage(target, role=None if dry_run else "write") as into:
        report = sync(origin, into, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=1, default=str))
        return
    verb = "would push" if dry_run else "pushed"
    click.echo(f"{report.series} series compared: {verb} {report.ranges} range(s) of {report.series_pushed} series "
               f"({report.bars:,} bars) and {report.notes} note(s); {report.series_current} series already "
               f"complete in {report.target} ({report.seconds:.1f} s).")
    for line in report.details:
        click.echo(f"  {line}")


# -- demo -------------------------------------------------------------------------------------------
# -- A/B (lumibot_duckdb.ab) -----------------------------------------------------------------------
def _progress(run: Any) -> None:
    click.echo(f"  {run.variant:<15} {run.phase:<8} {run.wall_seconds:7.1f} s  {len(run.fills)} fills", err=True)


def _write_reports(result: Any, report: Path | None, png: Path | None, as_json: Path | None) -> None:
    import json

    from lumibot_duckdb.ab.report import write_html, write_png

    if report is not None:
        click.echo(f"report: {write_html(result, report)}", err=True)
    if png is not None:
        click.echo(f"image: {write_png(result, png)}", err=True)
    if as_json is not None:
        as_json.parent.mkdir(parents=True, exist_ok=True)
        as_json.write_text(json.dumps(result.to_dict(), indent=1, default=str))
        click.echo(f"json: {as_json}", err=True)


REPORT_OPTIONS = [
    click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Write the report: one self-contained HTML page (equity curves, time, memory, requests)."),
    click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Write the same charts as a PNG image."),
    click.option("--json", "as_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Write every run's measurements, fills and verdicts as JSON."),
]


def _report_options(function: Any) -> Any:
    for option in reversed(REPORT_OPTIONS):
        function = option(function)
    return function


@main.command("ab")
@click.argument("strategy")
@click.option("--source", type=click.Choice(["polygon", "yahoo", "alpaca", "ccxt"]), default="polygon",
              show_default=True, help="The data source both paths use.")
@click.option("--start", default=None, help="First day (YYYY-MM-DD; default BACKTESTING_START).")
@click.option("--end", default=None, help="Last day (YYYY-MM-DD; default BACKTESTING_END).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A strategy parameter (repeatable); VALUE as JSON (else a string), "
                   'e.g. --param symbols=\'["SPY","TLT"]\' --param asset=\'{"$asset":"ETH","type":"crypto"}\'.')
@click.option("--params-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Parameters from a .json file or a .py file defining `parameters = {...}` (--param wins).")
@click.option("--budget", type=float, default=100_000.0, show_default=True, help="Starting cash.")
@click.option("--quote", default="", help="Quote asset (run_backtest's quote_asset), e.g. USDT.")
@click.option("--benchmark", default="", help="Benchmark asset, e.g. SPY or ETH/USDT (default none).")
@click.option("--phases", default="cold,warm,shifted", show_default=True,
              help="cold (empty throw-away caches), warm (the same caches again), shifted (window moved later).")
@click.option("--shift-days", type=click.IntRange(min=1), default=30, show_default=True,
              help="How far the shifted phase moves the window.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeat every phase on fresh caches; the table shows medians and min-max.")
@click.option("--offline", is_flag=True, help="Use the built-in emulated provider (no key, no network).")
@click.option("--timestep", default="", help="Bars the strategy trades on, for Alpaca (day or minute).")
@click.option("--option", "options", multiple=True, metavar="NAME=VALUE",
              help="Another run_backtest keyword (repeatable, JSON value), e.g. --option exchange_id=kraken.")
@click.option("--market-seed", type=int, default=1, show_default=True, help="Seed of the offline market.")
@click.option("--verify", is_flag=True, help="Also run the DuckDB path in verify mode and report its cost.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the runs' caches here: a new or empty folder (default: a temporary one, removed after).")
@_report_options
def ab_command(strategy: str, source: str, start: str | None, end: str | None, params: tuple[str, ...],
               params_file: Path | None, budget: float, quote: str, benchmark: str, phases: str, shift_days: int,
               repeat: int, offline: bool, timestep: str, options: tuple[str, ...], market_seed: int, verify: bool,
               workdir: Path | None, report: Path | None, png: Path | None, as_json: Path | None) -> None:
    """A/B your own strategy: Lumibot's legacy data path beside the DuckDB path, fill by fill.

    STRATEGY is path/to/file.py (the one Strategy subclass in it), path/to/file.py:ClassName or
    module:ClassName. Each phase runs both paths in fresh processes with your credentials
    (environment and .env, as Lumibot reads them; cold runs on empty throw-away caches, never
    yours), then prints wall time, data-layer time, peak memory, provider requests, bytes on disk,
    fills and final value, and the verdict. Where the paths differ it shows the first differing
    fill, the bars each path held around it, and which declared legacy defect explains it (or
    that none does). Exits 1 when they differ unexplained.

    \b
    Examples:
      lumibot-duckdb ab my_strategy.py --source polygon --start 2024-01-02 --end 2024-06-28 --report ab.html
      lumibot-duckdb ab stock_momentum.py --source yahoo --start 2023-01-03 --end 2023-08-01 --offline --png ab.png
    """
    from lumibot_duckdb.ab.session import compare_strategy
    from lumibot_duckdb.ab.strategy import parse_assignment

    click.echo(f"A/B {strategy} on {source} ({'offline' if offline else 'the real provider'}), phases {phases}, "
               f"{repeat} repetition(s)…", err=True)
    result = compare_strategy(
        strategy, source=source, start=start, end=end, parameters=dict(map(parse_assignment, params)),
        parameters_file=params_file or "", budget=budget, quote=quote, benchmark=benchmark, phases=phases,
        shift_days=shift_days, repeat=repeat, offline=offline, timestep=timestep,
        options=dict(map(parse_assignment, options)), market_seed=market_seed, verify=verify, workdir=workdir,
        progress=_progress)
    click.echo(result.text())
    _write_reports(result, report, png, as_json)
    if not result.ok:
        raise SystemExit(1)


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the caches of the runs here: a new or empty folder (default: a temporary one, "
                   "removed after).")
@click.option("--source", type=click.Choice(["polygon", "yahoo", "alpaca", "ccxt"]), default="polygon",
              show_default=True, help="The data source to compare (its provider is emulated offline).")
@_report_options
def demo(workdir: Path | None, source: str, report: Path | None, png: Path | None, as_json: Path | None) -> None:
    """Offline A/B backtest on sample data: Lumibot's legacy data path beside the DuckDB path.

    Runs a daily momentum strategy over four symbols (crypto pairs on CCXT) of a built-in
    synthetic market (no API key, no network), cold, warm and on a window shifted by a month, in
    fresh processes, and prints wall time, data-layer time, provider requests, memory, disk use
    and whether fills and final portfolio value are identical (or differ only by a declared
    legacy defect).

    \b
    Example: lumibot-duckdb demo --source ccxt --workdir ./demo-run --report demo.html
    """
    from lumibot_duckdb.ab.harness import demo_scenario
    from lumibot_duckdb.ab.session import run_scenario

    click.echo("Running 6 offline backtests (legacy and DuckDB; cold, warm, shifted window), about a minute…",
               err=True)
    result = run_scenario(demo_scenario(source), workdir=workdir, progress=_progress)
    click.echo(result.text())
    _write_reports(result, report, png, as_json)
    if not result.ok:
        raise click.ClickException("legacy and DuckDB results differ (see above)")


if __name__ == "__main__":  # python -m lumibot_duckdb.cli (python -m lumibot_duckdb is the same command)
    main(prog_name="lumibot-duckdb")
