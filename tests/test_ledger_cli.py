"""`aifi-ledger`: JSON out of the ledger database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from consumers import testing
from core.contract import Event
from core.settings import LedgerSettings
from ledger import cli as ledger_cli, ledger

EVENTS = (
    testing.transition("entered", 1, "s1"),
    testing.transition("entered", 1, "s2"),
    testing.transition("exited", 1, "s2"),
    testing.transition("entered", 2, "s3"),
    testing.tracking(1, "u-1", "p-1"),
)


@pytest.fixture
async def written(
    ledger_settings: LedgerSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> LedgerSettings:
    """A ledger on each backend, written by a worker's ledger, named by the environment
    as an operator's shell would name it."""
    async with ledger.opened(ledger_settings) as presence:
        await presence.apply([Event.from_body(outbound.body) for outbound in EVENTS])
    (tmp_path / "empty.yaml").write_text("{}\n")
    monkeypatch.setenv("AIFI_CONFIG", str(tmp_path / "empty.yaml"))
    if ledger_settings.url:
        monkeypatch.setenv("AIFI_LEDGER_URL", ledger_settings.url)
    else:
        monkeypatch.setenv("AIFI_LEDGER_DB", str(ledger_settings.db))
    return ledger_settings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    try:
        ledger_cli.main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, orjson.loads(capsys.readouterr().out or "null")


def test_occupancy_of_every_store_and_of_one(
    written: LedgerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "occupancy") == (
        0,
        {
            "occupancy": 2,
            "stores": [
                {"storeId": 1, "occupancy": 1, "openSessions": 1, "sessions": 2},
                {"storeId": 2, "occupancy": 1, "openSessions": 1, "sessions": 1},
            ],
        },
    )
    assert run(capsys, "occupancy", "--store", "2")[1]["occupancy"] == 1
    assert run(capsys, "occupancy", "--store", "9") == (
        0,
        {"storeId": 9, "occupancy": 0, "openSessions": 0, "sessions": 0},
    )


def test_a_visit_and_a_tracking_row(
    written: LedgerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, visit = run(capsys, "visit", "s2")
    assert code == 0
    assert (visit["personsEntered"], visit["personsExited"], visit["occupancy"]) == (1, 1, 0)
    code, tracking = run(capsys, "tracking", "u-1")
    assert (code, tracking["shopperId"], tracking["matched"]) == (0, "p-1", True)


def test_what_is_not_there_prints_null_and_exits_1(
    written: LedgerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "visit", "nope") == (1, None)
    assert run(capsys, "tracking", "nope") == (1, None)


def test_a_missing_database_is_an_error_not_a_new_file(
    written: LedgerSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.sqlite3"
    with pytest.raises(SystemExit) as exited:
        ledger_cli.main(["--db", str(missing), "occupancy"])
    assert exited.value.code == 2
    assert f"no ledger database at {missing}" in capsys.readouterr().err
    assert not missing.exists()


def test_an_empty_postgresql_database_is_an_error_and_stays_empty(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        ledger_cli.main(["--url", pg_url, "occupancy"])
    assert exited.value.code == 2
    assert "no ledger at postgresql://aifi" in capsys.readouterr().err
    with psycopg.connect(pg_url) as connection:
        assert connection.execute("SELECT to_regclass('visits')").fetchone() == (None,)


def test_a_url_of_another_kind_is_refused_without_echoing_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        ledger_cli.main(["--url", "mysql://root:s3cret@db/ledger", "occupancy"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--url: Value error, must start with postgresql://" in err
    assert "s3cret" not in err
