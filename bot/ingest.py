"""Webhook ingest: verify, parse, persist, then acknowledge.

A delivery is answered 2xx only after its row is committed to the inbox, so an
event the forum was told we received survives a killed process. Concurrent
requests share one transaction (a group commit) so the rate stays high while every
acknowledgement still waits for its own commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot import metrics
from bot.clock import Clock
from bot.config import SourceConfig
from bot.model import PayloadError, UnknownEvent
from bot.ports import WebhookParser
from bot.store import InboxRow, Store

log = logging.getLogger(__name__)

MAX_DELIVERY_ID = 200


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the right signature of ``body``, compared in constant time."""
    if not header or not secret:
        return False
    expected = sign(secret, body)
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode())


class GroupCommitter:
    """Collects inbox rows from concurrent requests and commits them together.

    While one transaction is being written, new rows queue up; the next transaction
    takes them all. Each caller's future resolves only after its row is committed.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        max_batch: int = 256,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._pending: list[tuple[InboxRow, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="inbox-writer")

    async def submit(self, row: InboxRow) -> bool:
        """Queue ``row``; returns True once committed as new, False if a duplicate."""
        if self._closing:
            raise RuntimeError("ingest is shutting down")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((row, fut))
        self._wake.set()
        return await fut

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[InboxRow, asyncio.Future[bool]]]) -> None:
        try:
            inserted = await self.store.insert_events([r for r, _ in batch], self.clock.now())
        except Exception as exc:  # a failed commit must fail every waiting request
            log.exception("inbox commit failed for %d deliveries", len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        metrics.COMMIT_BATCH.observe(len(batch))
        for (_, fut), new in zip(batch, inserted, strict=True):
            if not fut.done():
                fut.set_result(new)
        if self.on_commit and any(inserted):
            self.on_commit(sum(inserted))


@dataclass(frozen=True, slots=True)
class WebhookSource:
    """A configured source with its parser and secret, ready to receive."""

    config: SourceConfig
    parser: WebhookParser
    secret: bytes


def _reject(status: int, reason: str, source: str = "?") -> web.Response:
    metrics.WEBHOOK_REJECTS.labels(str(status)).inc()
    metrics.WEBHOOKS.labels(source, "rejected").inc()
    return web.json_response({"error": reason}, status=status)


class Ingest:
    """The webhook endpoints of the aiohttp server.

    ``keep_personal`` (``[privacy] keep_personal_data``): store the IPs and emails a
    delivery carries in the restricted table; off by default, so that wiring which
    forgets the setting keeps nothing rather than too much.
    """

    def __init__(
        self,
        sources: Mapping[str, WebhookSource],
        committer: GroupCommitter,
        max_body_bytes: int,
        *,
        keep_personal: bool = False,
    ) -> None:
        self.sources = dict(sources)
        self.committer = committer
        self.max_body_bytes = max_body_bytes
        self.keep_personal = keep_personal

    def routes(self) -> list[web.RouteDef]:
        """``POST /webhooks/{kind}`` and ``POST /webhooks/{kind}/{source}``."""
        return [
            web.post("/webhooks/{kind}", self.handle),
            web.post("/webhooks/{kind}/{source}", self.handle),
        ]

    def _find_source(self, kind: str, name: str | None) -> WebhookSource | None:
        if name is not None:
            src = self.sources.get(name)
            return src if src and src.config.kind == kind else None
        of_kind = [s for s in self.sources.values() if s.config.kind == kind]
        # Without a name in the path the kind must identify the source unambiguously.
        return of_kind[0] if len(of_kind) == 1 else None

    async def handle(self, request: web.Request) -> web.Response:
        """Receive one delivery: the whole contract of DESIGN §5."""
        kind = request.match_info["kind"]
        src = self._find_source(kind, request.match_info.get("source"))
        if src is None:
            return _reject(404, f"no webhook source configured for /webhooks/{kind}")
        name = src.config.name

        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return _reject(413, f"body over the {self.max_body_bytes}-byte limit", name)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _reject(413, f"body over the {self.max_body_bytes}-byte limit", name)
        if len(body) > self.max_body_bytes:
            return _reject(413, f"body over the {self.max_body_bytes}-byte limit", name)

        parser = src.parser
        if not signature_ok(src.secret, body, request.headers.get(parser.signature_header)):
            log.warning("webhook refused: bad or missing signature source=%s", name)
            return _reject(401, f"missing or invalid {parser.signature_header}", name)

        if request.content_type != "application/json":
            return _reject(415, "expected Content-Type: application/json", name)
        delivery_id = request.headers.get(parser.delivery_header, "").strip()
        if not delivery_id:
            return _reject(400, f"missing {parser.delivery_header} header", name)
        if len(delivery_id) > MAX_DELIVERY_ID or not delivery_id.isprintable():
            return _reject(400, f"{parser.delivery_header} is not a valid delivery id", name)

        try:
            document = _decode_json(body)
            parsed = parser.parse(name, request.headers, document)
        except UnknownEvent as exc:
            log.info(
                "webhook refused: unknown event source=%s delivery=%s: %s", name, delivery_id, exc
            )
            return _reject(400, f"unknown event: {exc}", name)
        except PayloadError as exc:
            log.info(
                "webhook refused: bad payload source=%s delivery=%s: %s", name, delivery_id, exc
            )
            return _reject(400, str(exc), name)

        if parsed.event is None:
            metrics.WEBHOOKS.labels(name, "ignored").inc()
            return web.json_response({"status": "ignored", "note": parsed.note})

        event = parsed.event
        row = InboxRow(
            source=name,
            delivery_id=delivery_id,
            kind=event.kind.value,
            payload=json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False),
            personal=parsed.personal if self.keep_personal else None,
        )
        try:
            new = await self.committer.submit(row)
        except Exception:
            # Nothing was acknowledged, so the forum will redeliver; 503 says "try again".
            return _reject(503, "could not store the delivery; retry later", name)
        outcome = "stored" if new else "duplicate"
        metrics.WEBHOOKS.labels(name, outcome).inc()
        if not new:
            log.info("duplicate delivery source=%s delivery=%s", name, delivery_id)
        return web.json_response({"status": outcome})


def _decode_json(body: bytes) -> Any:
    """JSON from raw bytes, or a PayloadError that says what is wrong (never the body)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise PayloadError("body is nested too deeply") from None
