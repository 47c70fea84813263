"""Logging set-up: text or JSON lines, and a last-line-of-defence scrubber.

Code never logs bodies, IP addresses or emails on purpose; the scrubber makes sure a
mistake elsewhere (an exception message quoting a payload) cannot leak one either.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys
from datetime import UTC, datetime

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])"
)
# Loose candidates (full and shortened forms); only what ipaddress accepts is replaced,
# so clock times ("12:30:45") and C++-style names ("std::map") stay as they are.
_IPV6 = re.compile(r"(?<![0-9A-Za-z:])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f]*(?![0-9A-Za-z:])")
# Matrix ids look like emails (@user:server) but have a colon, not an @ in the middle,
# so they pass; loopback addresses in our own startup line are allowed by name below.
_ALLOWED = {"127.0.0.1", "0.0.0.0"}  # noqa: S104 - names, not a bind


def scrub(text: str) -> str:
    """Replace email and IP addresses in ``text`` with placeholders."""
    text = _EMAIL.sub("[email]", text)
    text = _IPV4.sub(lambda m: m.group(0) if m.group(0) in _ALLOWED else "[ip]", text)
    return _IPV6.sub(_ipv6_or_keep, text)


def _ipv6_or_keep(m: re.Match[str]) -> str:
    try:
        ipaddress.IPv6Address(m.group(0))
    except ValueError:
        return m.group(0)
    return "[ip]"


class ScrubFilter(logging.Filter):
    """Scrub personal data from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message in place; never drop a record."""
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as a JSON line."""
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            out["exception"] = record.exc_text
        elif record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ScrubFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep libraries that log personal data at debug level quiet, whatever the level."""
    # aiohttp's access log would print client addresses; Vigil's own lines suffice.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement's parameters at debug: webhook payloads and the
    # restricted personal-data rows.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
