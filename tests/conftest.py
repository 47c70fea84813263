"""Shared fixtures: a configured Vigil in a temporary directory, signed deliveries."""

from __future__ import annotations

import json
import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import App, load_everything
from bot.clock import ManualClock
from bot.ingest import sign

SECRET = "test-webhook-secret"
GENERIC_SECRET = "test-generic-secret"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    root: Path,
    *,
    port: int = 0,
    extra_toml: str = "",
    rules: str | None = None,
    synchronous: str = "normal",
) -> Path:
    """A complete bot.toml + rules/ + .env under ``root``; returns the bot.toml path."""
    (root / "rules").mkdir(exist_ok=True)
    (root / ".env").write_text(
        f"TEST_WEBHOOK_SECRET={SECRET}\nTEST_GENERIC_SECRET={GENERIC_SECRET}\n"
        "TEST_API_KEY=test-api-key\nTEST_MATRIX_TOKEN=unused\n"
    )
    (root / "bot.toml").write_text(
        textwrap.dedent(
            f"""
            [service]
            host = "127.0.0.1"
            port = {port}
            log_level = "info"

            [store]
            path = "data/vigil.db"
            synchronous = "{synchronous}"

            [pipeline]
            workers = 2
            retry_base = "1s"

            [[source]]
            name = "forum"
            kind = "discourse"
            base_url = "http://127.0.0.1:9"
            webhook_secret_env = "TEST_WEBHOOK_SECRET"
            media_hosts = ["127.0.0.1"]

            [[source]]
            name = "other"
            kind = "generic"
            base_url = "http://127.0.0.1:9"
            webhook_secret_env = "TEST_GENERIC_SECRET"

            [[room]]
            name = "staff"
            matrix = "!staff:vigil.test"

            [matrix]
            homeserver = "http://127.0.0.1:9"
            user_id = "@vigil:vigil.test"
            access_token_env = "TEST_MATRIX_TOKEN"

            [[staff]]
            name = "Alice"
            role = "moderator"
            timezone = "Europe/London"
            matrix = "@alice:vigil.test"
            """
        )
        + extra_toml
    )
    (root / "rules" / "main.toml").write_text(
        rules
        if rules is not None
        else textwrap.dedent(
            """
            [[rule]]
            name = "reports"
            when = { events = ["report_created"] }
            severity = "medium"
            room = "staff"
            """
        )
    )
    return root / "bot.toml"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A valid configuration in a temporary directory."""
    return write_config(tmp_path)


@pytest.fixture
async def app(config_path: Path) -> AsyncIterator[App]:
    """A started Vigil on a free loopback port, with a manual clock."""
    loaded, problems = load_everything(config_path)
    assert loaded is not None, [str(p) for p in problems.items]
    application = App(loaded.config, loaded.rules, clock=ManualClock(), watch_rules=False)
    await application.start()
    yield application
    await application.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


def discourse_post_body(post_id: int = 101, raw: str = "hello", user_id: int = 7) -> dict[str, Any]:
    """A post_created body in Discourse's real shape (trimmed to the fields Vigil reads)."""
    return {
        "post": {
            "id": post_id,
            "name": "Member",
            "username": "member7",
            "created_at": "2026-11-20T23:01:02.000Z",
            "cooked": f"<p>{raw}</p>",
            "post_number": 2,
            "post_type": 1,
            "updated_at": "2026-11-20T23:01:02.000Z",
            "topic_id": 12,
            "topic_slug": "welcome",
            "topic_title": "Welcome",
            "category_id": 4,
            "raw": raw,
            "user_id": user_id,
            "trust_level": 0,
            "moderator": False,
            "admin": False,
            "staff": False,
            "hidden": False,
            "deleted_at": None,
            "reviewable_id": None,
            "topic_archetype": "regular",
        }
    }


def discourse_headers(
    body: bytes,
    *,
    delivery: str = "1",
    event: str = "post_created",
    event_type: str = "post",
    secret: str = SECRET,
) -> dict[str, str]:
    """The headers Discourse sends, signed over ``body``."""
    return {
        "Content-Type": "application/json",
        "X-Discourse-Instance": "http://forum.example",
        "X-Discourse-Event-Id": delivery,
        "X-Discourse-Event-Type": event_type,
        "X-Discourse-Event": event,
        "X-Discourse-Event-Signature": sign(secret.encode(), body),
    }


def encode(doc: Any) -> bytes:
    """JSON bytes as a forum would send them."""
    return json.dumps(doc).encode()


Poster = Callable[..., Any]
