"""The admin's rules files: hash lists to check against, and rules that decide.

Every ``*.toml`` in the rules directory may declare ``[[list]]`` and ``[[rule]]``
tables. A rule is conditions (all must hold) and consequences (severity, forum
actions, whether and where to alert). When several rules fire for one event their
consequences merge: the harshest severity wins and the actions add up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bot.config import Config
from bot.config import read_toml as _read_toml
from bot.escalation import Policy, check_policies, parse_policy
from bot.model import Event, EventKind, Match, ReportKind, Severity
from bot.schedules import (
    Active,
    Schedule,
    active_at,
    check_schedules,
    parse_active,
    parse_schedule,
)
from bot.schema import Problems, Table

HASH_KINDS = ("sha256", "sha1", "md5", "pdq", "phash", "dhash")
PERCEPTUAL_KINDS = ("pdq", "phash", "dhash")
LIST_FORMATS = (
    "plain",
    "threatexchange_csv",
    "hma_csv",
    "stopncii_json",
    "tcap_json",
    "ncmec_xml",
)
# Default radii. PDQ 31 is Meta's published threshold. For the 64-bit hashes, 8 bits
# (12.5%) keeps recompression and resizing in and distinct pictures out on the
# generated corpus; see docs/hashing.md for the measurement.
DEFAULT_MAX_DISTANCE = {"pdq": 31, "phash": 8, "dhash": 8}
MAX_ALLOWED_DISTANCE = {"pdq": 64, "phash": 16, "dhash": 16}
FORUM_ACTIONS = ("hide", "delete", "suspend", "silence")
VERDICTS = ("allow", "hold", "block")
# Match tiers (bot.tiers, which imports this module): which a list lets through.
MATCH_TIERS = ("confident", "review")
# The list Vigil keeps itself from moderators' takedowns; always present.
LOCAL_BANK = "local-bank"


@dataclass(frozen=True, slots=True)
class ListSpec:
    """A hash list as declared in a rules file."""

    name: str
    file: Path
    format: str
    kinds: tuple[str, ...]
    max_distance: dict[str, int]
    severity: Severity
    category: str | None
    dihedral: bool = True
    allow: bool = False  # an allow-list of known false positives: overrides any match
    verdict: str = "block"  # what /v1/check answers for an upload on this list
    declared_in: str = ""
    illegal: bool = False  # illegal material: originals are kept as evidence (bot.evidence)
    # Alerts for its matches open with a warning not to look (default: as ``illegal``).
    distressing: bool = False
    # The match tiers this list reports (bot.tiers); a review match of a list without
    # "review" is dropped, so it neither alerts nor holds an upload.
    tiers: tuple[str, ...] = MATCH_TIERS


@dataclass(frozen=True, slots=True)
class Conditions:
    """When a rule applies; None means "any"."""

    events: tuple[EventKind, ...] = ()
    sources: tuple[str, ...] = ()
    lists: tuple[str, ...] | None = None  # "*" matches any list
    categories: tuple[str, ...] | None = None
    has_images: bool | None = None
    account_younger_than_s: float | None = None
    trust_level_below: int | None = None
    report_kinds: tuple[ReportKind, ...] | None = None
    text_pattern: re.Pattern[str] | None = None
    # (at least N, within seconds): N distinct members reported the post (bot.reports)
    distinct_reporters: tuple[int, float] | None = None
    lockdown: bool | None = None  # only while a lockdown is on (True) / off (False)


@dataclass(frozen=True, slots=True)
class Rule:
    """Conditions and what follows when they hold."""

    name: str
    when: Conditions
    severity: Severity = Severity.MEDIUM
    actions: tuple[str, ...] = ()
    alert: bool = True
    room: str | None = None
    description: str = ""
    declared_in: str = ""
    policy: str | None = None  # the escalation policy its alerts follow (bot.escalation)
    active: Active | None = None  # only inside this time window (bot.schedules)


@dataclass(frozen=True, slots=True)
class RaidSpec:
    """A sliding-window counter: ``at_least`` events matching ``when`` within ``within_s``
    is a raid; crossing it alerts and (unless ``lockdown_s`` is 0) starts a lockdown."""

    name: str
    when: Conditions
    at_least: int
    within_s: float
    lockdown_s: float | None = None  # None: [lockdown] default_duration; 0: alert only
    severity: Severity = Severity.CRITICAL
    room: str | None = None
    description: str = ""
    declared_in: str = ""


@dataclass(frozen=True, slots=True)
class Signals:
    """What the store knows around one event that rules may ask about (bot.raids)."""

    lockdown: bool = False
    # (window in seconds, distinct members who reported the event's post within it)
    reporters: tuple[tuple[float, int], ...] = ()

    def reporters_within(self, within_s: float) -> int:
        """Distinct reporters counted for a window of ``within_s`` (0 if not counted)."""
        return next((n for w, n in self.reporters if w == within_s), 0)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """All rules files, loaded."""

    lists: tuple[ListSpec, ...] = ()
    rules: tuple[Rule, ...] = ()
    files: tuple[Path, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    policies: tuple[Policy, ...] = ()
    raids: tuple[RaidSpec, ...] = ()

    def list(self, name: str) -> ListSpec | None:
        """The list called ``name``, if declared."""
        return next((s for s in self.lists if s.name == name), None)

    def schedule(self, name: str) -> Schedule | None:
        """The on-call schedule called ``name``, if declared."""
        return next((s for s in self.schedules if s.name == name), None)

    def policy(self, name: str) -> Policy | None:
        """The escalation policy called ``name``, if declared."""
        return next((p for p in self.policies if p.name == name), None)

    def reporter_windows(self) -> tuple[float, ...]:
        """Every ``distinct_reporters.within`` the rules ask about (bot.raids counts them)."""
        found = {r.when.distinct_reporters[1] for r in self.rules if r.when.distinct_reporters}
        return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class Decision:
    """The merged consequences of every rule that fired for one event."""

    rules: tuple[str, ...] = ()
    severity: Severity | None = None
    actions: tuple[str, ...] = ()
    alert: bool = False
    room: str | None = None
    matches: tuple[Match, ...] = field(default=())
    distressing: bool = False  # a match is on a list marked distressing: say so first

    @property
    def fired(self) -> bool:
        """Whether any rule applied."""
        return bool(self.rules)


def load_rules(rules_dir: Path, config: Config, problems: Problems) -> RuleSet:
    """Read every ``*.toml`` in ``rules_dir``; each problem names file and key."""
    if not rules_dir.is_dir():
        problems.add(str(rules_dir), "", "rules directory not found")
        return RuleSet()
    files = tuple(sorted(rules_dir.glob("*.toml")))
    lists: list[ListSpec] = []
    rules: list[Rule] = []
    schedules: list[Schedule] = []
    policies: list[Policy] = []
    raids: list[RaidSpec] = []
    for path in files:
        data = _read_toml(path, problems)
        if data is None:
            continue
        root = Table(data, str(path), "", problems)
        lists += [s for s in (_list(t, config) for t in root.tables("list")) if s]
        rules += [r for r in (_rule(t) for t in root.tables("rule")) if r]
        schedules += [s for s in (parse_schedule(t) for t in root.tables("schedule")) if s]
        policies += [p for p in (parse_policy(t) for t in root.tables("policy")) if p]
        raids += [r for r in (_raid(t) for t in root.tables("raid")) if r]
        root.finish()
    ruleset = RuleSet(
        tuple(lists), tuple(rules), files, tuple(schedules), tuple(policies), tuple(raids)
    )
    _cross_check(ruleset, config, problems)
    return ruleset


def _list(t: Table, config: Config) -> ListSpec | None:
    name = t.str("name")
    file = t.str("file")
    fmt = t.choice("format", LIST_FORMATS, "plain")
    kinds = t.str_list("kinds", HASH_KINDS, HASH_KINDS)
    distances: dict[str, int] = dict(DEFAULT_MAX_DISTANCE)
    dist_t = t.table("max_distance")
    if dist_t is not None:
        for kind in PERCEPTUAL_KINDS:
            value = dist_t.int(kind, None, 0, MAX_ALLOWED_DISTANCE[kind])
            if value is not None:
                distances[kind] = value
        dist_t.finish()
    severity = t.choice("severity", [s.value for s in Severity], "high")
    category = t.str("category", None)
    dihedral = t.bool("dihedral", True)
    allow = t.bool("allow", False)
    verdict = t.choice("verdict", VERDICTS, "allow" if allow else "block")
    illegal = t.bool("illegal", False)
    distressing = t.bool("distressing", bool(illegal))
    tiers = t.str_list("tiers", MATCH_TIERS, MATCH_TIERS)
    t.finish()
    if t.data.get("tiers") == []:
        t.error("tiers", 'empty: the list would match nothing; use ["confident"] at least')
    if not (name and file):
        return None
    if allow and illegal:
        t.error("illegal", "an allow-list clears images; it cannot also be a list of illegal ones")
    path = config.path.parent / file
    if not path.is_file():
        t.error("file", f"{path} not found; expected a hash list file")
    return ListSpec(
        name=name,
        file=path,
        format=fmt or "plain",
        kinds=kinds or HASH_KINDS,
        max_distance=distances,
        severity=Severity(severity or "high"),
        category=category,
        dihedral=bool(dihedral),
        allow=bool(allow),
        verdict=verdict or "block",
        declared_in=t.file,
        illegal=bool(illegal),
        distressing=bool(distressing),
        tiers=tuple(dict.fromkeys(tiers)) if tiers else MATCH_TIERS,
    )


def _rule(t: Table) -> Rule | None:
    name = t.str("name")
    description = t.str("description", "")
    when_t = t.table("when")
    when = _conditions(when_t) if when_t is not None else Conditions()
    severity = t.choice("severity", [s.value for s in Severity], "medium")
    actions = t.str_list("actions", (), FORUM_ACTIONS)
    alert = t.bool("alert", True)
    room = t.str("room", None)
    policy = t.str("policy", None, "the name of a [[policy]]")
    active = parse_active(t)
    t.finish()
    if not name:
        return None
    return Rule(
        name=name,
        when=when,
        severity=Severity(severity or "medium"),
        actions=actions or (),
        alert=bool(alert),
        room=room,
        description=description or "",
        declared_in=t.file,
        policy=policy,
        active=active,
    )


def _conditions(t: Table) -> Conditions:
    events = t.str_list("events", (), [k.value for k in EventKind])
    sources = t.str_list("sources", ())
    lists = t.str_list("lists", None)
    categories = t.str_list("categories", None)
    has_images = t.bool("has_images", None)
    younger = t.duration("account_younger_than", None)
    trust = t.int("trust_level_below", None, 0, 5)
    report_kinds = t.str_list("report_kinds", None, [k.value for k in ReportKind])
    pattern_text = t.str("text_matches", None, "a regular expression")
    pattern = None
    if pattern_text is not None:
        try:
            pattern = re.compile(pattern_text, re.IGNORECASE)
        except re.error as exc:
            t.error("text_matches", f"not a valid regular expression: {exc}")
    reporters = None
    reporters_t = t.table("distinct_reporters")
    if reporters_t is not None:
        at_least = reporters_t.int("at_least", None, 1, 10_000)
        within = reporters_t.duration("within", None)
        reporters_t.finish()
        if at_least is not None and within is not None:
            if within <= 0:
                reporters_t.error("within", "must be longer than 0s")
            reporters = (int(at_least), float(within))
    lockdown = t.bool("lockdown", None)
    t.finish()
    return Conditions(
        events=tuple(EventKind(e) for e in events or ()),
        sources=sources or (),
        lists=lists,
        categories=categories,
        has_images=has_images,
        account_younger_than_s=younger,
        trust_level_below=trust,
        report_kinds=tuple(ReportKind(k) for k in report_kinds) if report_kinds else None,
        text_pattern=pattern,
        distinct_reporters=reporters,
        lockdown=lockdown,
    )


def _raid(t: Table) -> RaidSpec | None:
    name = t.str("name")
    description = t.str("description", "")
    when_t = t.table("when", required=True)
    when = _conditions(when_t) if when_t is not None else Conditions()
    at_least = t.int("at_least", None, 2, 100_000)
    within = t.duration("within", None)
    lockdown = t.duration("lockdown", None)
    severity = t.choice("severity", [s.value for s in Severity], "critical")
    room = t.str("room", None)
    t.finish()
    if when.distinct_reporters is not None or when.lockdown is not None:
        t.error("when", "a raid counts events; distinct_reporters and lockdown are rule conditions")
    if within is not None and within <= 0:
        t.error("within", "must be longer than 0s")
    if not name or at_least is None or not within:
        if name and at_least is None:
            t.error("at_least", "missing; expected how many events within the window make a raid")
        if name and within is None:
            t.error("within", 'missing; expected the window, e.g. "10m"')
        return None
    return RaidSpec(
        name=name,
        when=when,
        at_least=int(at_least),
        within_s=float(within),
        lockdown_s=lockdown,
        severity=Severity(severity or "critical"),
        room=room,
        description=description or "",
        declared_in=t.file,
    )


def _cross_check(ruleset: RuleSet, config: Config, problems: Problems) -> None:
    seen: dict[str, str] = {}
    for spec in ruleset.lists:
        if spec.name in seen:
            problems.add(spec.declared_in, "list", f"list {spec.name!r} is declared twice")
        seen[spec.name] = spec.declared_in
    rule_names: set[str] = set()
    room_names = {r.name for r in config.rooms}
    source_names = {s.name for s in config.sources}
    for rule in ruleset.rules:
        where = f"rule {rule.name!r}"
        if rule.name in rule_names:
            problems.add(rule.declared_in, "rule", f"{where} is declared twice")
        rule_names.add(rule.name)
        for name in rule.when.lists or ():
            if name not in ("*", LOCAL_BANK) and name not in seen:
                problems.add(
                    rule.declared_in,
                    f"{where}.when.lists",
                    f"no list called {name!r}; declared lists: {', '.join(sorted(seen)) or 'none'}",
                )
        for name in rule.when.sources:
            if name not in source_names:
                problems.add(
                    rule.declared_in,
                    f"{where}.when.sources",
                    f"no source called {name!r} in bot.toml",
                )
        if rule.room is not None and rule.room not in room_names:
            problems.add(
                rule.declared_in,
                f"{where}.room",
                f"no room called {rule.room!r} in bot.toml; rooms: {', '.join(sorted(room_names)) or 'none'}",
            )
        if rule.alert and rule.room is None and not config.rooms:
            problems.add(
                rule.declared_in, f"{where}.alert", "the rule alerts but bot.toml has no [[room]]"
            )
        if rule.policy is not None and ruleset.policy(rule.policy) is None:
            known = ", ".join(sorted(p.name for p in ruleset.policies)) or "none"
            problems.add(
                rule.declared_in,
                f"{where}.policy",
                f"no policy called {rule.policy!r}; policies: {known}",
            )
        if rule.active and rule.active.schedule and not ruleset.schedule(rule.active.schedule):
            known = ", ".join(sorted(s.name for s in ruleset.schedules)) or "none"
            problems.add(
                rule.declared_in,
                f"{where}.active",
                f"no schedule called {rule.active.schedule!r}; schedules: {known}",
            )
    _check_raids(ruleset, config, seen, problems)
    check_schedules(ruleset.schedules, config, problems)
    check_policies(ruleset.policies, ruleset.schedules, config, problems)
    _check_tiers(ruleset, problems)
    env = config.evidence.key_env
    for spec in ruleset.lists:
        if spec.illegal and not config.secrets.get(env):
            problems.add(
                spec.declared_in,
                f"list {spec.name!r}.illegal",
                f"the evidence key ({env}) is not set: originals of images matched on this"
                " list will NOT be kept as evidence; see docs/evidence.md",
                warning=True,
            )


def _check_tiers(ruleset: RuleSet, problems: Problems) -> None:
    """A list that reports only review-tier matches can never act or block: say so."""
    for spec in ruleset.lists:
        if "confident" in spec.tiers:
            continue
        where = f"list {spec.name!r}.tiers"
        if spec.verdict == "block" and not spec.allow:
            problems.add(
                spec.declared_in,
                where,
                'review-tier matches never block an upload: verdict "block" acts as "hold"',
                warning=True,
            )
        for rule in ruleset.rules:
            if rule.actions and spec.name in (rule.when.lists or ()):
                problems.add(
                    rule.declared_in,
                    f"rule {rule.name!r}.actions",
                    f"list {spec.name!r} reports only review-tier matches, which never act by"
                    " themselves: this rule will alert for it but not act",
                    warning=True,
                )


def _check_raids(
    ruleset: RuleSet, config: Config, lists: dict[str, str], problems: Problems
) -> None:
    names: set[str] = set()
    room_names = {r.name for r in config.rooms}
    for raid in ruleset.raids:
        where = f"raid {raid.name!r}"
        if raid.name in names:
            problems.add(raid.declared_in, "raid", f"{where} is declared twice")
        names.add(raid.name)
        for name in raid.when.lists or ():
            if name not in ("*", LOCAL_BANK) and name not in lists:
                problems.add(raid.declared_in, f"{where}.when.lists", f"no list called {name!r}")
        if raid.room is not None and raid.room not in room_names:
            known = ", ".join(sorted(room_names)) or "none"
            problems.add(
                raid.declared_in,
                f"{where}.room",
                f"no room called {raid.room!r} in bot.toml; rooms: {known}",
            )
        if raid.room is None and not config.rooms:
            problems.add(raid.declared_in, where, "a raid alerts but bot.toml has no [[room]]")
        if not raid.when.events:
            problems.add(
                raid.declared_in,
                f"{where}.when.events",
                "a raid without events counts every event (reports, edits, new accounts);"
                ' name them, e.g. events = ["post_created"]',
                warning=True,
            )


def evaluate(
    ruleset: RuleSet,
    event: Event,
    matches: Sequence[Match],
    now: datetime,
    signals: Signals | None = None,
) -> Decision:
    """Every rule that applies to ``event`` (with its hash ``matches``), merged.

    ``signals``: lockdown and report counts (bot.raids); without them, rules that ask
    for a lockdown or for distinct reporters do not apply.
    """
    fired: list[Rule] = [
        r
        for r in ruleset.rules
        if (r.active is None or active_at(r.active, now, ruleset.schedules))
        and applies(r.when, event, matches, now, signals)
    ]
    distressing = any(
        spec.distressing for m in matches if (spec := ruleset.list(m.list)) is not None
    )
    if not fired:
        return Decision(matches=tuple(matches), distressing=distressing)
    severity = max((r.severity for r in fired), key=lambda s: s.rank)
    actions: list[str] = []
    for rule in fired:
        actions += [a for a in rule.actions if a not in actions]
    alerting = [r for r in fired if r.alert]
    # The room of the most severe alerting rule; the first such rule on a tie.
    room = None
    if alerting:
        top = max(alerting, key=lambda r: r.severity.rank)
        room = top.room
    return Decision(
        rules=tuple(r.name for r in fired),
        severity=severity,
        actions=tuple(actions),
        alert=bool(alerting),
        room=room,
        matches=tuple(matches),
        distressing=distressing,
    )


def applies(
    c: Conditions,
    event: Event,
    matches: Sequence[Match],
    now: datetime,
    signals: Signals | None = None,
) -> bool:
    """Whether every condition of ``c`` holds for the event (rules and raids)."""
    if c.lockdown is not None and (signals is not None and signals.lockdown) != c.lockdown:
        return False
    if c.distinct_reporters is not None:
        at_least, within = c.distinct_reporters
        if signals is None or signals.reporters_within(within) < at_least:
            return False
    if c.events and event.kind not in c.events:
        return False
    if c.sources and event.source not in c.sources:
        return False
    if c.lists is not None:
        wanted = set(c.lists)
        if not any("*" in wanted or m.list in wanted for m in matches):
            return False
    if c.categories is not None and not any(m.category in c.categories for m in matches):
        return False
    post = event.post
    if c.has_images is not None and bool(post and post.media) != c.has_images:
        return False
    author = event.author
    if c.account_younger_than_s is not None:
        if author is None or author.created_at is None:
            return False
        if (now - author.created_at).total_seconds() >= c.account_younger_than_s:
            return False
    if c.trust_level_below is not None:
        if author is None or author.trust_level is None:
            return False
        if author.trust_level >= c.trust_level_below:
            return False
    if c.report_kinds is not None and (
        event.report is None or event.report.kind not in c.report_kinds
    ):
        return False
    return not (c.text_pattern is not None and not (post and c.text_pattern.search(post.text)))
