"""The README and the migration guide stay true to the code: every code block in them runs, offline.

Each fenced ``bash`` or ``python`` block is run in document order in a scratch folder beside the shared data
(``../shared/data``, as in a checkout): its ``lumibot-duckdb`` lines through the command line, its Python
with ``MyStrategy`` (the reader's own strategy) standing by. A block that cannot run offline says why in a
``<!-- doc-test: skip (reason) -->`` line right above it; anything else that fails, fails here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from lumibot_duckdb.ab.table import COLUMNS

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "migration_guide.md")
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[a-z]*)\s*$")
_SKIP = re.compile(r"^\s*<!-- doc-test: skip \((?P<reason>[^)]+)\) -->\s*$")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    code: str
    skip: str | None


def blocks(doc: str) -> list[Block]:
    """The fenced blocks of ``doc`` (indented ones inside list items too), with their skip reason if any."""
    lines = (REPO / doc).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang, start = opening["indent"], opening["lang"], i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = _SKIP.match(previous)
        found.append(Block(doc, start + 1, lang, "\n".join(body), skip["reason"] if skip else None))
        i += 1
    return found


def test_every_block_runs_or_says_why_not() -> None:
    for doc in DOCS:
        for block in blocks(doc):
            if block.lang in ("bash", "python") and block.skip is None:
                continue  # run below
            if block.lang in ("bash", "python"):
                assert len(block.skip or "") > 10, f"{doc}:{block.line}: say why the block cannot run"
            else:
                assert block.lang == "", f"{doc}:{block.line}: a ```{block.lang} block is neither run nor text"


@pytest.fixture
def scratch(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder like a checkout's root: ``../shared/data`` beside it; the default store empty, its own."""
    (tmp_path / "shared").symlink_to(shared_data.parent, target_is_directory=True)
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("LUMIBOT_DUCKDB_CACHE_DIR", str(tmp_path / "default-store"))
    return work


def _run_bash(block: Block, cwd: Path) -> None:
    for number, raw in enumerate(block.code.splitlines()):
        words = shlex.split(raw, comments=True)
        if not words:
            continue
        assert words[0] == "lumibot-duckdb", f"{block.doc}:{block.line + number + 1}: only lumibot-duckdb lines run"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-m", "lumibot_duckdb", *words[1:]], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{block.doc}:{block.line + number + 1}: {raw}\n{done.stdout}{done.stderr}"


def _my_strategy() -> type:
    """The reader's strategy of the examples: buy and hold, run headless (no plots, tearsheets or browser)."""
    from lumibot_duckdb.testing.strategies import BuyAndHold

    class MyStrategy(BuyAndHold):
        @classmethod
        def backtest(cls, *args: object, **kwargs: object) -> object:
            headless = dict(benchmark_asset=None, risk_free_rate=0.0, show_plot=False, show_tearsheet=False,
                            save_tearsheet=False, show_indicators=False, show_progress_bar=False, quiet_logs=True,
                            save_stats_file=False, analyze_backtest=False, parameters={"symbols": ["SPY"]})
            return cls.run_backtest(*args, **{**headless, **kwargs})

    return MyStrategy


def _seed_guide_store() -> None:
    """What section 7 of the guide looks at: a store filled by a Polygon backtest (SPY minute bars)."""
    from factories import make_bars

    from lumibot_duckdb import DuckDBDataStorage, SeriesKey

    with DuckDBDataStorage() as store:
        store.write(SeriesKey("polygon", "SPY", "minute", quote="USD", adjustment="split"),
                    make_bars("2024-01-02 14:30", 390))


@pytest.mark.backtest
@pytest.mark.parametrize("doc", DOCS)
def test_the_blocks_of_the_docs_run(doc: str, scratch: Path) -> None:
    import lumibot_duckdb

    if doc == "migration_guide.md":
        _seed_guide_store()
    namespace: dict[str, object] = {"MyStrategy": _my_strategy(), "__name__": "__doc_example__"}
    ran = 0
    try:
        for block in blocks(doc):
            if block.skip is not None or block.lang not in ("bash", "python"):
                continue
            if block.lang == "bash":
                _run_bash(block, scratch)
            else:
                with contextlib.redirect_stdout(open(os.devnull, "w")):
                    exec(compile(block.code, f"{doc}:{block.line}", "exec"), namespace)
            ran += 1
    finally:
        lumibot_duckdb.uninstall()  # a block may call install()
    assert ran >= (4 if doc == "README.md" else 2)


def test_the_readme_demo_table_is_the_demo_output() -> None:
    """The README's demo table has the columns, rows and verdicts the demo prints today."""
    table = next(b.code for b in blocks("README.md") if b.lang == "" and "parity" in b.code).splitlines()
    header = next(line for line in table if line.startswith("┃"))
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == list(COLUMNS)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in table if line.startswith("│")]
    assert sorted((r[0], r[1]) for r in rows) == sorted((p, v) for p in ("cold", "warm", "shifted")
                                                        for v in ("legacy", "duckdb"))
    assert all(pd.notna(pd.to_numeric(r[3])) for r in rows)  # wall seconds
    verdicts = [line for line in table if line.startswith("parity ")]
    assert len(verdicts) == 3 and all("identical" in v for v in verdicts)
