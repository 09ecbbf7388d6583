"""Integrity: every read proves a file is the one that was written, or sets it aside with its reason.

Invariants:
* a damaged file is never served: a read raises ``CorruptFileError`` naming the file, its range and why,
  and the file is in ``.quarantine/`` with that reason; the other files are served as before;
* ``verify`` runs the same checks, reports each damaged file with its reason, and never crashes;
* files written before checksums ("unsealed") are checked by what they carry, and ``seal`` gives them one;
* a check costs one ``stat`` after the first read of a file in a process.
"""

from __future__ import annotations

import random
import shutil
import zlib
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from factories import key, make_bars

from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import CorruptFileError
from lumibot_duckdb.store import DuckDBDataStorage, Interval, integrity, missing_ranges
from lumibot_duckdb.store.damage import DAMAGES, KINDS, UNSEALED_MAYBE, damage, flip_bit, reasons
from lumibot_duckdb.store.maintenance import verify

SPY, QQQ = key("SPY"), key("QQQ")
WHOLE = ("2024-01-01", "2024-02-01")


def filled(root: Path) -> DuckDBDataStorage:
    """SPY in three files (two days of minutes and an empty answer between), QQQ in one."""
    store = DuckDBDataStorage(root)
    store.write(SPY, make_bars("2024-01-02 14:30", periods=390, seed=1))
    store.write(SPY, make_bars(periods=0), covered=("2024-01-03", "2024-01-04"))
    store.write(SPY, make_bars("2024-01-04 14:30", periods=390, seed=2))
    store.write(QQQ, make_bars("2024-01-02 14:30", periods=390, seed=3))
    return store


@pytest.mark.parametrize("sealed", [True, False], ids=["in-place", "unsealed"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_damage_is_found_by_verify_and_set_aside_by_a_read(tmp_path: Path, kind: str, sealed: bool) -> None:
    store = filled(tmp_path / "store")
    before = store.read(SPY, *WHOLE)
    hit = damage(store, SPY, kind, sealed=sealed, other=QQQ)
    integrity._CHECKED.clear()

    report = verify(store)  # changes nothing, never raises
    mine = [p for p in report.errors if p.path == str(hit.path)]
    maybe = not sealed and kind in UNSEALED_MAYBE
    if hit.expected is None:  # only a checksum could tell, and an unsealed file has none
        assert maybe or not mine, [p.kind for p in mine]
    else:
        assert hit.expected in {p.kind for p in mine}, (kind, [(p.kind, p.message) for p in report.problems])
        assert hit.path.exists()

    try:
        served = store.read(SPY, *WHOLE)
    except CorruptFileError as exc:
        assert hit.expected is not None or maybe, f"{kind}: flagged though nothing could tell: {exc}"
        assert exc.reasons and (hit.expected is None or exc.reasons[0].startswith(hit.expected)), exc.reasons
        assert hit.interval in exc.intervals and hit.path.name in str(exc)
        assert not hit.path.exists() and Path(exc.quarantined_to).exists()
        assert any(r.startswith(exc.reasons[0].split(":")[0]) for r in reasons(store))
        served = store.read(SPY, *WHOLE)  # what is left is served
        if kind.startswith("other-series"):  # the copied-in file is gone; the series' own file stays
            pd.testing.assert_frame_equal(served, before, check_freq=False)
        else:  # the damaged file's range is no longer covered: a data source fetches it again
            assert missing_ranges(store.coverage(SPY), hit.interval) == [hit.interval] or kind == "shifted-range"
            lost = (before.index >= hit.interval.start) & (before.index < hit.interval.end)
            if kind == "shifted-range":  # (the renamed file held the bars of the range before its name's)
                lost = before.index.isin(pq.read_table(exc.quarantined_to).column("ts").to_pandas())
            pd.testing.assert_frame_equal(served, before[~lost], check_freq=False)
    else:
        assert hit.expected is None, f"{kind} ({'sealed' if sealed else 'unsealed'}) was served: {len(served)} bars"
    assert verify(store).ok or hit.expected is None


def test_bit_flips_in_data_pages_and_footers_of_sealed_files_are_always_found(tmp_path: Path) -> None:
    """A seeded sample (benchmarks/bitflip.py runs 300+): every flip is found by the read, none served."""
    store = filled(tmp_path / "store")
    original = store.files(SPY)[0]
    pristine = original.path.read_bytes()
    rng = random.Random(13)
    found = 0
    for trial in range(40):
        original.path.write_bytes(pristine)
        flip_bit(original.path, rng, where="data" if trial % 4 else "footer")
        damage_ = integrity.check_file(original.path, SPY, original.interval, original.token)
        found += damage_ is not None and damage_.kind == "checksum"
    assert found == 40


def test_a_file_is_checked_once_per_process_and_again_when_it_changes(tmp_path: Path, monkeypatch) -> None:
    store = filled(tmp_path / "store")
    integrity._CHECKED.clear()
    calls = []
    real = integrity.check_file
    monkeypatch.setattr(integrity, "check_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    for _ in range(3):
        store.read(SPY, *WHOLE)
    assert len(calls) == len(store.files(SPY))
    victim = store.files(SPY)[0].path
    victim.write_bytes(victim.read_bytes())  # same bytes, new mtime: checked again, still sound
    store.read(SPY, *WHOLE)
    assert len(calls) == len(store.files(SPY)) + 1


def test_compaction_never_merges_a_damaged_file_into_a_sound_one(tmp_path: Path) -> None:
    store = DuckDBDataStorage(tmp_path / "store")
    bars = make_bars(periods=135, seed=4)
    for i in range(8):
        store.write(SPY, bars.iloc[i * 15:(i + 1) * 15])
    damage(store, SPY, "values-changed", which=3)
    integrity._CHECKED.clear()
    store.write(SPY, bars.iloc[120:])  # the 9th file: compaction runs, finds the damaged one
    assert len(reasons(store)) == 1 and reasons(store)[0].startswith("checksum")
    assert len(store.read(SPY, *WHOLE)) == 120 and verify(store).ok
    store.write(SPY, make_bars("2024-01-02 17:00", periods=15, seed=5))  # 9 sound files: merged
    assert len(store.read(SPY, *WHOLE)) == 135 and verify(store).ok
    assert len(store.files(SPY)) == len(store.coverage(SPY)) == 3, "merged into one file per run (around the hole)"


def test_unsealed_files_are_read_verified_with_a_warning_and_sealed_in_place(tmp_path: Path) -> None:
    store = filled(tmp_path / "store")
    before = {k: store.read(k, *WHOLE) for k in (SPY, QQQ)}
    published = {}
    for k in (SPY, QQQ):
        for bar_file in store.files(k):
            old = bar_file.path.with_name(bar_file.path.name.replace(bar_file.token, bar_file.token[:16] + "a1b2c3"))
            bar_file.path.rename(old)
            published[(k, bar_file.interval)] = bar_file.token[:16]
    integrity._CHECKED.clear()
    assert all(not f.sealed for k in (SPY, QQQ) for f in store.files(k))
    assert {k: store.read(k, *WHOLE).equals(before[k]) for k in before} == {SPY: True, QQQ: True}
    report = verify(store)
    assert report.ok and {p.kind for p in report.problems} == {"unsealed"}
    dup = damage(store, QQQ, "duplicate-rows", sealed=False)

    code, out = _cli("maintain", "seal", "--store", store.root)
    assert code == 0 and "sealed 3 file(s)" in out and "1 damaged" in out and dup.path.name in out
    assert all(f.sealed for f in store.files(SPY))
    assert {(SPY, f.interval): f.token[:16] for f in store.files(SPY)} == {
        k: v for k, v in published.items() if k[0] == SPY}, "sealing keeps each file's publish time"
    assert store.read(SPY, *WHOLE).equals(before[SPY])
    assert [p.kind for p in verify(store).errors] == ["duplicates"]


def test_verify_quarantine_sets_damage_aside_and_the_cli_says_why(tmp_path: Path) -> None:
    store = filled(tmp_path / "store")
    hit = damage(store, SPY, "naive-ns-timestamps", sealed=False)
    code, out = _cli("maintain", "verify", "--store", store.root)
    assert code == 1 and "schema" in out and "ts" in out and hit.path.exists()
    code, out = _cli("maintain", "verify", "--quarantine", "--store", store.root)
    assert code == 1 and "set aside" in out and not hit.path.exists()
    assert reasons(store) and reasons(store)[0].startswith("schema")
    code, out = _cli("maintain", "verify", "--store", store.root)
    assert code == 0 and "quarantined" in out


def test_verify_never_crashes_on_any_single_byte_damage(tmp_path: Path) -> None:
    """Every byte of a small file, changed in turn: verify reports or passes, and never raises."""
    store = DuckDBDataStorage(tmp_path / "store")
    store.write(SPY, make_bars(periods=5, seed=6))
    bar_file = store.files(SPY)[0]
    pristine = bar_file.path.read_bytes()
    for offset in range(0, len(pristine), max(1, len(pristine) // 300)):
        data = bytearray(pristine)
        data[offset] ^= 0xFF
        bar_file.path.write_bytes(bytes(data))
        for thorough in (False, True):
            found = integrity.inspect_file(bar_file.path, SPY, bar_file.interval, bar_file.token, thorough=thorough)
            assert found and found[0].kind == "checksum", offset
        unsealed = bar_file.path.with_name(bar_file.path.name.replace(bar_file.token, bar_file.token[:16] + "000000"))
        shutil.copy(bar_file.path, unsealed)
        integrity.inspect_file(unsealed, SPY, bar_file.interval, bar_file.token[:16] + "000000")  # no exception
        unsealed.unlink()
    bar_file.path.write_bytes(pristine)
    assert verify(store).ok


def test_a_sealed_file_is_what_publish_wrote(tmp_path: Path) -> None:
    store = DuckDBDataStorage(tmp_path / "store")
    store.write(SPY, make_bars(periods=10))
    (bar_file,) = store.files(SPY)
    assert bar_file.sealed and integrity.file_checksum(bar_file.path) == integrity.token_checksum(bar_file.token)
    meta = pq.read_schema(bar_file.path).metadata
    assert meta[integrity.SERIES_MARK] and meta[integrity.COVERAGE_MARK]
    assert integrity.check_file(bar_file.path, SPY, bar_file.interval, bar_file.token) is None
    assert integrity.check_file(bar_file.path, QQQ, bar_file.interval, bar_file.token).kind == "wrong-series"
    shifted = Interval(bar_file.interval.start, bar_file.interval.end + pd.Timedelta(minutes=1))
    assert integrity.check_file(bar_file.path, SPY, shifted, bar_file.token).kind == "coverage-mismatch"


def test_damage_kinds_are_documented() -> None:
    for kind in DAMAGES:
        assert DAMAGES[kind][2]
    doc = integrity.__doc__ or ""
    for name in ("unreadable", "checksum", "schema", "wrong-series", "coverage-mismatch", "outside-coverage",
                 "unsorted", "duplicates"):
        assert f"``{name}``" in doc


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


# -- through a backtest --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def filled_by_a_backtest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A store filled by a cold Polygon momentum backtest (three symbols), and that run's result."""
    from test_conformance import momentum, run

    from lumibot_duckdb.testing.kits import kit

    folder = tmp_path_factory.mktemp("template")
    return folder, run(momentum(kit("polygon")), "duckdb", "cold", folder)


@pytest.mark.backtest
@pytest.mark.parametrize("sealed", [True, False], ids=["in-place", "unsealed"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_damage_through_a_backtest_is_set_aside_fetched_again_and_fills_stay(
        filled_by_a_backtest: tuple[Path, object], tmp_path: Path, kind: str, sealed: bool) -> None:
    import warnings

    from test_conformance import momentum, run

    from lumibot_duckdb.sources.base import DuckDBFallbackWarning
    from lumibot_duckdb.testing.kits import kit

    template, cold = filled_by_a_backtest
    if not sealed and (kind in UNSEALED_MAYBE or DAMAGES.get(kind, (None, "x"))[1] == ""):
        pytest.skip("only a checksum can tell this damage, and an unsealed file has none (test above)")
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    root = tmp_path / "duckdb" / "duckdb"
    with DuckDBDataStorage(root) as store:
        daily = sorted(k for k in store.series() if k.timeframe == "day")
        hit = damage(store, daily[0], kind, sealed=sealed, other=daily[1], seed=3)
    integrity._CHECKED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuckDBFallbackWarning)  # a damaged file is never a fallback
        warm = run(momentum(kit("polygon")), "duckdb", "warm", tmp_path)
    assert (warm.fills, warm.final_value) == (cold.fills, cold.final_value)  # type: ignore[attr-defined]
    with DuckDBDataStorage(root) as store:
        assert [r for r in reasons(store) if r.startswith(hit.expected or "checksum")], reasons(store)
        assert verify(store).ok
        if not kind.startswith("other-series"):
            assert warm.provider_requests > 0, "the damaged range was not fetched again"
            assert not missing_ranges(store.coverage(daily[0]), hit.interval) or kind == "shifted-range"


def test_the_checksum_is_zlibs_crc32(tmp_path) -> None:
    """The CRC-32 in every file name is zlib's, whichever implementation computes it (ISA-L's when installed):
    files written by either are read by the other."""
    rng = random.Random(32)
    for size in (0, 1, 7, 64, 4095, 65_537, 3_000_001):
        data = rng.randbytes(size)
        (tmp_path / "f").write_bytes(data)
        assert integrity.crc32(data) == zlib.crc32(data)
        assert integrity.file_checksum(tmp_path / "f") == zlib.crc32(data)
