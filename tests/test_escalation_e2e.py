"""End to end on a real Synapse, through the App's own escalation engine: an alert
nobody takes pages the on-call person by a Matrix DM (the bot opens the DM room), the
person types ``ack N`` there, and the chain stops: the next step never pages. A room
target pings the whole room (@room, a highlight for everyone in it). The clock is a
manual one."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from bot.app import App, load_everything
from bot.clock import ManualClock
from tests.fake_discourse import FakeDiscourse
from tests.synapse_server import SynapseServer
from tests.synapse_server import synapse as synapse  # the session's Synapse (fixture)
from tests.test_alerts import until, write_alert_config
from tests.test_matrix_chat import Peer

DEADLINE = 20.0
RULES = """
[[rule]]
name = "forbidden-words"
when = { events = ["post_created"], text_matches = "forbidden" }
severity = "critical"
room = "staff"

[[schedule]]
name = "oncall"
timezone = "Europe/London"
  [[schedule.layer]]
  people = ["Vera"]

[[policy]]
name = "critical"
severities = ["critical"]
ack_timeout = "30m"
  [[policy.step]]
  targets = ["schedule:oncall"]
  delay = "5m"
  [[policy.step]]
  targets = ["person:Bob"]
  delay = "10m"
"""


def _body(event: dict[str, Any]) -> str:
    return str(event.get("content", {}).get("body", ""))


async def _dm_from(peer: Peer, bot_id: str, text: str) -> tuple[str, str]:
    """Join the bot's DM when invited; (room, body) of its first message containing ``text``."""
    deadline = time.monotonic() + DEADLINE
    while True:
        for room in list(peer.invites):
            await peer.client.join(room)
            peer.invites.discard(room)
        for room, e in peer.seen:
            if e.get("sender") == bot_id and text in _body(e):
                return room, _body(e)
        if time.monotonic() > deadline:
            raise AssertionError(f"{peer.user_id} never got a DM saying {text!r}")
        await peer._poll()


async def test_oncall_dm_arrives_and_ack_typed_there_stops_the_chain(
    synapse: SynapseServer,
    tmp_path: Path,
) -> None:
    synapse.start()  # no-op unless an earlier test left it stopped
    tag = uuid.uuid4().hex[:6]
    bot_id, bot_token = await synapse.register(f"vigil{tag}")
    peers = {}
    for name in ("alice", "bob", "vera"):
        user_id, token = await synapse.register(f"{name}{tag}")
        peers[name] = Peer(synapse.base_url, user_id, token)
    room = await peers["alice"].create_room(invite=[bot_id])
    for peer in peers.values():
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
    loaded, problems = load_everything(tmp_path / "bot.toml")
    assert loaded is not None, [str(p) for p in problems.items]
    clock = ManualClock(time.time())
    app = App(loaded.config, loaded.rules, clock=clock, watch_rules=False)
    try:
        await app.start()
        assert app.chat is not None and app.store is not None
        chat, store = app.chat, app.store
        await until(lambda: chat.started["matrix"], "the bot in the room")
        engine = app.escalation
        assert engine is not None
        body = forum.post_created_payload(
            post_id=701, raw="forbidden words", user_id=7, username="troll"
        )
        url = f"http://127.0.0.1:{app.port}/webhooks/discourse"
        assert await forum.send_webhook(url, "post", "post_created", body) == 200

        # The alert exists: the App wakes its engine, step 1 DMs Vera at once.
        dm_room, text = await _dm_from(peers["vera"], bot_id, 'Reply "ack 1" here')
        assert dm_room != room
        assert "Alert #1 (critical) has waited" in text and "on call in oncall" in text

        await peers["vera"].say(dm_room, "ack 1")

        async def acked() -> bool:
            snap = await store.alert_snapshot(1)
            return snap is not None and snap.status == "acked" and snap.acked_by == "Vera"

        await until(acked, "Vera's ack, typed in the DM, applied to alert #1")
        await clock.advance(5 * 60)  # step 2 (Bob) was due now
        await engine.settled()
        esc = await store.escalation(1)
        assert esc is not None and (esc["state"], esc["acked_by"]) == ("acked", "Vera")
        paged = [r for r in await store.outbox_rows() if (r["dedupe_key"] or "").startswith("esc:")]
        assert [r["op"] for r in paged] == ["dm"] and peers["vera"].user_id in paged[0]["payload"]
        await peers["bob"]._poll()
        assert peers["bob"].invites == set()  # Bob was never paged
    finally:
        await app.stop()
        await forum.stop()
        for peer in peers.values():
            await peer.client.close()


ROOM_RULES = """
[[rule]]
name = "forbidden-words"
when = { events = ["post_created"], text_matches = "forbidden" }
severity = "critical"
room = "staff"

[[policy]]
name = "critical"
severities = ["critical"]
  [[policy.step]]
  targets = ["room"]
  delay = "5m"
"""


async def test_room_target_pings_everyone_in_the_room(
    synapse: SynapseServer,
    tmp_path: Path,
) -> None:
    synapse.start()
    tag = uuid.uuid4().hex[:6]
    bot_id, bot_token = await synapse.register(f"vigil{tag}")
    alice_id, alice_token = await synapse.register(f"alice{tag}")
    vera_id, vera_token = await synapse.register(f"vera{tag}")
    alice = Peer(synapse.base_url, alice_id, alice_token)
    vera = Peer(synapse.base_url, vera_id, vera_token)
    forum = FakeDiscourse()
    app: App | None = None
    try:
        # @room notifies only from a sender with the room's notifications.room power
        # (50). Only the bot is listed: newer room versions refuse the creator there.
        created = await alice.client.room_create(
            invite=[bot_id, vera_id], power_level_override={"users": {bot_id: 50}}
        )
        room = getattr(created, "room_id", None)
        assert room, created
        await vera.client.join(room)
        for peer in (alice, vera):
            await peer.open()
        await forum.start()
        write_alert_config(
            tmp_path,
            forum.base_url,
            homeserver=synapse.base_url,
            bot_id=bot_id,
            room=room,
            staff=(("Alice", "moderator", alice_id), ("Vera", "volunteer", vera_id)),
            rules=ROOM_RULES,
            matrix_token=bot_token,
        )
        loaded, problems = load_everything(tmp_path / "bot.toml")
        assert loaded is not None, [str(p) for p in problems.items]
        app = App(loaded.config, loaded.rules, clock=ManualClock(time.time()), watch_rules=False)
        await app.start()
        assert app.chat is not None
        chat = app.chat
        await until(lambda: chat.started["matrix"], "the bot in the room")
        body = forum.post_created_payload(
            post_id=702, raw="forbidden words", user_id=7, username="troll"
        )
        url = f"http://127.0.0.1:{app.port}/webhooks/discourse"
        assert await forum.send_webhook(url, "post", "post_created", body) == 200

        def page() -> dict[str, Any] | None:
            return next((e for r, e in vera.seen if r == room and "has waited" in _body(e)), None)

        event = await vera.wait_until(page, "the @room page")
        content = event["content"]
        assert content["m.mentions"] == {"room": True}
        assert content["body"].startswith("@room ") and "!ack 1" in content["body"]
        # Vera's homeserver counts it as a highlight: her phone pings.
        await vera.wait_until(lambda: vera.highlights.get(room, 0) >= 1, "a highlight")
    finally:
        if app is not None:
            await app.stop()
        await forum.stop()
        for peer in (alice, vera):
            await peer.client.close()
