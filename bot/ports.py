"""The ports: what the core needs from a forum and from a chat system.

Adapters in ``adapters/`` implement these; the core depends only on the Protocols,
so it can be tested without a network and never imports a chat or forum SDK.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from bot.model import Parsed

# --- webhook sources -------------------------------------------------------------


class WebhookParser(Protocol):
    """Turns one signed delivery from a forum into a :class:`Parsed` event.

    ``parse`` gets the already-decoded JSON document (signature and size were
    checked first) and raises :class:`bot.model.PayloadError` with a reason that
    names the JSON path, never quoting the body.
    """

    signature_header: str
    delivery_header: str

    def parse(self, source: str, headers: Mapping[str, str], document: Any) -> Parsed: ...


# --- forum actions ---------------------------------------------------------------


class ActionKind(StrEnum):
    """What Vigil can ask a forum to do."""

    HIDE = "hide"
    UNHIDE = "unhide"
    DELETE = "delete"
    SUSPEND = "suspend"
    SILENCE = "silence"
    SITE_SETTING = "site_setting"  # change a forum-wide setting (a lockdown, bot.raids)


@dataclass(frozen=True, slots=True)
class ForumAction:
    """One side effect on the forum, with everything the forum API needs for it."""

    kind: ActionKind
    source: str
    post_id: str | None = None
    user_id: str | None = None
    report_id: str | None = None
    report_version: int | None = None
    report_actions: tuple[str, ...] = ()
    reason: str = ""
    until: str | None = None  # ISO 8601, for suspensions
    setting: str | None = None  # SITE_SETTING: the setting's name
    value: str | None = None  # SITE_SETTING: its new value


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """What came of a :class:`ForumAction`; ``simulated`` in dry-run mode."""

    ok: bool
    detail: str = ""
    simulated: bool = False


class ForumPort(Protocol):
    """A forum's moderation API. One method, so dry run is a one-line wrapper."""

    async def perform(self, action: ForumAction) -> ActionOutcome: ...


# --- chat ------------------------------------------------------------------------


class ChatError(Exception):
    """The chat system could not do what was asked."""


class ChatSendError(ChatError):
    """Sending failed. ``errcode`` set: the server refused (the outbox gives up after a
    few refusals); unset: unreachable (retried for as long as it takes). ``retry_after``
    (seconds) when the server asked to wait (a rate limit)."""

    def __init__(
        self, message: str, *, errcode: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A message for a chat room: plain text, optional HTML, people to mention."""

    text: str
    html: str | None = None
    mentions: tuple[str, ...] = ()  # chat user ids (Matrix ids, Discord ids)
    mention_room: bool = False  # notify everyone in the room (Matrix @room, Discord @here)


@dataclass(frozen=True, slots=True)
class ChatReaction:
    """Someone reacted to a message (a Matrix annotation, a Discord reaction/button)."""

    chat: str
    room: str
    message_id: str
    key: str
    sender: str
    event_id: str


@dataclass(frozen=True, slots=True)
class ChatCommand:
    """Someone typed a command (``!ack 12``) in a room or a direct message."""

    chat: str
    room: str
    sender: str
    text: str
    event_id: str
    is_direct: bool = False
    args: tuple[str, ...] = field(default=())


ReactionHandler = Callable[[ChatReaction], Awaitable[None]]
CommandHandler = Callable[[ChatCommand], Awaitable[None]]


class ChatPort(Protocol):
    """A chat system the staff read: post, edit, react, DM, and hear back."""

    name: str

    async def start(self, on_reaction: ReactionHandler, on_command: CommandHandler) -> None: ...

    async def stop(self) -> None: ...

    # ``txn_id``: the same id on a resend (after a crash or a retry) must not post twice;
    # the outbox derives it from its row. Matrix uses it as the transaction id.

    async def send(
        self, room: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> str: ...

    async def edit(
        self, room: str, message_id: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> None: ...

    async def react(
        self, room: str, message_id: str, key: str, *, txn_id: str | None = None
    ) -> str: ...

    async def direct_message(
        self, user: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> str: ...


# --- adapter state ---------------------------------------------------------------


class StateStore(Protocol):
    """Small durable key/value state an adapter keeps across restarts (sync tokens,
    DM room ids). :class:`bot.store.Store` implements it in the ``kv`` table."""

    async def get_state(self, key: str) -> str | None: ...

    async def set_state(self, key: str, value: str) -> None: ...
