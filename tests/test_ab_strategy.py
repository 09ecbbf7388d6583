"""The user's side of ``lumibot-duckdb ab``: strategy files, parameters, credentials, throw-away caches.

Invariants under test: a strategy is found the way a user names it (the one Strategy subclass of a
file, ``file.py:Class``, ``module:Class``) or refused with a message that says what to write;
parameters reach the run's process unchanged (Assets, Decimals, enums, tuples included); the
environment of a run on the real provider is the user's, with ``.env`` read as Lumibot reads it,
and every cache folder redirected into the run's own folder; requests on the wire are counted.
"""

from __future__ import annotations

import datetime as dt
import decimal
import textwrap
from pathlib import Path

import pytest

from lumibot_duckdb.ab import online
from lumibot_duckdb.ab.session import _phases, build_scenario, strategy_spec
from lumibot_duckdb.ab.strategy import (
    decode,
    encode,
    load_strategy,
    parameters_of,
    parse_assignment,
    read_parameters_file,
    split_spec,
)
from lumibot_duckdb.errors import ConfigError

EXAMPLES = Path(__import__("lumibot").__file__).parent / "example_strategies"

TWO = """
from lumibot.strategies import Strategy

class First(Strategy):
    def on_trading_iteration(self):
        pass

class Second(First):
    pass
"""


def test_a_file_with_one_strategy_is_that_strategy() -> None:
    found = load_strategy(str(EXAMPLES / "stock_buy_and_hold.py"))
    assert found.__name__ == "BuyAndHold" and found.parameters == {"buy_symbol": "QQQ"}


def test_a_file_that_imports_its_strategy_gives_the_imported_one() -> None:
    assert load_strategy(str(EXAMPLES / "classic_60_40.py")).__name__ == "DriftRebalancer"


def test_several_strategies_need_a_name(tmp_path: Path) -> None:
    file = tmp_path / "mine.py"
    file.write_text(TWO)
    with pytest.raises(ConfigError, match=r"2 Strategy subclasses \(First, Second\); name one: mine.py:First"):
        load_strategy(str(file))
    assert load_strategy(f"{file}:Second").__name__ == "Second"
    with pytest.raises(ConfigError, match="no Strategy subclass 'Third'; its Strategy subclasses: First, Second"):
        load_strategy(f"{file}:Third")


def test_refusals_say_what_to_write(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_strategy(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match=r"Importing the strategy file .*ModuleNotFoundError"):
        load_strategy(str(broken))
    with pytest.raises(ConfigError, match="module:ClassName"):
        load_strategy("just_a_word")
    assert load_strategy("lumibot.example_strategies.stock_momentum:Momentum").__name__ == "Momentum"
    assert split_spec("C:/x/y.py") == ("C:/x/y.py", "") and split_spec("a/b.py:K") == ("a/b.py", "K")


def test_a_file_imports_what_lies_beside_it(tmp_path: Path) -> None:
    (tmp_path / "helpers_of_mine.py").write_text("SYMBOL = 'SPY'\n")
    (tmp_path / "strategy.py").write_text(textwrap.dedent("""
        from helpers_of_mine import SYMBOL
        from lumibot.strategies import Strategy

        class UsesHelper(Strategy):
            parameters = {"symbol": SYMBOL}
    """))
    assert load_strategy(str(tmp_path / "strategy.py")).parameters == {"symbol": "SPY"}


def test_strategy_classes_become_specs_a_fresh_process_can_load() -> None:
    from lumibot.example_strategies.stock_momentum import Momentum

    spec = strategy_spec(Momentum)
    assert spec.endswith("stock_momentum.py:Momentum") and load_strategy(spec).__name__ == "Momentum"

    def local() -> type:
        from lumibot.strategies import Strategy

        class Inside(Strategy):
            pass
        return Inside

    with pytest.raises(ConfigError, match="define it at module level"):
        strategy_spec(local())


def test_parameters_cross_the_process_boundary_unchanged() -> None:
    from lumibot.components.drift_rebalancer_logic import DriftType
    from lumibot.entities import Asset, Order

    values = {"assets": (Asset("ETH", "crypto"), Asset("USDT", "crypto")), "weight": decimal.Decimal("0.6"),
              "kind": Order.OrderType.LIMIT, "drift": DriftType.ABSOLUTE, "when": dt.datetime(2024, 1, 2, 9, 30),
              "day": dt.date(2024, 1, 2), "nested": [{"symbol": "SPY", "weight": 0.2}], "none": None}
    back = decode(encode(values))
    assert back == values and isinstance(back["assets"], tuple) and back["assets"][0].asset_type == "crypto"
    with pytest.raises(ConfigError, match="parameters file"):
        encode({"callback": object()})


def test_command_line_parameters_are_json_or_plain_strings() -> None:
    assert parse_assignment('symbols=["SPY", "TLT"]') == ("symbols", ["SPY", "TLT"])
    assert parse_assignment("symbol=SPY") == ("symbol", "SPY")
    assert parse_assignment("window=21") == ("window", 21)
    _, value = parse_assignment('asset={"$asset": "ETH", "type": "crypto"}')
    assert decode(value).symbol == "ETH"
    with pytest.raises(ConfigError, match="name=value"):
        parse_assignment("no-equals-sign")
    with pytest.raises(ConfigError, match=r"\$decimal could not be read"):
        parse_assignment('weight={"$decimal": "sixty"}')
    with pytest.raises(ConfigError, match="not an enum member"):
        parse_assignment('x={"$enum": "lumibot.entities.Asset.AssetType"}')


def test_parameters_files_as_lumibot_ships_them(tmp_path: Path) -> None:
    crypto = read_parameters_file(EXAMPLES / "crypto_50_50_config.py")
    assert crypto["portfolio_weights"][0]["weight"] == decimal.Decimal("0.5")
    (tmp_path / "p.json").write_text('{"symbol": "SPY", "asset": {"$asset": "TLT"}}')
    assert parameters_of({"symbol": "QQQ"}, str(tmp_path / "p.json"))["symbol"] == "QQQ"  # --param wins
    assert parameters_of({}, str(tmp_path / "p.json"))["asset"].symbol == "TLT"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="one JSON object"):
        read_parameters_file(tmp_path / "bad.json")
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no `parameters` dict"):
        read_parameters_file(tmp_path / "none.py")


def test_scenario_checks_happen_before_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = str(EXAMPLES / "stock_buy_and_hold.py")
    with pytest.raises(ConfigError, match=r"end .* must be after start"):
        build_scenario(file, start="2024-02-01", end="2024-01-01")
    with pytest.raises(ConfigError, match="Unknown source 'iex'"):
        build_scenario(file, source="iex", start="2024-01-01", end="2024-02-01")
    with pytest.raises(ConfigError, match="not a date"):
        build_scenario(file, start="soon", end="2024-02-01")
    with pytest.raises(ConfigError, match="BACKTESTING_START"):
        build_scenario(file)
    monkeypatch.setenv("BACKTESTING_START", "2024-01-02")
    monkeypatch.setenv("BACKTESTING_END", "2024-03-01")
    scenario = build_scenario(file, parameters={"buy_symbol": "SPY"}, quote="usd")
    assert (scenario.start, scenario.end) == ("2024-01-02", "2024-03-01")
    assert scenario.name == "stock_buy_and_hold.py (polygon)"
    assert _phases("cold,shifted") == ["cold", "shifted"]
    with pytest.raises(ConfigError, match="must start with cold"):
        _phases("warm")
    with pytest.raises(ConfigError, match="some of cold, warm, shifted"):
        _phases("cold,hot")


# -- the real provider's environment ---------------------------------------------------------------------
def test_dotenv_is_read_as_lumibot_reads_it(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "strategies").mkdir(parents=True)
    (project / ".env").write_text("POLYGON_API_KEY=from-dotenv\nALPACA_API_KEY=dotenv-alpaca\nSHARED=dotenv\n")
    (project / ".env.local").write_text("SHARED=local\n")
    script = project / "strategies" / "mine.py"
    script.write_text("")
    env, read = online.user_environment(script, base={"ALPACA_API_KEY": "exported"}, cwd=tmp_path)
    assert read == [project / ".env", project / ".env.local"]
    assert env["POLYGON_API_KEY"] == "from-dotenv"          # found from the script's folder upwards
    assert env["ALPACA_API_KEY"] == "exported"               # the environment wins over .env
    assert env["SHARED"] == "local"                          # .env.local overrides
    env, read = online.user_environment(script, base={"LUMIBOT_DISABLE_DOTENV": "1"}, cwd=tmp_path)
    assert read == [] and "POLYGON_API_KEY" not in env
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env, read = online.user_environment(None, base={}, cwd=project / "strategies")  # then from the working dir
    assert read and env["POLYGON_API_KEY"] == "from-dotenv"


def test_a_run_on_the_real_provider_never_touches_the_users_caches(tmp_path: Path) -> None:
    user = {"LUMIBOT_CACHE_FOLDER": "/home/me/.cache/lumibot", "LUMIBOT_DUCKDB_CACHE_DIR": "/home/me/bars",
            "POLYGON_API_KEY": "k", "BACKTESTING_DATA_SOURCE": "thetadata", "LUMIBOT_CACHE_BACKEND": "s3",
            "LUMIBOT_CACHE_MODE": "readwrite", "LUMIBOT_USE_DUCKDB": "false", "BACKTESTING_START": "2020-01-01",
            "LUMIBOT_DISABLE_DOTENV": "1", "HOME": "/home/me"}
    env = online.child_environment(tmp_path, None, base=user)
    assert env["POLYGON_API_KEY"] == "k" and env["HOME"] == "/home/me"
    assert env["LUMIBOT_CACHE_FOLDER"] == str(tmp_path / "lumibot-cache")
    assert env["LUMIBOT_DUCKDB_CACHE_DIR"] == str(tmp_path / "duckdb")
    assert env["LUMIBOT_TRADING_DAYS_CACHE_DIR"].startswith(str(tmp_path))
    assert env["XDG_CACHE_HOME"].startswith(str(tmp_path))
    assert (env["LUMIBOT_CACHE_BACKEND"], env["LUMIBOT_CACHE_MODE"]) == ("local", "disabled")
    assert env["BACKTESTING_DATA_SOURCE"] == "none" and "BACKTESTING_START" not in env
    assert "LUMIBOT_USE_DUCKDB" not in env and env["LUMIBOT_DISABLE_DOTENV"] == "true"
    assert not [v for k, v in env.items() if "/home/me/" in v and k != "HOME"]


def test_missing_credentials_say_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"POLYGON_API_KEY .*--offline"):
        online.check_credentials("polygon", {})
    with pytest.raises(ConfigError, match=r"ALPACA_API_KEY\+ALPACA_API_SECRET or ALPACA_OAUTH_TOKEN"):
        online.check_credentials("alpaca", {"ALPACA_API_KEY": "only-half"})
    online.check_credentials("alpaca", {"ALPACA_TEST_API_KEY": "a", "ALPACA_TEST_API_SECRET": "b"})
    online.check_credentials("yahoo", {})
    config = online.backtest_kwargs("alpaca", {"ALPACA_TEST_API_KEY": "a", "ALPACA_TEST_API_SECRET": "b"},
                                    build_scenario(str(EXAMPLES / "stock_buy_and_hold.py"), start="2024-01-02",
                                                   end="2024-02-01", timestep="minute"))
    assert config["config"]["API_KEY"] == "a" and config["config"]["PAPER"] is True and config["timestep"] == "minute"


def test_a_used_work_folder_is_refused(tmp_path: Path) -> None:
    from lumibot_duckdb.ab import compare_strategy

    (tmp_path / "legacy").mkdir()
    with pytest.raises(ConfigError, match="not empty: cold runs need empty caches"):
        compare_strategy(str(EXAMPLES / "stock_buy_and_hold.py"), start="2024-01-02", end="2024-02-01",
                         workdir=tmp_path)


def test_compare_on_the_real_provider_without_a_key_stops_before_any_run(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from lumibot_duckdb.ab import compare_strategy

    monkeypatch.delenv("POLYGON_API_KEY", raising=False)  # (the test session's isolated environment sets one)
    monkeypatch.chdir(tmp_path)  # and no .env above it

    with pytest.raises(ConfigError, match="No polygon credentials"):
        compare_strategy(str(EXAMPLES / "stock_buy_and_hold.py"), source="polygon", start="2024-01-02",
                         end="2024-02-01", offline=False, workdir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_requests_on_the_wire_are_counted_by_host(monkeypatch: pytest.MonkeyPatch, no_network) -> None:
    """Counting wraps urllib3's and curl_cffi's send methods; both are replaced by fakes here, and the socket
    guard (conftest's no_network) sees no connection attempt."""
    import urllib3.connectionpool
    from curl_cffi import requests as curl_requests

    sent = []
    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "urlopen",
                        lambda self, method, url, *a, **k: sent.append((self.host, url)) or "answer")
    monkeypatch.setattr(curl_requests.Session, "request", lambda self, method, url, *a, **k: sent.append(url))
    with online.counting_requests() as counter:  # (urlopen and request are the fakes above: nothing is sent)
        pool = urllib3.connectionpool.HTTPSConnectionPool("api.polygon.io")
        assert pool.urlopen("GET", "/v2/aggs/ticker/SPY") == "answer"
        pool.urlopen("GET", "/v3/reference/splits")
        curl_requests.Session.request(object(), "GET", "https://query2.finance.yahoo.com/v8/finance/chart/SPY")
    pool.urlopen("GET", "/after")  # not counted: outside the block
    assert counter.hosts == {"api.polygon.io": 2, "query2.finance.yahoo.com": 1}
    assert counter.count() == 3 and counter.kinds() == ["api.polygon.io", "query2.finance.yahoo.com"]
    assert len(sent) == 4
    assert not no_network.attempts
