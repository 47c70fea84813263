"""Discord as a staff room: the real App, the real discord.py, a fake Discord on loopback.

Signed webhooks from the simulated Discourse go in; alerts come out as embeds with
persistent buttons on the fake Discord; clicks, reactions and slash commands come
back as gateway events, exactly as Discord sends them, and go through discord.py's
own dispatch (dynamic items, the command tree). The interaction checks are also
pinned with spec_set mocks of discord.py's classes (tests/discord_helpers.py).
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest

from adapters.discord_chat import (
    AlertButton,
    DiscordChat,
    markdown,
    open_ops,
    slash_group,
)
from bot.alerts import legend
from bot.app import App, load_everything
from bot.config import Role, StaffMember
from bot.moderation import ROLE_NEEDED
from bot.ports import ChatCommand, ChatError, ChatMessage, ChatReaction, ChatSendError
from tests.discord_helpers import (
    GUILD_ID,
    TOKEN,
    FakeDiscord,
    Posted,
    eventually,
    mock_interaction,
    mock_member,
    mock_message,
)
from tests.discord_helpers import fake_discord as fake_discord  # the fixture
from tests.fake_discourse import FakeDiscourse
from tests.test_alerts import LEAKED_EMAIL, LEAKED_IP, png

CHANNEL = 910_000_000_000_000_001
ALICE = 920_000_000_000_000_001  # moderator
BOB = 920_000_000_000_000_002  # moderator
VERA = 920_000_000_000_000_003  # volunteer
MALLORY = 920_000_000_000_000_004  # in the server, not on the roster

RULES = textwrap.dedent(
    """
    [[rule]]
    name = "images"
    when = { events = ["post_created"], has_images = true }
    severity = "high"
    room = "staff"
    """
)


def write_discord_config(
    root: Path,
    forum_url: str,
    *,
    rules: str = RULES,
    matrix: tuple[str, str, str, str] | None = None,  # (homeserver, bot id, room id, token)
    matrix_ids: dict[str, str] | None = None,
    notify: dict[str, str] | None = None,
    extra_rules: str = "",
) -> Path:
    """bot.toml, .env and rules/ for a Vigil whose staff room is a Discord channel
    (and, given ``matrix``, a Matrix room too)."""
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "main.toml").write_text(rules + extra_rules)
    (root / ".env").write_text(
        "TEST_WEBHOOK_SECRET=test-webhook-secret\nTEST_API_KEY=test-api-key\n"
        f"TEST_DISCORD_TOKEN={TOKEN}\nTEST_MATRIX_TOKEN={matrix[3] if matrix else 'unused'}\n"
    )
    matrix_ids = matrix_ids or {}
    notify = notify or {}
    roster = ""
    for name, role, discord_id in (
        ("Alice", "moderator", ALICE),
        ("Bob", "moderator", BOB),
        ("Vera", "volunteer", VERA),
    ):
        roster += (
            f'\n[[staff]]\nname = "{name}"\nrole = "{role}"\ntimezone = "Europe/London"\n'
            f'discord = "{discord_id}"\n'
        )
        if name in matrix_ids:
            roster += f'matrix = "{matrix_ids[name]}"\n'
        if name in notify:
            roster += f"notify = {notify[name]}\n"
    matrix_room = f'matrix = "{matrix[2]}"\n' if matrix else ""
    matrix_table = ""
    if matrix:
        matrix_table = (
            f'\n[matrix]\nhomeserver = "{matrix[0]}"\nuser_id = "{matrix[1]}"\n'
            'access_token_env = "TEST_MATRIX_TOKEN"\n'
        )
    (root / "bot.toml").write_text(
        textwrap.dedent(
            f"""
            [service]
            host = "127.0.0.1"
            port = 0

            [store]
            path = "data/vigil.db"

            [pipeline]
            workers = 2
            retry_base = "1s"

            [[source]]
            name = "forum"
            kind = "discourse"
            base_url = "{forum_url}"
            webhook_secret_env = "TEST_WEBHOOK_SECRET"
            media_hosts = ["127.0.0.1"]
            api_key_env = "TEST_API_KEY"
            api_username = "vigil"

            [discord]
            token_env = "TEST_DISCORD_TOKEN"
            guild_id = "{GUILD_ID}"
            """
        )
        + matrix_table
        + f'\n[[room]]\nname = "staff"\ndiscord = "{CHANNEL}"\n{matrix_room}'
        + roster
    )
    return root / "bot.toml"


@dataclass
class DiscordWorld:
    root: Path
    forum: FakeDiscourse
    discord: FakeDiscord
    app: App | None = None
    post_ids: int = 800

    async def start_app(self) -> App:
        loaded, problems = load_everything(self.root / "bot.toml")
        assert loaded is not None, [str(p) for p in problems.items]
        self.app = App(loaded.config, loaded.rules, watch_rules=False)
        await self.app.start()
        chat = self.app.chat
        assert chat is not None
        await eventually(lambda: all(chat.started.values()), "the chats started")
        return self.app

    async def stop_app(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    @property
    def url(self) -> str:
        assert self.app is not None
        return f"http://127.0.0.1:{self.app.port}/webhooks/discourse"

    async def post_image(self, seed: int, **kw: Any) -> int:
        self.post_ids += 1
        upload = self.forum.add_upload(png(seed))
        kw.setdefault("user_id", 7)
        kw.setdefault("username", "troll")
        body = self.forum.post_created_payload(
            post_id=self.post_ids, raw=f"look ![pic|64x64]({upload.short_url})", **kw
        )
        assert await self.forum.send_webhook(self.url, "post", "post_created", body) == 200
        return self.post_ids

    async def alert(self, n: int = 1) -> Posted:
        def find() -> Posted | None:
            alerts = self.discord.alerts(CHANNEL)
            return alerts[n - 1] if len(alerts) >= n else None

        return await eventually(find, f"alert #{n} in the Discord channel")

    def hides(self) -> list[Any]:
        return [c for c in self.forum.calls if c.path == "/post_actions.json"]


@pytest.fixture
async def world(tmp_path: Path, fake_discord: FakeDiscord) -> AsyncIterator[DiscordWorld]:
    forum = FakeDiscourse()
    await forum.start()
    write_discord_config(tmp_path, forum.base_url)
    w = DiscordWorld(tmp_path, forum, fake_discord)
    try:
        await w.start_app()
        yield w
    finally:
        await w.stop_app()
        await forum.stop()


# --- alerts ------------------------------------------------------------------------------


async def test_alert_is_an_embed_with_persistent_buttons_and_no_image_ip_or_email(
    world: DiscordWorld,
) -> None:
    upload_seed = 3
    post_id = await world.post_image(upload_seed, topic_title=f"mail {LEAKED_EMAIL} at {LEAKED_IP}")
    alert = await world.alert()

    embed = alert.embed
    assert embed is not None and embed["title"].startswith("🔴 HIGH · alert #1 · forum")
    assert (
        f"Post {post_id}" in embed["description"]
        and "Author: troll (user 7)" in embed["description"]
    )
    assert f"[admin view]({world.forum.base_url}/admin/users/7/troll)" in embed["description"]
    assert embed.get("color") == 0xEF6C00
    for leak in (LEAKED_EMAIL, LEAKED_IP, "upload://", "/uploads/", "<img"):
        assert leak not in str(alert.payload), leak
    assert "(1 image, not shown)" in embed["description"]
    assert not ({"image", "thumbnail", "video"} & set(embed)) and alert.payload["attachments"] == []
    assert alert.custom_ids == [
        f"vigil:1:{op}" for op in ("takedown", "suspend", "ack", "dismiss", "restore")
    ]
    assert [b["emoji"]["name"] for b in alert.buttons()] == ["✅", "🔨", "👀", "❎", "↩️"]
    # Seeding the buttons costs no rate-limited reaction call: the buttons are there.
    assert world.app is not None and world.app.store is not None
    store = world.app.store

    async def seeded() -> bool:
        rows = await store.outbox_rows("discord")
        return any(r["op"] == "seed_buttons" and r["state"] == "sent" for r in rows)

    await eventually(seeded, "the buttons seeded")
    assert not world.discord.calls_to("PUT", r"/channels/\d+/messages/\d+/reactions/.*")


async def test_slash_commands_and_intents_need_no_privilege(world: DiscordWorld) -> None:
    [vigil] = world.discord.commands
    subs = {o["name"] for o in vigil["options"]}
    assert {"status", "ack", "takedown", "dismiss", "oncall"} <= subs
    assert subs <= set(ROLE_NEEDED)  # lockdown only once moderation knows it
    ack = next(o for o in vigil["options"] if o["name"] == "ack")
    assert [(p["name"], p["type"], p["required"]) for p in ack["options"]] == [("alert", 4, True)]
    [identify] = world.discord.identified
    intents = discord.Intents._from_value(identify["intents"])
    assert intents.guilds and intents.guild_reactions and intents.dm_messages
    assert not (intents.message_content or intents.members or intents.presences)


# --- buttons through the gateway ----------------------------------------------------------


async def test_button_click_is_deferred_then_takes_down_and_every_embed_shows_it(
    world: DiscordWorld,
) -> None:
    post_id = await world.post_image(4)
    alert = await world.alert()

    clicked = await world.discord.click(alert, "vigil:1:takedown", ALICE, "alice")

    responses = await eventually(
        lambda: (
            len(world.discord.responses_to(clicked)) >= 2 and world.discord.responses_to(clicked)
        ),
        "the deferral and the followup",
    )
    assert responses[0] == {"type": 5, "data": {"flags": 64}}  # deferred, ephemeral, at once
    assert responses[1]["flags"] & 64 and "received" in responses[1]["content"]
    await eventually(lambda: "Taken down by Alice" in alert.text, "the alert edited")
    [hide] = world.hides()
    assert hide.json["id"] == post_id
    assert alert.custom_ids == ["vigil:1:restore"]  # handled: only ↩️ is left
    assert alert.embed is not None and alert.embed["color"] == 0x757575


async def test_a_button_posted_before_a_restart_still_acts(world: DiscordWorld) -> None:
    await world.post_image(5)
    alert = await world.alert()
    await world.stop_app()
    await world.start_app()  # a new DiscordChat and discord.Client: only the template is known

    clicked = await world.discord.click(alert, "vigil:1:ack", VERA, "vera")

    await eventually(lambda: "👀 Vera is on it" in alert.text, "the ack shown on the alert")
    assert world.discord.responses_to(clicked)[0] == {"type": 5, "data": {"flags": 64}}
    assert world.app is not None and world.app.store is not None
    snapshot = await world.app.store.alert_snapshot(1)
    assert snapshot is not None and snapshot.acked_by == "Vera"


async def test_a_click_by_someone_not_on_the_roster_does_nothing(world: DiscordWorld) -> None:
    await world.post_image(6)
    alert = await world.alert()
    before = list(alert.edits)

    clicked = await world.discord.click(alert, "vigil:1:takedown", MALLORY, "mallory")
    [refusal] = await eventually(lambda: world.discord.responses_to(clicked), "the refusal")
    assert refusal["type"] == 4 and refusal["data"]["flags"] == 64  # ephemeral message
    assert "not on Vigil's staff roster" in refusal["data"]["content"]

    clicked = await world.discord.click(alert, "vigil:1:suspend", VERA, "vera")
    [refusal] = await eventually(lambda: world.discord.responses_to(clicked), "the refusal")
    assert "needs the moderator role" in refusal["data"]["content"]
    assert refusal["data"]["flags"] == 64

    # A click everyone may make, after the refusals: only it changed anything.
    acked = await world.discord.click(alert, "vigil:1:ack", BOB, "bob")
    await eventually(lambda: "Bob is on it" in alert.text, "Bob's ack")
    assert world.discord.responses_to(acked)[0]["type"] == 5
    assert world.forum.calls == [] and len(alert.edits) == len(before) + 1
    assert world.discord.dm_channels == {}  # refusals were ephemeral, not DMs


async def test_a_reaction_is_the_fallback_for_a_button(world: DiscordWorld) -> None:
    post_id = await world.post_image(7)
    alert = await world.alert()

    await world.discord.react(alert, "✅", ALICE)

    await eventually(lambda: "Taken down by Alice" in alert.text, "the takedown")
    assert [h.json["id"] for h in world.hides()] == [post_id]

    await world.discord.react(alert, "❎", MALLORY)  # not staff: told by DM
    dm = await eventually(lambda: world.discord.dms_to(MALLORY), "a DM to Mallory")
    assert "not on Vigil's staff roster" in dm[0]


async def test_a_paged_person_acks_by_answering_the_dm(world: DiscordWorld) -> None:
    await world.post_image(10)
    alert = await world.alert()

    await world.discord.dm_from(VERA, "ack 1")

    await eventually(lambda: "👀 Vera is on it" in alert.text, "the ack typed in a DM")
    await world.discord.dm_from(VERA, "ack 1")  # again: told, nothing more changes
    answer = await eventually(
        lambda: [t for t in world.discord.dms_to(VERA) if "already on alert #1" in t], "a reply"
    )
    assert answer and len(alert.edits) == 1


# --- slash commands -------------------------------------------------------------------------


async def test_slash_status_goes_through_the_tree_and_answers_only_the_asker(
    world: DiscordWorld,
) -> None:
    await world.post_image(8, username="troll_*bold*")
    await world.alert()

    asked = await world.discord.command("status", VERA, channel_id=CHANNEL)

    def answered() -> list[dict[str, Any]] | None:
        got = world.discord.responses_to(asked)
        return got if any("Open alerts: 1" in (r.get("content") or "") for r in got) else None

    responses = await eventually(answered, "the status answer")
    assert responses[0] == {"type": 5, "data": {"flags": 64}}
    assert all(r["flags"] & 64 for r in responses[1:])  # every answer is ephemeral
    assert not [m for m in world.discord.channel_messages(CHANNEL) if "Open alerts" in m.text]

    refused = await world.discord.command("status", MALLORY, channel_id=CHANNEL)
    [refusal] = await eventually(lambda: world.discord.responses_to(refused), "the refusal")
    assert refusal["type"] == 4 and refusal["data"]["flags"] == 64
    assert "not on Vigil's staff roster" in refusal["data"]["content"]


async def test_slash_takedown_acts_on_the_alert_with_the_same_role_checks(
    world: DiscordWorld,
) -> None:
    post_id = await world.post_image(9)
    alert = await world.alert()

    asked = await world.discord.command(
        "dismiss", VERA, channel_id=CHANNEL, options=[{"name": "alert", "type": 4, "value": 1}]
    )
    [refusal] = await eventually(lambda: world.discord.responses_to(asked), "the refusal")
    assert "needs the moderator role" in refusal["data"]["content"]

    await world.discord.command(
        "takedown", VERA, channel_id=CHANNEL, options=[{"name": "alert", "type": 4, "value": 1}]
    )
    await eventually(lambda: "Taken down by Vera" in alert.text, "the takedown")
    assert [h.json["id"] for h in world.hides()] == [post_id]


# --- the interaction checks with spec_set mocks ------------------------------------------


@dataclass
class Recorded:
    reactions: list[ChatReaction]
    commands: list[ChatCommand]


@pytest.fixture
async def started(fake_discord: FakeDiscord) -> AsyncIterator[tuple[DiscordChat, Recorded]]:
    roster = {
        str(ALICE): StaffMember("Alice", Role.MODERATOR, "UTC", discord=str(ALICE)),
        str(VERA): StaffMember("Vera", Role.VOLUNTEER, "UTC", discord=str(VERA)),
    }
    state: dict[str, str] = {}

    class State:
        async def get_state(self, key: str) -> str | None:
            return state.get(key)

        async def set_state(self, key: str, value: str) -> None:
            state[key] = value

    chat = DiscordChat(TOKEN, str(GUILD_ID), roster=roster.get, state=State(), rooms=[str(CHANNEL)])
    recorded = Recorded([], [])

    async def on_reaction(reaction: ChatReaction) -> None:
        recorded.reactions.append(reaction)

    async def on_command(command: ChatCommand) -> None:
        recorded.commands.append(command)

    await chat.start(on_reaction, on_command)
    try:
        yield chat, recorded
    finally:
        await chat.stop()


async def test_mock_click_by_non_staff_is_refused_ephemerally_before_anything_else(
    started: tuple[DiscordChat, Recorded],
) -> None:
    chat, recorded = started
    stranger = mock_member(MALLORY, "mallory")
    interaction, responses = mock_interaction(
        chat.client,
        stranger,
        interaction_id=1,
        channel_id=CHANNEL,
        message=mock_message(55, CHANNEL),
    )
    match = AlertButton.__discord_ui_compiled_template__.fullmatch("vigil:12:takedown")
    assert match is not None
    button = await AlertButton.from_custom_id(interaction, discord.ui.Button(), match)

    assert await button.interaction_check(interaction) is False

    assert responses.kinds() == ["send_message"]
    assert responses.log[0][1]["ephemeral"] is True
    assert "not on Vigil's staff roster" in responses.log[0][1]["content"]
    assert recorded.reactions == []


async def test_mock_click_is_deferred_before_moderation_hears_of_it(
    started: tuple[DiscordChat, Recorded],
) -> None:
    chat, recorded = started
    interaction, responses = mock_interaction(
        chat.client,
        mock_member(ALICE, "alice"),
        interaction_id=2,
        channel_id=CHANNEL,
        message=mock_message(56, CHANNEL),
    )
    deferred_first: list[bool] = []

    async def on_reaction(reaction: ChatReaction) -> None:
        deferred_first.append(interaction.response.is_done())
        recorded.reactions.append(reaction)

    chat._on_reaction = on_reaction  # the handler moderation would be; records the order
    button = AlertButton(12, "suspend")

    assert await button.interaction_check(interaction) is True
    await button.callback(interaction)

    assert responses.kinds() == ["defer", "followup"]
    assert responses.log[0][1] == {"ephemeral": True, "thinking": True}
    assert deferred_first == [True]
    assert recorded.reactions == [
        ChatReaction("discord", str(CHANNEL), "56", "🔨", str(ALICE), "interaction:2")
    ]


async def test_mock_click_from_another_server_or_with_a_lesser_role_is_refused(
    started: tuple[DiscordChat, Recorded],
) -> None:
    chat, recorded = started
    elsewhere, responses = mock_interaction(
        chat.client, mock_member(ALICE), interaction_id=3, guild_id=1, message=mock_message(1, 2)
    )
    assert await AlertButton(1, "ack").interaction_check(elsewhere) is False
    assert "staff server" in responses.log[0][1]["content"]
    volunteer, responses = mock_interaction(
        chat.client, mock_member(VERA), interaction_id=4, message=mock_message(1, CHANNEL)
    )
    assert await AlertButton(1, "confirm").interaction_check(volunteer) is False
    assert "needs the moderator role" in responses.log[0][1]["content"]
    assert recorded.reactions == []


def test_custom_ids_of_unknown_operations_are_rejected() -> None:
    with pytest.raises(ValueError):
        AlertButton(1, "delete_everything")
    assert AlertButton(7, "restore").custom_id == "vigil:7:restore"


def test_slash_group_registers_only_what_moderation_knows(
    fake_discord: FakeDiscord,
) -> None:
    chat = DiscordChat(TOKEN, str(GUILD_ID), roster=lambda _: None, state=None)  # type: ignore[arg-type]
    names = {c.name for c in slash_group(chat).commands}
    assert {"status", "ack", "takedown", "dismiss"} <= names
    assert names <= set(ROLE_NEEDED)
    assert ("lockdown" in names) == ("lockdown" in ROLE_NEEDED)


# --- sending -------------------------------------------------------------------------------


async def test_same_txn_id_posts_once_and_mentions_ping_only_whom_they_name(
    started: tuple[DiscordChat, Recorded],
    fake_discord: FakeDiscord,
) -> None:
    chat, _ = started
    page = ChatMessage("@room Alert #3 waited", mentions=(str(ALICE),), mention_room=True)
    first = await chat.send(str(CHANNEL), page, txn_id="vigil.abc.1.0.send")
    again = await chat.send(str(CHANNEL), page, txn_id="vigil.abc.1.0.send")
    assert first == again and len(fake_discord.channel_messages(CHANNEL)) == 1
    [posted] = fake_discord.channel_messages(CHANNEL)
    assert posted.payload["content"] == f"@here <@{ALICE}> Alert #3 waited"
    calls = fake_discord.calls_to("POST", rf"/channels/{CHANNEL}/messages")
    allowed = calls[0].body["allowed_mentions"]
    assert (allowed["parse"], allowed["users"], allowed["roles"]) == (["everyone"], [ALICE], [])

    chat._mention_role = "930000000000000001"  # [discord] mention_role: ping the staff role
    await chat.send(str(CHANNEL), page, txn_id="vigil.abc.2.0.send")
    posted = fake_discord.channel_messages(CHANNEL)[-1]
    assert posted.payload["content"] == f"<@&930000000000000001> <@{ALICE}> Alert #3 waited"
    allowed = fake_discord.calls_to("POST", rf"/channels/{CHANNEL}/messages")[-1].body[
        "allowed_mentions"
    ]
    assert (allowed["parse"], allowed["roles"]) == ([], [930000000000000001])


async def test_a_short_429_is_waited_out_and_a_long_one_goes_back_to_the_outbox(
    started: tuple[DiscordChat, Recorded],
    fake_discord: FakeDiscord,
) -> None:
    chat, _ = started
    path = rf"/channels/{CHANNEL}/messages"
    fake_discord.fail("POST", path, 429, {"message": "slow", "retry_after": 0.05, "global": False})
    await chat.send(str(CHANNEL), ChatMessage("once"))
    assert len(fake_discord.calls_to("POST", path)) == 2  # discord.py retried after 50 ms
    assert len(fake_discord.channel_messages(CHANNEL)) == 1

    fake_discord.fail("POST", path, 429, {"message": "slow", "retry_after": 120, "global": False})
    with pytest.raises(ChatSendError) as caught:
        await chat.send(str(CHANNEL), ChatMessage("later"))
    assert caught.value.retry_after == 120 and caught.value.errcode is None


async def test_a_person_who_refuses_dms_is_a_refusal_and_discord_down_is_not(
    started: tuple[DiscordChat, Recorded],
    fake_discord: FakeDiscord,
) -> None:
    chat, _ = started
    await chat.direct_message(str(ALICE), ChatMessage("hello"))
    assert fake_discord.dms_to(ALICE) == ["hello"]
    fake_discord.closed_dms.add(VERA)
    with pytest.raises(ChatSendError) as caught:
        await chat.direct_message(str(VERA), ChatMessage("hello"))
    assert caught.value.errcode == "discord.50007"

    await fake_discord.stop()
    with pytest.raises(ChatSendError) as caught:
        await chat.send(str(CHANNEL), ChatMessage("anyone?"))
    assert caught.value.errcode is None  # unreachable: the outbox retries for as long as it takes


async def test_a_refused_token_is_a_clear_error(fake_discord: FakeDiscord) -> None:
    chat = DiscordChat("wrong", str(GUILD_ID), roster=lambda _: None, state=None)  # type: ignore[arg-type]

    async def ignore(_: Any) -> None:
        return None

    with pytest.raises(ChatError, match="refused the bot token"):
        await chat.start(ignore, ignore)


async def test_a_confirmation_prompt_gets_a_confirm_button(
    started: tuple[DiscordChat, Recorded],
    fake_discord: FakeDiscord,
) -> None:
    chat, _ = started
    prompt = "Alice asked to take down alert #4 and suspend troll. To confirm, react 🔨."
    message_id = await chat.send(str(CHANNEL), ChatMessage(prompt))
    await chat.react(str(CHANNEL), message_id, "🔨")
    assert fake_discord.messages[int(message_id)].custom_ids == ["vigil:4:confirm"]
    await chat.react(str(CHANNEL), message_id, "🔨")  # a resend changes nothing
    assert len(fake_discord.messages[int(message_id)].edits) == 1


# --- rendering -------------------------------------------------------------------------------


def test_markdown_escapes_forum_text_and_keeps_links() -> None:
    fragment = (
        '<b>Author: troll_*bold*</b> · <a href="https://f.example/admin/users/7/x">admin view</a>'
        '<br>\n<a href="https://f.example/t/a_b/1">https://f.example/t/a_b/1</a>'
    )
    assert markdown(fragment) == (
        "**Author: troll\\_\\*bold\\*** · [admin view](https://f.example/admin/users/7/x)\n"
        "https://f.example/t/a_b/1"
    )


def test_buttons_follow_what_the_alert_text_offers() -> None:
    assert open_ops(ChatMessage(f"x\nReact: {legend()}")) == (
        "takedown",
        "suspend",
        "ack",
        "dismiss",
        "restore",
    )
    assert open_ops(ChatMessage("x\nReact ↩️ to restore the post if this was a mistake.")) == (
        "restore",
    )
    assert open_ops(ChatMessage("x\n❎ Dismissed")) == ()


def test_discord_settings_are_read_and_checked(tmp_path: Path) -> None:
    from bot.config import load_config
    from bot.schema import Problems

    path = write_discord_config(tmp_path, "https://forum.example.org")
    text = path.read_text().replace(
        f'guild_id = "{GUILD_ID}"\n',
        f'guild_id = "{GUILD_ID}"\nmessage_content = true\nmention_role = "930000000000000001"\n',
    )
    path.write_text(text)
    problems = Problems()
    config = load_config(path, problems)
    assert config is not None and config.discord is not None and not problems.errors
    assert (config.discord.message_content, config.discord.mention_role) == (
        True,
        "930000000000000001",
    )
    assert config.staff_by_chat_id("discord", str(VERA)) == config.person("Vera")

    path.write_text(text.replace('mention_role = "930000000000000001"', 'mention_role = "@staff"'))
    problems = Problems()
    load_config(path, problems)
    assert any("mention_role" in str(p) and "digits only" in str(p) for p in problems.errors)
