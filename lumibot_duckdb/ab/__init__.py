"""The A/B harness: the same strategy on Lumibot's legacy path and on the store, in fresh processes,
compared fill by fill (:mod:`.harness`); a user's own strategy compared and explained (:mod:`.session`),
the report to look at (:mod:`.report`), verify mode measured (:mod:`.verify`)."""

from lumibot_duckdb.ab.harness import PHASES, REFERENCE, VARIANTS, Parity, RunResult, Scenario, compare, demo, render
from lumibot_duckdb.ab.session import ABResult, FillDifference, PhaseVerdict, assert_parity, compare_strategy

__all__ = ["PHASES", "REFERENCE", "VARIANTS", "ABResult", "FillDifference", "Parity", "PhaseVerdict", "RunResult",
           "Scenario", "assert_parity", "compare", "compare_strategy", "demo", "render"]
