"""The admin guide documents every key of bot.toml and of the rules files.

The list of keys comes from the code, not from a list kept by hand: every
:class:`bot.schema.Table` created while loading a maximal bot.toml and rules file is
recorded, and every key name the loaders asked a table for is a key of the schema.
A key added to a loader and not to ``docs/admin-guide.md`` fails this test; so does a
key the guide documents that no loader reads any more.

The guide's reference sections are headings that end in the table's TOML name in
backticks (``### Forums: `[[source]]` ``, ``#### `[[source]].busy_hours` ``); each key
is a table row starting with ``| `key` |`` right under it.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bot import schema
from bot.config import load_config
from bot.rules import load_rules
from bot.schema import Problems, Table

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "admin-guide.md"

# Every table and every key present, so that every loader, and every sub-table, runs.
# Values need not make sense together: only which keys are read matters here.
MAXIMAL_BOT_TOML = textwrap.dedent(
    """
    [service]
    host = "127.0.0.1"
    port = 8080
    log_level = "info"
    log_format = "text"
    data_dir = "data"
    rules_dir = "rules"
    dry_run = false
    check_token_env = "VIGIL_CHECK_TOKEN"

    [store]
    path = "data/vigil.db"
    synchronous = "normal"

    [ingest]
    max_body_bytes = 1048576
    commit_max_batch = 256

    [pipeline]
    workers = 2
    claim_batch = 16
    max_attempts = 6
    retry_base = "2s"
    retry_max = "10m"
    lease = "5m"

    [media]
    max_bytes = 20971520
    max_pixels = 50000000
    connect_timeout = "5s"
    read_timeout = "10s"
    total_timeout = "30s"

    [alerts]
    group_window = "10m"
    confirm_window = "2m"

    [privacy]
    keep_personal_data = true
    personal_data_days = 30

    [evidence]
    directory = "data/evidence"
    key_env = "VIGIL_EVIDENCE_KEY"
    retention_days = 365
    categories = ["csam"]

    [lockdown]
    default_duration = "2h"
    max_duration = "24h"
    reminder_every = "1h"
    room = "staff"

    [health]
    alert_room = "staff"
    outbox_backlog_max = 100
    chat_connect_grace = "2m"
    heartbeat_url_env = "VIGIL_HEARTBEAT_URL"
    heartbeat_interval = "60s"
    heartbeat_method = "GET"
    heartbeat_when = "healthy"

    [[source]]
    name = "forum"
    kind = "discourse"
    base_url = "https://forum.example.org"
    webhook_secret_env = "VIGIL_FORUM_WEBHOOK_SECRET"
    media_hosts = ["forum.example.org"]
    api_key_env = "VIGIL_DISCOURSE_API_KEY"
    api_username = "vigil"
    callback_url = "https://forum.example.org/vigil/actions"
    callback_secret_env = "VIGIL_FORUM_CALLBACK_SECRET"
    # Free-form tables of forum site settings: their keys are Discourse's, not Vigil's.
    lockdown_settings = {}
    normal_settings = {}
    silence_alarm = "30m"
    busy_hours = { days = ["daily"], from = "07:00", to = "23:00", timezone = "Europe/London" }

    [matrix]
    homeserver = "https://matrix.example.org"
    user_id = "@vigil:example.org"
    access_token_env = "VIGIL_MATRIX_ACCESS_TOKEN"
    password_env = "VIGIL_MATRIX_PASSWORD"
    device_name = "vigil"

    [discord]
    token_env = "VIGIL_DISCORD_TOKEN"
    guild_id = "123456789012345678"
    message_content = false
    mention_role = "123456789012345670"

    [[room]]
    name = "staff"
    matrix = "#staff:example.org"
    discord = "123456789012345678"

    [[staff]]
    name = "Alice"
    role = "admin"
    timezone = "Europe/London"
    matrix = "@alice:example.org"
    discord = "123456789012345679"
    notify = ["matrix_dm"]
    """
)

MAXIMAL_RULES = textwrap.dedent(
    """
    [[list]]
    name = "known"
    file = "known.txt"
    format = "plain"
    kinds = ["sha256", "pdq"]
    max_distance = { pdq = 31, phash = 8, dhash = 8 }
    severity = "critical"
    category = "csam"
    dihedral = true
    allow = false
    verdict = "block"
    illegal = true
    distressing = true
    tiers = ["confident", "review"]

    [[rule]]
    name = "known-image"
    description = "a rule"
    when = { events = ["post_created"], sources = ["forum"], lists = ["known"], categories = ["csam"], has_images = true, account_younger_than = "7d", trust_level_below = 2, report_kinds = ["flagged_post"], text_matches = "x", distinct_reporters = { at_least = 3, within = "1h" }, lockdown = false }
    active = { days = ["daily"], from = "22:00", to = "07:00", timezone = "Europe/London" }
    severity = "critical"
    actions = ["hide"]
    alert = true
    room = "staff"
    policy = "critical"

    [[schedule]]
    name = "nights"
    description = "a schedule"
    timezone = "Europe/London"

      [[schedule.layer]]
      name = "night watch"
      people = ["Alice"]
      shift = "1w"
      start = "2025-01-06"
      handoff = "22:00"
      handoff_day = "monday"
      windows = [{ days = ["daily"], from = "22:00", to = "07:00" }]

      [[schedule.override]]
      person = "Alice"
      replaces = "Alice"
      from = "2025-12-24T18:00"
      to = "2025-12-27T09:00"
      reason = "cover"

    [[policy]]
    name = "critical"
    description = "a policy"
    severities = ["critical"]
    initial_delay = "0s"
    ack_timeout = "30m"
    repeat = 1

      [[policy.step]]
      targets = ["room"]
      delay = "5m"

    [[raid]]
    name = "new-account-flood"
    description = "a raid"
    when = { events = ["post_created"], sources = ["forum"], lists = ["known"], categories = ["csam"], has_images = true, account_younger_than = "7d", trust_level_below = 2, report_kinds = ["flagged_post"], text_matches = "x", distinct_reporters = { at_least = 3, within = "1h" }, lockdown = false }
    at_least = 10
    within = "10m"
    lockdown = "2h"
    severity = "critical"
    room = "staff"
    """
)

KeySet = set[tuple[str, str]]


def table_path(path: str) -> str:
    """``schedule[0].layer[1].windows[0]`` -> ``schedule.layer.windows``."""
    return re.sub(r"\[\d+\]", "", path)


@contextmanager
def recording_tables() -> Iterator[list[Table]]:
    """Every Table created inside the block (behaviour unchanged: only remembered)."""
    made: list[Table] = []
    original = schema.Table.__init__

    def init(self: Table, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    schema.Table.__init__ = init  # type: ignore[method-assign]
    try:
        yield made
    finally:
        schema.Table.__init__ = original  # type: ignore[method-assign]


def schema_keys(tmp: Path) -> tuple[KeySet, list[str]]:
    """(table path, key) for every key the loaders read, and the keys the maximal
    configuration above forgot (so some sub-table may never have been read)."""
    (tmp / "rules").mkdir()
    (tmp / "bot.toml").write_text(MAXIMAL_BOT_TOML)
    (tmp / "rules" / "main.toml").write_text(MAXIMAL_RULES)
    (tmp / "known.txt").write_text("")
    problems = Problems()
    with recording_tables() as tables:
        config = load_config(tmp / "bot.toml", problems)
        assert config is not None, [str(p) for p in problems.items]
        load_rules(tmp / "rules", config, problems)
    keys: KeySet = set()
    forgotten: list[str] = []
    for t in tables:
        for name in t._seen:
            keys.add((table_path(t.path), name))
            if name not in t.data:
                forgotten.append(t.key(name))
    return keys, forgotten


TOML_NAME = r"`(\[\[?[\w.]+\]\]?(?:\.[\w.]+)?)`"
SECTION = re.compile(r"^#{2,6} .*" + TOML_NAME + r"\s*$")
SAME_AS = re.compile(r"^Same keys as " + TOML_NAME)
ROW = re.compile(r"^\|\s*`([\w-]+)`\s*\|")


def _path(toml_name: str) -> str:
    return toml_name.replace("[", "").replace("]", "")


def documented(text: str) -> dict[str, set[str]]:
    """Reference sections of the guide: table path -> keys with a row. A section that
    says "Same keys as `[[rule]].when`" gets that section's keys."""
    sections: dict[str, set[str]] = {}
    aliases: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            m = SECTION.match(line)
            current = _path(m.group(1)) if m else None
            if current is not None:
                sections.setdefault(current, set())
            continue
        if current is None:
            continue
        row = ROW.match(line)
        if row:
            sections[current].add(row.group(1))
        same = SAME_AS.match(line)
        if same:
            aliases[current] = _path(same.group(1))
    for path, other in aliases.items():
        for name, keys in list(sections.items()):
            if name == other or name.startswith(other + "."):
                sections.setdefault(path + name[len(other) :], set()).update(keys)
    return sections


def missing_from(guide: dict[str, set[str]], keys: KeySet) -> list[str]:
    """Keys the guide does not document; a root key needs a section of its own."""
    missing = []
    for path, key in sorted(keys):
        if path == "":
            if key not in guide:
                missing.append(f"section for [{key}] / [[{key}]]")
        elif key not in guide.get(path, set()):
            missing.append(f"{path}.{key}")
    return missing


def stale_in(guide: dict[str, set[str]], keys: KeySet) -> list[str]:
    """Keys the guide documents that no loader reads."""
    return sorted(
        f"{path}.{key}" for path, names in guide.items() for key in names if (path, key) not in keys
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    found, forgotten = schema_keys(tmp_path_factory.mktemp("maximal"))
    assert not forgotten, (
        "the loaders read keys the maximal configuration in tests/test_docs.py does not set"
        f" (add them there, and to docs/admin-guide.md): {forgotten}"
    )
    return found


def test_the_schema_is_read_from_the_code(keys: KeySet) -> None:
    # A few keys from every file and depth, so a broken recorder cannot pass silently.
    for key in [
        ("", "service"),
        ("service", "dry_run"),
        ("source", "silence_alarm"),
        ("source.busy_hours", "timezone"),
        ("health", "heartbeat_url_env"),
        ("rule.when", "text_matches"),
        ("schedule.layer.windows", "from"),
        ("policy.step", "targets"),
    ]:
        assert key in keys
    assert len(keys) > 120


def test_admin_guide_documents_every_key_of_bot_toml_and_the_rules_files(keys: KeySet) -> None:
    guide = documented(GUIDE.read_text())
    missing = missing_from(guide, keys)
    assert not missing, f"docs/admin-guide.md does not document: {missing}"


def test_admin_guide_documents_no_key_that_does_not_exist(keys: KeySet) -> None:
    guide = documented(GUIDE.read_text())
    assert not stale_in(guide, keys), "docs/admin-guide.md documents keys nobody reads"


def test_a_key_added_to_the_schema_and_not_documented_fails(keys: KeySet) -> None:
    guide = documented(GUIDE.read_text())
    assert missing_from(guide, {*keys, ("health", "new_setting")}) == ["health.new_setting"]
    without = {path: names - {"silence_alarm"} for path, names in guide.items()}
    assert missing_from(without, keys) == ["source.silence_alarm"]
