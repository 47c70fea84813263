"""The signals stage remembers account ages, and its cache never keeps a stale "unknown"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from bot.model import Author, Event, EventKind, Post
from bot.pipeline import EventContext
from bot.raids import SignalsStage
from bot.rules import RuleSet
from bot.store import Store

CREATED = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)


def post_event(n: int) -> Event:
    author = Author(id="42", username="newbie")
    return Event("forum", f"p{n}", EventKind.POST_CREATED, post=Post(id=str(n), author=author))


async def test_account_age_learned_after_a_post_reaches_the_next_post(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "v.db")
    stage = SignalsStage(store, lambda: RuleSet())
    first = EventContext(1, post_event(1), 1, CREATED.timestamp())
    await stage.run(first)
    assert first.event.post is not None and first.event.post.author.created_at is None

    joined = Event(
        "forum",
        "u1",
        EventKind.USER_CREATED,
        user=Author(id="42", username="newbie", created_at=CREATED),
    )
    await stage.run(EventContext(2, joined, 1, CREATED.timestamp()))

    second = EventContext(3, post_event(2), 1, CREATED.timestamp())
    await stage.run(second)
    assert second.event.post is not None and second.event.post.author.created_at == CREATED
    # A fresh stage (a restart) reads it from the store.
    again = EventContext(4, post_event(3), 1, CREATED.timestamp())
    await SignalsStage(store, lambda: RuleSet()).run(again)
    assert again.event.post is not None and again.event.post.author.created_at == CREATED
    await store.close()
