"""The Matrix side of the chat port, on matrix-nio.

Delivery of incoming events is **at least once**: the sync token is persisted in the
state store only after the handlers for a whole sync batch have returned, so a crash
in between replays that batch on the next start. Handlers must therefore be
idempotent (key on ``ChatReaction.event_id`` / ``ChatCommand.event_id``). Within one
process, an in-memory set of recent event ids drops duplicates before they reach a
handler. On the very first start (no stored token) the bot syncs once without
timeline, so history from before the bot existed is never acted on.

Outgoing calls raise :class:`ChatSendError` when the homeserver is unreachable or
refuses; the caller's outbox retries later. A 429 is retried here, honouring the
server's ``retry_after_ms`` when it is short, and otherwise surfaces as a
``ChatSendError`` carrying ``retry_after`` for the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomPreset,
    RoomResolveAliasResponse,
    RoomSendResponse,
    SyncResponse,
    WhoamiResponse,
)

from bot.clock import Clock, SystemClock
from bot.ports import (  # ChatError, ChatSendError: re-exported, tests import them here
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

# The only event types the bot acts on; the server filters out everything else.
_EVENT_TYPES = ["m.room.message", "m.reaction"]
_RECENT_EVENTS = 10_000  # duplicate window within one process
_GAP_FILL_PAGES = 20  # pages of /messages fetched to fill one limited timeline
_HANDLER_ATTEMPTS = 3  # a handler that keeps failing on one event is skipped after this


def _pill(user_id: str) -> str:
    """An HTML mention link that Matrix clients render as a pill."""
    return f'<a href="https://matrix.to/#/{html.escape(user_id)}">{html.escape(user_id)}</a>'


def _strip_reply_fallback(body: str) -> str:
    """Drop the ``> <@user> quoted`` lines clients put in front of a reply's body."""
    lines = body.splitlines()
    while lines and lines[0].startswith(">"):
        lines.pop(0)
    return "\n".join(lines).strip()


class MatrixChat:
    """:class:`bot.ports.ChatPort` for a Matrix homeserver (matrix-nio, no encryption).

    ``rooms`` are room ids (``!abc:server``) or aliases (``#staff:server``); events
    are reported with the room *id*, use :meth:`resolve_room` to map a configured
    name to it. State keys: ``<name>.sync_token``, ``<name>.device_id``,
    ``<name>.dm.<user id>``.

    Commands: ``!word args`` in a configured room, and any text in a DM room the bot
    created; ``args[0]`` is the command word without ``!``, lower-cased. Handlers run
    inside the sync loop, so they must return promptly (queue long work) and be
    idempotent; one that raises gets the event again (up to 3 times, then it is
    skipped and logged). ``clock`` paces the backoff (``bot.clock.Clock``).
    """

    def __init__(
        self,
        homeserver: str,
        user_id: str,
        *,
        access_token: str | None = None,
        password: str | None = None,
        device_name: str = "vigil",
        rooms: Sequence[str] = (),
        state: StateStore,
        name: str = "matrix",
        sync_timeout_ms: int = 30_000,
        timeline_limit: int = 50,
        request_timeout: float = 20.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        send_attempts: int = 3,
        max_retry_wait: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not access_token and not password:
            raise ValueError(f"Matrix account {user_id}: set an access token or a password")
        self.name = name
        self.homeserver = homeserver.rstrip("/")
        self.user_id = user_id
        self._access_token = access_token
        self._password = password
        self._device_name = device_name
        self._configured = tuple(rooms)
        self._state = state
        self._sync_timeout_ms = sync_timeout_ms
        self._timeline_limit = timeline_limit
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._send_attempts = max(1, send_attempts)
        self._max_retry_wait = max_retry_wait
        self._clock: Clock = clock or SystemClock()

        self._client: AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_reaction: ReactionHandler | None = None
        self._on_command: CommandHandler | None = None
        self._room_ids: dict[str, str] = {}  # configured name -> room id
        self._rooms: set[str] = set()  # ids of configured rooms the bot is in
        self._dm_rooms: dict[str, str] = {}  # room id -> the user it is a DM with
        self._dm_locks: dict[str, asyncio.Lock] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._failures: dict[str, int] = {}
        self.sync_count = 0  # successful sync batches handled, for health and tests
        self.sync_failures = 0  # consecutive failed syncs; non-zero means the feed is stale

    # --- lifecycle ---------------------------------------------------------------

    def _key(self, suffix: str) -> str:
        """A state key of this adapter (``matrix.sync_token`` for the default name)."""
        return f"{self.name}.{suffix}"

    @property
    def missing_rooms(self) -> tuple[str, ...]:
        """Configured rooms the bot could not join (yet); a health check should alert."""
        return tuple(room for room in self._configured if room not in self._room_ids)

    async def start(self, on_reaction: ReactionHandler, on_command: CommandHandler) -> None:
        """Log in, join the rooms, and run the sync loop in a task.

        Raises :class:`ChatError` if the homeserver rejects the credentials or cannot
        be reached; a room that cannot be joined yet is logged and joined on invite.
        """
        if self._task is not None:
            raise ChatError(f"{self.name}: already started")
        self._on_reaction, self._on_command = on_reaction, on_command
        config = AsyncClientConfig(
            max_limit_exceeded=0,  # 429s are retried by _call, which caps the wait
            max_timeouts=2,
            backoff_factor=0.2,
            max_timeout_retry_wait_time=5.0,
            request_timeout=self._request_timeout,
            encryption_enabled=False,
            store_sync_tokens=False,
        )
        self._client = AsyncClient(self.homeserver, self.user_id, config=config)
        try:
            await self._log_in()
            for room in self._configured:
                await self._join_configured(room)
            since = await self._state.get_state(self._key("sync_token"))
            if since is None:
                since = await self._initial_sync_token()
                await self._state.set_state(self._key("sync_token"), since)
        except BaseException:
            await self._client.close()
            self._client = None
            raise
        self._task = asyncio.create_task(self._sync_loop(since), name=f"{self.name}-sync")
        log.info("matrix started user=%s rooms=%d", self.user_id, len(self._rooms))

    async def stop(self) -> None:
        """Cancel the sync loop and close the HTTP session."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # already dead; stopping must still close the client
                log.exception("matrix sync loop had died")
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _log_in(self) -> None:
        client = self._require_client()
        if self._password:
            client.device_id = await self._state.get_state(self._key("device_id")) or ""
            response = await self._call(
                "log in", lambda: client.login(self._password, device_name=self._device_name)
            )
            assert isinstance(response, LoginResponse)
            await self._state.set_state(self._key("device_id"), response.device_id)
            self.user_id = response.user_id
            return
        client.access_token = self._access_token or ""
        response = await self._call("check the access token", client.whoami)
        assert isinstance(response, WhoamiResponse)
        client.user_id = self.user_id = response.user_id
        client.device_id = response.device_id or ""

    async def _join_configured(self, room: str) -> None:
        client = self._require_client()
        try:
            response = await self._call(f"join {room}", lambda: client.join(room))
        except ChatSendError as error:
            if error.errcode is None:  # unreachable, not refused: do not start half-blind
                raise
            log.warning(
                "matrix cannot join room=%s errcode=%s; will join when invited",
                room,
                error.errcode,
            )
            return
        assert isinstance(response, JoinResponse)
        self._room_ids[room] = response.room_id
        self._rooms.add(response.room_id)

    async def _initial_sync_token(self) -> str:
        """One sync without timeline: the point from which events count."""
        client = self._require_client()
        empty = {"types": []}
        sync_filter = {
            # Synapse caches identical /sync requests for minutes; a fresh field makes
            # this one unique, so a restart cannot get an older instance's stale token.
            "org.vigil.nonce": uuid.uuid4().hex,
            "presence": empty,
            "account_data": empty,
            "room": {
                "timeline": {"limit": 0},
                "state": empty,
                "ephemeral": empty,
                "account_data": empty,
            },
        }
        response = await self._call(
            "initial sync", lambda: client.sync(timeout=0, sync_filter=sync_filter)
        )
        assert isinstance(response, SyncResponse)
        return response.next_batch

    # --- sync loop ---------------------------------------------------------------

    def _loop_filter(self) -> dict[str, Any]:
        empty = {"types": []}
        return {
            "presence": empty,
            "account_data": empty,
            "room": {
                "timeline": {"limit": self._timeline_limit, "types": _EVENT_TYPES},
                "state": {"lazy_load_members": True, "types": []},
                "ephemeral": empty,
                "account_data": empty,
            },
        }

    async def _sync_loop(self, since: str) -> None:
        sync_filter = self._loop_filter()
        delay = self._backoff_initial
        while True:
            try:
                next_batch, wait = await self._sync_once(since, sync_filter)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one bad batch
                log.exception("matrix sync batch failed")
                next_batch, wait = None, 0.0
            if next_batch is None:
                self.sync_failures += 1
                await self._clock.sleep(max(delay, wait))
                delay = min(delay * 2, self._backoff_max)
                continue
            since = next_batch
            self.sync_failures = 0
            self.sync_count += 1
            delay = self._backoff_initial

    async def _sync_once(self, since: str, sync_filter: dict[str, Any]) -> tuple[str | None, float]:
        """One long poll and its handlers; (next token, or None and a wait to honour)."""
        client = self._require_client()
        try:
            response = await client.sync(
                timeout=self._sync_timeout_ms, sync_filter=sync_filter, since=since
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning(
                "matrix sync failed error=%s failures=%d", type(error).__name__, self.sync_failures
            )
            return None, 0.0
        if isinstance(response, ErrorResponse):
            log.warning(
                "matrix sync refused errcode=%s failures=%d",
                response.status_code,
                self.sync_failures,
            )
            if response.status_code == "M_UNKNOWN_TOKEN" and self._password:
                with contextlib.suppress(ChatError):
                    await self._log_in()
            return None, (response.retry_after_ms or 0) / 1000
        if not await self._handle_sync(response, since):
            # A handler failed: sync again from the same token so it is retried.
            log.warning("matrix handler failed; the batch will be retried")
            return None, 0.0
        await self._state.set_state(self._key("sync_token"), response.next_batch)
        return response.next_batch, 0.0

    async def _handle_sync(self, response: SyncResponse, since: str) -> bool:
        """Run the handlers for one batch; False if an event should be retried."""
        for room_id in response.rooms.invite:
            await self._consider_invite(room_id)
        all_done = True
        for room_id, info in response.rooms.join.items():
            events = [event.source for event in info.timeline.events]
            if room_id not in self._rooms and not await self._learn_dm(room_id, events):
                continue
            if info.timeline.limited and info.timeline.prev_batch:
                events = await self._fill_gap(room_id, info.timeline.prev_batch, since) + events
            for event in events:
                if not await self._handle_event(room_id, event):
                    all_done = False
        return all_done

    async def _fill_gap(self, room_id: str, prev_batch: str, since: str) -> list[dict[str, Any]]:
        """Fetch the events a limited timeline left out, back to ``since``, oldest first."""
        client = self._require_client()
        missed: list[dict[str, Any]] = []
        token = prev_batch
        for _ in range(_GAP_FILL_PAGES):
            try:
                page = await self._call(
                    "fetch missed events",
                    lambda token=token: client.room_messages(  # type: ignore[misc]
                        room_id,
                        start=token,
                        end=since,
                        direction=MessageDirection.back,
                        limit=100,
                        message_filter={"types": _EVENT_TYPES},
                    ),
                )
            except ChatSendError as error:
                log.warning("matrix gap fill failed room=%s error=%s", room_id, error)
                break
            assert isinstance(page, RoomMessagesResponse)
            missed.extend(event.source for event in page.chunk)
            if not page.chunk or not page.end or page.end == token:
                break
            token = page.end
        else:
            log.warning("matrix gap fill stopped after %d pages room=%s", _GAP_FILL_PAGES, room_id)
        missed.reverse()
        return missed

    async def _consider_invite(self, room_id: str) -> None:
        # Invites only count for configured rooms the bot could not join at start;
        # DMs are always created by the bot, so other invites are left alone.
        if room_id not in self.missing_rooms:
            return
        try:
            await self._join_configured(room_id)
        except ChatError as error:
            log.warning("matrix could not accept invite room=%s error=%s", room_id, error)

    async def _learn_dm(self, room_id: str, events: list[dict[str, Any]]) -> bool:
        """True if ``room_id`` is the bot's DM with someone (known, or found in state)."""
        if room_id in self._dm_rooms:
            return True
        for sender in {event.get("sender") for event in events}:
            if not isinstance(sender, str) or sender == self.user_id:
                continue
            if await self._state.get_state(self._key(f"dm.{sender}")) == room_id:
                self._dm_rooms[room_id] = sender
                return True
        return False

    def _remember(self, event_id: str) -> None:
        self._recent[event_id] = None
        if len(self._recent) > _RECENT_EVENTS:
            self._recent.popitem(last=False)

    async def _handle_event(self, room_id: str, event: dict[str, Any]) -> bool:
        """Turn one raw event into a handler call; False if the handler should retry it."""
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or event_id in self._recent:
            return True
        sender = event.get("sender")
        partner = self._dm_rooms.get(room_id)
        if (
            not isinstance(sender, str)
            or sender == self.user_id
            or (room_id not in self._rooms and sender != partner)
        ):
            self._remember(event_id)
            return True
        try:
            await self._dispatch(room_id, event_id, sender, event)
        except asyncio.CancelledError:
            raise
        except Exception:
            failures = self._failures.get(event_id, 0) + 1
            if failures < _HANDLER_ATTEMPTS:
                self._failures[event_id] = failures
                log.exception("matrix handler failed event=%s attempt=%d", event_id, failures)
                return False
            log.exception("matrix handler failed event=%s; giving up on it", event_id)
        self._failures.pop(event_id, None)
        self._remember(event_id)
        return True

    async def _dispatch(
        self, room_id: str, event_id: str, sender: str, event: dict[str, Any]
    ) -> None:
        content = event.get("content")
        if not isinstance(content, dict):
            return
        kind = event.get("type")
        if kind == "m.reaction":
            relation = content.get("m.relates_to")
            if not isinstance(relation, dict) or relation.get("rel_type") != "m.annotation":
                return
            target, key = relation.get("event_id"), relation.get("key")
            if isinstance(target, str) and isinstance(key, str):
                assert self._on_reaction is not None
                await self._on_reaction(
                    ChatReaction(self.name, room_id, target, key, sender, event_id)
                )
            return
        if kind != "m.room.message" or content.get("msgtype") != "m.text":
            return  # m.notice is what bots send; never treat it as a command
        relation = content.get("m.relates_to")
        if isinstance(relation, dict) and relation.get("rel_type") == "m.replace":
            return  # an edited command must not run twice
        body = content.get("body")
        if not isinstance(body, str):
            return
        text = _strip_reply_fallback(body)
        is_direct = room_id not in self._rooms
        if not text.startswith("!") and not is_direct:
            return
        words = text.removeprefix("!").split()
        if not words:
            return
        args = (words[0].lower(), *words[1:])
        assert self._on_command is not None
        await self._on_command(
            ChatCommand(self.name, room_id, sender, text, event_id, is_direct, args)
        )

    # --- sending -----------------------------------------------------------------

    def _require_client(self) -> AsyncClient:
        if self._client is None:
            raise ChatError(f"{self.name}: not started")
        return self._client

    async def _call(self, what: str, request: Callable[[], Awaitable[R]]) -> R:
        """Run one nio request; retry short 429s; raise ChatSendError on failure."""
        for attempt in range(1, self._send_attempts + 1):
            try:
                response = await request()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise ChatSendError(
                    f"{self.name}: {what}: homeserver {self.homeserver} unreachable "
                    f"({type(error).__name__})"
                ) from error
            if not isinstance(response, ErrorResponse):
                return response
            retry_after = response.retry_after_ms / 1000 if response.retry_after_ms else None
            if (
                response.status_code == "M_LIMIT_EXCEEDED"
                and attempt < self._send_attempts
                and (retry_after or 1.0) <= self._max_retry_wait
            ):
                log.warning(
                    "matrix rate limited during %s; retry_in=%.2fs", what, retry_after or 1.0
                )
                await self._clock.sleep(retry_after or 1.0)
                continue
            raise ChatSendError(
                f"{self.name}: {what}: {response.status_code or 'error'} {response.message}",
                errcode=response.status_code,
                retry_after=retry_after,
            )
        raise AssertionError("unreachable")  # the loop returns or raises

    async def resolve_room(self, room: str) -> str:
        """The room id for a configured name, an alias, or an id."""
        if room in self._room_ids:
            return self._room_ids[room]
        if not room.startswith("#"):
            return room
        client = self._require_client()
        response = await self._call(f"resolve {room}", lambda: client.room_resolve_alias(room))
        assert isinstance(response, RoomResolveAliasResponse)
        self._room_ids[room] = response.room_id
        return response.room_id

    async def _send_event(
        self, room: str, event_type: str, content: dict[str, Any], txn_id: str | None
    ) -> str:
        client = self._require_client()
        room_id = await self.resolve_room(room)
        # One transaction id across our retries, so the homeserver de-duplicates them.
        tx = txn_id or uuid.uuid4().hex
        response = await self._call(
            f"send {event_type} to {room_id}",
            lambda: client.room_send(room_id, event_type, content, tx_id=tx),
        )
        assert isinstance(response, RoomSendResponse)
        return response.event_id

    @staticmethod
    def _content(message: ChatMessage) -> dict[str, Any]:
        """m.text content with HTML and intentional mentions that make phones ping."""
        body, formatted = message.text, message.html
        missing = [user for user in message.mentions if user not in body]
        if missing:
            body = " ".join(missing) + ": " + body
        if message.mentions:
            if formatted is None:
                formatted = html.escape(message.text).replace("\n", "<br>")
            pills = [_pill(user) for user in message.mentions if _pill(user) not in formatted]
            if pills:
                formatted = " ".join(pills) + ": " + formatted
        mentions: dict[str, Any] = {}
        if message.mentions:
            mentions["user_ids"] = list(message.mentions)
        if message.mention_room:
            # Intentional mentions notify on "room": true; "@room" in the body is for
            # readers and older clients. Either needs the bot's power level to be at
            # least the room's notifications.room (50 by default).
            mentions["room"] = True
            if "@room" not in body:
                body = "@room " + body
            if formatted is not None and "@room" not in formatted:
                formatted = "@room " + formatted
        content: dict[str, Any] = {
            "msgtype": "m.text",
            "body": body,
            # Always present: an empty object means "pings nobody" to modern clients.
            "m.mentions": mentions,
        }
        if formatted is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = formatted
        return content

    async def send(self, room: str, message: ChatMessage, *, txn_id: str | None = None) -> str:
        """Post a message; returns its event id. ``txn_id`` makes a resend idempotent."""
        return await self._send_event(room, "m.room.message", self._content(message), txn_id)

    async def edit(
        self, room: str, message_id: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> None:
        """Replace a message's text (m.replace). Edits never ping anyone."""
        new = self._content(message)
        content: dict[str, Any] = {
            "msgtype": "m.text",
            "body": "* " + new["body"],
            "m.new_content": new,
            "m.mentions": {},
            "m.relates_to": {"rel_type": "m.replace", "event_id": message_id},
        }
        if "formatted_body" in new:
            content["format"] = new["format"]
            content["formatted_body"] = "* " + new["formatted_body"]
        await self._send_event(room, "m.room.message", content, txn_id)

    async def react(
        self, room: str, message_id: str, key: str, *, txn_id: str | None = None
    ) -> str:
        """Add the bot's own reaction (a "button") to a message; returns its event id."""
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": message_id, "key": key}}
        return await self._send_event(room, "m.reaction", content, txn_id)

    async def direct_message(
        self, user: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> str:
        """Message one person in the bot's DM room with them (created on first use)."""
        room_id = await self.dm_room(user)
        return await self.send(room_id, message, txn_id=txn_id)

    async def dm_room(self, user: str) -> str:
        """The DM room with ``user``: from state, or created and invited now."""
        lock = self._dm_locks.setdefault(user, asyncio.Lock())
        async with lock:
            key = self._key(f"dm.{user}")
            room_id = await self._state.get_state(key)
            if room_id is None:
                client = self._require_client()
                response = await self._call(
                    f"create a DM room with {user}",
                    lambda: client.room_create(
                        is_direct=True, invite=[user], preset=RoomPreset.trusted_private_chat
                    ),
                )
                assert isinstance(response, RoomCreateResponse)
                room_id = response.room_id
                await self._state.set_state(key, room_id)
                log.info("matrix created DM room=%s user=%s", room_id, user)
            self._dm_rooms[room_id] = user
            return room_id
