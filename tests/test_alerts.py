"""Alerts, buttons and forum actions through the real App, store, pipeline and HTTP:
signed webhooks from the simulated Discourse in, admin API calls out.

The chat here is a recording ChatPort standing in for the chat server (it behaves
like Synapse where it matters: a resend with the same transaction id returns the
first event instead of posting twice). The same behaviours are proven against a real
Synapse in tests/test_matrix_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.alerts import button_for, render_alert, scrub, span
from bot.app import App, load_everything
from bot.clock import ManualClock
from bot.config import Role, StaffMember
from bot.moderation import decide
from bot.ports import ChatCommand, ChatMessage, ChatReaction
from bot.store import AlertRecord, Store, TargetRecord
from tests.fake_discourse import FakeDiscourse

DEADLINE = 4.5  # under the outbox's 5 s idle poll: a missed wake-up fails the test
ROOM = "!staff:vigil.test"
ALICE = "@alice:vigil.test"  # moderator
BOB = "@bob:vigil.test"  # moderator
VERA = "@vera:vigil.test"  # volunteer
STRANGER = "@mallory:vigil.test"  # not on the roster
LEAKED_EMAIL = "victim.parent@example.org"
LEAKED_IP = "203.0.113.77"

RULES = textwrap.dedent(
    """
    [[rule]]
    name = "images"
    description = "any image: a person looks"
    when = { events = ["post_created"], has_images = true }
    severity = "high"
    room = "staff"

    [[rule]]
    name = "forbidden-words"
    description = "hide at once, a person confirms"
    when = { events = ["post_created"], text_matches = "forbidden" }
    severity = "critical"
    actions = ["hide"]
    room = "staff"
    """
)


def write_alert_config(
    root: Path,
    forum_url: str,
    *,
    homeserver: str = "http://127.0.0.1:9",
    bot_id: str = "@vigil:vigil.test",
    room: str = ROOM,
    staff: tuple[tuple[str, str, str], ...] = (
        ("Alice", "moderator", ALICE),
        ("Bob", "moderator", BOB),
        ("Vera", "volunteer", VERA),
    ),
    rules: str = RULES,
    dry_run: bool = False,
    matrix_token: str = "unused",
    extra: str = "",
) -> Path:
    """bot.toml, .env and rules/ for a Vigil that alerts into one staff room."""
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "main.toml").write_text(rules)
    (root / ".env").write_text(
        "TEST_WEBHOOK_SECRET=test-webhook-secret\nTEST_API_KEY=test-api-key\n"
        f"TEST_MATRIX_TOKEN={matrix_token}\n"
    )
    roster = "".join(
        f'\n[[staff]]\nname = "{n}"\nrole = "{r}"\ntimezone = "Europe/London"\nmatrix = "{m}"\n'
        for n, r, m in staff
    )
    (root / "bot.toml").write_text(
        textwrap.dedent(
            f"""
            [service]
            host = "127.0.0.1"
            port = 0
            dry_run = {"true" if dry_run else "false"}

            [store]
            path = "data/vigil.db"

            [pipeline]
            workers = 2
            retry_base = "1s"

            [alerts]
            group_window = "10m"
            confirm_window = "2m"

            [[source]]
            name = "forum"
            kind = "discourse"
            base_url = "{forum_url}"
            webhook_secret_env = "TEST_WEBHOOK_SECRET"
            media_hosts = ["127.0.0.1"]
            api_key_env = "TEST_API_KEY"
            api_username = "vigil"

            [[room]]
            name = "staff"
            matrix = "{room}"

            [matrix]
            homeserver = "{homeserver}"
            user_id = "{bot_id}"
            access_token_env = "TEST_MATRIX_TOKEN"
            """
        )
        + roster
        + extra
    )
    return root / "bot.toml"


def png(seed: int) -> bytes:
    """A small generated picture (never real material)."""
    img = Image.new("RGB", (64, 64), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    for x in range(0, 64, 8):
        for y in range(0, 64, 8):
            if (x * seed + y) % 3 == 0:
                img.paste((x * 4 % 256, y * 4 % 256, seed % 256), (x, y, x + 8, y + 8))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


async def until(condition: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``condition`` until it is truthy (the app works in its own tasks)."""
    end = time.monotonic() + deadline
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval, not a wait for behaviour


# --- a recording chat port ------------------------------------------------------------


class SendFailed(Exception):
    """What a chat adapter raises when the server refuses or is away."""

    def __init__(self, errcode: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(errcode or "unreachable")
        self.errcode = errcode
        self.retry_after = retry_after


@dataclass
class Sent:
    id: str
    room: str
    message: ChatMessage
    txn_id: str | None
    edits: list[ChatMessage] = field(default_factory=list)
    reactions: list[str] = field(default_factory=list)


class ChatServer:
    """What the chat server holds, shared by every RecordingChat (survives a bot restart)."""

    def __init__(self) -> None:
        self.messages: dict[str, Sent] = {}
        self.dms: list[tuple[str, ChatMessage]] = []
        self.txns: dict[str, str] = {}
        self.ids = itertools.count(1)

    def alerts(self) -> list[Sent]:
        return [m for m in self.messages.values() if "alert #" in m.message.text]

    def text_of(self, message_id: str) -> str:
        sent = self.messages[message_id]
        return (sent.edits[-1] if sent.edits else sent.message).text

    def dms_to(self, user: str) -> list[str]:
        return [m.text for u, m in self.dms if u == user]


class RecordingChat:
    """A ChatPort that records what the bot does and lets a test act as people."""

    name = "matrix"

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self.failures: list[SendFailed] = []
        self.block: asyncio.Event | None = None  # set: sends hang after recording
        self.on_reaction: Any = None
        self.on_command: Any = None

    async def start(self, on_reaction: Any, on_command: Any) -> None:
        self.on_reaction, self.on_command = on_reaction, on_command

    async def stop(self) -> None:
        pass

    def _txn(self, txn_id: str | None, make: Callable[[], str]) -> str:
        if self.failures:
            raise self.failures.pop(0)
        if txn_id is not None and txn_id in self.server.txns:
            return self.server.txns[txn_id]
        event_id = make()
        if txn_id is not None:
            self.server.txns[txn_id] = event_id
        return event_id

    async def _maybe_hang(self) -> None:
        if self.block is not None:
            await self.block.wait()

    async def send(self, room: str, message: ChatMessage, *, txn_id: str | None = None) -> str:
        def make() -> str:
            event_id = f"$m{next(self.server.ids)}"
            self.server.messages[event_id] = Sent(event_id, room, message, txn_id)
            return event_id

        event_id = self._txn(txn_id, make)
        await self._maybe_hang()
        return event_id

    async def edit(
        self, room: str, message_id: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> None:
        def make() -> str:
            self.server.messages[message_id].edits.append(message)
            return f"$e{next(self.server.ids)}"

        self._txn(txn_id, make)

    async def react(
        self, room: str, message_id: str, key: str, *, txn_id: str | None = None
    ) -> str:
        def make() -> str:
            self.server.messages[message_id].reactions.append(key)
            return f"$r{next(self.server.ids)}"

        return self._txn(txn_id, make)

    async def direct_message(
        self, user: str, message: ChatMessage, *, txn_id: str | None = None
    ) -> str:
        def make() -> str:
            self.server.dms.append((user, message))
            return f"$d{next(self.server.ids)}"

        return self._txn(txn_id, make)

    # --- people ---------------------------------------------------------------------

    async def react_as(
        self, sender: str, message_id: str, key: str, event_id: str | None = None
    ) -> str:
        event_id = event_id or f"$u{next(self.server.ids)}"
        await self.on_reaction(ChatReaction("matrix", ROOM, message_id, key, sender, event_id))
        return event_id

    async def say_as(self, sender: str, text: str, *, direct: bool = False) -> str:
        event_id = f"$u{next(self.server.ids)}"
        words = text.removeprefix("!").split()
        args = (words[0].lower(), *words[1:])
        room = "!dm:vigil.test" if direct else ROOM
        await self.on_command(ChatCommand("matrix", room, sender, text, event_id, direct, args))
        return event_id


# --- the world: App + simulated Discourse + recording chat ------------------------------


@dataclass
class World:
    root: Path
    forum: FakeDiscourse
    server: ChatServer
    clock: ManualClock
    app: App
    chat: RecordingChat
    posts: itertools.count = field(default_factory=lambda: itertools.count(500))

    @property
    def store(self) -> Store:
        assert self.app.store is not None
        return self.app.store

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}/webhooks/discourse"

    async def post(self, raw: str, *, user_id: int = 7, username: str = "troll", **kw: Any) -> int:
        post_id = next(self.posts)
        body = self.forum.post_created_payload(
            post_id=post_id, user_id=user_id, username=username, raw=raw, **kw
        )
        assert await self.forum.send_webhook(self.url, "post", "post_created", body) == 200
        return post_id

    async def post_image(self, seed: int = 1, **kw: Any) -> int:
        upload = self.forum.add_upload(png(seed))
        return await self.post(f"look ![pic|64x64]({upload.short_url})", **kw)

    async def alert(self, n: int = 1) -> Sent:
        """The n-th alert message, once the chat has it with all five buttons."""

        def ready() -> Sent | None:
            alerts = self.server.alerts()
            if len(alerts) >= n and len(alerts[n - 1].reactions) == 5:
                return alerts[n - 1]
            return None

        return await until(ready, f"alert {n} in the chat")

    async def restart(self, chat: RecordingChat | None = None) -> None:
        await self.app.stop()
        self.chat = chat or RecordingChat(self.server)
        self.app = await start_app(self.root, self.clock, self.chat)

    def hides(self) -> list[Any]:
        return [
            c for c in self.forum.calls if c.path == "/post_actions.json" or "/review/" in c.path
        ]


async def start_app(root: Path, clock: ManualClock, chat: RecordingChat) -> App:
    loaded, problems = load_everything(root / "bot.toml")
    assert loaded is not None, [str(p) for p in problems.items]
    app = App(
        loaded.config,
        loaded.rules,
        clock=clock,
        watch_rules=False,
        chats=lambda _app: {"matrix": chat},
    )
    await app.start()
    return app


async def make_world(tmp_path: Path, forum: FakeDiscourse, **options: Any) -> World:
    write_alert_config(tmp_path, forum.base_url, **options)
    server = ChatServer()
    chat = RecordingChat(server)
    clock = ManualClock(start=1_767_225_600.0)  # 2026-01-01 00:00:00 UTC
    app = await start_app(tmp_path, clock, chat)
    return World(tmp_path, forum, server, clock, app, chat)


@pytest.fixture
async def forum() -> AsyncIterator[FakeDiscourse]:
    async with FakeDiscourse() as f:
        yield f


@pytest.fixture
async def world(tmp_path: Path, forum: FakeDiscourse) -> AsyncIterator[World]:
    w = await make_world(tmp_path, forum)
    yield w
    await w.app.stop()


# --- what an alert says ------------------------------------------------------------------


async def test_alert_says_what_matched_and_who_but_no_image_ip_or_email(world: World) -> None:
    upload = world.forum.add_upload(png(3))
    post_id = await world.post(
        f"mail {LEAKED_EMAIL} from {LEAKED_IP} ![pic|64x64]({upload.short_url})",
        topic_title=f"contact {LEAKED_EMAIL} at {LEAKED_IP}",
    )
    alert = await world.alert()
    text = alert.message.text + (alert.message.html or "")
    assert "HIGH" in text and "images" in text
    assert f"{world.forum.base_url}/t/a-topic/1/1" in text  # the post's link
    assert f"{world.forum.base_url}/admin/users/7/troll" in text  # the forum's admin view
    assert "Author: troll (user 7)" in text and "trust level 0" in text
    assert f"Post {post_id}" in text and "(1 image, not shown)" in text
    for secret in (LEAKED_EMAIL, LEAKED_IP, upload.sha1, upload.path, "upload://", "<img"):
        assert secret not in text, secret
    assert alert.reactions == ["✅", "🔨", "👀", "❎", "↩️"]


def test_scrub_removes_emails_and_addresses_but_keeps_times() -> None:
    assert scrub(f"a {LEAKED_EMAIL} b {LEAKED_IP} c 2001:db8::7 at 02:13:07") == (
        "a [email removed] b [IP removed] c [IP removed] at 02:13:07"
    )


def test_button_keys_match_with_or_without_the_variation_selector() -> None:
    restore = button_for("↩️")
    assert restore is not None and restore.op == "restore"
    assert button_for("↩") == restore
    assert button_for("👍") is None


def test_span_reads_like_a_person_would_say_it() -> None:
    assert [span(41), span(185), span(7440), span(3 * 86400)] == [
        "41 s",
        "3 min 5 s",
        "2 h 4 min",
        "3 d",
    ]


def _record(**kw: Any) -> AlertRecord:
    target = {
        "post_id": "12",
        "user_id": "7",
        "username": "troll",
        "matches": [{"list": "csam-a", "kind": "pdq", "distance": 12, "category": "csam"}],
        "account_created_at": "2025-12-30T00:00:00+00:00",
        "post_count": 3,
        "url": "/t/x/1/1",
    }
    fields: dict[str, Any] = {
        "id": 12,
        "incident_key": "forum:user:7",
        "source": "forum",
        "severity": "critical",
        "room": "staff",
        "status": "open",
        "created_at": 1_767_225_600.0,
        "updated_at": 1_767_225_600.0,
        "count": 1,
        "summary": "",
        "resolution": None,
        "resolved_by": None,
        "resolved_at": None,
        "version": 1,
        "acked_by": None,
        "acked_at": None,
        "op": None,
        "op_seq": 0,
        "op_by": None,
        "op_at": None,
        "prev_status": None,
        "outcome": None,
        "rules": ("known-image",),
        "dry_run": False,
        "targets": (TargetRecord(1, 0.0, target, 0),),
        "actions": (),
        "confirmations": (),
    }
    fields.update(kw)
    return AlertRecord(**fields)


def test_alert_text_names_list_kind_distance_category_and_account_age() -> None:
    message = render_alert(_record(), {}, 1_767_225_600.0)
    assert "list csam-a (pdq, distance 12, category csam)" in message.text
    assert "account 2 d old · 3 posts" in message.text
    assert message.text.startswith("🚨 CRITICAL · alert #12 · forum · known-image")


# --- the rules act on their own -----------------------------------------------------------


async def test_auto_hide_rule_hides_at_once_and_the_alert_says_so(world: World) -> None:
    post_id = await world.post("this is forbidden content")
    alert = await world.alert()
    [call] = world.hides()
    assert call.json == {"id": post_id, "post_action_type_id": 4, "take_action": True}
    assert world.forum.posts[post_id].hidden
    # The post waited for the hide, so the first version already tells.
    assert f"Done automatically: hide post {post_id} ✓" in alert.message.text
    [entry] = [e for e in await world.store.audit_entries() if e.action == "hide"]
    assert (entry.actor, entry.outcome) == ("rule:forbidden-words", "ok")
    assert entry.target == f"post {post_id} on forum" and "forbidden-words" in entry.reason


async def test_takedown_confirms_an_auto_hide_without_a_second_call(world: World) -> None:
    await world.post("forbidden")
    alert = await world.alert()
    await world.clock.advance(41)
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: "Taken down by Alice" in world.server.text_of(alert.id), "the outcome")
    assert "at 00:00:41 GMT, 41 s after the alert" in world.server.text_of(alert.id)
    assert len(world.hides()) == 1


async def test_dry_run_simulates_and_says_so(tmp_path: Path, forum: FakeDiscourse) -> None:
    w = await make_world(tmp_path, forum, dry_run=True)
    try:
        await w.post("forbidden")
        alert = await w.alert()
        assert "DRY RUN" in alert.message.text
        assert "hide post 500: simulated (dry run)" in alert.message.text
        assert w.forum.calls == []
        [entry] = [e for e in await w.store.audit_entries() if e.action == "hide"]
        assert entry.outcome == "simulated"
    finally:
        await w.app.stop()


# --- buttons ------------------------------------------------------------------------------


async def test_takedown_reaction_hides_the_post_and_edits_the_alert(world: World) -> None:
    post_id = await world.post_image()
    alert = await world.alert()
    assert world.hides() == []
    await world.clock.advance(41)
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: world.hides(), "the hide call")
    assert world.forum.posts[post_id].hidden
    await until(lambda: "Taken down by Alice" in world.server.text_of(alert.id), "the edit")
    text = world.server.text_of(alert.id)
    assert "✅ Taken down by Alice at 00:00:41 GMT, 41 s after the alert" in text
    assert "React ↩️ to restore" in text
    [entry] = [e for e in await world.store.audit_entries() if e.action == "hide"]
    assert (entry.actor, entry.outcome, entry.alert_id) == ("Alice", "ok", 1)


async def test_reaction_from_non_staff_does_nothing_and_is_told_why(world: World) -> None:
    await world.post_image()
    alert = await world.alert()
    await world.chat.react_as(STRANGER, alert.id, "✅")
    [dm] = await until(lambda: world.server.dms_to(STRANGER), "the DM")
    assert "not on Vigil's staff roster" in dm and "nothing was done" in dm
    assert world.forum.calls == []
    refused = [e for e in await world.store.audit_entries() if e.outcome == "refused"]
    assert [(e.actor, e.action) for e in refused] == [(STRANGER, "takedown")]


async def test_volunteer_can_take_down_but_not_suspend(world: World) -> None:
    post_id = await world.post_image()
    alert = await world.alert()
    await world.chat.react_as(VERA, alert.id, "🔨")
    [dm] = await until(lambda: world.server.dms_to(VERA), "the refusal")
    assert "needs the moderator role; you (Vera) are a volunteer" in dm
    assert world.forum.calls == []
    await world.chat.react_as(VERA, alert.id, "✅")
    await until(lambda: world.forum.posts[post_id].hidden, "the hide")
    assert not world.forum.calls_to("PUT", "/admin/users/")


async def test_two_moderators_reacting_at_once_act_once(world: World) -> None:
    await world.post_image()
    alert = await world.alert()
    await asyncio.gather(
        world.chat.react_as(ALICE, alert.id, "✅"), world.chat.react_as(BOB, alert.id, "✅")
    )
    await until(lambda: "Taken down by" in world.server.text_of(alert.id), "the outcome")
    assert len(world.hides()) == 1
    await until(lambda: world.server.dms_to(ALICE) + world.server.dms_to(BOB), "the loser's DM")
    told = world.server.dms_to(ALICE) + world.server.dms_to(BOB)
    assert len(told) == 1
    assert "being handled by" in told[0] or "already handled" in told[0]


async def test_redelivered_reaction_acts_once(world: World) -> None:
    await world.post_image()
    alert = await world.alert()
    await world.chat.react_as(ALICE, alert.id, "✅", event_id="$same")
    await until(lambda: "Taken down by" in world.server.text_of(alert.id), "the outcome")
    await world.chat.react_as(ALICE, alert.id, "✅", event_id="$same")
    assert len(world.hides()) == 1
    assert world.server.dms_to(ALICE) == []  # not even an "already handled"


async def test_later_reaction_is_told_already_handled(world: World) -> None:
    await world.post_image()
    alert = await world.alert()
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: "Taken down by" in world.server.text_of(alert.id), "the outcome")
    await world.chat.react_as(BOB, alert.id, "❎")
    [dm] = await until(lambda: world.server.dms_to(BOB), "the answer")
    assert "already handled: ✅ Taken down by Alice" in dm
    assert len(world.hides()) == 1


async def test_suspend_needs_a_confirmation_within_the_window(world: World) -> None:
    post_id = await world.post_image()
    alert = await world.alert()
    await world.chat.react_as(ALICE, alert.id, "🔨")

    def prompt() -> Any:
        return next((m for m in world.server.messages.values() if "To confirm" in m.message.text
                     and m.reactions == ["🔨"]), None)  # fmt: skip

    first = await until(prompt, "the confirmation prompt")
    assert "Alice asked to take down alert #1 and suspend troll" in first.message.text
    assert world.forum.calls == []
    await world.clock.advance(121)  # too late
    await world.chat.react_as(BOB, first.id, "🔨")
    [late] = await until(lambda: world.server.dms_to(BOB), "the expiry notice")
    assert "Nothing to confirm" in late and world.forum.calls == []

    await world.chat.react_as(ALICE, alert.id, "🔨", event_id="$again")
    await until(lambda: len([m for m in world.server.messages.values()
                             if "To confirm" in m.message.text]) == 2, "a new prompt")  # fmt: skip
    await world.chat.say_as(BOB, "!confirm 1")
    await until(lambda: world.forum.calls_to("PUT", "/admin/users/7/suspend.json"), "suspend")
    assert world.forum.posts[post_id].hidden
    await until(lambda: "suspended by Bob" in world.server.text_of(alert.id), "the outcome")


async def test_restore_unhides_an_automatic_hide(world: World) -> None:
    post_id = await world.post("forbidden")
    alert = await world.alert()
    await world.chat.react_as(VERA, alert.id, "↩️")  # volunteers may not restore
    await until(lambda: world.server.dms_to(VERA), "the refusal")
    await world.chat.react_as(ALICE, alert.id, "↩")  # without U+FE0F, as some clients send
    await until(lambda: world.forum.calls_to("PUT", f"/posts/{post_id}/unhide"), "unhide")
    assert not world.forum.posts[post_id].hidden
    await until(lambda: "↩️ Restored by Alice" in world.server.text_of(alert.id), "the outcome")


async def test_dismiss_keeps_the_post_and_says_how_to_restore(world: World) -> None:
    await world.post("forbidden")
    alert = await world.alert()
    await world.chat.react_as(BOB, alert.id, "❎")
    await until(lambda: "Dismissed as a false positive by Bob" in world.server.text_of(alert.id),
                "the outcome")  # fmt: skip
    assert "The post stays hidden: ↩️ restores it" in world.server.text_of(alert.id)
    assert len(world.forum.calls) == 1  # only the rule's hide


async def test_ack_shows_who_is_on_it(world: World) -> None:
    await world.post_image()
    alert = await world.alert()
    await world.chat.react_as(VERA, alert.id, "👀")
    await until(lambda: "👀 Vera is on it" in world.server.text_of(alert.id), "the ack")
    assert world.forum.calls == []


async def test_failed_takedown_reopens_the_alert_and_says_why(world: World) -> None:
    await world.post_image()
    alert = await world.alert()
    world.forum.fail_next("/post_actions.json", 500)
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: "FAILED" in world.server.text_of(alert.id), "the failure")
    assert "HTTP 500" in world.server.text_of(alert.id)
    await world.chat.react_as(ALICE, alert.id, "✅", event_id="$retry")
    await until(lambda: "Taken down by Alice" in world.server.text_of(alert.id), "the retry")


# --- grouping -----------------------------------------------------------------------------


async def test_later_posts_of_the_same_author_update_the_open_alert(world: World) -> None:
    first = await world.post_image(seed=1)
    alert = await world.alert()
    second = await world.post_image(seed=2)
    await until(lambda: "+1 more post by troll" in world.server.text_of(alert.id), "the update")
    assert len(world.server.alerts()) == 1
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: len(world.hides()) == 2, "both hides")
    assert world.forum.posts[first].hidden and world.forum.posts[second].hidden
    await world.clock.advance(601)
    await world.post_image(seed=3)  # the alert is resolved anyway: a new one
    await world.alert(2)


# --- commands -----------------------------------------------------------------------------


async def test_commands_help_status_and_actions_with_role_checks(world: World) -> None:
    await world.post_image()
    await world.alert()
    await world.chat.say_as(STRANGER, "!help")
    await until(lambda: any("!takedown N" in m.message.text
                            for m in world.server.messages.values()), "help")  # fmt: skip
    await world.chat.say_as(VERA, "!status")
    status = await until(lambda: next((m.message.text for m in world.server.messages.values()
                                       if m.message.text.startswith("Open alerts: 1")), None),
                         "status")  # fmt: skip
    assert "#1 high open" in status and "Lists:" in status and "Feed: last event" in status
    await world.chat.say_as(VERA, "!dismiss 1")
    await until(lambda: any("needs the moderator role" in m.message.text
                            for m in world.server.messages.values()), "refusal")  # fmt: skip
    await world.chat.say_as(VERA, "!takedown #1")
    await until(lambda: world.hides(), "the hide")
    await world.chat.say_as(VERA, "ack 1", direct=True)
    await until(lambda: any("already handled" in m.message.text
                            for m in world.server.messages.values()), "already")  # fmt: skip


# --- chat outages and restarts ---------------------------------------------------------------


async def test_chat_outage_delays_the_alert_honouring_retry_after(world: World) -> None:
    world.chat.failures = [SendFailed("M_LIMIT_EXCEEDED", retry_after=30.0)]
    await world.post_image()
    row = await until(
        lambda: _one_row(world, lambda r: r["op"] == "post_alert" and r["last_error"]),
        "the failed attempt",
    )
    assert row["next_attempt_at"] == pytest.approx(world.clock.now() + 30.0)
    assert world.server.alerts() == []
    await world.clock.advance(30)
    world.app.chat.outbox.wake()  # type: ignore[union-attr]
    await world.alert()
    assert len(world.server.alerts()) == 1


async def _one_row(world: World, match: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
    return next((r for r in await world.store.outbox_rows() if match(r)), None)


async def test_resend_after_a_crash_mid_send_posts_once(world: World) -> None:
    world.chat.block = asyncio.Event()  # the send reaches the server, the answer never comes
    await world.post_image()
    await until(lambda: world.server.alerts(), "the message on the server")
    assert await _one_row(world, lambda r: r["state"] == "sending")
    await world.restart()
    alert = await world.alert()
    assert len(world.server.alerts()) == 1 and alert.reactions == ["✅", "🔨", "👀", "❎", "↩️"]


async def test_bot_restart_neither_repeats_nor_drops(world: World) -> None:
    await world.post("forbidden")
    alert = await world.alert()
    await world.restart()
    await world.chat.react_as(ALICE, alert.id, "✅")
    await until(lambda: "Taken down by Alice" in world.server.text_of(alert.id), "the outcome")
    await world.post_image(user_id=8, username="other")
    await world.alert(2)
    await world.restart()
    await world.post_image(user_id=9, username="third")
    await world.alert(3)
    assert len(world.server.alerts()) == 3
    assert len(world.hides()) == 1  # the rule's hide was not repeated by the restarts


async def test_forum_action_journaled_before_a_crash_is_performed_at_start(
    world: World,
) -> None:
    post_id = await world.post_image()
    alert = await world.alert()
    await world.app.chat.runner.stop()  # type: ignore[union-attr]  # "crash" before performing
    await world.chat.react_as(ALICE, alert.id, "✅")
    snapshot = await world.store.alert_snapshot(1)
    assert snapshot is not None and snapshot.status == "acting" and world.hides() == []
    await world.restart()
    await until(lambda: world.forum.posts[post_id].hidden, "the journaled hide")
    await until(lambda: "Taken down by Alice" in world.server.text_of(alert.id), "the outcome")
    assert len(world.hides()) == 1


# --- decide, the pure core of moderation ---------------------------------------------------------


def test_decide_refuses_to_act_twice_on_a_resolved_alert() -> None:
    alice = StaffMember("Alice", Role.MODERATOR, "UTC")
    resolved = _record(status="resolved", outcome="✅ Taken down by Bob", resolution="taken_down")
    verdict = decide(resolved, "takedown", alice, 1_767_225_700.0, 120)
    assert verdict.changes is None and verdict.actions == ()
    assert verdict.reply and "already handled: ✅ Taken down by Bob" in verdict.reply


def test_alerts_settings_are_checked(tmp_path: Path) -> None:
    from bot.config import load_config
    from bot.schema import Problems

    path = write_alert_config(tmp_path, "http://127.0.0.1:9")
    path.write_text(path.read_text().replace('group_window = "10m"', 'group_window = "soon"'))
    problems = Problems()
    load_config(path, problems)
    [error] = [str(p) for p in problems.errors]
    assert "alerts.group_window" in error and "duration" in error
