"""Vigil's own health through the real App: /healthz, the feed-silence alarm, the
heartbeat to an outside monitor, and /metrics after an event flows.

The clock is a ManualClock set to a January Wednesday (London = UTC), so busy hours
07:00–23:00 Europe/London are 07:00–23:00 on the clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bot.app import App
from bot.clock import ManualClock
from bot.health import Heartbeat, SystemAlerts
from tests.fake_discourse import FakeDiscourse
from tests.test_alerts import (
    ALICE,
    ChatServer,
    RecordingChat,
    SendFailed,
    png,
    start_app,
    until,
    write_alert_config,
)

MON = datetime(2026, 1, 14, tzinfo=UTC).timestamp()  # a Wednesday, 00:00 in London
HOUR = 3600.0
MINUTE = 60.0
LIST_IMAGE = png(5)

RULES = textwrap.dedent(
    """
    [[list]]
    name = "test-list"
    file = "lists/test-list.txt"
    format = "plain"
    severity = "critical"
    category = "test"

    [[rule]]
    name = "known-image"
    when = { events = ["post_created"], lists = ["test-list"] }
    severity = "critical"
    room = "staff"
    """
)
SILENCE = (
    'silence_alarm = "30m"\n'
    'busy_hours = { from = "07:00", to = "23:00", timezone = "Europe/London" }\n'
)


class DownChat(RecordingChat):
    """A chat whose server cannot be reached."""

    async def start(self, on_reaction: Any, on_command: Any) -> None:
        raise ConnectionError("homeserver unreachable")


class World:
    """The App, the simulated forum, a recording chat and the clock."""

    def __init__(self, root: Path, forum: FakeDiscourse, clock: ManualClock, chat: RecordingChat):
        self.root, self.forum, self.clock, self.chat = root, forum, clock, chat
        self.app: App
        self.posts = iter(range(700, 10_000))

    @property
    def store(self) -> Any:
        assert self.app.store is not None
        return self.app.store

    async def health(self, http: Any) -> tuple[int, dict[str, Any]]:
        async with http.get(f"http://127.0.0.1:{self.app.port}/healthz") as resp:
            return resp.status, await resp.json()

    async def metrics(self, http: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with http.get(f"http://127.0.0.1:{self.app.port}/metrics") as resp:
            text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def post(self, raw: str = "hello") -> None:
        body = self.forum.post_created_payload(
            post_id=next(self.posts), user_id=7, username="member", raw=raw
        )
        url = f"http://127.0.0.1:{self.app.port}/webhooks/discourse"
        assert await self.forum.send_webhook(url, "post", "post_created", body) == 200

    async def at(self, hour: float) -> None:
        """Move the clock to ``hour`` hours after Wednesday 00:00."""
        await self.clock.advance(MON + hour * HOUR - self.clock.now())

    async def sent_texts(self, marker: str) -> list[str]:
        rows = await self.store.outbox_rows()
        texts = [json.loads(r["payload"]).get("text", "") for r in rows if r["op"] == "send"]
        return [t for t in texts if marker in t]

    async def restart(self) -> None:
        await self.app.stop()
        self.chat = RecordingChat(self.chat.server)
        self.app = await start_app(self.root, self.clock, self.chat)


async def make_world(
    root: Path,
    forum: FakeDiscourse,
    *,
    source_extra: str = "",
    health: str = "",
    env: str = "",
    chat: RecordingChat | None = None,
    start_hour: float = 5.0,
) -> World:
    write_alert_config(root, forum.base_url, rules=RULES, extra=f"\n[health]\n{health}")
    config = root / "bot.toml"
    text = config.read_text().replace(
        'api_username = "vigil"\n', f'api_username = "vigil"\n{source_extra}', 1
    )
    config.write_text(text)
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "test-list.txt").write_text(
        f"sha256 {hashlib.sha256(LIST_IMAGE).hexdigest()}\n"
    )
    with (root / ".env").open("a") as fh:
        fh.write(env)
    clock = ManualClock(start=MON + start_hour * HOUR)
    world = World(root, forum, clock, chat or RecordingChat(ChatServer()))
    world.app = await start_app(root, clock, world.chat)
    return world


@pytest.fixture
async def forum() -> AsyncIterator[FakeDiscourse]:
    async with FakeDiscourse() as f:
        yield f


@pytest.fixture
async def world(tmp_path: Path, forum: FakeDiscourse) -> AsyncIterator[World]:
    w = await make_world(tmp_path, forum)
    await until(lambda: w.app.chat and w.app.chat.started["matrix"], "the chat to start")
    yield w
    await w.app.stop()


# --- /healthz ------------------------------------------------------------------------------


async def test_healthz_is_200_when_all_is_well_and_503_when_the_database_is_gone(
    world: World, http: Any
) -> None:
    await world.post()
    status, body = await world.health(http)
    assert status == 200, body
    assert body["status"] == "ok" and body["failing"] == []
    assert body["database"] == "ok"
    assert body["chats"] == {"matrix": {"state": "up", "detail": ""}}
    assert body["feeds"]["forum"]["last_event_age_s"] == 0.0
    assert body["outbox"]["backlog"] == 0

    await world.store.db.close()  # the database goes away under the running service
    status, body = await world.health(http)
    assert status == 503
    assert body["failing"][0] == "database unavailable"
    assert body["database"].startswith("unavailable")


async def test_a_chat_that_cannot_connect_fails_healthz_after_the_grace(
    tmp_path: Path, forum: FakeDiscourse, http: Any
) -> None:
    w = await make_world(
        tmp_path, forum, health='chat_connect_grace = "2m"', chat=DownChat(ChatServer())
    )
    try:
        status, body = await w.health(http)
        assert status == 200, body
        assert body["chats"]["matrix"]["state"] == "connecting"
        await w.clock.advance(121)
        status, body = await w.health(http)
        assert status == 503
        assert body["failing"] == ["chat matrix down: not connected"]
    finally:
        await w.app.stop()


async def test_a_chat_whose_sync_fails_or_that_misses_its_room_fails_healthz(
    world: World, http: Any
) -> None:
    world.chat.sync_failures = 3  # what MatrixChat counts, read duck-typed
    status, body = await world.health(http)
    assert status == 503 and body["failing"] == ["chat matrix down: the last 3 syncs failed"]
    world.chat.sync_failures = 2  # a blip or two is not an outage
    world.chat.missing_rooms = ("!staff:vigil.test",)
    status, body = await world.health(http)
    assert status == 503
    assert body["chats"]["matrix"] == {
        "state": "degraded",
        "detail": "not in room !staff:vigil.test",
    }
    world.chat.missing_rooms = ()
    assert (await world.health(http))[0] == 200


async def test_parked_events_fail_healthz(world: World, http: Any) -> None:
    await world.post()
    [event] = await world.store.events()

    async def processed() -> bool:
        return await world.store.inbox_counts() == {"done": 1}

    await until(processed, "the event to be processed")
    await world.store.park_event(event["id"], "a stage kept failing", world.clock.now())
    status, body = await world.health(http)
    assert status == 503
    assert body["failing"] == ["1 events parked (processing failed)"]


async def test_an_outbox_backlog_over_the_threshold_fails_healthz(
    tmp_path: Path, forum: FakeDiscourse, http: Any
) -> None:
    # The chat never connects (still in its grace period), so messages pile up.
    w = await make_world(
        tmp_path, forum, health="outbox_backlog_max = 2", chat=DownChat(ChatServer())
    )
    try:
        alerts = SystemAlerts(w.app.config, w.store, w.clock, w.app.chat)
        for n in range(2):
            assert await alerts.raise_alert("test", f"k{n}", f"message {n}") == 1
        assert await alerts.raise_alert("test", "k0", "the same key again") == 1
        status, body = await w.health(http)
        assert status == 200, body
        assert body["outbox"]["backlog"] == 2
        await alerts.raise_alert("test", "k2", "one too many")
        status, body = await w.health(http)
        assert status == 503
        assert body["failing"] == ["3 chat messages waiting to be sent"]
    finally:
        await w.app.stop()


# --- feed silence ---------------------------------------------------------------------------


async def test_feed_silence_alerts_once_per_silence_only_in_busy_hours_and_clears(
    tmp_path: Path, forum: FakeDiscourse, http: Any
) -> None:
    w = await make_world(tmp_path, forum, source_extra=SILENCE)
    try:
        await until(lambda: w.app.chat.started["matrix"], "the chat to start")
        assert w.app.silence is not None
        await w.app.silence.stop()  # this test drives each check itself

        async def check(hour: float) -> list[str]:
            await w.at(hour)
            assert w.app.silence is not None
            return await w.app.silence.check()

        assert await check(6.8) == []  # before busy hours, nothing since the start at 05:00
        assert await check(7 + 20 / 60) == []  # busy since 07:00: 20 minutes is fine
        assert await check(7 + 31 / 60) == ["silent:forum"]
        [text] = await w.sent_texts("Feed silent")
        assert "no webhook from forum for 31 min" in text
        assert "busy hours (daily 07:00–23:00 Europe/London)" in text
        status, body = await w.health(http)
        assert status == 503 and body["failing"] == ["source forum silent for 31 min 0 s"]
        assert body["feeds"]["forum"]["silent"] is True

        for minute in range(32, 90):  # an hour of checks: still the one alert
            assert await check(7 + minute / 60) == []
        assert len(await w.sent_texts("Feed silent")) == 1

        await w.post()  # 08:29: webhooks are back
        assert await check(7 + 89 / 60) == ["back:forum"]
        [back] = await w.sent_texts("Feed back")
        assert "silent 1 h 29 min" in back  # since busy hours opened at 07:00
        assert (await w.health(http))[0] == 200

        assert await check(8 + 58 / 60) == []  # 29 minutes after 08:29
        assert await check(9.0) == ["silent:forum"]  # a new silence, a new alert
        assert len(await w.sent_texts("Feed silent")) == 2

        await w.at(22.75)
        await w.post()  # 22:45, the last post of the day
        assert await check(22.75) == ["back:forum"]
        for hour in (23.25, 24.0, 27.0, 30.0, 31.0, 31 + 29 / 60):  # a quiet night is not a silence
            assert await check(hour) == []
        assert await check(31 + 31 / 60) == ["silent:forum"]  # 07:31 next day
        assert len(await w.sent_texts("Feed silent")) == 3

        await w.restart()  # a restart in the middle of a silence is the same silence
        assert w.app.silence is not None
        await w.app.silence.stop()
        assert await check(32.5) == []
        assert len(await w.sent_texts("Feed silent")) == 3

        # Delivered to the staff room through the outbox, like any alert.
        await until(
            lambda: any("Feed silent" in m.message.text for m in w.chat.server.messages.values()),
            "the silence alert in the room",
        )
    finally:
        await w.app.stop()


async def test_the_silence_monitor_runs_on_the_clock(tmp_path: Path, forum: FakeDiscourse) -> None:
    w = await make_world(tmp_path, forum, source_extra=SILENCE, start_hour=8.0)
    try:
        assert w.app.silence is not None
        waiter = asyncio.create_task(w.app.silence.wait_checked())
        await asyncio.sleep(0)
        await w.clock.advance(31 * MINUTE)
        await waiter
        assert len(await w.sent_texts("Feed silent")) == 1
    finally:
        await w.app.stop()


# --- heartbeat ------------------------------------------------------------------------------


class Monitor:
    """An outside dead-man's switch on loopback: records every ping."""

    def __init__(self) -> None:
        self.hits: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def ping(self, request: web.Request) -> web.Response:
        await self.hits.put((request.method, request.path, await request.read()))
        return web.Response(status=self.status, text="OK")

    async def __aenter__(self) -> Monitor:
        app = web.Application()
        app.router.add_route("*", "/ping/{token}", self.ping)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ping/s3cret-token"

    async def next_hit(self) -> tuple[str, str, bytes]:
        return await asyncio.wait_for(self.hits.get(), 5)


async def test_heartbeat_calls_the_outside_url_on_the_clock_while_healthy(
    tmp_path: Path, forum: FakeDiscourse
) -> None:
    async with Monitor() as monitor:
        w = await make_world(
            tmp_path,
            forum,
            health=(
                'heartbeat_url_env = "TEST_HEARTBEAT_URL"\nheartbeat_interval = "1h"\n'
                'heartbeat_method = "POST"\nheartbeat_when = "healthy"\n'
            ),
            env=f"TEST_HEARTBEAT_URL={monitor.url}\n",
        )
        try:
            method, path, body = await monitor.next_hit()  # the first beat, at start
            assert (method, path) == ("POST", "/ping/s3cret-token")
            assert json.loads(body) == {"status": "ok", "failing": []}
            await w.clock.advance(30 * MINUTE)
            assert monitor.hits.empty()  # real time or half an interval: no beat
            await w.clock.advance(30 * MINUTE)
            await monitor.next_hit()
            assert w.app.heartbeat is not None and w.app.heartbeat.sent == 2

            w.chat.sync_failures = 5  # Vigil runs but is deaf: the monitor should hear nothing
            assert await w.app.heartbeat.beat() == "skipped"
            assert monitor.hits.empty()
        finally:
            await w.app.stop()


async def test_heartbeat_always_beats_and_reports_a_refusal(tmp_path: Path) -> None:
    async with Monitor() as monitor:
        clock = ManualClock()
        beat = Heartbeat(monitor.url, clock, interval_s=60, method="GET", when="always")
        try:
            assert await beat.beat() == "sent"
            assert (await monitor.next_hit())[:2] == ("GET", "/ping/s3cret-token")
            monitor.status = 500
            assert await beat.beat() == "failed"
        finally:
            await beat.stop()


# --- /metrics -------------------------------------------------------------------------------


async def test_metrics_count_events_matches_open_alerts_send_failures_and_takedowns(
    world: World, http: Any
) -> None:
    def value(m: dict, name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    before = await world.metrics(http)
    world.chat.failures.append(SendFailed())  # the first send fails (server away)
    upload = world.forum.add_upload(LIST_IMAGE)
    await world.post(f"look ![pic|64x64]({upload.short_url})")

    async def failed_once() -> bool:
        m = await world.metrics(http)
        return value(m, "vigil_chat_send_failures_total", chat="matrix") > value(
            before, "vigil_chat_send_failures_total", chat="matrix"
        )

    await until(failed_once, "the failed send to be counted")
    await world.clock.advance(2)  # the retry falls due
    assert world.app.chat is not None
    world.app.chat.outbox.wake()
    await until(lambda: world.chat.server.alerts(), "the alert in the room")

    m = await world.metrics(http)
    assert (
        value(m, "vigil_webhooks_total", source="forum", outcome="stored")
        == value(before, "vigil_webhooks_total", source="forum", outcome="stored") + 1
    )
    assert (
        value(m, "vigil_matches_total", list="test-list", kind="sha256")
        == value(before, "vigil_matches_total", list="test-list", kind="sha256") + 1
    )
    assert value(m, "vigil_alerts_open") == 1
    assert value(m, "vigil_chat_up", chat="matrix") == 1

    [alert] = world.chat.server.alerts()
    await until(lambda: len(alert.reactions) == 5, "the buttons")
    await world.clock.advance(41)
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(
        lambda: "Taken down by Alice" in world.chat.server.text_of(alert.id), "the takedown"
    )
    m = await world.metrics(http)
    assert value(m, "vigil_alerts_open") == 0
    took = "vigil_alert_time_to_takedown_seconds"
    assert (
        value(m, f"{took}_count", severity="critical")
        == value(before, f"{took}_count", severity="critical") + 1
    )
    assert (
        value(m, f"{took}_bucket", severity="critical", le="60.0")
        == value(before, f"{took}_bucket", severity="critical", le="60.0") + 1
    )


# --- settings -------------------------------------------------------------------------------


def test_vigil_check_catches_health_mistakes_without_printing_the_heartbeat_url(
    tmp_path: Path,
) -> None:
    from bot.config import load_config
    from bot.schema import Problems

    write_alert_config(
        tmp_path,
        "http://127.0.0.1:9",
        rules=RULES,
        extra='\n[health]\nalert_room = "nowhere"\nheartbeat_url_env = "TEST_HEARTBEAT_URL"\n',
    )
    config = tmp_path / "bot.toml"
    config.write_text(
        config.read_text().replace(
            'api_username = "vigil"\n',
            'api_username = "vigil"\nbusy_hours = { from = "07:00", to = "25:00", timezone = "Mars/Olympus" }\n',
        )
    )
    with (tmp_path / ".env").open("a") as fh:
        fh.write("TEST_HEARTBEAT_URL=ftp://monitor.example/secret-token\n")
    problems = Problems()
    assert load_config(config, problems) is not None
    text = "\n".join(str(p) for p in problems.items)
    assert "health.alert_room: error: no room called 'nowhere'" in text
    assert "source[0].busy_hours.to: error" in text
    assert "source[0].busy_hours.timezone: error" in text
    assert (
        "health.heartbeat_url_env: error: the environment variable TEST_HEARTBEAT_URL is not an http(s) URL"
        in text
    )
    assert "secret-token" not in text
