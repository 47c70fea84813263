"""The SQLite store: every table and every SQL statement Vigil uses lives here.

WAL mode, so readers never block the writer and a committed transaction survives a
killed process (``synchronous=NORMAL``); ``synchronous=FULL`` also survives power
loss. The schema grows by numbered migrations, applied in order at open and
recorded in ``PRAGMA user_version``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

if TYPE_CHECKING:
    from bot.model import PersonalData

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
    # 2: image hash checks: what each image of an event gave, and the local bank
    """
    CREATE TABLE media_results (
        event_id INTEGER NOT NULL REFERENCES inbox(id),
        media_index INTEGER NOT NULL,
        url TEXT,  -- as fetched, without query string or fragment
        sha1_hint TEXT,  -- the SHA-1 the forum named before any download
        sha256 TEXT,
        sha1 TEXT,  -- of the bytes fetched (a repost of the same upload reuses the hashes)
        hashes TEXT,  -- JSON of every hash; the image bytes are never stored
        reason TEXT,  -- why the image was not hashed (refused, broken, not fetched)
        allowed_by TEXT,  -- the allow-list that cleared it, if one did
        at REAL NOT NULL,
        PRIMARY KEY (event_id, media_index)
    );
    CREATE INDEX media_results_sha256 ON media_results (sha256);
    CREATE INDEX media_results_sha1 ON media_results (sha1);

    CREATE TABLE bank (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        added_by TEXT NOT NULL,
        added_at REAL NOT NULL,
        reason TEXT NOT NULL,
        alert_id INTEGER,
        UNIQUE (kind, value)
    );
    """,
    # 3: alerts in chat: alert state for buttons, the forum-action journal, chat
    # idempotency, confirmations; the outbox learns which alert a message belongs to
    """
    ALTER TABLE alerts ADD COLUMN version INTEGER NOT NULL DEFAULT 0;  -- compare-and-set
    ALTER TABLE alerts ADD COLUMN acked_by TEXT;
    ALTER TABLE alerts ADD COLUMN acked_at REAL;
    ALTER TABLE alerts ADD COLUMN op TEXT;  -- the operation in progress while 'acting'
    ALTER TABLE alerts ADD COLUMN op_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN op_by TEXT;
    ALTER TABLE alerts ADD COLUMN op_at REAL;
    ALTER TABLE alerts ADD COLUMN prev_status TEXT;  -- where a failed operation returns to
    ALTER TABLE alerts ADD COLUMN outcome TEXT;  -- the outcome line the alert shows
    ALTER TABLE alerts ADD COLUMN rules TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE alerts ADD COLUMN dry_run INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX alerts_status ON alerts (status);

    ALTER TABLE alert_events ADD COLUMN added_at REAL NOT NULL DEFAULT 0;
    -- JSON: what to act on and what to show (no image, no IP, no email)
    ALTER TABLE alert_events ADD COLUMN target TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE alert_events ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0;  -- 1 hidden, 2 deleted
    CREATE INDEX alert_events_event ON alert_events (event_id);

    ALTER TABLE alert_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'alert';  -- or 'confirm'
    CREATE INDEX alert_messages_by_id ON alert_messages (chat, message_id);

    ALTER TABLE outbox ADD COLUMN alert_id INTEGER;
    ALTER TABLE outbox ADD COLUMN again INTEGER NOT NULL DEFAULT 0;  -- changed while sending
    ALTER TABLE outbox ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;  -- part of the txn id
    -- 0 alert posts, 1 edits and answers, 2 buttons: a new alert never waits behind buttons
    ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX outbox_alert ON outbox (alert_id, chat, op);

    CREATE TABLE forum_actions (
        id INTEGER PRIMARY KEY,
        dedupe_key TEXT NOT NULL UNIQUE,
        alert_id INTEGER REFERENCES alerts(id),
        event_id INTEGER,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        action TEXT NOT NULL,  -- JSON of the ForumAction
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        op_seq INTEGER NOT NULL DEFAULT 0,  -- 0: a rule's automatic action
        state TEXT NOT NULL DEFAULT 'pending',  -- pending -> running -> done
        requested_at REAL NOT NULL,
        done_at REAL,
        ok INTEGER,
        simulated INTEGER,
        detail TEXT
    );
    CREATE INDEX forum_actions_state ON forum_actions (state);
    CREATE INDEX forum_actions_alert ON forum_actions (alert_id, op_seq);

    CREATE TABLE chat_events (
        chat TEXT NOT NULL,
        event_id TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (chat, event_id)
    );

    CREATE TABLE confirmations (
        alert_id INTEGER NOT NULL REFERENCES alerts(id),
        op TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        requested_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (alert_id, op)
    );
    """,
    # 4: escalation: when a chain started and last paged, runtime on-call overrides,
    # and the escalation log the report counts
    """
    ALTER TABLE escalations ADD COLUMN started_at REAL;
    ALTER TABLE escalations ADD COLUMN fired_at REAL;  -- the last page
    ALTER TABLE escalations ADD COLUMN pages INTEGER NOT NULL DEFAULT 0;

    CREATE TABLE schedule_overrides (
        id INTEGER PRIMARY KEY,
        schedule TEXT NOT NULL,
        person TEXT NOT NULL,
        replaces TEXT,  -- a swap: only where this person would be on call
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        cancelled_by TEXT,
        cancelled_at REAL
    );
    CREATE INDEX schedule_overrides_end ON schedule_overrides (ends_at);

    CREATE TABLE escalation_log (
        id INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,  -- start, page, skip, ack, rearm, resolve, exhausted
        policy TEXT NOT NULL,
        step INTEGER,
        round INTEGER,
        person TEXT,
        channel TEXT,
        late REAL,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX escalation_log_at ON escalation_log (at);
    CREATE INDEX escalation_log_alert ON escalation_log (alert_id);
    """,
    # 5: personal data (restricted, purged after [privacy] personal_data_days) and
    # evidence of illegal matches (bytes encrypted under data_dir/evidence, purged at
    # expires_at); see bot.personal_data and bot.evidence
    """
    CREATE TABLE personal_data (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        user_id TEXT NOT NULL,
        username TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL,  -- ip or email
        value TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,  -- retention counts from here
        UNIQUE (source, user_id, kind, value)
    );
    CREATE INDEX personal_data_seen ON personal_data (last_seen);
    CREATE INDEX personal_data_username ON personal_data (source, username COLLATE NOCASE);

    CREATE TABLE evidence (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL,
        media_index INTEGER NOT NULL,
        source TEXT NOT NULL,
        matches TEXT NOT NULL,  -- JSON [{list, kind, distance, category}]
        sha256 TEXT,
        sha1 TEXT,
        hashes TEXT,  -- JSON of every hash of the image, when it was hashed
        size INTEGER,  -- bytes of the original, when kept
        file TEXT,  -- encrypted file name under the evidence directory; NULL: no bytes
        note TEXT NOT NULL DEFAULT '',  -- why there are no bytes
        metadata TEXT NOT NULL,  -- JSON: the event as stored (no personal data)
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (event_id, media_index)
    );
    CREATE INDEX evidence_expires ON evidence (expires_at);
    CREATE INDEX evidence_sha256 ON evidence (sha256);
    CREATE INDEX evidence_file ON evidence (file);
    """,
    # 6: reports, raids and lockdowns (bot.reports, bot.raids): sliding windows of
    # distinct reporters per post and of events per raid, account creation times
    # learnt from user_created, reports merged into an open alert, the lockdowns
    """
    CREATE TABLE report_windows (
        source TEXT NOT NULL,
        post_id TEXT NOT NULL,
        reporter TEXT NOT NULL,  -- "name:<username>" or "id:<forum user id>"
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        PRIMARY KEY (source, post_id, reporter)
    );
    CREATE INDEX report_windows_last ON report_windows (last_at);

    CREATE TABLE raid_hits (
        raid TEXT NOT NULL,
        key TEXT NOT NULL,  -- the post (or event) counted, once
        at REAL NOT NULL,
        event_id INTEGER,
        PRIMARY KEY (raid, key)
    );
    CREATE INDEX raid_hits_at ON raid_hits (raid, at);

    CREATE TABLE accounts (
        source TEXT NOT NULL,
        user_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (source, user_id)
    );

    CREATE TABLE report_joins (
        event_id INTEGER PRIMARY KEY,  -- a report event merged into an open alert
        alert_id INTEGER NOT NULL,
        at REAL NOT NULL
    );

    CREATE TABLE lockdowns (
        id INTEGER PRIMARY KEY,
        state TEXT NOT NULL,  -- on, off
        started_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        started_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        raid TEXT,
        alert_id INTEGER,
        next_reminder_at REAL NOT NULL,
        reminders INTEGER NOT NULL DEFAULT 0,
        settings_state TEXT NOT NULL DEFAULT 'none',  -- none, applying, on, restoring, off
        settings TEXT NOT NULL DEFAULT '[]',  -- JSON: what each site setting change gave
        ended_at REAL,
        ended_by TEXT,
        end_reason TEXT
    );
    -- At most one lockdown is on at a time.
    CREATE UNIQUE INDEX lockdowns_on ON lockdowns (state) WHERE state = 'on';
    """,
)

GENESIS_HASH = "0" * 64
# Rows per INSERT statement: 6 parameters each, well under SQLite's 32,766 limit.
_INSERT_CHUNK = 500


def _inbox_insert(chunk: Sequence[InboxRow], now: float) -> tuple[str, list[Any]]:
    """One multi-row INSERT OR IGNORE of deliveries; it returns only the rows inserted."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
    params: list[Any] = []
    for r in chunk:
        params += (r.source, r.delivery_id, r.kind, now, r.payload, now)
    sql = (
        "INSERT OR IGNORE INTO inbox (source, delivery_id, kind, received_at, payload,"
        f" next_attempt_at) VALUES {values} RETURNING id, source, delivery_id"
    )
    return sql, params


def _inserted_flags(rows: Sequence[InboxRow], inserted_keys: set[tuple[str, str]]) -> list[bool]:
    inserted: list[bool] = []
    for r in rows:
        key = (r.source, r.delivery_id)
        inserted.append(key in inserted_keys)
        inserted_keys.discard(key)  # a second copy within the same batch is a duplicate
    return inserted


@dataclass(frozen=True, slots=True)
class InboxRow:
    """One new delivery on its way into the inbox."""

    source: str
    delivery_id: str
    kind: str
    payload: str  # the normalised event as JSON
    # IPs and emails the delivery carried: to the restricted table, never the payload
    personal: PersonalData | None = None


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


def _audit_entry(r: aiosqlite.Row) -> AuditEntry:
    return AuditEntry(
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
        is the dedupe of redelivered webhooks. The batch is one multi-row statement,
        which SQLite commits atomically on its own: one trip to the database thread
        per batch keeps the acknowledgement latency low under load.
        """
        if not rows:
            return []
        if any(r.personal is not None for r in rows):
            return await self._insert_events_personal(rows, now)
        inserted_keys: set[tuple[str, str]] = set()
        for start in range(0, len(rows), _INSERT_CHUNK):
            sql, params = _inbox_insert(rows[start : start + _INSERT_CHUNK], now)
            returned = await self._all(sql, params)
            inserted_keys.update((r[1], r[2]) for r in returned)
        return _inserted_flags(rows, inserted_keys)

    async def claim_events(self, now: float, lease_s: float, limit: int = 1) -> list[ClaimedEvent]:
        """Lease up to ``limit`` of the oldest ready events, in one statement.

        Ready means pending and due, or processing with a lapsed lease (its worker died).
        """
        rows = await self._all(
            "UPDATE inbox SET state = 'processing', lease_until = ?, attempts = attempts + 1"
            " WHERE id IN (SELECT id FROM inbox WHERE (state = 'pending' AND next_attempt_at <= ?)"
            " OR (state = 'processing' AND lease_until < ?) ORDER BY id LIMIT ?)"
            " RETURNING id, source, delivery_id, payload, attempts",
            (now + lease_s, now, now, limit),
        )
        claimed = [ClaimedEvent(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]
        claimed.sort(key=lambda c: c.id)  # RETURNING order is unspecified
        return claimed

    async def claim_event(self, now: float, lease_s: float) -> ClaimedEvent | None:
        """Lease the oldest ready event (see :meth:`claim_events`)."""
        claimed = await self.claim_events(now, lease_s, 1)
        return claimed[0] if claimed else None

    async def extend_leases(self, event_ids: Sequence[int], lease_until: float) -> None:
        """Keep events leased while their worker is still busy with them."""
        if event_ids:
            marks = ",".join("?" * len(event_ids))
            await self._run(
                f"UPDATE inbox SET lease_until = ? WHERE state = 'processing' AND id IN ({marks})",
                [lease_until, *event_ids],
            )

    async def finish_events(self, event_ids: Sequence[int], now: float) -> None:
        """Mark events processed, in one statement."""
        if event_ids:
            marks = ",".join("?" * len(event_ids))
            await self._run(
                "UPDATE inbox SET state = 'done', done_at = ?, lease_until = NULL, last_error = NULL"
                f" WHERE id IN ({marks})",
                [now, *event_ids],
            )

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
        await self.finish_events([event_id], now)

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
        sql = f"SELECT * FROM inbox{where} ORDER BY id"
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
        return [_audit_entry(r) for r in rows]

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

    # --- hash checks ---------------------------------------------------------------
    # What each image of an event gave (hashes or the reason it gave none), the matches
    # found, and the local bank. Never the image bytes.

    async def save_media_result(
        self,
        event_id: int,
        media_index: int,
        *,
        url: str | None,
        sha1_hint: str | None,
        sha256: str | None,
        sha1: str | None,
        hashes: str | None,
        reason: str | None,
        now: float,
    ) -> None:
        """Record (or, on a retry, replace) what one image of an event gave."""
        await self._run(
            "INSERT INTO media_results (event_id, media_index, url, sha1_hint, sha256, sha1,"
            " hashes, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (event_id, media_index) DO UPDATE SET url = excluded.url,"
            " sha1_hint = excluded.sha1_hint, sha256 = excluded.sha256, sha1 = excluded.sha1,"
            " hashes = excluded.hashes, reason = excluded.reason, at = excluded.at",
            (event_id, media_index, url, sha1_hint, sha256, sha1, hashes, reason, now),
        )

    async def media_results(self, event_id: int) -> list[dict[str, Any]]:
        """Every recorded image of an event, by media index."""
        rows = await self._all(
            "SELECT * FROM media_results WHERE event_id = ? ORDER BY media_index", (event_id,)
        )
        return [dict(r) for r in rows]

    async def hashes_by_sha1(self, sha1: str) -> str | None:
        """The hashes JSON of an image already fetched whose bytes had this SHA-1."""
        row = await self._one(
            "SELECT hashes FROM media_results WHERE sha1 = ? AND hashes IS NOT NULL LIMIT 1",
            (sha1,),
        )
        return row[0] if row else None

    async def set_media_allowed(self, event_id: int, media_index: int, list_name: str) -> None:
        """Note that an allow-list cleared one image of an event."""
        await self._run(
            "UPDATE media_results SET allowed_by = ? WHERE event_id = ? AND media_index = ?",
            (list_name, event_id, media_index),
        )

    async def save_matches(self, event_id: int, matches: Sequence[Any]) -> None:
        """Record an event's matches (``bot.model.Match``); a retry adds no duplicates."""
        if not matches:
            return
        async with self.transaction() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO matches (event_id, media_index, list, kind, distance,"
                " category, tier) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (event_id, m.media_index, m.list, m.kind, m.distance, m.category, m.tier)
                    for m in matches
                ],
            )

    async def event_matches(self, event_id: int) -> list[dict[str, Any]]:
        """The matches recorded for an event."""
        rows = await self._all(
            "SELECT media_index, list, kind, distance, category, tier FROM matches"
            " WHERE event_id = ? ORDER BY media_index, list, kind",
            (event_id,),
        )
        return [dict(r) for r in rows]

    async def bank_insert(
        self,
        entries: Sequence[tuple[str, str]],
        added_by: str,
        reason: str,
        alert_id: int | None,
        now: float,
    ) -> int:
        """Add ``(kind, hex)`` pairs to the local bank; returns how many were new."""
        if not entries:
            return 0
        async with self.transaction() as db:
            before = db.total_changes
            await db.executemany(
                "INSERT OR IGNORE INTO bank (kind, value, added_by, added_at, reason, alert_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(k, v, added_by, now, reason, alert_id) for k, v in entries],
            )
            return db.total_changes - before

    async def bank_entries(self) -> list[tuple[str, str]]:
        """Every ``(kind, hex)`` in the local bank, oldest first."""
        rows = await self._all("SELECT kind, value FROM bank ORDER BY id")
        return [(r[0], r[1]) for r in rows]

    async def bank_remove(self, kind: str, value: str) -> bool:
        """Take one hash out of the local bank (a wrong takedown); True if it was there."""
        async with self._lock:
            cur = await self.db.execute(
                "DELETE FROM bank WHERE kind = ? AND value = ?", (kind, value.lower())
            )
            return cur.rowcount > 0

    # --- alerts and outbox ---------------------------------------------------------
    # An alert's state, the forum-action journal and the chat outbox change together:
    # each method below is one transaction, so a crash can never leave a decision whose
    # messages or forum actions were not queued (the outbox pattern of GoAlert).

    async def record_incident(self, new: NewIncident, now: float) -> IncidentResult:
        """Attach an event to its open incident (or open one) and queue its messages and
        automatic actions. A second call for the same event adds nothing."""
        async with self.transaction() as db:
            alert_id, created = None, False
            if new.alert is not None:
                alert_id, created = await self._incident_alert(db, new, now)
            for action in new.actions:
                await self._insert_action(db, action, alert_id, now)
            keys = [a.dedupe_key for a in new.actions]
            pending: list[int] = []
            if keys:
                marks = ",".join("?" * len(keys))
                sql = (
                    f"SELECT id FROM forum_actions WHERE dedupe_key IN ({marks})"
                    " AND state = 'pending' ORDER BY id"
                )
                async with db.execute(sql, keys) as cur:
                    pending = [r[0] for r in await cur.fetchall()]
        return IncidentResult(alert_id, created, tuple(pending))

    async def _incident_alert(
        self, db: aiosqlite.Connection, new: NewIncident, now: float
    ) -> tuple[int, bool]:
        from bot.model import Severity  # the store needs only the order of severities

        spec = new.alert
        assert spec is not None
        async with db.execute(
            "SELECT alert_id FROM alert_events WHERE event_id = ?", (new.event_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            return int(row[0]), False
        target = json.dumps(spec.target, sort_keys=True, ensure_ascii=False)
        async with db.execute(
            "SELECT id, severity, rules FROM alerts WHERE incident_key = ?"
            " AND status IN ('open', 'acked') AND updated_at >= ? ORDER BY id DESC LIMIT 1",
            (spec.incident_key, now - spec.group_window_s),
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            alert_id = int(row[0])
            severity = max(Severity(row[1]), Severity(spec.severity), key=lambda s: s.rank)
            rules = list(json.loads(row[2]))
            rules += [r for r in spec.rules if r not in rules]
            await db.execute(
                "UPDATE alerts SET count = count + 1, severity = ?, rules = ?, updated_at = ?,"
                " version = version + 1 WHERE id = ?",
                (severity.value, json.dumps(rules), now, alert_id),
            )
            await db.execute(
                "INSERT INTO alert_events (alert_id, event_id, added_at, target) VALUES (?, ?, ?, ?)",
                (alert_id, new.event_id, now, target),
            )
            await self._enqueue(db, OutboxItem("*", "edit_alert", alert_id=alert_id), now)
            return alert_id, False
        async with db.execute(
            "INSERT INTO alerts (incident_key, source, severity, room, status, created_at,"
            " updated_at, count, summary, rules, dry_run) VALUES (?, ?, ?, ?, 'open', ?, ?, 1, ?, ?, ?)"
            " RETURNING id",
            (
                spec.incident_key,
                spec.source,
                spec.severity,
                spec.room,
                now,
                now,
                spec.summary,
                json.dumps(list(spec.rules)),
                int(spec.dry_run),
            ),
        ) as cur:
            alert_id = int((await cur.fetchone())[0])
        await db.execute(
            "INSERT INTO alert_events (alert_id, event_id, added_at, target) VALUES (?, ?, ?, ?)",
            (alert_id, new.event_id, now, target),
        )
        for chat, address in spec.rooms:
            item = OutboxItem(
                chat,
                "post_alert",
                {"room": address},
                dedupe_key=f"post:{alert_id}:{chat}",
                alert_id=alert_id,
                delay_s=spec.hold_s,
            )
            await self._enqueue(db, item, now)
        return alert_id, True

    async def _insert_action(
        self, db: aiosqlite.Connection, a: NewAction, alert_id: int | None, now: float
    ) -> int | None:
        async with db.execute(
            "INSERT OR IGNORE INTO forum_actions (dedupe_key, alert_id, event_id, source, kind,"
            " action, actor, reason, op_seq, requested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (
                a.dedupe_key,
                alert_id,
                a.event_id,
                a.source,
                a.kind,
                json.dumps(a.action, sort_keys=True),
                a.actor,
                a.reason,
                a.op_seq,
                now,
            ),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else None

    async def _enqueue(self, db: aiosqlite.Connection, item: OutboxItem, now: float) -> None:
        due = now + item.delay_s
        payload = json.dumps(item.payload or {}, sort_keys=True, ensure_ascii=False)
        if item.op != "edit_alert":
            priority = _OUTBOX_PRIORITY.get(item.op, 1)
            await db.execute(
                "INSERT OR IGNORE INTO outbox (dedupe_key, chat, op, payload, next_attempt_at,"
                " created_at, alert_id, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (item.dedupe_key, item.chat, item.op, payload, due, now, item.alert_id, priority),
            )
            return
        # An edit re-renders the alert when sent, so one row per alert and chat is enough:
        # a change while it waits needs nothing, a change while it is on the wire sends
        # it again, a change after it was sent re-arms it under a new transaction id. A
        # chat whose first post is still waiting gets none: the post shows the latest.
        async with db.execute(
            "SELECT DISTINCT chat FROM outbox WHERE alert_id = ? AND op = 'post_alert'"
            " AND state != 'pending' AND (? = '*' OR chat = ?)",
            (item.alert_id, item.chat, item.chat),
        ) as cur:
            chats = [r[0] for r in await cur.fetchall()]
        for chat in chats:
            await db.execute(
                "INSERT INTO outbox (dedupe_key, chat, op, payload, next_attempt_at, created_at,"
                " alert_id) VALUES (?, ?, 'edit_alert', '{}', ?, ?, ?)"
                " ON CONFLICT (dedupe_key) DO UPDATE SET"
                " again = CASE WHEN state = 'sending' THEN 1 ELSE again END,"
                " generation = CASE WHEN state IN ('sent', 'failed') THEN generation + 1"
                "   ELSE generation END,"
                " attempts = CASE WHEN state IN ('sent', 'failed') THEN 0 ELSE attempts END,"
                " next_attempt_at = CASE WHEN state IN ('sent', 'failed')"
                "   THEN excluded.next_attempt_at ELSE next_attempt_at END,"
                " state = CASE WHEN state IN ('sent', 'failed') THEN 'pending' ELSE state END",
                (f"edit:{item.alert_id}:{chat}", chat, due, now, item.alert_id),
            )

    async def _audit_in(self, db: aiosqlite.Connection, item: AuditItem, now: float) -> None:
        """Append one audit entry inside the caller's transaction (same chain as append_audit)."""
        detail_json = json.dumps(dict(item.detail or {}), sort_keys=True, ensure_ascii=False)
        async with db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        prev = row[0] if row else GENESIS_HASH
        digest = audit_hash(
            prev,
            now,
            item.actor,
            item.action,
            item.target,
            item.alert_id,
            item.reason,
            item.outcome,
            detail_json,
        )
        await db.execute(
            "INSERT INTO audit (at, actor, action, target, alert_id, reason, outcome, detail,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                now,
                item.actor,
                item.action,
                item.target,
                item.alert_id,
                item.reason,
                item.outcome,
                detail_json,
                prev,
                digest,
            ),
        )

    async def apply_plan(self, plan: Plan, now: float) -> PlanResult:
        """Apply a moderation decision atomically.

        "duplicate" when the chat event was handled before (nothing is written);
        "conflict" when the alert changed since the decision was made (nothing is
        written; decide again on a fresh snapshot); else "applied".
        """
        try:
            async with self.transaction() as db:
                if plan.chat_event is not None:
                    cur = await db.execute(
                        "INSERT OR IGNORE INTO chat_events (chat, event_id, at) VALUES (?, ?, ?)",
                        (*plan.chat_event, now),
                    )
                    if cur.rowcount == 0:
                        return PlanResult("duplicate")
                if plan.alert_id is not None and plan.expect_version is not None:
                    async with db.execute(
                        "SELECT version FROM alerts WHERE id = ?", (plan.alert_id,)
                    ) as cur:
                        row = await cur.fetchone()
                    if row is None or row[0] != plan.expect_version:
                        raise _Conflict
                if plan.changes and plan.alert_id is not None:
                    unknown = set(plan.changes) - _ALERT_SETTABLE
                    if unknown:
                        raise ValueError(f"not an alert column one may set: {sorted(unknown)}")
                    names = sorted(plan.changes)
                    assignments = ", ".join(f"{n} = ?" for n in names)
                    # Column names come from _ALERT_SETTABLE only, values are bound.
                    await db.execute(
                        f"UPDATE alerts SET {assignments}, version = version + 1 WHERE id = ?",
                        [plan.changes[n] for n in names] + [plan.alert_id],
                    )
                if plan.confirm is not None and plan.alert_id is not None:
                    op, by, at, until = plan.confirm
                    await db.execute(
                        "INSERT OR REPLACE INTO confirmations (alert_id, op, requested_by,"
                        " requested_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                        (plan.alert_id, op, by, at, until),
                    )
                if plan.clear_confirm is not None and plan.alert_id is not None:
                    await db.execute(
                        "DELETE FROM confirmations WHERE alert_id = ? AND op = ?",
                        (plan.alert_id, plan.clear_confirm),
                    )
                ids = []
                for action in plan.actions:
                    new_id = await self._insert_action(db, action, plan.alert_id, now)
                    if new_id is not None:
                        ids.append(new_id)
                for item in plan.outbox:
                    await self._enqueue(db, item, now)
                for entry in plan.audit:
                    await self._audit_in(db, entry, now)
        except _Conflict:
            return PlanResult("conflict")
        return PlanResult("applied", tuple(ids))

    async def alert_snapshot(self, alert_id: int) -> AlertRecord | None:
        """An alert with its posts, forum actions and open confirmations, read at once."""
        async with self._lock:
            async with self.db.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            async with self.db.execute(
                "SELECT event_id, added_at, target, hidden FROM alert_events WHERE alert_id = ?"
                " ORDER BY added_at, event_id",
                (alert_id,),
            ) as cur:
                targets = await cur.fetchall()
            async with self.db.execute(
                "SELECT * FROM forum_actions WHERE alert_id = ? ORDER BY id", (alert_id,)
            ) as cur:
                actions = await cur.fetchall()
            async with self.db.execute(
                "SELECT op, requested_by, requested_at, expires_at FROM confirmations"
                " WHERE alert_id = ?",
                (alert_id,),
            ) as cur:
                confirms = await cur.fetchall()
        return AlertRecord(
            id=row["id"],
            incident_key=row["incident_key"],
            source=row["source"],
            severity=row["severity"],
            room=row["room"],
            status=row["status"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            count=row["count"],
            summary=row["summary"],
            resolution=row["resolution"],
            resolved_by=row["resolved_by"],
            resolved_at=row["resolved_at"],
            version=row["version"],
            acked_by=row["acked_by"],
            acked_at=row["acked_at"],
            op=row["op"],
            op_seq=row["op_seq"],
            op_by=row["op_by"],
            op_at=row["op_at"],
            prev_status=row["prev_status"],
            outcome=row["outcome"],
            rules=tuple(json.loads(row["rules"])),
            dry_run=bool(row["dry_run"]),
            targets=tuple(TargetRecord(t[0], t[1], json.loads(t[2]), int(t[3])) for t in targets),
            actions=tuple(_action_record(a) for a in actions),
            confirmations=tuple(ConfirmRecord(c[0], c[1], c[2], c[3]) for c in confirms),
        )

    async def alert_for_event(self, event_id: int) -> int | None:
        """The alert an inbox event belongs to, if any."""
        row = await self._one("SELECT alert_id FROM alert_events WHERE event_id = ?", (event_id,))
        return int(row[0]) if row else None

    async def alert_by_message(self, chat: str, message_id: str) -> tuple[int, str] | None:
        """(alert id, 'alert' or 'confirm') for a chat message the bot posted."""
        row = await self._one(
            "SELECT alert_id, kind FROM alert_messages WHERE chat = ? AND message_id = ?",
            (chat, message_id),
        )
        return (int(row[0]), row[1]) if row else None

    async def add_alert_message(
        self, alert_id: int, chat: str, room: str, message_id: str, kind: str = "alert"
    ) -> None:
        """Remember a chat message that belongs to an alert (as soon as it is sent)."""
        await self._run(
            "INSERT OR IGNORE INTO alert_messages (alert_id, chat, room, message_id, kind)"
            " VALUES (?, ?, ?, ?, ?)",
            (alert_id, chat, room, message_id, kind),
        )

    async def alert_messages(
        self, alert_id: int, chat: str | None = None, kind: str = "alert"
    ) -> list[tuple[str, str, str]]:
        """(chat, room, message id) of an alert's messages of one kind."""
        rows = await self._all(
            "SELECT chat, room, message_id FROM alert_messages WHERE alert_id = ? AND kind = ?"
            " AND (? IS NULL OR chat = ?) ORDER BY rowid",
            (alert_id, kind, chat, chat),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def alerts_in(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Alerts in the given states, oldest first (for !status)."""
        marks = ",".join("?" * len(statuses))
        sql = f"SELECT * FROM alerts WHERE status IN ({marks}) ORDER BY id"
        return [dict(r) for r in await self._all(sql, list(statuses))]

    # forum actions

    async def claim_actions(self, ids: Sequence[int] | None = None) -> list[ActionRecord]:
        """Mark pending forum actions running (all, or those in ``ids``) and return them."""
        if ids is not None and not ids:
            return []
        where = "state = 'pending'"
        params: list[Any] = []
        if ids is not None:
            where += f" AND id IN ({','.join('?' * len(ids))})"
            params = list(ids)
        rows = await self._all(
            f"UPDATE forum_actions SET state = 'running' WHERE {where} RETURNING *",
            params,
        )
        return sorted((_action_record(r) for r in rows), key=lambda a: a.id)

    async def finish_action(
        self,
        action_id: int,
        *,
        ok: bool,
        simulated: bool,
        detail: str,
        audit: AuditItem,
        now: float,
    ) -> FinishedAction | None:
        """Record a forum action's outcome, its audit entry and its effect on the alert.

        None if it was already finished (a second finisher changes nothing).
        """
        async with self.transaction() as db:
            async with db.execute(
                "UPDATE forum_actions SET state = 'done', ok = ?, simulated = ?, detail = ?,"
                " done_at = ? WHERE id = ? AND state = 'running'"
                " RETURNING alert_id, event_id, kind, op_seq",
                (int(ok), int(simulated), detail, now, action_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            alert_id, event_id, kind, op_seq = row[0], row[1], row[2], row[3]
            await self._audit_in(db, audit, now)
            if alert_id is None:
                return FinishedAction(None, op_seq, 0)
            hidden = {"hide": 1, "unhide": 0, "delete": 2}.get(kind)
            if ok and hidden is not None and event_id is not None:
                await db.execute(
                    "UPDATE alert_events SET hidden = ? WHERE alert_id = ? AND event_id = ?",
                    (hidden, alert_id, event_id),
                )
            await db.execute("UPDATE alerts SET version = version + 1 WHERE id = ?", (alert_id,))
            async with db.execute(
                "SELECT COUNT(*) FROM forum_actions WHERE alert_id = ? AND op_seq = ?"
                " AND state != 'done'",
                (alert_id, op_seq),
            ) as cur:
                remaining = int((await cur.fetchone())[0])
            if op_seq == 0:
                # A rule's own action: show its outcome. The alert's first post waits for
                # the automatic actions (briefly), so it usually shows them at once.
                if remaining == 0:
                    await db.execute(
                        "UPDATE outbox SET next_attempt_at = MIN(next_attempt_at, ?)"
                        " WHERE alert_id = ? AND op = 'post_alert' AND state = 'pending'",
                        (now, alert_id),
                    )
                await self._enqueue(db, OutboxItem("*", "edit_alert", alert_id=alert_id), now)
        return FinishedAction(int(alert_id), op_seq, remaining)

    async def release_actions(self) -> int:
        """Forum actions left running by a process that died go back to pending (at start)."""
        async with self._lock:
            cur = await self.db.execute(
                "UPDATE forum_actions SET state = 'pending' WHERE state = 'running'"
            )
            return cur.rowcount

    async def stalled_operations(self) -> list[int]:
        """Alerts 'acting' whose operation has no forum action left to run (to finalize)."""
        rows = await self._all(
            "SELECT a.id FROM alerts a WHERE a.status = 'acting' AND NOT EXISTS ("
            " SELECT 1 FROM forum_actions f WHERE f.alert_id = a.id AND f.op_seq = a.op_seq"
            " AND f.state != 'done') ORDER BY a.id"
        )
        return [int(r[0]) for r in rows]

    async def forum_actions(self, alert_id: int | None = None) -> list[ActionRecord]:
        """The forum-action journal (of one alert), oldest first."""
        rows = await self._all(
            "SELECT * FROM forum_actions WHERE (? IS NULL OR alert_id = ?) ORDER BY id",
            (alert_id, alert_id),
        )
        return [_action_record(r) for r in rows]

    # outbox

    async def outbox_instance(self) -> str:
        """A random id of this database, part of every chat transaction id.

        Transaction ids must be unique per bot account; outbox row ids alone repeat
        across databases (a reinstall, a test) and would make the homeserver swallow
        a new message as a resend of an old one.
        """
        value = await self.get_state("outbox.instance")
        if value is None:
            import uuid

            await self._run(
                "INSERT OR IGNORE INTO kv (key, value) VALUES ('outbox.instance', ?)",
                (uuid.uuid4().hex[:12],),
            )
            value = await self.get_state("outbox.instance")
        assert value is not None
        return value

    async def claim_outbox(self, chat: str, now: float, max_priority: int = 9) -> OutboxRow | None:
        """Take the next due message for ``chat``, most urgent first (an alert's edits
        wait for its post); ``max_priority`` 0 takes only alert posts."""
        row = await self._one(
            "UPDATE outbox SET state = 'sending', attempts = attempts + 1 WHERE id = ("
            " SELECT o.id FROM outbox o WHERE o.chat = ? AND o.state = 'pending'"
            " AND o.next_attempt_at <= ? AND o.priority <= ? AND NOT (o.op = 'edit_alert' AND EXISTS ("
            "  SELECT 1 FROM outbox p WHERE p.alert_id = o.alert_id AND p.chat = o.chat"
            "  AND p.op = 'post_alert' AND p.state != 'sent'))"
            " ORDER BY o.priority, o.id LIMIT 1)"
            " RETURNING id, chat, op, payload, attempts, generation, alert_id, created_at",
            (chat, now, max_priority),
        )
        if row is None:
            return None
        return OutboxRow(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], row[7])

    async def outbox_sent(
        self, outbox_id: int, result: str, now: float, then: OutboxItem | None = None
    ) -> None:
        """A message went out (and ``then`` is queued with it); if its alert changed
        meanwhile, it goes out again."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE outbox SET state = CASE WHEN again = 1 THEN 'pending' ELSE 'sent' END,"
                " generation = generation + again,"
                " attempts = CASE WHEN again = 1 THEN 0 ELSE attempts END,"
                " next_attempt_at = ?, again = 0, sent_at = ?, result = ?, last_error = NULL"
                " WHERE id = ?",
                (now, now, result, outbox_id),
            )
            if then is not None:
                await self._enqueue(db, then, now)

    async def outbox_retry(self, outbox_id: int, error: str, next_attempt_at: float) -> None:
        """A send failed; try again at ``next_attempt_at``."""
        await self._run(
            "UPDATE outbox SET state = 'pending', last_error = ?, next_attempt_at = ? WHERE id = ?",
            (error, next_attempt_at, outbox_id),
        )

    async def outbox_failed(self, outbox_id: int, error: str, now: float) -> None:
        """Give up on a message and record a problem an operator will see."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE outbox SET state = 'failed', last_error = ? WHERE id = ?",
                (error, outbox_id),
            )
            await db.execute(
                "INSERT INTO problems (at, kind, subject, detail) VALUES (?, 'chat_failed', ?, ?)",
                (now, f"outbox {outbox_id}", error),
            )

    async def release_outbox(self) -> int:
        """Messages left 'sending' by a process that died go back to pending (at start)."""
        async with self._lock:
            cur = await self.db.execute(
                "UPDATE outbox SET state = 'pending', again = 0 WHERE state = 'sending'"
            )
            return cur.rowcount

    async def next_outbox_due(self, chat: str, max_priority: int = 9) -> float | None:
        """When the earliest pending message of ``chat`` falls due."""
        row = await self._one(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE chat = ? AND state = 'pending'"
            " AND priority <= ?",
            (chat, max_priority),
        )
        return row[0] if row and row[0] is not None else None

    async def outbox_counts(self) -> dict[str, int]:
        """How many outbox messages are in each state."""
        rows = await self._all("SELECT state, COUNT(*) FROM outbox GROUP BY state")
        return {s: n for s, n in rows}

    async def outbox_rows(self, chat: str | None = None) -> list[dict[str, Any]]:
        """Every outbox row (of one chat), oldest first."""
        rows = await self._all(
            "SELECT * FROM outbox WHERE (? IS NULL OR chat = ?) ORDER BY id", (chat, chat)
        )
        return [dict(r) for r in rows]

    # --- escalation ------------------------------------------------------------------
    # The escalation engine (bot.escalation) decides; these methods read and write its
    # state. A transition reads the row and the alert, checks the token, and writes the
    # new state with its chat messages, audit entries and log lines in ONE transaction.

    async def escalation_transition(
        self,
        alert_id: int,
        expect_token: str | None,
        now: float,
        decide: Any,  # (escalation row | None, alert row | None, overrides) -> Transition | None
        *,
        create: bool = False,
    ) -> Any:
        """Apply ``decide(escalation row, alert row, overrides in force)``'s transition.

        ``create``: only if the alert has no escalation yet (the row is inserted).
        Otherwise only if the row exists and (when ``expect_token`` is given) still
        holds that token. ``decide`` runs inside the transaction and must not touch the
        store; it returns None (nothing to do) or a ``bot.escalation.Transition``.
        Returns what ``decide`` returned, once committed (None if nothing was written).
        """
        async with self.transaction() as db:
            async with db.execute(
                "SELECT * FROM escalations WHERE alert_id = ?", (alert_id,)
            ) as cur:
                row = await cur.fetchone()
            esc = dict(row) if row is not None else None
            if create and esc is not None:
                return None
            if not create and (
                esc is None or (expect_token is not None and esc["token"] != expect_token)
            ):
                return None
            async with db.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)) as cur:
                arow = await cur.fetchone()
            alert = dict(arow) if arow is not None else None
            if alert is not None:
                async with db.execute(
                    "SELECT chat, room, message_id FROM alert_messages WHERE alert_id = ?"
                    " AND kind = 'alert' ORDER BY rowid",
                    (alert_id,),
                ) as cur:
                    alert["messages"] = [tuple(m) for m in await cur.fetchall()]
            async with db.execute(
                "SELECT * FROM schedule_overrides WHERE cancelled_at IS NULL"
                " AND starts_at <= ? AND ends_at > ? ORDER BY id",
                (now, now),
            ) as cur:
                overrides = [dict(r) for r in await cur.fetchall()]
            change = decide(esc, alert, overrides)
            if change is None:
                return None
            fields = (
                change.policy,
                change.step,
                change.round,
                change.due_at,
                change.token,
                change.state,
                change.acked_by,
                change.acked_at,
                now,
                change.fired_at,
                change.pages,
            )
            if create:
                await db.execute(
                    "INSERT INTO escalations (policy, step, round, due_at, token, state, acked_by,"
                    " acked_at, updated_at, fired_at, pages, started_at, alert_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*fields, now, alert_id),
                )
            else:
                await db.execute(
                    "UPDATE escalations SET policy = ?, step = ?, round = ?, due_at = ?, token = ?,"
                    " state = ?, acked_by = ?, acked_at = ?, updated_at = ?, fired_at = ?,"
                    " pages = pages + ? WHERE alert_id = ?",
                    (*fields, alert_id),
                )
            for item in change.outbox:
                await self._enqueue(db, item, now)
            for entry in change.audit:
                await self._audit_in(db, entry, now)
            for e in change.log:
                await db.execute(
                    "INSERT INTO escalation_log (alert_id, at, kind, policy, step, round, person,"
                    " channel, late, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        alert_id,
                        now,
                        e.kind,
                        change.policy,
                        e.step,
                        e.round,
                        e.person,
                        e.channel,
                        e.late_s,
                        json.dumps(e.detail or {}, sort_keys=True, ensure_ascii=False),
                    ),
                )
            if change.reopen_alert:
                # The ack lapsed: the alert is open again, so 👀 / ack works once more.
                cur = await db.execute(
                    "UPDATE alerts SET status = 'open', acked_by = NULL, acked_at = NULL,"
                    " version = version + 1, updated_at = ? WHERE id = ? AND status = 'acked'",
                    (now, alert_id),
                )
                if cur.rowcount:
                    await self._enqueue(db, OutboxItem("*", "edit_alert", alert_id=alert_id), now)
            if change.problem is not None:
                await db.execute(
                    "INSERT INTO problems (at, kind, subject, detail) VALUES (?, ?, ?, ?)",
                    (now, *change.problem),
                )
        return change

    async def escalation(self, alert_id: int) -> dict[str, Any] | None:
        """An alert's escalation row."""
        row = await self._one("SELECT * FROM escalations WHERE alert_id = ?", (alert_id,))
        return dict(row) if row else None

    async def escalations_to_review(self, now: float, limit: int = 200) -> list[tuple[int, str]]:
        """(alert id, token) of escalations that are due, or whose alert was acked or
        resolved since the engine last looked."""
        rows = await self._all(
            "SELECT e.alert_id, e.token FROM escalations e LEFT JOIN alerts a ON a.id = e.alert_id"
            " WHERE e.state IN ('active', 'acked') AND (e.due_at <= ? OR a.id IS NULL"
            " OR a.status = 'resolved' OR (e.state = 'active' AND a.status IN ('acked', 'acting')"
            " AND COALESCE(CASE WHEN a.status = 'acked' THEN a.acked_at ELSE a.op_at END, 0)"
            " > COALESCE(e.acked_at, -1))) ORDER BY e.due_at LIMIT ?",
            (now, limit),
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    async def next_escalation_due(self) -> float | None:
        """When the earliest active or acked escalation falls due."""
        row = await self._one(
            "SELECT MIN(due_at) FROM escalations WHERE state IN ('active', 'acked')"
        )
        return row[0] if row and row[0] is not None else None

    async def unescalated_alerts(self, since: float, limit: int = 100) -> list[int]:
        """Unresolved alerts created after ``since`` that have no escalation row yet."""
        rows = await self._all(
            "SELECT a.id FROM alerts a WHERE a.status != 'resolved' AND a.created_at >= ?"
            " AND NOT EXISTS (SELECT 1 FROM escalations e WHERE e.alert_id = a.id)"
            " ORDER BY a.id LIMIT ?",
            (since, limit),
        )
        return [int(r[0]) for r in rows]

    async def escalation_log(self, alert_id: int | None = None) -> list[dict[str, Any]]:
        """The escalation log (of one alert), oldest first."""
        rows = await self._all(
            "SELECT * FROM escalation_log WHERE (? IS NULL OR alert_id = ?) ORDER BY id",
            (alert_id, alert_id),
        )
        return [dict(r) for r in rows]

    async def escalation_report_rows(
        self, since: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Alerts created since ``since`` and the escalation log lines about them."""
        async with self._lock:
            async with self.db.execute(
                "SELECT * FROM alerts WHERE created_at >= ? ORDER BY id", (since,)
            ) as cur:
                alerts = [dict(r) for r in await cur.fetchall()]
            async with self.db.execute(
                "SELECT l.* FROM escalation_log l JOIN alerts a ON a.id = l.alert_id"
                " WHERE a.created_at >= ? ORDER BY l.id",
                (since,),
            ) as cur:
                entries = [dict(r) for r in await cur.fetchall()]
        return alerts, entries

    async def add_schedule_override(
        self,
        schedule: str,
        person: str,
        starts_at: float,
        ends_at: float,
        by: str,
        now: float,
        *,
        replaces: str | None = None,
        reason: str = "",
    ) -> int:
        """Record a runtime on-call override and its audit entry; returns its id."""
        swap = f" instead of {replaces}" if replaces else ""
        async with self.transaction() as db:
            async with db.execute(
                "INSERT INTO schedule_overrides (schedule, person, replaces, starts_at, ends_at,"
                " created_by, created_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (schedule, person, replaces, starts_at, ends_at, by, now, reason),
            ) as cur:
                override_id = int((await cur.fetchone())[0])
            await self._audit_in(
                db,
                AuditItem(
                    actor=by,
                    action="override",
                    target=f"schedule {schedule}",
                    reason=reason or f"{person} on call{swap}",
                    outcome="ok",
                    detail={
                        "id": override_id,
                        "person": person,
                        "replaces": replaces,
                        "from": starts_at,
                        "to": ends_at,
                    },
                ),
                now,
            )
        return override_id

    async def cancel_schedule_override(self, override_id: int, by: str, now: float) -> bool:
        """Withdraw a runtime override (audited); False if there was none in force."""
        async with self.transaction() as db:
            cur = await db.execute(
                "UPDATE schedule_overrides SET cancelled_at = ?, cancelled_by = ?"
                " WHERE id = ? AND cancelled_at IS NULL",
                (now, by, override_id),
            )
            if not cur.rowcount:
                return False
            await self._audit_in(
                db,
                AuditItem(
                    actor=by,
                    action="override_cancel",
                    target=f"override {override_id}",
                    reason="withdrawn",
                    outcome="ok",
                ),
                now,
            )
        return True

    async def schedule_overrides(
        self, after: float, schedule: str | None = None
    ) -> list[dict[str, Any]]:
        """Runtime overrides in force at or after ``after`` (of one schedule), by start."""
        rows = await self._all(
            "SELECT * FROM schedule_overrides WHERE cancelled_at IS NULL AND ends_at > ?"
            " AND (? IS NULL OR schedule = ?) ORDER BY starts_at, id",
            (after, schedule, schedule),
        )
        return [dict(r) for r in rows]

    # --- personal data, evidence, audit -----------------------------------------------
    # Personal data (IP, email) lives only in its own table, read only through audited
    # lookups (bot.personal_data). Evidence rows describe encrypted files kept under the
    # evidence directory (bot.evidence). The audit readers serve `vigil audit`.

    async def _insert_events_personal(self, rows: Sequence[InboxRow], now: float) -> list[bool]:
        """:meth:`insert_events` for a batch carrying personal data: the inbox rows and
        the restricted rows of the new deliveries commit together (a redelivery adds none)."""
        inserted_keys: set[tuple[str, str]] = set()
        async with self.transaction() as db:
            for start in range(0, len(rows), _INSERT_CHUNK):
                sql, params = _inbox_insert(rows[start : start + _INSERT_CHUNK], now)
                async with db.execute(sql, params) as cur:
                    inserted_keys.update((r[1], r[2]) for r in await cur.fetchall())
            personal: list[tuple[Any, ...]] = []
            done: set[tuple[str, str]] = set()
            for r in rows:
                key = (r.source, r.delivery_id)
                if r.personal is None or key not in inserted_keys or key in done:
                    continue
                done.add(key)
                p = r.personal
                items = [("ip", v) for v in p.ips] + [("email", v) for v in p.emails]
                personal += [
                    (r.source, p.user_id, p.username, kind, value, now, now)
                    for kind, value in items
                ]
            if personal:
                await db.executemany(
                    "INSERT INTO personal_data (source, user_id, username, kind, value,"
                    " first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (source, user_id, kind, value) DO UPDATE SET"
                    " last_seen = MAX(last_seen, excluded.last_seen),"
                    " username = CASE WHEN excluded.username != '' THEN excluded.username"
                    "   ELSE username END",
                    personal,
                )
        return _inserted_flags(rows, inserted_keys)

    async def personal_lookup(
        self, source: str | None, user: str, audit: AuditItem, now: float
    ) -> list[dict[str, Any]]:
        """The personal data of one account (by forum id or username, of one source or
        all), read and audited in one transaction; the audit entry holds no value."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT source, user_id, username, kind, value, first_seen, last_seen"
                " FROM personal_data WHERE (? IS NULL OR source = ?)"
                " AND (user_id = ? OR username = ? COLLATE NOCASE)"
                " ORDER BY source, user_id, kind, last_seen DESC",
                (source, source, user, user),
            ) as cur:
                rows = [dict(r) for r in await cur.fetchall()]
            detail = {**(audit.detail or {}), "found": len(rows)}
            await self._audit_in(db, dataclasses.replace(audit, detail=detail), now)
        return rows

    async def personal_for_accounts(
        self, accounts: Sequence[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        """Personal data of ``(source, user id)`` accounts (for an admin's export only)."""
        out: list[dict[str, Any]] = []
        for source, user_id in sorted(set(accounts)):
            rows = await self._all(
                "SELECT source, user_id, username, kind, value, first_seen, last_seen"
                " FROM personal_data WHERE source = ? AND user_id = ? ORDER BY kind, last_seen",
                (source, user_id),
            )
            out += [dict(r) for r in rows]
        return out

    async def personal_rows(self) -> list[dict[str, Any]]:
        """Every row of the restricted table (tests and retention checks)."""
        return [dict(r) for r in await self._all("SELECT * FROM personal_data ORDER BY id")]

    async def purge_personal(self, before: float, now: float) -> int:
        """Delete personal data last seen before ``before``; audited when any went."""
        async with self.transaction() as db:
            cur = await db.execute("DELETE FROM personal_data WHERE last_seen < ?", (before,))
            removed = cur.rowcount
            if removed:
                await self._audit_in(
                    db,
                    AuditItem(
                        actor="vigil",
                        action="purge_personal_data",
                        target="personal_data",
                        reason="retention",
                        outcome="ok",
                        detail={"rows": removed, "last_seen_before": before},
                    ),
                    now,
                )
        return removed

    async def evidence_exists(self, event_id: int, media_index: int) -> bool:
        """Whether an image of an event already has its evidence record (a retried event)."""
        row = await self._one(
            "SELECT 1 FROM evidence WHERE event_id = ? AND media_index = ?", (event_id, media_index)
        )
        return row is not None

    async def evidence_file_for(self, sha256: str | None, sha1: str | None) -> str | None:
        """An encrypted file already kept for the same image (a repost), if any."""
        row = await self._one(
            "SELECT file FROM evidence WHERE file IS NOT NULL AND ((? IS NOT NULL AND sha256 = ?)"
            " OR (? IS NOT NULL AND sha1 = ?)) ORDER BY id LIMIT 1",
            (sha256, sha256, sha1, sha1),
        )
        return row[0] if row else None

    async def add_evidence(
        self, record: dict[str, Any], audit: AuditItem, now: float
    ) -> int | None:
        """Record one kept image and its audit entry; None if the image had one already."""
        cols = (
            "event_id",
            "media_index",
            "source",
            "matches",
            "sha256",
            "sha1",
            "hashes",
            "size",
            "file",
            "note",
            "metadata",
            "created_at",
            "expires_at",
        )
        async with self.transaction() as db:
            async with db.execute(
                f"INSERT OR IGNORE INTO evidence ({', '.join(cols)})"
                f" VALUES ({', '.join('?' * len(cols))}) RETURNING id",
                [record[c] for c in cols],
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            evidence_id = int(row[0])
            detail = {**(audit.detail or {}), "evidence_id": evidence_id}
            await self._audit_in(db, dataclasses.replace(audit, detail=detail), now)
        return evidence_id

    async def evidence_record(self, evidence_id: int) -> dict[str, Any] | None:
        """One evidence row."""
        row = await self._one("SELECT * FROM evidence WHERE id = ?", (evidence_id,))
        return dict(row) if row else None

    async def evidence_records(
        self, event_ids: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """Evidence rows (of some events), oldest first."""
        if event_ids is None:
            return [dict(r) for r in await self._all("SELECT * FROM evidence ORDER BY id")]
        if not event_ids:
            return []
        marks = ",".join("?" * len(event_ids))
        rows = await self._all(
            f"SELECT * FROM evidence WHERE event_id IN ({marks}) ORDER BY id", list(event_ids)
        )
        return [dict(r) for r in rows]

    async def purge_evidence(self, now: float) -> tuple[list[int], list[str]]:
        """Delete evidence rows past ``expires_at`` (audited); returns their ids and the
        files no remaining row refers to, for the caller to delete after the commit."""
        async with self.transaction() as db:
            async with db.execute(
                "DELETE FROM evidence WHERE expires_at <= ? RETURNING id, file", (now,)
            ) as cur:
                gone = [(int(r[0]), r[1]) for r in await cur.fetchall()]
            if not gone:
                return [], []
            files: list[str] = []
            for name in sorted({f for _, f in gone if f}):
                async with db.execute(
                    "SELECT 1 FROM evidence WHERE file = ? LIMIT 1", (name,)
                ) as c:
                    if await c.fetchone() is None:
                        files.append(name)
            ids = sorted(i for i, _ in gone)
            await self._audit_in(
                db,
                AuditItem(
                    actor="vigil",
                    action="purge_evidence",
                    target="evidence",
                    reason="retention",
                    outcome="ok",
                    detail={"ids": ids, "files": len(files)},
                ),
                now,
            )
        return ids, files

    async def evidence_files(self) -> set[str]:
        """Every file name an evidence row refers to (to find orphans)."""
        rows = await self._all("SELECT DISTINCT file FROM evidence WHERE file IS NOT NULL")
        return {r[0] for r in rows}

    async def audit_chain(self) -> list[tuple[Any, ...]]:
        """Every audit row exactly as stored (detail as its JSON text), oldest first:
        (id, at, actor, action, target, alert_id, reason, outcome, detail, prev_hash, hash)."""
        rows = await self._all(
            "SELECT id, at, actor, action, target, alert_id, reason, outcome, detail,"
            " prev_hash, hash FROM audit ORDER BY id"
        )
        return [tuple(r) for r in rows]

    async def audit_query(
        self,
        *,
        actor: str | None = None,
        alert_id: int | None = None,
        action: str | None = None,
        since: float | None = None,
        until: float | None = None,
        targets: Sequence[str] = (),
    ) -> list[AuditEntry]:
        """Audit entries matching every filter given (actor case-insensitive; an alert
        also brings the entries whose target is one of ``targets``), oldest first."""
        where = ["(? IS NULL OR actor = ? COLLATE NOCASE)", "(? IS NULL OR action = ?)"]
        params: list[Any] = [actor, actor, action, action]
        where += ["(? IS NULL OR at >= ?)", "(? IS NULL OR at < ?)"]
        params += [since, since, until, until]
        if alert_id is not None:
            marks = ",".join("?" * len(targets))
            where.append(f"(alert_id = ?{f' OR target IN ({marks})' if targets else ''})")
            params += [alert_id, *targets]
        rows = await self._all(
            f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id", params
        )
        return [_audit_entry(r) for r in rows]

    # --- reports, raids and lockdowns (bot.reports, bot.raids) --------------------------

    async def remember_account(self, source: str, user_id: str, created_at: float) -> None:
        """Keep when a forum account was created (Discourse posts do not say)."""
        await self._run(
            "INSERT OR REPLACE INTO accounts (source, user_id, created_at) VALUES (?, ?, ?)",
            (source, user_id, created_at),
        )

    async def account_created(self, source: str, user_id: str) -> float | None:
        """When the account was created, if a user_created event told us."""
        row = await self._one(
            "SELECT created_at FROM accounts WHERE source = ? AND user_id = ?", (source, user_id)
        )
        return float(row[0]) if row else None

    async def count_reporters(
        self,
        source: str,
        post_id: str,
        reporters: Sequence[str],
        now: float,
        windows: Sequence[float],
        keep_s: float,
    ) -> tuple[tuple[float, int], ...]:
        """Record members' reports of a post (each member counts once), then count the
        distinct reporters within each window; rows older than ``keep_s`` are dropped."""
        async with self.transaction() as db:
            for reporter in reporters:
                await db.execute(
                    "INSERT INTO report_windows (source, post_id, reporter, first_at, last_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, post_id, reporter)"
                    " DO UPDATE SET last_at = MAX(last_at, excluded.last_at)",
                    (source, post_id, reporter, now, now),
                )
            await db.execute("DELETE FROM report_windows WHERE last_at < ?", (now - keep_s,))
            counts = []
            for window in windows:
                async with db.execute(
                    "SELECT COUNT(*) FROM report_windows WHERE source = ? AND post_id = ?"
                    " AND last_at >= ?",
                    (source, post_id, now - window),
                ) as cur:
                    counts.append((window, int((await cur.fetchone())[0])))
        return tuple(counts)

    async def raid_hit(
        self, raid: str, key: str, now: float, within_s: float, event_id: int | None
    ) -> int:
        """Count one event for a raid (once per key, at its first sighting) and return how
        many it has within ``within_s`` of ``now``."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO raid_hits (raid, key, at, event_id) VALUES (?, ?, ?, ?)",
                (raid, key, now, event_id),
            )
            await db.execute(
                "DELETE FROM raid_hits WHERE raid = ? AND at < ?", (raid, now - within_s)
            )
            async with db.execute(
                "SELECT COUNT(*) FROM raid_hits WHERE raid = ? AND at >= ?",
                (raid, now - within_s),
            ) as cur:
                return int((await cur.fetchone())[0])

    async def raid_count(self, raid: str, since: float) -> int:
        """Events a raid counted after ``since``."""
        row = await self._one(
            "SELECT COUNT(*) FROM raid_hits WHERE raid = ? AND at > ?", (raid, since)
        )
        return int(row[0]) if row else 0

    async def open_alert_with(
        self, source: str, post_id: str | None, report_id: str | None
    ) -> tuple[int, int, dict[str, Any], int] | None:
        """(alert id, event id, target, hidden) of the newest open alert that already shows
        this post (or this report), if any."""
        if post_id is None and report_id is None:
            return None
        row = await self._one(
            "SELECT e.alert_id, e.event_id, e.target, e.hidden FROM alert_events e"
            " JOIN alerts a ON a.id = e.alert_id"
            " WHERE a.source = ? AND a.status IN ('open', 'acked', 'acting')"
            " AND ((? IS NOT NULL AND json_extract(e.target, '$.post_id') = ?)"
            "   OR (? IS NOT NULL AND json_extract(e.target, '$.report.id') = ?))"
            " ORDER BY e.alert_id DESC, e.added_at LIMIT 1",
            (source, post_id, post_id, report_id, report_id),
        )
        if row is None:
            return None
        return int(row[0]), int(row[1]), json.loads(row[2]), int(row[3])

    async def join_report(
        self,
        *,
        alert_id: int,
        target_event_id: int,
        event_id: int,
        merge: Any,
        severity: str,
        rules: Sequence[str],
        actions: Sequence[NewAction],
        now: float,
    ) -> tuple[bool, tuple[int, ...]]:
        """Merge a report event into the alert that shows its post: ``merge`` (a function of
        the target dict) updates the target, the alert gains the rules and severity, the
        actions are journaled on it, one edit is queued. (joined now?, pending action ids);
        a second call for the same event changes nothing."""
        from bot.model import Severity

        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT OR IGNORE INTO report_joins (event_id, alert_id, at) VALUES (?, ?, ?)",
                (event_id, alert_id, now),
            )
            joined = cur.rowcount > 0
            if joined:
                async with db.execute(
                    "SELECT target FROM alert_events WHERE alert_id = ? AND event_id = ?",
                    (alert_id, target_event_id),
                ) as c:
                    row = await c.fetchone()
                target = merge(json.loads(row[0]) if row else {})
                await db.execute(
                    "UPDATE alert_events SET target = ? WHERE alert_id = ? AND event_id = ?",
                    (json.dumps(target, sort_keys=True, ensure_ascii=False), alert_id,
                     target_event_id),
                )  # fmt: skip
                async with db.execute(
                    "SELECT severity, rules FROM alerts WHERE id = ?", (alert_id,)
                ) as c:
                    arow = await c.fetchone()
                top = max(Severity(arow[0]), Severity(severity), key=lambda s: s.rank)
                merged = list(json.loads(arow[1]))
                merged += [r for r in rules if r not in merged]
                await db.execute(
                    "UPDATE alerts SET count = count + 1, severity = ?, rules = ?,"
                    " updated_at = ?, version = version + 1 WHERE id = ?",
                    (top.value, json.dumps(merged), now, alert_id),
                )
                for action in actions:
                    await self._insert_action(db, action, alert_id, now)
                await self._enqueue(db, OutboxItem("*", "edit_alert", alert_id=alert_id), now)
            pending: list[int] = []
            keys = [a.dedupe_key for a in actions]
            if keys:
                marks = ",".join("?" * len(keys))
                async with db.execute(
                    f"SELECT id FROM forum_actions WHERE dedupe_key IN ({marks})"
                    " AND state = 'pending' ORDER BY id",
                    keys,
                ) as c:
                    pending = [r[0] for r in await c.fetchall()]
        return joined, tuple(pending)

    async def report_join(self, event_id: int) -> int | None:
        """The alert a report event was merged into, if it was."""
        row = await self._one("SELECT alert_id FROM report_joins WHERE event_id = ?", (event_id,))
        return int(row[0]) if row else None

    async def lockdown_current(self) -> dict[str, Any] | None:
        """The lockdown that is on, if one is."""
        row = await self._one("SELECT * FROM lockdowns WHERE state = 'on'")
        return dict(row) if row else None

    async def lockdown_latest(self) -> dict[str, Any] | None:
        """The most recent lockdown, on or off."""
        row = await self._one("SELECT * FROM lockdowns ORDER BY id DESC LIMIT 1")
        return dict(row) if row else None

    async def lockdown_begin(
        self,
        *,
        started_at: float,
        ends_at: float,
        started_by: str,
        reason: str,
        raid: str | None,
        next_reminder_at: float,
        alert: LockdownAlert | None,
        outbox: Sequence[OutboxItem],
        audit: AuditItem,
    ) -> tuple[int, bool]:
        """Turn a lockdown on, with its alert, notices and audit entry, in one transaction.
        (id, started): when one is already on, its id and False, and nothing is written."""
        async with self.transaction() as db:
            async with db.execute("SELECT id FROM lockdowns WHERE state = 'on'") as cur:
                row = await cur.fetchone()
            if row is not None:
                return int(row[0]), False
            alert_id = None
            if alert is not None:
                async with db.execute(
                    "INSERT INTO alerts (incident_key, source, severity, room, status, created_at,"
                    " updated_at, count, summary, rules, dry_run)"
                    " VALUES (?, ?, ?, ?, 'open', ?, ?, 1, ?, ?, ?) RETURNING id",
                    (
                        alert.incident_key,
                        alert.source,
                        alert.severity,
                        alert.room,
                        started_at,
                        started_at,
                        alert.summary,
                        json.dumps(list(alert.rules)),
                        int(alert.dry_run),
                    ),
                ) as cur:
                    alert_id = int((await cur.fetchone())[0])
                for chat, address in alert.rooms:
                    item = OutboxItem(
                        chat,
                        "post_alert",
                        {"room": address},
                        dedupe_key=f"post:{alert_id}:{chat}",
                        alert_id=alert_id,
                    )
                    await self._enqueue(db, item, started_at)
            async with db.execute(
                "INSERT INTO lockdowns (state, started_at, ends_at, started_by, reason, raid,"
                " alert_id, next_reminder_at) VALUES ('on', ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (started_at, ends_at, started_by, reason, raid, alert_id, next_reminder_at),
            ) as cur:
                lockdown_id = int((await cur.fetchone())[0])
            for item in outbox:
                if item.dedupe_key is not None:
                    item = dataclasses.replace(
                        item, dedupe_key=item.dedupe_key.replace("{id}", str(lockdown_id))
                    )
                await self._enqueue(db, item, started_at)
            await self._audit_in(
                db,
                dataclasses.replace(audit, target=f"lockdown #{lockdown_id}", alert_id=alert_id),
                started_at,
            )
        return lockdown_id, True

    async def lockdown_change(
        self,
        lockdown_id: int,
        changes: dict[str, Any],
        now: float,
        *,
        state: str | None = "on",
        next_reminder_at: float | None = None,
        outbox: Sequence[OutboxItem] = (),
        audit: Sequence[AuditItem] = (),
    ) -> bool:
        """Change a lockdown if it is still in ``state`` (and, when given, its reminder is
        still due at ``next_reminder_at``): compare-and-set, with its messages and audit."""
        unknown = set(changes) - _LOCKDOWN_SETTABLE
        if unknown:
            raise ValueError(f"not a lockdown column one may set: {sorted(unknown)}")
        names = sorted(changes)
        sets = ", ".join(f"{n} = ?" for n in names)
        where = "id = ?"
        params: list[Any] = [changes[n] for n in names] + [lockdown_id]
        if state is not None:
            where += " AND state = ?"
            params.append(state)
        if next_reminder_at is not None:
            where += " AND next_reminder_at = ?"
            params.append(next_reminder_at)
        async with self.transaction() as db:
            # Column names come from _LOCKDOWN_SETTABLE only, values are bound.
            cur = await db.execute(f"UPDATE lockdowns SET {sets} WHERE {where}", params)
            if cur.rowcount == 0:
                return False
            for item in outbox:
                await self._enqueue(db, item, now)
            for entry in audit:
                await self._audit_in(db, entry, now)
        return True

    async def lockdown_history(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest lockdowns, newest first."""
        rows = await self._all("SELECT * FROM lockdowns ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]


def now_s() -> float:
    """Wall-clock seconds; the one place the store's callers read real time by default."""
    return time.time()


# --- alerts and outbox: the records the store reads and the changes it applies -----

# Columns of ``alerts`` a moderation decision may set (everything else is the store's).
_ALERT_SETTABLE = frozenset(
    {
        "status",
        "resolution",
        "resolved_by",
        "resolved_at",
        "acked_by",
        "acked_at",
        "op",
        "op_seq",
        "op_by",
        "op_at",
        "prev_status",
        "outcome",
    }
)


_OUTBOX_PRIORITY = {"post_alert": 0, "seed_buttons": 2}
_LOCKDOWN_SETTABLE = frozenset(
    {
        "state",
        "ends_at",
        "next_reminder_at",
        "reminders",
        "settings_state",
        "settings",
        "ended_at",
        "ended_by",
        "end_reason",
    }
)


class _Conflict(Exception):
    """The alert changed between a decision and its application."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A chat message to send later. ``chat`` "*" (edits only): every chat the alert is in."""

    chat: str
    op: str  # post_alert, seed_buttons, edit_alert, send, dm, confirm_prompt
    payload: dict[str, Any] | None = None
    dedupe_key: str | None = None
    alert_id: int | None = None
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox message claimed for sending."""

    id: int
    chat: str
    op: str
    payload: dict[str, Any]
    attempts: int
    generation: int
    alert_id: int | None
    created_at: float


@dataclass(frozen=True, slots=True)
class AuditItem:
    """An audit entry to append with a change."""

    actor: str
    action: str
    target: str
    reason: str
    outcome: str
    alert_id: int | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NewAction:
    """A forum action to journal; ``dedupe_key`` makes a repeat request a no-op."""

    dedupe_key: str
    source: str
    kind: str
    action: dict[str, Any]  # the ForumAction's fields
    actor: str
    reason: str
    op_seq: int = 0  # 0: a rule's automatic action; else the alert operation it serves
    event_id: int | None = None


@dataclass(frozen=True, slots=True)
class IncidentAlert:
    """The alert side of a new incident event."""

    incident_key: str
    source: str
    severity: str
    room: str | None
    summary: str
    rules: tuple[str, ...]
    target: dict[str, Any]
    rooms: tuple[tuple[str, str], ...]  # (chat, room address) to post in
    group_window_s: float
    hold_s: float = 0.0  # how long the first post waits for automatic actions
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class LockdownAlert:
    """The alert a lockdown opens (a raid crossed its threshold): no post, a summary."""

    incident_key: str
    source: str
    severity: str
    room: str | None
    summary: str
    rules: tuple[str, ...]
    rooms: tuple[tuple[str, str], ...]
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class NewIncident:
    """One event's contribution: maybe an alert, maybe automatic actions."""

    event_id: int
    alert: IncidentAlert | None
    actions: tuple[NewAction, ...] = ()


@dataclass(frozen=True, slots=True)
class IncidentResult:
    """What :meth:`Store.record_incident` did."""

    alert_id: int | None
    created: bool
    pending_actions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """A moderation decision, applied atomically by :meth:`Store.apply_plan`."""

    alert_id: int | None = None
    expect_version: int | None = None
    changes: dict[str, Any] | None = None
    actions: tuple[NewAction, ...] = ()
    outbox: tuple[OutboxItem, ...] = ()
    audit: tuple[AuditItem, ...] = ()
    confirm: tuple[str, str, float, float] | None = None  # (op, requested by, at, expires)
    clear_confirm: str | None = None
    chat_event: tuple[str, str] | None = None  # (chat, event id): handled once


@dataclass(frozen=True, slots=True)
class PlanResult:
    """``status``: applied, duplicate or conflict; ids of the forum actions added."""

    status: str
    action_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TargetRecord:
    """One post (event) of an incident."""

    event_id: int
    added_at: float
    target: dict[str, Any]
    hidden: int  # 0 visible, 1 hidden, 2 deleted (as far as Vigil did it)


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One row of the forum-action journal."""

    id: int
    dedupe_key: str
    alert_id: int | None
    event_id: int | None
    source: str
    kind: str
    action: dict[str, Any]
    actor: str
    reason: str
    op_seq: int
    state: str
    requested_at: float
    done_at: float | None
    ok: bool | None
    simulated: bool | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class ConfirmRecord:
    """A request waiting for confirmation (a suspension)."""

    op: str
    requested_by: str
    requested_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class FinishedAction:
    """What finishing a forum action left: how many of its operation are still to run."""

    alert_id: int | None
    op_seq: int
    remaining: int


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as moderation and rendering see it."""

    id: int
    incident_key: str
    source: str
    severity: str
    room: str | None
    status: str  # open, acked, acting, resolved
    created_at: float
    updated_at: float
    count: int
    summary: str
    resolution: str | None
    resolved_by: str | None
    resolved_at: float | None
    version: int
    acked_by: str | None
    acked_at: float | None
    op: str | None
    op_seq: int
    op_by: str | None
    op_at: float | None
    prev_status: str | None
    outcome: str | None
    rules: tuple[str, ...]
    dry_run: bool
    targets: tuple[TargetRecord, ...]
    actions: tuple[ActionRecord, ...]
    confirmations: tuple[ConfirmRecord, ...]


def _action_record(r: aiosqlite.Row) -> ActionRecord:
    return ActionRecord(
        id=r["id"],
        dedupe_key=r["dedupe_key"],
        alert_id=r["alert_id"],
        event_id=r["event_id"],
        source=r["source"],
        kind=r["kind"],
        action=json.loads(r["action"]),
        actor=r["actor"],
        reason=r["reason"],
        op_seq=r["op_seq"],
        state=r["state"],
        requested_at=r["requested_at"],
        done_at=r["done_at"],
        ok=None if r["ok"] is None else bool(r["ok"]),
        simulated=None if r["simulated"] is None else bool(r["simulated"]),
        detail=r["detail"],
    )
