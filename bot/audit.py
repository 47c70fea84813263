"""The audit log's tools: verify the hash chain, show entries filtered.

Every action, by a person or a rule, is appended to the ``audit`` table (bot.store);
each entry carries the hash of the one before it, and SQLite triggers refuse edits
and deletions. Someone with write access to the database file can drop the triggers,
so :func:`verify_chain` recomputes every hash: an edited entry or a deleted one in the
middle breaks the chain at a place it names. Two things a chain alone cannot show
are entries cut off the end and a log rewritten from the edit onwards; for those,
note the head hash ``vigil audit verify`` prints somewhere else (a ticket, the staff
room) and check it later with ``--anchor HASH``.

``vigil audit verify [--anchor HASH]`` and ``vigil audit show [--person NAME]
[--alert ID] [--action A] [--since ISO] [--until ISO] [--json]``.

The command-line identity model used by ``vigil evidence`` and ``vigil export`` lives
here too: the CLI runs on the server, so whoever runs it already has the files; what
the tools add is accountability. A command that reveals personal data or evidence
needs ``--as NAME``, NAME must be an admin on the roster, and the use is audited
under that name (with the operating-system user beside it).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bot.config import Config, Role, StaffMember
from bot.schema import Problems
from bot.store import GENESIS_HASH, AuditEntry, Store, audit_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of walking the chain; ``broken_id`` names the first bad entry."""

    ok: bool
    entries: int
    head: str
    broken_id: int | None = None
    problem: str = ""


def verify_chain(rows: Sequence[tuple[Any, ...]], anchor: str | None = None) -> ChainReport:
    """Walk rows from :meth:`Store.audit_chain`: each ``prev_hash`` must be the hash of
    the entry before, each hash must match its entry's fields; ``anchor`` (a head hash
    noted earlier) must still be in the chain."""
    prev, prev_id = GENESIS_HASH, None
    seen: set[str] = set()
    for count, row in enumerate(rows):
        entry_id, at, actor, action, target, alert_id, reason, outcome, detail, prev_hash, h = row
        if prev_hash != prev:
            before = f"entry #{prev_id}" if prev_id is not None else "the start of the log"
            return ChainReport(
                False,
                count,
                prev,
                entry_id,
                f"its prev_hash is not the hash of {before}: an entry before it was deleted"
                " or changed",
            )
        expected = audit_hash(
            prev_hash, at, actor, action, target, alert_id, reason, outcome, detail
        )
        if expected != h:
            return ChainReport(
                False, count, prev, entry_id, "its hash does not match its fields: it was edited"
            )
        prev, prev_id = h, entry_id
        seen.add(h)
    if anchor is not None and anchor.strip().lower() not in seen:
        return ChainReport(
            False,
            len(rows),
            prev,
            None,
            f"the anchor {anchor.strip()} is not in the log: entries were cut off its end"
            " or the log was rewritten",
        )
    return ChainReport(True, len(rows), prev)


def parse_when(text: str) -> float:
    """Epoch seconds of an ISO 8601 date or date-time (UTC when it names no offset)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 date or time, e.g. 2026-02-01T23:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(ts: float) -> str:
    """A timestamp as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_entry(e: AuditEntry) -> str:
    """One line a person reads: when, who, what, on what, outcome, why."""
    alert = f" [alert {e.alert_id}]" if e.alert_id is not None else ""
    detail = f" {json.dumps(e.detail, sort_keys=True, ensure_ascii=False)}" if e.detail else ""
    return (
        f"#{e.id} {iso(e.at)} {e.actor}: {e.action} {e.target}{alert} -> {e.outcome}"
        f" ({e.reason}){detail}"
    )


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    """An entry as JSON-ready data (time as ISO 8601 too)."""
    return {
        "id": e.id,
        "at": e.at,
        "time": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "alert_id": e.alert_id,
        "reason": e.reason,
        "outcome": e.outcome,
        "detail": e.detail,
        "hash": e.hash,
    }


# --- command line ---------------------------------------------------------------------


class CliRefused(Exception):
    """A CLI request the roster does not allow (the message says why)."""


async def open_store(config_path: Path, err: TextIO) -> tuple[Config, Store] | None:
    """bot.toml and its database, for a CLI tool. The rules are not loaded: a broken
    rules file must not keep an admin from the audit log or an export."""
    from bot.config import load_config

    problems = Problems()
    config = load_config(config_path, problems)
    if config is None or problems.errors:
        for problem in problems.errors:
            print(problem, file=err)
        print("vigil: bot.toml has errors; run `vigil check`.", file=err)
        return None
    store = await Store.open(config.store.path, synchronous=config.store.synchronous)
    return config, store


def os_user() -> str:
    """The operating-system account running the command, for the audit detail."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return os.environ.get("USER", "unknown")


def roster_person(config: Config, name: str | None) -> StaffMember | None:
    """The roster entry ``--as`` names (None without ``--as``); CliRefused if unknown."""
    if name is None:
        return None
    person = config.person(name)
    if person is None:
        names = ", ".join(p.name for p in config.staff) or "nobody"
        raise CliRefused(f"{name!r} is not on the staff roster in {config.path} (roster: {names})")
    return person


def require_admin(config: Config, name: str | None, what: str) -> StaffMember:
    """The admin ``--as`` names; CliRefused (say what) for none, an unknown or a non-admin."""
    person = roster_person(config, name)
    if person is None:
        raise CliRefused(f"{what} needs --as NAME, an admin on the staff roster")
    if person.role is not Role.ADMIN:
        raise CliRefused(f"{what} is for admins; {person.name} is a {person.role.value}")
    return person


def cli_actor(person: StaffMember | None) -> str:
    """The audit actor of a CLI command: the roster name, else ``cli:<os user>``."""
    return person.name if person is not None else f"cli:{os_user()}"


async def _verify(store: Store, anchor: str | None, out: TextIO) -> int:
    report = verify_chain(await store.audit_chain(), anchor)
    if report.ok:
        print(f"audit log OK: {report.entries} entries, head {report.head}", file=out)
        return 0
    where = f"entry #{report.broken_id}" if report.broken_id is not None else "the end"
    print(f"audit log BROKEN at {where}: {report.problem}", file=out)
    print(f"  {report.entries} entries before it verified; their head is {report.head}", file=out)
    return 1


async def _show(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    targets: list[str] = []
    if args.alert is not None:
        snapshot = await store.alert_snapshot(args.alert)
        if snapshot is not None:
            targets = [f"event {t.event_id}" for t in snapshot.targets]
    entries = await store.audit_query(
        actor=args.person,
        alert_id=args.alert,
        action=args.action,
        since=parse_when(args.since) if args.since else None,
        until=parse_when(args.until) if args.until else None,
        targets=targets,
    )
    for e in entries:
        if args.json:
            print(json.dumps(entry_dict(e), ensure_ascii=False, sort_keys=True), file=out)
        else:
            print(format_entry(e), file=out)
    if not args.json:
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}", file=out)
    return 0


def audit_command(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``vigil audit verify|show ...``; returns the exit status."""
    import asyncio

    default = Path(os.environ.get("VIGIL_CONFIG", "bot.toml"))
    ap = argparse.ArgumentParser(prog="vigil audit", description="the audit log")
    sub = ap.add_subparsers(dest="action_name", required=True, metavar="ACTION")
    v = sub.add_parser("verify", help="check the hash chain; exit 1 at the first broken entry")
    v.add_argument(
        "--anchor", metavar="HASH", help="a head hash noted earlier; must still be there"
    )
    s = sub.add_parser("show", help="print entries, filtered")
    s.add_argument("--person", metavar="NAME", help="who acted (case-insensitive)")
    s.add_argument("--alert", type=int, metavar="ID", help="entries about one alert")
    s.add_argument("--action", metavar="A", help="e.g. hide, delete, suspend, whois, export")
    s.add_argument("--since", metavar="ISO", help="from this time on (UTC unless stated)")
    s.add_argument("--until", metavar="ISO", help="before this time")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    for p in (v, s):
        p.add_argument("-c", "--config", type=Path, default=default, help="path to bot.toml")
    args = ap.parse_args(list(argv))

    async def body() -> int:
        opened = await open_store(args.config, err)
        if opened is None:
            return 1
        _config, store = opened
        try:
            if args.action_name == "verify":
                return await _verify(store, args.anchor, out)
            return await _show(store, args, out)
        except ValueError as exc:
            print(f"vigil audit: {exc}", file=err)
            return 2
        finally:
            await store.close()

    return asyncio.run(body())
