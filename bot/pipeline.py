"""The pipeline: workers that take events from the inbox through the stages.

At-least-once and crash-safe. A worker leases an event (a lapsed lease — its worker
died — makes it claimable again), runs every stage in order, and marks it done. A
stage that raises sends the event back with exponential backoff; after
``max_attempts`` the event is parked with its error and a problem is recorded, so
nothing is dropped silently.

Because an event may run more than once, every stage must be idempotent: it looks
at what the store already holds for the event before acting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot import metrics
from bot.clock import Clock, as_datetime
from bot.config import PipelineConfig
from bot.model import Event, event_from_dict
from bot.store import ClaimedEvent, Store

log = logging.getLogger(__name__)


@dataclass
class EventContext:
    """One event on its way through the stages; stages leave results in ``facts``."""

    id: int
    event: Event
    attempt: int
    now: float
    facts: dict[str, Any] = field(default_factory=dict)


class Stage(Protocol):
    """One step of processing; must be idempotent (see the module docstring)."""

    name: str

    async def run(self, ctx: EventContext) -> None:
        """Do this stage's work for ``ctx.event``; raise to have the event retried."""
        ...


class Pipeline:
    """Runs ``workers`` workers over the inbox until stopped."""

    def __init__(
        self,
        store: Store,
        stages: list[Stage],
        config: PipelineConfig,
        clock: Clock,
    ) -> None:
        self.store = store
        self.stages = list(stages)
        self.config = config
        self.clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._idle_waiters = 0

    def wake(self, _count: int = 0) -> None:
        """Tell idle workers new events are in (called after each inbox commit)."""
        self._wake.set()

    def start(self) -> None:
        """Start the workers."""
        for i in range(self.config.workers):
            self._tasks.append(asyncio.create_task(self._worker(i), name=f"pipeline-{i}"))

    async def stop(self) -> None:
        """Let each worker finish the event in hand, then return (SIGTERM drain)."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def run_once(self) -> bool:
        """Claim a batch of ready events and process them; False when none was ready."""
        batch = await self.store.claim_events(
            self.clock.now(), self.config.lease_s, self.config.claim_batch
        )
        if not batch:
            return False
        done: list[int] = []
        leased_at = self.clock.now()
        for i, claimed in enumerate(batch):
            # A long batch renews the leases of the events still waiting in it, so no
            # other worker takes them for abandoned.
            if self.clock.now() - leased_at > self.config.lease_s / 2:
                leased_at = self.clock.now()
                waiting = [c.id for c in batch[i:]]
                await self.store.extend_leases(waiting, leased_at + self.config.lease_s)
            if await self._process(claimed):
                done.append(claimed.id)
        # One statement for the whole batch; a crash before it only means the batch
        # runs again, which idempotent stages allow.
        await self.store.finish_events(done, self.clock.now())
        metrics.EVENTS_PROCESSED.labels("done").inc(len(done))
        return True

    async def _worker(self, index: int) -> None:
        while not self._stopping:
            try:
                busy = await self.run_once()
            except Exception:
                # The store itself failed (disk full, locked): say so and back off.
                log.exception("pipeline worker %d could not claim an event", index)
                await asyncio.sleep(1.0)
                continue
            if busy:
                continue
            await self._idle_wait()

    async def _idle_wait(self) -> None:
        # Sleep until new events are committed or the next retry falls due. Clear the
        # flag before looking, so a wake-up that lands while we look is not lost; once
        # stopping, never clear it (another worker may still need to see it).
        if self._stopping:
            return
        self._wake.clear()
        due = await self.store.next_event_due()
        if self._stopping:
            return
        timeout = 5.0 if due is None else max(0.0, min(5.0, due - self.clock.now()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _process(self, claimed: ClaimedEvent) -> bool:
        """Run the stages; True when the event is done (retries and parking are handled here)."""
        try:
            event = event_from_dict(claimed.payload)
        except (KeyError, TypeError, ValueError) as exc:
            # A row we cannot read will not get better with retries.
            await self._park(claimed, f"stored event is unreadable: {exc!r}")
            return False
        ctx = EventContext(claimed.id, event, claimed.attempts, self.clock.now())
        stage_name = ""
        try:
            for stage in self.stages:
                stage_name = stage.name
                started = time.perf_counter()
                await stage.run(ctx)
                metrics.STAGE_SECONDS.labels(stage.name).observe(time.perf_counter() - started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"stage {stage_name} failed: {type(exc).__name__}: {exc}"
            if claimed.attempts >= self.config.max_attempts:
                log.error(
                    "event %d parked after %d attempts: %s", claimed.id, claimed.attempts, error
                )
                await self._park(claimed, error)
            else:
                delay = min(
                    self.config.retry_max_s,
                    self.config.retry_base_s * 2 ** (claimed.attempts - 1),
                )
                log.warning(
                    "event %d attempt %d failed, retry in %.0fs: %s",
                    claimed.id,
                    claimed.attempts,
                    delay,
                    error,
                )
                await self.store.retry_event(claimed.id, error, self.clock.now() + delay)
                metrics.EVENTS_PROCESSED.labels("retried").inc()
            return False
        log.debug(
            "event %d done kind=%s at=%s", claimed.id, event.kind, as_datetime(ctx.now).isoformat()
        )
        return True

    async def _park(self, claimed: ClaimedEvent, error: str) -> None:
        await self.store.park_event(claimed.id, error, self.clock.now())
        metrics.EVENTS_PROCESSED.labels("parked").inc()
