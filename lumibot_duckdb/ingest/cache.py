"""Lumibot's own caches into the store (``lumibot-duckdb import-cache``): what a user already downloaded
is not downloaded again.

>>> report = import_cache(store)                                        # doctest: +SKIP
>>> report = import_cache(store, "~/.cache/lumibot/1.0", sources=["polygon"], dry_run=True)  # doctest: +SKIP
>>> [(i.series, i.bars, i.status) for i in report.items]               # doctest: +SKIP

Reads the caches Lumibot 4.6 writes under ``LUMIBOT_CACHE_FOLDER`` (default: Lumibot's own) for
Polygon, Yahoo, Alpaca and CCXT (what each file proves, and what is left out: see
:mod:`lumibot_duckdb.ingest.legacy`) and stores the bars under exactly the series keys our data
sources read, with coverage that is only what the legacy cache proves. A backtest on the DuckDB
path then asks its provider nothing for the imported ranges.

* **Never touches the legacy cache**: files are opened read-only; nothing there is written,
  moved or deleted (remove it yourself once you no longer switch back).
* **Idempotent**: only the parts of a file's coverage the store does not hold yet are written;
  running it again adds nothing. Where the store already holds a range, the store's bars win.
* **Safe beside running backtests**: each series is written under its store lock, like a
  backtest's fill; a legacy file being rewritten by a running Lumibot backtest is reported as
  unreadable, and imported on the next run.
* **CCXT files rounded to 3 decimals** (Lumibot's ``DECIMAL(18,3)`` columns) are left out with the
  reason and the number of bars affected, unless ``include_rounded=True``; then they are imported
  and flagged (``db-status`` shows ``rounded``). To replace them later with the exchange's own
  prices: ``lumibot-duckdb maintain prune --source ccxt --symbol BASE`` and fetch again.
* ``dry_run=True`` reads everything and reports what would be imported; it writes nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lumibot_duckdb.config import lumibot_cache_folder
from lumibot_duckdb.errors import ConfigError, LumibotDuckDBError
from lumibot_duckdb.ingest import legacy
from lumibot_duckdb.ingest.legacy import Found
from lumibot_duckdb.store import DuckDBDataStorage, Interval
from lumibot_duckdb.store.coverage import missing_ranges, normalize

__all__ = ["SOURCES", "CacheImportReport", "SeriesImport", "import_cache"]

SOURCES = ("polygon", "yahoo", "alpaca", "ccxt")


@dataclass
class SeriesImport:
    """What importing one legacy file (or shared-bar series) found and did."""

    source: str
    legacy: str
    """The legacy file (or folder, for a shared-bar series) read."""
    series: str = ""
    """The store series it went to, as ``db-status`` and ``fetch`` name it (empty if none)."""
    key: dict[str, str] | None = None
    bars: int = 0
    """Bars imported (with ``dry_run``: that would be)."""
    present: int = 0
    """Bars of the file the store already held."""
    covered: list[list[str]] = field(default_factory=list)
    """The ranges imported: ``[start, end)`` UTC, ISO 8601."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows left out, by reason."""
    reason: str = ""
    """Why the whole file was left out, and what to do."""
    notes: list[str] = field(default_factory=list)
    status: str = ""
    """``imported``, ``unchanged`` (all of it already stored), ``would import`` (dry run), ``skipped``, ``failed``."""
    seconds: float = 0.0

    @property
    def first(self) -> str | None:
        return self.covered[0][0] if self.covered else None

    @property
    def last(self) -> str | None:
        return self.covered[-1][1] if self.covered else None


@dataclass
class CacheImportReport:
    """What an :func:`import_cache` call did, series by series."""

    cache: str
    store: str
    dry_run: bool
    items: list[SeriesImport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bars(self) -> int:
        return sum(i.bars for i in self.items)

    @property
    def present(self) -> int:
        return sum(i.present for i in self.items)

    @property
    def failed(self) -> list[SeriesImport]:
        return [i for i in self.items if i.status == "failed"]

    def by_source(self) -> dict[str, dict[str, int]]:
        """Per source: files read, imported, skipped, bars imported, rows left out."""
        out: dict[str, dict[str, int]] = {}
        for item in self.items:
            row = out.setdefault(item.source, {"files": 0, "imported": 0, "skipped": 0, "failed": 0, "bars": 0,
                                               "present": 0, "rows_left_out": 0})
            row["files"] += 1
            row["imported"] += int(item.status in ("imported", "would import"))
            row["skipped"] += int(item.status == "skipped")
            row["failed"] += int(item.status == "failed")
            row["bars"] += item.bars
            row["present"] += item.present
            row["rows_left_out"] += sum(item.skipped.values())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"cache": self.cache, "store": self.store, "dry_run": self.dry_run, "seconds": round(self.seconds, 3),
                "bars": self.bars, "present": self.present, "sources": self.by_source(),
                "items": [{**asdict(i), "seconds": round(i.seconds, 3)} for i in self.items]}


def import_cache(
    store: DuckDBDataStorage | str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    /,
    *,
    sources: Sequence[str] | None = None,
    include_rounded: bool = False,
    dry_run: bool = False,
    symbols: Iterable[str] = (),
    credentials: Iterable[str] | None = None,
    progress: bool | None = None,
    now: pd.Timestamp | None = None,
) -> CacheImportReport:
    """Import Lumibot's caches under ``cache`` (default: Lumibot's ``LUMIBOT_CACHE_FOLDER``) into ``store``
    (a store or its folder; default: the data sources' store). See the module docstring.

    ``sources``: some of :data:`SOURCES` (default all). ``symbols``: Alpaca symbols to recognise in
    Lumibot's shared bar cache beyond those its window CSVs name (``BTC/USD`` for crypto, the OCC
    contract for options); ``credentials``: the Alpaca API keys (or OAuth tokens) those bars were
    fetched with (default: ``ALPACA_API_KEY`` and ``ALPACA_OAUTH_TOKEN``, as Lumibot reads them,
    its ``.env`` included when Lumibot is imported). ``progress``: a bar on stderr (default: when
    stderr is a terminal). ``now``: the clock (tests). Raises :class:`ConfigError` for a cache
    folder that does not exist or holds no cache file of the sources asked, or an unknown source; a
    file that cannot be imported is reported (``skipped``/``failed``), not raised.
    """
    folder = Path(cache).expanduser() if cache is not None else lumibot_cache_folder()
    if not folder.is_dir():
        raise ConfigError(f"No Lumibot cache at {folder}. Pass the folder Lumibot caches in (its "
                          "LUMIBOT_CACHE_FOLDER; by default ~/.cache/lumibot/1.0 on Linux).")
    chosen = [s.strip().lower() for s in (sources or SOURCES)]
    unknown = [s for s in chosen if s not in SOURCES]
    if unknown:
        raise ConfigError(f"Unknown source(s) {unknown}; Lumibot caches of {', '.join(SOURCES)} can be imported.")
    keys = list(credentials) if credentials is not None else _alpaca_credentials()
    db, own = _open(store, dry_run=dry_run)
    report = CacheImportReport(cache=str(folder), store=str(db.root if db is not None else _root(store)),
                               dry_run=dry_run)
    started = time.perf_counter()
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(desc="import-cache", unit="series", disable=not show, file=sys.stderr, mininterval=0.5)
    try:
        for found in _found(folder, chosen, include_rounded=include_rounded, symbols=symbols, credentials=keys,
                            now=now, skip=[Path(report.store)]):
            bar.set_postfix_str(found.path.name)
            report.items.append(_import(db, found, dry_run=dry_run))
            bar.update(1)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
        if own and db is not None:
            db.close()
    if not report.items:
        raise ConfigError(f"Found no cache file of {', '.join(chosen)} in {folder}: is it the folder Lumibot caches "
                          "in (its LUMIBOT_CACHE_FOLDER, holding polygon/, yahoo/, alpaca/… folders and CCXT's .duckdb "
                          "files)? Nothing was imported.")
    return report


def _found(folder: Path, sources: list[str], *, include_rounded: bool, symbols: Iterable[str],
           credentials: list[str], now: pd.Timestamp | None, skip: list[Path]) -> Iterator[Found]:
    if "polygon" in sources:
        yield from legacy.read_polygon(folder / "polygon", now=now)
    if "yahoo" in sources:
        yield from legacy.read_yahoo(folder / "yahoo", now=now)
    if "alpaca" in sources:
        yield from legacy.read_alpaca(folder, symbols=symbols, credentials=credentials, now=now)
    if "ccxt" in sources:
        yield from legacy.read_ccxt(folder, include_rounded=include_rounded, now=now, skip=skip)


def _import(db: DuckDBDataStorage | None, found: Found, *, dry_run: bool) -> SeriesImport:
    started = time.perf_counter()
    item = SeriesImport(found.source, str(found.path), _label(found), found.key.as_dict() if found.key else None,
                        skipped=dict(found.skipped), reason=found.reason, notes=list(found.notes))
    try:
        if found.reason or found.key is None:
            item.status = "skipped"
            return item
        bars = found.bars
        if dry_run:
            stored = db.coverage(found.key) if db is not None else []
            gaps = [g for iv in found.coverage for g in missing_ranges(stored, iv)]
            item.covered = _iso(gaps)
            item.bars = _inside(bars, gaps)
            item.present = (len(bars) if bars is not None else 0) - item.bars
            item.status = "would import" if gaps else "unchanged"
            return item
        assert db is not None
        written: list[Interval] = []
        with db.writer(found.key) as writer:
            for interval in found.coverage:
                for gap in writer.missing(interval):
                    rows = _rows(bars, gap)
                    writer.write(rows, covered=gap)
                    item.bars += len(rows)
                    written.append(gap)
            if written and found.as_of is not None:
                writer.record_as_of(found.as_of)
        item.covered = _iso(normalize(written))
        item.present = (len(bars) if bars is not None else 0) - item.bars
        for name, value in found.flags.items():
            if written:
                db.set_flag(found.key, name, value)
        if found.note is not None:
            parts, document = found.note
            if db.read_note(*parts) is None:
                db.write_note(document, *parts)
        item.status = "imported" if written else "unchanged"
    except LumibotDuckDBError as exc:
        item.status = "failed"
        item.reason = f"{type(exc).__name__}: {exc}"
    finally:
        item.seconds = time.perf_counter() - started
    return item


def _rows(bars: pd.DataFrame | None, interval: Interval) -> pd.DataFrame:
    if bars is None or bars.empty:
        frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("open", "high", "low", "close")})
        frame.index = pd.DatetimeIndex([], tz="UTC", name="ts")
        return frame
    return bars[(bars.index >= interval.start) & (bars.index < interval.end)]


def _inside(bars: pd.DataFrame | None, intervals: list[Interval]) -> int:
    return sum(len(_rows(bars, i)) for i in intervals) if bars is not None else 0


def _iso(intervals: list[Interval]) -> list[list[str]]:
    return [[i.start.isoformat(), i.end.isoformat()] for i in intervals]


def _label(found: Found) -> str:
    return found.key.label if found.key is not None else ""


def _alpaca_credentials() -> list[str]:
    """The Alpaca credentials as Lumibot reads them: its settings when Lumibot is loaded (``.env`` included),
    else the environment."""
    values = [os.environ.get("ALPACA_API_KEY", ""), os.environ.get("ALPACA_OAUTH_TOKEN", "")]
    credentials = sys.modules.get("lumibot.credentials")
    config = getattr(credentials, "ALPACA_CONFIG", None) if credentials is not None else None
    if isinstance(config, dict):
        values += [str(config.get("API_KEY") or ""), str(config.get("OAUTH_TOKEN") or "")]
    return [v for v in dict.fromkeys(values) if v]


def _root(store: DuckDBDataStorage | str | os.PathLike[str] | None) -> Path:
    from lumibot_duckdb.config import Settings

    return Settings.resolve(cache_dir=store, use_duckdb=True).cache_dir


def _open(store: DuckDBDataStorage | str | os.PathLike[str] | None, *,
          dry_run: bool) -> tuple[DuckDBDataStorage | None, bool]:
    """The store to import into (a dry run against a store that does not exist yet creates nothing)."""
    if isinstance(store, DuckDBDataStorage):
        return store, False
    root = _root(store)
    if dry_run and not (root / "bars").is_dir():
        return None, False
    return DuckDBDataStorage(root), True
