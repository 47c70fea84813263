"""Logs: JSON lines on request, and no email or IP address ever reaches a log line."""

from __future__ import annotations

import json
import logging

from bot.logs import JsonFormatter, ScrubFilter, scrub


def test_scrub_removes_emails_and_ips() -> None:
    text = "user adsad@example.com from 203.0.113.9 and 2001:db8::1:2 / 2001:db8:0:0:0:0:2:1"
    out = scrub(text)
    assert "adsad@example.com" not in out and "203.0.113.9" not in out
    assert "2001:db8:0:0:0:0:2:1" not in out
    assert "[email]" in out and "[ip]" in out


def test_scrub_keeps_matrix_ids_and_versions() -> None:
    assert (
        scrub("@alice:vigil.test reacted; Synapse 1.163.2")
        == "@alice:vigil.test reacted; Synapse 1.163.2"
    )


def test_filter_scrubs_formatted_message_and_exception() -> None:
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "bad body %s", ("a@b.org",), None)
    try:
        raise ValueError("payload had 198.51.100.7")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert ScrubFilter().filter(record)
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert doc["message"] == "bad body [email]"
    assert "198.51.100.7" not in line and "[ip]" in doc["exception"]
    assert doc["level"] == "error"
