"""The bar store: Parquet files as the truth, DuckDB as the query engine, coverage as data."""

from lumibot_duckdb.store.coverage import Interval, SeriesKey, missing_ranges
from lumibot_duckdb.store.interface import DataStorageInterface, series_key
from lumibot_duckdb.store.naming import SeriesName
from lumibot_duckdb.store.store import DuckDBDataStorage, SeriesStatus

__all__ = [
    "DataStorageInterface",
    "DuckDBDataStorage",
    "Interval",
    "SeriesKey",
    "SeriesName",
    "SeriesStatus",
    "missing_ranges",
    "series_key",
]
