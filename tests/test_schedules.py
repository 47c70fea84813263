"""On-call schedules: local wall-clock handoffs and windows across DST, layers,
overrides and swaps, runtime overrides in the store, time-dependent rules, and
what `vigil check` says about schedules."""

from __future__ import annotations

import io
import textwrap
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.cli import check
from bot.config import Config, MatrixConfig, Role, RoomConfig, StaffMember
from bot.model import Author, Event, EventKind, MediaRef, Post
from bot.rules import evaluate, load_rules
from bot.schedules import (
    Layer,
    Override,
    Rotation,
    Schedule,
    Window,
    add_override,
    current_shift,
    next_shift,
    oncall_lines,
    shifts,
    stored_overrides,
    who_is_on,
)
from bot.schema import Problems
from bot.store import Store
from tests.conftest import write_config

LONDON = "Europe/London"
NEW_YORK = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def weekly(people: list[str], tz: str = LONDON, handoff: time = time(9)) -> Schedule:
    """A weekly rotation handing off on Mondays (2025-01-06 is a Monday)."""
    rotation = Rotation(
        tuple((p,) for p in people), datetime.combine(date(2025, 1, 6), handoff), timedelta(weeks=1)
    )
    return Schedule("paid", tz, (Layer("weekly", rotation),))


def nights(person: str = "Vera", tz: str = LONDON, start: time = time(22), end: time = time(7)):
    rotation = Rotation(((person,),), datetime.combine(date(2025, 1, 1), start), timedelta(days=1))
    window = Window(tuple(range(7)), start, end)
    return Schedule("nights", tz, (Layer("night watch", rotation, (window,)),))


# --- rotations hand off at local wall-clock time ---------------------------------------


def test_weekly_handoff_stays_at_nine_local_across_march_change_london() -> None:
    s = weekly(["Ann", "Bob"])
    # Monday 24 March (week 11 since the anchor: Bob's): 09:00 GMT is 09:00 UTC.
    assert who_is_on(s, utc(2025, 3, 24, 8, 59)) == ["Ann"]
    assert who_is_on(s, utc(2025, 3, 24, 9, 0)) == ["Bob"]
    # Monday 31 March, after the clocks went forward: 09:00 BST is 08:00 UTC.
    assert who_is_on(s, utc(2025, 3, 31, 7, 59)) == ["Bob"]
    assert who_is_on(s, utc(2025, 3, 31, 8, 0)) == ["Ann"]
    # A UTC-only rotation (168 h shifts) would still say Bob at 08:30 UTC.
    assert who_is_on(s, utc(2025, 3, 31, 8, 30)) == ["Ann"]


def test_weekly_handoff_stays_at_nine_local_across_october_change_london() -> None:
    s = weekly(["Ann", "Bob"])
    # Monday 20 October (BST): 08:00 UTC. Monday 27 October (GMT): 09:00 UTC.
    assert who_is_on(s, utc(2025, 10, 20, 7, 59)) == ["Ann"]
    assert who_is_on(s, utc(2025, 10, 20, 8, 0)) == ["Bob"]
    assert who_is_on(s, utc(2025, 10, 27, 8, 59)) == ["Bob"]
    assert who_is_on(s, utc(2025, 10, 27, 9, 0)) == ["Ann"]
    shift = current_shift(s, utc(2025, 10, 22, 12))
    assert (shift.start, shift.end) == (utc(2025, 10, 20, 8), utc(2025, 10, 27, 9))
    assert shift.end - shift.start == timedelta(days=7, hours=1)  # the week with 25 h Sunday


def test_every_handoff_of_a_year_is_monday_nine_local() -> None:
    for tz in (LONDON, NEW_YORK):
        s = weekly(["Ann", "Bob", "Cy"], tz)
        stretches = shifts(s, utc(2025, 1, 7), utc(2026, 1, 7))
        assert len(stretches) == 53
        for stretch in stretches[1:]:
            assert stretch.start is not None
            local = stretch.start.astimezone(ZoneInfo(tz))
            assert (local.weekday(), local.hour, local.minute) == (0, 9, 0), local


def test_daily_handoff_new_york_march_and_november() -> None:
    rotation = Rotation((("Ann",), ("Bob",)), datetime(2025, 3, 1, 8), timedelta(days=1))
    s = Schedule("ny", NEW_YORK, (Layer("daily", rotation),))
    # 9 March: 08:00 EDT = 12:00 UTC (the day before it was 13:00 UTC).
    assert who_is_on(s, utc(2025, 3, 8, 12, 30)) == ["Ann"]  # 07:30 EST: still 7 March's turn
    assert who_is_on(s, utc(2025, 3, 9, 11, 59)) == ["Bob"]
    assert who_is_on(s, utc(2025, 3, 9, 12, 0)) == ["Ann"]
    # 2 November: 08:00 EST = 13:00 UTC.
    assert who_is_on(s, utc(2025, 11, 2, 12, 30)) == ["Bob"]
    assert who_is_on(s, utc(2025, 11, 2, 13, 0)) == ["Ann"]


def test_handoff_in_the_spring_gap_moves_forward_and_repeated_time_hands_off_once() -> None:
    rotation = Rotation((("Ann",), ("Bob",)), datetime(2025, 3, 1, 1, 30), timedelta(days=1))
    s = Schedule("odd", LONDON, (Layer("daily", rotation),))
    # 01:30 does not exist on 30 March: the handoff is at 02:30 BST = 01:30 UTC.
    assert who_is_on(s, utc(2025, 3, 30, 1, 29)) == ["Ann"]
    assert who_is_on(s, utc(2025, 3, 30, 1, 30)) == ["Bob"]
    # 01:30 happens twice on 26 October: the handoff is at the first (00:30 UTC) only.
    assert who_is_on(s, utc(2025, 10, 26, 0, 29)) == ["Ann"]
    assert who_is_on(s, utc(2025, 10, 26, 0, 30)) == ["Bob"]
    assert who_is_on(s, utc(2025, 10, 26, 1, 30)) == ["Bob"]  # the second 01:30: no handoff
    shift = current_shift(s, utc(2025, 10, 26, 12))
    assert shift.end is not None and shift.start is not None
    assert shift.end - shift.start == timedelta(hours=25)


# --- windows crossing midnight on DST nights --------------------------------------------


def test_night_window_london_march_night_is_eight_hours() -> None:
    s = nights()
    assert who_is_on(s, utc(2025, 3, 29, 21, 59)) == []
    assert who_is_on(s, utc(2025, 3, 29, 22, 0)) == ["Vera"]
    assert who_is_on(s, utc(2025, 3, 30, 0, 59)) == ["Vera"]
    assert who_is_on(s, utc(2025, 3, 30, 1, 30)) == ["Vera"]  # 02:30 BST
    assert who_is_on(s, utc(2025, 3, 30, 5, 59)) == ["Vera"]  # 06:59 BST
    assert who_is_on(s, utc(2025, 3, 30, 6, 0)) == []  # 07:00 BST; UTC-only would say on
    shift = current_shift(s, utc(2025, 3, 29, 23))
    assert (shift.start, shift.end) == (utc(2025, 3, 29, 22), utc(2025, 3, 30, 6))


def test_night_window_london_october_night_is_ten_hours() -> None:
    s = nights()
    assert who_is_on(s, utc(2025, 10, 25, 20, 59)) == []
    assert who_is_on(s, utc(2025, 10, 25, 21, 0)) == ["Vera"]  # 22:00 BST
    assert who_is_on(s, utc(2025, 10, 26, 6, 59)) == ["Vera"]  # 06:59 GMT
    assert who_is_on(s, utc(2025, 10, 26, 7, 0)) == []
    shift = current_shift(s, utc(2025, 10, 26, 3))
    assert shift.end is not None and shift.start is not None
    assert shift.end - shift.start == timedelta(hours=10)


def test_night_window_new_york_on_both_dst_nights() -> None:
    s = nights(tz=NEW_YORK, start=time(23), end=time(6))
    # 8/9 March: 23:00 EST (04:00 UTC) to 06:00 EDT (10:00 UTC): six hours.
    assert who_is_on(s, utc(2025, 3, 9, 3, 59)) == []
    assert who_is_on(s, utc(2025, 3, 9, 4, 0)) == ["Vera"]
    assert who_is_on(s, utc(2025, 3, 9, 9, 59)) == ["Vera"]
    assert who_is_on(s, utc(2025, 3, 9, 10, 0)) == []
    # 1/2 November: 23:00 EDT (03:00 UTC) to 06:00 EST (11:00 UTC): eight hours.
    assert who_is_on(s, utc(2025, 11, 2, 3, 0)) == ["Vera"]
    assert who_is_on(s, utc(2025, 11, 2, 10, 30)) == ["Vera"]
    assert who_is_on(s, utc(2025, 11, 2, 11, 0)) == []


def test_every_night_of_a_year_opens_at_22_and_closes_at_07_local() -> None:
    s = nights()
    zone = ZoneInfo(LONDON)
    on = [x for x in shifts(s, utc(2025, 1, 1, 12), utc(2026, 1, 1, 12)) if x.names]
    assert len(on) == 365
    for stretch in on:
        assert stretch.start is not None and stretch.end is not None
        assert stretch.start.astimezone(zone).time() == time(22)
        assert stretch.end.astimezone(zone).time() == time(7)


def test_window_only_on_given_days() -> None:
    window = Window((4, 5), time(22), time(7))  # Friday and Saturday nights
    zone = ZoneInfo(LONDON)
    assert window.contains(utc(2025, 6, 14, 3), zone)  # Sat 04:00 BST: Friday's night
    assert not window.contains(utc(2025, 6, 16, 3), zone)  # Mon 04:00 BST: Sunday's night


# --- layers, overrides, swaps -------------------------------------------------------------


def layered() -> Schedule:
    paid = weekly(["Pat"]).layers[0]
    night = nights().layers[0]
    return Schedule("oncall", LONDON, (paid, night))


def test_later_layer_overrides_inside_its_window() -> None:
    s = layered()
    assert who_is_on(s, utc(2025, 6, 10, 12)) == ["Pat"]
    assert who_is_on(s, utc(2025, 6, 10, 23)) == ["Vera"]


def test_override_wins_over_every_layer() -> None:
    s = layered()
    cover = Override("Cat", utc(2025, 6, 10, 20), utc(2025, 6, 11, 2))
    assert who_is_on(s, utc(2025, 6, 10, 21), [cover]) == ["Cat"]
    assert who_is_on(s, utc(2025, 6, 10, 23), [cover]) == ["Cat"]
    assert who_is_on(s, utc(2025, 6, 11, 2), [cover]) == ["Vera"]


def test_swap_replaces_only_the_named_person() -> None:
    s = layered()
    swap = Override("Cat", utc(2025, 6, 10, 0), utc(2025, 6, 12, 0), replaces="Vera")
    assert who_is_on(s, utc(2025, 6, 10, 12), [swap]) == ["Pat"]
    assert who_is_on(s, utc(2025, 6, 10, 23), [swap]) == ["Cat"]


def test_next_shift_is_tonight() -> None:
    s = nights()
    assert next_shift(s, utc(2025, 3, 29, 12)) == (
        ["Vera"],
        utc(2025, 3, 29, 22),
        utc(2025, 3, 30, 6),
    )


def test_oncall_lines_in_the_askers_zone() -> None:
    lines = oncall_lines([nights()], utc(2025, 7, 1, 12), NEW_YORK)
    # 22:00 BST is 17:00 EDT.
    assert lines == ["nights: nobody now (until 17:00 EDT); next Vera from 17:00 EDT"]


async def test_runtime_override_is_stored_audited_and_wins(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "v.db")
    try:
        s = layered()
        oid = await add_override(
            store,
            "oncall",
            "Cat",
            utc(2025, 6, 10, 20),
            utc(2025, 6, 11, 8),
            "Mo",
            reason="covering for Vera",
            now=utc(2025, 6, 10, 19).timestamp(),
        )
        found = await stored_overrides(store, utc(2025, 6, 10, 19).timestamp(), "oncall")
        assert [o.id for o in found] == [oid]
        assert who_is_on(s, utc(2025, 6, 10, 23), found) == ["Cat"]
        assert await stored_overrides(store, utc(2025, 6, 11, 9).timestamp()) == []
        entry = (await store.audit_entries())[-1]
        assert (entry.actor, entry.action, entry.target) == ("Mo", "override", "schedule oncall")
        assert await store.cancel_schedule_override(oid, "Mo", utc(2025, 6, 10, 21).timestamp())
        assert await stored_overrides(store, utc(2025, 6, 10, 19).timestamp()) == []
        with pytest.raises(ValueError):
            await add_override(store, "oncall", "Cat", utc(2025, 6, 2), utc(2025, 6, 1), "Mo")
    finally:
        await store.close()


# --- rules files ---------------------------------------------------------------------------


def config() -> Config:
    return Config(
        path=Path("bot.toml"),
        rooms=(RoomConfig("staff", matrix="!staff:test"),),
        matrix=MatrixConfig("http://127.0.0.1:9", "@vigil:test", access_token_env="X"),
        staff=(
            StaffMember("Vera", Role.VOLUNTEER, LONDON, "@vera:test", notify=("matrix_dm",)),
            StaffMember("Pat", Role.MODERATOR, LONDON, "@pat:test"),
        ),
    )


def load(tmp_path: Path, text: str) -> tuple[object, Problems]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "r.toml").write_text(textwrap.dedent(text))
    problems = Problems()
    return load_rules(rules_dir, config(), problems), problems


NIGHTS = """
[[schedule]]
name = "nights"
timezone = "Europe/London"
  [[schedule.layer]]
  people = ["Vera"]
  shift = "1d"
  windows = [{ from = "22:00", to = "07:00" }]
"""


def test_schedule_from_toml_matches_the_built_one(tmp_path: Path) -> None:
    ruleset, problems = load(tmp_path, NIGHTS)
    assert problems.items == []
    s = ruleset.schedule("nights")  # type: ignore[attr-defined]
    assert s.layers[0].rotation.anchor == datetime(2024, 1, 1, 22, 0)  # handoff = window opens
    assert who_is_on(s, utc(2025, 3, 30, 5, 59)) == ["Vera"]
    assert who_is_on(s, utc(2025, 3, 30, 6, 0)) == []


def image_post(created_at: datetime) -> Event:
    author = Author("7", "newbie", created_at=created_at - timedelta(days=1), trust_level=0)
    post = Post("1", author, media=(MediaRef(url="http://x/a.png"),), text="hi")
    return Event("forum", "d1", EventKind.POST_CREATED, post=post)


def test_rule_active_only_at_night_local_time(tmp_path: Path) -> None:
    ruleset, problems = load(
        tmp_path,
        """
        [[rule]]
        name = "night-images"
        when = { events = ["post_created"], has_images = true }
        active = { from = "22:00", to = "07:00", timezone = "Europe/London" }
        severity = "high"
        """,
    )
    assert problems.items == []
    # 06:30 UTC on 30 March is 07:30 BST: day. On 26 October it is 06:30 GMT: night.
    for at, fired in [
        (utc(2025, 3, 30, 6, 30), False),
        (utc(2025, 10, 26, 6, 30), True),
        (utc(2025, 6, 1, 21, 30), True),  # 22:30 BST
        (utc(2025, 6, 1, 12), False),
    ]:
        decision = evaluate(ruleset, image_post(at), [], at)  # type: ignore[arg-type]
        assert decision.fired is fired, at


def test_rule_active_while_schedule_has_someone_on(tmp_path: Path) -> None:
    ruleset, problems = load(
        tmp_path,
        NIGHTS
        + """
        [[rule]]
        name = "night-images"
        when = { events = ["post_created"] }
        active = "nights"
        """,
    )
    assert problems.items == []
    at = utc(2025, 6, 1, 23)
    assert evaluate(ruleset, image_post(at), [], at).fired  # type: ignore[arg-type]
    at = utc(2025, 6, 1, 12)
    assert not evaluate(ruleset, image_post(at), [], at).fired  # type: ignore[arg-type]


# --- vigil check ---------------------------------------------------------------------------


def run_check(tmp_path: Path, rules: str) -> tuple[int, str]:
    path = write_config(tmp_path, rules=textwrap.dedent(rules))
    out = io.StringIO()
    return check(path, out), out.getvalue()


def test_check_catches_unknown_person_in_a_schedule(tmp_path: Path) -> None:
    code, out = run_check(
        tmp_path,
        """
        [[schedule]]
        name = "nights"
        timezone = "Europe/London"
          [[schedule.layer]]
          people = ["Alice", "Zed"]
        """,
    )
    assert code == 1
    assert "schedule 'nights'.layer[0].people: error: no staff member called 'Zed'" in out


def test_check_catches_overlapping_windows_in_a_layer(tmp_path: Path) -> None:
    code, out = run_check(
        tmp_path,
        """
        [[schedule]]
        name = "nights"
        timezone = "Europe/London"
          [[schedule.layer]]
          people = ["Alice"]
          windows = [
            { days = ["sun"], from = "22:00", to = "07:00" },
            { days = ["mon"], from = "06:00", to = "09:00" },
          ]
        """,
    )
    assert code == 1
    assert "schedule[0].layer[0].windows: error: windows 1 (sun 22:00–07:00) and 2" in out


def test_check_accepts_adjacent_windows_and_wraps_sunday_night(tmp_path: Path) -> None:
    code, out = run_check(
        tmp_path,
        """
        [[schedule]]
        name = "nights"
        timezone = "Europe/London"
          [[schedule.layer]]
          people = ["Alice"]
          windows = [
            { days = ["sun"], from = "22:00", to = "07:00" },
            { days = ["mon"], from = "07:00", to = "09:00" },
          ]
        """,
    )
    assert code == 0, out


def test_check_requires_a_time_zone_and_a_valid_time(tmp_path: Path) -> None:
    code, out = run_check(
        tmp_path,
        """
        [[schedule]]
        name = "nights"
          [[schedule.layer]]
          people = ["Alice"]
          windows = [{ from = "10pm", to = "07:00" }]
        """,
    )
    assert code == 1
    assert "schedule[0].timezone: error: missing" in out
    assert "schedule[0].layer[0].windows[0].from: error: expected a time of day" in out


def test_check_catches_rule_with_unknown_policy_and_schedule(tmp_path: Path) -> None:
    code, out = run_check(
        tmp_path,
        """
        [[rule]]
        name = "r"
        when = { events = ["report_created"] }
        room = "staff"
        policy = "nope"
        active = "nights"
        """,
    )
    assert code == 1
    assert "rule 'r'.policy: error: no policy called 'nope'; policies: none" in out
    assert "rule 'r'.active: error: no schedule called 'nights'" in out


def test_override_command_arguments_in_the_askers_zone() -> None:
    from bot.schedules import OverrideRequest, parse_override

    now = utc(2025, 3, 29, 20)  # 20:00 GMT, 16:00 EDT
    req = parse_override('nights 22:00 07:00 "Night volunteer"', LONDON, now)
    assert req == OverrideRequest(
        "nights", utc(2025, 3, 29, 22), utc(2025, 3, 30, 6), "Night volunteer", None
    )  # 07:00 on the morning the clocks go forward is 06:00 UTC
    req = parse_override("paid now 4h instead Pat", NEW_YORK, now)
    assert req == OverrideRequest("paid", now, utc(2025, 3, 30, 0), None, "Pat")
    req = parse_override("paid 15:00 2025-03-31T09:00", NEW_YORK, now)
    assert isinstance(req, OverrideRequest) and req.start == utc(2025, 3, 30, 19)  # tomorrow
    assert "Usage" in parse_override("nights 22:00", LONDON, now)
    assert "not a time" in parse_override("nights 25:00 07:00", LONDON, now)
