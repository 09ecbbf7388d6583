"""Damage a store's files the ways disks, tools and people do, to prove the store notices (tests, benchmarks).

It lives beside the folder backend because it damages that backend's files where they lie.

Each kind of :data:`DAMAGES` takes one published file of a series and leaves it damaged in place, the
way it would be found after a crash, a bad disk, a copy from elsewhere or a hand edit. With
``sealed=False`` the damaged content is left under a name without a checksum instead (as a file
written before checksums, or by another tool, would be): then the store must notice it by what the
file holds, not by its checksum.

>>> hit = damage(store, key, "duplicate-rows", sealed=False)        # doctest: +SKIP
>>> store.read(key, start, end)                                      # doctest: +SKIP
Traceback (most recent call last):
CorruptFileError: 1 damaged file(s) of ... set aside ... (... duplicates: 3 duplicated timestamp(s))
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey
from lumibot_duckdb.store.local import BarFile, file_name


@dataclass(frozen=True)
class Hit:
    """What :func:`damage` did: the file it damaged (now at ``path``) and the check that should catch it."""

    kind: str
    path: Path
    interval: Interval
    expected: str | None
    """The :class:`~lumibot_duckdb.store.integrity.Damage` kind the read path should report (None: nothing but a
    checksum could tell, and the file has none)."""


def _rewrite(table: pa.Table, path: Path) -> None:
    pq.write_table(table, str(path), compression="zstd")


def _table(bar_file: BarFile) -> pa.Table:
    return pq.read_table(bar_file.path)


def data_pages(path: Path) -> tuple[int, int]:
    """The byte range ``[start, end)`` of a Parquet file's column chunks (data and dictionary pages)."""
    meta = pq.read_metadata(path)
    starts, ends = [], []
    for group in range(meta.num_row_groups):
        for i in range(meta.num_columns):
            column = meta.row_group(group).column(i)
            first = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
            starts.append(first)
            ends.append(first + column.total_compressed_size)
    return min(starts), max(ends)


def flip_bit(path: Path, rng: random.Random, *, where: str = "data") -> int:
    """Flip one random bit of the file in its data pages (``where="data"``) or its footer; returns the offset."""
    data = bytearray(path.read_bytes())
    if where == "data":
        lo, hi = data_pages(path)
    else:
        footer = int.from_bytes(data[-8:-4], "little")
        lo, hi = len(data) - 8 - footer, len(data) - 8
    offset = rng.randrange(lo, hi)
    data[offset] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return offset


def _truncated(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    data = bar_file.path.read_bytes()
    bar_file.path.write_bytes(data[: len(data) // 2])


def _garbage(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    bar_file.path.write_bytes(b"<html>503 Service Unavailable</html>" * 20)


def _bit_flip(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    flip_bit(bar_file.path, rng, where="data")


def _footer_flip(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    flip_bit(bar_file.path, rng, where="footer")


def _foreign_schema(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    table = _table(bar_file)
    _rewrite(pa.table({"datetime": table.column("ts"), "price": table.column("close"),
                       "size": table.column("volume")}), bar_file.path)


def _missing_column(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    table = _table(bar_file)
    _rewrite(table.drop_columns(["volume"]), bar_file.path)


def _naive_ns_timestamps(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    table = _table(bar_file)
    ts = table.column("ts").cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("ns"))
    _rewrite(table.set_column(table.schema.get_field_index("ts"), "ts", ts), bar_file.path)


def _duplicate_rows(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    table = _table(bar_file)
    twice = min(3, table.num_rows)
    order = [i for i in range(twice) for _ in (0, 1)] + list(range(twice, table.num_rows))
    _rewrite(table.take(order).replace_schema_metadata(table.schema.metadata), bar_file.path)


def _unsorted(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    table = _table(bar_file)
    order = list(range(table.num_rows))
    order[0], order[-1] = order[-1], order[0]
    _rewrite(table.take(order).replace_schema_metadata(table.schema.metadata), bar_file.path)


def _values_changed(store: DuckDBDataStorage, bar_file: BarFile, rng: random.Random) -> None:
    """A plausible edit: every close 1 % higher, the file otherwise as written (marks kept)."""
    table = _table(bar_file)
    import pyarrow.compute as pc

    close = pc.multiply(table.column("close"), 1.01)
    _rewrite(table.set_column(table.schema.get_field_index("close"), "close", close), bar_file.path)


DAMAGES: dict[str, tuple[Callable[[DuckDBDataStorage, BarFile, random.Random], None], str, str]] = {
    "truncated": (_truncated, "unreadable", "half of the file (a crash while copying it)"),
    "garbage": (_garbage, "unreadable", "an HTML error page under the file's name"),
    "bit-flip": (_bit_flip, "", "one bit flipped in a data page (bit rot)"),
    "footer-flip": (_footer_flip, "", "one bit flipped in the footer"),
    "foreign-schema": (_foreign_schema, "schema", "a valid Parquet file of another layout (datetime, price, size)"),
    "missing-column": (_missing_column, "schema", "the file without its volume column"),
    "naive-ns-timestamps": (_naive_ns_timestamps, "schema", "ts as naive nanosecond timestamps (pandas' default)"),
    "duplicate-rows": (_duplicate_rows, "duplicates", "three bars stored twice"),
    "unsorted": (_unsorted, "unsorted", "the first and last bars swapped"),
    "values-changed": (_values_changed, "", "every close 1 % higher, a valid file otherwise"),
}
"""Damage done to a file in place: ``kind -> (function, what the read path reports unsealed, description)``.
In place, a sealed file is always caught by its checksum; unsealed, by the check named here ("" where
nothing but a checksum can tell: the content is still a valid file of the series)."""

MOVES = {
    "other-series": ("wrong-series", "another series' file copied into the series' folder, under its own name"),
    "other-series-unmarked": ("wrong-series", "another series' bars, without footer marks, under a valid name"),
    "shifted-range": ("coverage-mismatch", "the file renamed to claim a range 2 days later than its bars"),
}
"""Damage done by placing or renaming files: ``kind -> (what the read path reports, description)``."""

KINDS = (*DAMAGES, *MOVES)
UNSEALED_MAYBE = frozenset({"bit-flip", "footer-flip"})
"""Damage an unsealed file may or may not show: found when the flipped bit breaks decoding, served otherwise."""


def damage(store: DuckDBDataStorage, key: SeriesKey, kind: str, *, sealed: bool = True, seed: int = 0,
           other: SeriesKey | None = None, which: int = -1) -> Hit:
    """Damage the ``which``-th file (by token; default the newest with bars, else the newest) of ``key``.

    ``sealed=False`` leaves the result under a name without a checksum (same range, same publish time).
    ``other`` is the series whose file ``other-series`` copies in (required for it).
    """
    rng = random.Random(seed)
    files = store.files(key)
    if not files:
        raise ValueError(f"{key} has no file to damage")
    with_bars = [f for f in files if pq.read_metadata(f.path).num_rows]
    target = (with_bars or files)[which]
    if kind in DAMAGES:
        function, unsealed_check, _ = DAMAGES[kind]
        function(store, target, rng)
        path = target.path if sealed else _unseal(target)
        return Hit(kind, path, target.interval, "checksum" if sealed else (unsealed_check or None))
    if kind == "other-series":
        if other is None:
            raise ValueError("other-series needs other=<a series of the store with files>")
        source = store.files(other)[-1]
        placed = target.path.parent / source.path.name
        placed.write_bytes(source.path.read_bytes())
        hit = Hit(kind, placed, source.interval, "wrong-series")
        if not sealed:
            return Hit(kind, _unseal(BarFile(placed, key, target.partition, source.interval, source.token)),
                       source.interval, "wrong-series")
        return hit
    if kind == "other-series-unmarked":
        if other is None:
            raise ValueError("other-series-unmarked needs other=<a series of the store with files>")
        source = store.files(other)[-1]
        table = pq.read_table(source.path).replace_schema_metadata(None)
        path = target.path.parent / file_name(source.interval, _legacy_token(source.token))
        _rewrite(table, path)
        return Hit(kind, path, source.interval, "wrong-series")
    if kind == "shifted-range":
        import pandas as pd

        shift = pd.Timedelta(days=2)
        moved = Interval(target.interval.start + shift, target.interval.end + shift)
        token = target.token if sealed else _legacy_token(target.token)
        path = target.path.with_name(file_name(moved, token))
        os.replace(target.path, path)
        return Hit(kind, path, moved, "coverage-mismatch")
    raise ValueError(f"unknown damage {kind!r}; use one of {KINDS}")


def _legacy_token(token: str) -> str:
    """A token of the same publish time without a checksum (as files written before checksums have)."""
    return token[:16] + secrets.token_hex(3)


def _unseal(bar_file: BarFile) -> Path:
    path = bar_file.path.with_name(file_name(bar_file.interval, _legacy_token(bar_file.token)))
    os.replace(bar_file.path, path)
    return path


def reasons(store: DuckDBDataStorage) -> list[str]:
    """The reasons recorded beside every quarantined file of ``store``."""
    folder = store.backend.quarantine_dir
    return sorted(p.read_text().strip() for p in folder.glob("*.reason.txt")) if folder.is_dir() else []


def describe(kind: str) -> str:
    return DAMAGES[kind][2] if kind in DAMAGES else MOVES[kind][1]


__all__ = ["DAMAGES", "KINDS", "MOVES", "UNSEALED_MAYBE", "Hit", "damage", "data_pages", "describe", "flip_bit",
           "reasons"]
