"""What proves a published file is the one that was written, and the one check every read and ``verify`` runs.

**The marks a file carries** (written by :meth:`LocalFolder.publish`):

* a **checksum of the whole file**: CRC-32 of every byte, footer included, as the last 8 hex digits of the
  file's token (``<16 hex digits: publish time><8 hex digits: CRC-32>``, :func:`sealed_token`). It is in the
  name, so listing a series already knows what each file must hash to, and a file cannot carry its own
  checksum wrongly;
* in the Parquet footer's key-value metadata: the series (``lumibot_duckdb.series``) and the covered range
  (``lumibot_duckdb.coverage``) the file was published for.

Files written before the checksum existed have a 22-digit token (publish time and 6 random digits) and are
**checked by what they have**: their footer marks, their schema, and a scan of their timestamps (and of their
key columns when they carry no series mark). ``lumibot-duckdb maintain seal`` checks them and gives them the
checksum (:func:`lumibot_duckdb.store.maintenance.seal`).

**The checks** (:func:`check_file`; a failed check is a :class:`Damage` with its kind and reason):

=====================  ==============================================================================
kind                   the file...
=====================  ==============================================================================
``unreadable``         cannot be opened or decoded as Parquet
``checksum``           does not hash to the checksum in its name (bit rot, a partial overwrite, an edit)
``schema``             lacks a column of the store's schema, has others, or holds one in another type
                       (e.g. ``ts`` as naive or nanosecond timestamps)
``wrong-series``       says (footer mark or key columns) it holds another series than its folder's
``coverage-mismatch``  says (footer mark) it answers for another range than its name
``outside-coverage``   holds bars outside the range its name covers
``unsorted``           holds bars out of time order
``duplicates``         holds two bars with the same timestamp
=====================  ==============================================================================

A file that passes the checksum is byte for byte what :meth:`DuckDBDataStorage.write` published, and that
path only publishes bars it validated (sorted, unique, inside the covered range, the store's schema), so a
sealed file needs no scan of its bars on the read path: the checksum and the footer marks are its whole
check. ``thorough=True`` (``maintain verify``) also decodes every column of every file and scans its
timestamps and key columns, sealed or not.

**Cost, measured** (``benchmarks/integrity.py``; a year of minute bars, 98,280 bars in a 3.1 MB file, page
cache warm): CRC-32 of the file 0.95 ms, the footer 0.28 ms, against 2.3-3.3 ms for one window read of it.
Buffers of 1 MiB or more are hashed by ISA-L (``isal``), the same CRC-32: 0.062 ms for 3.1 MB against zlib's
0.957 (medians, n=300, 2026-12-02); benchmarks/results/range_query.md has what it does to first reads.
Parquet's own page checksums were measured too: DuckDB does not verify them on read (a flipped data page is
served), and verifying them with pyarrow means decoding the whole file (12.8 ms), 13x the CRC of its bytes,
and they do not cover the footer. A file is checked once per process and again only when its size, mtime or
inode changes (:func:`checked`), so a backtest's later reads of a file cost one ``stat``.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lumibot_duckdb.store.coverage import Interval, SeriesKey, utc
from lumibot_duckdb.store.parquet import ParquetSource, read_footer
from lumibot_duckdb.store.schema import ARROW_SCHEMA, KEY_COLUMNS

_FAST_CRC_FROM = 1 << 20
"""Buffers this large or larger are hashed by ISA-L (``isal``): its import (~1.3 ms, 0.4 MB) is paid by a process
that hashes one, not by a backtest that reads only small files (zlib hashes 1 MiB in ~0.3 ms)."""
_FAST_CRC: list[Any] = []

SERIES_MARK = b"lumibot_duckdb.series"
COVERAGE_MARK = b"lumibot_duckdb.coverage"
_TIME_DIGITS = 16
_SEALED_DIGITS = _TIME_DIGITS + 8
_HEX = frozenset("0123456789abcdef")
_STRING_KINDS = (pa.string(), pa.large_string())


@dataclass(frozen=True)
class Damage:
    """Why a file cannot be served: ``kind`` (see the module's table) and a sentence saying what was found."""

    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def sealed_token(published: str, checksum: int) -> str:
    """The token of a file whose bytes hash to ``checksum``: the publish-time digits of ``published``, then the CRC."""
    return f"{published[:_TIME_DIGITS]}{checksum & 0xFFFFFFFF:08x}"


def token_checksum(token: str) -> int | None:
    """The CRC-32 a file's token says its bytes hash to, or None for a file written before checksums."""
    if len(token) != _SEALED_DIGITS or not set(token) <= _HEX:
        return None
    return int(token[_TIME_DIGITS:], 16)


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """zlib's CRC-32 of ``data``, continuing from ``value`` (ISA-L computes the same checksum ~14x faster: used
    for large buffers)."""
    if len(data) < _FAST_CRC_FROM:
        return zlib.crc32(data, value)
    if not _FAST_CRC:
        try:
            from isal.isal_zlib import crc32 as fast
        except ImportError:  # pragma: no cover - a platform isal has no wheel for
            fast = zlib.crc32
        _FAST_CRC.append(fast)
    return int(_FAST_CRC[0](data, value))


_CHUNK = 1 << 20
"""Bytes hashed at a time by :func:`file_checksum`."""


def file_checksum(path: str | os.PathLike[str]) -> int:
    """CRC-32 of every byte of the file at ``path``."""
    return _streamed_checksum(path)[0]


def _streamed_checksum(path: str | os.PathLike[str]) -> tuple[int, int]:
    """CRC-32 of every byte of the file at ``path``, and how many bytes it has: read a chunk at a time into one
    buffer, so that checking a file the read needs little of holds none of it (a whole file's bytes, once
    freed, stay in the process's heap)."""
    value, size = 0, 0
    chunk = bytearray(_CHUNK)
    view = memoryview(chunk)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(chunk):
            value = crc32(view[:count], value)
            size += count
    return value, size


Opened = dict[str, ParquetSource]
"""Files just checked and found sound, by path, open on the bytes the check read (see :func:`check_file`)."""


def check_file(path: str | os.PathLike[str], key: SeriesKey, interval: Interval, token: str, *,
               thorough: bool = False, opened: Opened | None = None) -> Damage | None:
    """The first reason the file at ``path`` (published for ``key`` over ``interval`` under ``token``) cannot be
    served, or None if it passes every check. Never raises for a damaged file; raises ``FileNotFoundError`` if
    the file is gone (another process compacted it away: not damage).

    ``opened``: where a sound file is put, open on the bytes the check read and hashed, for the read that
    follows to decode from them instead of reading the file again (the caller closes it: :func:`close_all`).
    """
    found, sound = _inspect(path, key, interval, token, thorough=thorough, first=True, keep=opened is not None)
    if sound is not None:
        if opened is not None:
            opened[os.fspath(path)] = sound
        else:
            sound.close()
    return found[0] if found else None


def inspect_file(path: str | os.PathLike[str], key: SeriesKey, interval: Interval, token: str, *,
                 thorough: bool = True, first: bool = False) -> list[Damage]:
    """Every reason the file cannot be served (just the first with ``first=True``); empty if it is sound."""
    found, sound = _inspect(path, key, interval, token, thorough=thorough, first=first)
    if sound is not None:
        sound.close()
    return found


def close_all(opened: Opened) -> None:
    """Close and forget the files of ``opened`` (the bytes they hold are freed)."""
    for parquet in opened.values():
        parquet.close()
    opened.clear()


def _inspect(path: str | os.PathLike[str], key: SeriesKey, interval: Interval, token: str, *,
             thorough: bool, first: bool, keep: bool = False) -> tuple[list[Damage], ParquetSource | None]:
    """What :func:`inspect_file` finds, and the file opened when it is sound (``keep``: on the bytes it hashed)."""
    found: list[Damage] = []
    sound = None
    try:
        sound = _check(Path(path), key, interval, token, thorough, found, first, keep)
        if sound is not None and not found:  # (the read that follows need not parse the footer again)
            read_footer.remember(os.fspath(path), sound.metadata)
            return found, sound
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes pyarrow or numpy raise is damage
        found.append(Damage("unreadable", f"cannot be read ({_first_line(exc)})"))
    if sound is not None:
        sound.close()
    return (found[:1] if first else found), None


def _check(path: Path, key: SeriesKey, interval: Interval, token: str, thorough: bool, found: list[Damage],
           first: bool, keep: bool) -> ParquetSource | None:
    """Append to ``found`` what is wrong with the file; return it opened when every check ran."""
    def failed(damage: Damage | None) -> bool:
        if damage is not None and all(d.kind != damage.kind for d in found):
            found.append(damage)
        return bool(found) and first

    expected = token_checksum(token)
    source: Any = str(path)
    if expected is not None:
        if keep:  # (the read that follows decodes from these bytes)
            data = path.read_bytes()
            actual, size = crc32(data), len(data)
            source = pa.BufferReader(data)
        else:
            actual, size = _streamed_checksum(path)
        if failed(None if actual == expected else Damage(
                "checksum", f"its bytes hash to {actual:08x}, not to the {expected:08x} in its name "
                            f"({size:,} bytes): it changed after it was written")):
            return None
    try:
        parquet = ParquetSource(source)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - not a Parquet file (truncated, garbage, another format)
        found.append(Damage("unreadable", f"is not a readable Parquet file ({_first_line(exc)})"))
        return None
    if failed(_schema(parquet.schema_arrow)) or found:  # (a foreign schema: nothing below can be read right)
        return None
    if failed(_marks(parquet, key, interval, sealed=expected is not None)):
        return None
    if failed(_statistics(parquet, interval)):
        return None
    if expected is not None and not thorough and not found:
        return parquet  # byte for byte what a validated publish wrote
    table = parquet.read(columns=None if thorough else ["ts"])
    if failed(_timestamps(table.column("ts"), interval)):
        return None
    if thorough or SERIES_MARK not in (parquet.schema_arrow.metadata or {}):
        if failed(_key_columns(table if thorough else parquet, key)):
            return None
    if thorough:  # DuckDB's Parquet reader is not pyarrow's: a file one decodes may be beyond the other
        failed(_duckdb_reads(path))
    return parquet


_DUCKDB: list[Any] = []
_DUCKDB_LOCK = threading.Lock()


def _duckdb_reads(path: Path) -> Damage | None:
    import duckdb

    with _DUCKDB_LOCK:
        if not _DUCKDB:
            _DUCKDB.append(duckdb.connect(":memory:", config={"python_enable_replacements": False}))
        try:
            _DUCKDB[0].execute("SELECT * FROM read_parquet(?)", [str(path)]).fetchnumpy()
        except duckdb.IOException:
            if not path.exists():
                raise FileNotFoundError(path) from None
            raise
        except duckdb.Error as exc:
            return Damage("unreadable", f"DuckDB cannot read it ({_first_line(exc)})")
    return None


def _schema(schema: pa.Schema) -> Damage | None:
    names = set(schema.names)
    missing = [f.name for f in ARROW_SCHEMA if f.name not in names]
    extra = sorted(names - set(ARROW_SCHEMA.names))
    if missing or extra:
        parts = ([f"lacks column(s) {missing}"] if missing else []) + ([f"has foreign column(s) {extra}"]
                                                                       if extra else [])
        return Damage("schema", f"{' and '.join(parts)}: it is not a file of this store's schema")
    for field in ARROW_SCHEMA:
        actual = schema.field(field.name).type
        if not _same_type(actual, field.type):
            return Damage("schema", f"column {field.name!r} is {actual}, not {_describe(field.type)}")
    return None


def _same_type(actual: pa.DataType, wanted: pa.DataType) -> bool:
    if pa.types.is_timestamp(wanted):
        return (pa.types.is_timestamp(actual) and actual.unit == wanted.unit
                and actual.tz in ("UTC", "Etc/UTC", "+00:00"))
    if pa.types.is_dictionary(wanted):  # key columns: dictionary-encoded strings (plain strings read the same)
        inner = actual.value_type if pa.types.is_dictionary(actual) else actual
        return any(inner == kind for kind in _STRING_KINDS)
    if wanted == pa.string():
        inner = actual.value_type if pa.types.is_dictionary(actual) else actual
        return any(inner == kind for kind in _STRING_KINDS)
    return bool(actual == wanted)


def _describe(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "timestamp[us, tz=UTC] (microseconds since the epoch, in UTC)"
    if pa.types.is_dictionary(kind):
        return "string"
    return str(kind)


def _marks(parquet: ParquetSource, key: SeriesKey, interval: Interval, *, sealed: bool) -> Damage | None:
    metadata = parquet.schema_arrow.metadata or {}
    series, coverage = metadata.get(SERIES_MARK), metadata.get(COVERAGE_MARK)
    if sealed and (series is None or coverage is None):
        return Damage("wrong-series", "carries a checksum but not the series and range marks every file this store "
                                      "writes has: it was not written by this store")
    if series is not None:
        try:
            recorded = json.loads(series)
            recorded_key = SeriesKey(**recorded) if isinstance(recorded, dict) else None
        except (TypeError, ValueError) as exc:
            return Damage("wrong-series", f"its series mark cannot be read ({_first_line(exc)})")
        if recorded_key != key:
            return Damage("wrong-series", f"holds bars of {recorded_key or recorded!r}, not of {key} (its folder)")
    if coverage is not None:
        try:
            start, end = json.loads(coverage)
            recorded_range = Interval(utc(start), utc(end))  # the store's own UTC stamps
        except (TypeError, ValueError) as exc:
            return Damage("coverage-mismatch", f"its range mark cannot be read ({_first_line(exc)})")
        if recorded_range != interval:
            return Damage("coverage-mismatch", f"was written for {recorded_range} but its name covers {interval}")
    return None


def _statistics(parquet: ParquetSource, interval: Interval) -> Damage | None:
    """Bars outside the named range, from the footer's min/max of ``ts`` (no bar is read)."""
    meta = parquet.metadata
    lo, hi = _micros(interval.start), _micros(interval.end)
    column = parquet.schema_arrow.get_field_index("ts")
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            continue
        if stats.physical_type != "INT64":
            continue
        first, last = int(stats.min_raw), int(stats.max_raw)
        if first < lo or last >= hi:
            return Damage("outside-coverage", f"holds bars from {_iso(first)} to {_iso(last)}, outside the range "
                                              f"its name covers {interval}")
    return None


def _timestamps(ts: pa.ChunkedArray, interval: Interval) -> Damage | None:
    if ts.null_count:
        return Damage("unreadable", f"{ts.null_count} bar(s) have no timestamp")
    values = ts.cast(pa.int64()).to_numpy() if len(ts) else np.empty(0, dtype="int64")
    if not len(values):
        return None
    lo, hi = _micros(interval.start), _micros(interval.end)
    outside = int(((values < lo) | (values >= hi)).sum())
    if outside:
        return Damage("outside-coverage", f"{outside} bar(s) lie outside the range its name covers {interval}")
    steps = np.diff(values)
    if (steps < 0).any():
        return Damage("unsorted", f"{int((steps < 0).sum())} bar(s) are earlier than the bar before them")
    if (steps == 0).any():
        return Damage("duplicates", f"{int((steps == 0).sum())} duplicated timestamp(s)")
    return None


def _key_columns(source: ParquetSource | pa.Table, key: SeriesKey) -> Damage | None:
    table = source if isinstance(source, pa.Table) else source.read(columns=list(KEY_COLUMNS))
    expected = key.as_dict()
    for name in KEY_COLUMNS:
        column = table.column(name)
        if column.null_count:
            return Damage("wrong-series", f"column {name} has {column.null_count} empty value(s)")
        if not len(column):
            continue
        values = set(pc.unique(column.cast(pa.string())).to_pylist())
        if values != {expected[name]}:
            shown = sorted(str(v) for v in values)[:3]
            return Damage("wrong-series", f"column {name} holds {shown}, but its folder is {key} "
                                          f"({name} {expected[name]!r})")
    return None


def _micros(stamp: Any) -> int:
    return int(stamp.value // 1000)


def _iso(micros: int) -> str:
    return str(np.datetime64(micros, "us")) + "Z"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- once per process -------------------------------------------------------------------------------
_CHECKED: collections.OrderedDict[str, tuple[int, int, int]] = collections.OrderedDict()
_CHECKED_LOCK = threading.Lock()
_CHECKED_MAX = 65_536


def checked(path: str | os.PathLike[str], key: SeriesKey, interval: Interval, token: str, *,
            opened: Opened | None = None) -> Damage | None:
    """:func:`check_file`, skipped for a file that passed it in this process and has not changed since
    (same size, mtime and inode). Raises ``FileNotFoundError`` if the file is gone. ``opened``: see
    :func:`check_file` (a file skipped is not put there)."""
    name = os.fspath(path)
    status = os.stat(name)
    identity = (status.st_size, status.st_mtime_ns, status.st_ino)
    with _CHECKED_LOCK:
        if _CHECKED.get(name) == identity:
            _CHECKED.move_to_end(name)
            return None
    damage = check_file(name, key, interval, token, opened=opened)
    if damage is None:
        with _CHECKED_LOCK:
            _CHECKED[name] = identity
            _CHECKED.move_to_end(name)
            while len(_CHECKED) > _CHECKED_MAX:
                _CHECKED.popitem(last=False)
    return damage


def known(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`checked` would pass ``path`` on a ``stat`` alone (it passed in this process, unchanged)."""
    name = os.fspath(path)
    try:
        status = os.stat(name)
    except OSError:
        return False
    with _CHECKED_LOCK:
        return _CHECKED.get(name) == (status.st_size, status.st_mtime_ns, status.st_ino)


def forget(path: str | os.PathLike[str]) -> None:
    """Drop ``path`` from the files known good in this process (it was quarantined or removed)."""
    with _CHECKED_LOCK:
        _CHECKED.pop(os.fspath(path), None)
