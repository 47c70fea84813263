"""Vigil's own health: is it able to see the forum and reach the staff?

Three parts, all on the injected clock:

- :class:`Health` answers ``GET /healthz``: the database, each chat connection, the
  age of the last event per source (and whether a feed is silent), the outbox
  backlog, parked events and open problems. Status 200 when all is well, 503 with
  the list of what is failing otherwise. It also refreshes the gauges of
  ``/metrics``.
- :class:`SilenceMonitor` raises ONE system alert in the staff room when a source
  sends no webhook for its ``silence_alarm`` during its ``busy_hours``, and says so
  again when webhooks come back. A silence is an *episode* (the last event before
  it and the busy period it falls in); the episode is kept in the ``kv`` table and
  the outbox de-duplicates on it, so neither a restart nor a check every 30 s
  repeats the alert.
- :class:`Heartbeat` calls an outside URL (a dead-man's switch such as
  healthchecks.io or Uptime Kuma) every ``heartbeat_interval``, so someone hears
  when Vigil dies, hangs, or (``heartbeat_when = "healthy"``) goes blind.

System alerts (:class:`SystemAlerts`) are plain messages for the staff room that
are not about a forum post: they go through the same durable outbox as alerts,
once per key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import aiohttp

from bot import metrics
from bot.alerts import clock_time, span
from bot.clock import Clock, as_datetime
from bot.config import Config, SourceConfig
from bot.store import OutboxItem, Plan, Store

if TYPE_CHECKING:
    from bot.chat_service import ChatService

log = logging.getLogger(__name__)

SYNC_FAILURES_DOWN = 3  # a chat whose last 3 syncs failed no longer hears reactions
DB_TIMEOUT_S = 5.0  # a database that does not answer in this time counts as down
OPEN_ALERT_STATUSES = ("open", "acked", "acting")
SILENCE_CHECK_S = 30.0
HEARTBEAT_TIMEOUT_S = 10.0
_STATE_KEY = "health.silence."  # + source name: the silence episode alerted, as JSON


# --- feeds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedState:
    """Where one source's feed stands at one moment."""

    source: str
    last_event_at: float | None
    busy: bool  # inside its busy hours (always, without busy_hours)
    silent: bool  # busy, and nothing since ``since`` for at least ``silence_alarm``
    since: float  # what silence is counted from: last event, start, or busy hours opening
    episode: str  # names this silence; the same for every check of one silence


def busy_opened(source: SourceConfig, at: float) -> tuple[bool, float | None]:
    """Whether ``at`` is inside the source's busy hours, and when the current period opened.

    Without ``busy_hours`` a source is always busy and no period opens.
    """
    active = source.busy_hours
    if active is None:
        return True, None
    tz = ZoneInfo(active.timezone)
    moment = as_datetime(at)
    local_day = moment.astimezone(tz).date()
    for window in active.windows:
        for day in (local_day - timedelta(days=1), local_day):
            if day.weekday() in window.days:
                opens, closes = window.bounds(day, tz)
                if opens <= moment < closes:
                    return True, opens.timestamp()
    return False, None


def feed_state(
    source: SourceConfig, last_event_at: float | None, now: float, started_at: float
) -> FeedState:
    """One source's feed at ``now``; silence counts from the latest of the last event, the
    service's start and the opening of the busy period (a quiet night is not a silence)."""
    busy, opened = busy_opened(source, now)
    since = max(last_event_at or 0.0, started_at, opened or 0.0)
    alarm = source.silence_alarm_s
    silent = bool(alarm and busy and now - since >= alarm)
    # Not the start time: a restart in the middle of a silence is the same silence.
    episode = f"{source.name}:{last_event_at or 0:.3f}:{opened or 0:.0f}"
    return FeedState(source.name, last_event_at, busy, silent, since, episode)


# --- chats ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatState:
    """One chat connection: ``up``, ``connecting`` (within the grace after start), ``down``,
    or ``degraded`` (connected but missing a room)."""

    name: str
    state: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether alerts can go out and reactions come in."""
        return self.state in ("up", "connecting")


def chat_states(
    chat: ChatService | None, now: float, started_at: float, grace_s: float
) -> list[ChatState]:
    """The state of every configured chat, read from the service and the ports (duck-typed:
    an adapter may expose ``sync_failures`` and ``missing_rooms``)."""
    if chat is None:
        return []
    out = []
    for name, port in chat.ports.items():
        if not chat.started.get(name):
            if now - started_at < grace_s:
                out.append(ChatState(name, "connecting", "starting up"))
            else:
                out.append(ChatState(name, "down", "not connected"))
            continue
        failures = int(getattr(port, "sync_failures", 0) or 0)
        missing = tuple(getattr(port, "missing_rooms", ()) or ())
        if failures >= SYNC_FAILURES_DOWN:
            out.append(ChatState(name, "down", f"the last {failures} syncs failed"))
        elif missing:
            out.append(ChatState(name, "degraded", "not in room " + ", ".join(missing)))
        else:
            out.append(ChatState(name, "up"))
    return out


# --- the report -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What ``/healthz`` answers: ``failing`` lists each thing wrong, in words."""

    failing: tuple[str, ...]
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Nothing is failing."""
        return not self.failing

    @property
    def http_status(self) -> int:
        """200 when healthy, 503 when not."""
        return 200 if self.ok else 503


class Health:
    """Builds a :class:`HealthReport` from the store, the chats and the feeds."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        *,
        chat: ChatService | None = None,
        started_at: float | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.chat = chat
        self.started_at = clock.now() if started_at is None else started_at

    async def _read(self) -> dict[str, Any]:
        store = self.store
        return {
            "inbox": await store.inbox_counts(),
            "last": await store.last_event_at(),
            "problems": await store.open_problems(),
            "outbox": await store.outbox_counts(),
            "alerts_open": len(await store.alerts_in(OPEN_ALERT_STATUSES)),
        }

    async def report(self) -> HealthReport:
        """Check everything now; never raises (a dead database is a failing check)."""
        cfg = self.config
        now = self.clock.now()
        failing: list[str] = []
        body: dict[str, Any] = {}

        chats = chat_states(self.chat, now, self.started_at, cfg.health.chat_connect_grace_s)
        body["chats"] = {c.name: {"state": c.state, "detail": c.detail} for c in chats}
        for c in chats:
            metrics.CHAT_UP.labels(c.name).set(1 if c.state == "up" else 0)
            if not c.ok:
                failing.append(f"chat {c.name} {c.state}: {c.detail}")

        try:
            facts = await asyncio.wait_for(self._read(), DB_TIMEOUT_S)
        except Exception as exc:  # the health check must answer even when the DB does not
            body["database"] = f"unavailable: {type(exc).__name__}"
            failing.insert(0, "database unavailable")
            return self._finish(failing, body)
        body["database"] = "ok"

        inbox: dict[str, int] = facts["inbox"]
        body["inbox"] = inbox
        metrics.INBOX_PENDING.set(inbox.get("pending", 0))
        if inbox.get("parked"):
            failing.append(f"{inbox['parked']} events parked (processing failed)")

        last: dict[str, float] = facts["last"]
        body["last_event_age_s"] = {s: round(now - t, 1) for s, t in last.items()}
        feeds: dict[str, Any] = {}
        for source in cfg.sources:
            state = feed_state(source, last.get(source.name), now, self.started_at)
            age = None if state.last_event_at is None else round(now - state.last_event_at, 1)
            feeds[source.name] = {
                "last_event_age_s": age,
                "silence_alarm_s": source.silence_alarm_s,
                "busy": state.busy,
                "silent": state.silent,
            }
            if age is not None:
                metrics.LAST_EVENT_AGE.labels(source.name).set(age)
            metrics.FEED_SILENT.labels(source.name).set(1 if state.silent else 0)
            if state.silent:
                failing.append(f"source {source.name} silent for {span(now - state.since)}")
        body["feeds"] = feeds

        outbox: dict[str, int] = facts["outbox"]
        backlog = outbox.get("pending", 0) + outbox.get("sending", 0)
        body["outbox"] = {
            "backlog": backlog,
            "failed": outbox.get("failed", 0),
            "backlog_max": cfg.health.outbox_backlog_max,
        }
        metrics.OUTBOX_BACKLOG.set(backlog)
        if backlog > cfg.health.outbox_backlog_max:
            failing.append(f"{backlog} chat messages waiting to be sent")

        metrics.ALERTS_OPEN.set(facts["alerts_open"])
        body["alerts_open"] = facts["alerts_open"]
        # Reported, not failing: nothing marks a problem resolved yet, so one old
        # problem would keep /healthz red for ever; the live checks above cover them.
        problems = facts["problems"]
        body["open_problems"] = len(problems)
        kinds: dict[str, int] = {}
        for p in problems:
            kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
        body["problems"] = kinds
        return self._finish(failing, body)

    def _finish(self, failing: list[str], body: dict[str, Any]) -> HealthReport:
        out = {"status": "failing" if failing else "ok", "failing": failing, **body}
        return HealthReport(tuple(failing), out)


# --- system alerts ----------------------------------------------------------------------


class SystemAlerts:
    """Messages about Vigil itself for the staff room (``[health] alert_room``, default
    the first ``[[room]]``), queued in the outbox once per ``key``.

    ``await alerts.raise_alert("silence:forum:...", "text")`` queues one plain message
    per chat the room is in; the same key again queues nothing, even after a restart.
    """

    def __init__(
        self, config: Config, store: Store, clock: Clock, chat: ChatService | None
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.chat = chat

    async def raise_alert(self, kind: str, key: str, text: str) -> int:
        """Queue ``text`` for the staff room; returns how many rooms it was queued for."""
        log.warning("system alert kind=%s: %s", kind, text)
        metrics.SYSTEM_ALERTS.labels(kind).inc()
        rooms = self.chat.room_addresses(self.config.health.alert_room) if self.chat else ()
        if not rooms:
            log.error("system alert kind=%s has no chat room to go to", kind)
            return 0
        items = tuple(
            OutboxItem(
                chat,
                "send",
                {"room": room, "text": text, "html": None, "mentions": []},
                dedupe_key=f"system:{key}:{chat}:{room}",
            )
            for chat, room in rooms
        )
        await self.store.apply_plan(Plan(outbox=items), self.clock.now())
        if self.chat is not None:
            self.chat.outbox.wake()
        return len(items)


# --- feed silence -------------------------------------------------------------------------


def _busy_text(source: SourceConfig) -> str:
    return f"its busy hours ({source.busy_hours.describe()})" if source.busy_hours else "the day"


class SilenceMonitor:
    """Alerts once per silence of a source's webhooks during its busy hours."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        alerts: SystemAlerts,
        *,
        started_at: float | None = None,
        interval_s: float = SILENCE_CHECK_S,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.alerts = alerts
        self.started_at = clock.now() if started_at is None else started_at
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._checked = asyncio.Event()

    @property
    def watched(self) -> list[SourceConfig]:
        """The sources with a ``silence_alarm``."""
        return [s for s in self.config.sources if s.silence_alarm_s]

    async def check(self) -> list[str]:
        """Look at every watched source now; returns the notices queued (``silent:NAME``,
        ``back:NAME``)."""
        now = self.clock.now()
        last = await self.store.last_event_at()
        done: list[str] = []
        for source in self.watched:
            state = feed_state(source, last.get(source.name), now, self.started_at)
            raw = await self.store.get_state(_STATE_KEY + source.name)
            alerted = json.loads(raw) if raw else None
            if state.silent and (alerted is None or alerted["episode"] != state.episode):
                await self._silent(source, state, now)
                done.append(f"silent:{source.name}")
            elif alerted is not None and (state.last_event_at or 0.0) > alerted["last"]:
                await self._back(source, state, alerted, now)
                done.append(f"back:{source.name}")
        return done

    async def _silent(self, source: SourceConfig, state: FeedState, now: float) -> None:
        tz = source.busy_hours.timezone if source.busy_hours else "UTC"
        if state.last_event_at is not None:
            last = f"the last at {clock_time(state.last_event_at, tz)}"
        else:
            last = "none since Vigil started"
        text = (
            f"⚠️ Feed silent: no webhook from {source.name} for {span(now - state.since)}"
            f" during {_busy_text(source)}; {last}. Vigil cannot see new posts or reports"
            f" from {source.name} until this is fixed: check the forum's webhook (its recent"
            " deliveries and their answers) and that the forum can reach Vigil."
        )
        await self.alerts.raise_alert("feed_silent", f"silence:{state.episode}", text)
        value = {"episode": state.episode, "last": state.last_event_at or 0.0, "since": state.since}
        await self.store.set_state(_STATE_KEY + source.name, json.dumps(value))

    async def _back(
        self, source: SourceConfig, state: FeedState, alerted: Mapping[str, Any], now: float
    ) -> None:
        quiet = span((state.last_event_at or now) - alerted["since"])
        text = f"✅ Feed back: webhooks from {source.name} are arriving again (silent {quiet})."
        await self.alerts.raise_alert("feed_back", f"back:{alerted['episode']}", text)
        await self.store.set_state(_STATE_KEY + source.name, "")

    def start(self) -> None:
        """Check every ``interval_s`` on the clock (nothing to do without a silence_alarm)."""
        if self.watched:
            self._task = asyncio.create_task(self._run(), name="silence-monitor")

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def wait_checked(self, timeout_s: float = 5.0) -> None:
        """Wait for the loop's next check to finish (for tests and the demo)."""
        self._checked.clear()
        await asyncio.wait_for(self._checked.wait(), timeout_s)

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # one failed check must not end the watch
                log.exception("feed silence check failed")
            self._checked.set()


# --- heartbeat ------------------------------------------------------------------------------


class Heartbeat:
    """Calls ``url`` every ``interval_s`` on the clock; the first call at start.

    ``when="healthy"`` skips the call while :class:`Health` reports a failure, so the
    outside monitor also hears of a Vigil that runs but cannot see or speak. The URL
    is never logged: it usually carries the monitor's token.
    """

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        interval_s: float = 60.0,
        method: str = "GET",
        when: str = "healthy",
        report: Callable[[], Awaitable[HealthReport]] | None = None,
    ) -> None:
        self.url = url
        self.clock = clock
        self.interval_s = interval_s
        self.method = method
        self.when = when
        self.report = report
        self.sent = 0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> str:
        """One heartbeat now; returns ``sent``, ``skipped`` (unhealthy) or ``failed``."""
        outcome = await self._beat()
        metrics.HEARTBEATS.labels(outcome).inc()
        return outcome

    async def _beat(self) -> str:
        status: dict[str, Any] = {"status": "ok", "failing": []}
        if self.report is not None and (self.when == "healthy" or self.method == "POST"):
            rep = await self.report()
            status = {"status": rep.body["status"], "failing": list(rep.failing)}
            if self.when == "healthy" and not rep.ok:
                log.warning("heartbeat skipped: %s", "; ".join(rep.failing))
                return "skipped"
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HEARTBEAT_TIMEOUT_S)
            )
        kwargs: dict[str, Any] = {"json": status} if self.method == "POST" else {}
        try:
            async with self._session.request(self.method, self.url, **kwargs) as resp:
                await resp.read()
                if resp.status >= 300:
                    log.warning("heartbeat answered HTTP %d", resp.status)
                    return "failed"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("heartbeat failed: %s", type(exc).__name__)
            return "failed"
        self.sent += 1
        return "sent"

    def start(self) -> None:
        """Beat now, then every ``interval_s``."""
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        """Stop beating (an outside monitor then notices the silence)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:  # a heartbeat must keep beating whatever one call did
                log.exception("heartbeat failed")
            await self.clock.sleep(self.interval_s)


def make_heartbeat(
    config: Config, clock: Clock, report: Callable[[], Awaitable[HealthReport]]
) -> Heartbeat | None:
    """The heartbeat ``[health]`` asks for, or None (no ``heartbeat_url_env``, or unset)."""
    h = config.health
    url = config.secret(h.heartbeat_url_env)
    if not url:
        if h.heartbeat_url_env:
            log.warning(
                "heartbeat off: the environment variable %s is not set", h.heartbeat_url_env
            )
        return None
    return Heartbeat(
        url,
        clock,
        interval_s=h.heartbeat_interval_s,
        method=h.heartbeat_method,
        when=h.heartbeat_when,
        report=report,
    )


__all__ = [
    "ChatState",
    "FeedState",
    "Health",
    "HealthReport",
    "Heartbeat",
    "SilenceMonitor",
    "SystemAlerts",
    "busy_opened",
    "chat_states",
    "feed_state",
    "make_heartbeat",
]
