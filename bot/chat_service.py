"""Chat wiring: the configured chat ports, the outbox, the forum-action runner,
moderation, and the pipeline stage that turns rule decisions into alerts.

A chat that cannot be reached at start does not stop Vigil: webhooks are still
taken, alerts queue in the outbox, and the port is started again with backoff (a
problem is recorded, so the outage is visible on /healthz). Stopping drains in
order: no new chat events, forum actions on the wire finish, the outbox stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from bot.actions import ActionRunner, ForumLookup, new_action
from bot.alerts import SourceLinks, incident_key, summary_of, target_of
from bot.clock import Clock
from bot.config import Config, SourceKind
from bot.moderation import Moderation, OnResolved
from bot.outbox import Outbox
from bot.pipeline import EventContext
from bot.ports import ChatPort
from bot.rules import Decision
from bot.store import IncidentAlert, NewAction, NewIncident, Store

log = logging.getLogger(__name__)

AUTO_ACTION_HOLD_S = 2.0  # an alert's first post waits this long at most for its auto-actions
START_BACKOFF_MAX_S = 30.0
ListsStatus = Callable[[], list[str]]


class ChatService:
    """Everything between a rule's decision and a moderator's reaction."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        ports: Mapping[str, ChatPort],
        forums: ForumLookup,
        *,
        lists_status: ListsStatus | None = None,
        on_resolved: OnResolved | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.ports = dict(ports)
        self.lists_status = lists_status
        links = {
            s.name: SourceLinks(s.base_url, s.kind == SourceKind.DISCOURSE) for s in config.sources
        }
        self.outbox = Outbox(store, clock, links)
        self.moderation = Moderation(
            config,
            store,
            clock,
            wake_actions=self._wake_actions,
            wake_outbox=self.outbox.wake,
            status=self.status_lines,
            on_resolved=on_resolved,
        )
        self.runner = ActionRunner(
            store,
            forums,
            clock,
            on_finished=self.moderation.finalize,
            on_change=self.outbox.wake,
        )
        self.started: dict[str, bool] = {name: False for name in self.ports}
        self._starters: list[asyncio.Task[None]] = []

    def _wake_actions(self) -> None:
        self.runner.wake()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Resume what a previous run left, then start each chat (in the background)."""
        resent = await self.store.release_outbox()
        rerun = await self.store.release_actions()
        if resent or rerun:
            log.warning(
                "resuming %d chat messages and %d forum actions left by a previous run",
                resent,
                rerun,
            )
        self.runner.start()
        for alert_id in await self.store.stalled_operations():
            await self.moderation.conclude(alert_id)
        for name, port in self.ports.items():
            self._starters.append(asyncio.create_task(self._start_port(name, port)))

    async def _start_port(self, name: str, port: ChatPort) -> None:
        delay = 1.0
        reported = False
        while True:
            try:
                await port.start(self.moderation.on_reaction, self.moderation.on_command)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("chat %s could not start (%s); retrying in %.0fs", name, exc, delay)
                if not reported:
                    reported = True
                    await self.store.add_problem(
                        "chat_down", f"chat {name}", f"cannot start: {exc}", self.clock.now()
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_BACKOFF_MAX_S)
        self.started[name] = True
        await self.outbox.start_chat(name, port)
        log.info("chat %s started", name)

    async def stop(self) -> None:
        """Stop sending (a message on the wire is resent, same transaction id, at the next
        start), let forum actions on the wire finish, then stop the chats."""
        for task in self._starters:
            task.cancel()
        for task in self._starters:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._starters.clear()
        await self.outbox.stop()
        await self.runner.stop()
        for name, port in self.ports.items():
            if self.started.get(name):
                try:
                    await port.stop()
                except Exception:
                    log.exception("chat %s did not stop cleanly", name)
                self.started[name] = False

    # --- rooms --------------------------------------------------------------------------

    def room_addresses(self, room_name: str | None) -> tuple[tuple[str, str], ...]:
        """(chat, address) of a configured room in every chat Vigil runs; default: the first."""
        room = self.config.room(room_name) if room_name else None
        if room is None and self.config.rooms:
            room = self.config.rooms[0]
        if room is None:
            return ()
        out = []
        for chat in self.ports:
            address = getattr(room, chat, None)
            if address:
                out.append((chat, address))
        return tuple(out)

    # --- !status ----------------------------------------------------------------------

    async def status_lines(self) -> list[str]:
        """Open alerts, lists loaded, feed health: what ``!status`` answers."""
        now = self.clock.now()
        open_alerts = await self.store.alerts_in(("open", "acked", "acting"))
        lines = [f"Open alerts: {len(open_alerts)}"]
        for a in open_alerts[:10]:
            who = f", {a['acked_by']} on it" if a.get("acked_by") else ""
            age = int(now - a["created_at"])
            lines.append(
                f"  #{a['id']} {a['severity']} {a['status']}{who}, {age} s old: {a['summary']}"
            )
        if len(open_alerts) > 10:
            lines.append(f"  … and {len(open_alerts) - 10} more")
        if self.lists_status is not None:
            lines += self.lists_status()
        last = await self.store.last_event_at()
        counts = await self.store.inbox_counts()
        feed = ", ".join(f"{s} {int(now - t)} s ago" for s, t in sorted(last.items())) or "none yet"
        lines.append(f"Feed: last event {feed}; inbox pending {counts.get('pending', 0)}")
        if counts.get("parked"):
            lines.append(f"  ⚠️ {counts['parked']} events parked (failed processing)")
        outbox = await self.store.outbox_counts()
        lines.append(
            f"Chat: {outbox.get('pending', 0)} messages waiting, {outbox.get('failed', 0)} failed; "
            + ", ".join(
                f"{name} {'up' if self.started.get(name) else 'DOWN'}" for name in self.ports
            )
        )
        return lines


class AlertStage:
    """Pipeline stage after the rules: record the alert and run the rule's own actions.

    Idempotent: the incident, its messages and its actions are keyed on the inbox
    event, so an event processed twice adds nothing and repeats no forum action
    that finished; one left unfinished by a crash is performed now.
    """

    name = "alerts"

    def __init__(self, service: ChatService) -> None:
        self.service = service

    async def run(self, ctx: EventContext) -> None:
        """Open or update the alert for a decision that alerts; perform its automatic actions."""
        decision: Decision | None = ctx.facts.get("decision")
        if decision is None or not decision.fired or not (decision.alert or decision.actions):
            return
        service = self.service
        config = service.config
        event = ctx.event
        target = target_of(event, decision.matches)
        rules = ", ".join(decision.rules)
        why = "; ".join(
            f"list {m.list} ({m.kind}, distance {m.distance})" for m in decision.matches
        )
        reason = f"rule {rules}" + (f": {why}" if why else "")
        actor = f"rule:{rules}"
        actions: list[NewAction] = [
            new_action(
                f"auto:{ctx.id}:{kind}",
                kind,
                event.source,
                target,
                actor=actor,
                reason=reason,
                event_id=ctx.id,
            )
            for kind in decision.actions
        ]
        alert = None
        if decision.alert:
            severity = decision.severity.value if decision.severity else "medium"
            alert = IncidentAlert(
                incident_key=incident_key(event),
                source=event.source,
                severity=severity,
                room=decision.room,
                summary=summary_of(target, decision.rules),
                rules=decision.rules,
                target=target,
                rooms=service.room_addresses(decision.room),
                group_window_s=config.alerts.group_window_s,
                hold_s=AUTO_ACTION_HOLD_S if actions else 0.0,
                dry_run=config.service.dry_run,
            )
        now = service.clock.now()
        result = await service.store.record_incident(
            NewIncident(ctx.id, alert, tuple(actions)), now
        )
        ctx.facts["alert_id"] = result.alert_id
        service.outbox.wake()
        if result.pending_actions:
            await service.runner.perform(result.pending_actions)
