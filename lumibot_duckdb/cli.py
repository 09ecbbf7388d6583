"""The ``lumibot-duckdb`` command: a thin layer over the library (parse, call, print)."""

from __future__ import annotations

from pathlib import Path

import click

from lumibot_duckdb.errors import LumibotDuckDBError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LumibotDuckDBError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(package_name="lumibot-duckdb")
def main() -> None:
    """One DuckDB + Parquet bar store behind Lumibot's backtesting data sources."""


# -- ingest and export (lumibot_duckdb.ingest, lumibot_duckdb.export) ------------------------------


# -- status, query, maintenance (lumibot_duckdb.query, lumibot_duckdb.maintenance) --------------------


# -- demo -------------------------------------------------------------------------------------------
@main.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the caches of the runs here (default: a temporary folder, removed afterwards).")
@click.option("--source", type=click.Choice(["polygon", "yahoo", "alpaca", "ccxt"]), default="polygon",
              show_default=True, help="The data source to compare (its provider is emulated offline).")
def demo(workdir: Path | None, source: str) -> None:
    """Offline A/B backtest on sample data: Lumibot's legacy data path beside the DuckDB path.

    Runs a daily momentum strategy over four symbols (crypto pairs on CCXT) of a built-in
    synthetic market (no API key, no network), cold, warm and on a window shifted by a month, in
    fresh processes, and prints wall time, data-layer time, provider requests, memory, disk use
    and whether fills and final portfolio value are identical (or differ only by a declared
    legacy defect).

    Example: lumibot-duckdb demo --source ccxt --workdir ./demo-run
    """
    import dataclasses

    from lumibot_duckdb.ab import RunResult, Scenario, compare
    from lumibot_duckdb.ab import demo as run_demo

    scenario = Scenario.momentum()
    if source != "polygon":
        scenario = dataclasses.replace(scenario, source=source, name=f"{scenario.name} ({source})")
    if source == "ccxt":
        scenario = dataclasses.replace(scenario, parameters={
            **scenario.parameters, "symbols": ["BTC", "ETH", "SOL", "ADA"], "asset_type": "crypto", "quote": "USDT"})

    click.echo("Running 6 offline backtests (legacy and DuckDB; cold, warm, shifted window), about a minute…",
               err=True)
    def progress(run: RunResult) -> None:
        click.echo(f"  {run.variant:<12} {run.phase:<8} {run.wall_seconds:6.1f} s", err=True)

    results, text = run_demo(workdir, scenario=scenario, progress=progress)
    click.echo(text)
    if any(not (p.identical or p.declared) for p in compare(results)):
        raise click.ClickException("legacy and DuckDB results differ (see above)")
