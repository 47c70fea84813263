"""The audit log's hash chain and ``vigil audit verify|show``, on a real database file.

An attacker with write access to the file is simulated with the sqlite3 module: drop
the append-only triggers, then edit or delete rows.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from bot.audit import parse_when, verify_chain
from bot.cli import main as vigil_cli
from bot.store import AuditItem, Plan, Store, audit_hash
from tests.conftest import write_config

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


async def fill(db_path: Path) -> None:
    """Five entries: people and rules, through both ways the store appends them."""
    store = await Store.open(db_path)
    try:
        await store.append_audit(
            actor="rule:known-image",
            action="hide",
            target="post 101",
            reason="list iwf",
            outcome="ok",
            now=T0,
            alert_id=1,
            detail={"event": 5},
        )
        await store.append_audit(
            actor="Alice",
            action="ack",
            target="alert 1",
            reason="👀",
            outcome="ok",
            now=T0 + 60,
            alert_id=1,
        )
        await store.apply_plan(
            Plan(audit=(AuditItem("Bob", "delete", "post 101", "🗑", "ok", alert_id=1),)),
            T0 + 120,
        )
        await store.append_audit(
            actor="Alice",
            action="dismiss",
            target="alert 2",
            reason="false positive",
            outcome="ok",
            now=T0 + 3600,
            alert_id=2,
        )
        await store.append_audit(
            actor="Ada",
            action="whois",
            target="user x on forum",
            reason="dm",
            outcome="ok",
            now=T0 + 7200,
            detail={"found": 2},
        )
    finally:
        await store.close()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, Path]:
    """A bot.toml and its database holding five audit entries."""
    config = write_config(tmp_path)
    db_path = tmp_path / "data" / "vigil.db"
    asyncio.run(fill(db_path))
    return str(config), db_path


def attacker(db_path: Path, *sql: str) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("DROP TRIGGER audit_no_delete")
        for statement in sql:
            db.execute(statement)


def verify(config: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    status = vigil_cli(["audit", "verify", "-c", config, *extra])
    return status, capsys.readouterr().out


def test_an_untouched_log_verifies(setup: tuple[str, Path], capsys) -> None:
    status, out = verify(setup[0], capsys)
    assert status == 0
    assert out.startswith("audit log OK: 5 entries, head ")


def test_the_database_itself_refuses_edits_and_deletions(setup: tuple[str, Path]) -> None:
    with sqlite3.connect(setup[1]) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE audit SET actor = 'Mallory' WHERE id = 2")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit WHERE id = 2")


def test_an_edited_entry_is_detected(setup: tuple[str, Path], capsys) -> None:
    config, db_path = setup
    attacker(db_path, "UPDATE audit SET actor = 'Carol' WHERE id = 3")
    status, out = verify(config, capsys)
    assert status == 1
    assert "BROKEN at entry #3" in out and "was edited" in out
    assert "2 entries before it verified" in out


def test_an_edit_with_its_own_hash_recomputed_breaks_the_next_link(setup, capsys) -> None:
    config, db_path = setup
    with sqlite3.connect(db_path) as db:
        row = db.execute(
            "SELECT prev_hash, at, actor, action, target, alert_id, reason, outcome, detail"
            " FROM audit WHERE id = 2"
        ).fetchone()
    forged = audit_hash(row[0], row[1], "Carol", *row[3:])
    attacker(db_path, f"UPDATE audit SET actor = 'Carol', hash = '{forged}' WHERE id = 2")
    status, out = verify(config, capsys)
    assert status == 1 and "BROKEN at entry #3" in out and "entry #2" in out


def test_a_deleted_entry_is_detected(setup: tuple[str, Path], capsys) -> None:
    config, db_path = setup
    attacker(db_path, "DELETE FROM audit WHERE id = 2")
    status, out = verify(config, capsys)
    assert status == 1
    assert "BROKEN at entry #3" in out and "deleted" in out


def test_a_deleted_first_entry_is_detected(setup: tuple[str, Path], capsys) -> None:
    config, db_path = setup
    attacker(db_path, "DELETE FROM audit WHERE id = 1")
    status, out = verify(config, capsys)
    assert status == 1 and "BROKEN at entry #2" in out and "start of the log" in out


def test_a_cut_off_end_is_caught_by_an_anchor_kept_elsewhere(setup, capsys) -> None:
    config, db_path = setup
    _, out = verify(config, capsys)
    head = out.split("head ")[1].strip()
    attacker(db_path, "DELETE FROM audit WHERE id = 5")
    assert verify(config, capsys)[0] == 0  # the chain alone cannot know the end is gone
    status, out = verify(config, capsys, "--anchor", head)
    assert status == 1 and "not in the log" in out


def test_verify_chain_names_a_broken_genesis() -> None:
    row = (1, T0, "a", "b", "c", None, "r", "ok", "{}", "f" * 64, "0" * 64)
    report = verify_chain([row])
    assert not report.ok and report.broken_id == 1


def show(config: str, capsys, *args: str) -> list[str]:
    assert vigil_cli(["audit", "show", "-c", config, *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_show_filters_by_person_alert_action_and_time(setup: tuple[str, Path], capsys) -> None:
    config, _ = setup
    lines = show(config, capsys)
    assert len(lines) == 6 and lines[-1] == "5 entries"
    assert lines[0].startswith("#1 2026-05-28T20:26:40Z rule:known-image: hide post 101 [alert 1]")
    assert [ln.split()[0] for ln in show(config, capsys, "--person", "alice")[:-1]] == ["#2", "#4"]
    assert [ln.split()[0] for ln in show(config, capsys, "--alert", "1")[:-1]] == ["#1", "#2", "#3"]
    assert [ln.split()[0] for ln in show(config, capsys, "--action", "whois")[:-1]] == ["#5"]
    window = show(
        config, capsys, "--since", "2026-05-28T20:27:40Z", "--until", "2026-05-28T21:26:40"
    )
    assert [ln.split()[0] for ln in window[:-1]] == ["#2", "#3"]
    combined = show(config, capsys, "--person", "Alice", "--alert", "2", "--json")
    (doc,) = [json.loads(ln) for ln in combined]
    assert (doc["id"], doc["action"], doc["reason"]) == (4, "dismiss", "false positive")


def test_a_bad_time_is_refused_with_the_expected_form(setup: tuple[str, Path], capsys) -> None:
    assert vigil_cli(["audit", "show", "-c", setup[0], "--since", "yesterday"]) == 2
    assert "ISO 8601" in capsys.readouterr().err
    assert parse_when("2026-05-28") == parse_when("2026-05-28T00:00:00+00:00")
