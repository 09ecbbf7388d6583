"""The offline kit: emulated providers (one module per source, named like :mod:`lumibot_duckdb.sources`),
their kits (:mod:`.kits`), a synthetic market, sample strategies and the network guard.

Used by the demo, the A/B harness and the tests; the data path (sources, store, sql, ingest) never
imports it.
"""
