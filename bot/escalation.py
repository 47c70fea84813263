"""Escalation: when nobody takes an alert in time, page named people, step by step.

A policy (in the rules files) is an ordered list of steps; each step pages its
targets — the alert's room, a role, an on-call schedule, named staff — and gives
them ``delay`` to acknowledge before the next step pages (GoAlert's meaning of a
step delay). A step that reaches nobody (its schedule has nobody on call) is
skipped at once and the skip is audited. After the last step the chain starts
again ``repeat`` times, then ends "exhausted" (loudly: a room notice and a problem).

State is durable, in the ``escalations`` table: the next step, the round, when it is
due, and a token that changes on every transition. Every transition reads the row
and the alert, checks the token and queues its chat messages in ONE transaction
(GoAlert's pattern), so a restart neither loses nor repeats a page; a step found
overdue at start fires once, marked late.

An acknowledgement stops the chain and arms the policy's ``ack_timeout``: if the
alert is still not resolved by then, the ack lapses (the alert reopens) and the
chain goes on from the next step, saying so. The engine learns acks and
resolutions from the alerts table itself (moderation writes them), and from
:meth:`EscalationEngine.ack` / :meth:`EscalationEngine.resolve` when wired, which
only makes it notice sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Histogram

from bot.alerts import clock_time, span
from bot.clock import Clock, sleep_or_wake
from bot.config import Config, Role, StaffMember
from bot.metrics import REGISTRY
from bot.model import Severity
from bot.outbox import FALLBACK, fallback_entry
from bot.schedules import Override, Schedule, override_from_row, who_is_on
from bot.schema import Problems, Table
from bot.store import AuditItem, OutboxItem, Store

if TYPE_CHECKING:
    from bot.rules import RuleSet

log = logging.getLogger(__name__)

ACTIVE, ACKED, RESOLVED, EXHAUSTED, NONE = "active", "acked", "resolved", "exhausted", "none"
FAR_FUTURE = 1e15  # "never" for due_at, which is NOT NULL
LATE_AFTER_S = 60.0  # a step firing later than this after its due time is marked late
SWEEP_WINDOW_S = 7 * 86400.0  # open alerts younger than this without an escalation get one
TARGET_KINDS = ("room", "role", "schedule", "person")
ACKED_STATUSES = ("acked", "acting")  # someone is on it (acting: a takedown is under way)
TAKEDOWN_RESOLUTIONS = ("taken_down", "suspended", "deleted")

_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
TIME_TO_ACK = Histogram(
    "vigil_alert_time_to_ack_seconds",
    "Seconds from an escalated alert to its first acknowledgement, by severity",
    ["severity"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_RESOLVE = Histogram(
    "vigil_alert_time_to_resolve_seconds",
    "Seconds from an escalated alert to its resolution, by severity",
    ["severity"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
STEPS = Counter(
    "vigil_escalation_steps_total",
    "Escalation steps reached, by policy, step number (1-based) and outcome (paged, skipped)",
    ["policy", "step", "outcome"],
    registry=REGISTRY,
)
PAGES = Counter(
    "vigil_escalation_pages_total",
    "People and rooms paged, by channel (matrix_dm, matrix_room, room, ...)",
    ["channel"],
    registry=REGISTRY,
)
LATE = Counter(
    "vigil_escalation_late_total",
    "Escalation steps that fired late (Vigil was not running when they were due)",
    registry=REGISTRY,
)
ENDED = Counter(
    "vigil_escalation_ended_total",
    "Escalations by how they ended or paused (acked, rearmed, resolved, exhausted)",
    ["policy", "how"],
    registry=REGISTRY,
)


def prime_metrics(ruleset: RuleSet) -> None:
    """Show every severity and every policy step on ``/metrics`` from the start, at zero,
    so a dashboard or an absent() alert sees them before the first page."""
    for sev in Severity:
        TIME_TO_ACK.labels(sev.value)
        TIME_TO_RESOLVE.labels(sev.value)
    for policy in ruleset.policies:
        for i in range(len(policy.steps)):
            for outcome in ("paged", "skipped"):
                STEPS.labels(policy.name, str(i + 1), outcome)


# --- policies -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Whom a step pages: ``room`` (the alert's), ``room:NAME``, ``role:R``, ``schedule:S``,
    ``person:P``."""

    kind: str
    name: str | None = None

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Step:
    """Page ``targets``, then wait ``delay_s`` for an ack before the next step."""

    delay_s: float
    targets: tuple[Target, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """An escalation policy from the rules files."""

    name: str
    steps: tuple[Step, ...]
    repeat: int = 0  # extra rounds through the steps after the first
    ack_timeout_s: float = 3600.0
    initial_delay_s: float = 0.0  # how long the alert waits in its room before step 1
    severities: tuple[Severity, ...] = ()
    description: str = ""
    declared_in: str = ""


def parse_target(text: str) -> Target | None:
    """``"schedule:nights"`` as a :class:`Target`; None if it is not one."""
    kind, _, name = text.strip().partition(":")
    kind, name = kind.strip(), name.strip()
    if kind not in TARGET_KINDS:
        return None
    if kind == "room":
        return Target("room", name or None)
    if not name:
        return None
    if kind == "role" and name not in [r.value for r in Role]:
        return None
    return Target(kind, name)


def _step(t: Table) -> Step | None:
    delay = t.duration("delay")
    raw = t.str_list("targets")
    t.finish()
    targets: list[Target] = []
    for i, text in enumerate(raw or ()):
        target = parse_target(text)
        if target is None:
            t.error(
                f"targets[{i}]",
                f'{text!r} is not a target; expected "room", "room:NAME", '
                '"role:volunteer|moderator|admin", "schedule:NAME" or "person:NAME"',
            )
        else:
            targets.append(target)
    if raw is not None and not raw:
        t.error("targets", "a step must page someone; give at least one target")
    if delay is None or not targets or len(targets) != len(raw or ()):
        return None
    return Step(delay, tuple(targets))


def parse_policy(t: Table) -> Policy | None:
    """One ``[[policy]]`` table with its ``[[policy.step]]`` tables."""
    name = t.str("name")
    description = t.str("description", "")
    severities = t.str_list("severities", (), [s.value for s in Severity])
    repeat = t.int("repeat", 0, 0, 20)
    ack_timeout = t.duration("ack_timeout", "1h")
    initial = t.duration("initial_delay", "0s")
    step_tables = t.tables("step")
    steps = [_step(st) for st in step_tables]
    t.finish()
    if ack_timeout is not None and ack_timeout < 60:
        # An ack nobody follows up is a known failure: the timeout cannot be switched off.
        t.error("ack_timeout", "must be at least 1m: an acked alert must be followed up")
        ack_timeout = None
    if not step_tables:
        t.error("step", "a policy needs at least one [[policy.step]]")
    if not name or ack_timeout is None or initial is None or not steps or None in steps:
        return None
    return Policy(
        name=name,
        steps=tuple(s for s in steps if s is not None),
        repeat=repeat if repeat is not None else 0,
        ack_timeout_s=ack_timeout,
        initial_delay_s=initial,
        severities=tuple(Severity(s) for s in severities or ()),
        description=description or "",
        declared_in=t.file,
    )


def person_channels(person: StaffMember, config: Config) -> tuple[str, ...]:
    """The channels ``person`` can be paged on, in their order of preference."""
    wanted = person.notify or tuple(
        ch for ch, ident in (("matrix_dm", person.matrix), ("discord_dm", person.discord)) if ident
    )
    usable = []
    for channel in wanted:
        chat = channel.split("_", 1)[0]
        identity = getattr(person, chat, None)
        if not identity or getattr(config, chat, None) is None:
            continue
        if channel.endswith(("_room", "_channel")) and not any(
            getattr(r, chat, None) for r in config.rooms
        ):
            continue
        usable.append(channel)
    return tuple(usable)


def _room_usable(config: Config, name: str | None) -> bool:
    rooms = [config.room(name)] if name else list(config.rooms)
    return any(
        r is not None and getattr(r, chat) and getattr(config, chat) is not None
        for r in rooms
        for chat in ("matrix", "discord")
    )


def _target_reach(
    target: Target, schedules: Mapping[str, Schedule], config: Config
) -> tuple[bool, str | None]:
    """(reachable, why not) for a target, at check time (whatever the hour)."""
    if target.kind == "room":
        if _room_usable(config, target.name):
            return True, None
        return False, "no room with a configured chat to post in"
    if target.kind == "person":
        person = config.person(target.name or "")
        if person is None:
            return False, None  # reported as unknown
        if person_channels(person, config):
            return True, None
        return False, f"{person.name} cannot be paged: no usable chat identity / notify channel"
    if target.kind == "role":
        people = [p for p in config.staff if p.role.value == target.name]
        if any(person_channels(p, config) for p in people):
            return True, None
        return False, f"nobody with role {target.name} can be paged"
    schedule = schedules.get(target.name or "")
    if schedule is None:
        return False, None  # reported as unknown
    people = [config.person(n) for n in schedule.people()]
    if any(p is not None and person_channels(p, config) for p in people):
        return True, None
    return False, f"schedule {schedule.name} has nobody who can be paged"


def check_policies(
    policies: Sequence[Policy],
    schedules: Sequence[Schedule],
    config: Config,
    problems: Problems,
) -> None:
    """``vigil check``: known targets, reachable people, one policy per severity."""
    by_schedule = {s.name: s for s in schedules}
    seen: set[str] = set()
    claimed: dict[str, str] = {}
    for policy in policies:
        where = f"policy {policy.name!r}"
        file = policy.declared_in
        if policy.name in seen:
            problems.add(file, "policy", f"{where} is declared twice")
        seen.add(policy.name)
        for sev in policy.severities:
            if sev.value in claimed and claimed[sev.value] != policy.name:
                problems.add(
                    file,
                    f"{where}.severities",
                    f"severity {sev.value} is already claimed by policy {claimed[sev.value]!r}",
                )
            claimed.setdefault(sev.value, policy.name)
        any_reachable = False
        for i, step in enumerate(policy.steps):
            step_reachable = False
            for target in step.targets:
                key = f"{where}.step[{i}].targets"
                if target.kind == "person" and config.person(target.name or "") is None:
                    problems.add(file, key, f"no staff member called {target.name!r} in bot.toml")
                    continue
                if target.kind == "schedule" and target.name not in by_schedule:
                    problems.add(
                        file,
                        key,
                        f"no schedule called {target.name!r}; schedules: "
                        f"{', '.join(sorted(by_schedule)) or 'none'}",
                    )
                    continue
                if target.kind == "room" and target.name and config.room(target.name) is None:
                    problems.add(file, key, f"no room called {target.name!r} in bot.toml")
                    continue
                ok, why = _target_reach(target, by_schedule, config)
                if ok:
                    step_reachable = True
                elif why:
                    problems.add(file, key, f"{target}: {why}", warning=True)
            if not step_reachable:
                problems.add(
                    file,
                    f"{where}.step[{i}]",
                    "no target of this step can be paged: it would always be skipped",
                    warning=True,
                )
            any_reachable = any_reachable or step_reachable
        if not any_reachable:
            problems.add(
                file,
                where,
                "no step of this policy can reach anyone: nobody would ever be paged",
            )


def policy_for(ruleset: RuleSet, rule_names: Sequence[str], severity: str) -> Policy | None:
    """The policy an alert follows: its most severe rule's ``policy``, else its severity's."""
    by_name = {r.name: r for r in ruleset.rules}
    naming = [by_name[n] for n in rule_names if n in by_name and by_name[n].policy]
    if naming:
        top = max(naming, key=lambda r: r.severity.rank)
        chosen = ruleset.policy(top.policy or "")
        if chosen is not None:
            return chosen
    return next((p for p in ruleset.policies if severity in p.severities), None)


# --- what a page is made of ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What the engine reads of an alert (inside its transaction)."""

    id: int
    source: str
    severity: str
    summary: str
    room: str | None
    status: str
    created_at: float
    rules: tuple[str, ...] = ()
    acked_by: str | None = None
    acked_at: float | None = None
    op_by: str | None = None
    op_at: float | None = None
    resolved_by: str | None = None
    resolved_at: float | None = None
    resolution: str | None = None
    messages: tuple[tuple[str, str, str], ...] = ()  # (chat, room, message id) of its posts

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AlertFacts:
        """From an ``alerts`` row (plus ``messages``) as the store returns it."""
        import json

        rules = row.get("rules") or "[]"
        return cls(
            id=int(row["id"]),
            source=row["source"],
            severity=row["severity"],
            summary=row["summary"],
            room=row.get("room"),
            status=row["status"],
            created_at=float(row["created_at"]),
            rules=tuple(json.loads(rules) if isinstance(rules, str) else rules),
            acked_by=row.get("acked_by"),
            acked_at=row.get("acked_at"),
            op_by=row.get("op_by"),
            op_at=row.get("op_at"),
            resolved_by=row.get("resolved_by"),
            resolved_at=row.get("resolved_at"),
            resolution=row.get("resolution"),
            messages=tuple(tuple(m) for m in row.get("messages", ())),  # type: ignore[misc]
        )


@dataclass(frozen=True, slots=True)
class Recipient:
    """One person paged, on which channel, and why them."""

    person: StaffMember
    channel: str  # matrix_dm, matrix_room, discord_dm, discord_channel
    why: str  # "on call in nights", "role admin", "named in the policy"


@dataclass(frozen=True, slots=True)
class Page:
    """One step's page, for a :class:`Notifier` to turn into chat messages."""

    alert: AlertFacts
    policy: str
    step: int  # 0-based
    steps: int
    round: int
    recipients: tuple[Recipient, ...]
    rooms: tuple[str | None, ...]  # room targets: None is the alert's own room
    now: float
    key: str  # unique per page: the prefix of every message's dedupe key
    late_s: float = 0.0
    rearmed: tuple[str, float] | None = None  # (who had acked, when) if an ack lapsed


class Notifier(Protocol):
    """Turns pages into outbox messages (queued by the engine in its transaction)."""

    def page(self, page: Page) -> list[OutboxItem]:
        """The messages that page everyone in ``page``."""
        ...

    def notice(self, alert: AlertFacts, text: str, key: str) -> list[OutboxItem]:
        """A plain message in the alert's room(s) (the chain ended, say)."""
        ...


class ChatNotifier:
    """Pages through the chat outbox: room mentions and direct messages.

    Outbox rows (``bot.outbox`` delivers them):

    - ``op="send"``, payload ``{"room", "text", "html": null, "mentions": [user ids],
      "mention_room": bool}``: one message per room and step, mentioning everyone
      who prefers the room; ``mention_room`` asks for an @room ping;
    - ``op="dm"``, payload ``{"user", "text", "html": null}``: a direct message
      (the adapter opens the DM room on first use and remembers it).

    ``dedupe_key`` is ``esc:<alert>:<token>:<step>:<chat>:<room|dm>:<address>``: the
    token is consumed once, so the same page can never be queued twice.
    """

    def __init__(self, config: Config) -> None:
        self.config = config

    def _room_addresses(self, alert: AlertFacts, name: str | None) -> list[tuple[str, str]]:
        """(chat, address) of a room: where the alert was posted, else bot.toml's room."""
        chats = [c for c in ("matrix", "discord") if getattr(self.config, c) is not None]
        if name is None:
            posted = [(chat, room) for chat, room, _ in alert.messages if chat in chats]
            if posted:
                return list(dict.fromkeys(posted))
            name = alert.room
        room = self.config.room(name) if name else None
        if room is None and self.config.rooms:
            room = self.config.rooms[0]
        if room is None:
            return []
        return [(c, getattr(room, c)) for c in chats if getattr(room, c)]

    def _link(self, alert: AlertFacts, chat: str) -> str | None:
        for c, room, msg in alert.messages:
            if c == chat == "matrix":
                return f"https://matrix.to/#/{room}/{msg}"
            if c == chat == "discord" and self.config.discord is not None:
                return f"https://discord.com/channels/{self.config.discord.guild_id}/{room}/{msg}"
        return None

    def _dm_text(self, page: Page, why: str, chat: str, step: str) -> str:
        text = (
            f"{self._what(page)} You are paged as {why} ({step}). "
            f'Reply "ack {page.alert.id}" here to take it, or react 👀 on the alert in the room.'
        )
        link = self._link(page.alert, chat)
        return f"{text} {link}" if link else text

    def _reach(
        self, page: Page, r: Recipient, channels: Sequence[str], step: str
    ) -> OutboxItem | None:
        """One person alone by the first of ``channels`` that works here, carrying the
        rest as its fallback (a DM, or a mention in the alert's room of that chat)."""
        a = page.alert
        for i, channel in enumerate(channels):
            chat, _, kind = channel.partition("_")
            user = getattr(r.person, chat)
            if kind == "dm":
                item = OutboxItem(
                    chat,
                    "dm",
                    {"user": user, "text": self._dm_text(page, r.why, chat, step), "html": None},
                    dedupe_key=f"{page.key}:{chat}:dm:{user}",
                    alert_id=a.id,
                )
            else:
                rooms = [room for c, room in self._room_addresses(a, None) if c == chat]
                if not rooms:
                    continue
                text = (
                    f"{self._what(page)} React 👀 on the alert or type !ack {a.id} "
                    f"to take it ({step})."
                )
                payload = {"room": rooms[0], "text": text, "html": None, "mentions": [user]}
                item = OutboxItem(
                    chat,
                    "send",
                    payload,
                    dedupe_key=f"{page.key}:{chat}:room:{rooms[0]}:{user}",
                    alert_id=a.id,
                )
            return self._with_fallback(item, [(r, channels[i + 1 :])], page, step)
        return None

    def _with_fallback(
        self,
        item: OutboxItem,
        people: Sequence[tuple[Recipient, Sequence[str]]],
        page: Page,
        step: str,
    ) -> OutboxItem:
        """``item`` with, for each person it pages, their next channel to try if it
        cannot be delivered (bot.outbox queues it)."""
        later = [f for r, rest in people if (f := self._reach(page, r, rest, step)) is not None]
        if not later:
            return item
        payload = {**(item.payload or {}), FALLBACK: [fallback_entry(f) for f in later]}
        return OutboxItem(item.chat, item.op, payload, item.dedupe_key, item.alert_id)

    def _what(self, page: Page) -> str:
        a = page.alert
        waited = span(page.now - a.created_at)
        text = (
            f"🚨 Alert #{a.id} ({a.severity}) has waited {waited} with nobody on it: {a.summary}."
        )
        if page.rearmed is not None:
            who, when = page.rearmed
            text += (
                f" {who} acked it {span(page.now - when)} ago but it is still not resolved:"
                " escalating again."
            )
        if page.late_s:
            text += f" (Late by {span(page.late_s)}: Vigil was not running when this was due.)"
        return text

    def page(self, page: Page) -> list[OutboxItem]:
        """Room messages (one per room, with mentions) and one DM per person."""
        a = page.alert
        step = f"step {page.step + 1} of {page.steps}, policy {page.policy}"
        if page.round:
            step += f", round {page.round + 1}"
        items: list[OutboxItem] = []
        rooms: dict[tuple[str, str], list[str]] = {}
        everyone: set[tuple[str, str]] = set()
        for name in page.rooms:
            for address in self._room_addresses(a, name):
                rooms.setdefault(address, [])
                everyone.add(address)
        for r in page.recipients:
            chat, _, kind = r.channel.partition("_")
            user = getattr(r.person, chat)
            if kind == "dm":
                text = self._dm_text(page, r.why, chat, step)
                items.append(
                    OutboxItem(
                        chat,
                        "dm",
                        {"user": user, "text": text, "html": None},
                        dedupe_key=f"{page.key}:{chat}:dm:{user}",
                        alert_id=a.id,
                    )
                )
            else:
                for address in self._room_addresses(a, None):
                    if address[0] == chat:
                        rooms.setdefault(address, []).append(user)
        for (chat, room), mentions in rooms.items():
            ping = "@room " if (chat, room) in everyone else ""
            text = (
                f"{ping}{self._what(page)} React 👀 on the alert or type !ack {a.id} "
                f"to take it ({step})."
            )
            items.append(
                OutboxItem(
                    chat,
                    "send",
                    {
                        "room": room,
                        "text": text,
                        "html": None,
                        "mentions": list(dict.fromkeys(mentions)),
                        "mention_room": (chat, room) in everyone,
                    },
                    dedupe_key=f"{page.key}:{chat}:room:{room}",
                    alert_id=a.id,
                )
            )
        # Each person's later channels back up the message that pages them first.
        out = []
        for item in items:
            p = item.payload or {}
            people = []
            for r in page.recipients:
                chat = r.channel.partition("_")[0]
                user = getattr(r.person, chat)
                if chat == item.chat and (
                    (item.op == "dm" and p.get("user") == user)
                    or (item.op == "send" and user in p.get("mentions", ()))
                ):
                    channels = person_channels(r.person, self.config)
                    at = channels.index(r.channel) + 1 if r.channel in channels else len(channels)
                    rest = channels[at:]
                    people.append((r, rest))
            out.append(self._with_fallback(item, people, page, step))
        return out

    def notice(self, alert: AlertFacts, text: str, key: str) -> list[OutboxItem]:
        """A message without mentions in each of the alert's rooms."""
        return [
            OutboxItem(
                chat,
                "send",
                {"room": room, "text": text, "html": None, "mentions": []},
                dedupe_key=f"{key}:{chat}:notice:{room}",
                alert_id=alert.id,
            )
            for chat, room in self._room_addresses(alert, None)
        ]


# --- transitions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the escalation log (what the report counts)."""

    kind: str  # start, page, skip, ack, rearm, resolve, exhausted
    step: int | None = None
    round: int | None = None
    person: str | None = None
    channel: str | None = None
    late_s: float | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A new state of an escalation and everything queued with it (one transaction).

    :meth:`bot.store.Store.escalation_transition` writes it.
    """

    policy: str
    state: str
    step: int
    round: int
    due_at: float
    token: str
    acked_by: str | None = None
    acked_at: float | None = None
    fired_at: float | None = None
    pages: int = 0
    outbox: tuple[OutboxItem, ...] = ()
    audit: tuple[AuditItem, ...] = ()
    log: tuple[LogEntry, ...] = ()
    reopen_alert: bool = False  # an ack lapsed: the alert is open again
    problem: tuple[str, str, str] | None = None  # (kind, subject, detail)
    # For metrics, read after the commit:
    event: str = ""
    severity: str = ""
    late_s: float = 0.0
    acked_after_s: float | None = None
    resolved_after_s: float | None = None
    steps: tuple[tuple[int, str], ...] = ()  # (step, paged|skipped)
    channels: tuple[str, ...] = ()


def _token() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class _Resolved:
    recipients: list[Recipient] = field(default_factory=list)
    rooms: list[str | None] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class EscalationEngine:
    """The durable escalation state machine and its one scheduler loop."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        rules: Callable[[], RuleSet],
        config: Config,
        notifier: Notifier | None = None,
        *,
        on_queued: Callable[[], None] | None = None,
        poll_s: float = 15.0,
        late_after_s: float = LATE_AFTER_S,
        sweep_window_s: float = SWEEP_WINDOW_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.rules = rules
        self.config = config
        self.notifier: Notifier = notifier or ChatNotifier(config)
        self.on_queued = on_queued
        self.poll_s = poll_s
        self.late_after_s = late_after_s
        self.sweep_window_s = sweep_window_s
        self._wake = asyncio.Event()
        self._pass_done = asyncio.Event()
        self._started_passes = 0
        self._finished_passes = 0
        self._task: asyncio.Task[None] | None = None

    # --- the API the rest of Vigil calls ---------------------------------------------

    async def start(self, alert_id: int, policy: str | None = None) -> str | None:
        """Begin escalating an alert (idempotent); returns the new state, or None if the
        alert already has an escalation or no policy applies."""
        now = self.clock.now()
        change = await self.store.escalation_transition(
            alert_id,
            None,
            now,
            lambda esc, alert, ovr: self._begin(alert, policy, ovr, now),
            create=True,
        )
        self._after(alert_id, change)
        return change.state if change is not None else None

    async def ack(self, alert_id: int, by: str) -> bool:
        """Someone took the alert: stop paging and arm the ack timeout."""
        now = self.clock.now()
        change = await self.store.escalation_transition(
            alert_id, None, now, lambda esc, alert, ovr: self._acked(esc, alert, by, now, now)
        )
        self._after(alert_id, change)
        return change is not None

    async def resolve(self, alert_id: int, by: str | None = None) -> bool:
        """The alert was handled (taken down, dismissed): the escalation ends."""
        now = self.clock.now()
        change = await self.store.escalation_transition(
            alert_id, None, now, lambda esc, alert, ovr: self._resolved(esc, alert, now, by)
        )
        self._after(alert_id, change)
        return change is not None

    async def run_due(self) -> int:
        """One pass: start escalations for new alerts, then apply every due transition."""
        now = self.clock.now()
        n = 0
        for alert_id in await self.store.unescalated_alerts(now - self.sweep_window_s):
            if await self.start(alert_id) is not None:
                n += 1
        for alert_id, token in await self.store.escalations_to_review(now):
            change = await self.store.escalation_transition(
                alert_id,
                token,
                now,
                lambda esc, alert, ovr: self._review(esc, alert, ovr, now),
            )
            self._after(alert_id, change)
            n += change is not None
        return n

    # --- the loop ----------------------------------------------------------------------

    def wake(self) -> None:
        """Look now (an alert was created, acked or resolved)."""
        self._wake.set()

    def start_loop(self) -> None:
        """Run the scheduler loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="escalation")

    async def stop(self) -> None:
        """Stop the loop; state stays in the store for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def settled(self, timeout_s: float = 10.0) -> None:
        """Wait until the loop has made a full pass that began after this call (tests)."""
        target = self._started_passes + 1
        self.wake()
        async with asyncio.timeout(timeout_s):
            while self._finished_passes < target:
                self._pass_done.clear()
                await self._pass_done.wait()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            self._started_passes += 1
            number = self._started_passes
            failed = False
            try:
                await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                failed = True
                log.exception("escalation pass failed; retrying in %.0f s", self.poll_s)
            self._finished_passes = number
            self._pass_done.set()
            timeout = self.poll_s
            if not failed:
                due = await self.store.next_escalation_due()
                if due is not None:
                    timeout = min(timeout, max(0.0, due - self.clock.now()))
            await self._sleep(timeout)

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the injected clock until ``seconds`` pass or :meth:`wake` is called."""
        await sleep_or_wake(self.clock, self._wake, seconds)

    # --- decisions (pure: they run inside the store's transaction) -----------------------

    def _policy(self, name: str, alert: AlertFacts) -> Policy | None:
        rules = self.rules()
        return rules.policy(name) or policy_for(rules, alert.rules, alert.severity)

    def _begin(
        self,
        row: Mapping[str, Any] | None,
        name: str | None,
        overrides: Sequence[Mapping[str, Any]],
        now: float,
    ) -> Transition | None:
        if row is None:
            return None
        alert = AlertFacts.from_row(row)
        rules = self.rules()
        policy = rules.policy(name) if name else policy_for(rules, alert.rules, alert.severity)
        if policy is None:
            # Remembered, so the sweep does not ask again on every pass.
            return Transition("", NONE, 0, 0, FAR_FUTURE, _token(), event="none")
        started = Transition(
            policy.name,
            ACTIVE,
            0,
            0,
            alert.created_at + policy.initial_delay_s,
            _token(),
            log=(LogEntry("start", 0, 0),),
            event="started",
            severity=alert.severity,
        )
        if alert.status == "resolved":
            return Transition(policy.name, RESOLVED, 0, 0, FAR_FUTURE, _token(), event="none")
        if alert.status in ACKED_STATUSES:
            who, when = _ack_of(alert)
            return self._acked(started, row, who, when or now, now, _start_log=True)
        if started.due_at > now:
            return started
        return self._fire(
            policy, alert, (0, 0), started.due_at, now, overrides, "start", None, started
        )

    def _review(
        self,
        esc: Mapping[str, Any],
        row: Mapping[str, Any] | None,
        overrides: Sequence[Mapping[str, Any]],
        now: float,
    ) -> Transition | None:
        if esc["state"] not in (ACTIVE, ACKED):
            return None
        if row is None or row["status"] == "resolved":
            return self._resolved(esc, row, now, None)
        alert = AlertFacts.from_row(row)
        if esc["state"] == ACTIVE and alert.status in ACKED_STATUSES:
            who, when = _ack_of(alert)
            seen = esc["acked_at"]
            if when is not None and (seen is None or when > seen):
                return self._acked(esc, row, who, when, now)
        if esc["due_at"] > now:
            return None
        policy = self._policy(esc["policy"], alert)
        if policy is None:
            text = (
                f"Escalation of alert #{alert.id} stopped: its policy {esc['policy']!r} is no "
                "longer in the rules files and no other policy matches it."
            )
            return self._exhausted(esc, alert, now, text, esc["policy"] or "?")
        position = (int(esc["step"]), int(esc["round"]))
        rearmed = None
        if esc["state"] == ACKED:
            rearmed = (esc["acked_by"] or "someone", float(esc["acked_at"] or now))
        return self._fire(
            policy,
            alert,
            position,
            float(esc["due_at"]),
            now,
            overrides,
            str(esc["token"]),
            rearmed,
            esc,
        )

    def _acked(
        self,
        esc: Any,
        row: Mapping[str, Any] | None,
        by: str,
        when: float,
        now: float,
        *,
        _start_log: bool = False,
    ) -> Transition | None:
        """The alert was acked at ``when``: stop and arm the ack timeout."""
        get = _getter(esc)
        if esc is None or get("state") not in (ACTIVE, ACKED, EXHAUSTED):
            return None
        alert = AlertFacts.from_row(row) if row is not None else None
        policy = self._policy(get("policy"), alert) if alert else self.rules().policy(get("policy"))
        timeout = policy.ack_timeout_s if policy else 3600.0
        step, rnd = int(get("step")), int(get("round"))
        if policy is not None and step >= len(policy.steps):
            step = len(policy.steps) - 1  # after the last step: a lapse re-pages the last one
        first = get("acked_at") is None
        entries = (LogEntry("start", 0, 0),) if _start_log else ()
        return Transition(
            get("policy"),
            ACKED,
            step,
            rnd,
            when + timeout,
            _token(),
            acked_by=by,
            acked_at=when,
            fired_at=get("fired_at"),
            log=(*entries, LogEntry("ack", step, rnd, person=by)),
            event="acked",
            severity=alert.severity if alert else "",
            acked_after_s=(when - alert.created_at) if (alert and first) else None,
        )

    def _resolved(
        self, esc: Any, row: Mapping[str, Any] | None, now: float, by: str | None
    ) -> Transition | None:
        get = _getter(esc)
        if esc is None or get("state") in (RESOLVED, NONE):
            return None
        alert = AlertFacts.from_row(row) if row is not None else None
        at = (alert.resolved_at if alert and alert.resolved_at else None) or now
        who = by or (alert.resolved_by if alert else None)
        return Transition(
            get("policy"),
            RESOLVED,
            int(get("step")),
            int(get("round")),
            FAR_FUTURE,
            _token(),
            acked_by=get("acked_by"),
            acked_at=get("acked_at"),
            fired_at=get("fired_at"),
            log=(LogEntry("resolve", person=who),),
            event="resolved",
            severity=alert.severity if alert else "",
            resolved_after_s=(at - alert.created_at) if alert else None,
        )

    def _exhausted(
        self,
        esc: Any,
        alert: AlertFacts,
        now: float,
        text: str,
        policy: str,
        *,
        audit: Sequence[AuditItem] = (),
        entries: Sequence[LogEntry] = (),
        steps: Sequence[tuple[int, str]] = (),
        key: str = "",
    ) -> Transition:
        get = _getter(esc)
        return Transition(
            policy,
            EXHAUSTED,
            int(get("step") or 0),
            int(get("round") or 0),
            FAR_FUTURE,
            _token(),
            acked_by=get("acked_by"),
            acked_at=get("acked_at"),
            fired_at=get("fired_at"),
            outbox=tuple(self.notifier.notice(alert, "⚠️ " + text, key or f"esc:{alert.id}:end")),
            audit=(
                *audit,
                AuditItem(
                    actor="vigil",
                    action="escalation_exhausted",
                    target=f"alert #{alert.id}",
                    reason=text,
                    outcome="exhausted",
                    alert_id=alert.id,
                ),
            ),
            log=(*entries, LogEntry("exhausted")),
            problem=("escalation_exhausted", f"alert {alert.id}", text),
            event="exhausted",
            severity=alert.severity,
            steps=tuple(steps),
        )

    def _resolve(
        self, step: Step, alert: AlertFacts, overrides: Sequence[Override], now: float
    ) -> _Resolved:
        """The people (with their channel) and rooms a step reaches right now."""
        out = _Resolved()
        seen: set[str] = set()
        at = datetime.fromtimestamp(now, UTC)
        rules = self.rules()

        def add(names: Iterable[str], why: str) -> bool:
            reached = False
            for name in names:
                person = self.config.person(name)
                if person is None:
                    continue
                channels = person_channels(person, self.config)
                if not channels:
                    continue
                reached = True
                if person.name not in seen:
                    seen.add(person.name)
                    out.recipients.append(Recipient(person, channels[0], why))
            return reached

        for target in step.targets:
            if target.kind == "room":
                if _room_usable(self.config, target.name or alert.room):
                    out.rooms.append(target.name)
                else:
                    out.missing.append(f"{target}: no room to post in")
            elif target.kind == "person":
                if not add([target.name or ""], "named in the policy"):
                    out.missing.append(f"{target}: cannot be paged")
            elif target.kind == "role":
                names = [p.name for p in self.config.staff if p.role.value == target.name]
                if not add(names, f"a {target.name}"):
                    out.missing.append(f"{target}: nobody with that role can be paged")
            else:
                schedule = rules.schedule(target.name or "")
                if schedule is None:
                    out.missing.append(f"{target}: no such schedule")
                    continue
                mine = [
                    o for o in overrides if getattr(o, "schedule", None) in (None, schedule.name)
                ]
                on = who_is_on(schedule, at, mine)
                if not on:
                    out.missing.append(f"{target}: nobody on call")
                elif not add(on, f"on call in {schedule.name}"):
                    out.missing.append(f"{target}: {', '.join(on)} on call but cannot be paged")
        return out

    def _fire(
        self,
        policy: Policy,
        alert: AlertFacts,
        position: tuple[int, int],
        due: float,
        now: float,
        override_rows: Sequence[Mapping[str, Any]],
        old_token: str,
        rearmed: tuple[str, float] | None,
        esc: Any,
    ) -> Transition:
        """Page the step at ``position`` (skipping, at once, steps that reach nobody)."""
        get = _getter(esc)
        overrides = [_ScheduledOverride.of(r) for r in override_rows]
        n = len(policy.steps)
        step, rnd = position
        late = now - due if now - due > self.late_after_s else 0.0
        key = f"esc:{alert.id}:{old_token}"
        audit: list[AuditItem] = []
        entries: list[LogEntry] = []
        outcomes: list[tuple[int, str]] = []
        if rearmed is not None:
            entries.append(LogEntry("rearm", min(step, n - 1), rnd, person=rearmed[0]))
            audit.append(
                AuditItem(
                    actor="vigil",
                    action="escalation_rearm",
                    target=f"alert #{alert.id}",
                    reason=f"acked by {rearmed[0]} {span(now - rearmed[1])} ago and not resolved "
                    f"within the ack timeout of policy {policy.name}",
                    outcome="rearmed",
                    alert_id=alert.id,
                )
            )
            step = min(step, n - 1)
        if step >= n:
            text = (
                f"Escalation of alert #{alert.id} ended: policy {policy.name} went through all "
                f"its steps{f' ({rnd + 1} rounds)' if rnd else ''} and nobody acknowledged. "
                "The alert is still open."
            )
            return self._exhausted(esc, alert, now, text, policy.name, key=key)
        for _ in range(n):
            current = policy.steps[step]
            reach = self._resolve(current, alert, overrides, now)
            if reach.recipients or reach.rooms:
                page = Page(
                    alert,
                    policy.name,
                    step,
                    n,
                    rnd,
                    tuple(reach.recipients),
                    tuple(reach.rooms),
                    now,
                    f"{key}:{step}",
                    late,
                    rearmed,
                )
                items = self.notifier.page(page)
                names = ", ".join(f"{r.person.name} ({r.channel})" for r in reach.recipients)
                rooms = ", ".join(f"room {r or alert.room or 'default'}" for r in reach.rooms)
                paged = ", ".join(x for x in (rooms, names) if x)
                for r in reach.recipients:
                    entries.append(
                        LogEntry("page", step, rnd, r.person.name, r.channel, late or None)
                    )
                for room in reach.rooms:
                    entries.append(LogEntry("page", step, rnd, None, "room", late or None,
                                            {"room": room or alert.room}))  # fmt: skip
                reason = f"step {step + 1} of policy {policy.name}: paged {paged}"
                if reach.missing:
                    reason += f" (not reached: {'; '.join(reach.missing)})"
                if late:
                    reason += f"; late by {span(late)}"
                audit.append(
                    AuditItem(
                        actor="vigil",
                        action="escalation_page",
                        target=f"alert #{alert.id}",
                        reason=reason,
                        outcome="queued",
                        alert_id=alert.id,
                        detail={"step": step + 1, "round": rnd + 1, "late_s": round(late)},
                    )
                )
                outcomes.append((step, "paged"))
                nxt = _advance(step, rnd, n, policy.repeat)
                return Transition(
                    policy.name,
                    ACTIVE,
                    nxt[0],
                    nxt[1],
                    now + current.delay_s,
                    _token(),
                    acked_by=get("acked_by"),
                    acked_at=get("acked_at"),
                    fired_at=now,
                    pages=len(reach.recipients) + len(reach.rooms),
                    outbox=tuple(items),
                    audit=tuple(audit),
                    log=(*(_start_entries(esc)), *entries),
                    reopen_alert=rearmed is not None,
                    event="rearmed" if rearmed is not None else "paged",
                    severity=alert.severity,
                    late_s=late,
                    steps=tuple(outcomes),
                    channels=tuple(
                        [r.channel for r in reach.recipients] + ["room"] * len(reach.rooms)
                    ),
                )
            why = "; ".join(reach.missing) or "no target"
            entries.append(LogEntry("skip", step, rnd, detail={"why": why}))
            audit.append(
                AuditItem(
                    actor="vigil",
                    action="escalation_skip",
                    target=f"alert #{alert.id}",
                    reason=f"step {step + 1} of policy {policy.name} reaches nobody now ({why}); "
                    "skipped at once",
                    outcome="skipped",
                    alert_id=alert.id,
                    detail={"step": step + 1, "round": rnd + 1},
                )
            )
            outcomes.append((step, "skipped"))
            step, rnd = _advance(step, rnd, n, policy.repeat)
            if step >= n:
                text = (
                    f"Escalation of alert #{alert.id} ended: no step of policy {policy.name} "
                    "is left that can reach anyone now. The alert is still open."
                )
                return self._exhausted(
                    esc,
                    alert,
                    now,
                    text,
                    policy.name,
                    audit=audit,
                    entries=[*_start_entries(esc), *entries],
                    steps=outcomes,
                    key=key,
                )
        # A whole round reached nobody: wait a step's delay rather than spin, and say so.
        wait = max(60.0, policy.steps[step - 1].delay_s)
        text = f"no step of policy {policy.name} can reach anyone now; trying again in {span(wait)}"
        return Transition(
            policy.name,
            ACTIVE,
            step,
            rnd,
            now + wait,
            _token(),
            acked_by=get("acked_by"),
            acked_at=get("acked_at"),
            fired_at=get("fired_at"),
            outbox=tuple(self.notifier.notice(alert, f"⚠️ Alert #{alert.id}: {text}.", key)),
            audit=tuple(audit),
            log=(*(_start_entries(esc)), *entries),
            reopen_alert=rearmed is not None,
            problem=("escalation_nobody", f"alert {alert.id}", text),
            event="skipped",
            severity=alert.severity,
            steps=tuple(outcomes),
        )

    # --- after the commit ------------------------------------------------------------------

    def _after(self, alert_id: int, change: Transition | None) -> None:
        if change is None or change.event == "none":
            return
        for step, outcome in change.steps:
            STEPS.labels(change.policy, str(step + 1), outcome).inc()
        for channel in change.channels:
            PAGES.labels(channel).inc()
        if change.late_s:
            LATE.inc()
        if change.acked_after_s is not None:
            TIME_TO_ACK.labels(change.severity or "unknown").observe(max(0.0, change.acked_after_s))
        if change.resolved_after_s is not None:
            TIME_TO_RESOLVE.labels(change.severity or "unknown").observe(
                max(0.0, change.resolved_after_s)
            )
        if change.event in ("acked", "rearmed", "resolved", "exhausted"):
            ENDED.labels(change.policy, change.event).inc()
        log.info(
            "escalation alert=%d %s policy=%s step=%d round=%d%s",
            alert_id,
            change.event,
            change.policy,
            change.step + 1,
            change.round + 1,
            f" late={change.late_s:.0f}s" if change.late_s else "",
        )
        if change.outbox and self.on_queued is not None:
            self.on_queued()


@dataclass(frozen=True, slots=True)
class _ScheduledOverride(Override):
    """An override row, with the schedule it belongs to."""

    schedule: str | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _ScheduledOverride:
        o = override_from_row(dict(row))
        return cls(o.person, o.start, o.end, o.replaces, o.by, o.reason, o.id, row["schedule"])


def _getter(esc: Any) -> Callable[[str], Any]:
    """Read a field of an escalation row (a mapping) or of a Transition alike."""
    if esc is None:
        return lambda name: None
    if isinstance(esc, Mapping):
        return lambda name: esc.get(name)
    return lambda name: getattr(esc, name, None)


def _start_entries(esc: Any) -> tuple[LogEntry, ...]:
    # A Transition passed as ``esc`` is the start being built: keep its "start" entry.
    return tuple(esc.log) if isinstance(esc, Transition) else ()


def _ack_of(alert: AlertFacts) -> tuple[str, float | None]:
    if alert.status == "acked":
        return alert.acked_by or "someone", alert.acked_at
    return alert.op_by or alert.acked_by or "someone", alert.op_at or alert.acked_at


def _advance(step: int, rnd: int, n: int, repeat: int) -> tuple[int, int]:
    """The position after ``step``: the next step, the next round, or ``n`` (the end)."""
    if step + 1 < n:
        return step + 1, rnd
    if rnd < repeat:
        return 0, rnd + 1
    return n, rnd


# --- measures ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """What ``!report [days]`` posts."""

    days: float
    since: float
    until: float
    alerts: int
    by_severity: dict[str, int]
    acked: int
    ack_median_s: float | None
    ack_worst_s: float | None
    unacked: int
    taken_down: int
    takedown_median_s: float | None
    takedown_worst_s: float | None
    pages: int
    late_pages: int
    skipped_steps: int
    exhausted: int
    pages_by_person: dict[str, int]
    handled: dict[str, dict[str, int]]  # person -> {"acked": n, "taken_down": n, ...}


async def report(store: Store, now: float, days: float = 7.0) -> Report:
    """Alerts of the last ``days``: counts, time to ack and to take down, pages, who did what."""
    since = now - days * 86400
    alerts, entries = await store.escalation_report_rows(since)
    first_ack: dict[int, float] = {}
    ackers: dict[int, set[str]] = {}  # an ack that lapsed is gone from the alert, not the log
    for e in entries:
        if e["kind"] == "ack" and e["alert_id"] is not None:
            first_ack[e["alert_id"]] = min(first_ack.get(e["alert_id"], e["at"]), e["at"])
            if e["person"]:
                ackers.setdefault(e["alert_id"], set()).add(e["person"])
    by_severity: dict[str, int] = {}
    ack_times: list[float] = []
    takedown_times: list[float] = []
    handled: dict[str, dict[str, int]] = {}
    for a in alerts:
        by_severity[a["severity"]] = by_severity.get(a["severity"], 0) + 1
        human_resolved = (
            a["resolved_at"] if a["resolved_by"] and ":" not in a["resolved_by"] else None
        )
        marks = [
            t for t in (a["acked_at"], a["op_at"], first_ack.get(a["id"]), human_resolved) if t
        ]
        if marks:
            ack_times.append(max(0.0, min(marks) - a["created_at"]))
        if a["resolution"] in TAKEDOWN_RESOLUTIONS and a["resolved_at"]:
            takedown_times.append(max(0.0, a["resolved_at"] - a["created_at"]))
        for who in ackers.get(a["id"], set()) | ({a["acked_by"]} if a["acked_by"] else set()):
            person = handled.setdefault(who, {})
            person["acked"] = person.get("acked", 0) + 1
        if a["resolved_by"] and a["resolution"]:
            person = handled.setdefault(a["resolved_by"], {})
            person[a["resolution"]] = person.get(a["resolution"], 0) + 1
    pages = [e for e in entries if e["kind"] == "page"]
    pages_by_person: dict[str, int] = {}
    for e in pages:
        who = e["person"] or f"room {json_room(e['detail'])}"
        pages_by_person[who] = pages_by_person.get(who, 0) + 1
    return Report(
        days=days,
        since=since,
        until=now,
        alerts=len(alerts),
        by_severity=by_severity,
        acked=len(ack_times),
        ack_median_s=statistics.median(ack_times) if ack_times else None,
        ack_worst_s=max(ack_times) if ack_times else None,
        unacked=len(alerts) - len(ack_times),
        taken_down=len(takedown_times),
        takedown_median_s=statistics.median(takedown_times) if takedown_times else None,
        takedown_worst_s=max(takedown_times) if takedown_times else None,
        pages=len(pages),
        late_pages=sum(1 for e in pages if e["late"]),
        skipped_steps=sum(1 for e in entries if e["kind"] == "skip"),
        exhausted=sum(1 for e in entries if e["kind"] == "exhausted"),
        pages_by_person=pages_by_person,
        handled=handled,
    )


def json_room(detail: str | None) -> str:
    """The room named in a log entry's detail JSON."""
    import json

    try:
        return str(json.loads(detail or "{}").get("room") or "default")
    except ValueError:
        return "default"


def render_report(rep: Report, tz: str = "UTC") -> str:
    """The ``!report`` message, times in the asker's zone."""

    def dur(s: float | None) -> str:
        return span(s) if s is not None else "–"

    sev = ", ".join(
        f"{n} {s}" for s, n in sorted(rep.by_severity.items(), key=lambda kv: -Severity(kv[0]).rank)
    )
    lines = [
        f"Report for the last {rep.days:g} day(s), until {clock_time(rep.until, tz)}:",
        f"Alerts: {rep.alerts}" + (f" ({sev})" if sev else ""),
        f"Time to ack: median {dur(rep.ack_median_s)}, worst {dur(rep.ack_worst_s)}"
        f" ({rep.acked} acked, {rep.unacked} never acked)",
        f"Time to take down: median {dur(rep.takedown_median_s)}, worst "
        f"{dur(rep.takedown_worst_s)} ({rep.taken_down} taken down)",
        f"Pages sent: {rep.pages}"
        + (f", {rep.late_pages} late" if rep.late_pages else "")
        + (f"; {rep.skipped_steps} steps skipped (nobody on call)" if rep.skipped_steps else "")
        + (f"; {rep.exhausted} escalations ran out" if rep.exhausted else ""),
    ]
    if rep.pages_by_person:
        lines.append(
            "Paged: " + ", ".join(f"{p} {n}" for p, n in sorted(rep.pages_by_person.items()))
        )
    for person, counts in sorted(rep.handled.items()):
        lines.append(f"{person}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
