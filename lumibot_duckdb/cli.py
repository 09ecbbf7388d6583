"""The ``lumibot-duckdb`` command: a thin layer over the library (parse, call, print).

Before any command runs, the ``.env`` files a Lumibot backtest started in the current folder would
load are loaded (:func:`lumibot_duckdb.config.load_dotenv`), so the command line and backtests agree
on the store. Errors name the command line's flags (:func:`lumibot_duckdb.errors.surface`). Tables
never split a value across lines: piped, they are as wide as they need; in a terminal narrower than
a table, cut values end in ``…`` and a line says so. Times are shown in Lumibot's default time zone,
said under every table, daily bars as dates.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lumibot_duckdb.errors import LumibotDuckDBError, surface

if TYPE_CHECKING:
    from rich.table import Table

    from lumibot_duckdb.store import DuckDBDataStorage

STORE_OPTION = click.option(
    "--store", "store_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Store folder (default: LUMIBOT_DUCKDB_CACHE_DIR, from the environment or a .env file as Lumibot reads "
         "it, else <Lumibot cache>/duckdb).")
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
                   columns: tuple[str, ...], repair: bool, store_dir: Path | None, as_json: bool,
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

    report = ingest(store_dir, list(paths), source=source, symbol=symbol, timeframe=timeframe,
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
                   start: str | None, end: str | None, fmt: str | None, store_dir: Path | None,
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


def _existing_store(store_dir: Path | None) -> DuckDBDataStorage:
    """The store to inspect or maintain; a folder that does not exist is an error, not a new empty store."""
    from lumibot_duckdb.config import Settings
    from lumibot_duckdb.errors import ConfigError
    from lumibot_duckdb.store import DuckDBDataStorage

    settings = Settings.resolve(cache_dir=store_dir, use_duckdb=True)
    root = settings.cache_dir
    if not (root / "bars").is_dir():
        where = {"cache_dir=": "--store", "default": "the default folder"}.get(settings.cache_dir_from,
                                                                              settings.cache_dir_from)
        raise ConfigError(f"No store at {root} ({where}; no bars/ folder). Pass --store DIR or set "
                          "LUMIBOT_DUCKDB_CACHE_DIR (in the environment or a .env file).")
    return DuckDBDataStorage(root)


@main.command("db-status")
@STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON (coverage and gaps included).")
@click.option("--source", default=None, help="Only series of this source.")
@click.option("--symbol", default=None, help="Only series of this symbol.")
def db_status(store_dir: Path | None, as_json: bool, source: str | None, symbol: str | None) -> None:
    """What the store holds: per source and per series, the covered range, gaps, bars, files, bytes
    on disk and bytes per bar; quarantined (damaged) and leftover temporary files.

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
    if source or symbol:
        keep = [s for s in report.series if (source is None or s.key.source == source.lower())
                and (symbol is None or s.key.symbol.upper() == symbol.upper())]
        if not keep and report.series:
            held = sorted({s.key.symbol for s in report.series} if symbol else {s.key.source for s in report.series})
            asked = " and ".join(f for f in (f"--symbol {symbol}" if symbol else "",
                                             f"--source {source}" if source else "") if f)
            raise click.ClickException(f"No series of {report.root} matches {asked}; it holds "
                                       f"{'symbols' if symbol else 'sources'} {', '.join(held[:20])}"
                                       f"{', …' if len(held) > 20 else ''}.")
        report = dataclasses.replace(report, series=keep)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
        return
    per_bar = f"{report.bytes / report.rows:.1f} B/bar" if report.rows else "-"
    lines: list[Any] = [f"{report.root}: {len(report.series)} series, {report.rows:,} bars, "
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
        for name in ("source", "symbol", "type", "timeframe", "adj", "covered from", "covered until", "gaps",
                     "bars", "files", "on disk", "B/bar"):
            _column(series, name, numeric=name in ("gaps", "bars", "files", "on disk", "B/bar"))
        for s in report.series:
            pair = f"{s.key.symbol}/{s.key.quote}" if s.key.asset_type == "crypto" and s.key.quote else s.key.symbol
            venue = f"@{s.key.exchange}" if s.key.exchange else ""
            series.add_row(s.key.source, pair + venue, s.key.asset_type, s.key.timeframe, s.key.adjustment,
                           _local(s.coverage[0].start, dates=True) if s.coverage else "-",
                           _local(s.coverage[-1].end, dates=True) if s.coverage else "-", str(len(s.gaps)),
                           f"{s.rows:,}", str(s.files), _size(s.bytes),
                           "-" if s.bytes_per_bar is None else f"{s.bytes_per_bar:.1f}")
        lines += [sources, series]
    if report.quarantined:
        lines.append(f"{len(report.quarantined)} quarantined file(s) in {report.root / '.quarantine'} (damaged, set "
                     "aside; their ranges are fetched again).")
    stale = [f for f in report.temporary if f.age_seconds >= 3600]
    if stale:
        lines.append(f"{len(stale)} leftover temporary file(s) ({_size(sum(f.bytes for f in stale))}); remove them "
                     "with `lumibot-duckdb maintain clean-tmp`.")
    _print(*lines)


@main.command("db-query")
@click.argument("sql", required=False)
@click.option("--file", "sql_file", type=click.File("r"), default=None, help="Read the SQL from a file ('-' = stdin).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Output format.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (required for parquet; csv/json print to stdout without it).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most this many rows (default: 50 for table output, all otherwise; 0 = all).")
@STORE_OPTION
def db_query(sql: str | None, sql_file: Any, fmt: str, output: Path | None, limit: int | None,
             store_dir: Path | None) -> None:
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

    \b
    Examples:
      lumibot-duckdb db-query "SELECT * FROM symbols"
      lumibot-duckdb db-query "SELECT ts, rsi FROM rsi('SPY', 14) ORDER BY ts DESC" --limit 5
      lumibot-duckdb db-query "FROM market_data WHERE symbol = 'SPY'" --format parquet -o spy.parquet
    """
    from lumibot_duckdb.errors import ConfigError
    from lumibot_duckdb.sql.query import TABLE_LIMIT, query, write_result

    if (sql is None) == (sql_file is None):
        raise ConfigError("Give the SQL as an argument or with --file, not both and not neither. "
                          "Example: lumibot-duckdb db-query \"SELECT * FROM symbols\"")
    text = sql if sql is not None else sql_file.read()
    if fmt == "table" and output is not None:
        raise ConfigError("--output needs --format csv, json or parquet.")
    wanted = (TABLE_LIMIT if fmt == "table" else 0) if limit is None else limit
    with _existing_store(store_dir) as store:
        result = query(store, text, limit=wanted or None)
    if fmt != "table":
        written = write_result(result.table, fmt=fmt, output=output)
        if written is not None:
            click.echo(written, nl=False)
        else:
            click.echo(f"{result.table.num_rows:,} rows written to {output} ({fmt})", err=True)
        if result.truncated:
            click.echo(f"(only the first {wanted:,} rows: --limit)", err=True)
        return
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


def _result_table(rows: Any) -> tuple[Table, bool]:
    """A query result as a table: numbers whole, times with a zone in the display zone (dates when every
    value is a local midnight). Also says whether any column was zoned."""
    import pandas as pd
    import pyarrow.types as kinds

    table = _table()
    columns: list[list[str]] = []
    zoned = False
    for field, column in zip(rows.schema, rows.columns):
        values = column.to_pylist()
        numeric = kinds.is_integer(field.type) or kinds.is_floating(field.type) or kinds.is_decimal(field.type)
        if kinds.is_timestamp(field.type) and field.type.tz is not None:
            zoned = True
            stamps = [None if v is None else pd.Timestamp(v).tz_convert(_zone()) for v in values]
            daily = all(v is None or v == v.normalize() for v in stamps)
            text = ["NULL" if v is None else _local(v, dates=daily) for v in stamps]
        else:
            text = ["NULL" if v is None else str(v) for v in values]
        _column(table, field.name, numeric=numeric)
        columns.append(text)
    for row in zip(*columns):
        table.add_row(*row)
    return table, zoned


@main.group("maintain", cls=_Group)
def maintain() -> None:
    """Keep the store tidy and sound: compact, clean-tmp, prune, verify.

    Safe while backtests read the store: rewrites take the series' lock, publish the new file
    before removing the old ones, and readers retry. Commands that delete have --dry-run.

    \b
    Example: lumibot-duckdb maintain verify --store ./bars
    """


def _selection(function: Any) -> Any:
    for option in reversed([
        click.option("--source", default=None, help="Only series of this source (polygon, yahoo, ingest…)."),
        click.option("--symbol", default=None, help="Only series of this symbol."),
        click.option("--timeframe", default=None, help="Only series of this timeframe (minute, hour, day)."),
    ]):
        function = option(function)
    return function


@maintain.command("compact")
@_selection
@click.option("--dry-run", is_flag=True, help="Only say which series would be rewritten.")
@STORE_OPTION
def maintain_compact(source: str | None, symbol: str | None, timeframe: str | None, dry_run: bool,
                     store_dir: Path | None) -> None:
    """Rewrite fragmented or overlapping partitions as one sorted file per covered range.

    Every bar is kept; where two files overlap, the newer file's bars win (as on every read).

    \b
    Example: lumibot-duckdb maintain compact --source polygon --store ./bars
    """
    from lumibot_duckdb.store.maintenance import compact

    with _existing_store(store_dir) as store:
        report = compact(store, source=source, symbol=symbol, timeframe=timeframe, dry_run=dry_run)
    verb = "would rewrite" if dry_run else "rewrote"
    click.echo(f"{report.series} series checked, {verb} {len(report.rewritten)}: "
               f"{report.files_before:,} files before, {report.files_after:,} after.")
    for name in report.rewritten:
        click.echo(f"  {name}")


@maintain.command("clean-tmp")
@click.option("--older-than", default="1h", show_default=True,
              help="Remove temporary files not modified for this long (30m, 2h, 1d); younger ones may be live.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@STORE_OPTION
def maintain_clean_tmp(older_than: str, dry_run: bool, store_dir: Path | None) -> None:
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
def maintain_prune(before: str | None, source: str | None, symbol: str | None, timeframe: str | None,
                   dry_run: bool, yes: bool, store_dir: Path | None) -> None:
    """Remove old bars (before a date) or whole series (of a source, symbol or timeframe).

    The coverage of removed time goes with the bars, so a backtest that asks for it fetches it
    again. A file that straddles --before is rewritten to keep the later bars.

    \b
    Example: lumibot-duckdb maintain prune --before 2020-01-01 --source polygon --dry-run
    """
    from lumibot_duckdb.store.maintenance import prune

    with _existing_store(store_dir) as store:
        plan = prune(store, before=before, source=source, symbol=symbol, timeframe=timeframe, dry_run=True)
        if dry_run or plan.series == 0 or (plan.files_removed + plan.files_rewritten) == 0:
            click.echo(f"{plan.series} series selected: would remove {plan.files_removed} file(s), rewrite "
                       f"{plan.files_rewritten}, {plan.bars_removed:,} bar(s).")
            for line in plan.details:
                click.echo(f"  {line}")
            return
        if not yes:
            click.confirm(f"Remove {plan.bars_removed:,} bar(s) from {plan.series} series?", abort=True)
        report = prune(store, before=before, source=source, symbol=symbol, timeframe=timeframe)
    click.echo(f"{report.series} series: removed {report.files_removed} file(s), rewrote {report.files_rewritten}, "
               f"{report.bars_removed:,} bar(s) gone.")


@maintain.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@STORE_OPTION
def maintain_verify(as_json: bool, store_dir: Path | None) -> None:
    """Read every file and check the store: names, partitions, schema, series, covered ranges,
    overlapping files that disagree. Changes nothing. Exits 1 when an error is found (warnings:
    quarantined files, leftover temporary files, overlaps that agree, do not fail).

    \b
    Example: lumibot-duckdb maintain verify --store ./bars && echo sound
    """
    import json

    from lumibot_duckdb.store.maintenance import verify

    with _existing_store(store_dir) as store:
        report = verify(store)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for problem in report.problems:
            click.echo(f"{problem.severity.upper():7} {problem.kind:<20} {problem.path}\n        {problem.message}")
        click.echo(f"{report.files_checked:,} file(s) of {report.series_checked} series checked: "
                   f"{len(report.errors)} error(s), {len(report.problems) - len(report.errors)} warning(s).")
    if not report.ok:
        raise SystemExit(1)




# -- demo -------------------------------------------------------------------------------------------
@main.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the caches of the runs here (default: a temporary folder, removed afterwards).")
@click.option("--source", type=click.Choice(["polygon", "yahoo", "alpaca", "ccxt"]), default="polygon",
              show_default=True, help="The data source to compare (its provider is emulated offline).")
def demo(workdir: Path | None, source: str) -> None:
    """Offline A/B backtest on sample data: Lumibot's legacy data path beside the DuckDB path.

    Runs a daily momentum strategy over four symbols (crypto pairs on CCXT) of a built-in
    synthetic market (no API key, no network), cold, warm and on a window shifted by a month, in
    fresh processes, and prints wall time, data-layer time, provider requests, memory, disk use
    and whether fills and final portfolio value are identical (or differ only by a declared
    legacy defect).

    \b
    Example: lumibot-duckdb demo --source ccxt --workdir ./demo-run
    """
    import dataclasses

    from lumibot_duckdb.ab.harness import RunResult, Scenario, compare
    from lumibot_duckdb.ab.harness import demo as run_demo

    scenario = Scenario.momentum()
    if source != "polygon":
        scenario = dataclasses.replace(scenario, source=source, name=f"{scenario.name} ({source})")
    if source == "ccxt":
        scenario = dataclasses.replace(scenario, parameters={
            **scenario.parameters, "symbols": ["BTC", "ETH", "SOL", "ADA"], "asset_type": "crypto", "quote": "USDT"})

    click.echo("Running 6 offline backtests (legacy and DuckDB; cold, warm, shifted window), about a minute…",
               err=True)
    def progress(run: RunResult) -> None:
        click.echo(f"  {run.variant:<12} {run.phase:<8} {run.wall_seconds:6.1f} s", err=True)

    results, text = run_demo(workdir, scenario=scenario, progress=progress)
    click.echo(text)
    if any(not (p.identical or p.declared) for p in compare(results)):
        raise click.ClickException("legacy and DuckDB results differ (see above)")
