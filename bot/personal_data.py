"""Personal data (IP addresses, emails): a restricted table, audited lookups, retention.

Parsers hand what a delivery carried of an account's IPs and emails to the ingest
beside the Event (:class:`bot.model.PersonalData`); the ingest stores it in the
``personal_data`` table in the same transaction as the inbox row, or drops it when
``[privacy] keep_personal_data = false``. Nothing else reads that table but:

- :func:`whois`, for an admin on the roster (``!whois USER`` answers in a direct
  message); every lookup, allowed or refused, is written to the audit log, which
  records who asked about whom and how many values were found, never the values;
- an incident export made by an admin (``vigil export --as ADMIN``, bot.export).

Rows are deleted ``personal_data_days`` after the account was last seen with them
(:class:`RetentionTask` runs the purge hourly, with the evidence purge).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.clock import Clock, as_datetime
from bot.config import Config, PrivacyConfig, Role, StaffMember
from bot.model import PersonalData
from bot.store import AuditItem, Store

if TYPE_CHECKING:
    from bot.evidence import EvidenceVault

log = logging.getLogger(__name__)

DAY_S = 86_400.0
_DEFAULT_DAYS = PrivacyConfig().personal_data_days
MAX_EMAIL = 254  # RFC 5321's limit on a forward path


class NotAllowed(PermissionError):
    """The requester's role does not allow seeing personal data (the refusal is audited)."""


def normalise_ip(value: Any) -> str | None:
    """An IPv4/IPv6 address in canonical form, or None for anything else."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def normalise_email(value: Any) -> str | None:
    """An email address (trimmed, domain lower-cased), or None when it is not one."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not 3 <= len(text) <= MAX_EMAIL or not text.isprintable() or any(c.isspace() for c in text):
        return None
    local, at, domain = text.rpartition("@")
    if not at or not local or "." not in domain or domain.startswith(".") or "@" in domain:
        return None
    return f"{local}@{domain.lower()}"


def personal_from(
    user_id: str, username: str, *, ips: Iterable[Any] = (), emails: Iterable[Any] = ()
) -> PersonalData | None:
    """What a parser hands over for one account: valid values only, deduplicated; None if
    there is none. Invalid values are dropped quietly (never logged, never refused)."""
    good_ips = tuple(dict.fromkeys(ip for ip in map(normalise_ip, ips) if ip))
    good_emails = tuple(dict.fromkeys(e for e in map(normalise_email, emails) if e))
    if not user_id or not (good_ips or good_emails):
        return None
    return PersonalData(user_id=user_id, username=username, ips=good_ips, emails=good_emails)


@dataclass(frozen=True, slots=True)
class PersonalRecord:
    """One IP or email of an account, with when Vigil first and last saw it."""

    source: str
    user_id: str
    username: str
    kind: str  # ip or email
    value: str
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class WhoisResult:
    """The answer to an admin's lookup: send it in a direct message, nowhere else."""

    source: str | None
    user: str
    records: tuple[PersonalRecord, ...]
    keep_days: int

    def render(self) -> str:
        """Plain text for a direct message to the admin who asked."""
        where = f" on {self.source}" if self.source else ""
        if not self.records:
            return (
                f"No personal data is kept for {self.user}{where}: none was received,"
                f" it was deleted after {self.keep_days} days, or it is not kept."
                " This lookup was audited."
            )
        lines = [f"Personal data of {self.user}{where} (this lookup was audited; do not share):"]
        for r in self.records:
            first = as_datetime(r.first_seen).strftime("%Y-%m-%d %H:%M UTC")
            last = as_datetime(r.last_seen).strftime("%Y-%m-%d %H:%M UTC")
            who = f"{r.username or '?'} (id {r.user_id}) on {r.source}"
            lines.append(f"  {r.kind:<5} {r.value}  {who}; first seen {first}, last seen {last}")
        return "\n".join(lines)


def _record(row: dict[str, Any]) -> PersonalRecord:
    return PersonalRecord(
        row["source"],
        row["user_id"],
        row["username"],
        row["kind"],
        row["value"],
        row["first_seen"],
        row["last_seen"],
    )


async def whois(
    store: Store,
    source: str | None,
    username_or_id: str,
    requester: StaffMember,
    *,
    now: float,
    keep_days: int = _DEFAULT_DAYS,
    via: str = "chat",
) -> WhoisResult:
    """The IPs and emails kept for a forum account (by username or id; ``source`` None:
    every source). Admins only: anyone else gets :class:`NotAllowed`. Always audited."""
    user = username_or_id.strip().removeprefix("@")
    target = f"user {user}" + (f" on {source}" if source else "")
    if requester.role is not Role.ADMIN:
        await store.append_audit(
            actor=requester.name,
            action="whois",
            target=target,
            reason=f"personal data lookup via {via}",
            outcome="refused: admins only",
            now=now,
        )
        log.warning("whois refused: %s is %s, not admin", requester.name, requester.role.value)
        raise NotAllowed(f"{requester.name} is a {requester.role.value}; only admins may do this")
    rows = await store.personal_lookup(
        source,
        user,
        AuditItem(
            actor=requester.name,
            action="whois",
            target=target,
            reason=f"personal data lookup via {via}",
            outcome="ok",
        ),
        now,
    )
    log.info("whois by %s: %d value(s) found", requester.name, len(rows))
    return WhoisResult(source, user, tuple(_record(r) for r in rows), keep_days)


async def purge_personal_data(store: Store, privacy: PrivacyConfig, now: float) -> int:
    """Delete what was last seen more than ``personal_data_days`` ago (all of it when
    the admin stopped keeping personal data); returns the rows deleted."""
    if not privacy.keep_personal_data:
        return await store.purge_personal(now + 1.0, now)
    return await store.purge_personal(now - privacy.personal_data_days * DAY_S, now)


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one retention pass deleted."""

    personal_rows: int
    evidence_ids: tuple[int, ...]
    evidence_files: int


class RetentionTask:
    """Deletes expired personal data and evidence: once at start, then every hour."""

    def __init__(
        self,
        store: Store,
        config: Config,
        clock: Clock,
        vault: EvidenceVault | None = None,
        interval_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.vault = vault
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> RetentionReport:
        """One pass: personal data, then evidence (rows, then their files)."""
        now = self.clock.now()
        rows = await purge_personal_data(self.store, self.config.privacy, now)
        ids: tuple[int, ...] = ()
        files = 0
        if self.vault is not None:
            purged = await self.vault.purge(self.store, now)
            ids, files = purged
        if rows or ids:
            log.info(
                "retention: deleted %d personal data rows, %d evidence records, %d files",
                rows,
                len(ids),
                files,
            )
        return RetentionReport(rows, ids, files)

    def start(self) -> None:
        """Start the hourly passes."""
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        """Stop (a pass in progress is cancelled; its transaction rolls back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a failed pass is retried at the next one, not fatal
                log.exception("retention pass failed")
            await self.clock.sleep(self.interval_s)
