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
import dataclasses
import logging
from collections.abc import Callable, Mapping

from bot.actions import ActionRunner, ForumLookup, new_action
from bot.alerts import SourceLinks, image_check, incident_key, summary_of, target_of
from bot.clock import Clock
from bot.config import Config, SourceKind
from bot.model import EventKind
from bot.moderation import Moderation, OnResolved
from bot.outbox import Outbox
from bot.pipeline import EventContext
from bot.ports import ChatPort
from bot.rules import Decision, RuleSet
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
        rules: Callable[[], RuleSet] | None = None,
        alert_changed: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.ports = dict(ports)
        self.lists_status = lists_status
        # Told when an alert is created, acked or resolved (the escalation engine's wake).
        self.alert_changed = alert_changed or (lambda: None)
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
            rules=rules,
            alert_changed=self.alert_changed,
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
                try:  # a page must not wait for a chat that is down
                    await self.outbox.fail_over(name)
                except Exception:
                    log.exception("chat %s: could not queue the fallbacks of its pages", name)
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
        if decision.distressing:
            target["distressing"] = True  # the alert says so first (bot.alerts)
        if target.get("held"):
            # What the check found before anyone approves the post (bot.alerts).
            target["image_check"] = image_check(ctx.facts.get("media", ()), decision.matches)
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
        if event.report is not None and await self._join_report(ctx, decision, actions):
            return
        alert = None
        if decision.alert:
            severity = decision.severity.value if decision.severity else "medium"
            summary = summary_of(target, decision.rules)
            if decision.distressing:  # pages quote the summary: they must warn too
                summary = "⚠ Distressing material, do not open the post · " + summary
            alert = IncidentAlert(
                incident_key=incident_key(event),
                source=event.source,
                severity=severity,
                room=decision.room,
                summary=summary,
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
        if result.alert_id is not None:
            service.alert_changed()  # the first page must not wait for the engine's poll
        if result.pending_actions:
            await service.runner.perform(result.pending_actions)

    async def _join_report(
        self, ctx: EventContext, decision: Decision, actions: list[NewAction]
    ) -> bool:
        """A report on a post an open alert already shows joins that alert (bot.reports):
        its reporter, reason and score are added, its actions act on that alert's post
        (one already hidden is not hidden twice). False when there is no such alert."""
        from bot.reports import merge_report, reported_post

        service = self.service
        event = ctx.event
        report = event.report
        assert report is not None
        joined = await service.store.report_join(ctx.id)
        if joined is None:
            found = await service.store.open_alert_with(
                event.source, reported_post(event), report.id
            )
            if found is None:
                # A report the forum has already settled (approved, rejected, ignored;
                # often by Vigil's own takedown) opens no new alert.
                return event.kind is EventKind.REPORT_UPDATED and report.status != "pending"
            alert_id, target_event, _target, hidden = found
        else:  # a retry of an event already merged: only its actions may be left to do
            alert_id, target_event, hidden = joined, ctx.id, 0
        skip = {"hide"} if hidden else set()
        if hidden == 2:
            skip.add("delete")
        kept = [
            dataclasses.replace(a, event_id=target_event) for a in actions if a.kind not in skip
        ]
        _, pending = await service.store.join_report(
            alert_id=alert_id,
            target_event_id=target_event,
            event_id=ctx.id,
            merge=lambda t: merge_report(t, event),
            severity=decision.severity.value if decision.severity else "medium",
            rules=decision.rules,
            actions=kept,
            now=service.clock.now(),
        )
        ctx.facts["alert_id"] = alert_id
        service.outbox.wake()
        if pending:
            await service.runner.perform(pending)
        return True
