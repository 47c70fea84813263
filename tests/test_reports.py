"""Reports, held posts and care, through the real App: signed webhooks in (the simulated
Discourse and a generic forum), chat messages and forum calls out.

Reports become alerts that say who reported, why and the score; a report on a post
already alerted joins that alert; three distinct members reporting a post hide it
(one member reporting twice counts once); a held post's images are checked before
approval and the alert says so; a distressing list's alert says so first and never
shows the image; ``!help`` says who is on call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.alerts import DISTRESSING_LINE
from bot.app import load_everything
from bot.model import Author, Event, EventKind, Post, Report, ReportKind
from bot.reports import merge_report, reporter_keys
from tests.fake_discourse import FakeDiscourse
from tests.test_alerts import ALICE, VERA, World, make_world, png, until

GENERIC_SECRET = "generic-webhook-secret"
T0 = "2026-01-01T00:00:00+00:00"


@dataclass
class CallbackForum:
    """A generic forum's action callback on loopback: records what Vigil asks."""

    actions: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.actions.append(json.loads(await request.read()))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/vigil/actions", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/vigil/actions"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


GENERIC_SOURCE = """
[[source]]
name = "board"
kind = "generic"
webhook_secret_env = "GENERIC_SECRET"
callback_url = "{url}"
callback_secret_env = "GENERIC_SECRET"
"""

REPORT_RULES = textwrap.dedent(
    """
    [[rule]]
    name = "images"
    when = { events = ["post_created"], has_images = true }
    severity = "high"
    room = "staff"

    [[rule]]
    name = "member-report"
    when = { events = ["report_created", "report_updated"] }
    severity = "medium"
    room = "staff"

    [[rule]]
    name = "reported-by-three"
    when = { events = ["report_created"], distinct_reporters = { at_least = 3, within = "30m" } }
    severity = "high"
    actions = ["hide"]
    room = "staff"
    """
)


@pytest.fixture
async def forum() -> AsyncIterator[FakeDiscourse]:
    async with FakeDiscourse() as f:
        yield f


@pytest.fixture
async def callback() -> AsyncIterator[CallbackForum]:
    cb = CallbackForum()
    await cb.start()
    yield cb
    await cb.stop()


@pytest.fixture
async def world(
    tmp_path: Path, forum: FakeDiscourse, callback: CallbackForum
) -> AsyncIterator[World]:
    w = await make_world(
        tmp_path,
        forum,
        rules=REPORT_RULES,
        extra=GENERIC_SOURCE.format(url=callback.url),
    )
    with (tmp_path / ".env").open("a") as env:
        env.write(f"GENERIC_SECRET={GENERIC_SECRET}\n")
    await w.restart()  # with the generic source's secret loaded
    yield w
    await w.app.stop()


async def send_generic(world: World, document: dict[str, Any], delivery: str) -> int:
    body = json.dumps(document).encode()
    signature = "sha256=" + hmac.new(GENERIC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Vigil-Delivery": delivery,
        "X-Vigil-Signature": signature,
    }
    url = f"http://127.0.0.1:{world.app.port}/webhooks/generic"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status


def generic_report(report_id: str, reporter: str, reason: str = "") -> dict[str, Any]:
    return {
        "event": "report_created",
        "occurred_at": T0,
        "report": {
            "id": report_id,
            "kind": "flagged_post",
            "reporter": reporter,
            "reason": reason or None,
            "target_post_id": "p-77",
            "score": 2.5,
        },
        "post": {
            "id": "p-77",
            "url": "/threads/a.1/post-77",
            "text": "something members dislike",
            "author": {"id": "u-9", "username": "poster"},
        },
    }


def alert_texts(world: World) -> list[str]:
    return [world.server.text_of(m.id) for m in world.server.alerts()]


# --- reports --------------------------------------------------------------------------------


async def test_report_alert_says_who_reported_why_and_the_score(world: World) -> None:
    assert await send_generic(world, generic_report("r-1", "Anna_M", "Inappropriate"), "d1") == 200
    alert = await world.alert()
    text = world.server.text_of(alert.id)
    assert "Report: flagged post, score 2.5" in text
    assert "1 report by Anna_M (Inappropriate)" in text
    assert "Author: poster" in text
    assert alert.reactions == ["✅", "🔨", "👀", "❎", "↩️"]  # the same buttons as any alert


async def test_discourse_flag_alert_names_the_flagging_member_and_score(world: World) -> None:
    body = world.forum.flagged_post_payload(31, 610, 7, "rude words", flagger_id=12, score=6.0)
    assert await world.forum.send_webhook(world.url, "reviewable", "reviewable_created", body)
    alert = await world.alert()
    text = world.server.text_of(alert.id)
    assert "Report: flagged post, score 6" in text and "by member 12" in text
    assert f"{world.forum.base_url}/review/31" in text


async def test_report_on_a_post_already_alerted_joins_that_alert(world: World) -> None:
    post_id = await world.post_image(seed=4, user_id=7, username="troll")
    first = await world.alert()
    body = world.forum.flagged_post_payload(41, post_id, 7, "look", flagger_id=12, score=3.0)
    assert await world.forum.send_webhook(world.url, "reviewable", "reviewable_created", body)
    await until(
        lambda: "Report: flagged post" in world.server.text_of(first.id), "the report joined"
    )
    assert len(world.server.alerts()) == 1
    snap = await world.store.alert_snapshot(1)
    assert snap is not None and len(snap.targets) == 1  # the same post, not "+1 more"
    assert snap.targets[0].target["report"]["id"] == "41"
    assert "member-report" in snap.rules

    # ✅ now acts through the forum's reviewable (it resolves the flag too).
    await world.chat.react_as(ALICE, first.id, "✅")
    await until(lambda: world.forum.calls_to("PUT", "/review/41/perform/"), "hide via review")


async def test_three_distinct_members_hide_a_post_and_one_member_twice_counts_once(
    world: World, callback: CallbackForum
) -> None:
    reporters = [("r-1", "alice_m"), ("r-2", "ALICE_M"), ("r-3", "bob_m")]
    for n, (rid, who) in enumerate(reporters):
        assert await send_generic(world, generic_report(rid, who), f"d{n}") == 200
    alert = await world.alert()
    await until(lambda: "3 reports by" in world.server.text_of(alert.id), "three reports")
    line = next(x for x in world.server.text_of(alert.id).splitlines() if "reports by" in x)
    assert line.casefold().count("alice_m") == 1 and "bob_m" in line  # each member once
    assert callback.actions == []  # two distinct members so far: nothing hidden

    assert await send_generic(world, generic_report("r-4", "carol_m", "spam"), "d9") == 200
    await until(lambda: callback.actions, "the automatic hide")
    assert [(a["action"], a["post_id"]) for a in callback.actions] == [("hide", "p-77")]
    await until(
        lambda: "Done automatically: hide post p-77 ✓" in world.server.text_of(alert.id),
        "the alert says hidden",
    )
    text = world.server.text_of(alert.id)
    assert "reported-by-three" in text and "↩️" in text  # pending review, restorable

    # A fifth report does not hide it again.
    assert await send_generic(world, generic_report("r-5", "dave_m"), "d10") == 200
    await until(lambda: "5 reports" in world.server.text_of(alert.id), "the fifth report")
    assert len(callback.actions) == 1

    # ↩️ restores it.
    await world.chat.react_as(ALICE, alert.id, "↩️")
    await until(lambda: len(callback.actions) == 2, "the restore")
    assert callback.actions[1]["action"] == "unhide"


async def test_reports_outside_the_window_do_not_add_up(world: World) -> None:
    for n, who in enumerate(("alice_m", "bob_m")):
        assert await send_generic(world, generic_report(f"r-{n}", who), f"w{n}") == 200
    alert = await world.alert()
    await until(lambda: "2 reports" in world.server.text_of(alert.id), "two reports")
    await world.clock.advance(31 * 60)
    assert await send_generic(world, generic_report("r-9", "carol_m"), "w9") == 200
    await until(lambda: "3 reports" in world.server.text_of(alert.id), "the third report")
    rows = await world.store.forum_actions()
    assert [r.kind for r in rows] == []


def test_reporter_keys_fold_case_and_count_each_discourse_flag() -> None:
    post = Post("5", Author("7", "troll"))
    generic = Event("s", "d", EventKind.REPORT_CREATED, post=post,
                    report=Report("r", ReportKind.FLAGGED_POST, reporter="Anna"))  # fmt: skip
    assert reporter_keys(generic) == ("name:anna",)
    scored = Event("s", "d", EventKind.REPORT_UPDATED, post=post,
                   report=Report("9", ReportKind.FLAGGED_POST),
                   extra={"reporter_id": "12", "score_ids": [4, 5]})  # fmt: skip
    assert reporter_keys(scored) == ("score:4", "score:5")
    creator = Event("s", "d", EventKind.REPORT_CREATED, post=post,
                    report=Report("9", ReportKind.FLAGGED_POST), extra={"reporter_id": "-1"})  # fmt: skip
    assert reporter_keys(creator) == ()  # Discourse's system user is no member
    merged = merge_report({"post_id": "5"}, generic)
    merged = merge_report(merged, generic)
    assert merged["report_count"] == 2 and [e["by"] for e in merged["reports"]] == ["Anna"]


# --- held posts ------------------------------------------------------------------------------

HELD_RULES = textwrap.dedent(
    """
    [[list]]
    name = "known"
    file = "rules/known.txt"
    kinds = ["md5"]
    severity = "critical"
    category = "test"

    [[rule]]
    name = "held-post-images"
    when = { events = ["report_created"], report_kinds = ["queued_post"], has_images = true }
    severity = "medium"
    room = "staff"
    """
)


async def held_world(tmp_path: Path, forum: FakeDiscourse, known: bytes) -> World:
    (tmp_path / "rules").mkdir(parents=True, exist_ok=True)
    (tmp_path / "rules" / "known.txt").write_text(f"md5 {hashlib.md5(known).hexdigest()}\n")
    return await make_world(tmp_path, forum, rules=HELD_RULES)


async def test_held_post_image_is_checked_before_approval_and_the_alert_says_held(
    tmp_path: Path, forum: FakeDiscourse
) -> None:
    bad = png(21)
    world = await held_world(tmp_path, forum, bad)
    try:
        upload = forum.add_upload(bad)
        body = forum.queued_post_payload(51, 8, f"hello ![x|64x64]({upload.short_url})")
        assert await forum.send_webhook(world.url, "reviewable", "reviewable_created", body)
        alert = await world.alert()
        text = world.server.text_of(alert.id)
        assert "Held for approval: members cannot see it yet" in text
        assert "Image check before approval: 1 of 1 image on a list (known): do not approve" in text
        assert any(upload.sha1 in p for p in forum.upload_requests)  # fetched from the upload
        for secret in (upload.path, upload.sha1, "upload://", "<img"):
            assert secret not in text + (alert.message.html or "")
        # ✅ rejects the queued post through its reviewable.
        await world.chat.react_as(ALICE, alert.id, "✅")
        await until(lambda: forum.calls_to("PUT", "/review/51/perform/reject_post"), "reject")
    finally:
        await world.app.stop()


async def test_held_post_without_a_match_says_checked_no_match(
    tmp_path: Path, forum: FakeDiscourse
) -> None:
    world = await held_world(tmp_path, forum, png(22))
    try:
        upload = forum.add_upload(png(23))
        body = forum.queued_post_payload(52, 8, f"hi ![x|64x64]({upload.short_url})")
        assert await forum.send_webhook(world.url, "reviewable", "reviewable_created", body)
        alert = await world.alert()
        text = world.server.text_of(alert.id)
        assert "Held for approval" in text
        assert "Image check before approval: 1 of 1 image checked, no match" in text
    finally:
        await world.app.stop()


# --- care ---------------------------------------------------------------------------------------

CARE_RULES = textwrap.dedent(
    """
    [[list]]
    name = "distressing-list"
    file = "rules/bad.txt"
    kinds = ["md5"]
    distressing = true
    category = "abuse"

    [[list]]
    name = "spam-list"
    file = "rules/spam.txt"
    kinds = ["md5"]
    category = "spam"

    [[rule]]
    name = "listed"
    when = { events = ["post_created"], lists = ["*"] }
    severity = "critical"
    room = "staff"

    [[schedule]]
    name = "oncall"
    timezone = "Europe/London"
      [[schedule.layer]]
      people = ["Vera"]
    """
)


async def test_distressing_list_alert_says_so_first_and_never_shows_the_image(
    tmp_path: Path, forum: FakeDiscourse
) -> None:
    bad, spam = png(31), png(32)
    (tmp_path / "rules").mkdir(parents=True, exist_ok=True)
    (tmp_path / "rules" / "bad.txt").write_text(f"md5 {hashlib.md5(bad).hexdigest()}\n")
    (tmp_path / "rules" / "spam.txt").write_text(f"md5 {hashlib.md5(spam).hexdigest()}\n")
    world = await make_world(tmp_path, forum, rules=CARE_RULES)
    try:
        up = forum.add_upload(bad)
        await world.post(f"![x|64x64]({up.short_url})", user_id=7, username="troll")
        alert = await world.alert()
        text = world.server.text_of(alert.id)
        assert text.splitlines()[0] == DISTRESSING_LINE
        assert (alert.message.html or "").startswith(f"<b>{DISTRESSING_LINE}</b>")
        snap = await world.store.alert_snapshot(1)  # pages quote the summary
        assert snap is not None and snap.summary.startswith("⚠ Distressing material")
        for secret in (up.path, up.sha1, "upload://", "<img", "/uploads/"):
            assert secret not in text + (alert.message.html or ""), secret

        up2 = forum.add_upload(spam)
        await world.post(f"![x|64x64]({up2.short_url})", user_id=8, username="spammer")
        second = await world.alert(2)
        assert DISTRESSING_LINE not in world.server.text_of(second.id)
    finally:
        await world.app.stop()


async def test_help_tells_a_volunteer_who_is_on_call_and_how_to_reach_them(
    tmp_path: Path, forum: FakeDiscourse
) -> None:
    (tmp_path / "rules").mkdir(parents=True, exist_ok=True)
    for name in ("bad.txt", "spam.txt"):
        (tmp_path / "rules" / name).write_text("")
    world = await make_world(tmp_path, forum, rules=CARE_RULES)
    try:
        await world.chat.say_as(VERA, "!help")
        await until(lambda: world.server.messages, "the answer")
        text = next(iter(world.server.messages.values())).message.text
        assert text.splitlines()[0].startswith("Need a person? On call now: oncall: Vera")
        assert VERA in text and "!lockdown on" in text
    finally:
        await world.app.stop()


async def test_help_without_a_schedule_names_moderators(world: World) -> None:
    await world.chat.say_as(VERA, "!help")
    await until(lambda: world.server.messages, "the answer")
    text = next(iter(world.server.messages.values())).message.text
    assert "Nobody is on an on-call schedule right now" in text
    assert f"Alice ({ALICE})" in text and "Vera (" not in text


# --- rules syntax ---------------------------------------------------------------------------------


def test_distinct_reporters_and_lockdown_conditions_are_checked(tmp_path: Path) -> None:
    from tests.test_alerts import write_alert_config

    rules = textwrap.dedent(
        """
        [[rule]]
        name = "r"
        when = { distinct_reporters = { at_least = 0, within = "soon" }, lockdown = "yes" }
        room = "staff"
        """
    )
    write_alert_config(tmp_path, "http://127.0.0.1:9", rules=rules)
    loaded, problems = load_everything(tmp_path / "bot.toml")
    assert loaded is None
    text = "\n".join(str(p) for p in problems.errors)
    assert "rule[0].when.distinct_reporters.at_least" in text
    assert "rule[0].when.distinct_reporters.within" in text and "'soon'" in text
    assert "rule[0].when.lockdown: error: expected true or false" in text
