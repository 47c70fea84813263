"""The durable chat outbox: every message Vigil sends goes through here.

Messages are queued in the same transaction as the change they report (see
``Store.record_incident`` and ``Store.apply_plan``); this module delivers them.
States: pending -> sending -> sent, or back to pending with a backoff that honours
the homeserver's ``retry_after``; a message the chat keeps refusing ends ``failed``
with a problem recorded. A homeserver that is down delays alerts, never loses them:
an unreachable server is retried for as long as it takes.

Every send carries a transaction id made of this database's id, the row and its
generation, so a resend after a crash (the row is found 'sending' at start) is
de-duplicated by the homeserver instead of posted twice.

Alert posts and edits are rendered when they are sent, from the alert as it is
then: a post delayed by an outage shows the latest state, and an edit covers every
change made while it waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from bot import metrics
from bot.alerts import BUTTONS, CONFIRM_KEY, SourceLinks, render_alert
from bot.clock import Clock
from bot.ports import ChatMessage, ChatPort
from bot.store import OutboxItem, OutboxRow, Plan, Store

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 60.0
REFUSALS_BEFORE_FAILING = 8  # a chat that answers "no" this often will not say yes
WORKERS_PER_CHAT = 2  # messages of different alerts go out side by side


# Payload key of a page: what to queue instead when it cannot be delivered (the person's
# next channel, bot.escalation.ChatNotifier). Queued once (dedupe keys) at the first
# failure, or when its chat cannot start; the message itself is still retried.
FALLBACK = "fallback"


def fallback_entry(item: OutboxItem) -> dict[str, Any]:
    """An outbox item as JSON, for a payload's ``fallback`` list."""
    return {
        "chat": item.chat,
        "op": item.op,
        "payload": item.payload,
        "dedupe_key": item.dedupe_key,
        "alert_id": item.alert_id,
    }


def _fallbacks(payload: Mapping[str, Any]) -> tuple[OutboxItem, ...]:
    return tuple(
        OutboxItem(e["chat"], e["op"], e["payload"], e.get("dedupe_key"), e.get("alert_id"))
        for e in payload.get(FALLBACK) or ()
    )


def _message(payload: Mapping[str, Any]) -> ChatMessage:
    return ChatMessage(
        text=payload["text"],
        html=payload.get("html"),
        mentions=tuple(payload.get("mentions", ())),
        mention_room=bool(payload.get("mention_room", False)),
    )


class Outbox:
    """Delivers queued messages, one loop (a few workers) per started chat."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        links: Mapping[str, SourceLinks],
        *,
        idle_poll_s: float = 5.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.links = dict(links)
        self.idle_poll_s = idle_poll_s
        self.ports: dict[str, ChatPort] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._instance: str | None = None
        self.on_sent: Callable[[OutboxRow], None] | None = None  # for metrics and tests

    def wake(self) -> None:
        """Something was queued: every chat loop looks now."""
        for event in self._wake.values():
            event.set()

    async def start_chat(self, name: str, port: ChatPort) -> None:
        """Begin delivering ``name``'s messages through a started port."""
        if self._instance is None:
            self._instance = await self.store.outbox_instance()
        self.ports[name] = port
        wake = self._wake.setdefault(name, asyncio.Event())
        wake.set()
        # Worker 0 only posts alerts, so a new alert never waits for a free worker.
        for i in range(WORKERS_PER_CHAT):
            lane = 0 if i == 0 else 9
            self._tasks.append(
                asyncio.create_task(self._loop(name, lane), name=f"outbox-{name}-{i}")
            )

    async def stop(self) -> None:
        """Stop delivering; a message on the wire is left 'sending' and resent at start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _loop(self, chat: str, max_priority: int) -> None:
        wake = self._wake[chat]
        while True:
            # Clear before looking, so a message queued while we look is not missed.
            wake.clear()
            try:
                row = await self.store.claim_outbox(chat, self.clock.now(), max_priority)
            except Exception:
                log.exception("outbox %s could not read the queue", chat)
                await asyncio.sleep(1.0)
                continue
            if row is not None:
                await self._deliver(row)
                continue
            due = await self.store.next_outbox_due(chat, max_priority)
            timeout = self.idle_poll_s
            if due is not None:
                timeout = max(0.0, min(timeout, due - self.clock.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=timeout)

    async def _deliver(self, row: OutboxRow) -> None:
        port = self.ports[row.chat]
        try:
            result = await self._send(port, row)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(row, exc)
            return
        then = None
        if row.op == "post_alert" and result:
            # The buttons go on later, at a lower priority: a burst of alerts reaches
            # the room first, each one's buttons follow.
            then = OutboxItem(
                row.chat,
                "seed_buttons",
                {"room": row.payload["room"], "message_id": result},
                dedupe_key=f"seed:{row.alert_id}:{row.chat}",
                alert_id=row.alert_id,
            )
        await self.store.outbox_sent(row.id, result, self.clock.now(), then)
        if then is not None:
            self.wake()  # the buttons are for the other workers
        if self.on_sent is not None:
            self.on_sent(row)

    async def _failed(self, row: OutboxRow, exc: Exception) -> None:
        metrics.CHAT_SEND_FAILURES.labels(row.chat).inc()
        await self._fall_back(row.chat, row.id, row.payload)
        # Duck-typed: the core never imports an adapter's exception classes.
        errcode = getattr(exc, "errcode", None)
        retry_after = getattr(exc, "retry_after", None)
        error = f"{type(exc).__name__}: {exc}"[:500]
        refused = errcode is not None and errcode != "M_LIMIT_EXCEEDED"
        if refused and row.attempts >= REFUSALS_BEFORE_FAILING:
            log.error("outbox %s gave up on message %d (%s): %s", row.chat, row.id, row.op, error)
            await self.store.outbox_failed(row.id, error, self.clock.now())
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** min(row.attempts - 1, 16))
        if retry_after:
            delay = max(delay, float(retry_after))
        log.warning(
            "outbox %s message %d (%s) attempt %d failed, retry in %.1fs: %s",
            row.chat,
            row.id,
            row.op,
            row.attempts,
            delay,
            error,
        )
        await self.store.outbox_retry(row.id, error, self.clock.now() + delay)

    async def _fall_back(self, chat: str, row_id: int, payload: Mapping[str, Any]) -> None:
        """Queue a message's fallbacks (a page by the person's next channel), once."""
        items = _fallbacks(payload)
        if not items:
            return
        await self.store.apply_plan(Plan(outbox=items), self.clock.now())
        log.warning(
            "outbox %s message %d not delivered; paging by the next channel too (%s)",
            chat,
            row_id,
            ", ".join(f"{i.chat} {i.op}" for i in items),
        )
        self.wake()

    async def fail_over(self, chat: str) -> None:
        """``chat`` cannot start: its waiting pages go by their fallback channels."""
        for row in await self.store.outbox_rows(chat):
            if row["state"] == "pending" and FALLBACK in row["payload"]:
                await self._fall_back(chat, row["id"], json.loads(row["payload"]))

    def _txn(self, row: OutboxRow, step: str) -> str:
        return f"vigil.{self._instance}.{row.id}.{row.generation}.{step}"

    async def _send(self, port: ChatPort, row: OutboxRow) -> str:
        p = row.payload
        if row.op == "post_alert":
            return await self._post_alert(port, row)
        if row.op == "edit_alert":
            return await self._edit_alert(port, row)
        if row.op == "seed_buttons":
            return await self._seed_buttons(port, row)
        if row.op == "send":
            return await port.send(p["room"], _message(p), txn_id=self._txn(row, "send"))
        if row.op == "dm":
            return await port.direct_message(p["user"], _message(p), txn_id=self._txn(row, "dm"))
        if row.op == "confirm_prompt":
            assert row.alert_id is not None
            msg_id = await port.send(p["room"], _message(p), txn_id=self._txn(row, "send"))
            await self.store.add_alert_message(row.alert_id, row.chat, p["room"], msg_id, "confirm")
            await port.react(p["room"], msg_id, CONFIRM_KEY, txn_id=self._txn(row, "seed"))
            return msg_id
        raise ValueError(f"unknown outbox operation {row.op!r}")

    async def _post_alert(self, port: ChatPort, row: OutboxRow) -> str:
        assert row.alert_id is not None
        alert = await self.store.alert_snapshot(row.alert_id)
        if alert is None:
            return ""
        room = row.payload["room"]
        message = render_alert(alert, self.links, self.clock.now())
        msg_id = await port.send(room, message, txn_id=self._txn(row, "post"))
        await self.store.add_alert_message(alert.id, row.chat, room, msg_id)
        return msg_id

    async def _seed_buttons(self, port: ChatPort, row: OutboxRow) -> str:
        room, msg_id = row.payload["room"], row.payload["message_id"]
        for i, button in enumerate(BUTTONS):
            await port.react(room, msg_id, button.key, txn_id=self._txn(row, f"b{i}"))
        return msg_id

    async def _edit_alert(self, port: ChatPort, row: OutboxRow) -> str:
        assert row.alert_id is not None
        alert = await self.store.alert_snapshot(row.alert_id)
        if alert is None:
            return ""
        message = render_alert(alert, self.links, self.clock.now())
        for _, room, msg_id in await self.store.alert_messages(alert.id, row.chat):
            await port.edit(room, msg_id, message, txn_id=self._txn(row, f"edit.{msg_id}"))
        return str(alert.version)
