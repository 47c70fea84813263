"""Evidence of illegal matches: kept encrypted, read only by an admin, purged on time.

The pipeline is the real one (simulated Discourse serving generated images, signed
webhooks over loopback HTTP, SQLite, the hash pool), with the evidence stage placed
where the app wiring puts it: after the match stage, before the rules.
"""

from __future__ import annotations

import base64
import getpass
import io
import logging
import sqlite3
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.imagegen import encode, make_image
from bot.app import App, load_everything
from bot.chat_service import AlertStage
from bot.cli import check
from bot.cli import main as vigil_cli
from bot.clock import ManualClock
from bot.evidence import (
    DAY_S,
    EvidenceKeyError,
    EvidenceStage,
    EvidenceVault,
    parse_key,
    read_evidence,
)
from bot.hashing import hash_image
from bot.pipeline import Stage
from bot.scanning import MatchStage, MediaStage
from bot.stages import RulesStage
from bot.store import Store
from tests.conftest import write_config
from tests.fake_discourse import FakeDiscourse

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
OTHER_KEY_B64 = base64.b64encode(bytes(range(1, 33))).decode()

ILLEGAL_PNG = encode(make_image(201, 320, 240), "PNG")
OTHER_PNG = encode(make_image(202, 320, 240), "PNG")
PREMATCHED_PNG = encode(make_image(203, 320, 240), "PNG")
H_ILLEGAL, H_OTHER, H_PRE = (hash_image(d) for d in (ILLEGAL_PNG, OTHER_PNG, PREMATCHED_PNG))

LISTS = """
[[list]]
name = "iwf-test"
file = "lists/iwf.txt"
kinds = ["sha1", "sha256", "pdq"]
severity = "critical"
category = "csam-test"
illegal = true

[[list]]
name = "spam-images"
file = "lists/spam.txt"
kinds = ["pdq"]
severity = "medium"
category = "spam"

[[rule]]
name = "known-image"
when = { lists = ["iwf-test", "spam-images"] }
severity = "critical"
room = "staff"
"""
ADMIN_TOML = """
[[staff]]
name = "Ada"
role = "admin"
timezone = "UTC"
matrix = "@ada:vigil.test"
"""


def write_vigil(root: Path, forum: FakeDiscourse, key: str | None, extra: str = "") -> Path:
    path = write_config(root, rules=LISTS, extra_toml=ADMIN_TOML + extra)
    text = path.read_text().replace(
        'base_url = "http://127.0.0.1:9"', f'base_url = "{forum.base_url}"', 1
    )
    path.write_text(text)
    if key is not None:
        with (root / ".env").open("a") as env:
            env.write(f"VIGIL_EVIDENCE_KEY={key}\n")
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "iwf.txt").write_text(f"sha256 {H_ILLEGAL.sha256}\nsha1 {H_PRE.sha1}\n")
    (root / "lists" / "spam.txt").write_text(f"pdq {H_OTHER.pdq}\n")
    return path


def evidence_stages(app: App) -> list[Stage]:
    """The stages as the app wiring should place them (see the report)."""
    assert app.store is not None and app.scanner is not None and app.lists is not None
    vault = EvidenceVault.from_config(app.config)
    pipe = app.config.pipeline
    stages: list[Stage] = [
        MediaStage(
            app.scanner,
            app.lists,
            app.store,
            pipe.max_attempts,
            pipe.lease_s,
            keep_bytes=vault.enabled,
        ),
        MatchStage(app.lists, app.store),
        EvidenceStage(vault, app.store, lambda: app.rules, app.config.evidence.categories),
        RulesStage(lambda: app.rules),
    ]
    if app.chat is not None:
        stages.append(AlertStage(app.chat))
    return stages


@dataclass
class Vigil:
    app: App
    forum: FakeDiscourse
    root: Path
    clock: ManualClock

    @property
    def store(self) -> Store:
        assert self.app.store is not None
        return self.app.store

    @property
    def evidence_dir(self) -> Path:
        return self.app.config.evidence.directory

    async def post_image(self, data: bytes, post_id: int) -> int:
        up = self.forum.add_upload(data, "png")
        body = self.forum.post_created_payload(
            post_id=post_id, user_id=7, username="member", raw=f"![x|10x10]({up.short_url})"
        )
        url = f"http://127.0.0.1:{self.app.port}/webhooks/discourse"
        assert await self.forum.send_webhook(url, "post", "post_created", body) == 200
        event_id = (await self.store.events())[-1]["id"]
        assert self.app.pipeline is not None
        while await self.app.pipeline.run_once():
            pass
        return event_id


async def start_vigil(path: Path, forum: FakeDiscourse) -> Vigil:
    loaded, problems = load_everything(path)
    assert loaded is not None, [str(p) for p in problems.items]
    clock = ManualClock()
    app = App(
        loaded.config,
        loaded.rules,
        clock=clock,
        stages=evidence_stages,
        watch_rules=False,
        chats=lambda a: {},
    )
    await app.start()
    assert app.pipeline is not None
    await app.pipeline.stop()
    return Vigil(app, forum, path.parent, clock)


@pytest.fixture
async def forum() -> AsyncIterator[FakeDiscourse]:
    async with FakeDiscourse() as f:
        yield f


@pytest.fixture
async def vigil(tmp_path: Path, forum: FakeDiscourse) -> AsyncIterator[Vigil]:
    v = await start_vigil(write_vigil(tmp_path, forum, KEY_B64), forum)
    yield v
    await v.app.stop()


# --- the key and the vault --------------------------------------------------------------


def test_key_is_32_bytes_in_base64_or_hex() -> None:
    assert parse_key(KEY_B64) == KEY
    assert parse_key(KEY.hex()) == KEY
    assert parse_key(base64.urlsafe_b64encode(KEY).decode().rstrip("=")) == KEY
    for bad in ("", "short", base64.b64encode(bytes(16)).decode(), "zz" * 32):
        with pytest.raises(ValueError, match="32-byte key"):
            parse_key(bad)


async def test_vault_round_trip_is_encrypted_on_disk(tmp_path: Path) -> None:
    vault = EvidenceVault(tmp_path / "ev", KEY, 365)
    name = await vault.write(ILLEGAL_PNG)
    on_disk = (tmp_path / "ev" / name).read_bytes()
    assert ILLEGAL_PNG[100:164] not in on_disk and b"IHDR" not in on_disk
    assert len(on_disk) == len(ILLEGAL_PNG) + 4 + 12 + 16
    assert await vault.read(name) == ILLEGAL_PNG
    assert oct((tmp_path / "ev" / name).stat().st_mode & 0o777) == "0o600"


async def test_wrong_key_or_swapped_file_fails_cleanly(tmp_path: Path) -> None:
    vault = EvidenceVault(tmp_path / "ev", KEY, 365)
    a, b = await vault.write(ILLEGAL_PNG), await vault.write(OTHER_PNG)
    wrong = EvidenceVault(tmp_path / "ev", parse_key(OTHER_KEY_B64), 365)
    with pytest.raises(EvidenceKeyError, match="does not open with this key"):
        await wrong.read(a)
    (tmp_path / "ev" / a).write_bytes((tmp_path / "ev" / b).read_bytes())  # swap contents
    with pytest.raises(EvidenceKeyError):
        await vault.read(a)


# --- through the pipeline ---------------------------------------------------------------


async def test_illegal_match_keeps_the_original_encrypted_with_hashes_and_metadata(
    vigil: Vigil,
) -> None:
    event_id = await vigil.post_image(ILLEGAL_PNG, 501)
    (record,) = await vigil.store.evidence_records([event_id])
    assert (record["sha256"], record["sha1"], record["size"]) == (
        H_ILLEGAL.sha256,
        H_ILLEGAL.sha1,
        len(ILLEGAL_PNG),
    )
    assert record["file"] and record["note"] == ""
    assert (
        '"list": "iwf-test"' in record["matches"] and '"username": "member"' in record["metadata"]
    )
    assert record["expires_at"] - record["created_at"] == 365 * DAY_S
    on_disk = (vigil.evidence_dir / record["file"]).read_bytes()
    assert ILLEGAL_PNG[200:264] not in on_disk
    vault = EvidenceVault.from_config(vigil.app.config)
    assert await read_evidence(vault, record) == ILLEGAL_PNG
    kept = [e for e in await vigil.store.audit_entries() if e.action == "evidence_keep"]
    assert [(e.actor, e.target, e.outcome) for e in kept] == [
        ("vigil", f"event {event_id}", "kept")
    ]


async def test_a_match_on_a_list_not_marked_illegal_keeps_nothing(vigil: Vigil) -> None:
    event_id = await vigil.post_image(OTHER_PNG, 502)
    assert await vigil.store.event_matches(event_id)  # it did match spam-images
    assert await vigil.store.evidence_records([event_id]) == []
    assert not vigil.evidence_dir.exists() or not any(vigil.evidence_dir.iterdir())


async def test_a_repost_shares_one_encrypted_copy(vigil: Vigil) -> None:
    first = await vigil.post_image(ILLEGAL_PNG, 503)
    again = await vigil.post_image(ILLEGAL_PNG, 504)  # same upload: hashes reused, no fetch
    a, b = await vigil.store.evidence_records([first, again])
    assert a["file"] == b["file"] and "earlier evidence" in b["note"]
    assert len(list(vigil.evidence_dir.glob("*.vge"))) == 1


async def test_an_image_matched_before_download_is_recorded_without_bytes(vigil: Vigil) -> None:
    event_id = await vigil.post_image(PREMATCHED_PNG, 505)
    (record,) = await vigil.store.evidence_records([event_id])
    assert record["file"] is None and record["sha1"] == H_PRE.sha1
    assert "not fetched" in record["note"]
    assert not vigil.evidence_dir.exists() or not any(vigil.evidence_dir.iterdir())


async def test_expired_evidence_and_its_file_are_purged(vigil: Vigil) -> None:
    event_id = await vigil.post_image(ILLEGAL_PNG, 506)
    (record,) = await vigil.store.evidence_records([event_id])
    vault = EvidenceVault.from_config(vigil.app.config)
    await vigil.clock.advance(364 * DAY_S)
    assert await vault.purge(vigil.store, vigil.clock.now()) == ((), 0)
    await vigil.clock.advance(1 * DAY_S)
    ids, files = await vault.purge(vigil.store, vigil.clock.now())
    assert ids == (record["id"],) and files == 1
    assert await vigil.store.evidence_records() == []
    assert not (vigil.evidence_dir / record["file"]).exists()
    (entry,) = [e for e in await vigil.store.audit_entries() if e.action == "purge_evidence"]
    assert entry.detail == {"ids": [record["id"]], "files": 1}


async def test_without_a_key_evidence_is_recorded_without_bytes_and_warned(
    tmp_path: Path, forum: FakeDiscourse, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    path = write_vigil(tmp_path, forum, None)
    loaded, problems = load_everything(path)
    assert loaded is not None
    assert any(
        "list 'iwf-test'.illegal" in str(p) and "will NOT be kept" in str(p)
        for p in problems.warnings
    )
    report = io.StringIO()
    assert check(path, report) == 0
    assert "evidence  OFF ($VIGIL_EVIDENCE_KEY is not set)" in report.getvalue()
    assert "will NOT be kept" in report.getvalue()
    v = await start_vigil(path, forum)
    try:
        event_id = await v.post_image(ILLEGAL_PNG, 507)
        (record,) = await v.store.evidence_records([event_id])
        assert record["file"] is None and "no key" in record["note"]
        assert record["sha256"] == H_ILLEGAL.sha256
        assert "EVIDENCE IS OFF" in caplog.text
        assert not v.evidence_dir.exists()
    finally:
        await v.app.stop()


def test_evidence_settings_are_checked(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    path = write_config(
        tmp_path,
        extra_toml=textwrap.dedent(
            """
            [evidence]
            retention_days = 30
            categories = ["csam"]
            """
        ),
    )
    with (tmp_path / ".env").open("a") as env:
        env.write("VIGIL_EVIDENCE_KEY=not-a-key\n")
    _, problems = load_everything(path)
    messages = [str(p) for p in problems.errors]
    assert any("evidence.retention_days" in m and "from 90" in m for m in messages)
    assert any("evidence.key_env" in m and "32-byte key" in m for m in messages)


# --- vigil evidence get ---------------------------------------------------------------


async def kept_evidence(tmp_path: Path) -> int:
    """A vigil with one piece of evidence (the service stopped); returns its id."""
    async with FakeDiscourse() as forum:
        v = await start_vigil(write_vigil(tmp_path, forum, KEY_B64), forum)
        try:
            event_id = await v.post_image(ILLEGAL_PNG, 601)
            (record,) = await v.store.evidence_records([event_id])
        finally:
            await v.app.stop()
    return int(record["id"])


def audit_rows(tmp_path: Path, action: str) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "data" / "vigil.db") as db:
        return db.execute(
            "SELECT actor, outcome FROM audit WHERE action = ? ORDER BY id", (action,)
        ).fetchall()


def test_evidence_get_is_for_admins_audited_and_needs_the_right_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    evidence_id = asyncio.run(kept_evidence(tmp_path))
    config = str(tmp_path / "bot.toml")
    out = tmp_path / "out.png"
    base = ["evidence", "get", str(evidence_id), "-c", config, "--out", str(out)]

    assert vigil_cli([*base, "--as", "Alice"]) == 1  # a moderator
    assert "for admins" in capsys.readouterr().err and not out.exists()
    assert vigil_cli(base) == 1  # nobody named
    assert vigil_cli([*base, "--as", "Mallory"]) == 1  # not on the roster
    assert "not on the staff roster" in capsys.readouterr().err

    assert vigil_cli([*base, "--as", "ada", "--reason", "case 2026/17"]) == 0
    assert out.read_bytes() == ILLEGAL_PNG
    assert oct(out.stat().st_mode & 0o777) == "0o600"

    env = (tmp_path / ".env").read_text().replace(KEY_B64, OTHER_KEY_B64)
    (tmp_path / ".env").write_text(env)
    other = tmp_path / "other.png"
    assert vigil_cli([*base[:-1], str(other), "--as", "Ada"]) == 1
    assert "does not open with this key" in capsys.readouterr().err
    assert not other.exists()
    rows = audit_rows(tmp_path, "evidence_get")
    assert [(actor, outcome.split(":")[0]) for actor, outcome in rows] == [
        ("Alice", "refused"),
        (f"cli:{getpass.getuser()}", "refused"),
        ("Mallory", "refused"),
        ("Ada", "ok"),
        ("Ada", "failed"),
    ]
    assert "does not open with this key" in rows[-1][1]
