"""The Matrix adapter against a real Synapse: a bot and a moderator with their own client."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, RoomCreateResponse, RoomSendResponse, SyncResponse

from adapters.matrix_chat import ChatSendError, MatrixChat
from bot.ports import ChatCommand, ChatMessage, ChatReaction
from bot.store import Store

# The lead's tests/conftest.py should import this instead; then drop this line.
from tests.synapse_server import SynapseServer, start_synapse
from tests.synapse_server import synapse as synapse

DEADLINE = 20.0  # seconds to wait for something that should happen at once


def _localpart(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


class Peer:
    """A person with their own nio client: sends, reacts, and watches what arrives."""

    def __init__(self, base_url: str, user_id: str, token: str) -> None:
        self.user_id = user_id
        self.client = AsyncClient(base_url, user_id)
        self.client.access_token = token
        self.client.user_id = user_id
        self.since: str | None = None
        self.seen: list[tuple[str, dict[str, Any]]] = []  # (room id, raw event)
        self.invites: set[str] = set()
        self.highlights: dict[str, int] = {}

    async def open(self) -> None:
        response = await self.client.sync(
            timeout=0, sync_filter={"room": {"timeline": {"limit": 0}}}
        )
        assert isinstance(response, SyncResponse), response
        self.since = response.next_batch

    async def _poll(self) -> None:
        response = await self.client.sync(timeout=500, since=self.since)
        if not isinstance(response, SyncResponse):
            return  # the homeserver is restarting; the caller's deadline decides
        self.since = response.next_batch
        self.invites.update(response.rooms.invite)
        for room_id, info in response.rooms.join.items():
            self.seen.extend((room_id, event.source) for event in info.timeline.events)
            counts = info.unread_notifications
            if counts is not None and counts.highlight_count is not None:
                self.highlights[room_id] = counts.highlight_count

    async def wait_until(self, condition: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + DEADLINE
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user_id} never saw {what}")
            try:
                await self._poll()
            except Exception:  # connection refused while Synapse restarts
                await asyncio.sleep(0.1)  # poll interval while the server is away

    async def wait_for_event(
        self, room_id: str, predicate: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for r, e in self.seen if r == room_id and predicate(e)), None)

        return await self.wait_until(find, f"a matching event in {room_id}")

    async def create_room(self, invite: list[str]) -> str:
        response = await self.client.room_create(invite=invite)
        assert isinstance(response, RoomCreateResponse), response
        return response.room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.client.room_invite(room_id, user_id)

    async def say(self, room_id: str, text: str) -> str:
        content = {"msgtype": "m.text", "body": text}
        response = await self.client.room_send(room_id, "m.room.message", content)
        assert isinstance(response, RoomSendResponse), response
        return response.event_id

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        response = await self.client.room_send(room_id, "m.reaction", content)
        assert isinstance(response, RoomSendResponse), response
        return response.event_id


@dataclass
class Inbox:
    """What a bot's handlers received, in order."""

    reactions: asyncio.Queue[ChatReaction] = field(default_factory=asyncio.Queue)
    commands: asyncio.Queue[ChatCommand] = field(default_factory=asyncio.Queue)
    fail_commands: int = 0  # raise on this many commands before accepting

    async def on_reaction(self, reaction: ChatReaction) -> None:
        await self.reactions.put(reaction)

    async def on_command(self, command: ChatCommand) -> None:
        await self.commands.put(command)
        if self.fail_commands > 0:
            self.fail_commands -= 1
            raise RuntimeError("handler failed on purpose")

    async def next_reaction(self) -> ChatReaction:
        return await asyncio.wait_for(self.reactions.get(), DEADLINE)

    async def next_command(self) -> ChatCommand:
        return await asyncio.wait_for(self.commands.get(), DEADLINE)


@dataclass
class World:
    """A bot account, a moderator in a room with it, and a way to (re)start the bot."""

    synapse: SynapseServer
    store: Store
    bot_id: str
    bot_token: str
    moderator: Peer
    room: str
    bots: list[MatrixChat] = field(default_factory=list)

    async def start_bot(
        self, inbox: Inbox | None = None, **options: Any
    ) -> tuple[MatrixChat, Inbox]:
        inbox = inbox or Inbox()
        options.setdefault("rooms", [self.room])
        options.setdefault("access_token", self.bot_token)
        options.setdefault("state", self.store)
        chat = MatrixChat(
            self.synapse.base_url,
            self.bot_id,
            sync_timeout_ms=1_000,
            backoff_initial=0.05,
            backoff_max=0.5,
            **options,
        )
        await chat.start(inbox.on_reaction, inbox.on_command)
        self.bots.append(chat)
        return chat, inbox


@pytest.fixture
async def world(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[World]:
    synapse.start()  # no-op unless an earlier test left it stopped
    bot_id, bot_token = await synapse.register(_localpart("bot"))
    mod_id, mod_token = await synapse.register(_localpart("mod"))
    moderator = Peer(synapse.base_url, mod_id, mod_token)
    await moderator.open()
    room = await moderator.create_room(invite=[bot_id])
    store = await Store.open(tmp_path / "vigil.db")
    world = World(synapse, store, bot_id, bot_token, moderator, room)
    try:
        yield world
    finally:
        for chat in world.bots:
            await chat.stop()
        await moderator.client.close()
        await store.close()


def _no_more(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def test_sent_message_reaches_moderator_with_mention_that_pings(world: World) -> None:
    bot, _ = await world.start_bot()
    mod = world.moderator.user_id
    message = ChatMessage(
        "Match on list csam-a", html="<b>Match</b> on list csam-a", mentions=(mod,)
    )

    event_id = await bot.send(world.room, message)

    event = await world.moderator.wait_for_event(world.room, lambda e: e["event_id"] == event_id)
    content = event["content"]
    assert content["m.mentions"] == {"user_ids": [mod]}
    assert mod in content["body"] and "Match on list csam-a" in content["body"]
    assert content["format"] == "org.matrix.custom.html"
    assert f"https://matrix.to/#/{mod}" in content["formatted_body"]
    assert "<b>Match</b>" in content["formatted_body"]
    # The homeserver's push rules count it as a highlight: that is what makes a phone ping.
    await world.moderator.wait_until(
        lambda: world.moderator.highlights.get(world.room, 0) >= 1, "a highlight"
    )


async def test_message_without_mentions_pings_nobody(world: World) -> None:
    bot, _ = await world.start_bot()
    event_id = await bot.send(world.room, ChatMessage("status: all quiet"))
    event = await world.moderator.wait_for_event(world.room, lambda e: e["event_id"] == event_id)
    assert event["content"]["m.mentions"] == {}
    assert "formatted_body" not in event["content"]


async def test_moderator_reaction_reaches_handler_and_bot_seed_does_not(world: World) -> None:
    bot, inbox = await world.start_bot()
    alert = await bot.send(world.room, ChatMessage("alert 1"))
    seed = await bot.react(world.room, alert, "✅")
    seen = await world.moderator.wait_for_event(world.room, lambda e: e["event_id"] == seed)
    assert seen["content"]["m.relates_to"] == {
        "rel_type": "m.annotation",
        "event_id": alert,
        "key": "✅",
    }

    reaction_id = await world.moderator.react(world.room, alert, "✅")

    reaction = await inbox.next_reaction()
    assert reaction == ChatReaction(
        "matrix", world.room, alert, "✅", world.moderator.user_id, reaction_id
    )
    assert _no_more(inbox.reactions) == []


async def test_bang_command_reaches_handler_and_chatter_does_not(world: World) -> None:
    _, inbox = await world.start_bot()
    await world.moderator.say(world.room, "ack, looking at it")
    event_id = await world.moderator.say(world.room, "!Status  all")

    command = await inbox.next_command()
    assert command.event_id == event_id
    assert command.sender == world.moderator.user_id
    assert command.room == world.room
    assert command.text == "!Status  all"
    assert command.args == ("status", "all")
    assert command.is_direct is False


async def test_edit_replaces_the_message_for_the_moderator(world: World) -> None:
    bot, _ = await world.start_bot()
    alert = await bot.send(world.room, ChatMessage("alert 7", html="<p>alert 7</p>"))

    await bot.edit(
        world.room, alert, ChatMessage("alert 7: taken down by Alice", html="<p>taken down</p>")
    )

    edit = await world.moderator.wait_for_event(
        world.room, lambda e: e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"
    )
    content = edit["content"]
    assert content["m.relates_to"]["event_id"] == alert
    assert content["m.new_content"]["body"] == "alert 7: taken down by Alice"
    assert content["m.new_content"]["formatted_body"] == "<p>taken down</p>"
    assert content["body"] == "* alert 7: taken down by Alice"
    assert content["m.mentions"] == {}


async def test_direct_message_room_is_created_once_and_reused_after_restart(world: World) -> None:
    bot, _ = await world.start_bot()
    mod = world.moderator
    first = await bot.direct_message(mod.user_id, ChatMessage("you were asked to confirm"))
    dm_room = await world.store.get_state(f"matrix.dm.{mod.user_id}")
    assert dm_room is not None
    await mod.wait_until(lambda: dm_room in mod.invites, "the DM invite")
    await mod.client.join(dm_room)
    await mod.wait_for_event(dm_room, lambda e: e["event_id"] == first)

    second = await bot.direct_message(mod.user_id, ChatMessage("second"))
    await bot.stop()
    bot2, inbox2 = await world.start_bot()
    third = await bot2.direct_message(mod.user_id, ChatMessage("third, after a restart"))

    for event_id in (second, third):
        await mod.wait_for_event(dm_room, lambda e, event_id=event_id: e["event_id"] == event_id)
    assert await world.store.get_state(f"matrix.dm.{mod.user_id}") == dm_room

    # Plain text in the DM is a command, also for the restarted bot.
    ack = await mod.say(dm_room, "ack 12")
    command = await inbox2.next_command()
    assert (command.event_id, command.room, command.is_direct) == (ack, dm_room, True)
    assert command.args == ("ack", "12")


async def test_restarted_bot_does_not_replay_handled_reaction(world: World) -> None:
    bot, inbox = await world.start_bot()
    alert = await bot.send(world.room, ChatMessage("alert 2"))
    old = await world.moderator.react(world.room, alert, "👀")
    assert (await inbox.next_reaction()).event_id == old
    await bot.stop()

    _, inbox2 = await world.start_bot()
    new = await world.moderator.react(world.room, alert, "✅")

    assert (await inbox2.next_reaction()).event_id == new  # the old one would come first
    assert _no_more(inbox2.reactions) == []


async def test_first_start_ignores_history_from_before(world: World, tmp_path: Path) -> None:
    bot, _ = await world.start_bot()  # joins the room
    await bot.stop()
    await world.moderator.say(world.room, "!takedown 1")
    fresh = await Store.open(tmp_path / "fresh.db")  # the state of a bot that never ran
    try:
        bot2, inbox = await world.start_bot(state=fresh)
        new = await world.moderator.say(world.room, "!status")
        assert (await inbox.next_command()).event_id == new
    finally:
        await bot2.stop()
        await fresh.close()


async def test_events_missed_while_stopped_are_delivered_in_order(world: World) -> None:
    bot, _ = await world.start_bot(timeline_limit=2)
    await bot.stop()
    sent = [await world.moderator.say(world.room, f"!ack {n}") for n in range(7)]

    _, inbox = await world.start_bot(timeline_limit=2)

    received = [(await inbox.next_command()).event_id for _ in sent]
    assert received == sent


async def test_failing_handler_gets_the_command_again(world: World) -> None:
    _, inbox = await world.start_bot(inbox=Inbox(fail_commands=1))
    event_id = await world.moderator.say(world.room, "!ack 3")

    first, second = await inbox.next_command(), await inbox.next_command()

    assert first.event_id == second.event_id == event_id


async def test_invite_to_configured_room_is_accepted_later(world: World) -> None:
    later = await world.moderator.create_room(invite=[])
    bot, inbox = await world.start_bot(rooms=[world.room, later])
    assert bot.missing_rooms == (later,)

    await world.moderator.invite(later, world.bot_id)
    await world.moderator.wait_until(lambda: not bot.missing_rooms, "the bot joining")
    event_id = await world.moderator.say(later, "!help")

    command = await inbox.next_command()
    assert (command.room, command.event_id) == (later, event_id)


async def test_password_login_reuses_its_device(world: World, synapse: SynapseServer) -> None:
    localpart = _localpart("pw")
    user_id, _ = await synapse.register(localpart)
    world.bot_id = user_id
    options = {"access_token": None, "password": synapse.passwords[user_id], "rooms": []}
    bot, _ = await world.start_bot(**options)
    device = await world.store.get_state("matrix.device_id")
    await bot.stop()
    await world.start_bot(**options)
    assert device and await world.store.get_state("matrix.device_id") == device


async def test_bad_access_token_fails_start_loudly(world: World) -> None:
    with pytest.raises(ChatSendError, match="M_UNKNOWN_TOKEN"):
        await world.start_bot(access_token="syt_not_a_token")


async def test_send_while_homeserver_down_raises_then_works_again(
    world: World, synapse: SynapseServer
) -> None:
    bot, _ = await world.start_bot()
    synapse.stop()
    try:
        with pytest.raises(ChatSendError, match="unreachable"):
            await bot.send(world.room, ChatMessage("lost?"))
    finally:
        synapse.start()
    event_id = await bot.send(world.room, ChatMessage("back"))
    await world.moderator.wait_for_event(world.room, lambda e: e["event_id"] == event_id)


async def test_sync_loop_recovers_after_synapse_restart(
    world: World, synapse: SynapseServer
) -> None:
    bot, inbox = await world.start_bot()
    alert = await bot.send(world.room, ChatMessage("alert 3"))
    try:
        await asyncio.to_thread(synapse.restart)
    finally:
        synapse.start()

    reaction_id = await world.moderator.react(world.room, alert, "✅")

    reaction = await inbox.next_reaction()
    assert (reaction.event_id, reaction.message_id) == (reaction_id, alert)


async def test_command_in_a_reply_drops_the_quoted_fallback(world: World) -> None:
    _, inbox = await world.start_bot()
    body = f"> <{world.bot_id}> alert 5: match on list a\n> second line\n\n!ack 5"
    content = {
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"m.in_reply_to": {"event_id": "$whatever"}},
    }
    await world.moderator.client.room_send(world.room, "m.room.message", content)

    command = await inbox.next_command()
    assert (command.text, command.args) == ("!ack 5", ("ack", "5"))


# --- a homeserver that rate-limits: 1 message a second, bursts of 2 ----------------


@pytest.fixture(scope="module")
def strict_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    limit = {"per_second": 1, "burst_count": 2}
    server = start_synapse(tmp_path_factory.mktemp("strict"), rate_limits={"rc_message": limit})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def strict_world(strict_synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[World]:
    bot_id, bot_token = await strict_synapse.register(_localpart("bot"))
    mod_id, mod_token = await strict_synapse.register(_localpart("mod"))
    moderator = Peer(strict_synapse.base_url, mod_id, mod_token)
    room = await moderator.create_room(invite=[bot_id])
    store = await Store.open(tmp_path / "vigil.db")
    world = World(strict_synapse, store, bot_id, bot_token, moderator, room)
    try:
        yield world
    finally:
        for chat in world.bots:
            await chat.stop()
        await moderator.client.close()
        await store.close()


async def test_rate_limited_send_waits_as_told_and_succeeds(strict_world: World) -> None:
    bot, _ = await strict_world.start_bot()
    sent = [await bot.send(strict_world.room, ChatMessage(f"alert {n}")) for n in range(4)]
    assert len(set(sent)) == 4


async def test_long_rate_limit_wait_is_left_to_the_caller(strict_world: World) -> None:
    bot, _ = await strict_world.start_bot(max_retry_wait=0.0)
    with pytest.raises(ChatSendError) as caught:
        for n in range(4):
            await bot.send(strict_world.room, ChatMessage(f"alert {n}"))
    assert caught.value.errcode == "M_LIMIT_EXCEEDED"
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
