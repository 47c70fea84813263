"""The pipeline over a real SQLite inbox: retries, parking, lapsed leases, draining."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.config import PipelineConfig
from bot.model import Author, Event, EventKind, Post
from bot.pipeline import EventContext, Pipeline
from bot.store import InboxRow, Store


def event(n: int) -> InboxRow:
    ev = Event(
        source="forum",
        delivery_id=str(n),
        kind=EventKind.POST_CREATED,
        post=Post(id=str(n), author=Author(id="1", username="u")),
    )
    return InboxRow("forum", str(n), ev.kind.value, json.dumps(ev.to_dict()))


class FlakyStage:
    """A stage that fails its first ``failures`` runs of each event."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs: dict[int, int] = {}

    async def run(self, ctx: EventContext) -> None:
        self.runs[ctx.id] = self.runs.get(ctx.id, 0) + 1
        if self.runs[ctx.id] <= self.failures:
            raise RuntimeError("forum API unreachable")


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "v.db")
    yield s
    await s.close()


CONFIG = PipelineConfig(workers=1, max_attempts=3, retry_base_s=10, retry_max_s=100, lease_s=60)


async def test_failing_stage_is_retried_with_backoff_then_done(store: Store) -> None:
    clock = ManualClock()
    stage = FlakyStage(failures=2)
    pipeline = Pipeline(store, [stage], CONFIG, clock)
    await store.insert_events([event(1)], clock.now())
    assert await pipeline.run_once()  # attempt 1 fails
    assert not await pipeline.run_once()  # not due yet
    await clock.advance(10)
    assert await pipeline.run_once()  # attempt 2 fails, next in 20 s
    await clock.advance(19)
    assert not await pipeline.run_once()
    await clock.advance(1)
    assert await pipeline.run_once()  # attempt 3 succeeds
    row = await store.event_row(1)
    assert row is not None and row["state"] == "done" and row["attempts"] == 3


async def test_event_is_parked_after_max_attempts_and_a_problem_is_raised(store: Store) -> None:
    clock = ManualClock()
    pipeline = Pipeline(store, [FlakyStage(failures=99)], CONFIG, clock)
    await store.insert_events([event(1)], clock.now())
    for _ in range(3):
        assert await pipeline.run_once()
        await clock.advance(1000)
    assert not await pipeline.run_once()
    row = await store.event_row(1)
    assert row is not None and row["state"] == "parked"
    assert "stage flaky failed: RuntimeError: forum API unreachable" in row["last_error"]
    problems = await store.open_problems()
    assert [p["kind"] for p in problems] == ["event_parked"]


async def test_event_of_a_dead_worker_is_picked_up_after_its_lease(store: Store) -> None:
    clock = ManualClock()
    await store.insert_events([event(1)], clock.now())
    # A worker claims it and dies without finishing.
    assert await store.claim_event(clock.now(), CONFIG.lease_s) is not None
    stage = FlakyStage(failures=0)
    pipeline = Pipeline(store, [stage], CONFIG, clock)
    assert not await pipeline.run_once()  # still leased
    await clock.advance(61)
    assert await pipeline.run_once()
    assert (await store.event_row(1))["state"] == "done"


async def test_stop_drains_the_event_in_hand(store: Store) -> None:
    clock = ManualClock()
    started = asyncio.Event()
    release = asyncio.Event()

    class SlowStage:
        name = "slow"

        async def run(self, ctx: EventContext) -> None:
            started.set()
            await release.wait()

    pipeline = Pipeline(store, [SlowStage()], CONFIG, clock)
    await store.insert_events([event(1)], clock.now())
    pipeline.start()
    await started.wait()
    stopping = asyncio.create_task(pipeline.stop())
    await asyncio.sleep(0)
    assert not stopping.done()  # it waits for the event in hand
    release.set()
    await stopping
    assert (await store.event_row(1))["state"] == "done"


async def test_unreadable_stored_event_is_parked_not_retried(store: Store) -> None:
    clock = ManualClock()
    await store.insert_events(
        [InboxRow("forum", "x", "post_created", '{"nonsense": 1}')], clock.now()
    )
    pipeline = Pipeline(store, [FlakyStage(0)], CONFIG, clock)
    assert await pipeline.run_once()
    row = await store.event_row(1)
    assert row["state"] == "parked" and "unreadable" in row["last_error"]


async def test_audit_log_is_append_only(store: Store) -> None:
    import sqlite3

    await store.append_audit(
        actor="rule:x", action="hide", target="post 1", reason="r", outcome="ok", now=1.0
    )
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await store.db.execute("UPDATE audit SET actor = 'someone else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await store.db.execute("DELETE FROM audit")


async def test_migrations_apply_once(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "m.db")
    v = await s.schema_version()
    await s.close()
    s = await Store.open(tmp_path / "m.db")
    assert await s.schema_version() == v >= 1
    await s.close()
