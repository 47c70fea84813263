"""Raid detection and lockdown.

A raid is many events of one kind in a short time: five image posts from accounts
younger than a week within ten minutes, three list matches within half an hour. The
admin declares each as a sliding-window counter in the rules files::

    [[raid]]
    name = "new-account-images"
    when = { events = ["post_created"], has_images = true, account_younger_than = "7d" }
    at_least = 5
    within = "10m"
    lockdown = "2h"

Counters are durable (``raid_hits``, one row per post counted, on the injected clock),
so a restart neither forgets a burst nor counts a retried event twice.

Crossing a counter starts a **lockdown**: a critical alert that escalates like any
other, notices in the staff room, the forum's site settings that switch image posting
off for new accounts (Discourse, when ``lockdown_settings`` are configured for the
source), and the rules that say ``lockdown = true`` in their ``when`` (typically:
hide image posts from new accounts) apply until it ends. Staff control it from chat
with ``!lockdown on [duration]``, ``!lockdown off`` and ``!lockdown status``. While it
is on, a reminder goes to the room every ``[lockdown] reminder_every``; it ends by
itself when its time runs out, and the site settings are put back. The lockdown is a
row in the store: a restart keeps it, its reminders and its end. Every change is
audited.

Roles: a volunteer may turn a lockdown ON (they are the ones awake when a raid
happens, and a lockdown only holds back new accounts' images) and read its status;
ending one early needs a moderator. A lockdown a volunteer starts opens an alert, so
paid staff hear of it through the escalation policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bot.actions import ForumLookup
from bot.alerts import clock_time, scrub, span
from bot.clock import Clock, as_datetime, sleep_or_wake
from bot.config import Config, Role, StaffMember
from bot.model import Event, EventKind
from bot.pipeline import EventContext
from bot.ports import ActionKind, ActionOutcome, ForumAction
from bot.reports import KEEP_REPORTS_S, reported_post, reporter_keys
from bot.rules import RaidSpec, RuleSet, Signals, applies
from bot.schema import parse_duration
from bot.store import AuditItem, LockdownAlert, OutboxItem, Store

log = logging.getLogger(__name__)

# Accounts whose creation time the signals stage keeps in memory (about 100 bytes each).
ACCOUNT_CACHE_SIZE = 100_000

Rooms = Callable[[str | None], tuple[tuple[str, str], ...]]
LOCKDOWN_USAGE = (
    "Usage: !lockdown on [duration, e.g. 2h] [reason] · !lockdown off [reason] · !lockdown status"
)
_MIN_LOCKDOWN_S = 60.0


def _message(text: str) -> dict[str, Any]:
    return {"text": text, "html": None}


class LockdownManager:
    """The lockdown state machine: start, extend, remind, end, and the site settings."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        *,
        rooms: Rooms,
        forums: ForumLookup,
        wake_outbox: Callable[[], None],
        on_alert: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.rooms = rooms
        self.forums = forums
        self.wake_outbox = wake_outbox
        self.on_alert = on_alert
        self._current: dict[str, Any] | None = None
        self._last_end: float = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()  # one state change at a time in this process
        self._settings_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    # --- state -------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the lockdown state from the store (at start)."""
        self._current = await self.store.lockdown_current()
        latest = await self.store.lockdown_latest()
        if latest is not None and latest["state"] == "off":
            self._last_end = float(latest["ended_at"] or 0.0)

    def is_on(self, now: float) -> bool:
        """Whether a lockdown is on at ``now`` (one past its end no longer counts, even
        before the timer has ended it)."""
        cur = self._current
        return cur is not None and now < float(cur["ends_at"])

    @property
    def current(self) -> dict[str, Any] | None:
        """The lockdown row that is on, if any."""
        return self._current

    @property
    def last_end(self) -> float:
        """When the last lockdown ended (a raid counts only what came after it)."""
        return self._last_end

    # --- starting and ending -------------------------------------------------------------

    async def start(
        self,
        by: str,
        duration_s: float | None,
        reason: str,
        *,
        raid: RaidSpec | None = None,
        source: str | None = None,
        alert_severity: str | None = None,
        summary: str = "",
    ) -> tuple[dict[str, Any], bool]:
        """Turn a lockdown on (False with the current one if one is on already)."""
        async with self._busy:
            now = self.clock.now()
            cfg = self.config.lockdown
            duration = min(duration_s or cfg.default_duration_s, cfg.max_duration_s)
            ends = now + duration
            room = (raid.room if raid else None) or cfg.room  # the alert's room
            tz = self._tz(by)
            text = (
                f"🔒 LOCKDOWN ON until {clock_time(ends, tz)} ({span(duration)}), started by"
                f" {by}: {scrub(reason, 200)}. While it is on, image posts from new accounts"
                f" are held back{self._settings_note()}. !lockdown status for details;"
                " a moderator ends it early with !lockdown off."
            )
            outbox = [
                OutboxItem(
                    chat,
                    "send",
                    {"room": addr, **_message(text)},
                    dedupe_key=f"lockdown:{{id}}:start:{chat}",
                )
                for chat, addr in self.rooms(cfg.room)
            ]
            alert = None
            if alert_severity is not None:
                alert = LockdownAlert(
                    incident_key=f"lockdown:{now:.3f}",
                    source=source or (self.config.sources[0].name if self.config.sources else ""),
                    severity=alert_severity,
                    room=room,
                    summary=summary or text,
                    rules=(f"raid:{raid.name}",) if raid else ("lockdown",),
                    rooms=self.rooms(room),
                    dry_run=self.config.service.dry_run,
                )
            audit = AuditItem(
                actor=by,
                action="lockdown_on",
                target="lockdown",
                reason=reason,
                outcome="ok",
                detail={
                    "until": as_datetime(ends).isoformat(),
                    "raid": raid.name if raid else None,
                },
            )
            lockdown_id, started = await self.store.lockdown_begin(
                started_at=now,
                ends_at=ends,
                started_by=by,
                reason=reason,
                raid=raid.name if raid else None,
                next_reminder_at=now + cfg.reminder_every_s,
                alert=alert,
                outbox=outbox,
                audit=audit,
            )
            self._current = await self.store.lockdown_current()
            assert self._current is not None
        if not started:
            return self._current, False
        log.warning(
            "lockdown %d on until %s, by %s (raid %s)",
            lockdown_id,
            as_datetime(ends).isoformat(),
            by,
            raid.name if raid else "-",
        )
        self.wake_outbox()
        if self._current.get("alert_id") and self.on_alert is not None:
            self.on_alert(int(self._current["alert_id"]))
        self._wake.set()
        # In the background: the event that crossed a raid must not wait on the forum's
        # admin API (the timer finishes the job after a crash: settings_state).
        task = asyncio.create_task(self._apply_settings(by), name="lockdown-settings")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return self._current, True

    async def extend(self, by: str, duration_s: float) -> tuple[bool, float]:
        """Push the end of the lockdown that is on to now + ``duration_s`` (never earlier);
        (changed, the end)."""
        async with self._busy:
            cur = self._current
            if cur is None:
                return False, 0.0
            now = self.clock.now()
            ends = now + min(duration_s, self.config.lockdown.max_duration_s)
            if ends <= float(cur["ends_at"]):
                return False, float(cur["ends_at"])
            text = f"🔒 Lockdown extended by {by} until {clock_time(ends, self._tz(by))}."
            done = await self.store.lockdown_change(
                int(cur["id"]),
                {"ends_at": ends},
                now,
                outbox=self._notices(cur, text, f"extend:{now:.0f}"),
                audit=(self._audit(cur, by, "lockdown_extend", f"until {as_datetime(ends)}"),),
            )
            self._current = await self.store.lockdown_current()
        if done:
            self.wake_outbox()
            self._wake.set()
        return done, ends

    async def end(self, by: str, reason: str) -> dict[str, Any] | None:
        """End the lockdown that is on (None if none is) and put the site settings back."""
        async with self._busy:
            cur = self._current or await self.store.lockdown_current()
            if cur is None:
                return None
            now = self.clock.now()
            text = (
                f"🔓 Lockdown ended ({scrub(reason, 200)}) after"
                f" {span(now - float(cur['started_at']))}. New accounts' image posts are no"
                " longer held back by it."
            )
            done = await self.store.lockdown_change(
                int(cur["id"]),
                {"state": "off", "ended_at": now, "ended_by": by, "end_reason": reason},
                now,
                outbox=self._notices(cur, text, "end"),
                audit=(self._audit(cur, by, "lockdown_off", reason),),
            )
            self._current = await self.store.lockdown_current()
            if done:
                self._last_end = now
        if not done:
            return None
        log.warning("lockdown %d ended by %s: %s", cur["id"], by, reason)
        self.wake_outbox()
        await self._restore_settings(by)
        return cur

    async def raid_crossed(self, raid: RaidSpec, count: int, event: Event) -> bool:
        """A raid counter crossed its threshold: start the lockdown (once) and alert."""
        if self._current is not None:
            return False
        duration = raid.lockdown_s or self.config.lockdown.default_duration_s
        what = f"{count} events matched raid {raid.name!r} within {span(raid.within_s)}"
        if raid.description:
            what += f" ({scrub(raid.description, 160)})"
        summary = (
            f"🔒 Raid detected: {what}. Lockdown ON for {span(duration)}: image posts from"
            f" new accounts are held back{self._settings_note()}. React 👀 to take this;"
            " !lockdown status for details, !lockdown off (moderators) to end it early"
        )
        _, started = await self.start(
            "Vigil",
            duration,
            f"raid {raid.name}: {what}",
            raid=raid,
            source=event.source,
            alert_severity=raid.severity.value,
            summary=summary,
        )
        return started

    # --- the timer -----------------------------------------------------------------------

    async def tick(self) -> None:
        """End an expired lockdown, send a due reminder, finish site settings left half-done
        by a crash. Safe to call at any time (every change is compare-and-set)."""
        now = self.clock.now()
        cur = self._current = await self.store.lockdown_current()
        if cur is not None and now >= float(cur["ends_at"]):
            await self.end("Vigil", "its time ran out")
            return
        if cur is not None and now >= float(cur["next_reminder_at"]):
            await self._remind(cur, now)
        if cur is not None and cur["settings_state"] in ("none", "applying"):
            await self._apply_settings("Vigil")
        latest = await self.store.lockdown_latest()
        if (
            latest is not None
            and latest["state"] == "off"
            and latest["settings_state"] in ("applying", "on", "restoring")
        ):
            await self._restore_settings("Vigil")

    async def _remind(self, cur: dict[str, Any], now: float) -> None:
        every = self.config.lockdown.reminder_every_s
        due = float(cur["next_reminder_at"])
        # After a long outage, one reminder, not one per missed hour.
        following = due + every * max(1, int((now - due) // every) + 1)
        n = int(cur["reminders"]) + 1
        left = float(cur["ends_at"]) - now
        text = (
            f"🔒 Reminder: the lockdown is still on ({span(now - float(cur['started_at']))}"
            f" so far; {span(left)} left, until"
            f" {clock_time(float(cur['ends_at']), self._tz(cur['started_by']))})."
            f" Reason: {scrub(cur['reason'], 160)}. !lockdown off (moderators) ends it;"
            " !lockdown on 2h extends it."
        )
        done = await self.store.lockdown_change(
            int(cur["id"]),
            {"next_reminder_at": following, "reminders": n},
            now,
            next_reminder_at=due,
            outbox=self._notices(cur, text, f"remind:{n}"),
        )
        if done:
            log.info("lockdown %d: reminder %d", cur["id"], n)
            self._current = await self.store.lockdown_current()
            self.wake_outbox()

    def start_loop(self) -> None:
        """Run the timer in the background (on the injected clock)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="lockdown")

    async def stop(self) -> None:
        """Stop the timer (site settings being changed finish first); the state stays in
        the store."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lockdown timer failed; retrying in a minute")
            cur = self._current
            wait = 3600.0
            if cur is not None:
                due = min(float(cur["ends_at"]), float(cur["next_reminder_at"]))
                wait = max(0.0, due - self.clock.now())
            await self._sleep(min(wait, 3600.0) if cur is not None else 3600.0)

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the injected clock until ``seconds`` pass or :meth:`wake` is called."""
        await sleep_or_wake(self.clock, self._wake, seconds)

    # --- site settings ------------------------------------------------------------------

    def _settings_note(self) -> str:
        where = [s.name for s in self.config.sources if s.lockdown_settings]
        if not where:
            return ""
        return f" and image posting is switched off for new accounts on {', '.join(where)}"

    async def _apply_settings(self, by: str) -> None:
        # One at a time, on a fresh row: the timer and a start must not both apply them.
        async with self._settings_lock:
            cur = await self.store.lockdown_current()
            if cur is None or cur["settings_state"] == "on":
                return
            wanted = [(s.name, k, v) for s in self.config.sources for k, v in s.lockdown_settings]
            if not wanted and cur["settings_state"] == "none":
                return
            await self._settings(cur, by, wanted, "applying", "on")

    async def _restore_settings(self, by: str) -> None:
        async with self._settings_lock:
            row = await self.store.lockdown_latest()
            if row is None or row["state"] != "off" or row["settings_state"] in ("none", "off"):
                return
            wanted = []
            for s in self.config.sources:
                normal = dict(s.normal_settings)
                wanted += [(s.name, k, normal[k]) for k, _ in s.lockdown_settings if k in normal]
            await self._settings(row, by, wanted, "restoring", "off")

    async def _settings(
        self,
        row: dict[str, Any],
        by: str,
        wanted: Sequence[tuple[str, str, str]],
        during: str,
        after: str,
    ) -> None:
        lockdown_id = int(row["id"])
        now = self.clock.now()
        expect = "on" if after == "on" else "off"
        # Marked first: a crash mid-way is finished by tick() at the next start.
        await self.store.lockdown_change(lockdown_id, {"settings_state": during}, now, state=expect)
        results: list[dict[str, Any]] = []
        audit: list[AuditItem] = []
        failed: list[str] = []
        for source, name, value in wanted:
            action = ForumAction(
                ActionKind.SITE_SETTING,
                source,
                setting=name,
                value=value,
                reason=f"lockdown #{lockdown_id} {'on' if after == 'on' else 'ended'}",
            )
            try:
                outcome = await self.forums(source).perform(action)
            except Exception as exc:  # a port must not raise; if one does, it is a failure
                outcome = ActionOutcome(ok=False, detail=f"{type(exc).__name__} in the forum port")
            detail = outcome.detail
            if outcome.simulated:
                detail = f"dry run: would set {name} to {value!r} on {source}"
            result = "simulated" if outcome.simulated else ("ok" if outcome.ok else "failed")
            results.append(
                {
                    "source": source,
                    "setting": name,
                    "value": value,
                    "outcome": result,
                    "detail": scrub(detail, 200),
                }
            )
            audit.append(
                AuditItem(
                    actor=by,
                    action="site_setting",
                    target=f"site setting {name} on {source}",
                    reason=f"lockdown #{lockdown_id}: set to {value!r}",
                    outcome=result,
                    alert_id=row.get("alert_id"),
                    detail={"detail": scrub(detail, 200), "lockdown": lockdown_id},
                )
            )
            if not outcome.ok:
                failed.append(f"{name} on {source}: {scrub(outcome.detail, 160)}")
        outbox: list[OutboxItem] = []
        if failed:
            verb = "switch image posting off" if after == "on" else "put the site settings back"
            text = f"⚠️ Lockdown #{lockdown_id}: could not {verb}: " + "; ".join(failed)
            outbox = self._notices(row, text, f"settings:{after}")
            await self.store.add_problem(
                "lockdown_settings", f"lockdown #{lockdown_id}", "; ".join(failed), now
            )
        await self.store.lockdown_change(
            lockdown_id,
            {"settings_state": after if wanted else "none", "settings": json.dumps(results)},
            now,
            state=expect,
            outbox=outbox,
            audit=audit,
        )
        if outbox:
            self.wake_outbox()
        if self._current is not None and int(self._current["id"]) == lockdown_id:
            self._current = await self.store.lockdown_current()

    # --- chat -----------------------------------------------------------------------------

    def _tz(self, name: str) -> str:
        """The zone to say times in: the person's, else (Vigil itself) the roster's first."""
        person = self.config.person(name) or (self.config.staff[0] if self.config.staff else None)
        return person.timezone if person else "UTC"

    def _notices(self, row: dict[str, Any], text: str, what: str) -> list[OutboxItem]:
        room = self.config.lockdown.room  # notices and reminders: [lockdown] room
        return [
            OutboxItem(
                chat,
                "send",
                {"room": addr, **_message(text)},
                dedupe_key=f"lockdown:{row['id']}:{what}:{chat}",
            )
            for chat, addr in self.rooms(room)
        ]

    def _audit(self, row: dict[str, Any], by: str, action: str, reason: str) -> AuditItem:
        return AuditItem(
            actor=by,
            action=action,
            target=f"lockdown #{row['id']}",
            reason=reason,
            outcome="ok",
            alert_id=row.get("alert_id"),
        )

    async def status_lines(self, tz: str = "UTC") -> list[str]:
        """What ``!lockdown status`` answers."""
        now = self.clock.now()
        cur = self._current
        if cur is not None:
            lines = [
                f"🔒 Lockdown #{cur['id']} is ON since {clock_time(float(cur['started_at']), tz)}"
                f" ({span(now - float(cur['started_at']))}), started by {cur['started_by']}:"
                f" {scrub(cur['reason'], 200)}.",
                f"It ends at {clock_time(float(cur['ends_at']), tz)}"
                f" (in {span(float(cur['ends_at']) - now)}); next reminder at"
                f" {clock_time(float(cur['next_reminder_at']), tz)}.",
            ]
            for r in json.loads(cur["settings"] or "[]"):
                lines.append(
                    f"Site setting {r['setting']} on {r['source']}: {r['outcome']} ({r['detail']})"
                )
            if cur["settings_state"] == "none" and not self._settings_note():
                lines.append(
                    "No forum site settings are configured for lockdowns: only the rules"
                    " with `lockdown = true` act."
                )
            return lines
        latest = await self.store.lockdown_latest()
        if latest is None:
            return ["🔓 No lockdown is on, and there has been none."]
        return [
            f"🔓 No lockdown is on. The last (#{latest['id']}) ended"
            f" {clock_time(float(latest['ended_at'] or now), tz)} ({latest['end_reason']},"
            f" by {latest['ended_by']})."
        ]

    async def command(self, person: StaffMember, words: Sequence[str]) -> str:
        """``!lockdown on [2h] [reason]`` / ``off [reason]`` / ``status`` (role checked
        by the caller, see :data:`ROLE_FOR`); the reply."""
        sub = words[0] if words else "status"
        rest = list(words[1:])
        if sub == "status":
            return "\n".join(await self.status_lines(person.timezone))
        if sub == "on":
            duration = parse_duration(rest[0]) if rest else None
            if duration is not None:
                rest = rest[1:]
            elif rest and rest[0][:1].isdigit():
                return f"{rest[0]!r} is not a duration. {LOCKDOWN_USAGE}"
            if duration is not None and duration < _MIN_LOCKDOWN_S:
                return f"A lockdown lasts at least {span(_MIN_LOCKDOWN_S)}. {LOCKDOWN_USAGE}"
            reason = " ".join(rest) or "started from chat"
            if self._current is not None:
                changed, ends = await self.extend(
                    person.name, duration or self.config.lockdown.default_duration_s
                )
                if changed:
                    return f"Lockdown extended until {clock_time(ends, person.timezone)}."
                return (
                    f"A lockdown is already on until {clock_time(ends, person.timezone)};"
                    " nothing changed. !lockdown off (moderators) ends it."
                )
            severity = "high" if person.role is Role.VOLUNTEER else None
            row, _ = await self.start(
                person.name,
                duration,
                reason,
                alert_severity=severity,
                summary=(
                    f"🔒 {person.name} (volunteer) started a lockdown: {scrub(reason, 200)}."
                    " Someone on call should look: !lockdown status."
                ),
            )
            return (
                f"Lockdown #{row['id']} is on until"
                f" {clock_time(float(row['ends_at']), person.timezone)}."
            )
        if sub == "off":
            ended = await self.end(person.name, " ".join(rest) or f"ended by {person.name}")
            if ended is None:
                return "No lockdown is on; nothing changed."
            return f"Lockdown #{ended['id']} ended."
        return LOCKDOWN_USAGE


# --- the pipeline stage -----------------------------------------------------------------------


class SignalsStage:
    """Before the rules: the account's age, distinct reporters of a reported post, raid
    counters (a crossing starts a lockdown), and whether a lockdown is on
    (``facts["signals"]``, a :class:`bot.rules.Signals`)."""

    name = "signals"

    def __init__(
        self,
        store: Store,
        rules: Callable[[], RuleSet],
        lockdown: LockdownManager | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.lockdown = lockdown
        # Account creation times by (source, user id), None for "not known". This stage is
        # the only writer of the accounts table, so the cache stays true; it saves a
        # database round trip per post, which was the costliest step of the pipeline.
        self._created: OrderedDict[tuple[str, str], float | None] = OrderedDict()

    async def _account_created(self, source: str, user_id: str) -> float | None:
        key = (source, user_id)
        if key in self._created:
            self._created.move_to_end(key)
            return self._created[key]
        created = await self.store.account_created(source, user_id)
        self._remember(key, created)
        return created

    def _remember(self, key: tuple[str, str], created: float | None) -> None:
        self._created[key] = created
        self._created.move_to_end(key)
        while len(self._created) > ACCOUNT_CACHE_SIZE:
            self._created.popitem(last=False)

    async def run(self, ctx: EventContext) -> None:
        """Count what this event adds to the windows; leave the signals for the rules."""
        event = await self._with_account_age(ctx)
        rules = self.rules()
        matches = ctx.facts.get("matches", ())
        at = as_datetime(ctx.now)
        # Raids first, so the event that crosses a threshold is itself under the lockdown.
        for raid in rules.raids:
            if not applies(raid.when, event, matches, at):
                continue
            key = f"{event.source}:post:{event.post.id}" if event.post else f"event:{ctx.id}"
            count = await self.store.raid_hit(raid.name, key, ctx.now, raid.within_s, ctx.id)
            if self.lockdown is not None and count >= raid.at_least:
                # Only what came after the last lockdown ended: one a moderator just ended
                # must not start again from the very posts it was about.
                since = self.lockdown.last_end
                if since > ctx.now - raid.within_s:
                    count = await self.store.raid_count(raid.name, since)
                if count >= raid.at_least:
                    await self.lockdown.raid_crossed(raid, count, event)
        reporters: tuple[tuple[float, int], ...] = ()
        post_id = reported_post(event)
        if post_id is not None:
            windows = rules.reporter_windows()
            reporters = await self.store.count_reporters(
                event.source,
                post_id,
                reporter_keys(event),
                ctx.now,
                windows,
                max((KEEP_REPORTS_S, *windows)),
            )
        on = self.lockdown.is_on(ctx.now) if self.lockdown is not None else False
        ctx.facts["signals"] = Signals(lockdown=on, reporters=reporters)

    async def _with_account_age(self, ctx: EventContext) -> Event:
        """Remember account creation times; fill them in where the forum left them out
        (Discourse posts name the author, not the account's age)."""
        event = ctx.event
        if event.kind is EventKind.USER_CREATED and event.user and event.user.created_at:
            created_at = event.user.created_at.timestamp()
            await self.store.remember_account(event.source, event.user.id, created_at)
            self._remember((event.source, event.user.id), created_at)
            return event
        post = event.post
        if post is None or post.author.created_at is not None or not post.author.id:
            return event
        created = await self._account_created(event.source, post.author.id)
        if created is None:
            return event
        author = dataclasses.replace(post.author, created_at=datetime.fromtimestamp(created, UTC))
        # The enriched event is what the rules and the alert see (it is not stored).
        ctx.event = dataclasses.replace(event, post=dataclasses.replace(post, author=author))
        return ctx.event
