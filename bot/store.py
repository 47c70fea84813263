"""The SQLite store: every table and every SQL statement Vigil uses lives here.

WAL mode, so readers never block the writer and a committed transaction survives a
killed process (``synchronous=NORMAL``); ``synchronous=FULL`` also survives power
loss. The schema grows by numbered migrations, applied in order at open and
recorded in ``PRAGMA user_version``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

# Each entry is one migration; never edit a released one, append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the foundation
    """
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        received_at REAL NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        lease_until REAL,
        last_error TEXT,
        done_at REAL,
        UNIQUE (source, delivery_id)
    );
    CREATE INDEX inbox_ready ON inbox (state, next_attempt_at);

    CREATE TABLE problems (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        resolved_at REAL
    );

    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        incident_key TEXT NOT NULL,
        source TEXT NOT NULL,
        severity TEXT NOT NULL,
        room TEXT,
        status TEXT NOT NULL DEFAULT 'open',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        count INTEGER NOT NULL DEFAULT 1,
        summary TEXT NOT NULL,
        resolved_by TEXT,
        resolved_at REAL,
        resolution TEXT
    );
    CREATE INDEX alerts_incident ON alerts (incident_key, status);

    CREATE TABLE alert_events (
        alert_id INTEGER NOT NULL REFERENCES alerts(id),
        event_id INTEGER NOT NULL REFERENCES inbox(id),
        PRIMARY KEY (alert_id, event_id)
    );

    CREATE TABLE alert_messages (
        alert_id INTEGER NOT NULL REFERENCES alerts(id),
        chat TEXT NOT NULL,
        room TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (chat, room, message_id)
    );

    CREATE TABLE matches (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES inbox(id),
        media_index INTEGER NOT NULL,
        list TEXT NOT NULL,
        kind TEXT NOT NULL,
        distance INTEGER NOT NULL,
        category TEXT,
        tier TEXT NOT NULL,
        UNIQUE (event_id, media_index, list, kind)
    );

    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        alert_id INTEGER,
        reason TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    -- Append-only: the database itself refuses edits and deletions of audit rows.
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

    CREATE TABLE escalations (
        alert_id INTEGER PRIMARY KEY REFERENCES alerts(id),
        policy TEXT NOT NULL,
        step INTEGER NOT NULL,
        round INTEGER NOT NULL DEFAULT 0,
        due_at REAL NOT NULL,
        token TEXT NOT NULL,
        state TEXT NOT NULL,
        acked_by TEXT,
        acked_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX escalations_due ON escalations (state, due_at);

    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        dedupe_key TEXT UNIQUE,
        chat TEXT NOT NULL,
        op TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        sent_at REAL,
        result TEXT,
        last_error TEXT
    );
    CREATE INDEX outbox_ready ON outbox (state, next_attempt_at);

    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
)

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class InboxRow:
    """One new delivery on its way into the inbox."""

    source: str
    delivery_id: str
    kind: str
    payload: str  # the normalised event as JSON


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """An inbox row a worker has leased."""

    id: int
    source: str
    delivery_id: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit log."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    alert_id: int | None
    reason: str
    outcome: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def audit_hash(
    prev_hash: str,
    at: float,
    actor: str,
    action: str,
    target: str,
    alert_id: int | None,
    reason: str,
    outcome: str,
    detail: str,
) -> str:
    """The chained hash of one audit entry: SHA-256 over the previous hash and the fields."""
    material = json.dumps(
        [prev_hash, repr(at), actor, action, target, alert_id, reason, outcome, detail],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode()).hexdigest()


class Store:
    """The one database connection of a Vigil process."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        # One connection is shared by every coroutine; without this lock a statement
        # from one coroutine could run inside another's open transaction.
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the connection for one write transaction (committed unless it raises)."""
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self._lock, self.db.execute(sql, params) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self._lock, self.db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        async with self._lock:
            await self.db.execute(sql, params)

    @classmethod
    async def open(cls, path: Path | str, *, synchronous: str = "normal") -> Store:
        """Open (creating if needed) the database and apply pending migrations."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        sync = {"normal": "NORMAL", "full": "FULL"}[synchronous]
        await db.execute(f"PRAGMA synchronous={sync}")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
        store = cls(db, path)
        await store._migrate()
        return store

    async def close(self) -> None:
        """Close the connection."""
        await self.db.close()

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row else 0
        for number, script in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            log.info("applying database migration %d", number)
            # executescript commits first; the migration and its version bump are one
            # transaction so a crash mid-migration leaves the old version in place.
            await self.db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;"
            )

    async def schema_version(self) -> int:
        """The number of the last migration applied."""
        row = await self._one("PRAGMA user_version")
        return int(row[0]) if row else 0

    # --- inbox -----------------------------------------------------------------

    async def insert_events(self, rows: Sequence[InboxRow], now: float) -> list[bool]:
        """Insert a batch of deliveries in one transaction; True where a row is new.

        A delivery already stored (same source and delivery id) is left alone: that
        is the dedupe of redelivered webhooks.
        """
        if not rows:
            return []
        async with self.transaction() as db:
            async with db.execute("SELECT COALESCE(MAX(id), 0) FROM inbox") as cur:
                before = (await cur.fetchone())[0]
            await db.executemany(
                "INSERT OR IGNORE INTO inbox (source, delivery_id, kind, received_at, payload,"
                " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(r.source, r.delivery_id, r.kind, now, r.payload, now) for r in rows],
            )
            # The writer is the only inserter, so rows above the old maximum are this batch's.
            async with db.execute(
                "SELECT source, delivery_id FROM inbox WHERE id > ?", (before,)
            ) as cur:
                new = {(s, d) for s, d in await cur.fetchall()}
        inserted: list[bool] = []
        for r in rows:
            key = (r.source, r.delivery_id)
            inserted.append(key in new)
            new.discard(key)  # a second copy within the same batch is a duplicate
        return inserted

    async def claim_event(self, now: float, lease_s: float) -> ClaimedEvent | None:
        """Lease the oldest ready event: pending and due, or processing with a lapsed lease."""
        row = await self._one(
            "UPDATE inbox SET state = 'processing', lease_until = ?, attempts = attempts + 1"
            " WHERE id = (SELECT id FROM inbox WHERE (state = 'pending' AND next_attempt_at <= ?)"
            " OR (state = 'processing' AND lease_until < ?) ORDER BY id LIMIT 1)"
            " RETURNING id, source, delivery_id, payload, attempts",
            (now + lease_s, now, now),
        )
        if row is None:
            return None
        return ClaimedEvent(row[0], row[1], row[2], json.loads(row[3]), row[4])

    async def release_claims(self) -> int:
        """Return every leased event to pending; run at start, when no worker of ours holds any.

        One Vigil process owns a database, so leases found at start belong to a process
        that died: waiting out their lease would only delay those events.
        """
        async with self._lock:
            cur = await self.db.execute(
                "UPDATE inbox SET state = 'pending', lease_until = NULL WHERE state = 'processing'"
            )
            return cur.rowcount

    async def finish_event(self, event_id: int, now: float) -> None:
        """Mark an event processed."""
        await self._run(
            "UPDATE inbox SET state = 'done', done_at = ?, lease_until = NULL, last_error = NULL"
            " WHERE id = ?",
            (now, event_id),
        )

    async def retry_event(self, event_id: int, error: str, next_attempt_at: float) -> None:
        """Put an event back to be tried again later."""
        await self._run(
            "UPDATE inbox SET state = 'pending', lease_until = NULL, last_error = ?,"
            " next_attempt_at = ? WHERE id = ?",
            (error, next_attempt_at, event_id),
        )

    async def park_event(self, event_id: int, error: str, now: float) -> None:
        """Give up on an event and record a problem someone will see, in one transaction."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE inbox SET state = 'parked', lease_until = NULL, last_error = ? WHERE id = ?",
                (error, event_id),
            )
            await db.execute(
                "INSERT INTO problems (at, kind, subject, detail) VALUES (?, 'event_parked', ?, ?)",
                (now, f"event {event_id}", error),
            )

    async def next_event_due(self) -> float | None:
        """When the earliest pending event becomes due (or a lease lapses)."""
        row = await self._one(
            "SELECT MIN(t) FROM (SELECT MIN(next_attempt_at) AS t FROM inbox WHERE state = 'pending'"
            " UNION ALL SELECT MIN(lease_until) FROM inbox WHERE state = 'processing')"
        )
        return row[0] if row and row[0] is not None else None

    async def inbox_counts(self) -> dict[str, int]:
        """How many events are in each state."""
        rows = await self._all("SELECT state, COUNT(*) FROM inbox GROUP BY state")
        return {s: n for s, n in rows}

    async def event_row(self, event_id: int) -> dict[str, Any] | None:
        """One inbox row as a dict (for tests and the admin)."""
        row = await self._one("SELECT * FROM inbox WHERE id = ?", (event_id,))
        return dict(row) if row else None

    async def events(self, source: str | None = None) -> list[dict[str, Any]]:
        """Every inbox row, oldest first (optionally of one source)."""
        where = " WHERE source = ?" if source else ""
        sql = f"SELECT * FROM inbox{where} ORDER BY id"  # noqa: S608 - constant fragments
        return [dict(r) for r in await self._all(sql, (source,) if source else ())]

    async def last_event_at(self) -> dict[str, float]:
        """The time of the newest delivery of each source."""
        rows = await self._all("SELECT source, MAX(received_at) FROM inbox GROUP BY source")
        return {s: t for s, t in rows}

    # --- problems --------------------------------------------------------------

    async def add_problem(self, kind: str, subject: str, detail: str, now: float) -> int:
        """Record something an operator must see (a parked event, a rejected rules file)."""
        row = await self._one(
            "INSERT INTO problems (at, kind, subject, detail) VALUES (?, ?, ?, ?) RETURNING id",
            (now, kind, subject, detail),
        )
        return int(row[0])

    async def open_problems(self) -> list[dict[str, Any]]:
        """Problems not yet resolved, oldest first."""
        rows = await self._all("SELECT * FROM problems WHERE resolved_at IS NULL ORDER BY id")
        return [dict(r) for r in rows]

    # --- audit log -------------------------------------------------------------

    async def append_audit(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        reason: str,
        outcome: str,
        now: float,
        alert_id: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append one entry, chained to the previous entry's hash."""
        detail_json = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)
        async with self.transaction() as db:
            async with db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1") as cur:
                row = await cur.fetchone()
            prev = row[0] if row else GENESIS_HASH
            digest = audit_hash(
                prev, now, actor, action, target, alert_id, reason, outcome, detail_json
            )
            async with db.execute(
                "INSERT INTO audit (at, actor, action, target, alert_id, reason, outcome, detail,"
                " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (now, actor, action, target, alert_id, reason, outcome, detail_json, prev, digest),
            ) as cur:
                new_id = (await cur.fetchone())[0]
        return int(new_id)

    async def audit_entries(self) -> list[AuditEntry]:
        """The whole audit log, oldest first."""
        rows = await self._all("SELECT * FROM audit ORDER BY id")
        return [
            AuditEntry(
                r["id"],
                r["at"],
                r["actor"],
                r["action"],
                r["target"],
                r["alert_id"],
                r["reason"],
                r["outcome"],
                json.loads(r["detail"]),
                r["prev_hash"],
                r["hash"],
            )
            for r in rows
        ]

    # --- adapter state (bot.ports.StateStore) ------------------------------------

    async def get_state(self, key: str) -> str | None:
        """A value saved with :meth:`set_state`, or None."""
        row = await self._one("SELECT value FROM kv WHERE key = ?", (key,))
        return row[0] if row else None

    async def set_state(self, key: str, value: str) -> None:
        """Save a small durable value (a sync token, a DM room id)."""
        await self._run(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def now_s() -> float:
    """Wall-clock seconds; the one place the store's callers read real time by default."""
    return time.time()
