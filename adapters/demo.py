"""``vigil demo``: the whole product on one machine, replaying the night of the attack.

It starts a throwaway Synapse (loopback, a temporary directory), registers the bot and
three staff accounts (night volunteer, moderator, on-call admin), opens a staff room,
starts the simulated Discourse forum, writes a demo ``bot.toml`` and rules (a hash list
of generated pictures, a night schedule, an on-call rotation, an escalation policy),
and runs Vigil's App in this process on a demo clock. Then the night is replayed:
ordinary posts, three new accounts, and at 23:00 a burst of pictures, some of them on
the demo hash list. Every step is checked from the outside, the way a person would
see it: the forum's admin API calls, and what each staff member's own Matrix client
receives. ``--fast`` runs it in seconds and exits 1 naming any step that did not
happen; otherwise Vigil keeps running until Ctrl-C so a person can log in and look.

Every picture is generated here (coloured shapes and the words TEST PICTURE): the demo
never holds real material.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import secrets
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from nio import AsyncClient, RoomCreateResponse, RoomGetStateEventResponse, SyncResponse
from PIL import Image, ImageDraw, ImageFont

from adapters.forum_simulator import FakeDiscourse
from adapters.synapse_sandbox import SynapseError, SynapseServer
from bot.alerts import span
from bot.app import App, load_everything
from bot.hashing import hash_image
from bot.logs import ScrubFilter

log = logging.getLogger(__name__)

TZ = "Europe/London"
SERVER_NAME = "vigil.demo"
WAIT_S = 30.0  # how long (real seconds) a step may take before it counts as not happened
SKIPPED_WAIT_S = 2.0  # a step the options skipped is looked for this long, then failed
POLL_S = 0.02
SKIPPABLE = ("reaction", "ack")  # for the tests: leave out a person's action

# The checks --fast insists on, in the order they happen.
CHECKS: tuple[tuple[str, str], ...] = (
    ("quiet", "ordinary posts raised no alert"),
    ("hide", "known pictures hidden on the forum at once"),
    ("alert", "alerts posted in the staff room, seen by the moderator's client"),
    ("lockdown", "the raid started a lockdown (forum site setting changed)"),
    ("room_page", "@room page in the staff room"),
    ("volunteer_dm", "night volunteer paged by direct message"),
    ("admin_dm", "on-call admin paged by direct message"),
    ("ack", "on-call admin's ack (typed in the DM) taken"),
    ("takedown", "moderator's ✅ took the posts down on the forum"),
)


# --- the demo clock -----------------------------------------------------------------------


class DemoClock:
    """Real time from a chosen start, which the demo can jump ahead (a quiet ten minutes
    pass in an instant); sleepers wake when real time or a jump reaches their time."""

    def __init__(self, start: float) -> None:
        self._offset = start - time.time()
        self._jumped = asyncio.Event()

    def now(self) -> float:
        """Seconds since the epoch, on the demo's night."""
        return time.time() + self._offset

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of demo time (a jump can end it early)."""
        deadline = self.now() + seconds
        while (left := deadline - self.now()) > 0:
            jumped = self._jumped
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(jumped.wait(), timeout=left)
        await asyncio.sleep(0)

    def advance_to(self, when: float) -> None:
        """Jump ahead to ``when`` (no-op if real time already passed it)."""
        if when > self.now():
            self._offset += when - self.now()
            jumped, self._jumped = self._jumped, asyncio.Event()
            jumped.set()


def night_start(now: float, hour: int = 22, minute: int = 50) -> float:
    """The most recent ``hour:minute`` in London before ``now`` (epoch seconds)."""
    local = datetime.fromtimestamp(now, ZoneInfo(TZ))
    start = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if start.timestamp() > now:
        start -= timedelta(days=1)
    return start.timestamp()


# --- generated pictures ---------------------------------------------------------------


def demo_picture(seed: int, width: int = 320, height: int = 240) -> bytes:
    """A PNG of coloured shapes on a gradient, labelled TEST PICTURE (never real material).

    The same seed gives the same bytes; different seeds give pictures far apart in PDQ.
    """
    rng = random.Random(seed)
    top = tuple(rng.randint(0, 255) for _ in range(3))
    bottom = tuple(rng.randint(0, 255) for _ in range(3))
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):  # a vertical gradient: the low frequencies PDQ looks at
        f = y / (height - 1)
        draw.line(
            [(0, y), (width, y)],
            fill=tuple(round(a + (b - a) * f) for a, b in zip(top, bottom, strict=True)),
        )
    for _ in range(rng.randint(6, 12)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(15, 90)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        box = (cx - r, cy - r * rng.uniform(0.5, 1.2), cx + r, cy + r)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    font = ImageFont.load_default(size=22)
    draw.text((12, height - 34), f"TEST PICTURE {seed}", font=font, fill=(255, 255, 255))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def hash_list_lines(pictures: Iterable[bytes]) -> str:
    """The demo hash list (plain format): SHA-256 and, where PDQ trusts it, PDQ."""
    lines = ["# Hashes of pictures generated by vigil demo (never real material)."]
    for data in pictures:
        h = hash_image(data)
        lines.append(f"sha256 {h.sha256}")
        if h.pdq_quality >= 50:
            lines.append(f"pdq {h.pdq}")
    return "\n".join(lines) + "\n"


# --- the demo's configuration ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """A Matrix account the demo registered (the password is printed: it is throwaway)."""

    label: str
    name: str  # the staff name in bot.toml
    role: str
    user_id: str
    password: str
    token: str


RULES = textwrap.dedent(
    """\
    # Written by `vigil demo`. The same keys as the shipped rules/*.toml.

    [[list]]
    name = "demo-known-images"
    file = "lists/demo-known-images.txt"
    format = "plain"
    kinds = ["sha256", "pdq"]
    severity = "critical"
    category = "demo"

    [[rule]]
    name = "known-image"
    description = "A picture on the demo hash list: hide it at once, ask a person to confirm."
    when = { events = ["post_created", "post_edited"], lists = ["demo-known-images"] }
    severity = "critical"
    actions = ["hide"]
    room = "staff"

    [[rule]]
    name = "new-account-images"
    description = "Pictures from accounts younger than a week: a person should look."
    when = { events = ["post_created"], has_images = true, account_younger_than = "7d" }
    severity = "high"
    room = "staff"

    [[raid]]
    name = "burst-new-account-images"
    description = "picture posts from accounts younger than a week"
    when = { events = ["post_created"], has_images = true, account_younger_than = "7d" }
    at_least = 5
    within = "10m"
    lockdown = "2h"
    severity = "high"

    [[schedule]]
    name = "nights"
    timezone = "Europe/London"
      [[schedule.layer]]
      name = "night watch"
      people = ["Night volunteer"]
      shift = "1d"
      windows = [{ days = ["daily"], from = "22:00", to = "07:00" }]

    [[schedule]]
    name = "on-call"
    timezone = "Europe/London"
      [[schedule.layer]]
      name = "weekly rotation"
      people = ["On-call admin"]
      shift = "1w"

    [[policy]]
    name = "critical"
    description = "After 2 minutes @room, then the night volunteer, then the on-call admin."
    severities = ["critical"]
    initial_delay = "2m"
    ack_timeout = "30m"
      [[policy.step]]
      targets = ["room"]
      delay = "3m"
      [[policy.step]]
      targets = ["schedule:nights"]
      delay = "5m"
      [[policy.step]]
      targets = ["schedule:on-call"]
      delay = "10m"
    """
)


def write_config(
    root: Path,
    *,
    forum_url: str,
    homeserver: str,
    bot: Account,
    room: str,
    staff: Iterable[Account],
    secrets_env: dict[str, str],
    known: Iterable[bytes],
) -> Path:
    """bot.toml, .env, rules/demo.toml and the demo hash list under ``root``."""
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "demo.toml").write_text(RULES, encoding="utf-8")
    (root / "lists" / "demo-known-images.txt").write_text(hash_list_lines(known), encoding="utf-8")
    (root / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in secrets_env.items()), encoding="utf-8"
    )
    notify = {
        "volunteer": '["matrix_dm"]',
        "moderator": '["matrix_room"]',
        "admin": '["matrix_dm"]',
    }
    roster = "".join(
        f'\n[[staff]]\nname = "{a.name}"\nrole = "{a.role}"\ntimezone = "{TZ}"\n'
        f'matrix = "{a.user_id}"\nnotify = {notify[a.role]}\n'
        for a in staff
    )
    config = textwrap.dedent(
        f"""\
        # Written by `vigil demo`: a throwaway Vigil. See bot.toml.example for every key.
        [service]
        host = "127.0.0.1"
        port = 0
        log_level = "info"

        [store]
        path = "data/vigil.db"

        [pipeline]
        workers = 2
        retry_base = "1s"

        [alerts]
        group_window = "10m"

        [lockdown]
        default_duration = "2h"
        room = "staff"

        [[source]]
        name = "forum"
        kind = "discourse"
        base_url = "{forum_url}"
        webhook_secret_env = "DEMO_WEBHOOK_SECRET"
        media_hosts = ["127.0.0.1"]
        api_key_env = "DEMO_DISCOURSE_API_KEY"
        api_username = "vigil"
        lockdown_settings = {{ embedded_media_post_allowed_groups = "1|2|12" }}
        normal_settings = {{ embedded_media_post_allowed_groups = "1|2|10" }}

        [[room]]
        name = "staff"
        matrix = "{room}"

        [matrix]
        homeserver = "{homeserver}"
        user_id = "{bot.user_id}"
        access_token_env = "DEMO_MATRIX_TOKEN"
        device_name = "vigil-demo"
        """
    )
    (root / "bot.toml").write_text(config + roster, encoding="utf-8")
    return root / "bot.toml"


# --- staff members' own Matrix clients -------------------------------------------------------


def body_of(event: dict[str, Any]) -> str:
    """A message's text (an edit's new text)."""
    content = event.get("content", {})
    return str(content.get("m.new_content", content).get("body", ""))


class StaffClient:
    """One staff member's own Matrix client: syncs in the background, joins the rooms
    it is invited to (the bot's DMs), and keeps every event it receives."""

    def __init__(self, account: Account, homeserver: str) -> None:
        self.account = account
        self.client = AsyncClient(homeserver, account.user_id)
        self.client.access_token = account.token
        self.client.user_id = account.user_id
        self.events: list[tuple[str, dict[str, Any]]] = []  # (room id, raw event)
        self.joined: set[str] = set()
        self._since: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Skip history, then sync in the background."""
        first = await self.client.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 0}}})
        if isinstance(first, SyncResponse):
            self._since = first.next_batch
        self._task = asyncio.create_task(self._run(), name=f"demo-client-{self.account.name}")

    async def stop(self) -> None:
        """Stop syncing and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()

    async def _run(self) -> None:
        while True:
            try:
                response = await self.client.sync(timeout=1000, since=self._since)
            except asyncio.CancelledError:
                raise
            except Exception:  # the homeserver went away for a moment: try again
                log.warning("demo client %s: sync failed", self.account.name)
                await asyncio.sleep(0.5)
                continue
            if not isinstance(response, SyncResponse):
                await asyncio.sleep(0.5)  # an error answer; the next sync retries
                continue
            self._since = response.next_batch
            for room_id in response.rooms.invite:
                if room_id not in self.joined:
                    self.joined.add(room_id)
                    await self.client.join(room_id)
            for room_id, info in response.rooms.join.items():
                self.events.extend((room_id, e.source) for e in info.timeline.events)

    def messages(self, sender: str, room: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Messages from ``sender`` (in ``room``), edits included, in arrival order."""
        return [
            (r, e)
            for r, e in self.events
            if e.get("sender") == sender
            and e.get("type") == "m.room.message"
            and (room is None or r == room)
        ]

    async def say(self, room: str, text: str) -> None:
        """Type a message."""
        await self.client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": text})

    async def react(self, room: str, event_id: str, key: str) -> None:
        """React to a message (press a button)."""
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        await self.client.room_send(room, "m.reaction", content)


async def until(condition: Callable[[], Any], timeout_s: float) -> Any:
    """Poll ``condition`` (sync or async) until truthy; its last value (falsy on timeout)."""
    end = time.monotonic() + timeout_s
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result or time.monotonic() > end:
            return result
        await asyncio.sleep(POLL_S)  # polling what other processes and tasks do


# Members of long standing (trust level 3) and what they post before the attack.
REGULARS = (
    (11, "anna", "Anyone going to the meetup on Saturday?"),
    (12, "bram", "Yes! I'll bring the projector."),
    (13, "chloe", "Photos from last time, the river walk:"),
)


# --- the replay ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``vigil demo`` was asked for."""

    fast: bool = False
    port: int | None = None  # the homeserver's port (default: a free one)
    data: Path | None = None  # keep everything here (default: a temporary directory)
    skip: frozenset[str] = frozenset()  # SKIPPABLE actions left out (tests)


@dataclass
class Checklist:
    """Which of the demo's steps happened, with a word on each."""

    results: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def record(self, key: str, ok: bool, detail: str = "") -> bool:
        """Note a step's outcome (the first failure of a step sticks)."""
        if key in self.results and not self.results[key][0]:
            return False
        self.results[key] = (ok, detail)
        return ok

    def missing(self) -> list[str]:
        """The steps that did not happen (or were never reached), in order."""
        return [k for k, _ in CHECKS if not self.results.get(k, (False, ""))[0]]

    def lines(self) -> list[str]:
        """One line per step: ✓ or ✗, what, and the detail."""
        out = []
        for key, what in CHECKS:
            ok, detail = self.results.get(key, (False, "never reached"))
            out.append(f"  {'✓' if ok else '✗'} {key:<13}{what}{f': {detail}' if detail else ''}")
        return out


@dataclass
class Attacker:
    """A new account of the raid, its posts and its alert."""

    user_id: int
    username: str
    known: bytes
    unknown: bytes
    posts: list[int] = field(default_factory=list)
    alert_id: int | None = None
    alert_event: str | None = None


class Demo:
    """The whole demo: servers, accounts, Vigil, the replay and its checks."""

    def __init__(self, options: DemoOptions, out: TextIO, synapse: Any = None) -> None:
        self.options = options
        self.out = out
        self.checks = Checklist()
        self._given_synapse = synapse
        self.synapse: Any = synapse
        self.tag = "" if synapse is None else uuid.uuid4().hex[:6]  # a shared server: unique names
        self.root: Path | None = None
        self.forum: Any = None
        self.app: Any = None
        self.clock: DemoClock | None = None
        self.bot: Account | None = None
        self.staff: dict[str, Account] = {}
        self.clients: dict[str, StaffClient] = {}
        self.room = ""
        self.room_alias = ""
        self.post_ids = 1000
        self.hide_s: list[float] = []
        self.attackers: list[Attacker] = []
        self._log_handler: logging.Handler | None = None
        self._made_root = False

    # --- output -------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        """A line of the demo's own output."""
        print(text, file=self.out, flush=True)

    def at(self, who: str, text: str) -> None:
        """A timeline line: the demo clock's London time, who, what."""
        assert self.clock is not None
        stamp = datetime.fromtimestamp(self.clock.now(), ZoneInfo(TZ)).strftime("%H:%M:%S")
        self.say(f"{stamp}  {who:<14} {text}")

    async def pause(self, seconds: float) -> None:
        """Give a person watching time to read (nothing in --fast mode)."""
        if not self.options.fast:
            await asyncio.sleep(seconds)

    # --- setting up ----------------------------------------------------------------------

    def _prepare_root(self) -> Path:
        if self.options.data is None:
            self._made_root = True
            return Path(tempfile.mkdtemp(prefix="vigil-demo-"))
        root = self.options.data.resolve()
        if root.exists() and any(root.iterdir()):
            raise DemoError(f"--data {root}: choose an empty or new directory")
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _start_logging(self, root: Path) -> None:
        # Vigil's own log goes to a file: the terminal shows the timeline.
        handler = logging.FileHandler(root / "vigil.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(ScrubFilter())
        root_logger = logging.getLogger()
        root_logger.addHandler(handler)
        if root_logger.level > logging.INFO or root_logger.level == logging.NOTSET:
            root_logger.setLevel(logging.INFO)
        for noisy in ("nio", "aiohttp.access", "aiosqlite"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._log_handler = handler

    async def _register(self, label: str, name: str, role: str, localpart: str) -> Account:
        password = secrets.token_urlsafe(9)
        user_id, token = await self.synapse.register(localpart + self.tag, password=password)
        return Account(label, name, role, user_id, password, token)

    async def setup(self) -> None:
        """Synapse, accounts, staff room, forum, configuration, Vigil."""
        self.root = root = self._prepare_root()
        self._start_logging(root)
        if self.synapse is None:
            server = SynapseServer(
                root / "synapse", server_name=SERVER_NAME, port=self.options.port
            )
            self.synapse = server
            self.say(f"Starting a throwaway Matrix homeserver (Synapse) on {server.base_url} ...")
            await asyncio.to_thread(server.start)
        hs = self.synapse.base_url
        self.bot = await self._register("bot", "Vigil", "bot", "vigil")
        for label, name, role, localpart in (
            ("night volunteer", "Night volunteer", "volunteer", "night"),
            ("moderator", "Moderator", "moderator", "mod"),
            ("on-call admin", "On-call admin", "admin", "oncall"),
        ):
            self.staff[role] = await self._register(label, name, role, localpart)
        await self._staff_room(hs)

        api_key, webhook_secret = secrets.token_hex(16), secrets.token_hex(16)
        self.forum = FakeDiscourse(
            api_key=api_key, api_username="vigil", webhook_secret=webhook_secret
        )
        await self.forum.start()
        pictures = self._pictures()
        config_path = write_config(
            root,
            forum_url=self.forum.base_url,
            homeserver=hs,
            bot=self.bot,
            room=self.room,
            staff=self.staff.values(),
            secrets_env={
                "DEMO_WEBHOOK_SECRET": webhook_secret,
                "DEMO_DISCOURSE_API_KEY": api_key,
                "DEMO_MATRIX_TOKEN": self.bot.token,
            },
            known=[a.known for a in pictures],
        )
        self.attackers = pictures
        loaded, problems = load_everything(config_path)
        if loaded is None:
            raise DemoError(
                "the demo's configuration has errors: " + "; ".join(map(str, problems.items))
            )
        self.clock = DemoClock(night_start(time.time()))
        self.app = App(loaded.config, loaded.rules, clock=self.clock, watch_rules=False)
        await self.app.start()
        for client in self.clients.values():
            await client.start()
        if not await until(lambda: self.app.chat.started.get("matrix"), WAIT_S):
            raise DemoError("Vigil's bot did not join the staff room; see vigil.log")
        self._print_credentials()

    async def _staff_room(self, hs: str) -> None:
        """The admin opens the staff room, invites everyone, gives the bot power 50 (its
        @room pages ring only with the room's notifications.room power)."""
        assert self.bot is not None
        for role, account in self.staff.items():
            self.clients[role] = StaffClient(account, hs)
        admin = self.clients["admin"].client
        alias = "staff" + self.tag
        created = await admin.room_create(
            alias=alias,
            name="Vigil staff (demo)",
            topic="Vigil's alerts. Demo: a throwaway homeserver, a simulated forum.",
            invite=[
                self.bot.user_id,
                self.staff["volunteer"].user_id,
                self.staff["moderator"].user_id,
            ],
        )
        if not isinstance(created, RoomCreateResponse):
            raise DemoError(f"could not create the staff room: {created}")
        self.room = created.room_id
        self.room_alias = f"#{alias}:{self.synapse.server_name}"
        for role in ("volunteer", "moderator"):
            await self.clients[role].client.join(self.room)
        levels = await admin.room_get_state_event(self.room, "m.room.power_levels")
        if isinstance(levels, RoomGetStateEventResponse):
            content = dict(levels.content)
            content["users"] = {**content.get("users", {}), self.bot.user_id: 50}
            await admin.room_put_state(self.room, "m.room.power_levels", content)

    def _pictures(self) -> list[Attacker]:
        names = ("nightowl_17", "freepics_4u", "x_dropbox_x")
        return [
            Attacker(2001 + i, name, demo_picture(100 + i), demo_picture(200 + i))
            for i, name in enumerate(names)
        ]

    def _print_credentials(self) -> None:
        assert self.root is not None and self.bot is not None
        hs = self.synapse.base_url
        self.say()
        self.say("Log in with any Matrix client (Element: Sign in → Edit the homeserver):")
        self.say(f"  homeserver       {hs}")
        for account in self.staff.values():
            self.say(f"  {account.label:<16} {account.user_id:<24} password {account.password}")
        self.say(f"  staff room       {self.room_alias}  ({self.room})")
        self.say(f"  Vigil's bot      {self.bot.user_id}")
        self.say(f"Simulated Discourse forum: {self.forum.base_url}")
        self.say(f"Vigil: http://127.0.0.1:{self.app.port}  (GET /healthz, GET /metrics)")
        self.say(f"Files: {self.root}  (bot.toml, rules/, lists/, vigil.log)")
        self.say()

    # --- the forum side -------------------------------------------------------------------

    @property
    def webhook_url(self) -> str:
        """Where the simulated forum sends its webhooks."""
        return f"http://127.0.0.1:{self.app.port}/webhooks/discourse"

    async def post(self, user_id: int, username: str, raw: str, trust_level: int) -> int:
        """The forum announces a new post; returns its id."""
        assert self.clock is not None
        self.post_ids += 1
        body = self.forum.post_created_payload(
            post_id=self.post_ids,
            user_id=user_id,
            username=username,
            raw=raw,
            trust_level=trust_level,
            topic_id=12,
            topic_slug="saturday-meetup",
            topic_title="Saturday meetup",
            created_at=datetime.fromtimestamp(self.clock.now(), ZoneInfo("UTC")),
        )
        status = await self.forum.send_webhook(self.webhook_url, "post", "post_created", body)
        if status != 200:
            raise DemoError(f"Vigil answered {status} to the forum's webhook")
        return self.post_ids

    async def picture_post(
        self, user_id: int, username: str, data: bytes, words: str, trust: int
    ) -> int:
        """A post with one uploaded picture."""
        upload = self.forum.add_upload(data)
        return await self.post(
            user_id, username, f"{words}\n\n![pic|320x240]({upload.short_url})", trust
        )

    def hidden_by_vigil(self, post_id: int) -> bool:
        """Whether the forum received Vigil's hide for ``post_id`` (a staff flag that acts)."""
        return any(
            c.auth_ok and c.path == "/post_actions.json" and (c.json or {}).get("id") == post_id
            for c in self.forum.calls
        )

    # --- what Vigil recorded --------------------------------------------------------------

    async def alerts(self) -> list[Any]:
        """Every alert so far (Vigil's store)."""
        out = []
        for alert_id in range(1, 100):
            snap = await self.app.store.alert_snapshot(alert_id)
            if snap is None:
                break
            out.append(snap)
        return out

    async def alert_of(self, username: str) -> Any:
        """The alert about ``username``'s posts, if there is one."""
        for alert in await self.alerts():
            if any(t.target.get("username") == username for t in alert.targets):
                return alert
        return None

    def alert_seen(self, alert_id: int) -> dict[str, Any] | None:
        """Alert #N as the moderator's client received it (the first post, not an edit)."""
        assert self.bot is not None
        for _, e in self.clients["moderator"].messages(self.bot.user_id, self.room):
            content = e.get("content", {})
            if "m.relates_to" not in content and f"alert #{alert_id} " in body_of(e):
                return e
        return None

    def pages_to(self, role: str) -> list[str]:
        """The pages a staff member's client received from the bot (DMs, or in the room)."""
        assert self.bot is not None
        client = self.clients[role]
        return [
            body_of(e)
            for r, e in client.messages(self.bot.user_id)
            if "has waited" in body_of(e)
            and (r == self.room) == (role == "moderator")
            and "m.relates_to" not in e.get("content", {})
        ]

    # --- the night ---------------------------------------------------------------------

    async def replay(self) -> None:
        """The overnight attack, step by step, each checked from the outside."""
        assert self.clock is not None
        t0 = self.clock.now()  # 22:50
        night = datetime.fromtimestamp(t0, ZoneInfo(TZ)).strftime("%A %d %B")
        self.say(f"The night of {night} (demo clock, London time; it jumps where nothing happens)")
        await self._ordinary_posts(t0)
        await self._signups(t0 + 5 * 60)
        await self._burst(t0 + 10 * 60)
        await self._escalation(t0 + 10 * 60)
        await self._ack(t0 + 21 * 60)
        await self._takedown(t0 + 23 * 60)

    async def _ordinary_posts(self, t0: float) -> None:
        assert self.clock is not None
        for i, (uid, name, text) in enumerate(REGULARS):
            self.clock.advance_to(t0 + i * 90)
            if text.endswith(":"):
                await self.picture_post(uid, name, demo_picture(300 + i), text, 3)
                self.at("forum", f"{name} posts a holiday photo")
            else:
                await self.post(uid, name, text, 3)
                self.at("forum", f'{name}: "{text}"')
            await self.pause(1.0)

    async def _signups(self, when: float) -> None:
        assert self.clock is not None
        self.clock.advance_to(when)
        created = datetime.fromtimestamp(self.clock.now(), ZoneInfo("UTC"))
        for a in self.attackers:
            body = self.forum.user_created_payload(a.user_id, a.username, created_at=created)
            await self.forum.send_webhook(self.webhook_url, "user", "user_created", body)
        names = ", ".join(a.username for a in self.attackers)
        self.at("forum", f"3 new accounts sign up: {names}")
        # Their posts must find their age known (the raid counts young accounts only).
        store = self.app.store

        async def known() -> bool:
            ages = [await store.account_created("forum", str(a.user_id)) for a in self.attackers]
            return all(x is not None for x in ages)

        await until(known, WAIT_S)
        await self.pause(1.5)

    async def _burst(self, when: float) -> None:
        """From 23:00, every 15 s: each new account's picture on the list, then each one's
        picture on no list. The fifth post crosses the raid's threshold."""
        assert self.clock is not None
        self.say()
        order = [(a, True) for a in self.attackers] + [(a, False) for a in self.attackers]
        lockdown_seen = False
        for i, (a, known) in enumerate(order):
            self.clock.advance_to(when + i * 15)
            await (self._known_post(a) if known else self._unknown_post(a))
            if not lockdown_seen and self.app.lockdown.current is not None:
                lockdown_seen = True
                await self._lockdown_seen()
            await self.pause(1.0)
        if not lockdown_seen:
            if await until(lambda: self.app.lockdown.current, WAIT_S):
                await self._lockdown_seen()
            else:
                self.checks.record("lockdown", False, "no lockdown started")
        n = len(self.attackers)
        hidden = [a for a in self.attackers if self.hidden_by_vigil(a.posts[0])]
        slowest = max(self.hide_s, default=0.0)
        self.checks.record(
            "hide", len(hidden) == n, f"{len(hidden)} of {n}, slowest {slowest:.2f} s"
        )
        seen = [a for a in self.attackers if a.alert_event]
        self.checks.record("alert", len(seen) == n, f"{len(seen)} alerts")
        regulars = {name for _, name, _ in REGULARS}
        quiet = not any(
            t.target.get("username") in regulars for al in await self.alerts() for t in al.targets
        )
        self.checks.record("quiet", quiet, "" if quiet else "an ordinary post raised an alert")

    async def _known_post(self, a: Attacker) -> None:
        """A picture on the list: hidden at once (timed), and an alert the moderator sees."""
        start = time.monotonic()
        pid = await self.picture_post(a.user_id, a.username, a.known, "free pics", 0)
        a.posts.append(pid)
        self.at(
            "forum",
            f"{a.username} (account 5 min old) posts a picture ON the demo hash list: post {pid}",
        )
        if await until(lambda: self.hidden_by_vigil(pid), WAIT_S):
            took = time.monotonic() - start
            self.hide_s.append(took)
            self.at(
                "forum",
                f"← Vigil hid post {pid} {took:.2f} s after it was posted (nobody looked at it)",
            )
        alert = await until(lambda: self.alert_of(a.username), WAIT_S)
        seen = alert and await until(lambda: self.alert_seen(alert.id), WAIT_S)
        if not (alert and seen):
            return
        a.alert_id, a.alert_event = alert.id, seen["event_id"]
        first = body_of(seen).splitlines()[0]
        self.at("staff room", f"{first}  (as the moderator's client shows it)")

    async def _unknown_post(self, a: Attacker) -> None:
        """A picture on no list: it joins the account's alert and stays up."""
        pid = await self.picture_post(a.user_id, a.username, a.unknown, "more", 0)
        a.posts.append(pid)
        self.at(
            "forum",
            f"{a.username} posts a picture on NO list: post {pid} (stays up until a person acts)",
        )

        async def joined() -> bool:
            alert = await self.alert_of(a.username)
            return alert is not None and any(
                str(t.target.get("post_id")) == str(pid) for t in alert.targets
            )

        if await until(joined, WAIT_S):
            self.at("staff room", f"alert #{a.alert_id} updated: +1 more post by {a.username}")

    async def _lockdown_seen(self) -> None:
        cur = self.app.lockdown.current
        ends = datetime.fromtimestamp(float(cur["ends_at"]), ZoneInfo(TZ)).strftime("%H:%M")
        self.at(
            "vigil",
            f"raid: 5 picture posts from new accounts within 10 min → LOCKDOWN until {ends}",
        )
        calls = await until(lambda: self.forum.calls_to("PUT", "/admin/site_settings/"), WAIT_S)
        if calls:
            value = self.forum.site_settings.get("embedded_media_post_allowed_groups")
            self.at(
                "forum",
                f"← Vigil set embedded_media_post_allowed_groups = {value} (new accounts cannot post images)",
            )
        notice = await until(
            lambda: next(
                (
                    e
                    for _, e in self.clients["moderator"].messages(self.bot.user_id, self.room)
                    if "LOCKDOWN ON" in body_of(e)
                ),
                None,
            ),
            WAIT_S,
        )
        if notice:
            self.at("staff room", body_of(notice).split(": raid")[0])
        self.checks.record(
            "lockdown",
            bool(calls and notice),
            f"until {ends}" if calls and notice else "no site setting or no notice",
        )

    async def _escalation(self, burst: float) -> None:
        """Nobody reacts: the clock jumps to each step's due time (of the last alert, so
        no page reads "late"), and each page is looked for in the receiver's client."""
        assert self.clock is not None
        n = len(self.attackers)
        last = burst + (n - 1) * 15  # the last alert's creation
        self.say()
        self.at("", "Nobody reacts. The policy: @room after 2 min, the night volunteer after")
        self.at("", "3 more, the on-call admin 5 min after that. The demo clock jumps ahead.")
        for role, due, key, who in (
            ("moderator", last + 2 * 60, "room_page", "staff room"),
            ("volunteer", last + 5 * 60, "volunteer_dm", "DM → volunteer"),
            ("admin", last + 10 * 60, "admin_dm", "DM → admin"),
        ):
            self.clock.advance_to(due)
            got = await until(
                lambda r=role: len(self.pages_to(r)) >= n and self.pages_to(r), WAIT_S
            )
            if got:
                head = got[0].split(" with nobody on it")[0]
                self.at(who, f"{head} … (+{len(got) - 1} more: one page per alert)")
            pages = len(self.pages_to(role))
            what = "@room pages" if role == "moderator" else f"DMs to the {self.staff[role].label}"
            self.checks.record(key, bool(got), f"{pages} {what}")
            await self.pause(2.0)

    async def _ack(self, when: float) -> None:
        assert self.clock is not None
        self.clock.advance_to(when)
        first = self.attackers[0]
        if "ack" in self.options.skip or first.alert_id is None:
            self.checks.record(
                "ack", False, "skipped" if "ack" in self.options.skip else "no alert to ack"
            )
            return
        admin = self.clients["admin"]
        dm = next(
            (
                r
                for r, e in admin.messages(self.bot.user_id)
                if r != self.room and "has waited" in body_of(e)
            ),
            None,
        )
        if dm is None:
            self.checks.record("ack", False, "the admin has no DM to answer")
            return
        await admin.say(dm, f"ack {first.alert_id}")
        self.at("DM ← admin", f'"ack {first.alert_id}"')

        async def acked() -> Any:
            snap = await self.app.store.alert_snapshot(first.alert_id)
            return snap if snap is not None and snap.acked_by == self.staff["admin"].name else None

        snap = await until(acked, WAIT_S)
        if snap:
            self.at(
                "vigil", f"alert #{first.alert_id} acked by {snap.acked_by}: its escalation stops"
            )
        self.checks.record("ack", bool(snap), "" if snap else "not acked")
        await self.pause(2.0)

    async def _takedown(self, when: float) -> None:
        assert self.clock is not None
        self.clock.advance_to(when)
        unknown = [a.posts[1] for a in self.attackers if len(a.posts) > 1]
        mod = self.clients["moderator"]
        skipped = "reaction" in self.options.skip
        if not skipped:
            for a in self.attackers:
                if a.alert_event is not None:
                    await mod.react(self.room, a.alert_event, "✅")
            self.at(
                "staff room", "the moderator reacts ✅ on each alert (from their own Matrix client)"
            )
        wait = SKIPPED_WAIT_S if skipped else WAIT_S
        down = await until(lambda: all(self.hidden_by_vigil(p) for p in unknown), wait)
        if down:
            self.at(
                "forum",
                f"← Vigil hid posts {', '.join(map(str, unknown))}; the pictures on the list were already hidden",
            )

        async def resolved() -> bool:
            alerts = [
                await self.app.store.alert_snapshot(a.alert_id)
                for a in self.attackers
                if a.alert_id
            ]
            return bool(alerts) and all(
                x is not None and x.resolution == "taken_down" for x in alerts
            )

        done = await until(resolved, wait)
        if done:
            edit = await until(
                lambda: next(
                    (
                        e
                        for _, e in mod.messages(self.bot.user_id, self.room)
                        if "Taken down by" in body_of(e)
                    ),
                    None,
                ),
                WAIT_S,
            )
            if edit:
                line = next(x for x in body_of(edit).splitlines() if "Taken down by" in x)
                self.at("staff room", f"alert edited: {line.strip()}")
        detail = "" if down and done else "posts on no list are still up on the forum"
        if skipped:
            detail += " (--skip reaction: the moderator did not react)"
        self.checks.record("takedown", bool(down and done), detail)

    # --- the summary -------------------------------------------------------------------

    async def summary(self) -> int:
        """Times, pages and the checklist; the exit status (1 if a step did not happen)."""
        alerts = [x for x in await self.alerts() if x.targets]
        ours = [x for x in alerts if x.id in {a.alert_id for a in self.attackers}]
        first_created = min((x.created_at for x in ours), default=None)
        acks = [x.acked_at - x.created_at for x in ours if x.acked_at]
        downs = [x.resolved_at for x in ours if x.resolution == "taken_down" and x.resolved_at]
        self.say()
        self.say("Summary")
        hide = f"{max(self.hide_s):.2f} s" if self.hide_s else "—"
        self.say(
            f"  time to hide       {hide}  (slowest of {len(self.hide_s)} known pictures: post → forum hide)"
        )
        ack = span(min(acks)) if acks else "—"
        self.say(
            f"  time to ack        {ack}  (first alert acked, by the on-call admin from the DM)"
        )
        if downs and first_created is not None and len(downs) == len(ours):
            self.say(
                f"  time to take down  {span(max(downs) - first_created)}  (first alert → every post down)"
            )
        else:
            self.say("  time to take down  —  (not every post was taken down)")
        self.say(
            f"  pages sent         {len(self.pages_to('moderator'))} @room in the staff room, "
            f"{len(self.pages_to('volunteer'))} DMs to the night volunteer, "
            f"{len(self.pages_to('admin'))} DMs to the on-call admin"
        )
        cur = self.app.lockdown.current
        if cur is not None:
            ends = datetime.fromtimestamp(float(cur["ends_at"]), ZoneInfo(TZ)).strftime("%H:%M")
            self.say(f"  lockdown           on until {ends} (raid: {cur.get('raid')})")
        self.say("Steps")
        for line in self.checks.lines():
            self.say(line)
        missing = self.checks.missing()
        if missing:
            self._made_root = False  # keep the files: the log says why
            self.say(
                f"vigil demo: these steps did not happen: {', '.join(missing)} (details in {self.root}/vigil.log)"
            )
            return 1
        self.say(f"All {len(CHECKS)} steps happened.")
        return 0

    # --- stopping ------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop everything the demo started, and delete its temporary directory."""
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.stop()
        if self.app is not None:
            await self.app.stop()
        if self.forum is not None:
            await self.forum.stop()
        if self.synapse is not None and self._given_synapse is None:
            await asyncio.to_thread(self.synapse.stop)
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
        if self._made_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


class DemoError(RuntimeError):
    """The demo could not be set up (a message for the person who ran it)."""


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout, synapse: Any = None) -> int:
    """Set up, replay, summarise; without --fast, keep running until Ctrl-C.

    ``synapse``: an already running :class:`adapters.synapse_sandbox.SynapseServer` to
    use instead of starting one (the tests share theirs).
    """
    demo = Demo(options, out, synapse)
    try:
        await demo.setup()
        await demo.replay()
        status = await demo.summary()
        if not options.fast:
            await _until_interrupted(demo)
        return status
    except (DemoError, SynapseError) as error:
        print(f"vigil demo: {error}", file=sys.stderr)
        return 2
    finally:
        await demo.close()


async def _until_interrupted(demo: Demo) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    demo.say()
    demo.say(
        f"Vigil keeps running. Log in at {demo.synapse.base_url} as one of the accounts above and "
        f"open {demo.room_alias}: the alerts, the pages in the DMs, the lockdown notice. "
        "Try 👀, ✅ or !lockdown status. Ctrl-C stops everything and deletes the throwaway data."
    )
    await stop.wait()
    demo.say("Stopping ...")


def main(options: DemoOptions) -> int:
    """``vigil demo``: check the demo extra is installed, then run."""
    try:
        import synapse  # noqa: F401
    except ImportError:
        print(
            "vigil demo needs a Matrix homeserver (Synapse); install the demo extra:\n"
            "  pip install -e '.[demo]'",
            file=sys.stderr,
        )
        return 2
    unknown = set(options.skip) - set(SKIPPABLE)
    if unknown:
        print(f"vigil demo: --skip takes {', '.join(SKIPPABLE)}", file=sys.stderr)
        return 2
    return asyncio.run(run_demo(options))
