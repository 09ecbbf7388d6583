"""``lumibot-duckdb ab`` and ``compare_strategy`` end to end, offline, on strategy files as users write them.

Invariants under test: the verdict is right (identical / declared and explained / different and
unexplained) and the exit status follows it; where the paths part, the first differing fill is named
with the bars each path held around it and the declared defect that explains it, or the statement
that none does; the report page draws exactly the runs' equity curves, times, memory and requests, and
a real browser renders it; the PNG is an image of the charts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lumibot_duckdb.ab import ABResult, assert_parity, compare_strategy
from lumibot_duckdb.ab.report import plotted, recorded, write_html, write_png
from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import ParityError

pytestmark = pytest.mark.backtest

EXAMPLES = Path(__import__("lumibot").__file__).parent / "example_strategies"
WINDOW = ("--start", "2024-01-02", "--end", "2024-01-19")

DIVERGENT = '''
from lumibot.strategies import Strategy


class BuysMoreOnLegacy(Strategy):
    """Buys 10 shares on the DuckDB path and 11 on Lumibot's own: a difference no legacy defect explains."""

    parameters = {"symbol": "AAA"}

    def initialize(self):
        self.sleeptime = "1D"

    def on_trading_iteration(self):
        if self.first_iteration:
            ours = type(self.broker.data_source).__module__.startswith("lumibot_duckdb")
            self.submit_order(self.create_order(self.parameters["symbol"], 10 if ours else 11, "buy"))
'''


@pytest.fixture(scope="module")
def identical(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """Lumibot's own buy-and-hold example through the command line: cold and warm, report, image, JSON."""
    folder = tmp_path_factory.mktemp("ab-identical")
    runner = CliRunner()
    outcome = runner.invoke(main, ["ab", str(EXAMPLES / "stock_buy_and_hold.py"), "--source", "polygon", *WINDOW,
                                   "--phases", "cold,warm", "--offline", "--param", "buy_symbol=AAA",
                                   "--report", str(folder / "ab.html"), "--png", str(folder / "ab.png"),
                                   "--json", str(folder / "ab.json")])
    return outcome, folder


def test_a_lumibot_example_is_identical_on_both_paths(identical: tuple[object, Path]) -> None:
    outcome, folder = identical
    assert outcome.exit_code == 0, outcome.output  # type: ignore[attr-defined]
    text = outcome.output  # type: ignore[attr-defined]
    assert "verdict: IDENTICAL" in text and "parity cold: identical (1 fills" in text
    assert "parity warm: identical" in text and "DuckDB / legacy, warm: wall" in text
    document = json.loads((folder / "ab.json").read_text())
    assert document["verdict"] == "identical" and len(document["runs"]) == 4
    warm = next(r for r in document["runs"] if r["variant"] == "duckdb" and r["phase"] == "warm")
    assert sum(warm["requests"].values()) == 0  # the warm DuckDB run asked the provider nothing


def test_the_report_draws_the_runs_own_numbers(identical: tuple[object, Path]) -> None:
    _, folder = identical
    page = (folder / "ab.html").read_text()
    assert '<script src="http' not in page and "cdn.plot.ly/plotly" not in page
    assert len(page) > 1_000_000  # plotly.js is inside the page: it opens offline
    runs = json.loads((folder / "ab.json").read_text())["runs"]
    charts = plotted(page)
    assert set(charts) == {"equity", "resources", "requests"}
    for run in runs:
        trace = next(t for t in charts["equity"] if t["meta"] == {"phase": run["phase"], "variant": run["variant"],
                                                                   "kind": "equity"})
        assert trace["y"] == [v for _, v in run["equity"]] and trace["x"] == [t[:19] for t, _ in run["equity"]]
    differences = [t for t in charts["equity"] if t["meta"]["kind"] == "difference"]
    assert len(differences) == 2 and all(set(t["y"]) == {0.0} for t in differences)
    for kind, key in (("wall", "wall_seconds"), ("peak_rss", "peak_rss_mb")):
        for variant in ("legacy", "duckdb"):
            trace = next(t for t in charts["resources"] if t["meta"] == {"variant": variant, "kind": kind})
            expected = {r["phase"]: r[key] for r in runs if r["variant"] == variant}
            assert dict(zip(trace["x"], trace["y"])) == pytest.approx(expected)
    for trace in charts["requests"]:
        expected = {r["phase"]: sum(r["requests"].values()) for r in runs if r["variant"] == trace["meta"]["variant"]}
        assert dict(zip(trace["x"], trace["y"])) == expected
    assert recorded(page)["verdict"] == "identical"
    assert "IDENTICAL: the same fills" in page


def test_the_png_is_an_image_of_the_charts(identical: tuple[object, Path]) -> None:
    _, folder = identical
    data = (folder / "ab.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    import matplotlib.image

    pixels = matplotlib.image.imread(folder / "ab.png")
    assert pixels.shape[0] > 1000 and pixels.shape[1] > 1500
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_a_real_browser_renders_the_report(identical: tuple[object, Path], tmp_path: Path) -> None:
    """Headless Chromium opens the page from disk (no network) and plotly draws every chart in it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); the plotted data is "
                    "checked by test_the_report_draws_the_runs_own_numbers")
    _, folder = identical
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
               (folder / "ab.html").as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    for chart in ("chart-equity", "chart-resources", "chart-requests"):
        start = dom.index(f'id="{chart}"')
        assert "js-plotly-plot" in dom[dom.rindex("<div", 0, start):start + 200], chart  # plotly took the div
    assert dom.count('class="main-svg"') >= 6
    assert dom.count("class=\"trace scatter") >= 6  # 2 phases x (2 curves + their difference)
    assert "legacy (cold)" in dom and "DuckDB (warm)" in dom


def test_a_declared_defect_is_named_with_the_first_differing_fill(tmp_path: Path) -> None:
    """Lumibot's buy-and-hold on CCXT: its cache rounds prices to 3 decimals, so the first fill's price differs."""
    from lumibot.entities import Asset

    from lumibot_duckdb.sources.ccxt import DECIMAL_DEFECT

    result = compare_strategy(EXAMPLES / "stock_buy_and_hold.py", source="ccxt", start="2024-01-02",
                              end="2024-01-12", phases=["cold"], parameters={"buy_symbol": Asset("BTC", "crypto")},
                              workdir=tmp_path)
    assert result.verdict == "declared" and result.ok
    first = result.first_difference
    assert first is not None and first.index == 0 and first.explained_by == [DECIMAL_DEFECT]
    assert first.legacy[:4] == first.duckdb[:4] and first.legacy[4] != first.duckdb[4]  # same fill, other price
    assert round(first.legacy[4], 3) == first.legacy[4] and first.reference == first.duckdb
    legacy_rows = first.legacy_bars[0]["rows"]
    assert all(round(v, 3) == v for row in legacy_rows for v in row[1:5])
    assert any(round(v, 3) != v for row in first.duckdb_bars[0]["rows"] for v in row[1:5])
    text = result.text()
    assert "first differing fill (cold, repetition 1): #1" in text and f"declared legacy defect(s): {DECIMAL_DEFECT}" \
        in text
    assert f"legacy-fixed#1: Lumibot's legacy path with only {DECIMAL_DEFECT!r} patched" in text
    assert_parity(result)  # a declared difference passes
    with pytest.raises(ParityError, match="first differing fill"):
        assert_parity(result, allow_declared=False)
    write_html(result, tmp_path / "declared.html")
    assert "Explained by the declared legacy defect(s): prices and volumes" in (tmp_path / "declared.html").read_text()
    write_png(result, tmp_path / "declared.png")  # tagged parameters ({"$asset": ...}) are no math for matplotlib


def test_an_unexplained_difference_fails_and_says_no_defect_explains_it(tmp_path: Path) -> None:
    strategy = tmp_path / "divergent.py"
    strategy.write_text(DIVERGENT)
    runner = CliRunner()
    outcome = runner.invoke(main, ["ab", str(strategy), "--source", "polygon", *WINDOW, "--phases", "cold",
                                   "--offline", "--workdir", str(tmp_path / "runs"), "--png", str(tmp_path / "d.png")])
    assert outcome.exit_code == 1, outcome.output
    assert "verdict: DIFFERENT" in outcome.output
    assert "legacy: 2024-01-02 09:30:00-05:00 buy 11 AAA" in outcome.output
    assert "DuckDB: 2024-01-02 09:30:00-05:00 buy 10 AAA" in outcome.output
    assert "bars legacy held in pandas_data[AAA/USD]" in outcome.output
    assert "no declared legacy defect explains it" in outcome.output
    assert (tmp_path / "d.png").stat().st_size > 50_000
    with pytest.raises(ParityError, match=r"buy 11 AAA[\s\S]*buy 10 AAA[\s\S]*no declared legacy defect"):
        assert_parity(str(strategy), source="polygon", start="2024-01-02", end="2024-01-12", phases=["cold"])


def test_repetitions_alternate_the_paths_and_verify_mode_rides_along(tmp_path: Path) -> None:
    runs: list[str] = []
    result = compare_strategy(f"{EXAMPLES / 'stock_buy_and_hold.py'}:BuyAndHold", source="polygon",
                              start="2024-01-02", end="2024-01-12", phases=["cold"], repeat=2, verify=True,
                              parameters={"buy_symbol": "AAA"}, workdir=tmp_path,
                              progress=lambda run: runs.append(run.variant))
    assert isinstance(result, ABResult) and result.verdict == "identical"
    assert runs == ["legacy", "duckdb", "verify", "duckdb", "legacy", "verify"]
    assert sorted({r.repetition for r in result.runs}) == [0, 1]
    assert (tmp_path / "repetition-2" / "duckdb" / "duckdb").is_dir()
    from lumibot_duckdb.ab.table import summary_rows
    from lumibot_duckdb.ab.verify import costs

    rows = {row["variant"]: row for row in summary_rows(result)}
    assert rows["legacy"]["n"] == 2 and rows["duckdb"]["wall"]["min"] <= rows["duckdb"]["wall"]["max"]
    (cost,) = costs(result.runs)
    assert cost.checks >= 1 and cost.mismatches == 0 and cost.same_fills and cost.requests > cost.requests_duckdb
    assert "verify cold (n=2): " in result.text()
    write_html(result, tmp_path / "r.html")
    assert "<h2>Verify mode</h2>" in (tmp_path / "r.html").read_text()
    write_png(result, tmp_path / "r.png")


CRASHES = '''
from lumibot.strategies import Strategy


class Crashes(Strategy):
    def on_trading_iteration(self):
        raise ZeroDivisionError("the strategy's own bug")
'''


def test_a_strategy_that_fails_on_lumibot_itself_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "crashes.py").write_text(CRASHES)
    outcome = CliRunner().invoke(main, ["ab", str(tmp_path / "crashes.py"), *WINDOW, "--phases", "cold", "--offline"])
    assert outcome.exit_code == 1
    assert "The cold run of crashes.py (polygon) on Lumibot's legacy path failed (exit 1): ZeroDivisionError: " \
           "the strategy's own bug. It fails on Lumibot's own path, without lumibot-duckdb" in outcome.output


def test_the_command_is_installed_and_documents_itself() -> None:
    out = subprocess.run([sys.executable, "-m", "lumibot_duckdb", "ab", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "path/to/file.py:ClassName" in out.stdout and "--offline" in out.stdout
    demo = subprocess.run([sys.executable, "-m", "lumibot_duckdb", "demo", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert "--report" in demo.stdout and "--png" in demo.stdout


def test_an_identical_verdict_where_nothing_was_read_or_traded_says_it_proves_nothing() -> None:
    """Lumibot's classic_60_40.py keeps its parameters in a config file its __main__ loads: run as a file
    without them it reads no bar and places no order, and "identical" alone would reassure wrongly."""
    from lumibot_duckdb.ab.harness import RunResult, Scenario
    from lumibot_duckdb.ab.session import IDENTICAL, VACUOUS, PhaseVerdict

    def run(variant: str, requests: dict[str, int], fills: list[list[object]], size: int) -> RunResult:
        return RunResult("s", variant, "cold", 1.0, 0.0, 0, requests, 0, 100.0, 90.0, size, 0, fills, 100_000.0)

    verdicts = [PhaseVerdict("cold", IDENTICAL, 0, 100_000.0, 100_000.0)]
    idle = ABResult(Scenario.momentum(), [run("legacy", {"load_markets": 1}, [], 0), run("duckdb", {}, [], 0)],
                    verdicts, [], {})
    assert idle.verdict == IDENTICAL and idle.vacuous and idle.verdict_line().endswith(VACUOUS)
    assert "proves nothing" in " ".join(idle.text().split())
    busy = ABResult(Scenario.momentum(), [run("legacy", {"aggs": 3}, [], 2048), run("duckdb", {"aggs": 2}, [], 1024)],
                    verdicts, [], {})
    assert not busy.vacuous and VACUOUS not in busy.verdict_line()
