"""Parquet files on a backtest's path: pyarrow's Parquet reader, without importing ``pyarrow.parquet``.

``import pyarrow.parquet`` also imports pyarrow's filesystem layer (its S3, GCS, Azure and HDFS bindings):
about 20 ms and 6 MB that every backtest process reading the store would pay, and Lumibot's legacy path
never does. The reader underneath, ``pyarrow._parquet.ParquetReader`` (what ``pyarrow.parquet.ParquetFile``
wraps), needs none of it, and the store's files are plain files of a flat schema, so :class:`ParquetSource`
is the little of ``ParquetFile`` the store reads with. A pyarrow without that reader gets
``pyarrow.parquet.ParquetFile`` itself: the same answers, at the import's cost.

Publishing a file (:func:`write_table`) uses pyarrow's writer the same way, ``pyarrow._parquet.ParquetWriter``
(what ``pyarrow.parquet.write_table`` drives), with the options ``pyarrow.parquet`` gives it: the same bytes, and a
backtest that fills the store pays neither the import (~14 ms) nor its ~5 MB. Exports and maintenance tools use
``pyarrow.parquet`` itself.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lumibot_duckdb.store.memory import arrow_pool

if TYPE_CHECKING:
    import pyarrow.parquet as pq

try:
    from pyarrow._parquet import ParquetReader as _Reader
except ImportError:  # pragma: no cover - a pyarrow that moved its reader: pyarrow.parquet's public one
    _Reader = None
try:
    from pyarrow._parquet import ParquetWriter as _Writer
except ImportError:  # pragma: no cover - a pyarrow that moved its writer: pyarrow.parquet's public one
    _Writer = None

_EXTENSIONS = [True]
"""Whether this pyarrow's reader takes ``arrow_extensions_enabled`` (pyarrow >= 17; ``ParquetFile``'s default)."""


class ParquetSource:
    """One Parquet file open for reading: a path, or a pyarrow ``NativeFile`` (e.g. ``pa.BufferReader``).

    ``metadata``: the file's footer when already known (it is then not read again). Closed on leaving a
    ``with`` block, or with :meth:`close`.
    """

    def __init__(self, source: Any, *, metadata: pq.FileMetaData | None = None) -> None:
        self._schema: pa.Schema | None = None
        if _Reader is None:  # pragma: no cover - see the module's docstring
            import pyarrow.parquet as pq

            self._file: Any = pq.ParquetFile(source, metadata=metadata)
            self._reader = self._file.reader
            return
        self._file = None
        self._owned = pa.OSFile(str(source), memory_pool=arrow_pool()) if not isinstance(source, pa.NativeFile) \
            else None
        self._reader = _Reader(memory_pool=arrow_pool())
        try:
            _open(self._reader, self._owned or source, metadata)
        except BaseException:
            self.close()
            raise

    @property
    def metadata(self) -> pq.FileMetaData:
        """The file's footer."""
        return self._reader.metadata

    @property
    def schema_arrow(self) -> pa.Schema:
        """The file's Arrow schema (with its key-value metadata); built once (~60 µs from the footer each time)."""
        if self._schema is None:
            self._schema = self._reader.schema_arrow
        return self._schema

    @property
    def num_row_groups(self) -> int:
        return int(self._reader.num_row_groups)

    def read(self, columns: Sequence[str] | None = None, *, use_threads: bool = True) -> pa.Table:
        """The whole file, or its ``columns``."""
        return self._reader.read_all(column_indices=self._indices(columns), use_threads=use_threads)

    def read_row_groups(self, groups: Sequence[int], columns: Sequence[str] | None = None, *,
                        use_threads: bool = True) -> pa.Table:
        """Row groups ``groups`` (in that order), all columns or ``columns``."""
        return self._reader.read_row_groups(list(groups), column_indices=self._indices(columns),
                                            use_threads=use_threads)

    def close(self) -> None:
        if self._file is not None:  # pragma: no cover - pyarrow.parquet's ParquetFile
            self._file.close()
            return
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> ParquetSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _indices(self, columns: Sequence[str] | None) -> list[int] | None:
        if columns is None:
            return None
        found = []
        for name in columns:  # (a flat schema: a column's name is its path)
            try:
                found.append(self._reader.column_name_idx(name))
            except KeyError:
                continue  # a column the file lacks is left out of the table, as ParquetFile leaves it
        return found


def read_metadata(source: Any) -> pq.FileMetaData:
    """The footer of a Parquet file (a path or a pyarrow ``NativeFile``): ``pyarrow.parquet.read_metadata``."""
    with ParquetSource(source) as parquet:
        return parquet.metadata


_WRITER_DEFAULTS = {"version": "2.6", "writer_engine_version": "V2", "data_page_version": "1.0",
                    "use_compliant_nested_type": True, "store_schema": True}
"""What ``pyarrow.parquet.ParquetWriter`` passes to the writer underneath when not told otherwise."""
_DIRECT_WRITER = [_Writer is not None]


def write_table(table: pa.Table, sink: Any, *, row_group_size: int, **options: Any) -> None:
    """``pyarrow.parquet.write_table(table, sink, row_group_size=..., **options)`` for a file object ``sink``,
    through pyarrow's writer itself (see the module's docstring); a pyarrow whose writer takes other arguments
    gets ``pyarrow.parquet.write_table``."""
    if _DIRECT_WRITER[0]:
        try:
            writer = _Writer(sink, table.schema, **_WRITER_DEFAULTS, **options, memory_pool=arrow_pool())
        except TypeError:  # pragma: no cover - a pyarrow whose private writer changed its arguments
            _DIRECT_WRITER[0] = False
        else:
            try:
                writer.write_table(table, row_group_size=row_group_size)
            finally:
                writer.close()
            return
    import pyarrow.parquet as pq  # pragma: no cover - see above

    pq.write_table(table, sink, row_group_size=row_group_size, **options, memory_pool=arrow_pool())  # pragma: no cover


def _open(reader: Any, source: Any, metadata: pq.FileMetaData | None) -> None:
    if _EXTENSIONS[0]:
        try:
            reader.open(source, metadata=metadata, arrow_extensions_enabled=True)
            return
        except TypeError as exc:  # pragma: no cover - pyarrow < 17
            if "arrow_extensions_enabled" not in str(exc):
                raise
            _EXTENSIONS[0] = False
    reader.open(source, metadata=metadata)  # pragma: no cover - pyarrow < 17


class FooterCache:
    """The footers of published files, by path (a published file never changes: its name holds a unique token).

    Called with a path: its footer, or None if it cannot be read. :meth:`remember` keeps a footer already
    parsed, e.g. by the integrity check from the bytes it hashed, so that the read after it does not parse it
    again from the file (~0.2 ms for a year of minute bars). The most recently used are kept, ``size`` footers
    and ``budget`` bytes at most: a parsed footer holds ~10 times its serialized size (38 KB for a file of daily
    bars, 80 KB for a quarter of minute bars, 157 KB for a year of minute bars, measured), so a universe of a few
    hundred series' files kept them all would hold tens of MB for nothing; what reads ask again and again (``ts``
    bounds, columns without values, empty answers) is kept apart, small.
    """

    def __init__(self, size: int, budget: int) -> None:
        self._size = size
        self._budget = budget
        self._held = 0
        self._footers: collections.OrderedDict[str, tuple[pq.FileMetaData | None, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, path: str) -> pq.FileMetaData | None:
        with self._lock:
            if path in self._footers:
                self._footers.move_to_end(path)
                return self._footers[path][0]
        try:
            footer = read_metadata(path)
        except Exception:  # noqa: BLE001 - damaged files are found and set aside by the reader
            footer = None
        self.remember(path, footer)
        return footer

    def remember(self, path: str, footer: pq.FileMetaData | None) -> None:
        weight = FOOTER_WEIGHT * int(footer.serialized_size) if footer is not None else 0
        with self._lock:
            _, before = self._footers.pop(path, (None, 0))
            self._footers[path] = (footer, weight)
            self._held += weight - before
            while len(self._footers) > 1 and (len(self._footers) > self._size or self._held > self._budget):
                _, (_, dropped) = self._footers.popitem(last=False)
                self._held -= dropped

    def held_bytes(self) -> int:
        """The memory the kept footers hold, estimated (:data:`FOOTER_WEIGHT`)."""
        return self._held

    def cache_clear(self) -> None:
        """Forget every footer (what a new process knows)."""
        with self._lock:
            self._footers.clear()
            self._held = 0


FOOTER_WEIGHT = 10
"""Bytes of memory a parsed footer holds per byte of its serialized form (9.2-10.2 measured on the store's files)."""
read_footer = FooterCache(8192, budget=1 << 20)
"""The Parquet footer of a published file, or None if it cannot be read (the most recent kept, by path).

1 MiB: the footers of the files one read opens (a first read asks for its file's three times) and a few more. Parsing
a footer again costs ~0.17 ms for a year of minute bars (n=200), a few percent of the window read it serves;
keeping 4 MiB of them held ~7.5 MB more RSS on the Alpaca minute scan x50 (52 against 59.5 MB data-held,
n=2 each) for no shorter wall time (27.8-28.6 s against 27.4-31.1 s)."""
