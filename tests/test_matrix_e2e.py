"""End to end on a real Synapse and the simulated Discourse: a signed webhook in, an
alert in the staff room as each person's own Matrix client sees it, reactions from
those clients, admin API calls out, the alert edited with the outcome."""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, load_everything
from tests.fake_discourse import FakeDiscourse
from tests.synapse_server import SynapseServer
from tests.synapse_server import synapse as synapse
from tests.test_alerts import LEAKED_EMAIL, LEAKED_IP, png, until, write_alert_config
from tests.test_matrix_chat import Peer

DEADLINE = 20.0
KNOWN = png(11)  # a generated picture on the "known" list of this test
RULES = textwrap.dedent(
    """
    [[list]]
    name = "known"
    file = "lists/known.txt"
    format = "plain"
    kinds = ["sha1", "md5", "pdq"]
    severity = "critical"
    category = "test-abuse"

    [[rule]]
    name = "known-image"
    when = { events = ["post_created"], lists = ["known"] }
    severity = "critical"
    actions = ["hide"]
    room = "staff"

    [[rule]]
    name = "images"
    when = { events = ["post_created"], has_images = true }
    severity = "high"
    room = "staff"

    [[rule]]
    name = "forbidden-words"
    when = { events = ["post_created"], text_matches = "forbidden" }
    severity = "critical"
    actions = ["hide"]
    room = "staff"
    """
)
KNOWN_LIST = f"sha1 {hashlib.sha1(KNOWN).hexdigest()}\n"


def _body(event: dict[str, Any]) -> str:
    content = event.get("content", {})
    return str(content.get("m.new_content", content).get("body", ""))


@dataclass
class E2E:
    synapse: SynapseServer
    root: Path
    forum: FakeDiscourse
    bot_id: str
    room: str
    alice: Peer  # moderator
    bob: Peer  # moderator
    vera: Peer  # volunteer
    mallory: Peer  # in the room, not on the roster
    app: App | None = None
    post_ids: int = 700

    @property
    def url(self) -> str:
        assert self.app is not None
        return f"http://127.0.0.1:{self.app.port}/webhooks/discourse"

    async def start_app(self) -> App:
        loaded, problems = load_everything(self.root / "bot.toml")
        assert loaded is not None, [str(p) for p in problems.items]
        self.app = App(loaded.config, loaded.rules, watch_rules=False)
        await self.app.start()
        assert self.app.chat is not None
        await until(lambda: self.app.chat.started["matrix"], "the bot in the room")  # type: ignore[union-attr]
        return self.app

    async def stop_app(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    async def post(self, raw: str, **kw: Any) -> int:
        self.post_ids += 1
        kw.setdefault("user_id", 7)
        kw.setdefault("username", "troll")
        body = self.forum.post_created_payload(post_id=self.post_ids, raw=raw, **kw)
        assert await self.forum.send_webhook(self.url, "post", "post_created", body) == 200
        return self.post_ids

    async def post_image(self, data: bytes, **kw: Any) -> int:
        upload = self.forum.add_upload(data)
        return await self.post(f"look ![pic|64x64]({upload.short_url})", **kw)

    async def alert_seen_by(self, peer: Peer, number: int) -> dict[str, Any]:
        """Alert #number as ``peer``'s client sees it, once the bot's five buttons are on it."""

        def find() -> dict[str, Any] | None:
            for room, e in peer.seen:
                if (
                    room == self.room
                    and e.get("sender") == self.bot_id
                    and e.get("type") == "m.room.message"
                    and "m.relates_to" not in e.get("content", {})
                    and f"alert #{number} " in _body(e)
                ):
                    return e
            return None

        alert = await peer.wait_until(find, f"alert #{number}")
        await peer.wait_until(lambda: len(self.buttons(peer, alert["event_id"])) == 5, "buttons")
        return alert

    def buttons(self, peer: Peer, event_id: str) -> list[str]:
        return [
            e["content"]["m.relates_to"]["key"]
            for room, e in peer.seen
            if room == self.room
            and e.get("type") == "m.reaction"
            and e.get("sender") == self.bot_id
            and e["content"].get("m.relates_to", {}).get("event_id") == event_id
        ]

    async def edit_seen_by(self, peer: Peer, event_id: str, text: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for room, e in peer.seen:
                rel = e.get("content", {}).get("m.relates_to", {})
                if (
                    room == self.room
                    and rel.get("rel_type") == "m.replace"
                    and rel.get("event_id") == event_id
                    and text in _body(e)
                ):
                    return e
            return None

        return await peer.wait_until(find, f"an edit saying {text!r}")

    async def dm_seen_by(self, peer: Peer, text: str) -> str:
        """Join the bot's DM room when invited; wait for a message containing ``text``."""
        deadline = time.monotonic() + DEADLINE
        while True:
            for room in list(peer.invites):
                await peer.client.join(room)
                peer.invites.discard(room)
            for _, e in peer.seen:
                if e.get("sender") == self.bot_id and text in _body(e):
                    return _body(e)
            if time.monotonic() > deadline:
                raise AssertionError(f"{peer.user_id} never got a DM saying {text!r}")
            await peer._poll()

    def hides(self) -> list[Any]:
        return [c for c in self.forum.calls if c.path == "/post_actions.json"]


@pytest.fixture
async def e2e(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[E2E]:
    synapse.start()  # no-op unless an earlier test left it stopped
    tag = uuid.uuid4().hex[:6]
    bot_id, bot_token = await synapse.register(f"vigil{tag}")
    peers = {}
    for name in ("alice", "bob", "vera", "mallory"):
        user_id, token = await synapse.register(f"{name}{tag}")
        peers[name] = Peer(synapse.base_url, user_id, token)
    room = await peers["alice"].create_room(
        invite=[bot_id, *(p.user_id for n, p in peers.items() if n != "alice")]
    )
    for name, peer in peers.items():
        if name != "alice":
            await peer.client.join(room)
        await peer.open()
    forum = FakeDiscourse()
    await forum.start()
    write_alert_config(
        tmp_path,
        forum.base_url,
        homeserver=synapse.base_url,
        bot_id=bot_id,
        room=room,
        staff=(
            ("Alice", "moderator", peers["alice"].user_id),
            ("Bob", "moderator", peers["bob"].user_id),
            ("Vera", "volunteer", peers["vera"].user_id),
        ),
        rules=RULES,
        matrix_token=bot_token,
    )
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "known.txt").write_text(KNOWN_LIST)
    world = E2E(synapse, tmp_path, forum, bot_id, room, **peers)
    try:
        await world.start_app()
        yield world
    finally:
        await world.stop_app()
        await forum.stop()
        for peer in peers.values():
            await peer.client.close()


async def test_known_image_is_hidden_at_once_and_confirmed_with_a_reaction(e2e: E2E) -> None:
    post_id = await e2e.post_image(KNOWN, topic_title=f"write to {LEAKED_EMAIL} or {LEAKED_IP}")
    alert = await e2e.alert_seen_by(e2e.alice, 1)
    assert e2e.buttons(e2e.alice, alert["event_id"]) == ["✅", "🔨", "👀", "❎", "↩️"]
    [hide] = e2e.hides()
    assert hide.json == {"id": post_id, "post_action_type_id": 4, "take_action": True}
    body = _body(alert) + alert["content"].get("formatted_body", "")
    assert "Matched: list known (sha1, exact, category test-abuse)" in body
    assert f"Done automatically: hide post {post_id} ✓" in body
    for leak in (LEAKED_EMAIL, LEAKED_IP, hashlib.sha1(KNOWN).hexdigest(), "/uploads/", "<img"):
        assert leak not in body, leak

    await e2e.alice.react(e2e.room, alert["event_id"], "✅")

    await e2e.edit_seen_by(e2e.alice, alert["event_id"], "✅ Taken down by Alice at ")
    assert len(e2e.hides()) == 1  # already hidden by the rule: the reaction confirms it
    assert e2e.app is not None and e2e.app.store is not None
    banked = await e2e.app.store.bank_entries()
    assert ("sha1", hashlib.sha1(KNOWN).hexdigest()) in banked


async def test_only_staff_with_the_role_act_and_only_once(e2e: E2E) -> None:
    post_id = await e2e.post_image(png(12))
    alert = await e2e.alert_seen_by(e2e.alice, 1)
    event_id = alert["event_id"]

    await e2e.mallory.react(e2e.room, event_id, "✅")
    told = await e2e.dm_seen_by(e2e.mallory, "not on Vigil's staff roster")
    assert "nothing was done" in told
    await e2e.vera.react(e2e.room, event_id, "🔨")
    told = await e2e.dm_seen_by(e2e.vera, "needs the moderator role")
    assert e2e.forum.calls == []

    await asyncio.gather(
        e2e.alice.react(e2e.room, event_id, "✅"), e2e.bob.react(e2e.room, event_id, "✅")
    )
    await e2e.edit_seen_by(e2e.alice, event_id, "Taken down by")
    assert len(e2e.hides()) == 1 and e2e.forum.posts[post_id].hidden

    # Redacting a reaction undoes nothing; a later reaction is told it is handled.
    mine = next(
        e["event_id"]
        for room, e in e2e.alice.seen
        if e.get("type") == "m.reaction" and e.get("sender") == e2e.alice.user_id
    )
    await e2e.alice.client.room_redact(e2e.room, mine)
    await e2e.bob.react(e2e.room, event_id, "❎")
    await e2e.dm_seen_by(e2e.bob, "already handled")
    assert e2e.forum.posts[post_id].hidden and not e2e.forum.calls_to("PUT", "/posts/")
    assert len(e2e.hides()) == 1


async def test_synapse_restart_mid_flow_loses_no_alert(e2e: E2E) -> None:
    assert e2e.app is not None and e2e.app.store is not None
    store = e2e.app.store
    await asyncio.to_thread(e2e.synapse.stop)
    try:
        await e2e.post("this is forbidden")
        await until(lambda: e2e.hides(), "the hide (the forum is up)")

        async def failed_once() -> bool:
            return any(r["last_error"] for r in await store.outbox_rows())

        await until(failed_once, "a failed delivery while Synapse is down")
    finally:
        await asyncio.to_thread(e2e.synapse.start)
    alert = await e2e.alert_seen_by(e2e.alice, 1)
    assert "hide post" in _body(alert)


async def test_bot_restart_mid_flow_neither_repeats_nor_drops(e2e: E2E) -> None:
    await e2e.post("forbidden words")
    alert = await e2e.alert_seen_by(e2e.alice, 1)
    await e2e.stop_app()

    await e2e.alice.react(e2e.room, alert["event_id"], "✅")  # while the bot is away
    await e2e.start_app()

    await e2e.edit_seen_by(e2e.alice, alert["event_id"], "Taken down by Alice")
    await e2e.post_image(png(13), user_id=8, username="other")
    await e2e.alert_seen_by(e2e.alice, 2)
    posts = [
        e
        for room, e in e2e.alice.seen
        if e.get("sender") == e2e.bot_id
        and e.get("type") == "m.room.message"
        and "m.relates_to" not in e.get("content", {})
        and "alert #" in _body(e)
    ]
    assert len(posts) == 2
    assert len(e2e.hides()) == 1
