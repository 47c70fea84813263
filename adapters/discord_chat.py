"""The Discord side of the chat port, on discord.py 2.x.

Alerts are embeds with buttons for the same operations as the Matrix reactions
(:data:`bot.alerts.BUTTONS`). A button is a persistent :class:`AlertButton`
(``discord.ui.DynamicItem``): its ``custom_id`` (``vigil:<alert>:<op>``) carries the
alert and the operation, and the class is registered at every start, so a button on
a message posted before a restart still works. A click is checked in
``interaction_check`` against the staff roster (Discord user id) and the role
:data:`bot.moderation.ROLE_NEEDED` asks for, before anything else; a refusal is an
ephemeral answer and a log line. An allowed click is deferred at once, then handed
to moderation as the same :class:`~bot.ports.ChatReaction` a reaction would be, so
``bot.moderation`` decides exactly as it does for Matrix. Emoji reactions are
accepted too (a fallback), and the ``/vigil`` slash commands become
:class:`~bot.ports.ChatCommand` s whose answers come back ephemeral.

Outgoing REST calls go through discord.py, which waits out short 429s itself; a
longer rate limit, a refusal or an outage surfaces as :class:`bot.ports.ChatSendError`
for the outbox (``errcode`` set: refused; ``retry_after`` set: rate limited). Sends
carry a nonce derived from the outbox's ``txn_id`` (Discord enforces it), so a resend
after a crash does not post twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, TypeVar

import aiohttp
import discord
from discord import app_commands

from bot.alerts import BUTTONS, CONFIRM_KEY, button_for, legend
from bot.config import StaffMember
from bot.moderation import OP_LABEL, ROLE_NEEDED, allowed
from bot.ports import (
    ChatCommand,
    ChatError,
    ChatMessage,
    ChatReaction,
    ChatSendError,
    CommandHandler,
    ReactionHandler,
    StateStore,
)

log = logging.getLogger(__name__)

R = TypeVar("R")
Roster = Callable[[str], StaffMember | None]

# Alert text as bot.alerts.render_alert writes it: the head line names the alert.
_ALERT_ID = re.compile(r"\balert #(\d{1,12})\b")
_RESTORE_HINT = "React ↩️ to restore"
_CONTENT_MAX = 2000  # Discord's limits
_TITLE_MAX = 256
_DESCRIPTION_MAX = 4096
_NONCE_MAX = 25
_INTERACTION_TTL_S = 14 * 60.0  # a followup token lasts 15 minutes
_COLOURS = {"CRITICAL": 0xC62828, "HIGH": 0xEF6C00, "MEDIUM": 0xF9A825, "LOW": 0xFDD835}
_HANDLED_COLOUR = 0x757575
_STYLE = {
    "takedown": discord.ButtonStyle.danger,
    "suspend": discord.ButtonStyle.danger,
    "confirm": discord.ButtonStyle.danger,
    "ack": discord.ButtonStyle.primary,
}
_BUTTON_BY_OP = {b.op: b for b in BUTTONS}
BUTTON_OPS = (*(b.op for b in BUTTONS), "confirm")


@dataclass(frozen=True, slots=True)
class SlashCommand:
    """One ``/vigil`` sub-command; registered only if moderation has a role for it."""

    word: str
    description: str
    takes_alert: bool = False
    text_help: str | None = None  # an optional free-text argument, and what it is


SLASH_COMMANDS: tuple[SlashCommand, ...] = (
    SlashCommand("status", "Open alerts, lists loaded, feed health"),
    SlashCommand("ack", "I'm on it: acknowledge an alert", takes_alert=True),
    SlashCommand("takedown", "Take down an alert's posts", takes_alert=True),
    SlashCommand("dismiss", "Dismiss an alert as a false positive", takes_alert=True),
    SlashCommand("oncall", "Who is on call now and next", text_help="one schedule's name"),
    SlashCommand("lockdown", "Lock the forum down, or lift it", text_help="what to do, e.g. off"),
)


# --- rendering -------------------------------------------------------------------------


class _Markdown(HTMLParser):
    """The small HTML subset alerts use (b, i, a, br) as Discord markdown."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._href: str | None = None
        self._label: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("b", "strong"):
            self._put("**")
        elif tag in ("i", "em"):
            self._put("*")
        elif tag == "br":
            self._put("\n")
        elif tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._label = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("b", "strong"):
            self._put("**")
        elif tag in ("i", "em"):
            self._put("*")
        elif tag == "a" and self._href is not None:
            href, label = self._href, "".join(self._label)
            self._href = None
            if not href.startswith(("http://", "https://")):
                self.out.append(label)
            elif discord.utils.remove_markdown(label) == href or not label:
                self.out.append(href)  # a bare URL: Discord links it (escaping would break it)
            else:
                self.out.append(f"[{label}]({href.replace(')', '%29')})")

    def handle_data(self, data: str) -> None:
        # Newlines in HTML are layout; <br> makes the line breaks.
        self._put(discord.utils.escape_markdown(data.replace("\n", "")))

    def _put(self, text: str) -> None:
        (self._label if self._href is not None else self.out).append(text)


def markdown(fragment: str) -> str:
    """Discord markdown for an alert's HTML (forum text escaped, links kept)."""
    parser = _Markdown()
    parser.feed(fragment)
    parser.close()
    return "".join(parser.out).strip()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def alert_id_of(text: str) -> int | None:
    """The alert a message is about (its first ``alert #N``), if any."""
    m = _ALERT_ID.search(text)
    return int(m.group(1)) if m else None


def is_alert(message: ChatMessage) -> bool:
    """Alerts (bot.alerts.render_alert) have HTML and name the alert on their first line."""
    return message.html is not None and alert_id_of(message.text.split("\n", 1)[0]) is not None


def open_ops(message: ChatMessage) -> tuple[str, ...]:
    """The buttons an alert's text offers right now (all, only ↩️, or none once handled)."""
    if legend() in message.text:
        return tuple(b.op for b in BUTTONS)
    if _RESTORE_HINT in message.text:
        return ("restore",)
    return ()


def embed_for(message: ChatMessage) -> discord.Embed:
    """An alert as an embed: the head line as title, the rest as markdown, severity colour."""
    head = message.text.split("\n", 1)[0]
    assert message.html is not None
    parts = message.html.split("<br>\n", 1)
    body = markdown(parts[1]) if len(parts) == 2 else markdown(message.html)
    severity = next((s for s in _COLOURS if f" {s} " in f" {head} "), None)
    colour = _COLOURS.get(severity or "", _HANDLED_COLOUR)
    if legend() not in message.text:  # handled: grey, whatever its severity
        colour = _HANDLED_COLOUR
    return discord.Embed(
        title=_cut(head, _TITLE_MAX), description=_cut(body, _DESCRIPTION_MAX), colour=colour
    )


def button_view(alert_id: int, ops: Sequence[str]) -> discord.ui.View:
    """A persistent view (no timeout) holding one :class:`AlertButton` per operation."""
    view = discord.ui.View(timeout=None)
    for op in ops:
        view.add_item(AlertButton(alert_id, op))
    return view


# --- buttons ---------------------------------------------------------------------------


def _label(op: str) -> str:
    if op == "confirm":
        return "Confirm: take down + suspend"
    text = _BUTTON_BY_OP[op].label.split(" (")[0]
    return text[:1].upper() + text[1:]


def _key(op: str) -> str:
    return CONFIRM_KEY if op == "confirm" else _BUTTON_BY_OP[op].key


class AlertButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"vigil:(?P<alert>[0-9]{1,12}):(?P<op>[a-z]{1,16})",
):
    """A button under an alert; ``custom_id`` ``vigil:<alert id>:<operation>``."""

    def __init__(self, alert_id: int, op: str) -> None:
        if op not in BUTTON_OPS:
            raise ValueError(f"not a button operation: {op!r}")
        super().__init__(
            discord.ui.Button(
                style=_STYLE.get(op, discord.ButtonStyle.secondary),
                label=_label(op),
                emoji=_key(op),
                custom_id=f"vigil:{alert_id}:{op}",
            )
        )
        self.alert_id = alert_id
        self.op = op

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[discord.Client],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> AlertButton:
        """Rebuild the button from a click (after a restart too)."""
        return cls(int(match["alert"]), match["op"])

    async def interaction_check(self, interaction: discord.Interaction[discord.Client], /) -> bool:
        """Roster and role first; a refusal is answered ephemerally here."""
        return await _chat_of(interaction).allow(interaction, self.op, self.alert_id)

    async def callback(self, interaction: discord.Interaction[discord.Client]) -> None:
        """Defer, then hand the click to moderation as a reaction with the button's key."""
        await _chat_of(interaction).button_pressed(interaction, self.op, self.alert_id)


def _chat_of(interaction: discord.Interaction[Any]) -> DiscordChat:
    client = interaction.client
    chat = getattr(client, "vigil", None)
    if not isinstance(chat, DiscordChat):
        raise RuntimeError("an interaction for a client that is not Vigil's")
    return chat


# --- slash commands --------------------------------------------------------------------


class VigilCommands(app_commands.Group):
    """``/vigil …``: each sub-command checks the roster and role, then goes to moderation."""

    def __init__(self, chat: DiscordChat) -> None:
        super().__init__(name="vigil", description="Vigil: alerts, status and on-call")
        self.chat = chat

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        """The same roster and role check as the buttons, before the command runs."""
        command = interaction.command
        word = command.name if command is not None else ""
        return await self.chat.allow(interaction, word, None)


def _slash_callback(chat: DiscordChat, spec: SlashCommand) -> Callable[..., Awaitable[None]]:
    # discord.py reads the parameters from the callback's signature.
    if spec.takes_alert:

        async def with_alert(
            interaction: discord.Interaction[Any],
            alert: app_commands.Range[int, 1, 999_999_999_999],
        ) -> None:
            await chat.slash(interaction, spec.word, (str(alert),))

        return with_alert
    if spec.text_help is not None:

        async def with_text(interaction: discord.Interaction[Any], args: str = "") -> None:
            await chat.slash(interaction, spec.word, tuple(args.split()))

        return app_commands.describe(args=spec.text_help)(with_text)

    async def plain(interaction: discord.Interaction[Any]) -> None:
        await chat.slash(interaction, spec.word, ())

    return plain


def slash_group(chat: DiscordChat) -> VigilCommands:
    """The ``/vigil`` group with every sub-command moderation knows (see ROLE_NEEDED)."""
    group = VigilCommands(chat)
    for spec in SLASH_COMMANDS:
        if spec.word not in ROLE_NEEDED:
            continue  # e.g. lockdown before moderation supports it
        group.add_command(
            app_commands.Command(
                name=spec.word, description=spec.description, callback=_slash_callback(chat, spec)
            )
        )
    return group


@dataclass(frozen=True, slots=True)
class _Posted:
    """What the bot put on one of its messages."""

    alert_id: int | None
    alert: bool  # an alert embed (its buttons follow the alert's state)
    ops: tuple[str, ...]


# --- the client ------------------------------------------------------------------------


class _Client(discord.Client):
    """discord.py's client with Vigil's hooks; ``vigil`` points back at the port."""

    def __init__(self, chat: DiscordChat, **options: Any) -> None:
        super().__init__(**options)
        self.vigil = chat
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = chat.on_command_error  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        await self.vigil.setup(self)

    async def on_connect(self) -> None:
        self.vigil.connected.set()

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.vigil.reaction_added(payload)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        self.vigil.reaction_removed(payload)

    async def on_message(self, message: discord.Message) -> None:
        await self.vigil.message_received(message)


class DiscordChat:
    """:class:`bot.ports.ChatPort` for one Discord server (guild).

    ``rooms`` are channel ids (strings of digits); events report the channel id as
    the room and the user id as the sender. ``roster`` maps a Discord user id to the
    staff member (``config.staff_by_chat_id("discord", id)``). State keys:
    ``<name>.dm.<user id>`` (the DM channel). ``mention_role``: a role id pinged
    instead of ``@here`` when a message pages the whole room (text starting ``@room``).
    """

    def __init__(
        self,
        token: str,
        guild_id: str,
        *,
        roster: Roster,
        state: StateStore,
        rooms: Sequence[str] = (),
        name: str = "discord",
        message_content: bool = False,
        mention_role: str | None = None,
        ready_timeout: float = 30.0,
        max_ratelimit_timeout: float = 30.0,
    ) -> None:
        if not token:
            raise ValueError("Discord: the bot token is empty (see [discord] token_env)")
        self.name = name
        self.guild_id = str(guild_id)
        self.rooms = frozenset(str(r) for r in rooms)
        self._token = token
        self._roster = roster
        self._state = state
        self._message_content = message_content
        self._mention_role = mention_role
        self._ready_timeout = ready_timeout
        self._max_ratelimit_timeout = max(30.0, max_ratelimit_timeout)  # discord.py's minimum
        self._client: _Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_reaction: ReactionHandler | None = None
        self._on_command: CommandHandler | None = None
        self._posted: dict[str, _Posted] = {}  # message id -> what we put on it
        self._interactions: dict[str, tuple[discord.Interaction[Any], float]] = {}
        self._reaction_gen: dict[tuple[int, int, str], int] = {}
        self._boot = f"{time.time_ns():x}"  # reaction event ids differ across restarts
        self.connected = asyncio.Event()
        self.synced_commands: tuple[str, ...] = ()

    # --- lifecycle ---------------------------------------------------------------------

    def intents(self) -> discord.Intents:
        """Guilds, reactions and DMs; Message Content (privileged) only when asked for."""
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_reactions = True
        intents.dm_messages = True
        if self._message_content:
            intents.guild_messages = True
            intents.message_content = True
        return intents

    @property
    def client(self) -> discord.Client:
        """The discord.py client (after :meth:`start`)."""
        if self._client is None:
            raise ChatError(f"{self.name}: not started")
        return self._client

    async def start(self, on_reaction: ReactionHandler, on_command: CommandHandler) -> None:
        """Log in (REST), register buttons and commands, connect the gateway in a task.

        Raises :class:`ChatError` if the token is refused, Discord is unreachable, or the
        gateway does not come up within ``ready_timeout`` (e.g. a privileged intent
        that is not enabled for the application).
        """
        if self._task is not None:
            raise ChatError(f"{self.name}: already started")
        self._on_reaction, self._on_command = on_reaction, on_command
        self.connected.clear()
        client = _Client(
            self,
            intents=self.intents(),
            max_ratelimit_timeout=self._max_ratelimit_timeout,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self._client = client
        try:
            await client.login(self._token)
        except discord.LoginFailure as error:
            await self._close_client()
            raise ChatError(f"{self.name}: Discord refused the bot token ({error})") from None
        except (discord.HTTPException, aiohttp.ClientError, OSError) as error:
            await self._close_client()
            raise ChatError(
                f"{self.name}: cannot reach Discord ({type(error).__name__})"
            ) from error
        self._task = asyncio.create_task(self._run(client), name=f"{self.name}-gateway")
        ready = asyncio.create_task(self.connected.wait())
        try:
            done, _ = await asyncio.wait(
                {ready, self._task}, timeout=self._ready_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
        if self.connected.is_set():
            log.info("discord started guild=%s rooms=%d", self.guild_id, len(self.rooms))
            return
        why = "the gateway did not answer in time"
        if self._task in done and self._task.exception() is not None:
            why = f"{type(self._task.exception()).__name__}: {self._task.exception()}"
        await self.stop()
        raise ChatError(f"{self.name}: could not connect to the gateway: {why}")

    async def _run(self, client: _Client) -> None:
        try:
            await client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            log.error(
                "discord refused a privileged intent: enable Message Content in the developer"
                " portal (Bot > Privileged Gateway Intents) or set message_content = false"
            )
            raise

    async def setup(self, client: _Client) -> None:
        """At login: persistent buttons, then the ``/vigil`` commands for the guild."""
        client.add_dynamic_items(AlertButton)
        guild = discord.Object(int(self.guild_id))
        client.tree.add_command(slash_group(self), guild=guild)
        try:
            synced = await client.tree.sync(guild=guild)
        except discord.HTTPException as error:
            # Buttons and reactions still work; only the slash commands are missing.
            log.error(
                "discord could not register /vigil in guild=%s (%s %s): invite the bot with"
                " the applications.commands scope",
                self.guild_id,
                error.status,
                error.code,
            )
            return
        self.synced_commands = tuple(c.name for c in synced)

    async def stop(self) -> None:
        """Close the gateway and the HTTP session."""
        task, self._task = self._task, None
        await self._close_client()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # --- incoming: buttons -------------------------------------------------------------

    async def allow(
        self, interaction: discord.Interaction[Any], op: str, alert_id: int | None
    ) -> bool:
        """Whether the clicker may do ``op``: in our guild, on the roster, with the role.

        No I/O before the answer: a refusal is the interaction's (ephemeral) response.
        """
        user = str(interaction.user.id)
        where = f" on alert #{alert_id}" if alert_id is not None else ""
        label = OP_LABEL.get(op, f"/vigil {op}")
        person = self._roster(user)
        if str(interaction.guild_id) != self.guild_id:
            why, text = "another server", "Vigil only takes actions from its staff server."
        elif op not in ROLE_NEEDED:
            why, text = "unknown operation", "Vigil does not know that operation."
        elif person is None:
            why = "not on the staff roster"
            text = (
                f"You used {label}{where}, but your Discord account ({user}) is not on Vigil's "
                "staff roster, so nothing was done. An admin can add your id to bot.toml."
            )
        elif not allowed(person, op):
            need = ROLE_NEEDED[op].value
            why = f"role {person.role.value} lacks {op} (needs {need})"
            text = (
                f"{label} needs the {need} role; you ({person.name}) are a "
                f"{person.role.value}. Nothing was done{where}."
            )
        else:
            return True
        log.warning(
            "refused %s from chat=%s sender=%s alert=%s: %s", op, self.name, user, alert_id, why
        )
        await interaction.response.send_message(text, ephemeral=True)
        return False

    async def button_pressed(
        self, interaction: discord.Interaction[Any], op: str, alert_id: int
    ) -> None:
        """Deferred first (3 s rule), then the same event as a reaction, then a followup."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        message = interaction.message
        assert message is not None and self._on_reaction is not None
        reaction = ChatReaction(
            self.name,
            str(interaction.channel_id),
            str(message.id),
            _key(op),
            str(interaction.user.id),
            f"interaction:{interaction.id}",
        )
        try:
            await self._on_reaction(reaction)
        except Exception:
            log.exception("discord button %s on alert %d failed", op, alert_id)
            await interaction.followup.send(
                "Vigil could not record that just now; please press again.", ephemeral=True
            )
            return
        await interaction.followup.send(
            f"{OP_LABEL[op]} on alert #{alert_id}: received. The alert shows the outcome;"
            " anything else comes by direct message.",
            ephemeral=True,
        )

    # --- incoming: slash commands ------------------------------------------------------

    async def slash(
        self, interaction: discord.Interaction[Any], word: str, args: tuple[str, ...]
    ) -> None:
        """A ``/vigil`` command: deferred (ephemeral), then moderation; answers come back
        to this interaction, visible only to the person who asked."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert self._on_command is not None
        self._forget_old_interactions()
        self._interactions[str(interaction.id)] = (
            interaction,
            time.monotonic() + _INTERACTION_TTL_S,
        )
        user = str(interaction.user.id)
        text = " ".join(("!" + word, *args))
        command = ChatCommand(
            self.name,
            f"i:{interaction.id}:{user}",  # replies to this "room" are ephemeral followups
            user,
            text,
            f"interaction:{interaction.id}",
            False,
            (word, *args),
        )
        try:
            await self._on_command(command)
        except Exception:
            log.exception("discord /vigil %s failed", word)
            await interaction.followup.send(
                "Vigil could not record that just now; please try again.", ephemeral=True
            )
            return
        await interaction.followup.send(
            f"Vigil got `/vigil {' '.join((word, *args))}`. An alert shows the outcome; any"
            " answer appears here, only for you.",
            ephemeral=True,
        )

    async def on_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        """Refusals were answered in the check; anything else is logged and answered."""
        if isinstance(error, app_commands.CheckFailure):
            return
        log.error("discord command failed: %s", error, exc_info=error)
        if not interaction.response.is_done():
            await interaction.response.send_message("That did not work.", ephemeral=True)

    def _forget_old_interactions(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, until) in self._interactions.items() if until < now]:
            del self._interactions[key]

    # --- incoming: reactions and messages ----------------------------------------------

    async def reaction_added(self, payload: discord.RawReactionActionEvent) -> None:
        """A reaction under a message: the fallback for buttons (moderation checks it)."""
        client = self._client
        if client is None or client.user is None or payload.user_id == client.user.id:
            return
        if str(payload.guild_id) != self.guild_id or self._on_reaction is None:
            return
        key = str(payload.emoji)
        if button_for(key) is None:
            return
        # Discord gives reactions no id. Within one connection a replayed event keeps
        # its id (deduplicated); a reaction removed and added again is a new request.
        gen = self._reaction_gen.get((payload.message_id, payload.user_id, key), 0)
        event_id = f"reaction:{payload.message_id}:{payload.user_id}:{key}:{self._boot}.{gen}"
        reaction = ChatReaction(
            self.name,
            str(payload.channel_id),
            str(payload.message_id),
            key,
            str(payload.user_id),
            event_id,
        )
        try:
            await self._on_reaction(reaction)
        except Exception:
            log.exception("discord reaction on message %s failed", payload.message_id)

    def reaction_removed(self, payload: discord.RawReactionActionEvent) -> None:
        """Removing undoes nothing; it only lets the same reaction count again."""
        slot = (payload.message_id, payload.user_id, str(payload.emoji))
        self._reaction_gen[slot] = self._reaction_gen.get(slot, 0) + 1

    async def message_received(self, message: discord.Message) -> None:
        """Any text in a DM, ``!word`` in a staff channel (needs Message Content)."""
        if message.author.bot or self._on_command is None:
            return
        text = message.content.strip()
        is_direct = message.guild is None
        if not is_direct:
            if str(message.guild.id) != self.guild_id or str(message.channel.id) not in self.rooms:
                return
            if not text.startswith("!"):
                return
        words = text.removeprefix("!").split()
        if not words:
            return
        command = ChatCommand(
            self.name,
            str(message.channel.id),
            str(message.author.id),
            text,
            f"message:{message.id}",
            is_direct,
            (words[0].lower(), *words[1:]),
        )
        try:
            await self._on_command(command)
        except Exception:
            log.exception("discord command in message %s failed", message.id)

    # --- outgoing ----------------------------------------------------------------------

    async def _call(self, what: str, request: Callable[[], Awaitable[R]]) -> R:
        """One REST call; failures become ChatSendError the outbox understands."""
        try:
            return await request()
        except discord.RateLimited as error:
            raise ChatSendError(
                f"{self.name}: {what}: rate limited for {error.retry_after:.1f}s",
                retry_after=error.retry_after,
            ) from None
        except discord.DiscordServerError as error:
            raise ChatSendError(f"{self.name}: {what}: Discord error {error.status}") from None
        except discord.HTTPException as error:
            if error.status == 429:  # a 429 discord.py would not wait out (Cloudflare's)
                raise ChatSendError(
                    f"{self.name}: {what}: rate limited by Discord's edge", retry_after=60.0
                ) from None
            raise ChatSendError(
                f"{self.name}: {what}: refused ({error.status}, code {error.code}: {error.text})",
                errcode=f"discord.{error.code or error.status}",
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ChatSendError(
                f"{self.name}: {what}: Discord unreachable ({type(error).__name__})"
            ) from error

    def _mentions(self, message: ChatMessage) -> tuple[str, discord.AllowedMentions]:
        """The mention prefix and exactly what it may ping (nothing else ever pings)."""
        users = [m for m in message.mentions if m.isdigit()]
        roles = [m[1:] for m in message.mentions if m.startswith("&") and m[1:].isdigit()]
        everyone = False
        if message.mention_room or message.text.startswith("@room "):
            if self._mention_role:
                roles.insert(0, self._mention_role)
            else:
                everyone = True
        parts = ["@here"] if everyone else []
        parts += [f"<@&{r}>" for r in dict.fromkeys(roles)]
        parts += [f"<@{u}>" for u in dict.fromkeys(users)]
        allowed_mentions = discord.AllowedMentions(
            everyone=everyone,
            users=[discord.Object(int(u)) for u in users],
            roles=[discord.Object(int(r)) for r in roles],
        )
        return " ".join(parts), allowed_mentions

    def _payload(self, message: ChatMessage) -> dict[str, Any]:
        """send/edit keyword arguments: an embed with buttons for alerts, else text."""
        prefix, allowed_mentions = self._mentions(message)
        if is_alert(message):
            alert_id = alert_id_of(message.text)
            assert alert_id is not None
            return {
                "content": prefix or None,
                "embed": embed_for(message),
                "view": button_view(alert_id, open_ops(message)),
                "allowed_mentions": allowed_mentions,
            }
        text = message.text.removeprefix("@room ")
        if message.html is not None and not prefix:
            text = markdown(message.html)
        content = f"{prefix} {text}" if prefix else text
        return {"content": _cut(content, _CONTENT_MAX), "allowed_mentions": allowed_mentions}

    def _channel(self, room: str) -> discord.PartialMessageable:
        if not room.isdigit():
            raise ChatSendError(f"{self.name}: {room!r} is not a channel id", errcode="bad_room")
        return self.client.get_partial_messageable(int(room))

    @staticmethod
    def _nonce(txn_id: str | None) -> str | None:
        # Discord de-duplicates a send with the same nonce (enforce_nonce) for a while.
        if txn_id is None:
            return None
        return hashlib.sha256(txn_id.encode()).hexdigest()[:_NONCE_MAX]

    async def send(self, room: str, message: ChatMessage, *, txn_id: str | None = None) -> str:
        """Post a message (an alert as an embed with buttons); returns its id."""
        if room.startswith("i:"):
            return await self._answer_interaction(room, message, txn_id)
        channel = self._channel(room)
        kwargs = self._payload(message)
        sent = await self._call(
            f"send to {room}", lambda: channel.send(nonce=self._nonce(txn_id), **kwargs)
        )
        self._posted[str(sent.id)] = _Posted(
            alert_id_of(message.text),
            "view" in kwargs,
            open_ops(message) if "view" in kwargs else (),
        )
        return str(sent.id)

    async def edit(
        self, room: str, message_id: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> None:
        """Replace a message (an alert's embed and which buttons it offers)."""
        target = self._channel(room).get_partial_message(int(message_id))
        kwargs = self._payload(message)
        if not is_alert(message):
            kwargs.setdefault("embed", None)
        await self._call(f"edit {message_id}", lambda: target.edit(**kwargs))
        if "view" in kwargs:
            self._posted[message_id] = _Posted(alert_id_of(message.text), True, open_ops(message))

    async def react(
        self, room: str, message_id: str, key: str, *, txn_id: str | None = None
    ) -> str:
        """A "button" on a message. An alert has its buttons from the start (seeding them
        is a no-op, no rate-limited reaction calls); on any other message (a confirmation
        prompt) the key becomes a button; an emoji that is no button becomes a reaction."""
        button = button_for(key)
        if button is None:
            target = self._channel(room).get_partial_message(int(message_id))
            await self._call(f"react on {message_id}", lambda: target.add_reaction(key))
            return f"{message_id}:{key}"
        posted = self._posted.get(message_id) or await self._inspect(room, message_id)
        op = "confirm" if key == CONFIRM_KEY else button.op
        if posted.alert or op in posted.ops:
            return f"{message_id}:{op}"
        ops = (*posted.ops, op)
        view = button_view(posted.alert_id or 0, ops)
        target = self._channel(room).get_partial_message(int(message_id))
        await self._call(f"add a button to {message_id}", lambda: target.edit(view=view))
        self._posted[message_id] = _Posted(posted.alert_id, False, ops)
        return f"{message_id}:{op}"

    async def _inspect(self, room: str, message_id: str) -> _Posted:
        """What one of our messages carries (read once, e.g. after a restart)."""
        target = self._channel(room).get_partial_message(int(message_id))
        fetched = await self._call(f"read {message_id}", target.fetch)
        ops = []
        for row in fetched.components:
            for component in getattr(row, "children", ()):
                m = AlertButton.__discord_ui_compiled_template__.fullmatch(
                    getattr(component, "custom_id", None) or ""
                )
                if m:
                    ops.append(m["op"])
        text = fetched.embeds[0].title or "" if fetched.embeds else fetched.content
        posted = _Posted(alert_id_of(text), bool(fetched.embeds), tuple(ops))
        self._posted[message_id] = posted
        return posted

    async def direct_message(
        self, user: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> str:
        """Message one person in their DM channel with the bot (opened on first use)."""
        channel_id = await self.dm_channel(user)
        return await self.send(channel_id, message, txn_id=txn_id)

    async def dm_channel(self, user: str) -> str:
        """The DM channel id with ``user``: from state, or opened (user.create_dm) now."""
        key = f"{self.name}.dm.{user}"
        channel_id = await self._state.get_state(key)
        if channel_id is None:
            if not user.isdigit():
                raise ChatSendError(f"{self.name}: {user!r} is not a user id", errcode="bad_user")
            client = self.client
            dm = await self._call(
                f"open a DM with {user}", lambda: client.create_dm(discord.Object(int(user)))
            )
            channel_id = str(dm.id)
            await self._state.set_state(key, channel_id)
            log.info("discord opened DM channel=%s user=%s", channel_id, user)
        return channel_id

    async def _answer_interaction(self, room: str, message: ChatMessage, txn_id: str | None) -> str:
        """A reply to a slash command: ephemeral while the interaction lives, else a DM."""
        _, interaction_id, user = room.split(":", 2)
        entry = self._interactions.get(interaction_id)
        if entry is None or entry[1] < time.monotonic():
            return await self.direct_message(user, message, txn_id=txn_id)
        interaction = entry[0]
        content = _cut(message.text, _CONTENT_MAX)
        sent = await self._call(
            f"answer interaction {interaction_id}",
            lambda: interaction.followup.send(content, ephemeral=True, wait=True),
        )
        return str(sent.id)
