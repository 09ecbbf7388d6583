"""The process around the store: ``.env`` read as Lumibot reads it, and our log records through Lumibot's logger.

Invariants: the command line and a backtest started in the same folder resolve the same store folder (from
the same ``.env`` files, with Lumibot's precedence); Lumibot's ``LUMIBOT_LOG_LEVEL`` and quiet-backtest
setting govern our records as they govern its own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lumibot_duckdb import config
from lumibot_duckdb.config import Settings, find_dotenv, lumibot_environment
from lumibot_duckdb.log import get_logger

REPO = Path(__file__).resolve().parents[1]


def _child_env(**extra: str) -> dict[str, str]:
    """This test session's isolated environment, without its .env switch-off and store folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("LUMIBOT_DISABLE_DOTENV", "LUMIBOT_DUCKDB_CACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_child_env(**extra), capture_output=True, text=True, timeout=180)


# -- .env ---------------------------------------------------------------------------------------------------
def test_precedence_is_lumibots(tmp_path: Path) -> None:
    """.env fills what the environment lacks; .env.local beside it overrides both (Lumibot's load order)."""
    (tmp_path / ".env").write_text("A=from-env\nB=from-env\nC=from-env\n")
    (tmp_path / ".env.local").write_text("C=from-local\n")
    deeper = tmp_path / "strategies" / "momentum"
    deeper.mkdir(parents=True)
    env = lumibot_environment({"B": "from-process", "C": "from-process"}, start=[deeper])
    assert (env["A"], env["B"], env["C"]) == ("from-env", "from-process", "from-local")
    assert "C" not in lumibot_environment({"LUMIBOT_DISABLE_DOTENV": "true"}, start=[deeper])
    quiet_local = lumibot_environment({"LUMIBOT_DISABLE_DOTENV_LOCAL": "1"}, start=[deeper])
    assert quiet_local["C"] == "from-env"


def test_the_first_start_folder_with_a_dotenv_wins(tmp_path: Path) -> None:
    script, cwd = tmp_path / "script", tmp_path / "cwd"
    for folder, value in ((script, "script"), (cwd, "cwd")):
        folder.mkdir()
        (folder / ".env").write_text(f"WHERE={value}\n")
    assert lumibot_environment({}, start=[script, cwd])["WHERE"] == "script"
    assert find_dotenv([tmp_path / "nowhere", cwd], {}) == [cwd / ".env"]


def test_our_reading_equals_lumibots_own_loading(tmp_path: Path) -> None:
    """Lumibot's ``find_and_load_dotenv`` (run for real in a child) and ``lumibot_environment`` agree."""
    (tmp_path / ".env").write_text('LUMIBOT_DUCKDB_CACHE_DIR=/x/store\nQUOTED="a b"\nREF=${QUOTED}-c\nSET=env\n')
    (tmp_path / ".env.local").write_text("LUMIBOT_DUCKDB_CACHE_DIR=/x/local\n")
    (tmp_path / "sub").mkdir()
    script = textwrap.dedent("""
        import json, os, sys
        import lumibot.credentials as credentials  # LUMIBOT_DISABLE_DOTENV: nothing loaded at import
        os.environ.pop("LUMIBOT_DISABLE_DOTENV")
        before = dict(os.environ)
        credentials.find_and_load_dotenv(sys.argv[1])
        from lumibot_duckdb.config import lumibot_environment
        ours = lumibot_environment(before, start=[sys.argv[1]])
        print(json.dumps({"lumibot": dict(os.environ), "ours": dict(ours)}))
    """)
    done = _run([sys.executable, "-c", script, str(tmp_path / "sub")], tmp_path, LUMIBOT_DISABLE_DOTENV="true",
                SET="process")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ours"] == result["lumibot"]
    assert result["ours"]["LUMIBOT_DUCKDB_CACHE_DIR"] == "/x/local" and result["ours"]["SET"] == "process"


def test_the_command_line_and_a_backtest_agree_on_the_store(tmp_path: Path) -> None:
    """Issue 15: with LUMIBOT_DUCKDB_CACHE_DIR in ./.env, db-status said "No store at <the default>"."""
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text(f"LUMIBOT_DUCKDB_CACHE_DIR={tmp_path / 'bars'}\n")
    backtest = project / "backtest.py"  # what a strategy script sees once Lumibot has loaded .env
    backtest.write_text(textwrap.dedent("""
        import lumibot.credentials  # noqa: F401 - Lumibot loads .env here, as for any backtest
        from lumibot_duckdb import DuckDBDataStorage, SeriesKey
        from lumibot_duckdb.config import Settings
        import pandas as pd
        store = DuckDBDataStorage()
        index = pd.date_range("2024-01-02 14:30", periods=3, freq="1min", tz="UTC", name="ts")
        store.write(SeriesKey("test", "SPY", "minute"), pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0,
                                                                       "close": 1.0}, index=index))
        print(Settings.resolve().cache_dir)
    """))
    wrote = _run([sys.executable, str(backtest)], project)
    assert wrote.returncode == 0, wrote.stderr
    assert Path(wrote.stdout.strip().splitlines()[-1]) == tmp_path / "bars"
    status = _run([sys.executable, "-m", "lumibot_duckdb", "db-status", "--json"], project)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["root"] == str(tmp_path / "bars")
    assert json.loads(status.stdout)["totals"]["rows"] == 3
    off = _run([sys.executable, "-m", "lumibot_duckdb", "db-status"], project, LUMIBOT_DISABLE_DOTENV="true")
    assert off.returncode == 1 and "No store at" in off.stdout + off.stderr


def test_settings_read_dotenv_only_when_lumibot_has_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(f"LUMIBOT_DUCKDB_CACHE_DIR={tmp_path / 'from-dotenv'}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LUMIBOT_DUCKDB_CACHE_DIR")
    monkeypatch.delenv("LUMIBOT_DISABLE_DOTENV")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "script.py")])
    monkeypatch.delitem(sys.modules, "lumibot.credentials", raising=False)
    monkeypatch.setattr(config, "_applied_to_process", False)  # as in a process where the CLI did not start
    settings = Settings.resolve()
    assert settings.cache_dir == tmp_path / "from-dotenv" and settings.cache_dir_from == "LUMIBOT_DUCKDB_CACHE_DIR"
    assert "LUMIBOT_DUCKDB_CACHE_DIR" not in os.environ  # read, not loaded: the library changes nothing


# -- logging --------------------------------------------------------------------------------------------------
_LOGS = textwrap.dedent("""
    from lumibot_duckdb.log import get_logger
    ours = get_logger("lumibot_duckdb.store.store")
    ours.info("our info line")
    ours.warning("our warning line")
    from lumibot.tools.lumibot_logger import get_logger as lumibot_logger
    lumibot_logger("lumibot.data_sources.x").warning("lumibot warning line")
""")


@pytest.mark.parametrize(("settings", "shown", "hidden"), [
    ({"LUMIBOT_LOG_LEVEL": "ERROR", "BACKTESTING_QUIET_LOGS": "true", "IS_BACKTESTING": "true"}, [],
     ["our info line", "our warning line", "lumibot warning line"]),
    ({"LUMIBOT_LOG_LEVEL": "INFO", "BACKTESTING_QUIET_LOGS": "false"},
     ["| INFO | our info line", "| WARNING | <string>:<module>:5 | our warning line", "lumibot warning line"], []),
    ({"LUMIBOT_LOG_LEVEL": "WARNING"}, ["our warning line", "lumibot warning line"], ["our info line"]),
])
def test_our_records_obey_lumibots_levels_and_format(tmp_path: Path, settings: dict[str, str], shown: list[str],
                                                     hidden: list[str]) -> None:
    """Issue 15: with ERROR + quiet logs a lumibot_duckdb warning still printed, bare; with INFO our info never."""
    done = _run([sys.executable, "-c", _LOGS], tmp_path, **settings)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for text in shown:
        assert text in out, (text, out)
    for text in hidden:
        assert text not in out, (text, out)


def test_every_logger_of_the_package_is_under_lumibots() -> None:
    logger = get_logger("lumibot_duckdb.sources.base").logger
    assert logger.name == "lumibot.lumibot_duckdb.sources.base"
    assert logger.parent is not None and logging.getLogger("lumibot") in _ancestors(logger)
    for path in (REPO / "lumibot_duckdb").rglob("*.py"):
        text = path.read_text()
        assert "logging.getLogger(" not in text or path.name == "log.py", f"{path}: use lumibot_duckdb.log.get_logger"


def _ancestors(logger: logging.Logger) -> list[logging.Logger]:
    found = []
    parent = logger.parent
    while parent is not None:
        found.append(parent)
        parent = parent.parent
    return found


def test_both_module_commands_run_the_command_line(tmp_path: Path) -> None:
    """``python -m lumibot_duckdb.cli`` once exited 0 without doing anything; now it is the same command."""
    for module in ("lumibot_duckdb", "lumibot_duckdb.cli"):
        wrong = _run([sys.executable, "-m", module, "demo", "--source", "alpacca"], tmp_path)
        assert wrong.returncode == 2 and "'alpacca' is not one of" in wrong.stderr, (module, wrong.stderr)
        assert "Usage: lumibot-duckdb" in _run([sys.executable, "-m", module, "--help"], tmp_path).stdout
