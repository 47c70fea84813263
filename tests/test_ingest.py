"""Webhook ingest over real HTTP: the contract of DESIGN §5 and every bad input of issue 2."""

from __future__ import annotations

import json

import aiohttp
import pytest

from bot.app import App
from bot.ingest import sign
from tests.conftest import (
    GENERIC_SECRET,
    SECRET,
    discourse_headers,
    discourse_post_body,
    encode,
)


def url(app: App, path: str = "/webhooks/discourse") -> str:
    return f"http://127.0.0.1:{app.port}{path}"


async def stored(app: App) -> list[dict]:
    assert app.store is not None
    return await app.store.events()


async def post(
    http: aiohttp.ClientSession,
    app: App,
    body: bytes,
    headers: dict,
    path: str = "/webhooks/discourse",
) -> tuple[int, dict]:
    async with http.post(url(app, path), data=body, headers=headers) as resp:
        try:
            doc = await resp.json(content_type=None)
        except json.JSONDecodeError:
            doc = {}
        return resp.status, doc


async def test_signed_delivery_is_stored_then_acknowledged(app: App, http) -> None:
    body = encode(discourse_post_body())
    status, doc = await post(http, app, body, discourse_headers(body, delivery="d-1"))
    assert (status, doc["status"]) == (200, "stored")
    rows = await stored(app)
    assert len(rows) == 1
    assert (rows[0]["source"], rows[0]["delivery_id"], rows[0]["kind"]) == (
        "forum",
        "d-1",
        "post_created",
    )
    event = json.loads(rows[0]["payload"])
    assert event["post"]["id"] == "101" and event["post"]["author"]["username"] == "member7"


async def test_stored_event_is_processed_by_the_pipeline(app: App, http) -> None:
    body = encode(discourse_post_body())
    await post(http, app, body, discourse_headers(body, delivery="d-2"))
    assert app.pipeline is not None
    await app.pipeline.stop()  # let the workers finish what they hold
    while await app.pipeline.run_once():
        pass
    rows = await stored(app)
    assert rows[0]["state"] == "done"


async def test_replayed_delivery_id_is_acknowledged_once_stored_once(app: App, http) -> None:
    body = encode(discourse_post_body())
    first = await post(http, app, body, discourse_headers(body, delivery="same"))
    again = await post(http, app, body, discourse_headers(body, delivery="same"))
    assert first == (200, {"status": "stored"})
    assert again == (200, {"status": "duplicate"})
    assert len(await stored(app)) == 1


async def test_same_delivery_id_from_two_sources_are_two_events(app: App, http) -> None:
    body = encode(discourse_post_body())
    await post(http, app, body, discourse_headers(body, delivery="7"))
    generic = encode({"event": "user_created", "user": {"id": 5, "username": "newbie"}})
    status, _ = await post(
        http,
        app,
        generic,
        {
            "Content-Type": "application/json",
            "X-Vigil-Delivery": "7",
            "X-Vigil-Signature": sign(GENERIC_SECRET.encode(), generic),
        },
        "/webhooks/generic",
    )
    assert status == 200
    assert [r["source"] for r in await stored(app)] == ["forum", "other"]


async def test_ping_is_answered_and_not_stored(app: App, http) -> None:
    body = encode({"ping": "OK"})
    status, doc = await post(
        http, app, body, discourse_headers(body, event="ping", event_type="ping")
    )
    assert status == 200 and doc["status"] == "ignored"
    assert await stored(app) == []


BAD_INPUTS = {
    "missing signature": (
        401,
        lambda b: {
            k: v for k, v in discourse_headers(b).items() if k != "X-Discourse-Event-Signature"
        },
    ),
    "wrong signature": (401, lambda b: discourse_headers(b, secret="not-the-secret")),
    "signature of other bytes": (
        401,
        lambda b: {
            **discourse_headers(b),
            "X-Discourse-Event-Signature": sign(SECRET.encode(), b + b" "),
        },
    ),
    "missing delivery id": (
        400,
        lambda b: {k: v for k, v in discourse_headers(b).items() if k != "X-Discourse-Event-Id"},
    ),
    "missing event header": (
        400,
        lambda b: {k: v for k, v in discourse_headers(b).items() if k != "X-Discourse-Event"},
    ),
    "wrong content type": (415, lambda b: {**discourse_headers(b), "Content-Type": "text/plain"}),
    "unknown event type": (400, lambda b: discourse_headers(b, event="post_teleported")),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_bad_headers_are_refused_and_store_nothing(app: App, http, case: str) -> None:
    expected, make_headers = BAD_INPUTS[case]
    body = encode(discourse_post_body())
    status, doc = await post(http, app, body, make_headers(body))
    assert status == expected, doc
    assert doc.get("error")
    assert await stored(app) == []


BAD_BODIES = {
    "truncated JSON": (400, encode(discourse_post_body())[:-7], "not valid JSON"),
    "non-UTF-8 bytes": (400, b'{"post": {"raw": "\xff\xfe"}}', "not UTF-8"),
    "very deep nesting": (
        400,
        b'{"post": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "nested too deeply",
    ),
    "valid JSON of the wrong shape": (400, encode({"post": [1, 2, 3]}), "post"),
    "top-level array": (400, encode([{"post": {}}]), ""),
    "body key does not match event": (400, encode({"user": {"id": 1}}), ""),
    "huge integer id": (400, encode(discourse_post_body(post_id=2**70)), "id"),
    "string where an object belongs": (400, encode({"post": "hello"}), "post"),
    "empty body": (400, b"", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_bad_bodies_are_refused_with_a_reason_and_store_nothing(
    app: App, http, case: str
) -> None:
    expected, body, reason = BAD_BODIES[case]
    status, doc = await post(http, app, body, discourse_headers(body))
    assert status == expected, doc
    assert reason in doc["error"]
    assert await stored(app) == []


async def test_ten_mebibyte_body_is_refused_with_413(app: App, http) -> None:
    body = b'{"post": {"raw": "' + b"x" * (10 * 1024 * 1024) + b'"}}'
    status, _ = await post(http, app, body, discourse_headers(body))
    assert status == 413
    assert await stored(app) == []


async def test_chunked_oversized_body_is_refused_with_413(app: App, http) -> None:
    async def chunks():
        for _ in range(40):
            yield b"x" * 65536

    headers = discourse_headers(b"")
    async with http.post(url(app), data=chunks(), headers=headers) as resp:
        assert resp.status == 413
    assert await stored(app) == []


async def test_unconfigured_webhook_path_is_404(app: App, http) -> None:
    body = encode(discourse_post_body())
    status, _ = await post(http, app, body, discourse_headers(body), "/webhooks/xenforo")
    assert status == 404


async def test_server_survives_every_bad_input(app: App, http) -> None:
    # After the whole bad-input corpus, a good delivery still goes through.
    for _, make_headers in BAD_INPUTS.values():
        body = encode(discourse_post_body())
        await post(http, app, body, make_headers(body))
    for _, body, _ in BAD_BODIES.values():
        await post(http, app, body, discourse_headers(body))
    body = encode(discourse_post_body())
    status, _ = await post(http, app, body, discourse_headers(body, delivery="after"))
    assert status == 200
    assert [r["delivery_id"] for r in await stored(app)] == ["after"]


async def test_healthz_and_metrics(app: App, http) -> None:
    body = encode(discourse_post_body())
    await post(http, app, body, discourse_headers(body, delivery="m1"))
    async with http.get(url(app, "/healthz")) as resp:
        health = await resp.json()
        assert resp.status == 200
    assert health["database"] == "ok" and "forum" in health["last_event_age_s"]
    async with http.get(url(app, "/metrics")) as resp:
        text = await resp.text()
    assert 'vigil_webhooks_total{outcome="stored",source="forum"}' in text


async def test_user_created_keeps_no_email_or_ip(app: App, http) -> None:
    doc = {
        "user": {
            "id": 4,
            "username": "adsad",
            "email": "adsad@example.com",
            "ip_address": "203.0.113.9",
            "registration_ip_address": "203.0.113.9",
            "created_at": "2026-11-20T10:58:17.185Z",
            "trust_level": 0,
        }
    }
    body = encode(doc)
    status, _ = await post(
        http, app, body, discourse_headers(body, event="user_created", event_type="user")
    )
    assert status == 200
    payload = (await stored(app))[0]["payload"]
    assert "adsad@example.com" not in payload and "203.0.113.9" not in payload


async def test_running_app_keeps_email_and_ip_only_in_the_restricted_table(app: App, http) -> None:
    doc = {"user": {"id": 9, "username": "newmember", "email": "new@example.com",
                    "ip_address": "198.51.100.23", "created_at": "2026-11-20T10:58:17.185Z",
                    "trust_level": 0}}
    body = encode(doc)
    status, _ = await post(http, app, body, discourse_headers(body, delivery="pii-1", event="user_created", event_type="user"))
    assert status == 200
    assert app.store is not None
    kept = {(r["kind"], r["value"]) for r in await app.store.personal_rows()}
    assert kept == {("email", "new@example.com"), ("ip", "198.51.100.23")}
    assert "new@example.com" not in (await stored(app))[0]["payload"]
