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
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from lumibot_duckdb.errors import ConfigError, StoreError
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


def connect(store: DuckDBDataStorage, /, *, analytics: bool = True) -> duckdb.DuckDBPyConnection:
    """A locked-down DuckDB connection with the store's views (and the analytics macros).

    A new in-memory database per call (~50 ms with the views and macros): its file-system access
    is limited to the store folder and its configuration is locked, which cannot be done on the
    process-wide database that backtests read through. Close it when done. Statements you run on
    it yourself are not checked (layer 2 still holds); run untrusted SQL through :func:`query`.
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
def connection(store: DuckDBDataStorage, /, *, analytics: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(store, analytics=analytics)
    try:
        yield con
    finally:
        con.close()


def query(store: DuckDBDataStorage, sql: str, /, *, params: Sequence[Any] | None = None,
          limit: int | None = None) -> QueryResult:
    """Run one read-only statement over the store and return its rows (at most ``limit``, if given).

    Raises :class:`ConfigError` for a refused statement or SQL DuckDB cannot run (one line, no
    traceback), :class:`StoreError` when the store cannot be read.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit={limit} must be 0 or more (0 = no limit).")
    statement = read_only_statement(sql)
    with connection(store) as con:
        try:
            relation = con.sql(statement, params=list(params) if params else None)
            if relation is None:  # not a query after all (cannot happen for SELECT, kept as a guard)
                return QueryResult(pa.table({}), False)
            if limit:
                table = _arrow(relation.limit(limit + 1))
                return QueryResult(table.slice(0, limit), table.num_rows > limit)
            return QueryResult(_arrow(relation), False)
        except duckdb.PermissionException as exc:
            raise ConfigError(f"Refused by the read-only connection: {_one_line(exc)} (only files of the store "
                              f"folder {store.root} can be read).") from exc
        except duckdb.Error as exc:
            raise ConfigError(our_message(exc) or f"SQL error: {_one_line(exc)}") from exc


def write_result(table: pa.Table, /, *, fmt: str, output: str | os.PathLike[str] | None = None) -> str | None:
    """Write ``table`` as CSV, JSON (an array of objects) or Parquet to ``output``; without ``output``
    return the CSV/JSON text. Timestamps are ISO 8601 in UTC."""
    if fmt not in ("csv", "json", "parquet"):
        raise ConfigError(f"Unknown format {fmt!r}; use one of csv, json, parquet (or table for the terminal).")
    if fmt == "parquet" and output is None:
        raise ConfigError("Parquet is binary: give a file with --output FILE.")
    if output is not None:
        target = Path(output)
        if target.is_dir():
            raise ConfigError(f"--output {target} is a folder; give a file name.")
        if not target.parent.exists():
            raise ConfigError(f"The folder of --output {target} does not exist.")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, str(output), compression="zstd")
        return None
    text = _csv_text(table) if fmt == "csv" else _json_text(table)
    if output is None:
        return text
    Path(output).write_text(text)
    return None


def _csv_text(table: pa.Table) -> str:
    frame = table.to_pandas()
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def _json_text(table: pa.Table) -> str:
    rows = table.to_pylist()
    return json.dumps(rows, default=_json_default, indent=None, separators=(",", ":")) + "\n"


def _json_default(value: object) -> object:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    import decimal

    if isinstance(value, decimal.Decimal):
        return float(value)
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
