"""``bot.toml``: the service's settings, sources, chat rooms and staff roster.

Parsed once into frozen dataclasses. Secrets never live in the TOML: a setting
ending in ``_env`` names an environment variable (also read from a ``.env`` file
beside the config) that holds the secret. Unknown keys are errors.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

from bot.schedules import Active, parse_timezone, parse_window
from bot.schema import Problems, Table


class Role(StrEnum):
    """What a staff member may do; each role includes the ones before it."""

    VOLUNTEER = "volunteer"
    MODERATOR = "moderator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Order of privilege: volunteer < moderator < admin."""
        return list(Role).index(self)


class SourceKind(StrEnum):
    """The webhook dialects Vigil speaks."""

    DISCOURSE = "discourse"
    GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Process-wide settings: where to listen, how to log, where data lives."""

    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "text"
    data_dir: Path = Path("data")
    rules_dir: Path = Path("rules")
    dry_run: bool = False
    check_token_env: str | None = None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """The SQLite database."""

    path: Path = Path("data/vigil.db")
    synchronous: str = "normal"  # normal: survives a killed process; full: power loss too


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Webhook reception."""

    max_body_bytes: int = 1024 * 1024
    commit_max_batch: int = 256


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The workers that process the inbox."""

    workers: int = 2
    claim_batch: int = 16
    max_attempts: int = 6
    retry_base_s: float = 2.0
    retry_max_s: float = 600.0
    lease_s: float = 300.0


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Limits on fetching and decoding images."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """How alerts are grouped and how long a confirmation stays open."""

    group_window_s: float = 600.0  # later events of the same author join an open alert
    confirm_window_s: float = 120.0  # a 🔨 (suspend) must be confirmed within this


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """Personal data (IP addresses, emails) from forum events: kept or not, how long."""

    keep_personal_data: bool = True  # False: dropped at the webhook, stored nowhere
    personal_data_days: int = 30  # deleted this long after the account was last seen with it


@dataclass(frozen=True, slots=True)
class EvidenceConfig:
    """Originals of images matched on lists of illegal material, encrypted at rest."""

    directory: Path = Path("data/evidence")
    key_env: str = "VIGIL_EVIDENCE_KEY"  # 32 bytes, base64 or hex; unset: evidence is off
    retention_days: int = 365  # at least 90; US providers must keep reports one year
    categories: tuple[str, ...] = ()  # match categories kept besides lists with illegal = true


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Vigil's own health: what makes /healthz fail, where system alerts go, the heartbeat."""

    alert_room: str | None = None  # system alerts (a silent feed); default: the first room
    outbox_backlog_max: int = 100  # more chat messages waiting than this: /healthz fails
    chat_connect_grace_s: float = 120.0  # a chat still connecting this long after start is down
    heartbeat_url_env: str | None = None  # env var with the URL to call; unset: no heartbeat
    heartbeat_interval_s: float = 60.0
    heartbeat_method: str = "GET"
    heartbeat_when: str = "healthy"  # healthy: only while /healthz is 200; always: while alive


@dataclass(frozen=True, slots=True)
class LockdownConfig:
    """Lockdowns (bot.raids): how long by default, how often to remind, where to say so."""

    default_duration_s: float = 7200.0  # `!lockdown on` without a duration, raids without one
    max_duration_s: float = 86400.0
    reminder_every_s: float = 3600.0
    room: str | None = None  # notices and reminders; default: the first [[room]]


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One forum that sends webhooks."""

    name: str
    kind: SourceKind
    base_url: str
    webhook_secret_env: str
    media_hosts: tuple[str, ...] = ()
    api_key_env: str | None = None
    api_username: str | None = None
    callback_url: str | None = None
    callback_secret_env: str | None = None
    # Forum site settings set while a lockdown is on, and the values put back after it.
    lockdown_settings: tuple[tuple[str, str], ...] = ()
    normal_settings: tuple[tuple[str, str], ...] = ()
    silence_alarm_s: float | None = None  # no webhook this long (in busy hours): an alert
    busy_hours: Active | None = None  # when silence counts; None: round the clock


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """A staff room, by Vigil's name for it, in each chat system."""

    name: str
    matrix: str | None = None
    discord: str | None = None


@dataclass(frozen=True, slots=True)
class MatrixConfig:
    """The bot's Matrix account."""

    homeserver: str
    user_id: str
    access_token_env: str | None = None
    password_env: str | None = None
    device_name: str = "vigil"


@dataclass(frozen=True, slots=True)
class DiscordConfig:
    """The bot's Discord application."""

    token_env: str
    guild_id: str
    message_content: bool = False  # privileged intent: !commands typed in staff channels
    mention_role: str | None = None  # a role pinged when a page calls the whole room


@dataclass(frozen=True, slots=True)
class StaffMember:
    """A person on the roster: who they are in each chat and what they may do."""

    name: str
    role: Role
    timezone: str
    matrix: str | None = None
    discord: str | None = None
    notify: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """Everything in ``bot.toml``, resolved."""

    path: Path
    service: ServiceConfig = field(default_factory=ServiceConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    lockdown: LockdownConfig = field(default_factory=LockdownConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    sources: tuple[SourceConfig, ...] = ()
    rooms: tuple[RoomConfig, ...] = ()
    matrix: MatrixConfig | None = None
    discord: DiscordConfig | None = None
    staff: tuple[StaffMember, ...] = ()
    secrets: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def source(self, name: str) -> SourceConfig | None:
        """The source called ``name``, if configured."""
        return next((s for s in self.sources if s.name == name), None)

    def room(self, name: str) -> RoomConfig | None:
        """The room called ``name``, if configured."""
        return next((r for r in self.rooms if r.name == name), None)

    def secret(self, env_name: str | None) -> str | None:
        """The value of a secret's environment variable (or .env entry)."""
        return self.secrets.get(env_name) if env_name else None

    def staff_by_chat_id(self, chat: str, chat_id: str) -> StaffMember | None:
        """The roster entry whose ``chat`` identity (matrix, discord) is ``chat_id``."""
        for person in self.staff:
            if getattr(person, chat, None) == chat_id:
                return person
        return None

    def person(self, name: str) -> StaffMember | None:
        """The roster entry called ``name`` (case-insensitive)."""
        folded = name.casefold()
        return next((p for p in self.staff if p.name.casefold() == folded), None)


NOTIFY_CHANNELS = ("matrix_dm", "matrix_room", "discord_dm", "discord_channel")
TOP_LEVEL = (
    "service",
    "store",
    "ingest",
    "pipeline",
    "media",
    "alerts",
    "privacy",
    "evidence",
    "lockdown",
    "health",
    "source",
    "room",
    "matrix",
    "discord",
    "staff",
)


def read_toml(path: Path, problems: Problems) -> dict | None:
    """Parse a TOML file, recording a problem (with line and column) if it is not TOML."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.add(str(path), "", "file not found")
    except tomllib.TOMLDecodeError as exc:
        problems.add(str(path), "", f"not valid TOML: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(str(path), "", f"cannot read: {exc}")
    return None


def load_secrets(config_dir: Path) -> dict[str, str]:
    """Environment variables, with a ``.env`` beside the config filling the gaps."""
    values: dict[str, str] = {}
    env_file = config_dir / ".env"
    if env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    return values


def load_config(path: Path, problems: Problems) -> Config | None:
    """Parse ``bot.toml`` at ``path``; every problem goes to ``problems``."""
    data = read_toml(path, problems)
    if data is None:
        return None
    file = str(path)
    root = Table(data, file, "", problems)
    base = path.parent
    secrets = load_secrets(base)

    service = _service(root.table("service"), base)
    store = _store(root.table("store"), base, service)
    ingest = _ingest(root.table("ingest"))
    pipeline = _pipeline(root.table("pipeline"))
    media = _media(root.table("media"))
    alerts = _alerts(root.table("alerts"))
    privacy = _privacy(root.table("privacy"))
    evidence = _evidence(root.table("evidence"), base, service)
    lockdown = _lockdown(root.table("lockdown"))
    health = _health(root.table("health"))
    sources = tuple(s for s in (_source(t) for t in root.tables("source")) if s)
    rooms = tuple(r for r in (_room(t) for t in root.tables("room")) if r)
    matrix_t = root.table("matrix")
    matrix = _matrix(matrix_t) if matrix_t else None
    discord_t = root.table("discord")
    discord = _discord(discord_t) if discord_t else None
    staff = tuple(p for p in (_staff(t) for t in root.tables("staff")) if p)
    root.finish()

    config = Config(
        path=path,
        service=service,
        store=store,
        ingest=ingest,
        pipeline=pipeline,
        media=media,
        alerts=alerts,
        privacy=privacy,
        evidence=evidence,
        lockdown=lockdown,
        health=health,
        sources=sources,
        rooms=rooms,
        matrix=matrix,
        discord=discord,
        staff=staff,
        secrets=secrets,
    )
    _cross_check(config, file, problems)
    return config


def _service(t: Table | None, base: Path) -> ServiceConfig:
    if t is None:
        return ServiceConfig(data_dir=base / "data", rules_dir=base / "rules")
    cfg = ServiceConfig(
        host=t.str("host", "127.0.0.1"),
        port=t.int("port", 8080, 0, 65535),
        log_level=t.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        log_format=t.choice("log_format", ("text", "json"), "text"),
        data_dir=base / t.str("data_dir", "data"),
        rules_dir=base / t.str("rules_dir", "rules"),
        dry_run=t.bool("dry_run", False),
        check_token_env=t.str("check_token_env", None),
    )
    t.finish()
    return cfg


def _store(t: Table | None, base: Path, service: ServiceConfig) -> StoreConfig:
    default_path = service.data_dir / "vigil.db"
    if t is None:
        return StoreConfig(path=default_path)
    raw_path = t.str("path", None)
    cfg = StoreConfig(
        path=base / raw_path if raw_path else default_path,
        synchronous=t.choice("synchronous", ("normal", "full"), "normal"),
    )
    t.finish()
    return cfg


def _ingest(t: Table | None) -> IngestConfig:
    if t is None:
        return IngestConfig()
    cfg = IngestConfig(
        max_body_bytes=t.int("max_body_bytes", 1024 * 1024, 1024, 64 * 1024 * 1024),
        commit_max_batch=t.int("commit_max_batch", 256, 1, 10_000),
    )
    t.finish()
    return cfg


def _pipeline(t: Table | None) -> PipelineConfig:
    if t is None:
        return PipelineConfig()
    cfg = PipelineConfig(
        workers=t.int("workers", 2, 1, 64),
        claim_batch=t.int("claim_batch", 16, 1, 1000),
        max_attempts=t.int("max_attempts", 6, 1, 100),
        retry_base_s=t.duration("retry_base", "2s"),
        retry_max_s=t.duration("retry_max", "10m"),
        lease_s=t.duration("lease", "5m"),
    )
    t.finish()
    return cfg


def _media(t: Table | None) -> MediaConfig:
    if t is None:
        return MediaConfig()
    cfg = MediaConfig(
        max_bytes=t.int("max_bytes", 20 * 1024 * 1024, 1024, 1024**3),
        max_pixels=t.int("max_pixels", 50_000_000, 10_000, 1_000_000_000),
        connect_timeout_s=t.duration("connect_timeout", "5s"),
        read_timeout_s=t.duration("read_timeout", "10s"),
        total_timeout_s=t.duration("total_timeout", "30s"),
    )
    t.finish()
    return cfg


def _alerts(t: Table | None) -> AlertsConfig:
    if t is None:
        return AlertsConfig()
    cfg = AlertsConfig(
        group_window_s=t.duration("group_window", "10m"),
        confirm_window_s=t.duration("confirm_window", "2m"),
    )
    t.finish()
    return cfg


def _privacy(t: Table | None) -> PrivacyConfig:
    if t is None:
        return PrivacyConfig()
    cfg = PrivacyConfig(
        keep_personal_data=t.bool("keep_personal_data", True),
        personal_data_days=t.int("personal_data_days", 30, 1, 3650),
    )
    t.finish()
    return cfg


# Below this, evidence could be gone before a report is even answered (the US asked
# 90 days until 2024 and one year since).
MIN_EVIDENCE_DAYS = 90


def _evidence(t: Table | None, base: Path, service: ServiceConfig) -> EvidenceConfig:
    default_dir = service.data_dir / "evidence"
    if t is None:
        return EvidenceConfig(directory=default_dir)
    raw_dir = t.str("directory", None)
    cfg = EvidenceConfig(
        directory=base / raw_dir if raw_dir else default_dir,
        key_env=t.str("key_env", "VIGIL_EVIDENCE_KEY"),
        retention_days=t.int("retention_days", 365, MIN_EVIDENCE_DAYS, 36500),
        categories=t.str_list("categories", ()),
    )
    t.finish()
    return cfg


def _health(t: Table | None) -> HealthConfig:
    if t is None:
        return HealthConfig()
    cfg = HealthConfig(
        alert_room=t.str("alert_room", None, "the name of a [[room]]"),
        outbox_backlog_max=t.int("outbox_backlog_max", 100, 1, 1_000_000),
        chat_connect_grace_s=t.duration("chat_connect_grace", "2m"),
        heartbeat_url_env=t.str("heartbeat_url_env", None),
        heartbeat_interval_s=t.duration("heartbeat_interval", "60s"),
        heartbeat_method=t.choice("heartbeat_method", ("GET", "POST"), "GET"),
        heartbeat_when=t.choice("heartbeat_when", ("healthy", "always"), "healthy"),
    )
    t.finish()
    if cfg.heartbeat_interval_s < 5:
        t.error("heartbeat_interval", "at least 5s; a heartbeat is not a load test")
    return cfg


def _busy_hours(t: Table) -> Active | None:
    """A source's ``busy_hours = { days, from, to, timezone }`` (days optional)."""
    sub = t.table("busy_hours")
    if sub is None:
        return None
    window = parse_window(sub)
    tz = parse_timezone(sub)
    sub.finish()
    if window is None or tz is None:
        return None
    return Active((window,), tz)


def _check_health(config: Config, file: str, problems: Problems) -> list[tuple[str, str]]:
    """[health] and the sources' silence alarms; returns the secrets the heartbeat needs."""
    health = config.health
    if health.alert_room is not None and config.room(health.alert_room) is None:
        rooms = ", ".join(r.name for r in config.rooms) or "none"
        problems.add(
            file, "health.alert_room", f"no room called {health.alert_room!r}; rooms: {rooms}"
        )
    for i, s in enumerate(config.sources):
        if s.busy_hours is not None and s.silence_alarm_s is None:
            problems.add(
                file,
                f"source[{i}].busy_hours",
                'busy_hours does nothing without silence_alarm (e.g. silence_alarm = "30m")',
                warning=True,
            )
    url = config.secret(health.heartbeat_url_env)
    if url and not url.startswith(("http://", "https://")):
        # Never print the value: a heartbeat URL usually carries its own token.
        problems.add(
            file,
            "health.heartbeat_url_env",
            f"the environment variable {health.heartbeat_url_env} is not an http(s) URL",
        )
    return [("health.heartbeat_url_env", health.heartbeat_url_env or "")]


def _lockdown(t: Table | None) -> LockdownConfig:
    if t is None:
        return LockdownConfig()
    cfg = LockdownConfig(
        default_duration_s=t.duration("default_duration", "2h"),
        max_duration_s=t.duration("max_duration", "24h"),
        reminder_every_s=t.duration("reminder_every", "1h"),
        room=t.str("room", None, "the name of a [[room]]"),
    )
    if cfg.reminder_every_s < 60:
        t.error("reminder_every", "at least 1m: a reminder every few seconds drowns the room")
    if cfg.default_duration_s <= 0 or cfg.default_duration_s > cfg.max_duration_s:
        t.error("default_duration", "must be longer than 0s and at most max_duration")
    t.finish()
    return cfg


def _settings(t: Table, name: str) -> tuple[tuple[str, str], ...]:
    """A table of forum site settings: name = value (strings, numbers or booleans)."""
    sub = t.table(name)
    if sub is None:
        return ()
    out: list[tuple[str, str]] = []
    for key, value in sub.data.items():
        sub.has(key)
        if isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        elif isinstance(value, str | int | float):
            out.append((key, str(value)))
        else:
            sub.error(key, "expected a string, a number or a boolean")
    sub.finish()
    return tuple(out)


def _url(t: Table, name: str, default: object = None) -> str | None:
    def check(v: str) -> str | None:
        return None if v.startswith(("http://", "https://")) else f"{v!r} is not an http(s) URL"

    value = t.value(name, str, "an http:// or https:// URL", default, check)
    return value.rstrip("/") if isinstance(value, str) else None


def _source(t: Table) -> SourceConfig | None:
    name = t.str("name")
    kind = t.choice("kind", [k.value for k in SourceKind])
    base_url = _url(t, "base_url") if kind != SourceKind.GENERIC else _url(t, "base_url", "")
    secret_env = t.str("webhook_secret_env")
    media_hosts = t.str_list("media_hosts", ())
    api_key_env = t.str("api_key_env", None)
    api_username = t.str("api_username", None)
    callback_url = _url(t, "callback_url", None)
    callback_secret_env = t.str("callback_secret_env", None)
    lockdown_settings = _settings(t, "lockdown_settings")
    normal_settings = _settings(t, "normal_settings")
    if lockdown_settings and kind != SourceKind.DISCOURSE:
        t.error("lockdown_settings", "only Discourse sources have site settings Vigil can change")
    missing = sorted({k for k, _ in lockdown_settings} - {k for k, _ in normal_settings})
    if missing:
        t.error(
            "normal_settings",
            f"missing {', '.join(missing)}: Vigil must know what to put back when a lockdown ends",
        )
    silence_alarm_s = t.duration("silence_alarm", None)
    busy_hours = _busy_hours(t)
    t.finish()
    if not (name and kind and secret_env) or base_url is None:
        return None
    if kind == SourceKind.DISCOURSE and bool(api_key_env) != bool(api_username):
        t.error("api_username", "api_key_env and api_username go together")
    return SourceConfig(
        name=name,
        kind=SourceKind(kind),
        base_url=base_url,
        webhook_secret_env=secret_env,
        media_hosts=media_hosts,
        api_key_env=api_key_env,
        api_username=api_username,
        callback_url=callback_url,
        callback_secret_env=callback_secret_env,
        lockdown_settings=lockdown_settings,
        normal_settings=normal_settings,
        silence_alarm_s=silence_alarm_s or None,
        busy_hours=busy_hours,
    )


def _room(t: Table) -> RoomConfig | None:
    name = t.str("name")
    matrix = t.value(
        "matrix",
        str,
        "a Matrix room id (!id:server) or alias (#name:server)",
        None,
        # Room version 12 ids are "!" and a hash, without ":server"; aliases keep theirs.
        lambda v: (
            None
            if (v[:1] == "!" and len(v) > 1) or (v[:1] == "#" and ":" in v)
            else f"{v!r} is not a room id or alias"
        ),
    )
    discord = _snowflake(t, "discord", "a Discord channel id")
    t.finish()
    if not name:
        return None
    if not matrix and not discord:
        t.error("matrix", "a room needs a Matrix room, a Discord channel, or both")
    return RoomConfig(name=name, matrix=matrix, discord=discord)


def _snowflake(t: Table, name: str, what: str) -> str | None:
    # Discord ids exceed what some tools keep exact as numbers; accept a string or an int.
    raw = t.value(name, (str, int), f"{what} (digits, as a string)", None)
    if raw is None:
        return None
    text = str(raw)
    if not text.isdigit():
        t.error(name, f"{text!r} is not {what} (digits only)")
        return None
    return text


def _matrix(t: Table) -> MatrixConfig | None:
    homeserver = _url(t, "homeserver")
    user_id = t.value(
        "user_id",
        str,
        "a Matrix user id like @vigil:example.org",
        check=lambda v: None if v.startswith("@") and ":" in v else f"{v!r} is not a user id",
    )
    token_env = t.str("access_token_env", None)
    password_env = t.str("password_env", None)
    device = t.str("device_name", "vigil")
    t.finish()
    if not token_env and not password_env:
        t.error("access_token_env", "set access_token_env or password_env")
    if not (homeserver and user_id):
        return None
    return MatrixConfig(homeserver, user_id, token_env, password_env, device)


def _discord(t: Table) -> DiscordConfig | None:
    token_env = t.str("token_env")
    guild = _snowflake(t, "guild_id", "a Discord server (guild) id")
    if not t.has("guild_id"):
        t.error("guild_id", "missing; expected a Discord server (guild) id")
    message_content = t.bool("message_content", False)
    mention_role = _snowflake(t, "mention_role", "a Discord role id")
    t.finish()
    if not (token_env and guild):
        return None
    return DiscordConfig(token_env, guild, message_content, mention_role)


def _staff(t: Table) -> StaffMember | None:
    name = t.str("name")
    role = t.choice("role", [r.value for r in Role])
    tz = t.value("timezone", str, 'an IANA time zone like "Europe/London"', "UTC")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            t.error("timezone", f'{tz!r} is not an IANA time zone; expected e.g. "Europe/London"')
    matrix = t.value(
        "matrix",
        str,
        "a Matrix user id like @alice:example.org",
        None,
        lambda v: None if v.startswith("@") and ":" in v else f"{v!r} is not a user id",
    )
    discord = _snowflake(t, "discord", "a Discord user id")
    notify = t.str_list("notify", (), NOTIFY_CHANNELS)
    t.finish()
    if not (name and role):
        return None
    return StaffMember(name, Role(role), tz or "UTC", matrix, discord, notify)


def _cross_check(config: Config, file: str, problems: Problems) -> None:
    """Checks that need more than one table: duplicates, references, secrets."""
    _unique(file, "source", [s.name for s in config.sources], problems)
    _unique(file, "room", [r.name for r in config.rooms], problems)
    _unique(file, "staff", [p.name.casefold() for p in config.staff], problems)
    for chat in ("matrix", "discord"):
        ids = [getattr(p, chat) for p in config.staff if getattr(p, chat)]
        _unique(file, f"staff.{chat}", ids, problems)
    if any(r.matrix for r in config.rooms) and config.matrix is None:
        problems.add(file, "matrix", "rooms name Matrix rooms but there is no [matrix] table")
    if any(r.discord for r in config.rooms) and config.discord is None:
        problems.add(file, "discord", "rooms name Discord channels but there is no [discord] table")
    for i, person in enumerate(config.staff):
        if not person.matrix and not person.discord:
            problems.add(
                file,
                f"staff[{i}]",
                f"{person.name} has no chat identity (matrix or discord): they could never act",
                warning=True,
            )
    needed = [
        (f"source[{i}].webhook_secret_env", s.webhook_secret_env)
        for i, s in enumerate(config.sources)
    ]
    needed += [(f"source[{i}].api_key_env", s.api_key_env) for i, s in enumerate(config.sources)]
    if config.matrix:
        needed.append(("matrix.access_token_env", config.matrix.access_token_env))
        needed.append(("matrix.password_env", config.matrix.password_env))
    if config.discord:
        needed.append(("discord.token_env", config.discord.token_env))
    _check_evidence_key(config, file, problems)
    if config.lockdown.room is not None and config.room(config.lockdown.room) is None:
        problems.add(file, "lockdown.room", f"no [[room]] called {config.lockdown.room!r}")
    needed += _check_health(config, file, problems)
    for key, env in needed:
        if env and not config.secrets.get(env):
            problems.add(
                file,
                key,
                f"the environment variable {env} is not set (nor in .env); `vigil run` needs it",
                warning=True,
            )


def _check_evidence_key(config: Config, file: str, problems: Problems) -> None:
    """A malformed evidence key is an error; a missing one turns evidence off (a warning
    here when [evidence] asks for categories; the rules check warns for illegal lists)."""
    from bot.evidence import parse_key  # lazy: bot.evidence imports the rules

    env = config.evidence.key_env
    value = config.secrets.get(env)
    if value:
        try:
            parse_key(value)
        except ValueError as exc:
            problems.add(file, "evidence.key_env", f"the environment variable {env}: {exc}")
    elif config.evidence.categories:
        problems.add(
            file,
            "evidence.key_env",
            f"the environment variable {env} is not set (nor in .env): evidence of illegal"
            " images will NOT be kept; set it to 32 random bytes in base64"
            " (openssl rand -base64 32)",
            warning=True,
        )


def _unique(file: str, key: str, values: list[str], problems: Problems) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            problems.add(file, key, f"{value!r} appears more than once")
        seen.add(value)


def missing_secrets(config: Config) -> list[str]:
    """Environment variables the running service needs and does not have."""
    wanted = [s.webhook_secret_env for s in config.sources]
    wanted += [s.api_key_env for s in config.sources if s.api_key_env]
    wanted += [s.callback_secret_env for s in config.sources if s.callback_secret_env]
    if config.matrix:
        wanted.append(config.matrix.access_token_env or config.matrix.password_env or "")
    if config.discord:
        wanted.append(config.discord.token_env)
    if config.service.check_token_env:
        wanted.append(config.service.check_token_env)
    return [env for env in wanted if env and not config.secrets.get(env)]
