"""``vigil export``: the incident bundle, with and without the admin role and evidence.

The incident is made by the real pipeline (see tests/test_evidence.py): a post with an
image on a list marked illegal becomes an alert with evidence; personal data for its
author sits in the restricted table as the ingest stores it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.cli import main as vigil_cli
from bot.config import Role, StaffMember
from bot.export import ExportError, export_incident
from bot.model import Author, Event, EventKind, PersonalData
from bot.store import InboxRow
from tests.fake_discourse import FakeDiscourse
from tests.test_evidence import H_ILLEGAL, ILLEGAL_PNG, KEY_B64, Vigil, start_vigil, write_vigil

EMAIL, IP = "member7@mail.example.com", "203.0.113.50"
ADA = StaffMember("Ada", Role.ADMIN, "UTC")
ALICE = StaffMember("Alice", Role.MODERATOR, "UTC")


async def make_incident(v: Vigil) -> int:
    """One alert: the illegal image, its evidence, its author's personal data, a person's action."""
    user = Author("7", "member")
    event = Event("forum", "u-7", EventKind.USER_CREATED, user=user, forum_event="user_created")
    row = InboxRow(
        "forum",
        "u-7",
        "user_created",
        json.dumps(event.to_dict()),
        PersonalData("7", "member", (IP,), (EMAIL,)),
    )
    await v.store.insert_events([row], v.clock.now())
    event_id = await v.post_image(ILLEGAL_PNG, 701)
    alert_id = await v.store.alert_for_event(event_id)
    assert alert_id is not None
    await v.clock.advance(90)
    await v.store.append_audit(
        actor="Alice",
        action="delete",
        target="post 701",
        reason="🗑 from the staff room",
        outcome="ok",
        now=v.clock.now(),
        alert_id=alert_id,
    )
    return alert_id


@pytest.fixture
async def incident(tmp_path: Path) -> AsyncIterator[tuple[Vigil, int]]:
    async with FakeDiscourse() as forum:
        v = await start_vigil(write_vigil(tmp_path, forum, KEY_B64), forum)
        try:
            yield v, await make_incident(v)
        finally:
            await v.app.stop()


def bundle_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


async def export(v: Vigil, alert_id: int, out: Path, person=None, with_evidence=False) -> dict:
    return await export_incident(
        v.store,
        v.app.config,
        alert_id,
        out,
        person=person,
        with_evidence=with_evidence,
        now=v.clock.now(),
    )


async def test_export_without_the_admin_role_has_no_personal_data(
    incident: tuple[Vigil, int], tmp_path: Path
) -> None:
    v, alert_id = incident
    for who, out in ((None, tmp_path / "anon"), (ALICE, tmp_path / "alice")):
        bundle = await export(v, alert_id, out, person=who)
        assert bundle["contains_personal_data"] is False and "personal_data" not in bundle
        data = bundle_bytes(out)
        assert EMAIL.encode() not in data and IP.encode() not in data
        assert b"mail.example.com" not in data
        assert sorted(p.name for p in out.iterdir()) == [
            "MANIFEST.sha256",
            "incident.json",
            "summary.txt",
        ]


async def test_the_bundle_holds_timeline_hashes_accounts_and_who_acted(
    incident: tuple[Vigil, int], tmp_path: Path
) -> None:
    v, alert_id = incident
    out = tmp_path / "b"
    await export(v, alert_id, out)
    doc = json.loads((out / "incident.json").read_text())
    assert doc["alert"]["id"] == alert_id and doc["alert"]["severity"] == "critical"
    (event,) = doc["events"]
    (media,) = event["media"]
    assert (media["sha256"], media["sha1"], media["md5"], media["pdq"]) == (
        H_ILLEGAL.sha256,
        H_ILLEGAL.sha1,
        H_ILLEGAL.md5,
        H_ILLEGAL.pdq,
    )
    assert [(m["list"], m["kind"], m["distance"], m["category"]) for m in event["matches"]] == [
        ("iwf-test", "sha256", 0, "csam-test")
    ]
    (account,) = doc["accounts"]
    assert (account["source"], account["user_id"], account["username"]) == ("forum", "7", "member")
    assert "account_age_at_first_event_s" in account
    actors = {(e["actor"], e["action"]) for e in doc["audit"]}
    assert ("Alice", "delete") in actors and ("vigil", "evidence_keep") in actors
    whats = [t["what"] for t in doc["timeline"]]
    assert any("matched list iwf-test" in w for w in whats)
    assert any(t["by"] == "Alice" and "delete" in t["what"] for t in doc["timeline"])
    assert [t["at"] for t in doc["timeline"]] == sorted(t["at"] for t in doc["timeline"])
    (ev,) = doc["evidence"]
    assert ev["bytes_kept"] and ev["image_file"] is None
    assert doc["audit_chain"]["ok"] is True
    summary = (out / "summary.txt").read_text()
    assert "Personal data (IP, email): not included" in summary
    assert f"sha256={H_ILLEGAL.sha256}" in summary and "[Alice]" in summary
    for line in (out / "MANIFEST.sha256").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    (entry,) = [e for e in await v.store.audit_entries() if e.action == "export"]
    assert entry.actor.startswith("cli:") and entry.outcome == "ok"
    assert entry.detail["personal_data"] is False and entry.alert_id == alert_id


async def test_an_admin_export_carries_personal_data_and_with_evidence_the_images(
    incident: tuple[Vigil, int], tmp_path: Path
) -> None:
    v, alert_id = incident
    out = tmp_path / "full"
    bundle = await export(v, alert_id, out, person=ADA, with_evidence=True)
    assert bundle["contains_personal_data"] and bundle["contains_images"]
    assert {(p["kind"], p["value"]) for p in bundle["personal_data"]} == {
        ("email", EMAIL),
        ("ip", IP),
    }
    (image,) = (out / "images").iterdir()
    assert image.read_bytes() == ILLEGAL_PNG and image.suffix == ".png"
    assert EMAIL in (out / "summary.txt").read_text()
    manifest = (out / "MANIFEST.sha256").read_text()
    assert f"{hashlib.sha256(ILLEGAL_PNG).hexdigest()}  images/{image.name}" in manifest
    (entry,) = [e for e in await v.store.audit_entries() if e.action == "export"]
    assert (entry.actor, entry.detail["images"], entry.detail["personal_data"]) == ("Ada", 1, True)


async def test_images_are_refused_to_a_moderator_and_the_refusal_audited(
    incident: tuple[Vigil, int], tmp_path: Path
) -> None:
    v, alert_id = incident
    for who in (ALICE, None):
        with pytest.raises(ExportError, match="for admins"):
            await export(v, alert_id, tmp_path / "x", person=who, with_evidence=True)
    assert not (tmp_path / "x").exists()
    refused = [e for e in await v.store.audit_entries() if e.action == "export"]
    assert [(e.actor[:4], e.outcome) for e in refused] == [
        ("Alic", "refused: images need an admin"),
        ("cli:", "refused: images need an admin"),
    ]


async def test_an_unknown_alert_or_a_used_directory_is_refused(
    incident: tuple[Vigil, int], tmp_path: Path
) -> None:
    v, alert_id = incident
    with pytest.raises(ExportError, match="no alert 999"):
        await export(v, 999, tmp_path / "none")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty directory"):
        await export(v, alert_id, tmp_path / "used")


def test_vigil_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def build() -> int:
        async with FakeDiscourse() as forum:
            v = await start_vigil(write_vigil(tmp_path, forum, KEY_B64), forum)
            try:
                return await make_incident(v)
            finally:
                await v.app.stop()

    alert_id = asyncio.run(build())
    config = str(tmp_path / "bot.toml")
    out = tmp_path / "bundle"
    args = ["export", f"#{alert_id}", "-c", config, "--out", str(out)]
    assert vigil_cli([*args, "--as", "Alice"]) == 0
    assert "no personal data, no images" in capsys.readouterr().out
    assert EMAIL.encode() not in bundle_bytes(out)
    assert vigil_cli([*args, "--as", "Ada", "--with-evidence"]) == 1  # out is not empty now
    assert "not an empty directory" in capsys.readouterr().err
    args[-1] = str(tmp_path / "admin")
    assert vigil_cli([*args, "--as", "Ada", "--with-evidence"]) == 0
    assert "with personal data, with images" in capsys.readouterr().out
    assert vigil_cli(["export", "last", "-c", config]) == 1
    assert "alert number" in capsys.readouterr().err
