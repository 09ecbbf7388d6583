"""Read-only SQL over the store: ``market_data``, ``symbols``, ``data_sources``, ``coverage``, ``files``.

>>> table = query(store, "SELECT symbol, count(*) AS bars FROM market_data GROUP BY ALL")  # doctest: +SKIP

What "read-only" means here, and how it is enforced (two independent layers):

1. **The statement.** DuckDB's own parser splits the text (``extract_statements``) and only one
   ``SELECT`` (which includes ``WITH``, ``VALUES``, ``FROM t``, ``DESCRIBE``, ``SHOW``,
   ``SUMMARIZE``) or one ``EXPLAIN [ANALYZE]`` of a ``SELECT`` is run. Everything else is refused
   before execution, with the statement's kind in the message: INSERT/UPDATE/DELETE/MERGE,
   CREATE/DROP/ALTER, COPY, EXPORT/IMPORT, ATTACH/DETACH/USE, INSTALL/LOAD, SET/RESET/PRAGMA,
   CALL, CHECKPOINT/VACUUM/ANALYZE, transactions, PREPARE/EXECUTE, and several statements at
   once (``SELECT 1; DROP …``).
2. **The connection.** Queries run on a DuckDB database of their own (not the process-wide one
   the store reads through), configured before the first query and then locked
   (``lock_configuration``): ``enable_external_access = false`` with ``allowed_directories`` =
   the store folder only, no extension auto-install or auto-load, UTC. So even a ``SELECT`` that
   calls a table function cannot reach another file or the network: ``read_text('/etc/passwd')``,
   ``read_csv('https://…')`` and ``glob('/home/*')`` fail with DuckDB's permission error.
   (Decision: reading files *inside* the store folder, e.g. ``read_parquet`` of one bar file, is
   allowed — it is the store's own data; nothing outside it is readable.) ``query('…')`` only
   accepts a SELECT (DuckDB's rule), and DuckDB has no ``SELECT … INTO``.

   Within layer 1, a SELECT's syntax tree (``json_serialize_sql``) is also checked: DuckDB 2 parses
   ``WITH x AS (COPY (…) TO 'file') SELECT …`` and ``WITH x AS (INSERT/UPDATE/DELETE … RETURNING *)
   SELECT …`` as SELECT statements and runs them — the COPY one could write a file *into* the
   store folder (which layer 2 must allow for reading). Only SELECT, set-operation and CTE nodes
   may appear.

The SQL analytics macros of :mod:`lumibot_duckdb.sql.macros` (``sma``, ``ema``, ``rsi``…) are
registered on every connection made here.

**Bounded** (:class:`Limits`): a statement run by :func:`query` or :func:`stream` is interrupted after
``seconds`` (60 s by default; DuckDB's ``interrupt`` from a timer thread), DuckDB may use at most
``memory`` (``memory_limit``; by default a quarter of the machine's memory, at most 2 GiB) and spill at
most ``temp`` to disk (``max_temp_directory_size``, 4 GiB), and the rows :func:`query` hands back may take
at most ``memory`` too (:func:`stream` hands them on batch by batch and holds none). Hitting a limit is
a :class:`~lumibot_duckdb.errors.QueryLimitError`, one line saying which limit and how to raise it.

**Every value prints**: with ``printable=True`` (the CLI's table, CSV and JSON), columns whose DuckDB
type Arrow or Python cannot render faithfully (``BIGNUM``, ``BIT``, ``GEOMETRY``, ``TIME WITH TIME
ZONE``, unions, nested values holding times) come as DuckDB's own text, and times outside Python's
range (a timestamp in year 290000, ``infinity``) as ISO text (:func:`python_values`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lumibot_duckdb.errors import ConfigError, QueryLimitError, StoreError
from lumibot_duckdb.sql.macros import our_message, register
from lumibot_duckdb.store.store import DuckDBDataStorage
from lumibot_duckdb.store.views import VIEWS

FORMATS = ("table", "csv", "json", "parquet")
TABLE_LIMIT = 50
"""Rows shown by default when printing a table (other formats return every row unless limited)."""

_READ_STATEMENTS = {duckdb.StatementType.SELECT}
_EXPLAIN = re.compile(r"^\s*explain\s+(?:analy[sz]e\s+)?", re.IGNORECASE)
_WHAT = {
    "INSERT": "it would insert rows", "UPDATE": "it would change rows", "DELETE": "it would delete rows",
    "MERGE_INTO": "it would change rows", "CREATE": "it would create an object", "CREATE_FUNC": "it would create "
    "a function", "DROP": "it would drop an object", "ALTER": "it would alter an object",
    "COPY": "it would write or read files (COPY)", "COPY_DATABASE": "it would copy a database",
    "EXPORT": "it would write files (EXPORT)", "ATTACH": "it would open another database",
    "DETACH": "it would detach a database", "LOAD": "it would install or load an extension",
    "EXTENSION": "it would install an extension", "SET": "it would change a setting",
    "VARIABLE_SET": "it would set a variable", "PRAGMA": "it would run a PRAGMA", "CALL": "it would call a procedure",
    "VACUUM": "it would vacuum", "ANALYZE": "it would analyze tables", "TRANSACTION": "it would control transactions",
    "PREPARE": "it would prepare a statement", "EXECUTE": "it would execute a prepared statement",
    "MULTI": "it expands into several statements",
}


def _machine_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def default_memory() -> int:
    """A quarter of the machine's memory, at most 2 GiB (a laptop running a backtest beside it survives)."""
    total = _machine_memory()
    return min(2 << 30, total // 4) if total else 2 << 30


@dataclass(frozen=True)
class Limits:
    """What one statement may take. ``None`` lifts a limit (for ``memory``: DuckDB's own default, 80 % of RAM,
    and no cap on the rows held)."""

    seconds: float | None = 60.0
    memory: int | None = field(default_factory=default_memory)
    temp: int | None = 4 << 30
    batch_rows: int = 65_536

    def __post_init__(self) -> None:
        for name in ("seconds", "memory", "temp"):
            value = getattr(self, name)
            if value is not None and not (value > 0):
                raise ConfigError(f"Limits.{name}={value!r} must be positive (None for no limit).")


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query (an Arrow table) and whether ``limit`` cut some off."""

    table: pa.Table
    truncated: bool

    def to_pandas(self) -> Any:
        return self.table.to_pandas()


def read_only_statement(sql: str, /) -> str:
    """The one read-only statement in ``sql``, or :class:`ConfigError` saying why it is refused."""
    if not isinstance(sql, str):
        raise ConfigError(f"SQL must be text, not {type(sql).__name__}.")
    with contextlib.closing(duckdb.connect(":memory:")) as parser:  # parsing only: nothing runs here
        return _read_only_statement(parser, sql)


def _read_only_statement(parser: duckdb.DuckDBPyConnection, sql: str) -> str:
    statements = _parse(parser, sql)
    if not statements:
        raise ConfigError("No SQL statement given. Example: SELECT * FROM symbols")
    if len(statements) > 1:
        kinds = ", ".join(_kind(s) for s in statements)
        raise ConfigError(f"Refused: {len(statements)} statements ({kinds}); db-query runs exactly one read-only "
                          "statement (a SELECT). Run them one at a time.")
    statement = statements[0]
    if statement.type in _READ_STATEMENTS:
        _check_tree(parser, str(statement.query))
        return str(statement.query)
    if statement.type == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN.sub("", str(statement.query), count=1)
        inner_statements = _parse(parser, inner) if inner != str(statement.query) else []
        if len(inner_statements) == 1 and inner_statements[0].type in _READ_STATEMENTS:
            _check_tree(parser, inner)
            return str(statement.query)
        raise ConfigError("Refused: only EXPLAIN [ANALYZE] of a single SELECT is allowed (no options, no other "
                          "statement kinds) — the store is read-only here.")
    kind = _kind(statement)
    reason = _WHAT.get(kind, "it is not a SELECT")
    raise ConfigError(f"Refused: {kind} statement — {reason}; db-query is read-only (one SELECT over "
                      f"{', '.join(VIEWS)}). To change the store use ingest, maintain or the Python API.")


def connect(store: DuckDBDataStorage, /, *, analytics: bool = True,
            limits: Limits | None = None) -> duckdb.DuckDBPyConnection:
    """A locked-down DuckDB connection with the store's views (and the analytics macros).

    A new in-memory database per call (~50 ms with the views and macros): its file-system access
    is limited to the store folder and its configuration is locked, which cannot be done on the
    process-wide database that backtests read through. Close it when done. Statements you run on
    it yourself are not checked (layer 2 still holds); run untrusted SQL through :func:`query`.
    ``limits`` sets DuckDB's memory and spill limits (its time limit is :func:`query`'s to enforce).
    """
    try:
        con = duckdb.connect(":memory:", config={"python_enable_replacements": False,
                                                 "autoinstall_known_extensions": False,
                                                 "autoload_known_extensions": False})
    except duckdb.Error as exc:
        raise StoreError(f"DuckDB could not start an in-memory database: {_one_line(exc)}") from exc
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET temp_directory = ?", [str(Path(tempfile.gettempdir()) / f"lumibot-duckdb-{os.getpid()}")])
        if limits is not None and limits.memory is not None:
            con.execute("SET memory_limit = ?", [f"{limits.memory}B"])
        if limits is not None and limits.temp is not None:
            con.execute("SET max_temp_directory_size = ?", [f"{limits.temp}B"])
        store.add_views(con)
        if analytics:
            register(con, where=store.describe())
        con.execute("SET allowed_directories = ?", [_allowed_directories(store.root)])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"Could not open the views of {store.root}: {_one_line(exc)}") from exc
    return con


@contextlib.contextmanager
def connection(store: DuckDBDataStorage, /, *, analytics: bool = True,
               limits: Limits | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(store, analytics=analytics, limits=limits)
    try:
        yield con
    finally:
        con.close()


def query(store: DuckDBDataStorage, sql: str, /, *, params: Sequence[Any] | None = None,
          limit: int | None = None, limits: Limits | None = None, printable: bool = False) -> QueryResult:
    """Run one read-only statement over the store and return its rows (at most ``limit``, if given).

    ``limits`` bound its time, DuckDB's memory and spill, and the size of the rows returned (default
    :class:`Limits`); ``printable=True`` returns columns Arrow or Python cannot render as text (module
    docstring). Raises :class:`ConfigError` for a refused statement or SQL DuckDB cannot run,
    :class:`QueryLimitError` when a limit is hit (one line, no traceback), :class:`StoreError` when
    the store cannot be read.
    """
    limits = limits or Limits()
    with stream(store, sql, params=params, limit=limit, limits=limits, printable=printable) as (schema, batches):
        held: list[pa.RecordBatch] = []
        size = 0
        for batch in batches:
            size += batch.nbytes
            if limits.memory is not None and size > limits.memory:
                raise QueryLimitError(
                    f"The result is larger than the memory limit ({_bytes(limits.memory)}); stopped after "
                    f"{sum(b.num_rows for b in held):,} rows. Add a LIMIT or aggregate, write it to a file "
                    "(--format parquet -o FILE streams it), or raise --memory-limit.")
            held.append(batch)
        table = pa.Table.from_batches(held, schema=schema)
    if limit and table.num_rows > limit:
        return QueryResult(table.slice(0, limit), True)
    return QueryResult(table, False)


@contextlib.contextmanager
def stream(store: DuckDBDataStorage, sql: str, /, *, params: Sequence[Any] | None = None, limit: int | None = None,
           limits: Limits | None = None,
           printable: bool = False) -> Iterator[tuple[pa.Schema, Iterator[pa.RecordBatch]]]:
    """Run one read-only statement and hand on its rows batch by batch, holding none (for output to a file or a
    pipe). Yields ``(schema, batches)``; with ``limit``, at most ``limit + 1`` rows come (the last one says
    "more exist"). Errors and limits as :func:`query`; the time limit covers reading every batch."""
    if limit is not None and limit < 0:
        raise ConfigError(f"limit={limit} must be 0 or more (0 = no limit).")
    limits = limits or Limits()
    statement = read_only_statement(sql)
    with connection(store, limits=limits) as con:
        fired = threading.Event()

        def interrupt() -> None:
            fired.set()
            con.interrupt()

        timer = threading.Timer(limits.seconds, interrupt) if limits.seconds is not None else None
        started = time.perf_counter()
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            with _sql_errors(store, limits, fired, started):
                relation = con.sql(statement, params=list(params) if params else None)
                if relation is None:  # not a query after all (cannot happen for SELECT, kept as a guard)
                    raise ConfigError("The statement returns no rows.")
                if printable:
                    relation = _printable(relation)
                if limit:
                    relation = relation.limit(limit + 1)
                reader = relation.to_arrow_reader(limits.batch_rows)

            def batches() -> Iterator[pa.RecordBatch]:
                with _sql_errors(store, limits, fired, started):
                    yield from reader

            yield reader.schema, batches()
        finally:
            if timer is not None:
                timer.cancel()


@contextlib.contextmanager
def _sql_errors(store: DuckDBDataStorage, limits: Limits, fired: threading.Event, started: float) -> Iterator[None]:
    """DuckDB's errors (and Arrow's, for errors met while reading batches) as one-line errors of ours."""
    try:
        yield
    except duckdb.PermissionException as exc:
        raise ConfigError(f"Refused by the read-only connection: {_one_line(exc)} (only files of the store "
                          f"folder {store.root} can be read).") from exc
    except (duckdb.Error, OSError, pa.ArrowException) as exc:
        text = _one_line(exc)
        if fired.is_set() or isinstance(exc, duckdb.InterruptException):
            raise QueryLimitError(f"Stopped after {time.perf_counter() - started:.1f} s: the time limit is "
                                  f"{limits.seconds:g} s. Narrow the query (a WHERE on ts or symbol, a LIMIT) or "
                                  "raise --timeout (0 = no limit).") from None
        if isinstance(exc, duckdb.OutOfMemoryException) or "Out of Memory" in text:
            raise QueryLimitError(f"Stopped: the query needs more than its memory limit "
                                  f"({_bytes(limits.memory)}) and {_bytes(limits.temp)} of spill files "
                                  f"({text}). Narrow the query, or raise --memory-limit / --max-temp.") from None
        raise ConfigError(our_message(exc) or f"SQL error: {_with_hint(exc, text)}") from exc


_TEXT_TYPES = re.compile(r"\b(BIGNUM|VARINT|BIT|GEOMETRY|TIME WITH TIME ZONE|UNION)\b")
_TEMPORAL = re.compile(r"\b(DATE|TIME|TIME_NS|TIMESTAMP\w*|INTERVAL)\b")


def _printable(relation: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """``relation`` with every column Arrow or Python cannot render faithfully cast to DuckDB's own text."""
    types = [str(t) for t in relation.types]
    text = [bool(_TEXT_TYPES.search(t)) or (_nested(t) and bool(_TEMPORAL.search(t))) for t in types]
    if not any(text):
        return relation
    columns = []
    for i, (name, as_text) in enumerate(zip(relation.columns, text), start=1):
        quoted = '"' + name.replace('"', '""') + '"'
        columns.append(f"CAST(#{i} AS VARCHAR) AS {quoted}" if as_text else f"#{i} AS {quoted}")
    return relation.select(", ".join(columns))


def _nested(type_name: str) -> bool:
    return type_name.endswith("]") or type_name.startswith(("STRUCT", "MAP", "UNION"))


def python_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """The values of an Arrow column as Python objects; times Python cannot hold (before year 1 or after 9999,
    a 24:00 time) as ISO text, anything else Python cannot convert as Arrow's text of it."""
    kind = column.type
    if pa.types.is_time(kind) and _past_midnight(column):
        return _temporal_text(column)  # (Python has no 24:00; pyarrow would wrap it to 00:00 silently)
    try:
        return column.to_pylist()
    except (OverflowError, ValueError, pa.ArrowException):
        pass
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind):
        return _temporal_text(column)
    values: list[Any] = []
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        for scalar in chunk:
            try:
                values.append(scalar.as_py())
            except (OverflowError, ValueError, pa.ArrowException):
                values.append(str(scalar))
    return values


def _past_midnight(column: pa.ChunkedArray | pa.Array) -> bool:
    per_day = 86_400 * {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[column.type.unit]
    raw = column.cast(pa.int64())
    top = pc.max(raw).as_py() if len(raw) else None
    return top is not None and top >= per_day


def _temporal_text(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    kind = column.type
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_timestamp(kind):
        raw = array.cast(pa.int64()).fill_null(0).to_numpy()
        suffix = "+00:00" if kind.tz else ""
        rendered = [_INFINITY.get(int(r)) or f"{t}{suffix}"
                    for r, t in zip(raw, np.datetime_as_string(raw.astype(f"datetime64[{kind.unit}]")))]
    elif pa.types.is_date(kind):
        if kind == pa.date32():
            days = array.cast(pa.int32()).fill_null(0).to_numpy().astype("int64")
            special = _DATE_INFINITY
        else:
            days = array.cast(pa.int64()).fill_null(0).to_numpy() // 86_400_000
            special = {}
        rendered = [special.get(int(d)) or str(t) for d, t in zip(days, np.datetime_as_string(
            days.astype("datetime64[D]")))]
    else:
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[kind.unit]
        digits = len(str(per_second)) - 1
        rendered = []
        for value in array.cast(pa.int64()).fill_null(0).to_numpy():
            seconds, fraction = divmod(int(value), per_second)
            hours, rest = divmod(seconds, 3600)
            text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
            rendered.append(text + (f".{fraction:0{digits}d}" if fraction else ""))
    return [r if ok else None for r, ok in zip(rendered, valid)]


_INFINITY = {2**63 - 1: "infinity", -(2**63 - 1): "-infinity"}
"""How DuckDB hands its infinite timestamps to Arrow (the largest and smallest int64)."""
_DATE_INFINITY = {2**31 - 1: "infinity", -(2**31 - 1): "-infinity"}


def _csv_values(column: pa.Array) -> list[Any]:
    """:func:`python_values` written as pandas writes CSV (NaN as an empty field, like NULL)."""
    return ["" if isinstance(v, float) and v != v else v for v in python_values(column)]


def python_rows(table: pa.Table) -> list[dict[str, Any]]:
    """``table``'s rows as dicts of Python values (:func:`python_values`), column names as keys."""
    columns = [python_values(table.column(i)) for i in range(table.num_columns)]
    return [dict(zip(table.column_names, row)) for row in zip(*columns)]


def _bytes(amount: float | None) -> str:
    if amount is None:
        return "no limit"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:,.0f} {unit}" if unit == "B" else f"{amount:,.1f} {unit}"
        amount /= 1024
    return f"{amount:,.1f} GiB"


def write_result(table: pa.Table, /, *, fmt: str, output: str | os.PathLike[str] | None = None) -> str | None:
    """Write ``table`` as CSV, JSON (an array of objects) or Parquet to ``output``; without ``output``
    return the CSV/JSON text. Timestamps are ISO 8601 in UTC."""
    if output is None and fmt != "parquet":
        buffer = io.StringIO()
        write_stream(table.schema, iter(table.to_batches()), fmt=fmt, out=buffer)
        return buffer.getvalue()
    write_stream(table.schema, iter(table.to_batches()), fmt=fmt, output=output)
    return None


def write_stream(schema: pa.Schema, batches: Iterator[pa.RecordBatch], /, *, fmt: str,
                 output: str | os.PathLike[str] | None = None, out: Any = None) -> int:
    """Write rows batch by batch as CSV, JSON (an array of objects) or Parquet, to the file ``output`` (whole
    or not at all: written beside it, renamed when complete) or to the text stream ``out``. Returns the rows
    written. Every value is written (:func:`python_values`); timestamps are ISO 8601 in UTC."""
    if fmt not in ("csv", "json", "parquet"):
        raise ConfigError(f"Unknown format {fmt!r}; use one of csv, json, parquet (or table for the terminal).")
    if fmt == "parquet" and output is None:
        raise ConfigError("Parquet is binary: give a file with --output FILE.")
    if output is None:
        if out is None:
            raise ConfigError("write_stream needs output= (a file) or out= (a text stream).")
        return _write_text(schema, batches, fmt, out)
    target = Path(output)
    if target.is_dir():
        raise ConfigError(f"--output {target} is a folder; give a file name.")
    if not target.parent.exists():
        raise ConfigError(f"The folder of --output {target} does not exist.")
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        rows = _write_file(schema, batches, fmt, partial)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return rows


def _write_file(schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str, partial: Path) -> int:
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            rows = 0
            with pq.ParquetWriter(str(partial), schema, compression="zstd") as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        else:
            with open(partial, "w", newline="") as handle:
                rows = _write_text(schema, batches, fmt, handle)
    except pa.ArrowException as exc:
        raise ConfigError(f"Cannot write the result as {fmt}: {_one_line(exc)}. CAST such columns to VARCHAR in "
                          "the query, or use --format csv or json (they write every type).") from exc
    return rows


def _write_text(schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str, out: Any) -> int:
    rows = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(schema.names)
        for batch in batches:
            try:  # pandas' CSV writer where it can hold every value (the usual case: several times faster)
                frame = batch.to_pandas()
            except (OverflowError, ValueError, pa.ArrowException):
                writer.writerows(zip(*(_csv_values(column) for column in batch.columns)))
            else:
                out.write(frame.to_csv(header=False, index=False, lineterminator="\n"))  # (one write a batch)
            rows += batch.num_rows
        return rows
    out.write("[")
    for batch in batches:
        for row in python_rows(pa.Table.from_batches([batch])):
            out.write(("," if rows else "") + json.dumps(row, default=_json_default, separators=(",", ":")))
            rows += 1
    out.write("]\n")
    return rows


def _json_default(value: object) -> object:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    import decimal

    if isinstance(value, decimal.Decimal):  # (an integral one, e.g. a HUGEINT, stays exact)
        return int(value) if value.is_finite() and value == value.to_integral_value() else float(value)
    return str(value)


def _parse(parser: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        return list(parser.extract_statements(sql))
    except duckdb.Error as exc:
        raise ConfigError(f"SQL error: {_one_line(exc)}") from exc


def _check_tree(parser: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse a SELECT that holds a data-modifying or COPY part (DuckDB 2 runs ``WITH x AS (COPY … TO
    'file') SELECT …`` and ``WITH x AS (INSERT … RETURNING *) SELECT …`` as SELECT statements).

    The statement's syntax tree (``json_serialize_sql``) may only contain SELECT, set-operation
    and CTE nodes; a tree DuckDB cannot serialize is refused too (it cannot be checked).
    """
    try:
        row = parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    except duckdb.Error as exc:
        raise ConfigError(f"Refused: the statement cannot be checked for writes ({_one_line(exc)}).") from exc
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        raise ConfigError(f"Refused: the statement cannot be checked for writes "
                          f"({tree.get('error_message', 'DuckDB could not serialize it')}); "
                          "write it as a plain SELECT.")
    found: set[str] = set()
    _node_types(tree, found)
    writing = sorted(found - _READ_NODES)
    if writing:
        parts = ", ".join(t.removesuffix("_QUERY_NODE").removesuffix("_NODE") for t in writing)
        raise ConfigError(f"Refused: the SELECT contains a {parts} part (e.g. inside WITH); db-query is read-only "
                          "and runs plain SELECTs only.")


_READ_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}


def _node_types(value: object, found: set[str]) -> None:
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind.endswith("_NODE"):
            found.add(kind)
        for item in value.values():
            _node_types(item, found)
    elif isinstance(value, list):
        for item in value:
            _node_types(item, found)


def _kind(statement: Any) -> str:
    return str(statement.type).rsplit(".", 1)[-1]


def _arrow(result: Any) -> pa.Table:
    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table  # DuckDB 2.x, 1.x
    table = fetch()
    return table if isinstance(table, pa.Table) else table.read_all()


def _allowed_directories(root: Path) -> list[str]:
    found = {os.path.abspath(root), os.path.realpath(root)}
    return sorted(path.rstrip(os.sep) + os.sep for path in found)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_HINT = re.compile(r"^(Did you mean|Candidate bindings)\b")
_MISSING_TABLE = re.compile(r"^Catalog Error: Table with name \S+ does not exist")


def _with_hint(exc: BaseException, first: str) -> str:
    """``first`` (the error's first line) with DuckDB's own suggestion from the lines after it ("Did you mean
    "market_data"?", "Candidate bindings: …"), unless it points at a view of ours a user is not meant to name
    (``_bar_rows``); a table the store lacks also lists the views it has."""
    hint = next((line.strip() for line in str(exc).splitlines()[1:] if _HINT.match(line.strip())), "")
    if re.search(r'"_', hint):
        hint = ""
    if _MISSING_TABLE.match(first):
        hint = f"{hint} The store's views: {', '.join(VIEWS)}.".strip()
    return f"{first} {hint}" if hint else first
