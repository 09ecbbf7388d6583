"""Files into the store: :func:`ingest` (:mod:`.load`) over the vendor layouts of :mod:`.formats`."""

from lumibot_duckdb.ingest.load import FileReport, IngestReport, find_files, ingest

__all__ = ["FileReport", "IngestReport", "find_files", "ingest"]
