"""On-call schedules in local time: who is on call at an instant, and who is next.

A schedule has an IANA time zone and layers. A layer is a rotation (people taking
turns, one shift each, handing off at a local wall-clock time) optionally limited
to weekly windows (e.g. nights 22:00–07:00); later layers override earlier ones
where they have someone on. One-off overrides (person X from t1 to t2) win over
every layer; a swap is an override that replaces one named person only.

Everything is computed in the schedule's own zone with :mod:`zoneinfo`, so a
handoff at 09:00 stays at 09:00 local across daylight-saving changes, and a night
window 22:00–07:00 lasts 8 hours on the March night and 10 on the October night.
Local times that do not exist or exist twice are resolved the way RFC 5545 does:

- a time in the spring-forward gap (01:30 in London on the last Sunday of March)
  moves forward by the gap (02:30 BST, the first instant the clock shows >= 01:30);
- a time that happens twice (01:30 on the last Sunday of October) means the first
  occurrence (01:30 BST), so a handoff never happens twice.

Runtime overrides (``!override``) live in the store; :func:`add_override` writes one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.schema import Table

if TYPE_CHECKING:
    from bot.config import Config
    from bot.store import Store

log = logging.getLogger(__name__)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_GROUPS = {
    "weekdays": (0, 1, 2, 3, 4),
    "weekends": (5, 6),
    "daily": (0, 1, 2, 3, 4, 5, 6),
}
_SHIFT = re.compile(r"^\s*(\d+)\s*(w|d|h)\s*$")
_SHIFT_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1)}
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
DEFAULT_START = date(2024, 1, 1)  # a Monday: weekly rotations hand off on Mondays by default
HORIZON = timedelta(days=62)  # how far next_shift looks ahead (and current_shift back)


# --- local time ---------------------------------------------------------------------


def to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """The instant a naive local wall-clock time names in ``tz`` (gap: forward; repeat: first)."""
    # fold=0 gives, for a time in the gap, the offset before the change (so the instant
    # lands after the gap), and for a repeated time, the first occurrence.
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _local(at: datetime, tz: ZoneInfo) -> datetime:
    return _aware(at).astimezone(tz).replace(tzinfo=None)


# --- windows ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly window: opens at ``start`` on each of ``days`` (local), closes at ``end``.

    ``end`` at or before ``start`` means the window crosses midnight and closes the
    next day; ``end == start`` is a whole day.
    """

    days: tuple[int, ...]  # weekdays the window opens on, 0 = Monday
    start: time
    end: time

    def bounds(self, opening_day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The UTC instants the window opening on ``opening_day`` opens and closes."""
        close_day = opening_day if self.end > self.start else opening_day + timedelta(days=1)
        opens = to_utc(datetime.combine(opening_day, self.start), tz)
        closes = to_utc(datetime.combine(close_day, self.end), tz)
        return opens, closes

    def contains(self, at: datetime, tz: ZoneInfo) -> bool:
        """Whether the instant ``at`` falls inside the window (wall clock in ``tz``)."""
        at = _aware(at)
        today = _local(at, tz).date()
        for day in (today - timedelta(days=1), today):
            if day.weekday() in self.days:
                opens, closes = self.bounds(day, tz)
                if opens <= at < closes:
                    return True
        return False

    def edges(self, start: datetime, end: datetime, tz: ZoneInfo) -> Iterator[datetime]:
        """Every instant in [start, end) at which the window opens or closes."""
        first = _local(start, tz).date() - timedelta(days=1)
        last = _local(end, tz).date()
        day = first
        while day <= last:
            if day.weekday() in self.days:
                for edge in self.bounds(day, tz):
                    if start <= edge < end:
                        yield edge
            day += timedelta(days=1)

    def minutes_of_week(self) -> list[tuple[int, int]]:
        """The window as [start, end) minute ranges of a wall-clock week (for overlap checks)."""
        s = self.start.hour * 60 + self.start.minute
        e = self.end.hour * 60 + self.end.minute
        length = e - s if e > s else e - s + 24 * 60
        out = []
        for d in self.days:
            lo = d * 1440 + s
            hi = lo + length
            if hi <= 7 * 1440:
                out.append((lo, hi))
            else:  # Sunday night into Monday morning wraps round the week
                out.append((lo, 7 * 1440))
                out.append((0, hi - 7 * 1440))
        return out

    def describe(self) -> str:
        """``mon-fri 22:00–07:00`` style text."""
        days = ",".join(WEEKDAYS[d] for d in sorted(self.days))
        if len(self.days) == 7:
            days = "daily"
        return f"{days} {self.start:%H:%M}–{self.end:%H:%M}"


def windows_overlap(windows: Sequence[Window]) -> list[tuple[int, int]]:
    """Index pairs of windows that share some wall-clock minute of the week."""
    spans = [w.minutes_of_week() for w in windows]
    clashes = []
    for i in range(len(windows)):
        for j in range(i + 1, len(windows)):
            if any(a < d and c < b for a, b in spans[i] for c, d in spans[j]):
                clashes.append((i, j))
    return clashes


# --- rotations, layers, overrides -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rotation:
    """People taking turns: shift ``k`` starts at ``anchor + k * shift`` local wall-clock time."""

    people: tuple[tuple[str, ...], ...]  # each turn is one person or a group on together
    anchor: datetime  # naive local: the first handoff
    shift: timedelta

    def boundary(self, k: int, tz: ZoneInfo) -> datetime:
        """The UTC instant shift ``k`` begins."""
        return to_utc(self.anchor + k * self.shift, tz)

    def index(self, at: datetime, tz: ZoneInfo) -> int:
        """The number of the shift that contains ``at`` (negative before the anchor)."""
        at = _aware(at)
        k = (_local(at, tz) - self.anchor) // self.shift
        # Local arithmetic is off by the DST offset near a change: correct by looking.
        while self.boundary(k, tz) > at:
            k -= 1
        while self.boundary(k + 1, tz) <= at:
            k += 1
        return k

    def on(self, at: datetime, tz: ZoneInfo) -> tuple[str, ...]:
        """Who holds the shift at ``at`` (nobody before the rotation starts)."""
        k = self.index(at, tz)
        if k < 0:
            return ()
        return self.people[k % len(self.people)]

    def edges(self, start: datetime, end: datetime, tz: ZoneInfo) -> Iterator[datetime]:
        """Every handoff instant in [start, end)."""
        k = max(0, self.index(start, tz))
        while True:
            edge = self.boundary(k, tz)
            if edge >= end:
                return
            if edge >= start:
                yield edge
            k += 1


@dataclass(frozen=True, slots=True)
class Layer:
    """A rotation, in force only inside its windows (always, if it has none)."""

    name: str
    rotation: Rotation
    windows: tuple[Window, ...] = ()

    def on(self, at: datetime, tz: ZoneInfo) -> tuple[str, ...]:
        """Who this layer puts on call at ``at``."""
        if self.windows and not any(w.contains(at, tz) for w in self.windows):
            return ()
        return self.rotation.on(at, tz)

    def people(self) -> list[str]:
        """Everyone who takes a turn in this layer."""
        return [p for group in self.rotation.people for p in group]


@dataclass(frozen=True, slots=True)
class Override:
    """``person`` is on call from ``start`` to ``end``: alone, or instead of ``replaces``."""

    person: str
    start: datetime  # aware
    end: datetime
    replaces: str | None = None  # a swap: only where this person would be on
    by: str = ""
    reason: str = ""
    id: int | None = None  # the store's row id for runtime overrides

    def covers(self, at: datetime) -> bool:
        """Whether the override is in force at ``at``."""
        return self.start <= _aware(at) < self.end


@dataclass(frozen=True, slots=True)
class Schedule:
    """Who is on call, in one time zone."""

    name: str
    timezone: str
    layers: tuple[Layer, ...]
    overrides: tuple[Override, ...] = ()  # declared in the rules file
    description: str = ""
    declared_in: str = ""

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.timezone)

    def people(self) -> list[str]:
        """Everyone the schedule can put on call (layers and file overrides), once each."""
        names: list[str] = []
        for layer in self.layers:
            names += layer.people()
        names += [o.person for o in self.overrides]
        return list(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class Shift:
    """A stretch of time with the same people on call."""

    names: tuple[str, ...]
    start: datetime | None  # None: started before the look-back horizon
    end: datetime | None  # None: no change within the horizon


def who_is_on(schedule: Schedule, at: datetime, overrides: Iterable[Override] = ()) -> list[str]:
    """The names on call in ``schedule`` at ``at``; ``overrides`` come from the store."""
    at = _aware(at)
    tz = schedule.zone
    names: tuple[str, ...] = ()
    for layer in reversed(schedule.layers):
        names = layer.on(at, tz)
        if names:
            break
    active = [o for o in (*schedule.overrides, *overrides) if o.covers(at)]
    takeovers = [o.person for o in active if o.replaces is None]
    if takeovers:
        return list(dict.fromkeys(takeovers))
    swaps = {o.replaces.casefold(): o.person for o in active if o.replaces is not None}
    return list(dict.fromkeys(swaps.get(n.casefold(), n) for n in names))


def _edges(
    schedule: Schedule, start: datetime, end: datetime, overrides: Sequence[Override]
) -> list[datetime]:
    tz = schedule.zone
    found: set[datetime] = set()
    for layer in schedule.layers:
        found.update(layer.rotation.edges(start, end, tz))
        for window in layer.windows:
            found.update(window.edges(start, end, tz))
    for o in (*schedule.overrides, *overrides):
        found.update(t for t in (o.start, o.end) if start <= t < end)
    return sorted(found)


def shifts(
    schedule: Schedule,
    start: datetime,
    end: datetime,
    overrides: Sequence[Override] = (),
) -> list[Shift]:
    """The stretches of [start, end) with the same people on call, in order."""
    start, end = _aware(start), _aware(end)
    out: list[Shift] = []
    current = tuple(who_is_on(schedule, start, overrides))
    began: datetime | None = start
    for edge in _edges(schedule, start, end, overrides):
        if edge == start:
            continue
        names = tuple(who_is_on(schedule, edge, overrides))
        if names != current:
            out.append(Shift(current, began, edge))
            current, began = names, edge
    out.append(Shift(current, began, end))
    return out


def current_shift(schedule: Schedule, at: datetime, overrides: Sequence[Override] = ()) -> Shift:
    """Who is on at ``at``, since when and until when (within :data:`HORIZON` each way)."""
    at = _aware(at)
    back = shifts(schedule, at - HORIZON, at + timedelta(microseconds=1), overrides)[-1]
    ahead = shifts(schedule, at, at + HORIZON, overrides)[0]
    start = back.start if back.start != at - HORIZON else None
    end = ahead.end if ahead.end != at + HORIZON else None
    return Shift(ahead.names, start, end)


def next_shift(
    schedule: Schedule, at: datetime, overrides: Sequence[Override] = ()
) -> tuple[list[str], datetime, datetime | None] | None:
    """The next stretch after the current one with someone on call: (names, start, end)."""
    at = _aware(at)
    stretches = shifts(schedule, at, at + HORIZON, overrides)
    for s in stretches[1:]:
        if s.names:
            assert s.start is not None
            end = s.end if s.end != at + HORIZON else None
            return list(s.names), s.start, end
    return None


# --- time-dependent rules -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Active:
    """When a rule applies: inside weekly windows of a zone, or while a schedule has someone on."""

    windows: tuple[Window, ...] = ()
    timezone: str = "UTC"
    schedule: str | None = None

    def describe(self) -> str:
        """``mon-fri 22:00–07:00 Europe/London`` or ``while nights has someone on``."""
        if self.schedule:
            return f"while schedule {self.schedule} has someone on call"
        return ", ".join(w.describe() for w in self.windows) + f" {self.timezone}"


def active_at(active: Active, at: datetime, schedules: Sequence[Schedule]) -> bool:
    """Whether a rule limited to ``active`` applies at ``at``.

    A schedule counts with the overrides of its rules file only: rules must give the
    same answer for the same event whatever the runtime overrides are.
    """
    if active.schedule is not None:
        schedule = next((s for s in schedules if s.name == active.schedule), None)
        return schedule is not None and bool(who_is_on(schedule, at))
    tz = ZoneInfo(active.timezone)
    return any(w.contains(at, tz) for w in active.windows)


# --- parsing (rules files) -------------------------------------------------------------


def parse_days(t: Table, name: str) -> tuple[int, ...] | None:
    """Weekday names (``mon``, ``Monday``, ``weekdays``, ``weekends``, ``daily``) as numbers."""
    raw = t.str_list(name, None)
    if raw is None:
        return tuple(range(7))
    days: list[int] = []
    for i, word in enumerate(raw):
        w = word.strip().casefold()
        if w in _DAY_GROUPS:
            days += _DAY_GROUPS[w]
        elif w in WEEKDAYS:
            days.append(WEEKDAYS.index(w))
        elif w in _FULL_DAYS:
            days.append(_FULL_DAYS.index(w))
        else:
            t.error(
                f"{name}[{i}]",
                f"{word!r} is not a day; expected mon, tue, wed, thu, fri, sat, sun, "
                "weekdays, weekends or daily",
            )
            return None
    if not days:
        t.error(name, "no days given; leave the key out to mean every day")
        return None
    return tuple(sorted(set(days)))


def parse_clock(t: Table, name: str, default: Any = None) -> time | None:
    """A local time of day, ``"HH:MM"`` (or a TOML local time)."""
    if not t.has(name):
        if default is None:
            t.error(name, 'missing; expected a time of day like "22:00"')
        return default
    raw = t.data[name]
    if isinstance(raw, time):
        return raw.replace(second=0, microsecond=0)
    if isinstance(raw, str):
        m = _CLOCK.match(raw.strip())
        if m:
            return time(int(m.group(1)), int(m.group(2)))
    t.error(name, f'expected a time of day like "22:00" (24-hour, local), got {raw!r}')
    return default


def parse_window(t: Table) -> Window | None:
    """``{ days = [...], from = "22:00", to = "07:00" }``."""
    days = parse_days(t, "days")
    start = parse_clock(t, "from")
    end = parse_clock(t, "to")
    if days is None or start is None or end is None:
        return None
    return Window(days, start, end)


def parse_timezone(t: Table, name: str = "timezone") -> str | None:
    """A required IANA zone: "UTC" must be said, never assumed."""
    tz = t.str(name, expected='an IANA time zone like "Europe/London"')
    if tz is None:
        return None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        t.error(name, f'{tz!r} is not an IANA time zone; expected e.g. "Europe/London"')
        return None
    return tz


def parse_active(t: Table, name: str = "active") -> Active | None:
    """A rule's ``active``: a schedule name, or ``{days, from, to, timezone}``."""
    if not t.has(name):
        return None
    raw = t.data[name]
    if isinstance(raw, str):
        if not raw.strip():
            t.error(name, "empty string; expected a schedule name or a time window")
            return None
        return Active(schedule=raw.strip())
    if not isinstance(raw, dict):
        t.error(
            name,
            'expected a schedule name or a table like { days = ["fri", "sat"], from = "22:00",'
            ' to = "07:00", timezone = "Europe/London" }',
        )
        return None
    sub = Table(raw, t.file, t.key(name), t.problems)
    window = parse_window(sub)
    tz = parse_timezone(sub)
    sub.finish()
    if window is None or tz is None:
        return None
    return Active((window,), tz)


def _parse_shift(t: Table) -> timedelta | None:
    def check(v: str) -> str | None:
        m = _SHIFT.match(v)
        if not m or int(m.group(1)) == 0:
            return f"{v!r} is not a shift length"
        return None

    raw = t.value("shift", str, 'a shift length like "1w", "7d", "1d" or "12h"', "1w", check)
    if raw is None:
        return None
    m = _SHIFT.match(raw)
    assert m is not None
    return int(m.group(1)) * _SHIFT_UNITS[m.group(2)]


def _parse_date(t: Table, name: str, default: date) -> date | None:
    if not t.has(name):
        return default
    raw = t.data[name]
    if isinstance(raw, date) and not isinstance(raw, datetime):
        return raw
    if isinstance(raw, str):
        try:
            return date.fromisoformat(raw.strip())
        except ValueError:
            pass
    t.error(name, f'expected a date like "2025-01-06" (local), got {raw!r}')
    return None


def parse_instant(raw: Any, tz: ZoneInfo) -> datetime | None:
    """A point in time from TOML: a local date-time (in ``tz``), one with an offset, or text."""
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw.strip())
        except ValueError:
            return None
    if isinstance(raw, datetime):
        if raw.tzinfo is None:
            return to_utc(raw, tz)
        return raw.astimezone(UTC)
    if isinstance(raw, date):
        return to_utc(datetime.combine(raw, time()), tz)
    return None


def _people(t: Table) -> tuple[tuple[str, ...], ...] | None:
    t.has("people")
    raw = t.data.get("people")
    expected = 'an array of staff names, e.g. ["Alice", "Bob"] (an inner array: on together)'
    if raw is None:
        t.error("people", f"missing; expected {expected}")
        return None
    if not isinstance(raw, list) or not raw:
        t.error("people", f"expected {expected}")
        return None
    out: list[tuple[str, ...]] = []
    for i, item in enumerate(raw):
        group = item if isinstance(item, list) else [item]
        if not group or not all(isinstance(p, str) and p.strip() for p in group):
            t.error(f"people[{i}]", f"expected a staff name or an array of them; {expected}")
            return None
        out.append(tuple(p.strip() for p in group))
    return tuple(out)


def _layer(t: Table, index: int) -> Layer | None:
    name = t.str("name", f"layer {index + 1}")
    people = _people(t)
    shift = _parse_shift(t)
    start = _parse_date(t, "start", DEFAULT_START)
    windows: list[Window] = []
    raw_windows = t.value("windows", list, "an array of { days, from, to } tables", [])
    for i, w in enumerate(raw_windows or []):
        if not isinstance(w, dict):
            t.error(f"windows[{i}]", 'expected a table like { from = "22:00", to = "07:00" }')
            continue
        sub = Table(w, t.file, t.key(f"windows[{i}]"), t.problems)
        window = parse_window(sub)
        sub.finish()
        if window is not None:
            windows.append(window)
    # The handoff defaults to the moment the first window opens: night volunteers
    # hand over when the night begins, not at midnight in the middle of it.
    default_handoff = windows[0].start if windows else time(9, 0)
    handoff = parse_clock(t, "handoff", default_handoff)
    handoff_day = t.choice("handoff_day", (*WEEKDAYS, *_FULL_DAYS), None)
    t.finish()
    if people is None or shift is None or start is None or handoff is None:
        return None
    if handoff_day is not None:
        if shift % timedelta(weeks=1):
            t.error("handoff_day", "a handoff weekday needs a shift of whole weeks")
            return None
        wanted = (WEEKDAYS + _FULL_DAYS).index(handoff_day) % 7
        start += timedelta(days=(wanted - start.weekday()) % 7)
    for i, j in windows_overlap(windows):
        t.error(
            "windows",
            f"windows {i + 1} ({windows[i].describe()}) and {j + 1} ({windows[j].describe()}) "
            "overlap; one window per stretch of the week",
        )
    return Layer(name, Rotation(people, datetime.combine(start, handoff), shift), tuple(windows))


def _override(t: Table, tz: ZoneInfo | None) -> Override | None:
    person = t.str("person")
    replaces = t.str("replaces", None)
    reason = t.str("reason", "")
    bounds = []
    for key in ("from", "to"):
        t.has(key)
        raw = t.data.get(key)
        when = parse_instant(raw, tz) if (raw is not None and tz is not None) else None
        if raw is None:
            t.error(key, 'missing; expected a local date and time like "2025-12-24T18:00"')
        elif when is None and tz is not None:
            t.error(key, f'expected a local date and time like "2025-12-24T18:00", got {raw!r}')
        bounds.append(when)
    t.finish()
    start, end = bounds
    if not person or start is None or end is None:
        return None
    if end <= start:
        t.error("to", "the override ends before it starts")
        return None
    return Override(person, start, end, replaces, "rules file", reason or "")


def parse_schedule(t: Table) -> Schedule | None:
    """One ``[[schedule]]`` table; every problem goes to ``t``'s problems."""
    name = t.str("name")
    description = t.str("description", "")
    tz = parse_timezone(t)
    zone = ZoneInfo(tz) if tz else None
    layers = [_layer(lt, i) for i, lt in enumerate(t.tables("layer"))]
    overrides = [_override(ot, zone) for ot in t.tables("override")]
    t.finish()
    if not name or tz is None:
        return None
    if not layers:
        t.error("layer", "a schedule needs at least one [[schedule.layer]] with people in it")
    if any(x is None for x in layers) or any(x is None for x in overrides):
        return None
    return Schedule(
        name=name,
        timezone=tz,
        layers=tuple(x for x in layers if x is not None),
        overrides=tuple(x for x in overrides if x is not None),
        description=description or "",
        declared_in=t.file,
    )


def check_schedules(schedules: Sequence[Schedule], config: Config, problems: Any) -> None:
    """``vigil check``: unique names, known people, no clashing overrides."""
    seen: set[str] = set()
    for s in schedules:
        where = f"schedule {s.name!r}"
        if s.name in seen:
            problems.add(s.declared_in, "schedule", f"{where} is declared twice")
        seen.add(s.name)
        for i, layer in enumerate(s.layers):
            for person in layer.people():
                if config.person(person) is None:
                    problems.add(
                        s.declared_in,
                        f"{where}.layer[{i}].people",
                        f"no staff member called {person!r} in bot.toml; "
                        f"staff: {', '.join(p.name for p in config.staff) or 'none'}",
                    )
        for i, o in enumerate(s.overrides):
            for who in (o.person, o.replaces):
                if who is not None and config.person(who) is None:
                    problems.add(
                        s.declared_in,
                        f"{where}.override[{i}]",
                        f"no staff member called {who!r} in bot.toml",
                    )
        takeovers = [(i, o) for i, o in enumerate(s.overrides) if o.replaces is None]
        for a in range(len(takeovers)):
            for b in range(a + 1, len(takeovers)):
                (i, x), (j, y) = takeovers[a], takeovers[b]
                if x.start < y.end and y.start < x.end and x.person != y.person:
                    problems.add(
                        s.declared_in,
                        f"{where}.override[{j}]",
                        f"overlaps override[{i}] ({x.person}): both would be on call alone; "
                        "use replaces = ... for a swap",
                    )


# --- runtime overrides ------------------------------------------------------------------


async def add_override(
    store: Store,
    schedule: str,
    person: str,
    start: datetime,
    end: datetime,
    by: str,
    *,
    replaces: str | None = None,
    reason: str = "",
    now: float | None = None,
) -> int:
    """Put ``person`` on call in ``schedule`` from ``start`` to ``end`` (``!override``); audited.

    The caller checks that the schedule and the people exist and that ``by`` may do it.
    """
    start, end = _aware(start), _aware(end)
    if end <= start:
        raise ValueError("an override must end after it starts")
    at = now if now is not None else datetime.now(UTC).timestamp()
    override_id = await store.add_schedule_override(
        schedule,
        person,
        start.timestamp(),
        end.timestamp(),
        by,
        at,
        replaces=replaces,
        reason=reason,
    )
    log.info(
        "override %d: %s on call in %s from %s to %s (by %s)",
        override_id,
        person,
        schedule,
        start.isoformat(),
        end.isoformat(),
        by,
    )
    return override_id


async def stored_overrides(store: Store, at: float, schedule: str | None = None) -> list[Override]:
    """Runtime overrides not yet over at ``at`` (of one schedule, or all), by schedule name."""
    rows = await store.schedule_overrides(at, schedule)
    return [override_from_row(r) for r in rows]


def override_from_row(r: dict[str, Any]) -> Override:
    """An :class:`Override` from a ``schedule_overrides`` row."""
    return Override(
        person=r["person"],
        start=datetime.fromtimestamp(r["starts_at"], UTC),
        end=datetime.fromtimestamp(r["ends_at"], UTC),
        replaces=r["replaces"],
        by=r["created_by"],
        reason=r["reason"],
        id=r["id"],
    )


def _clock(at: datetime | None, tz: ZoneInfo, now: datetime) -> str:
    if at is None:
        return "further than two months"
    local = at.astimezone(tz)
    if local.date() == now.astimezone(tz).date():
        return local.strftime("%H:%M %Z")
    return local.strftime("%a %d %b %H:%M %Z")


def oncall_lines(
    schedules: Sequence[Schedule],
    at: datetime,
    tz: str,
    overrides: dict[str, list[Override]] | None = None,
) -> list[str]:
    """What ``!oncall`` answers: per schedule, who is on now and who is next, in ``tz``."""
    zone = ZoneInfo(tz)
    at = _aware(at)
    lines = []
    for s in schedules:
        extra = (overrides or {}).get(s.name, [])
        now_shift = current_shift(s, at, extra)
        who = ", ".join(now_shift.names) or "nobody"
        line = f"{s.name}: {who} now"
        if now_shift.end is not None:
            line += f" (until {_clock(now_shift.end, zone, at)})"
        upcoming = next_shift(s, at, extra)
        if upcoming is not None:
            names, start, _ = upcoming
            line += f"; next {', '.join(names)} from {_clock(start, zone, at)}"
        lines.append(line)
    return lines or ["No schedules are defined in the rules files."]


# --- !override ------------------------------------------------------------------------------

_SPAN = re.compile(r"^\+?(\d+)\s*(m|h|d)$")
_SPAN_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
OVERRIDE_USAGE = (
    'Usage: !override SCHEDULE FROM TO ["PERSON"] [instead "PERSON"] — FROM is now, 22:00 or '
    "2025-12-24T18:00; TO is 07:00, a date-time or a length like 4h (your time zone)."
)


@dataclass(frozen=True, slots=True)
class OverrideRequest:
    """A parsed ``!override``: who takes which schedule when."""

    schedule: str
    start: datetime
    end: datetime
    person: str | None  # None: the moderator who asked
    replaces: str | None


def _when(word: str, tz: ZoneInfo, after: datetime) -> datetime | None:
    """``now``, ``HH:MM`` (the next such local time at or after ``after``) or a date-time."""
    if word == "now":
        return after
    m = _CLOCK.match(word)
    if m:
        local = _local(after, tz)
        wanted = datetime.combine(local.date(), time(int(m.group(1)), int(m.group(2))))
        at = to_utc(wanted, tz)
        return at if at >= after else to_utc(wanted + timedelta(days=1), tz)
    return parse_instant(word, tz)


def parse_override(text: str, tz: str, now: datetime) -> OverrideRequest | str:
    """The words after ``!override``, in the asker's zone ``tz``; a usage message if wrong."""
    import shlex

    try:
        words = shlex.split(text)
    except ValueError:
        return OVERRIDE_USAGE
    if len(words) < 3:
        return OVERRIDE_USAGE
    zone = ZoneInfo(tz)
    schedule, rest = words[0], words[3:]
    start = _when(words[1].casefold(), zone, _aware(now))
    if start is None:
        return f"{words[1]!r} is not a time. {OVERRIDE_USAGE}"
    m = _SPAN.match(words[2].casefold())
    end = start + int(m.group(1)) * _SPAN_UNITS[m.group(2)] if m else _when(words[2], zone, start)
    if end is None or end <= start:
        return f"{words[2]!r} is not a time after {words[1]}. {OVERRIDE_USAGE}"
    person = replaces = None
    if rest and rest[0].casefold() != "instead":
        person, rest = rest[0], rest[1:]
    if rest:
        if rest[0].casefold() != "instead" or len(rest) != 2:
            return OVERRIDE_USAGE
        replaces = rest[1]
    return OverrideRequest(schedule, start, end, person, replaces)
