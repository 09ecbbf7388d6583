"""Configuration precedence: explicit keyword, then environment, then default; bad values name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from lumibot_duckdb.config import ENV_CACHE_DIR, ENV_STRICT, ENV_USE_DUCKDB, Settings, parse_bool
from lumibot_duckdb.errors import ConfigError, LumibotDuckDBError


@pytest.mark.parametrize("text", ["1", "true", "TRUE", " yes ", "On"])
def test_true_spellings(text: str) -> None:
    assert parse_bool(text, name="X") is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "OFF"])
def test_false_spellings(text: str) -> None:
    assert parse_bool(text, name="X") is False


@pytest.mark.parametrize("text", ["maybe", "2", "ture", ""])
def test_invalid_flag_names_the_variable_and_the_choices(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.resolve(environ={ENV_USE_DUCKDB: text} if text else {ENV_USE_DUCKDB: "nope"})
    message = str(info.value)
    assert ENV_USE_DUCKDB in message and "true/false" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, LumibotDuckDBError)


def test_default_is_on_and_under_lumibot_cache_once_lumibot_is_imported(tmp_path: Path) -> None:
    import lumibot.constants

    settings = Settings.resolve(environ={"LUMIBOT_CACHE_FOLDER": str(tmp_path)})
    assert settings.use_duckdb is True and settings.strict is False
    # Lumibot read its folder at import; that is the folder its caches use, so ours goes beside them.
    assert settings.cache_dir == Path(lumibot.constants.LUMIBOT_CACHE_FOLDER) / "duckdb"


def test_default_follows_lumibot_rule_before_lumibot_is_imported(tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "lumibot.constants", raising=False)
    settings = Settings.resolve(environ={"LUMIBOT_CACHE_FOLDER": str(tmp_path)})
    assert settings.cache_dir == tmp_path / "duckdb"


def test_environment_is_read(tmp_path: Path) -> None:
    env = {ENV_USE_DUCKDB: "off", ENV_CACHE_DIR: str(tmp_path / "s"), ENV_STRICT: "yes"}
    settings = Settings.resolve(environ=env)
    assert (settings.use_duckdb, settings.cache_dir, settings.strict) == (False, tmp_path / "s", True)


def test_explicit_keywords_win_over_environment(tmp_path: Path) -> None:
    env = {ENV_USE_DUCKDB: "off", ENV_CACHE_DIR: str(tmp_path / "env"), ENV_STRICT: "yes"}
    settings = Settings.resolve(use_duckdb=True, cache_dir=tmp_path / "kw", strict=False, environ=env)
    assert (settings.use_duckdb, settings.cache_dir, settings.strict) == (True, tmp_path / "kw", False)


def test_invalid_keyword_value_names_the_keyword() -> None:
    with pytest.raises(ConfigError, match="use_duckdb"):
        Settings.resolve(use_duckdb="sometimes")


def test_invalid_flag_is_reported_even_when_the_default_would_do() -> None:
    with pytest.raises(ConfigError, match=ENV_STRICT):
        Settings.resolve(environ={ENV_STRICT: "enabled"})


@pytest.mark.parametrize("text, words", [("1e400", "finite"), ("inf", "not a memory size"),
                                         ("nan", "not a memory size"), ("-5", "positive"),
                                         ("0.5", "less than one byte"), ("12 parsecs", "unit")])
def test_a_memory_budget_that_is_not_a_positive_finite_size_names_the_variable(text: str, words: str) -> None:
    from lumibot_duckdb.config import ENV_MAX_MEMORY

    with pytest.raises(ConfigError) as info:
        Settings.resolve(environ={ENV_MAX_MEMORY: text})
    assert ENV_MAX_MEMORY in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("text, size", [("512MB", 512_000_000), ("1.5GiB", 1_610_612_736), ("0", None), ("", None),
                                        ("none", None), ("2000000000", 2_000_000_000)])
def test_memory_budgets_users_write(text: str, size: int | None) -> None:
    from lumibot_duckdb.config import ENV_MAX_MEMORY

    assert Settings.resolve(environ={ENV_MAX_MEMORY: text}).max_memory == size


def test_a_bad_budget_stops_a_backtest_before_it_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datetime as dt

    from lumibot_duckdb import PolygonDataBacktesting

    monkeypatch.setenv("LUMIBOT_DUCKDB_MAX_MEMORY", "1e400")
    with pytest.raises(ConfigError, match="LUMIBOT_DUCKDB_MAX_MEMORY='1e400'"):
        PolygonDataBacktesting(dt.datetime(2024, 1, 2), dt.datetime(2024, 2, 1), api_key="k", cache_dir=tmp_path)
