"""The Arrow memory pool the package decodes, parses and encodes with: jemalloc's, where pyarrow has it.

pyarrow's default pool on Linux is mimalloc's, which keeps the pages it freed for reuse. A process that reads or
writes block after block then either holds what it freed (more resident memory than it uses) or, asked to give it
back after each block (``release_unused``), faults every page in again for the next one: an ingest of 10M bars
spent ~0.45 s of system time on it (~190,000 page faults more, measured). jemalloc's pool gives freed pages back
after a short decay and reuses them in between: the same ingest faulted 2.3x fewer pages and peaked ~15 MB lower.

Only the package's own Arrow work uses it (the Parquet reader and writer, the CSV reader, passed explicitly);
pyarrow's default pool, which the rest of the process uses, is left as it is. A user who chose a pool
(``ARROW_DEFAULT_MEMORY_POOL``) gets that one here too, and a pyarrow built without jemalloc (Windows) the default.
"""

from __future__ import annotations

import functools
import os

import pyarrow as pa


@functools.lru_cache(maxsize=1)
def arrow_pool() -> pa.MemoryPool:
    """The pool the package's Arrow readers and writers allocate from (see the module's docstring)."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):  # the user's choice, for the whole process
        return pa.default_memory_pool()
    try:
        return pa.jemalloc_memory_pool()
    except (NotImplementedError, AttributeError, pa.ArrowException):  # a pyarrow without jemalloc
        return pa.default_memory_pool()


def release_unused() -> None:
    """Give back to the system the memory Arrow keeps for reuse, after each block of a long write: pyarrow's
    default pool's (what Arrow allocates outside the package's readers and writers; it would keep every freed
    page otherwise), and the package's unless it is jemalloc's, which gives pages back after their decay."""
    pa.default_memory_pool().release_unused()
    pool = arrow_pool()
    if pool.backend_name != "jemalloc":
        pool.release_unused()
