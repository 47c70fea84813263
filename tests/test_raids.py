"""Raids and lockdowns through the real App: a burst of image posts from new accounts,
sent as signed webhooks by the simulated Discourse, starts a lockdown that switches
image posting off on the forum, opens a critical alert that escalates, hides the next
new-account image post, reminds the room every hour on the clock, survives a restart
and ends on time. ``!lockdown`` obeys the roster's roles.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.app import load_everything
from bot.clock import ManualClock
from bot.ports import ChatCommand
from tests.fake_discourse import FakeDiscourse
from tests.test_alerts import (
    ALICE,
    STRANGER,
    VERA,
    ChatServer,
    RecordingChat,
    World,
    start_app,
    until,
    write_alert_config,
)

START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
SETTING = "embedded_media_post_allowed_groups"
RAID_RULES = textwrap.dedent(
    """
    [[raid]]
    name = "burst"
    description = "image posts from accounts younger than a week"
    when = { events = ["post_created"], has_images = true, account_younger_than = "7d" }
    at_least = 5
    within = "10m"
    lockdown = "2h"

    [[rule]]
    name = "lockdown-new-account-images"
    when = { events = ["post_created"], has_images = true, account_younger_than = "7d", lockdown = true }
    severity = "high"
    actions = ["hide"]
    room = "staff"

    [[schedule]]
    name = "oncall"
    timezone = "Europe/London"
      [[schedule.layer]]
      people = ["Vera"]

    [[policy]]
    name = "critical"
    severities = ["critical"]
      [[policy.step]]
      targets = ["schedule:oncall"]
      delay = "5m"
    """
)
LOCKDOWN_TABLE = """
[lockdown]
default_duration = "2h"
reminder_every = "1h"
room = "staff"
"""


async def raid_world(tmp_path: Path, forum: FakeDiscourse, **options: Any) -> World:
    """A Vigil whose Discourse source switches image posting off during a lockdown."""
    write_alert_config(tmp_path, forum.base_url, rules=RAID_RULES, extra=LOCKDOWN_TABLE, **options)
    config = tmp_path / "bot.toml"
    config.write_text(
        config.read_text().replace(
            'api_username = "vigil"\n',
            'api_username = "vigil"\n'
            f'lockdown_settings = {{ {SETTING} = "1|2|12" }}\n'
            f'normal_settings = {{ {SETTING} = "1|2|10" }}\n',
        )
    )
    server = ChatServer()
    chat = RecordingChat(server)
    clock = ManualClock(start=START)
    app = await start_app(tmp_path, clock, chat)
    return World(tmp_path, forum, server, clock, app, chat, posts=itertools.count(900))


@pytest.fixture
async def forum() -> AsyncIterator[FakeDiscourse]:
    async with FakeDiscourse() as f:
        yield f


@pytest.fixture
async def world(tmp_path: Path, forum: FakeDiscourse) -> AsyncIterator[World]:
    w = await raid_world(tmp_path, forum)
    yield w
    await w.app.stop()


async def new_account(world: World, user_id: int, age: timedelta = timedelta(hours=1)) -> None:
    created = datetime.fromtimestamp(world.clock.now(), UTC) - age
    body = world.forum.user_created_payload(user_id, f"user{user_id}", created_at=created)
    assert await world.forum.send_webhook(world.url, "user", "user_created", body) == 200


async def image_post(world: World, user_id: int, seed: int) -> int:
    return await world.post_image(seed=seed, user_id=user_id, username=f"user{user_id}")


async def settled(world: World) -> None:
    """Every delivery so far has gone through the pipeline."""

    async def done() -> bool:
        counts = await world.store.inbox_counts()
        return set(counts) == {"done"}

    await until(done, "the pipeline to finish")


def room_texts(world: World) -> list[str]:
    return [world.server.text_of(m) for m in world.server.messages]


async def lockdown_row(world: World) -> dict[str, Any] | None:
    return await world.store.lockdown_latest()


# --- the simulated raid ------------------------------------------------------------------------


async def test_raid_locks_down_escalates_hides_reminds_survives_restart_and_ends_on_time(
    world: World,
) -> None:
    forum = world.forum
    for uid in range(101, 108):
        await new_account(world, uid)
    await new_account(world, 200, age=timedelta(days=400))  # an old member
    for n, uid in enumerate(range(101, 105)):
        await image_post(world, uid, seed=n + 1)
    await settled(world)
    assert await lockdown_row(world) is None  # four is not a raid

    fifth = await image_post(world, 105, seed=5)
    await until(lambda: world.app.lockdown and world.app.lockdown.is_on(world.clock.now()), "on")
    row = await lockdown_row(world)
    assert row is not None and row["raid"] == "burst" and row["started_by"] == "Vigil"
    assert row["ends_at"] - row["started_at"] == 2 * 3600

    # Image posting is switched off for new accounts on the forum.
    await until(lambda: forum.site_settings[SETTING] == "1|2|12", "the site setting")
    # A critical alert that escalates: the on-call person is paged.
    raid_alert = int(row["alert_id"])
    await until(
        lambda: any("Raid detected" in t and "CRITICAL" in t for t in room_texts(world)),
        "the raid alert",
    )

    async def paged() -> bool:
        return any(e["kind"] == "page" for e in await world.store.escalation_log(raid_alert))

    await until(paged, "the page of the on-call person")
    assert any("LOCKDOWN ON until" in t for t in room_texts(world))

    # The post that crossed the threshold and the next new-account image post are hidden;
    # an old member's image post is not.
    sixth = await image_post(world, 106, seed=6)
    old = await image_post(world, 200, seed=7)
    await settled(world)
    await until(lambda: forum.post(sixth).hidden and forum.post(fifth).hidden, "the hides")
    assert not forum.post(old).hidden

    # A reminder every hour, on the clock.
    await world.clock.advance(3600)
    await until(
        lambda: any("Reminder: the lockdown is still on" in t for t in room_texts(world)),
        "the hourly reminder",
    )

    # A restart keeps the lockdown: the next new account's image post is still hidden.
    await world.restart()
    assert world.app.lockdown is not None and world.app.lockdown.is_on(world.clock.now())
    seventh = await image_post(world, 107, seed=8)
    await until(lambda: forum.post(seventh).hidden, "a hide after the restart")

    # It ends by itself when its two hours are up, and the setting is put back.
    await world.clock.advance(3600)

    async def ended() -> bool:
        r = await lockdown_row(world)
        return r is not None and r["state"] == "off" and r["settings_state"] == "off"

    await until(ended, "the end of the lockdown")
    row = await lockdown_row(world)
    assert row is not None and row["ended_at"] == row["ends_at"]
    assert row["end_reason"] == "its time ran out"
    assert forum.site_settings[SETTING] == "1|2|10"
    assert any("Lockdown ended" in t for t in room_texts(world))
    reminders = [t for t in room_texts(world) if "Reminder: the lockdown" in t]
    assert len(reminders) == 1
    actions = [e.action for e in await world.store.audit_entries()]
    assert actions.count("lockdown_on") == 1 and actions.count("lockdown_off") == 1
    assert actions.count("site_setting") == 2

    # After the end, new accounts' images are no longer hidden.
    await new_account(world, 108)
    later = await image_post(world, 108, seed=9)
    await settled(world)
    assert not forum.post(later).hidden


async def test_a_raid_does_not_restart_a_lockdown_a_moderator_just_ended(world: World) -> None:
    for uid in range(101, 107):
        await new_account(world, uid)
    for n, uid in enumerate(range(101, 106)):
        await image_post(world, uid, seed=n + 1)
    await until(lambda: world.app.lockdown and world.app.lockdown.current, "the lockdown")
    await world.chat.say_as(ALICE, "!lockdown off false alarm")
    await until(lambda: world.app.lockdown and world.app.lockdown.current is None, "the end")
    await image_post(world, 106, seed=6)
    await settled(world)
    row = await lockdown_row(world)
    assert row is not None and row["id"] == 1 and row["state"] == "off"
    assert row["end_reason"] == "false alarm"


# --- !lockdown --------------------------------------------------------------------------------


def replies(world: World) -> list[str]:
    return [t for t in room_texts(world) if "alert #" not in t]


async def test_lockdown_commands_follow_the_roster_roles(world: World) -> None:
    await world.chat.say_as(STRANGER, "!lockdown on")
    await until(lambda: any("not on Vigil's staff roster" in t for t in replies(world)), "no")
    assert await lockdown_row(world) is None

    # A volunteer may start one (and it opens an alert, so paid staff hear of it).
    await world.chat.say_as(VERA, "!lockdown on 1h raid in progress")
    await until(lambda: any("Lockdown #1 is on until" in t for t in replies(world)), "on")
    row = await lockdown_row(world)
    assert row is not None and row["ends_at"] - row["started_at"] == 3600
    assert row["started_by"] == "Vera" and row["reason"] == "raid in progress"
    assert row["alert_id"] is not None
    await until(lambda: world.forum.site_settings[SETTING] == "1|2|12", "the setting")
    alert = await world.alert()  # the volunteer's lockdown alert: there is no post to act on
    assert "Vera (volunteer) started a lockdown" in world.server.text_of(alert.id)
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: any("about a lockdown" in t for t in world.server.dms_to(ALICE)), "dm")

    # ... but not end it.
    await world.chat.say_as(VERA, "!lockdown off")
    await until(lambda: any("needs the moderator role" in t for t in replies(world)), "refusal")
    assert world.app.lockdown is not None and world.app.lockdown.current is not None

    await world.chat.say_as(VERA, "!lockdown status")
    await until(lambda: any("Lockdown #1 is ON since" in t for t in replies(world)), "status")

    await world.chat.say_as(ALICE, "!lockdown off all clear")
    await until(lambda: any("Lockdown #1 ended." in t for t in replies(world)), "ended")
    await until(lambda: world.forum.site_settings[SETTING] == "1|2|10", "the setting back")
    refused = [e for e in await world.store.audit_entries() if e.outcome == "refused"]
    assert {e.action for e in refused} == {"lockdown_on", "lockdown_off"}


async def test_a_redelivered_lockdown_command_acts_once(world: World) -> None:
    command = ChatCommand("matrix", "!staff:vigil.test", ALICE, "!lockdown on 2h", "$same",
                          False, ("lockdown", "on", "2h"))  # fmt: skip
    await world.chat.on_command(command)
    await world.chat.on_command(command)
    await until(lambda: any("is on until" in t for t in replies(world)), "the answer")
    actions = [e.action for e in await world.store.audit_entries()]
    assert actions.count("lockdown_on") == 1
    assert len([t for t in replies(world) if "is on until" in t]) == 1


async def test_dry_run_simulates_the_site_settings(tmp_path: Path, forum: FakeDiscourse) -> None:
    world = await raid_world(tmp_path, forum, dry_run=True)
    try:
        await world.chat.say_as(ALICE, "!lockdown on 30m")
        await until(lambda: any("is on until" in t for t in replies(world)), "on")

        async def simulated() -> bool:
            row = await lockdown_row(world)
            return row is not None and row["settings_state"] == "on"

        await until(simulated, "the simulated setting")
        assert forum.calls_to("PUT", "/admin/site_settings/") == []
        await world.chat.say_as(ALICE, "!lockdown status")
        await until(
            lambda: any("dry run: would set" in t for t in replies(world)), "the status says so"
        )
    finally:
        await world.app.stop()


# --- the rules and settings that drive it -------------------------------------------------------


def test_raid_tables_are_checked(tmp_path: Path) -> None:
    rules = textwrap.dedent(
        """
        [[raid]]
        name = "r"
        when = { events = ["post_created"], lockdown = true, lists = ["nope"] }
        within = "0s"
        room = "elsewhere"
        """
    )
    write_alert_config(tmp_path, "http://127.0.0.1:9", rules=rules)
    loaded, problems = load_everything(tmp_path / "bot.toml")
    assert loaded is None
    text = "\n".join(str(p) for p in problems.errors)
    assert "raid[0].when: error: a raid counts events" in text
    assert "raid[0].within: error: must be longer than 0s" in text
    assert "raid[0].at_least" in text


def test_lockdown_settings_need_values_to_put_back(tmp_path: Path) -> None:
    write_alert_config(tmp_path, "http://127.0.0.1:9", extra='[lockdown]\nroom = "nowhere"\n')
    config = tmp_path / "bot.toml"
    config.write_text(
        config.read_text().replace(
            'api_username = "vigil"\n',
            f'api_username = "vigil"\nlockdown_settings = {{ {SETTING} = "1|2|12" }}\n',
        )
    )
    loaded, problems = load_everything(config)
    assert loaded is None
    text = "\n".join(str(p) for p in problems.errors)
    assert f"source[0].normal_settings: error: missing {SETTING}" in text
    assert "lockdown.room: error: no [[room]] called 'nowhere'" in text
