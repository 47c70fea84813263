"""Issue 7: IP addresses and emails from forum events reach no chat message and no log line.

The whole service runs (real webhooks over HTTP from the simulated Discourse, real
SQLite, the pipeline, alerts and the outbox) with a recording chat standing in for the
chat server. Every message the bot sends and every log record is collected; none may
carry an address or email that the forum sent. Only an admin's ``!whois`` gets them,
in a direct message, and the lookup is audited.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.logs import quiet_libraries
from tests.test_alerts import (
    ALICE,
    FakeDiscourse,
    World,
    make_world,
    until,
)

ADMIN = "@ada:vigil.test"
EMAIL = "quiet.member@example.net"
REG_IP = "198.51.100.61"
LAST_IP = "2001:db8:5::61"
STAFF = (("Alice", "moderator", ALICE), ("Ada", "admin", ADMIN))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with FakeDiscourse() as forum:
        w = await make_world(tmp_path, forum, staff=STAFF)
        yield w
        await w.app.stop()


def everything_sent(world: World, *, except_dm_to: str | None = None) -> str:
    texts: list[str] = []
    for sent in world.server.messages.values():
        texts += [sent.message.text, sent.message.html or ""]
        for edit in sent.edits:
            texts += [edit.text, edit.html or ""]
    for user, message in world.server.dms:
        if user != except_dm_to:
            texts += [message.text, message.html or ""]
    return "\n".join(texts)


async def test_no_ip_or_email_in_chat_or_logs_and_whois_is_admin_only(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_libraries()  # the service's own logging policy (bot.logs.setup_logging)
    caplog.set_level(logging.DEBUG)
    forum = world.forum
    body = forum.user_created_payload(
        7, "troll", email=EMAIL, ip_address=LAST_IP, registration_ip_address=REG_IP
    )
    assert await forum.send_webhook(world.url, "user", "user_created", body) == 200
    # The member also pastes the addresses into a post with an image: it alerts.
    await world.post_image(seed=5, user_id=7, username="troll")
    alert = await world.alert()
    assert "troll" in alert.message.text

    # A moderator may not look; an admin gets the data in a DM.
    await world.chat.say_as(ALICE, "!whois troll")
    await world.chat.say_as(ADMIN, "!whois troll")

    def answers() -> tuple[list[str], list[str]] | None:
        alice, ada = world.server.dms_to(ALICE), world.server.dms_to(ADMIN)
        return (alice, ada) if alice and ada else None

    alice_dms, ada_dms = await until(answers, "both whois answers")
    assert "admin" in alice_dms[-1] and EMAIL not in alice_dms[-1]
    assert EMAIL in ada_dms[-1] and REG_IP in ada_dms[-1]

    # Nothing else the bot ever sent, and no log line, carries them.
    sent = everything_sent(world, except_dm_to=ADMIN)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (EMAIL, REG_IP, LAST_IP):
        assert secret not in sent, secret
        assert secret not in logged, secret

    # Both lookups are in the audit log, without the values.
    entries = [e for e in await world.store.audit_entries() if "whois" in e.action]
    assert [(e.actor, e.outcome) for e in entries] == [("Alice", "refused"), ("Ada", "ok")]
    assert all(EMAIL not in str(e) and REG_IP not in str(e) for e in entries)
