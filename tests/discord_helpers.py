"""Discord for the tests: a fake Discord on loopback, and spec_set mocks of discord.py.

Discord's servers cannot run here, so :class:`FakeDiscord` answers the REST routes
and the gateway websocket that :mod:`adapters.discord_chat` uses, on 127.0.0.1.
discord.py itself is unchanged: the ``fake_discord`` fixture only points its base
URL (``discord.http.Route.BASE``) and its gateway URL at the fake, so the real
request code runs, with its JSON bodies, its 429 handling and its webhook followups.
The fake holds what the bot posted (messages with their embeds and components),
enforces message nonces like Discord, can refuse or rate-limit chosen calls, and
can deliver gateway events (interactions, reactions, DMs) as Discord would.

The mocks (:func:`mock_interaction`, :func:`mock_member`, …) follow python-discord's
pattern: ``spec_set`` from real discord.py instances, so a test that touches an
attribute the real class lacks fails, and they pass ``isinstance`` checks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import unittest.mock
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from aiohttp import web
from discord.gateway import DiscordWebSocket

GUILD_ID = 900_000_000_000_000_001
APP_ID = 900_000_000_000_000_002
BOT_ID = APP_ID
TOKEN = "test-discord-token"
TIMESTAMP = "2026-01-01T00:00:00+00:00"


def user_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    """A Discord user object."""
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
    }


def member_payload(user_id: int, name: str) -> dict[str, Any]:
    """A guild member object (as interactions carry it)."""
    return {
        "user": user_payload(user_id, name),
        "roles": [],
        "joined_at": TIMESTAMP,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "permissions": "0",
    }


@dataclass
class Call:
    """One REST request the bot made."""

    method: str
    path: str
    body: Any
    query: dict[str, str]


@dataclass
class Posted:
    """A message on the fake Discord."""

    payload: dict[str, Any]
    edits: list[dict[str, Any]] = field(default_factory=list)
    reactions: list[str] = field(default_factory=list)

    @property
    def id(self) -> int:
        return int(self.payload["id"])

    @property
    def channel_id(self) -> int:
        return int(self.payload["channel_id"])

    @property
    def embed(self) -> dict[str, Any] | None:
        embeds = self.payload.get("embeds") or []
        return embeds[0] if embeds else None

    @property
    def text(self) -> str:
        """Content, embed title and description: what a person reads."""
        embed = self.embed or {}
        parts = [
            self.payload.get("content") or "",
            embed.get("title", ""),
            embed.get("description", ""),
        ]
        return "\n".join(p for p in parts if p)

    @property
    def custom_ids(self) -> list[str]:
        return [
            c["custom_id"]
            for row in self.payload.get("components") or []
            for c in row.get("components", [])
            if "custom_id" in c
        ]

    def buttons(self) -> list[dict[str, Any]]:
        return [
            c for row in self.payload.get("components") or [] for c in row.get("components", [])
        ]


@dataclass
class Failure:
    """Answer the next ``times`` matching requests with ``status`` and ``body``."""

    method: str
    path: re.Pattern[str]
    status: int
    body: dict[str, Any]
    times: int = 1


class FakeDiscord:
    """Discord's REST API and gateway, as far as Vigil uses them, on loopback."""

    def __init__(self) -> None:
        self.ids = itertools.count(1_400_000_000_000_000_000)
        self.calls: list[Call] = []
        self.messages: dict[int, Posted] = {}
        self.nonces: dict[tuple[int, str], int] = {}
        self.dm_channels: dict[int, int] = {}  # user id -> DM channel id
        self.closed_dms: set[int] = set()  # users who do not accept DMs
        self.commands: list[dict[str, Any]] = []
        self.interaction_responses: list[tuple[int, dict[str, Any]]] = []
        self.followups: list[dict[str, Any]] = []
        self.failures: list[Failure] = []
        self.identified: list[dict[str, Any]] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- test controls --------------------------------------------------------------

    def fail(
        self, method: str, path: str, status: int, body: dict[str, Any], times: int = 1
    ) -> None:
        """Make the next ``times`` requests matching ``method`` and the ``path`` regex fail."""
        self.failures.append(Failure(method, re.compile(path), status, body, times))

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.fullmatch(path_regex, c.path)]

    def channel_messages(self, channel_id: int | str) -> list[Posted]:
        return [m for m in self.messages.values() if m.channel_id == int(channel_id)]

    def alerts(self, channel_id: int | str) -> list[Posted]:
        return [m for m in self.channel_messages(channel_id) if m.embed and "alert #" in m.text]

    def dms_to(self, user_id: int | str) -> list[str]:
        channel = self.dm_channels.get(int(user_id))
        return [] if channel is None else [m.text for m in self.channel_messages(channel)]

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway event to every connected bot."""
        frame = json.dumps({"op": 0, "t": event, "s": next(self.seq), "d": data})
        for ws in list(self.sockets):
            await ws.send_str(frame)

    async def click(
        self, message: Posted, custom_id: str, user_id: int, name: str = "someone"
    ) -> int:
        """A staff member presses a button: an INTERACTION_CREATE (component) event."""
        interaction_id = next(self.ids)
        await self.dispatch(
            "INTERACTION_CREATE",
            {
                "id": str(interaction_id),
                "application_id": str(APP_ID),
                "type": 3,
                "token": f"token-{interaction_id}",
                "version": 1,
                "guild_id": str(GUILD_ID),
                "channel_id": str(message.channel_id),
                "channel": {
                    "id": str(message.channel_id),
                    "type": 0,
                    "guild_id": str(GUILD_ID),
                    "name": "staff",
                    "position": 0,
                },
                "member": member_payload(user_id, name),
                "message": message.payload,
                "data": {"custom_id": custom_id, "component_type": 2},
                "locale": "en-US",
                "guild_locale": "en-US",
                "app_permissions": "0",
                "attachment_size_limit": 8_388_608,
                "entitlements": [],
                "authorizing_integration_owners": {},
                "context": 0,
            },
        )
        return interaction_id

    async def command(
        self,
        sub: str,
        user_id: int,
        *,
        channel_id: int,
        options: list[dict[str, Any]] | None = None,
    ) -> int:
        """Someone types ``/vigil <sub> …``: an INTERACTION_CREATE (application command)."""
        interaction_id = next(self.ids)
        vigil = next(c for c in self.commands if c["name"] == "vigil")
        await self.dispatch(
            "INTERACTION_CREATE",
            {
                "id": str(interaction_id),
                "application_id": str(APP_ID),
                "type": 2,
                "token": f"token-{interaction_id}",
                "version": 1,
                "guild_id": str(GUILD_ID),
                "channel_id": str(channel_id),
                "channel": {
                    "id": str(channel_id),
                    "type": 0,
                    "guild_id": str(GUILD_ID),
                    "name": "staff",
                    "position": 0,
                },
                "member": member_payload(user_id, "someone"),
                "data": {
                    "id": vigil["id"],
                    "name": "vigil",
                    "type": 1,
                    "guild_id": str(GUILD_ID),
                    "options": [{"name": sub, "type": 1, "options": options or []}],
                },
                "locale": "en-US",
                "guild_locale": "en-US",
                "app_permissions": "0",
                "attachment_size_limit": 8_388_608,
                "entitlements": [],
                "authorizing_integration_owners": {},
                "context": 0,
            },
        )
        return interaction_id

    async def dm_from(self, user_id: int, text: str) -> None:
        """Someone writes to the bot in their DM channel: a MESSAGE_CREATE without a guild."""
        channel = self.dm_channels.setdefault(user_id, next(self.ids))
        payload = self._message(channel, {"content": text}, user_payload(user_id, "person"))
        self.messages[int(payload["id"])] = Posted(payload)
        await self.dispatch("MESSAGE_CREATE", payload)

    def responses_to(self, interaction_id: int) -> list[dict[str, Any]]:
        """The interaction's callback (defer or message), then its followups, in order."""
        first = [b for i, b in self.interaction_responses if i == interaction_id]
        later = [f for f in self.followups if f["token"] == f"token-{interaction_id}"]
        return first + later

    async def react(self, message: Posted, emoji: str, user_id: int) -> None:
        """Someone adds a reaction: a MESSAGE_REACTION_ADD event."""
        await self.dispatch(
            "MESSAGE_REACTION_ADD",
            {
                "user_id": str(user_id),
                "channel_id": str(message.channel_id),
                "message_id": str(message.id),
                "guild_id": str(GUILD_ID),
                "emoji": {"id": None, "name": emoji},
                "burst": False,
                "type": 0,
                "member": member_payload(user_id, "someone"),
            },
        )

    # --- gateway --------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 60_000}}))
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("op") == 2:  # IDENTIFY
                self.identified.append(frame["d"])
                if frame["d"].get("token") != TOKEN:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                self.sockets.append(ws)
                ready = {
                    "v": 10,
                    "user": user_payload(BOT_ID, "vigil", bot=True),
                    "guilds": [],
                    "session_id": "fake-session",
                    "resume_gateway_url": f"{self.base_url.replace('http', 'ws')}/gateway",
                    "application": {"id": str(APP_ID), "flags": 0},
                }
                await ws.send_str(
                    json.dumps({"op": 0, "t": "READY", "s": next(self.seq), "d": ready})
                )
            elif frame.get("op") == 1:  # heartbeat
                await ws.send_str(json.dumps({"op": 11}))
        if ws in self.sockets:
            self.sockets.remove(ws)
        return ws

    # --- REST -----------------------------------------------------------------------

    def _message(
        self, channel_id: int, body: dict[str, Any], author: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "id": str(next(self.ids)),
            "channel_id": str(channel_id),
            "author": author,
            "content": body.get("content") or "",
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "attachments": [],
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": False,
            "type": 0,
            "timestamp": TIMESTAMP,
            "edited_timestamp": None,
            "flags": body.get("flags") or 0,
            "nonce": body.get("nonce"),
        }

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json" and raw:
                body = json.loads(raw)
            elif raw:
                form = await _multipart_json(request, raw)
                body = form
        self.calls.append(Call(request.method, path, body, dict(request.query)))
        if request.headers.get("Authorization") not in (f"Bot {TOKEN}", None):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        for failure in self.failures:
            if (
                failure.times > 0
                and failure.method == request.method
                and failure.path.fullmatch(path)
            ):
                failure.times -= 1
                headers = {}
                if failure.status == 429:
                    headers = {
                        "Via": "1.1 google",  # discord.py reads a 429 without it as a ban
                        "X-RateLimit-Scope": "user",
                        "Retry-After": str(failure.body.get("retry_after", 1)),
                    }
                return _json(failure.body, status=failure.status, headers=headers)
        return await self._route(request.method, path, body or {}, dict(request.query))

    async def _route(
        self, method: str, path: str, body: dict[str, Any], query: dict[str, str]
    ) -> web.StreamResponse:
        bot = user_payload(BOT_ID, "vigil", bot=True)
        if method == "GET" and path == "/users/@me":
            return _json(bot)
        if method == "GET" and path == "/oauth2/applications/@me":
            return _json(
                {
                    "id": str(APP_ID),
                    "name": "Vigil",
                    "description": "",
                    "icon": None,
                    "bot_public": False,
                    "bot_require_code_grant": False,
                    "owner": user_payload(1, "owner"),
                    "verify_key": "00",
                    "flags": 0,
                }
            )
        m = re.fullmatch(r"/applications/(\d+)/guilds/(\d+)/commands", path)
        if m and method == "PUT":
            self.commands = [
                {
                    **c,
                    "id": str(next(self.ids)),
                    "application_id": m.group(1),
                    "guild_id": m.group(2),
                    "version": "1",
                }
                for c in body
            ]
            return _json(self.commands)
        m = re.fullmatch(r"/channels/(\d+)/messages", path)
        if m and method == "POST":
            channel = int(m.group(1))
            if channel in self.dm_channels.values():
                user = next(u for u, c in self.dm_channels.items() if c == channel)
                if user in self.closed_dms:
                    return _json(
                        {"message": "Cannot send messages to this user", "code": 50007}, status=403
                    )
            nonce = body.get("nonce")
            if nonce and body.get("enforce_nonce") and (channel, nonce) in self.nonces:
                return _json(self.messages[self.nonces[(channel, nonce)]].payload)
            payload = self._message(channel, body, bot)
            posted = Posted(payload)
            self.messages[posted.id] = posted
            if nonce:
                self.nonces[(channel, nonce)] = posted.id
            return _json(payload)
        m = re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path)
        if m and int(m.group(2)) in self.messages:
            posted = self.messages[int(m.group(2))]
            if method == "PATCH":
                posted.edits.append(body)
                for key in ("content", "embeds", "components"):
                    if key in body:
                        posted.payload[key] = (
                            body[key] if body[key] is not None else ([] if key != "content" else "")
                        )
                posted.payload["edited_timestamp"] = TIMESTAMP
                return _json(posted.payload)
            if method == "GET":
                return _json(posted.payload)
        m = re.fullmatch(r"/channels/(\d+)/messages/(\d+)/reactions/([^/]+)/@me", path)
        if m and method == "PUT" and int(m.group(2)) in self.messages:
            self.messages[int(m.group(2))].reactions.append(m.group(3))
            return web.Response(status=204)
        if method == "POST" and path == "/users/@me/channels":
            user = int(body["recipient_id"])
            channel = self.dm_channels.setdefault(user, next(self.ids))
            return _json(
                {
                    "id": str(channel),
                    "type": 1,
                    "recipients": [user_payload(user, "person")],
                    "last_message_id": None,
                }
            )
        m = re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path)
        if m and method == "POST":
            self.interaction_responses.append((int(m.group(1)), body))
            flags = (body.get("data") or {}).get("flags", 0)
            return _json(
                {
                    "interaction": {
                        "id": m.group(1),
                        "type": 3,
                        "response_message_loading": body.get("type") == 5,
                        "response_message_ephemeral": bool(flags & 64),
                    }
                }
            )
        m = re.fullmatch(r"/webhooks/(\d+)/([^/]+)", path)
        if m and method == "POST":
            payload = self._message(0, body, bot)
            payload["webhook_id"] = m.group(1)
            self.followups.append({**body, "token": m.group(2)})
            return _json(payload)
        return _json({"message": f"404: Not Found {method} {path}", "code": 0}, status=404)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py decodes JSON only for exactly "application/json" (no charset parameter).
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


async def _multipart_json(request: web.Request, raw: bytes) -> dict[str, Any]:
    # discord.py sends payload_json in a multipart form when it attaches files; Vigil never does.
    text = raw.decode(errors="replace")
    m = re.search(
        r'name="payload_json"\r\n(?:Content-Type: [^\r]+\r\n)?\r\n(.*?)\r\n--', text, re.S
    )
    return json.loads(m.group(1)) if m else {}


@pytest.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A fake Discord; discord.py's REST base URL and gateway point at it for the test."""
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", f"{fake.base_url}/api/v10")
    monkeypatch.setattr(
        DiscordWebSocket,
        "DEFAULT_GATEWAY",
        yarl.URL(f"{fake.base_url.replace('http', 'ws')}/gateway"),
    )
    try:
        yield fake
    finally:
        await fake.stop()


async def eventually(condition: Callable[[], Any], what: str, deadline: float = 4.5) -> Any:
    """Poll ``condition`` until truthy (the bot works in its own tasks)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval, not a wait for behaviour


# --- spec_set mocks ------------------------------------------------------------------

_state = unittest.mock.MagicMock()
_guild = discord.Guild(data={"id": str(GUILD_ID), "name": "staff"}, state=_state)  # type: ignore[typeddict-item]
_member_instance = discord.Member(
    data=member_payload(1, "member"),  # type: ignore[arg-type]
    guild=_guild,
    state=_state,
)
_user_instance = discord.User(data=user_payload(1, "user"), state=_state)  # type: ignore[arg-type]


def mock_member(user_id: int, name: str = "member") -> unittest.mock.Mock:
    """A ``discord.Member`` (spec_set: only real attributes exist)."""
    member = unittest.mock.Mock(spec_set=_member_instance)
    member.id = user_id
    member.name = name
    member.bot = False
    member.mention = f"<@{user_id}>"
    return member


def mock_user(user_id: int, name: str = "user") -> unittest.mock.Mock:
    """A ``discord.User`` (spec_set)."""
    user = unittest.mock.Mock(spec_set=_user_instance)
    user.id = user_id
    user.name = name
    user.bot = False
    return user


def mock_message(message_id: int, channel_id: int) -> unittest.mock.Mock:
    """A ``discord.Message`` the bot posted (spec_set)."""
    message = unittest.mock.Mock(spec_set=discord.Message)
    message.id = message_id
    message.channel = discord.PartialMessageable(state=_state, id=channel_id)
    return message


@dataclass
class Responses:
    """What an interaction was answered with, in order."""

    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log]


def mock_interaction(
    client: discord.Client,
    user: unittest.mock.Mock,
    *,
    interaction_id: int,
    guild_id: int | None = GUILD_ID,
    channel_id: int = 0,
    message: unittest.mock.Mock | None = None,
    command_name: str | None = None,
) -> tuple[unittest.mock.Mock, Responses]:
    """A ``discord.Interaction`` whose response and followup record what the bot did.

    The response is a spec_set ``InteractionResponse``: ``defer`` / ``send_message``
    record themselves and then ``is_done()`` is true, as on the real class.
    """
    responses = Responses()
    interaction = unittest.mock.Mock(spec_set=discord.Interaction)
    interaction.id = interaction_id
    interaction.client = client
    interaction.user = user
    interaction.guild_id = guild_id
    interaction.channel_id = channel_id
    interaction.message = message
    interaction.data = {}
    if command_name is None:
        interaction.command = None
    else:
        command = unittest.mock.Mock(spec_set=discord.app_commands.Command)
        command.name = command_name
        interaction.command = command

    response = unittest.mock.Mock(spec_set=discord.InteractionResponse)
    done = {"value": False}

    async def defer(**kw: Any) -> None:
        assert not done["value"], "an interaction is answered once"
        done["value"] = True
        responses.log.append(("defer", kw))

    async def send_message(content: str | None = None, **kw: Any) -> None:
        assert not done["value"], "an interaction is answered once"
        done["value"] = True
        responses.log.append(("send_message", {"content": content, **kw}))

    response.defer = unittest.mock.AsyncMock(side_effect=defer)
    response.send_message = unittest.mock.AsyncMock(side_effect=send_message)
    response.is_done = unittest.mock.Mock(side_effect=lambda: done["value"])
    interaction.response = response

    followup = unittest.mock.Mock(spec_set=discord.Webhook)
    ids = itertools.count(interaction_id * 10)

    async def followup_send(content: str | None = None, **kw: Any) -> Any:
        assert done["value"], "a followup needs a response first"
        responses.log.append(("followup", {"content": content, **kw}))
        sent = unittest.mock.Mock(spec_set=discord.WebhookMessage)
        sent.id = next(ids)
        return sent

    followup.send = unittest.mock.AsyncMock(side_effect=followup_send)
    interaction.followup = followup
    return interaction, responses
