"""Every error lumibot-duckdb raises on purpose.

One root, branches that also inherit the builtin a caller would expect::

    LumibotDuckDBError
    ├── ConfigError (ValueError)            a flag or path that cannot be used
    ├── StoreError (RuntimeError)           the store cannot be read or written
    │   ├── CorruptFileError                a Parquet file in the store is damaged
    │   └── StoreLockTimeout (TimeoutError) another process holds a series for too long
    ├── BarsValidationError (ValueError)    bars handed to the store are not usable
    └── ProviderDataError (ValueError)      a provider answered with something that is not bars

A ``StoreError`` on the DuckDB path of a data source makes it fall back to the legacy path
(with one warning) unless strict mode is on; provider errors are never hidden that way.
"""

from __future__ import annotations


class LumibotDuckDBError(Exception):
    """Root of every error raised on purpose by lumibot-duckdb."""


class ConfigError(ValueError, LumibotDuckDBError):
    """A configuration value (keyword argument or environment variable) is not usable."""


class StoreError(RuntimeError, LumibotDuckDBError):
    """The bar store could not be read or written."""


class CorruptFileError(StoreError):
    """A Parquet file in the store cannot be read; it was set aside, not deleted."""

    def __init__(self, message: str, *, path: str, quarantined_to: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.quarantined_to = quarantined_to


class StoreLockTimeout(TimeoutError, StoreError):
    """Another process kept a series locked for longer than the configured timeout."""


class BarsValidationError(ValueError, LumibotDuckDBError):
    """A frame of bars cannot be stored: a column is missing, of the wrong type, or empty where it may not be."""


class ProviderDataError(ValueError, LumibotDuckDBError):
    """A data provider answered with something that is not a usable set of bars.

    Nothing from that answer is stored, so the same range is fetched again next time.
    """
