"""Forum actions against real HTTP on loopback: DiscourseForum vs FakeDiscourse,
GenericForum vs a callback server that checks signatures, DryRunForum; and the
simulated forum's own webhook and upload behaviour other tests rely on."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket

import aiohttp
import pytest
from aiohttp import web

from adapters.discourse_api import DiscourseForum
from adapters.discourse_webhooks import DiscourseParser
from adapters.generic_forum import DryRunForum, GenericForum
from bot.model import EventKind
from bot.ports import ActionKind, ForumAction
from tests.fake_discourse import FakeDiscourse


@pytest.fixture
async def fake():
    async with FakeDiscourse() as forum:
        yield forum


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


class RecordingSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def forum_for(fake: FakeDiscourse, session, **kw) -> DiscourseForum:
    return DiscourseForum(fake.base_url, fake.api_key, fake.api_username, session, **kw)


def action(kind: ActionKind, **kw) -> ForumAction:
    return ForumAction(kind=kind, source="forum", **kw)


# --- DiscourseForum --------------------------------------------------------------------


async def test_hide_acts_on_the_reviewable_with_its_version(fake, session):
    fake.add_reviewable(31, post_id=1207, user_id=4021, version=2)
    outcome = await forum_for(fake, session).perform(
        action(
            ActionKind.HIDE,
            post_id="1207",
            report_id="31",
            report_version=2,
            report_actions=("31-agree", "post-disagree"),
        )
    )
    assert outcome.ok, outcome.detail
    assert "review 31" in outcome.detail
    [call] = fake.calls
    assert (call.method, call.path, call.query) == (
        "PUT",
        "/review/31/perform/agree_and_hide",
        {"version": "2"},
    )
    assert call.auth_ok
    assert fake.posts[1207].hidden


async def test_hide_prefers_an_offered_hide_action(fake, session):
    fake.add_reviewable(40, post_id=9, actions=("agree_and_keep_hidden", "disagree"))
    outcome = await forum_for(fake, session).perform(
        action(
            ActionKind.HIDE,
            post_id="9",
            report_id="40",
            report_actions=("agree_and_keep", "agree_and_keep_hidden"),
        )
    )
    assert outcome.ok
    assert fake.calls[0].path == "/review/40/perform/agree_and_keep_hidden"


async def test_hide_without_a_report_flags_the_post_as_staff(fake, session):
    outcome = await forum_for(fake, session).perform(action(ActionKind.HIDE, post_id="12"))
    assert outcome.ok, outcome.detail
    [call] = fake.calls
    assert (call.method, call.path) == ("POST", "/post_actions.json")
    assert call.json == {"id": 12, "post_action_type_id": 4, "take_action": True}
    assert fake.posts[12].hidden


async def test_hide_with_a_stale_version_falls_back_to_a_staff_flag(fake, session):
    fake.add_reviewable(31, post_id=1207, version=5)
    outcome = await forum_for(fake, session).perform(
        action(ActionKind.HIDE, post_id="1207", report_id="31", report_version=4)
    )
    assert outcome.ok
    assert "HTTP 409" in outcome.detail and "staff flag" in outcome.detail
    assert [c.path for c in fake.calls] == [
        "/review/31/perform/agree_and_hide",
        "/post_actions.json",
    ]
    assert fake.posts[1207].hidden


async def test_hide_of_a_queued_post_rejects_it(fake, session):
    fake.add_reviewable(32, "ReviewableQueuedPost", user_id=4023)
    outcome = await forum_for(fake, session).perform(
        action(ActionKind.HIDE, post_id="queued:32", report_id="32", report_version=0)
    )
    assert outcome.ok, outcome.detail
    assert fake.calls[0].path == "/review/32/perform/reject_post"
    assert fake.reviewables[32].status == 2


async def test_delete_unhide_suspend_silence_make_the_documented_calls(fake, session):
    forum = forum_for(fake, session)
    fake.post(12).hidden = True
    assert (await forum.perform(action(ActionKind.UNHIDE, post_id="12"))).ok
    assert not fake.posts[12].hidden
    assert (await forum.perform(action(ActionKind.DELETE, post_id="12"))).ok
    assert fake.posts[12].deleted
    suspended = await forum.perform(
        action(ActionKind.SUSPEND, user_id="7", reason="CSAM match", until="2026-04-01T00:00:00Z")
    )
    assert suspended.ok and "until 2026-04-01" in suspended.detail
    silenced = await forum.perform(action(ActionKind.SILENCE, user_id="8", reason="spam wave"))
    assert silenced.ok
    calls = [(c.method, c.path, c.json) for c in fake.calls]
    assert calls == [
        ("PUT", "/posts/12/unhide", None),
        ("DELETE", "/posts/12.json", None),
        (
            "PUT",
            "/admin/users/7/suspend.json",
            {"suspend_until": "2026-04-01T00:00:00Z", "reason": "CSAM match"},
        ),
        ("PUT", "/admin/users/8/silence.json", {"reason": "spam wave"}),
    ]
    assert fake.users[7].suspend_reason == "CSAM match"
    assert fake.users[8].silenced


async def test_suspend_without_an_end_is_forever_and_has_a_reason(fake, session):
    outcome = await forum_for(fake, session).perform(action(ActionKind.SUSPEND, user_id="7"))
    assert outcome.ok
    body = fake.calls[0].json
    assert int(body["suspend_until"][:4]) >= 3000
    assert body["reason"]


async def test_every_call_carries_the_api_headers(fake, session):
    await forum_for(fake, session).perform(action(ActionKind.DELETE, post_id="3"))
    assert fake.calls[0].auth_ok
    assert fake.calls[0].api_username == "vigil"


async def test_wrong_api_key_fails_with_discourse_message_and_no_key_in_detail(fake, session):
    forum = DiscourseForum(fake.base_url, "stolen-or-wrong-key", "vigil", session)
    outcome = await forum.perform(action(ActionKind.DELETE, post_id="12"))
    assert not outcome.ok
    assert outcome.detail.startswith("HTTP 403 from /posts/12.json: You are not permitted")
    assert "stolen-or-wrong-key" not in outcome.detail
    assert "stolen-or-wrong-key" not in repr(forum)
    assert not fake.calls[0].auth_ok
    assert 12 not in fake.posts or not fake.posts[12].deleted


async def test_wrong_api_username_is_refused_too(fake, session):
    forum = DiscourseForum(fake.base_url, fake.api_key, "someone", session)
    assert not (await forum.perform(action(ActionKind.UNHIDE, post_id="1"))).ok


async def test_rate_limit_is_waited_out_once(fake, session):
    sleep = RecordingSleep()
    fake.fail_next("/posts/", 429, retry_after=7)
    outcome = await forum_for(fake, session, sleep=sleep).perform(
        action(ActionKind.DELETE, post_id="5")
    )
    assert outcome.ok
    assert sleep.waits == [7.0]
    assert len(fake.calls) == 2


async def test_rate_limit_twice_fails(fake, session):
    sleep = RecordingSleep()
    fake.fail_next("/posts/", 429, retry_after=1, times=2)
    outcome = await forum_for(fake, session, sleep=sleep).perform(
        action(ActionKind.DELETE, post_id="5")
    )
    assert not outcome.ok
    assert outcome.detail.startswith("HTTP 429 from /posts/5.json")
    assert sleep.waits == [1.0]


async def test_rate_limit_with_a_long_wait_fails_at_once(fake, session):
    sleep = RecordingSleep()
    fake.fail_next("/posts/", 429, retry_after=3600)
    outcome = await forum_for(fake, session, sleep=sleep).perform(
        action(ActionKind.DELETE, post_id="5")
    )
    assert not outcome.ok
    assert sleep.waits == []


async def test_server_error_is_an_outcome_not_an_exception(fake, session):
    fake.fail_next("/admin/", 502, body={"errors": ["Bad gateway " + "x" * 500]})
    outcome = await forum_for(fake, session).perform(action(ActionKind.SILENCE, user_id="3"))
    assert not outcome.ok
    assert outcome.detail.startswith("HTTP 502 from /admin/users/3/silence.json: Bad gateway")
    assert len(outcome.detail) < 300


async def test_unknown_post_in_strict_mode_is_a_404_outcome(session):
    async with FakeDiscourse(strict=True) as fake:
        outcome = await forum_for(fake, session).perform(action(ActionKind.DELETE, post_id="99"))
    assert not outcome.ok
    assert outcome.detail.startswith("HTTP 404 from /posts/99.json")


async def test_network_error_is_an_outcome(session):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    forum = DiscourseForum(f"http://127.0.0.1:{port}", "k", "u", session)
    outcome = await forum.perform(action(ActionKind.DELETE, post_id="1"))
    assert not outcome.ok
    assert outcome.detail.startswith("network error on /posts/1.json")


async def test_ids_that_are_not_discourse_ids_make_no_call(fake, session):
    forum = forum_for(fake, session)
    for bad in (
        action(ActionKind.DELETE, post_id="queued:5"),
        action(ActionKind.UNHIDE, post_id="../admin"),
        action(ActionKind.SUSPEND, user_id="-1"),
        action(ActionKind.SILENCE),
        action(ActionKind.HIDE, post_id="1", report_id="../x"),
    ):
        outcome = await forum.perform(bad)
        assert not outcome.ok, bad
    assert fake.calls == []


async def test_delete_of_a_queued_post_rejects_it_on_the_review_queue(fake, session):
    fake.add_reviewable(50, "ReviewableQueuedPost", user_id=3)
    outcome = await forum_for(fake, session).perform(
        action(ActionKind.DELETE, post_id="queued:50", report_id="50")
    )
    assert outcome.ok
    assert fake.calls[0].path == "/review/50/perform/reject_post"


async def test_redirect_is_not_followed_with_the_key(fake, session):
    # A forum behind a misconfigured proxy must not get the key sent elsewhere.
    app = web.Application()

    async def redirect(request):
        raise web.HTTPFound(fake.url("/posts/1.json"))

    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        forum = DiscourseForum(f"http://127.0.0.1:{port}", "k", "u", session)
        outcome = await forum.perform(action(ActionKind.DELETE, post_id="1"))
    finally:
        await runner.cleanup()
    assert not outcome.ok
    assert outcome.detail.startswith("HTTP 302")
    assert fake.calls == []


# --- GenericForum -----------------------------------------------------------------------


class Callback:
    """A forum's callback endpoint that verifies Vigil's signature like a forum would."""

    def __init__(self, secret: str, status: int = 200) -> None:
        self.secret = secret
        self.status = status
        self.received: list[tuple[dict, dict]] = []
        self.rejected = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Vigil-Signature", ""), expected):
            self.rejected += 1
            return web.Response(status=401, text="bad signature")
        self.received.append((json.loads(body), dict(request.headers)))
        return web.Response(status=self.status, text="nope" if self.status >= 400 else "ok")


@pytest.fixture
async def callback_server():
    servers = []

    async def start(callback: Callback) -> str:
        app = web.Application()
        app.router.add_post("/vigil", callback.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        servers.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/vigil"

    yield start
    for runner in servers:
        await runner.cleanup()


async def test_generic_forum_posts_a_signed_action(callback_server, session):
    callback = Callback("shared-secret")
    url = await callback_server(callback)
    outcome = await GenericForum(url, "shared-secret", session).perform(
        action(
            ActionKind.SUSPEND,
            user_id="4021",
            post_id="1207",
            reason="match",
            until="2026-04-01T00:00:00Z",
        )
    )
    assert outcome.ok, outcome.detail
    [(body, headers)] = callback.received
    assert body["action"] == "suspend"
    assert (body["user_id"], body["post_id"], body["reason"], body["until"]) == (
        "4021",
        "1207",
        "match",
        "2026-04-01T00:00:00Z",
    )
    assert body["source"] == "forum"
    assert headers["X-Vigil-Delivery"] == body["action_id"]
    assert len(body["action_id"]) == 32


async def test_generic_forum_with_the_wrong_secret_is_refused(callback_server, session):
    callback = Callback("shared-secret")
    url = await callback_server(callback)
    outcome = await GenericForum(url, "another-secret", session).perform(
        action(ActionKind.HIDE, post_id="1")
    )
    assert not outcome.ok
    assert "HTTP 401" in outcome.detail
    assert "another-secret" not in outcome.detail
    assert callback.rejected == 1


async def test_generic_forum_reports_a_refusal(callback_server, session):
    url = await callback_server(Callback("s", status=422))
    outcome = await GenericForum(url, "s", session).perform(action(ActionKind.DELETE, post_id="1"))
    assert not outcome.ok
    assert "HTTP 422" in outcome.detail and "nope" in outcome.detail


async def test_generic_forum_network_error_is_an_outcome(session):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = await GenericForum(f"http://127.0.0.1:{port}/x", "s", session).perform(
        action(ActionKind.DELETE, post_id="1")
    )
    assert not outcome.ok
    assert "network error" in outcome.detail


# --- DryRunForum ------------------------------------------------------------------------


async def test_dry_run_simulates_and_says_what_it_would_do():
    outcome = await DryRunForum().perform(action(ActionKind.HIDE, post_id="12"))
    assert outcome.ok and outcome.simulated
    assert outcome.detail == "dry run: would hide post 12"
    outcome = await DryRunForum("discourse at https://forum.example.org").perform(
        action(ActionKind.SUSPEND, user_id="7", until="2026-04-01T00:00:00Z")
    )
    assert outcome.detail == (
        "dry run: would suspend user 7 until 2026-04-01T00:00:00Z"
        " on discourse at https://forum.example.org"
    )


async def test_dry_run_touches_nothing(fake):
    await DryRunForum(fake.base_url).perform(action(ActionKind.DELETE, post_id="12"))
    assert fake.calls == []


# --- the simulated forum's webhooks and uploads -------------------------------------------


@pytest.fixture
async def receiver():
    """A webhook endpoint that verifies the signature over the raw bytes and parses."""
    got: list = []
    secret = "test-webhook-secret"

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(
            request.headers.get("X-Discourse-Event-Signature", ""), expected
        ):
            return web.Response(status=401)
        got.append((dict(request.headers), raw))
        parsed = DiscourseParser().parse("forum", request.headers, json.loads(raw))
        got.append(parsed)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/webhooks/discourse", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/webhooks/discourse"
    yield url, got
    await runner.cleanup()


async def test_fake_sends_signed_post_webhooks_that_parse_with_the_image_sha1(fake, receiver):
    url, got = receiver
    upload = fake.add_upload(b"\x89PNG generated test bytes", "png")
    body = fake.post_created_payload(12, 7, "troll", f"see ![x|10x10]({upload.short_url}) <b>&</b>")
    status = await fake.send_webhook(url, "post", "post_created", body, delivery_id="abc")
    assert status == 200
    headers, raw = got[0]
    assert headers["X-Discourse-Event-Id"] == "abc"
    assert headers["X-Discourse-Event-Type"] == "post"
    assert headers["X-Discourse-Event"] == "post_created"
    assert headers["X-Discourse-Instance"] == fake.base_url
    assert headers["Content-Type"] == "application/json"
    assert b"\\u003cb\\u003e" in raw  # Rails-style escaping: bytes differ from json.dumps
    event = got[1].event
    assert event.kind is EventKind.POST_CREATED
    assert [m.sha1 for m in event.post.media] == [upload.sha1]
    assert event.post.media[0].url == upload.path


async def test_fake_webhook_with_a_wrong_secret_is_rejected(fake, receiver):
    url, _ = receiver
    status = await fake.send_webhook(url, "ping", "ping", fake.ping_payload(), secret="wrong")
    assert status == 401


async def test_fake_serves_uploads_and_short_urls(fake, session):
    data = b"GIF89a generated"
    sha1, short_url, path = fake.add_upload(data, "gif")
    assert sha1 == hashlib.sha1(data).hexdigest()
    async with session.get(fake.url(path)) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/gif"
        assert await resp.read() == data
    name = short_url.removeprefix("upload://")
    async with session.get(fake.url(f"/uploads/short-url/{name}"), allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == path


async def test_fake_misbehaves_on_request(fake, session):
    _, _, path = fake.add_upload(b"png-ish", "png")
    fake.misbehave(path, status=500, times=1)
    async with session.get(fake.url(path)) as resp:
        assert resp.status == 500
    async with session.get(fake.url(path)) as resp:
        assert resp.status == 200
    fake.misbehave(path, redirect_to="http://169.254.169.254/latest/meta-data/")
    async with session.get(fake.url(path), allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].startswith("http://169.254.169.254/")
    fake.misbehave(path, stream_bytes=3 * 65536, content_type="image/png")
    async with session.get(fake.url(path)) as resp:
        assert len(await resp.read()) == 3 * 65536
    fake.behave()
    assert fake.upload_requests.count(path) == 4
