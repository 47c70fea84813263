"""Escalation wired into the real App: a signed webhook from the simulated Discourse
makes an alert, nobody takes it, the room is pinged at once and the on-call person's
DM goes out through the durable outbox after the step's delay; 👀 stops the chain,
✅ ends it; the App's restart repeats no page; `!oncall`, `!override`, `!report` and
`/metrics` answer from the same running App.

The clock is a ManualClock: the engine only moves when the test advances it or when
the App wakes it (an alert created, acked, resolved). Waiting for the App's own
tasks is `until` (a poll of the database or the recording chat), never a sleep for
behaviour; the chat is the recording port of tests/test_alerts.py.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.clock import ManualClock
from bot.escalation import EscalationEngine
from bot.ports import ChatCommand
from tests.fake_discourse import FakeDiscourse
from tests.test_alerts import (
    ALICE,
    BOB,
    ROOM,
    VERA,
    ChatServer,
    RecordingChat,
    Sent,
    World,
    start_app,
    until,
    write_alert_config,
)

MIN = 60.0
ADA = "@ada:vigil.test"  # admin, in New York
DM_ROOM = "!dm:vigil.test"  # where RecordingChat.say_as(direct=True) types
# ManualClock start of tests/test_alerts.py worlds: Thursday 2026-01-01 00:00 UTC, which
# is 00:00 GMT in London (Vera's night) and 19:00 EST on Wednesday in New York.
START = 1_767_225_600.0

RULES = textwrap.dedent(
    """
    [[rule]]
    name = "forbidden-words"
    when = { events = ["post_created"], text_matches = "forbidden" }
    severity = "critical"
    room = "staff"

    [[schedule]]
    name = "nights"
    timezone = "Europe/London"
      [[schedule.layer]]
      people = ["Vera"]
      shift = "1d"
      windows = [{ from = "22:00", to = "07:00" }]

    [[policy]]
    name = "urgent"
    severities = ["critical"]
    ack_timeout = "30m"
      [[policy.step]]
      targets = ["room"]
      delay = "5m"
      [[policy.step]]
      targets = ["schedule:nights"]
      delay = "10m"
      [[policy.step]]
      targets = ["person:Bob"]
      delay = "10m"
    """
)
ADA_STAFF = f"""
[[staff]]
name = "Ada"
role = "admin"
timezone = "America/New_York"
matrix = "{ADA}"
"""


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with FakeDiscourse() as forum:
        write_alert_config(tmp_path, forum.base_url, rules=RULES, extra=ADA_STAFF)
        server = ChatServer()
        chat = RecordingChat(server)
        clock = ManualClock(start=START)
        app = await start_app(tmp_path, clock, chat)
        w = World(tmp_path, forum, server, clock, app, chat)
        try:
            yield w
        finally:
            await w.app.stop()


def engine(w: World) -> EscalationEngine:
    assert w.app.escalation is not None
    return w.app.escalation


async def advance(w: World, seconds: float) -> None:
    """Move the clock; wait for the engine's pass that follows (it sleeps on this clock)."""
    await w.clock.advance(seconds)
    await engine(w).settled()


def room_pages(w: World) -> list[Sent]:
    """Escalation pages posted in the staff room (not the alert posts, not replies)."""
    return [
        m for m in w.server.messages.values() if m.room == ROOM and "has waited" in m.message.text
    ]


async def escalation_state(w: World, alert_id: int = 1) -> str | None:
    esc = await w.store.escalation(alert_id)
    return esc["state"] if esc else None


async def answer(w: World, sender: str, text: str, *, direct: bool = False) -> Sent:
    """Type a command as ``sender``; the bot's reply, once the outbox delivered it."""
    event_id = await w.chat.say_as(sender, text, direct=direct)
    return await reply_to(w, event_id)


async def reply_to(w: World, event_id: str) -> Sent:
    async def sent() -> str | None:
        for row in await w.store.outbox_rows():
            if row["dedupe_key"] == f"reply:matrix:{event_id}" and row["state"] == "sent":
                return row["result"]
        return None

    return w.server.messages[await until(sent, f"the reply to {event_id}")]


async def scrape(w: World) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics of the running App, parsed."""
    url = f"http://127.0.0.1:{w.app.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(metrics: dict[Any, float], name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


# --- the chain through the App ------------------------------------------------------------


async def test_unacked_alert_pings_room_then_dms_the_person_on_call_and_eyes_stop_it(
    world: World,
) -> None:
    w = world
    before = await scrape(w)
    await w.post("this is forbidden")
    alert = await w.alert()

    # Step 1 at once: the App woke the engine when the alert was made (the clock has
    # not moved, so the engine's own poll cannot have done it).
    [ping] = await until(lambda: room_pages(w), "the @room page")
    assert ping.message.mention_room and ping.message.text.startswith("@room ")
    assert "Alert #1 (critical)" in ping.message.text and "!ack 1" in ping.message.text
    assert w.server.dms == []

    await advance(w, 5 * MIN - 1)
    assert w.server.dms_to(VERA) == []
    await advance(w, 1)  # step 1's delay is over: Vera is on call (nights, 00:00 GMT)
    [dm] = await until(lambda: w.server.dms_to(VERA), "Vera's DM")
    assert "Alert #1 (critical) has waited 5 min 0 s" in dm
    assert "on call in nights" in dm and 'Reply "ack 1" here' in dm

    # 👀 stops it: the App wakes the engine, which records the ack without a clock tick.
    await w.chat.react_as(VERA, alert.id, "👀")

    async def acked() -> bool:
        esc = await w.store.escalation(1)
        return esc is not None and (esc["state"], esc["acked_by"]) == ("acked", "Vera")

    await until(acked, "the escalation to see Vera's 👀")
    await advance(w, 10 * MIN)  # step 3 (Bob) would have been due now
    assert w.server.dms_to(BOB) == [] and len(room_pages(w)) == 1

    # ✅ ends it: the forum hides the post, the alert is resolved, the chain is over.
    await w.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: w.hides(), "the hide")

    async def resolved() -> bool:
        return await escalation_state(w) == "resolved"

    await until(resolved, "the escalation to end with the takedown")
    await advance(w, 60 * MIN)  # past the ack timeout: nothing re-arms a resolved alert
    assert w.server.dms_to(BOB) == [] and len(w.server.dms_to(VERA)) == 1

    after = await scrape(w)

    def grew(name: str, by: float, **labels: str) -> None:
        old = sample(before, name, **labels) or 0.0
        assert sample(after, name, **labels) == old + by, (name, labels)

    grew("vigil_alert_time_to_ack_seconds_count", 1, severity="critical")
    grew("vigil_alert_time_to_ack_seconds_sum", 5 * MIN, severity="critical")
    grew("vigil_alert_time_to_resolve_seconds_count", 1, severity="critical")
    grew("vigil_escalation_steps_total", 1, policy="urgent", step="1", outcome="paged")
    grew("vigil_escalation_steps_total", 1, policy="urgent", step="2", outcome="paged")
    grew("vigil_escalation_steps_total", 0, policy="urgent", step="3", outcome="paged")
    grew("vigil_escalation_pages_total", 1, channel="matrix_dm")
    grew("vigil_escalation_ended_total", 1, policy="urgent", how="acked")
    grew("vigil_escalation_ended_total", 1, policy="urgent", how="resolved")

    rep = (await answer(w, ALICE, "!report 1")).message.text
    assert "Alerts: 1 (1 critical)" in rep
    assert "Time to ack: median 5 min 0 s, worst 5 min 0 s (1 acked, 0 never acked)" in rep
    assert "Time to take down: median 15 min 0 s" in rep and "(1 taken down)" in rep
    assert "Pages sent: 2" in rep and "Paged: Vera 1, room staff 1" in rep
    assert "Vera: acked 1" in rep and "Alice: taken_down 1" in rep


async def test_metrics_show_every_severity_and_policy_step_before_any_page(world: World) -> None:
    # A policy no other test uses, added by a rules reload: its steps show at zero.
    name = f"quiet-{uuid.uuid4().hex[:8]}"
    extra = f'[[policy]]\nname = "{name}"\n[[policy.step]]\ntargets = ["room"]\ndelay = "5m"\n'
    (world.root / "rules" / "main.toml").write_text(RULES + extra)
    assert await world.app.reload_rules()
    metrics = await scrape(world)
    for outcome in ("paged", "skipped"):
        step = sample(
            metrics, "vigil_escalation_steps_total", policy=name, step="1", outcome=outcome
        )
        assert step == 0.0, outcome
    for severity in ("low", "medium", "high", "critical"):
        for measure in ("ack", "resolve"):
            count = f"vigil_alert_time_to_{measure}_seconds_count"
            assert sample(metrics, count, severity=severity) is not None, (measure, severity)


async def test_app_restart_mid_policy_neither_repeats_nor_drops_a_page(world: World) -> None:
    w = world
    await w.post("this is forbidden")
    await w.alert()
    await until(lambda: room_pages(w), "the @room page")
    await w.restart()  # drop the App; a new one on the same database and chat server
    await engine(w).settled()
    assert len(room_pages(w)) == 1 and w.server.dms == []
    await advance(w, 5 * MIN)
    await until(lambda: w.server.dms_to(VERA), "Vera's DM from the new App")
    await w.restart()
    await advance(w, 10 * MIN)
    await until(lambda: w.server.dms_to(BOB), "Bob's DM (step 3)")
    assert len(room_pages(w)) == 1
    assert [u for u, _ in w.server.dms] == [VERA, BOB]
    keys = [r["dedupe_key"] for r in await w.store.outbox_rows()]
    assert len(keys) == len(set(keys))


# --- commands -------------------------------------------------------------------------------


async def test_oncall_answers_in_the_askers_own_time_zone(world: World) -> None:
    london = (await answer(world, VERA, "!oncall")).message.text
    assert london.startswith("On call (times in Europe/London):")
    assert "nights: Vera now (until 07:00 GMT); next Vera from 22:00 GMT" in london
    new_york = (await answer(world, ADA, "!oncall nights")).message.text
    assert "(times in America/New_York)" in new_york
    assert "nights: Vera now (until Thu 01 Jan 02:00 EST); next Vera from Thu 01 Jan 17:00 EST" in (
        new_york
    )
    unknown = (await answer(world, VERA, "!oncall days")).message.text
    assert unknown == "No schedule called 'days'. Schedules: nights."


async def test_commands_typed_in_a_dm_are_answered_in_the_dm(world: World) -> None:
    reply = await answer(world, VERA, "oncall", direct=True)
    assert reply.room == DM_ROOM and "nights: Vera now" in reply.message.text
    reply = await answer(world, BOB, "report", direct=True)
    assert reply.room == DM_ROOM and reply.message.text.startswith("Report for the last 7 day(s)")


async def test_override_lets_a_moderator_take_the_shift_and_the_page_follows(
    world: World,
) -> None:
    w = world
    refused = (await answer(w, VERA, "!override nights now 4h")).message.text
    assert "!override needs the moderator role; you (Vera) are a volunteer" in refused
    assert await w.store.schedule_overrides(w.clock.now()) == []

    taken = (await answer(w, BOB, "!override nights now 4h")).message.text
    assert taken.startswith(
        "Override #1: Bob on call in nights from Thu 01 Jan 00:00 GMT to Thu 01 Jan 04:00 GMT."
    )
    assert "nights: Bob now (until 04:00 GMT); next Vera from 04:00 GMT" in taken
    audit = [(e.actor, e.target, e.outcome) for e in await w.store.audit_entries()]
    assert [a for a in audit if a[0] in ("Vera", "Bob")] == [
        ("Vera", "chat", "refused"),
        ("Bob", "schedule nights", "ok"),
    ]
    assert "Bob now" in (await answer(w, ADA, "!oncall")).message.text

    # The chat delivers the same event twice: one override, one answer.
    command = ChatCommand("matrix", ROOM, ALICE, '!override nights 01:00 02:00 "Ada"', "$same",
                          False, ("override", "nights", "01:00", "02:00", '"Ada"'))  # fmt: skip
    await w.chat.on_command(command)
    await w.chat.on_command(command)
    swap = (await reply_to(w, "$same")).message.text
    assert swap.startswith("Override #2: Ada on call in nights from Thu 01 Jan 01:00 GMT")
    assert len(await w.store.schedule_overrides(w.clock.now())) == 2

    # The next alert's on-call step pages Bob, not Vera.
    await w.post("this is forbidden")
    await w.alert()
    await until(lambda: room_pages(w), "the @room page")
    await advance(w, 5 * MIN)
    [dm] = await until(lambda: w.server.dms_to(BOB), "Bob's DM")
    assert "on call in nights" in dm and w.server.dms_to(VERA) == []


async def test_override_and_report_explain_what_was_wrong(world: World) -> None:
    async def says(text: str) -> str:
        return (await answer(world, ALICE, text)).message.text

    assert "'tomorrow' is not a time" in await says("!override nights tomorrow 4h")
    assert (await says("!override days now 4h")).startswith(
        "No schedule called 'days'. Schedules: nights."
    )
    assert "'Zed' is not on the staff roster" in await says("!override nights now 4h Zed")
    assert (await says("!override")).startswith("Usage: !override SCHEDULE FROM TO")
    assert "at most 31 days" in await says("!override nights now 40d")
    assert (await says("!report soon")).startswith("Usage: !report [days]")
    assert (await says("!report 0")).startswith("Usage: !report [days]")
    assert await world.store.schedule_overrides(world.clock.now()) == []


async def test_help_names_the_escalation_commands(world: World) -> None:
    text = (await answer(world, VERA, "!help")).message.text
    assert "!oncall" in text and "!report [days]" in text and "!override SCHEDULE" in text
