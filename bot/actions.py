"""Forum actions: journaled, performed through a source's ForumPort, and audited.

Every action, by a rule or by a person, is first written to the journal
(``forum_actions``) in the same transaction as the decision that asked for it; this
runner then performs it and records the outcome and its audit entry (who, what,
when, why, outcome) in one transaction. A process killed in between finds the action
pending again at start and performs it then: at least once towards the forum, never
forgotten. With ``service.dry_run`` the port is a simulator and the outcome says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bot.clock import Clock
from bot.ports import ActionKind, ActionOutcome, ForumAction, ForumPort
from bot.store import ActionRecord, AuditItem, FinishedAction, NewAction, Store

log = logging.getLogger(__name__)

ForumLookup = Callable[[str], ForumPort]
OnFinished = Callable[[FinishedAction], Awaitable[None]]


class MissingForum:
    """The port of a source with no moderation API configured: every action fails, loudly."""

    def __init__(self, source: str) -> None:
        self.source = source

    async def perform(self, action: ForumAction) -> ActionOutcome:
        """Always fails, saying what to configure."""
        return ActionOutcome(
            ok=False,
            detail=(
                f"source {self.source!r} has no forum API configured "
                "(set api_key_env/api_username or callback_url in bot.toml)"
            ),
        )


def action_fields(
    kind: str,
    source: str,
    target: dict[str, Any],
    reason: str,
    *,
    until: str | None = None,
) -> dict[str, Any]:
    """The ForumAction (as JSON fields) that does ``kind`` to an alert's post or author."""
    report = target.get("report") or {}
    fields: dict[str, Any] = {"kind": kind, "source": source, "reason": reason}
    if kind in (ActionKind.SUSPEND, ActionKind.SILENCE):
        fields["user_id"] = target.get("user_id")
        fields["until"] = until
        return fields
    fields["post_id"] = target.get("post_id")
    if report and kind in (ActionKind.HIDE, ActionKind.DELETE):
        fields["report_id"] = report.get("id")
        fields["report_version"] = report.get("version")
        fields["report_actions"] = list(report.get("actions") or ())
    return fields


def to_forum_action(fields: dict[str, Any]) -> ForumAction:
    """Rebuild the ForumAction from its journaled fields."""
    return ForumAction(
        kind=ActionKind(fields["kind"]),
        source=fields["source"],
        post_id=fields.get("post_id"),
        user_id=fields.get("user_id"),
        report_id=fields.get("report_id"),
        report_version=fields.get("report_version"),
        report_actions=tuple(fields.get("report_actions") or ()),
        reason=fields.get("reason", ""),
        until=fields.get("until"),
    )


def describe(fields: dict[str, Any]) -> str:
    """The audit log's target column: "post 12 on forum", "user 7 on forum"."""
    if fields.get("kind") in (ActionKind.SUSPEND, ActionKind.SILENCE):
        what = f"user {fields.get('user_id') or '?'}"
    elif fields.get("post_id"):
        what = f"post {fields['post_id']}"
    elif fields.get("report_id"):
        what = f"queued post (review {fields['report_id']})"
    else:
        what = "post ?"
    return f"{what} on {fields.get('source')}"


def new_action(
    dedupe_key: str,
    kind: str,
    source: str,
    target: dict[str, Any],
    *,
    actor: str,
    reason: str,
    op_seq: int = 0,
    event_id: int | None = None,
    until: str | None = None,
) -> NewAction:
    """A journal entry for ``kind`` on one target of an alert."""
    return NewAction(
        dedupe_key=dedupe_key,
        source=source,
        kind=kind,
        action=action_fields(kind, source, target, reason, until=until),
        actor=actor,
        reason=reason,
        op_seq=op_seq,
        event_id=event_id,
    )


class ActionRunner:
    """Performs journaled forum actions, at once when asked and at start for leftovers."""

    def __init__(
        self,
        store: Store,
        forums: ForumLookup,
        clock: Clock,
        *,
        on_finished: OnFinished | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.forums = forums
        self.clock = clock
        self.on_finished = on_finished
        self.on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Start the loop that performs pending actions (leftovers first)."""
        self._task = asyncio.create_task(self._loop(), name="forum-actions")
        self._wake.set()

    def wake(self) -> None:
        """New actions were journaled."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop taking actions; those on the wire finish first."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.perform(None)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("forum action runner failed; retrying shortly")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def perform(self, ids: Sequence[int] | None) -> None:
        """Claim pending actions (``ids``, or all) and perform them concurrently."""
        claimed = await self.store.claim_actions(ids)
        if not claimed:
            return
        task = asyncio.ensure_future(asyncio.gather(*(self._one(a) for a in claimed)))
        # Shielded: a stop (or a cancelled pipeline stage) must not leave an action
        # half-recorded; the runner's stop waits for these.
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        await asyncio.shield(task)

    async def _one(self, record: ActionRecord) -> None:
        action = to_forum_action(record.action)
        try:
            outcome = await self.forums(record.source).perform(action)
        except Exception as exc:  # a port must not raise; if one does, it is a failure
            log.exception("forum port raised for action %d", record.id)
            outcome = ActionOutcome(ok=False, detail=f"{type(exc).__name__} in the forum port")
        result = "simulated" if outcome.simulated else ("ok" if outcome.ok else "failed")
        audit = AuditItem(
            actor=record.actor,
            action=record.kind,
            target=describe(record.action),
            reason=record.reason,
            outcome=result,
            alert_id=record.alert_id,
            detail={"detail": outcome.detail, "event_id": record.event_id},
        )
        finished = await self.store.finish_action(
            record.id,
            ok=outcome.ok,
            simulated=outcome.simulated,
            detail=outcome.detail,
            audit=audit,
            now=self.clock.now(),
        )
        log.info(
            "forum action %d %s %s by %s: %s",
            record.id,
            record.kind,
            describe(record.action),
            record.actor,
            result,
        )
        if self.on_change is not None:
            self.on_change()
        if finished is not None and self.on_finished is not None:
            await self.on_finished(finished)
