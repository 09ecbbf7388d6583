"""Files into the store: :func:`ingest` (:mod:`.load`) over the vendor layouts of :mod:`.formats`; Lumibot's own
caches into the store: :func:`import_cache` (:mod:`.cache`, reading the layouts of :mod:`.legacy`)."""

from lumibot_duckdb.ingest.cache import CacheImportReport, SeriesImport, import_cache
from lumibot_duckdb.ingest.load import FileReport, IngestReport, find_files, ingest

__all__ = ["CacheImportReport", "FileReport", "IngestReport", "SeriesImport", "find_files", "import_cache", "ingest"]
