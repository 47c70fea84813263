"""Matrix and Discord at once: one alert in both rooms, an action in either shows its
outcome in both, and a page that cannot reach a person's first channel takes their
next one. Matrix is a real Synapse; Discord is the fake on loopback
(tests/discord_helpers.py) driven through the real discord.py."""

from __future__ import annotations

import contextlib
import itertools
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, load_everything
from bot.clock import ManualClock
from bot.escalation import AlertFacts, ChatNotifier, Page, Recipient
from bot.outbox import Outbox
from bot.store import Plan, Store
from tests.discord_helpers import FakeDiscord, Posted, eventually
from tests.discord_helpers import fake_discord as fake_discord  # fixture
from tests.fake_discourse import FakeDiscourse
from tests.synapse_server import SynapseServer
from tests.synapse_server import synapse as synapse  # the session's Synapse (fixture)
from tests.test_alerts import ChatServer, RecordingChat, png
from tests.test_discord_chat import ALICE, BOB, CHANNEL, VERA, write_discord_config
from tests.test_matrix_chat import Peer

RULES = textwrap.dedent(
    """
    [[rule]]
    name = "images"
    when = { events = ["post_created"], has_images = true }
    severity = "high"
    room = "staff"
    """
)
PAGING = textwrap.dedent(
    """
    [[policy]]
    name = "high"
    severities = ["high"]
      [[policy.step]]
      targets = ["person:Vera"]
      delay = "30m"
    """
)


def _body(event: dict[str, Any]) -> str:
    content = event.get("content", {})
    return str(content.get("m.new_content", content).get("body", ""))


@dataclass
class Both:
    root: Path
    forum: FakeDiscourse
    discord: FakeDiscord
    bot_id: str
    room: str
    alice: Peer
    vera: Peer
    app: App | None = None

    async def start(self) -> App:
        loaded, problems = load_everything(self.root / "bot.toml")
        assert loaded is not None, [str(p) for p in problems.items]
        self.app = App(loaded.config, loaded.rules, watch_rules=False)
        await self.app.start()
        chat = self.app.chat
        assert chat is not None
        await eventually(
            lambda: chat.started.get("matrix") and chat.started.get("discord"),
            "both chats started",
            deadline=20.0,
        )
        return self.app

    async def post_image(self, seed: int) -> None:
        assert self.app is not None
        upload = self.forum.add_upload(png(seed))
        body = self.forum.post_created_payload(
            post_id=900 + seed, raw=f"![p|64x64]({upload.short_url})", user_id=7, username="troll"
        )
        url = f"http://127.0.0.1:{self.app.port}/webhooks/discourse"
        assert await self.forum.send_webhook(url, "post", "post_created", body) == 200

    async def matrix_alert(self, number: int) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for room, e in self.alice.seen:
                if (
                    room == self.room
                    and e.get("sender") == self.bot_id
                    and "m.relates_to" not in e.get("content", {})
                    and f"alert #{number} " in _body(e)
                ):
                    return e
            return None

        return await self.alice.wait_until(find, f"alert #{number} in Matrix")

    async def matrix_edit(self, event_id: str, text: str) -> None:
        def find() -> bool:
            return any(
                e.get("content", {}).get("m.relates_to", {}).get("event_id") == event_id
                and text in _body(e)
                for _, e in self.alice.seen
            )

        await self.alice.wait_until(find, f"an edit saying {text!r}")

    async def vera_dm(self, text: str) -> str:
        """Vera joins the bot's DM room when invited; the first message with ``text``."""

        def find() -> str | None:
            for _, e in self.vera.seen:
                if e.get("sender") == self.bot_id and text in _body(e):
                    return _body(e)
            return None

        while True:
            found = await self.vera.wait_until(lambda: self.vera.invites or find(), "a DM")
            if isinstance(found, str):
                return found
            for room in list(self.vera.invites):
                await self.vera.client.join(room)
                self.vera.invites.discard(room)

    async def discord_alert(self) -> Posted:
        return await eventually(
            lambda: (self.discord.alerts(CHANNEL) or [None])[0], "the alert in Discord", 20.0
        )


@contextlib.asynccontextmanager
async def _both(
    synapse: SynapseServer, tmp_path: Path, discord: FakeDiscord, rules: str, notify: dict[str, str]
) -> AsyncIterator[Both]:
    synapse.start()  # no-op unless an earlier test left it stopped
    tag = uuid.uuid4().hex[:6]
    bot_id, bot_token = await synapse.register(f"vigil{tag}")
    alice_id, alice_token = await synapse.register(f"alice{tag}")
    vera_id, vera_token = await synapse.register(f"vera{tag}")
    alice = Peer(synapse.base_url, alice_id, alice_token)
    vera = Peer(synapse.base_url, vera_id, vera_token)
    room = await alice.create_room(invite=[bot_id])
    await alice.open()
    await vera.open()
    forum = FakeDiscourse()
    await forum.start()
    write_discord_config(
        tmp_path,
        forum.base_url,
        rules=rules,
        matrix=(synapse.base_url, bot_id, room, bot_token),
        matrix_ids={"Alice": alice_id, "Vera": vera_id},
        notify=notify,
    )
    world = Both(tmp_path, forum, discord, bot_id, room, alice, vera)
    try:
        await world.start()
        yield world
    finally:
        if world.app is not None:
            await world.app.stop()
        await forum.stop()
        await alice.client.close()
        await vera.client.close()


@pytest.fixture
async def both(
    synapse: SynapseServer,
    tmp_path: Path,
    fake_discord: FakeDiscord,
) -> AsyncIterator[Both]:
    async with _both(synapse, tmp_path, fake_discord, RULES, {}) as world:
        yield world


async def test_an_action_in_either_chat_shows_its_outcome_in_both(both: Both) -> None:
    await both.post_image(1)
    in_matrix = await both.matrix_alert(1)
    in_discord = await both.discord_alert()
    assert "alert #1 " in in_discord.text and len(in_discord.custom_ids) == 5

    # Bob, on Discord, says he is on it: the Matrix message says so too.
    await both.discord.click(in_discord, "vigil:1:ack", BOB, "bob")
    await both.matrix_edit(in_matrix["event_id"], "👀 Bob is on it")

    # Alice, on Matrix, takes it down: the Discord embed shows it, buttons follow.
    await both.alice.react(both.room, in_matrix["event_id"], "✅")
    await eventually(lambda: "Taken down by Alice" in in_discord.text, "the Discord edit", 20.0)
    assert in_discord.custom_ids == ["vigil:1:restore"]
    assert len([c for c in both.forum.calls if c.path == "/post_actions.json"]) == 1


async def test_a_page_that_cannot_reach_discord_goes_by_matrix(
    synapse: SynapseServer,
    tmp_path: Path,
    fake_discord: FakeDiscord,
) -> None:
    fake_discord.closed_dms.add(VERA)  # Vera's privacy settings refuse DMs from the bot
    notify = {"Vera": '["discord_dm", "matrix_dm"]'}
    async with _both(synapse, tmp_path, fake_discord, RULES + PAGING, notify) as world:
        await world.post_image(2)

        text = await world.vera_dm("You are paged")
        assert "Alert #1 (high)" in text and "named in the policy" in text
        assert world.app is not None and world.app.store is not None
        rows = await world.app.store.outbox_rows("discord")
        [tried] = [r for r in rows if r["op"] == "dm"]
        assert "50007" in (tried["last_error"] or "")  # the first channel was tried first
        assert fake_discord.dms_to(VERA) == []


async def test_pages_for_a_chat_that_cannot_start_go_by_the_next_channel(tmp_path: Path) -> None:
    write_discord_config(
        tmp_path,
        "https://forum.example.org",
        matrix=("http://127.0.0.1:9", "@vigil:vigil.test", "!staff:vigil.test", "t"),
        matrix_ids={"Vera": "@vera:vigil.test"},
        notify={"Vera": '["discord_dm", "matrix_dm"]'},
    )
    loaded, problems = load_everything(tmp_path / "bot.toml")
    assert loaded is not None, [str(p) for p in problems.items]
    config = loaded.config
    vera = config.person("Vera")
    assert vera is not None
    alert = AlertFacts(1, "forum", "high", "images: post 1", "staff", "open", 1_767_225_600.0)
    page = Page(
        alert,
        "high",
        0,
        1,
        0,
        (Recipient(vera, "discord_dm", "named in the policy"),),
        (),
        1_767_225_900.0,
        "esc:1:tok:0",
    )
    items = ChatNotifier(config).page(page)
    assert [(i.chat, i.op) for i in items] == [("discord", "dm")]

    store = await Store.open(tmp_path / "vigil.db")
    try:
        await store.apply_plan(Plan(outbox=tuple(items)), 0.0)
        outbox = Outbox(store, ManualClock(1_767_225_900.0), {}, idle_poll_s=0.05)
        server = ChatServer()
        matrix = RecordingChat(server)
        await outbox.start_chat("matrix", matrix)  # Discord never comes up

        await outbox.fail_over("discord")
        await outbox.fail_over("discord")  # the start loop retries: still one page

        await eventually(lambda: server.dms, "the page by Matrix DM")
        [(user, message)] = server.dms
        assert user == "@vera:vigil.test" and "You are paged as named in the policy" in message.text
        kinds = [(r["chat"], r["op"]) for r in await store.outbox_rows()]
        assert sorted(kinds) == [("discord", "dm"), ("matrix", "dm")]
        await outbox.stop()
    finally:
        await store.close()


def test_a_page_carries_each_persons_later_channels_in_order(tmp_path: Path) -> None:
    write_discord_config(
        tmp_path,
        "https://forum.example.org",
        matrix=("http://127.0.0.1:9", "@vigil:vigil.test", "!staff:vigil.test", "t"),
        matrix_ids={"Alice": "@alice:vigil.test"},
        notify={"Alice": '["discord_channel", "matrix_dm", "discord_dm"]'},
    )
    loaded, _ = load_everything(tmp_path / "bot.toml")
    assert loaded is not None
    alice = loaded.config.person("Alice")
    assert alice is not None
    alert = AlertFacts(
        4, "forum", "high", "s", "staff", "open", 0.0, messages=(("discord", str(CHANNEL), "77"),)
    )
    page = Page(
        alert, "p", 0, 1, 0, (Recipient(alice, "discord_channel", "on call"),), (), 60.0, "k"
    )
    [item] = ChatNotifier(loaded.config).page(page)
    assert (item.chat, item.op, item.payload["mentions"]) == ("discord", "send", [str(ALICE)])
    chain = []
    payload = item.payload
    for _ in itertools.count():
        later = payload.get("fallback") or []
        if not later:
            break
        chain.append((later[0]["chat"], later[0]["op"]))
        payload = later[0]["payload"]
    assert chain == [("matrix", "dm"), ("discord", "dm")]
    # A DM on Discord links to the alert's message there.
    dm = item.payload["fallback"][0]["payload"]["fallback"][0]["payload"]["text"]
    assert f"https://discord.com/channels/{loaded.config.discord.guild_id}/{CHANNEL}/77" in dm  # type: ignore[union-attr]
