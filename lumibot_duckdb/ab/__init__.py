"""The A/B harness: the same strategy on Lumibot's legacy path and on the store, in fresh processes,
compared fill by fill (:mod:`.harness`)."""

from lumibot_duckdb.ab.harness import PHASES, REFERENCE, VARIANTS, Parity, RunResult, Scenario, compare, demo, render

__all__ = ["PHASES", "REFERENCE", "VARIANTS", "Parity", "RunResult", "Scenario", "compare", "demo", "render"]
