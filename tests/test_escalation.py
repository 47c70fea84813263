"""The escalation engine on a real SQLite store and a manual clock: steps fire on
time, acks (typed in a DM, through the real moderation path) stop the chain, ack
timeouts re-arm it, empty schedules are skipped at once, restarts neither lose nor
repeat a page, downtime gives one late page, and `vigil check` on policies."""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.cli import check
from bot.clock import ManualClock
from bot.config import Config, MatrixConfig, Role, RoomConfig, StaffMember
from bot.escalation import EscalationEngine, render_report, report
from bot.metrics import REGISTRY
from bot.moderation import Moderation
from bot.ports import ChatCommand
from bot.rules import RuleSet, load_rules
from bot.schedules import add_override
from bot.schema import Problems
from bot.store import InboxRow, IncidentAlert, NewIncident, Store
from tests.conftest import write_config

NIGHT = datetime(2025, 3, 29, 23, 0, tzinfo=UTC).timestamp()  # Saturday 23:00 GMT
DAY = datetime(2025, 3, 29, 12, 0, tzinfo=UTC).timestamp()  # Saturday noon
MIN = 60.0

RULES = """
[[schedule]]
name = "nights"
timezone = "Europe/London"
  [[schedule.layer]]
  people = ["Vera"]
  shift = "1d"
  windows = [{ from = "22:00", to = "07:00" }]

[[schedule]]
name = "paid"
timezone = "Europe/London"
  [[schedule.layer]]
  people = ["Mo", "Pat"]  # week of Monday 24 March 2025: Pat's
  shift = "1w"
  start = "2025-01-06"
  handoff = "09:00"

[[policy]]
name = "critical"
severities = ["critical"]
ack_timeout = "30m"
  [[policy.step]]
  targets = ["schedule:nights"]
  delay = "5m"
  [[policy.step]]
  targets = ["schedule:paid"]
  delay = "10m"
  [[policy.step]]
  targets = ["role:admin"]
  delay = "15m"

[[policy]]
name = "loud"
initial_delay = "2m"
repeat = 1
  [[policy.step]]
  targets = ["room", "person:Mo"]
  delay = "5m"

[[rule]]
name = "known-image"
when = { events = ["post_created"] }
severity = "critical"
room = "staff"

[[rule]]
name = "shouty"
when = { events = ["report_created"] }
severity = "high"
room = "staff"
policy = "loud"
"""


def roster() -> Config:
    return Config(
        path=Path("bot.toml"),
        rooms=(RoomConfig("staff", matrix="!staff:test"),),
        matrix=MatrixConfig("http://127.0.0.1:9", "@vigil:test", access_token_env="X"),
        staff=(
            StaffMember(
                "Vera", Role.VOLUNTEER, "Europe/London", "@vera:test", notify=("matrix_dm",)
            ),
            StaffMember("Mo", Role.MODERATOR, "Europe/London", "@mo:test", notify=("matrix_room",)),
            StaffMember("Pat", Role.MODERATOR, "Europe/London", "@pat:test"),
            StaffMember("Ada", Role.ADMIN, "America/New_York", "@ada:test", notify=("matrix_dm",)),
        ),
    )


@dataclass
class World:
    """A store, a clock, the roster and rules, and an engine (rebuilt at will)."""

    path: Path
    store: Store
    clock: ManualClock
    config: Config
    rules: RuleSet
    engine: EscalationEngine
    events: int = 0

    def new_engine(self) -> EscalationEngine:
        return EscalationEngine(self.store, self.clock, lambda: self.rules, self.config)

    async def restart(self) -> None:
        """Drop the engine and the store; open both again on the same database file."""
        await self.engine.stop()
        await self.store.close()
        self.store = await Store.open(self.path)
        self.engine = self.new_engine()

    async def alert(self, severity: str = "critical", rule: str = "known-image") -> int:
        self.events += 1
        n = self.events
        await self.store.insert_events(
            [InboxRow("forum", f"d{n}", "post_created", "{}")], self.clock.now()
        )
        event_id = (await self.store.events())[-1]["id"]
        result = await self.store.record_incident(
            NewIncident(
                event_id,
                IncidentAlert(
                    incident_key=f"post:{n}",
                    source="forum",
                    severity=severity,
                    room="staff",
                    summary=f"list known: post {n} by someone",
                    rules=(rule,),
                    target={"post_id": str(n)},
                    rooms=(("matrix", "!staff:test"),),
                    group_window_s=600,
                ),
            ),
            self.clock.now(),
        )
        assert result.alert_id is not None
        return result.alert_id

    async def pages(self) -> list[dict[str, Any]]:
        """The escalation's outbox rows (not the alert posts), oldest first."""
        rows = await self.store.outbox_rows()
        out = []
        for r in rows:
            if (r["dedupe_key"] or "").startswith("esc:"):
                payload = json.loads(r["payload"])
                out.append({**r, **payload, "who": payload.get("user") or payload.get("room")})
        return out

    async def who(self) -> list[str]:
        return [p["who"] for p in await self.pages()]

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)
        await self.engine.run_due()

    def moderation(self) -> Moderation:
        return Moderation(
            self.config, self.store, self.clock, wake_actions=lambda: None, wake_outbox=lambda: None
        )

    async def dm(self, sender: str, text: str, event_id: str) -> None:
        """``text`` typed by ``sender`` in their DM with the bot (the real moderation path)."""
        words = text.split()
        await self.moderation().on_command(
            ChatCommand("matrix", f"!dm-{sender}", sender, text, event_id, True, tuple(words))
        )


async def make_world(tmp_path: Path, start: float, rules: str = RULES) -> World:
    config = roster()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.toml").write_text(textwrap.dedent(rules))
    problems = Problems()
    ruleset = load_rules(tmp_path / "rules", config, problems)
    assert problems.errors == [], [str(p) for p in problems.items]
    path = tmp_path / "vigil.db"
    store = await Store.open(path)
    clock = ManualClock(start)
    world = World(path, store, clock, config, ruleset, None)  # type: ignore[arg-type]
    world.engine = world.new_engine()
    return world


@pytest.fixture
async def night(tmp_path: Path) -> AsyncIterator[World]:
    world = await make_world(tmp_path, NIGHT)
    yield world
    await world.engine.stop()
    await world.store.close()


@pytest.fixture
async def day(tmp_path: Path) -> AsyncIterator[World]:
    world = await make_world(tmp_path, DAY)
    yield world
    await world.engine.stop()
    await world.store.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- steps --------------------------------------------------------------------------------


async def test_steps_fire_on_time_then_the_chain_runs_out_loudly(night: World) -> None:
    w = night
    alert = await w.alert()
    assert await w.engine.start(alert) == "active"
    assert await w.who() == ["@vera:test"]  # step 1 at once: the night volunteer's DM
    await w.advance(5 * MIN - 1)
    assert await w.who() == ["@vera:test"]
    await w.advance(1)
    assert await w.who() == ["@vera:test", "@pat:test"]  # step 2: paid on-call (Pat's week)
    await w.advance(10 * MIN - 1)
    assert len(await w.pages()) == 2
    await w.advance(1)
    assert await w.who() == ["@vera:test", "@pat:test", "@ada:test"]  # step 3: admins
    await w.advance(15 * MIN)
    pages = await w.pages()
    assert len(pages) == 4 and pages[-1]["who"] == "!staff:test"
    assert "nobody acknowledged" in pages[-1]["text"]
    assert pages[-1]["mentions"] == []
    assert (await w.store.escalation(alert))["state"] == "exhausted"
    assert [p["kind"] for p in await w.store.open_problems()] == ["escalation_exhausted"]
    await w.advance(60 * MIN)
    assert len(await w.pages()) == 4


async def test_page_says_what_waits_how_long_and_how_to_ack(night: World) -> None:
    w = night
    alert = await w.alert()
    await w.engine.start(alert)
    await w.advance(5 * MIN)
    dm = (await w.pages())[-1]
    assert (dm["chat"], dm["op"], dm["user"]) == ("matrix", "dm", "@pat:test")
    text = dm["text"]
    assert f"Alert #{alert} (critical) has waited 5 min 0 s" in text
    assert "list known: post 1 by someone" in text
    assert f'Reply "ack {alert}" here' in text
    assert "on call in paid" in text and "step 2 of 3" in text
    assert dm["alert_id"] == alert


async def test_room_target_mentions_the_room_and_people_who_prefer_it(night: World) -> None:
    w = night
    alert = await w.alert("high", rule="shouty")
    assert await w.engine.start(alert) == "active"
    assert await w.pages() == []  # the room gets initial_delay = 2m first
    await w.advance(2 * MIN)
    [msg] = await w.pages()
    assert (msg["op"], msg["room"], msg["mentions"], msg["mention_room"]) == (
        "send",
        "!staff:test",
        ["@mo:test"],
        True,
    )
    assert f"!ack {alert}" in msg["text"] and "policy loud" in msg["text"]
    await w.advance(5 * MIN)  # repeat = 1: a second round
    assert len(await w.pages()) == 2 and "round 2" in (await w.pages())[-1]["text"]


async def test_rule_policy_beats_severity_policy(night: World) -> None:
    w = night
    alert = await w.alert("critical", rule="shouty")
    await w.engine.start(alert)
    assert (await w.store.escalation(alert))["policy"] == "loud"


# --- ack and resolution ---------------------------------------------------------------------


async def test_ack_typed_in_the_dm_stops_the_chain(night: World) -> None:
    w = night
    before = metric("vigil_alert_time_to_ack_seconds_count", severity="critical")
    alert = await w.alert()
    await w.engine.start(alert)
    await w.advance(2 * MIN)
    await w.dm("@vera:test", f"ack {alert}", "$ack1")
    assert (await w.store.alert_snapshot(alert)).status == "acked"
    await w.advance(3 * MIN)  # step 2 was due now
    assert await w.who() == ["@vera:test"]
    esc = await w.store.escalation(alert)
    assert (esc["state"], esc["acked_by"]) == ("acked", "Vera")
    assert esc["due_at"] == pytest.approx(NIGHT + 2 * MIN + 30 * MIN)
    assert metric("vigil_alert_time_to_ack_seconds_count", severity="critical") == before + 1


async def test_ack_timeout_rearms_from_the_next_step_and_says_so(night: World) -> None:
    w = night
    alert = await w.alert()
    await w.engine.start(alert)
    await w.advance(2 * MIN)
    await w.dm("@vera:test", f"ack {alert}", "$ack1")
    await w.advance(30 * MIN - 1)
    assert await w.who() == ["@vera:test"]
    await w.advance(1)  # 30 min after the ack, still not resolved
    assert await w.who() == ["@vera:test", "@pat:test"]
    text = (await w.pages())[-1]["text"]
    assert "Vera acked it 30 min 0 s ago but it is still not resolved: escalating again" in text
    snap = await w.store.alert_snapshot(alert)
    assert (snap.status, snap.acked_by) == ("open", None)  # the ack lapsed; 👀 works again
    assert "escalation_rearm" in [e.action for e in await w.store.audit_entries()]
    # Acking again stops it again.
    await w.dm("@pat:test", f"ack {alert}", "$ack2")
    await w.advance(10 * MIN)
    assert len(await w.pages()) == 2
    assert (await w.store.escalation(alert))["acked_by"] == "Pat"


async def test_engine_ack_api_stops_at_once(night: World) -> None:
    w = night
    alert = await w.alert()
    await w.engine.start(alert)
    assert await w.engine.ack(alert, "Vera")
    await w.advance(29 * MIN)
    assert len(await w.pages()) == 1


async def test_resolution_ends_the_chain(night: World) -> None:
    w = night
    alert = await w.alert()
    await w.engine.start(alert)
    await w.dm("@pat:test", f"dismiss {alert}", "$dismiss")
    await w.advance(1)  # the engine notices the resolution on its next pass
    esc = await w.store.escalation(alert)
    assert esc["state"] == "resolved"
    await w.advance(60 * MIN)
    assert len(await w.pages()) == 1
    assert [e["kind"] for e in await w.store.escalation_log(alert)] == ["start", "page", "resolve"]


# --- nobody on call ---------------------------------------------------------------------------


async def test_nobody_on_call_is_skipped_at_once_and_audited(day: World) -> None:
    w = day
    alert = await w.alert()
    await w.engine.start(alert)
    # Noon: the night schedule is empty, so step 2 pages now, not 5 minutes later.
    assert await w.who() == ["@pat:test"]
    skips = [e for e in await w.store.audit_entries() if e.action == "escalation_skip"]
    assert len(skips) == 1
    assert "step 1 of policy critical" in skips[0].reason
    assert "schedule:nights: nobody on call" in skips[0].reason
    log = [(e["kind"], e["step"]) for e in await w.store.escalation_log(alert)]
    assert log == [("start", 0), ("skip", 0), ("page", 1)]
    assert metric("vigil_escalation_steps_total", policy="critical", step="1", outcome="skipped")


async def test_override_wins_in_a_page(night: World) -> None:
    w = night
    await add_override(
        w.store,
        "nights",
        "Ada",
        datetime.fromtimestamp(NIGHT - 3600, UTC),
        datetime.fromtimestamp(NIGHT + 3600, UTC),
        "Mo",
        now=NIGHT - 7200,
    )
    alert = await w.alert()
    await w.engine.start(alert)
    assert await w.who() == ["@ada:test"]


# --- durability --------------------------------------------------------------------------------


async def test_restart_mid_policy_gives_no_missing_and_no_duplicate_page(night: World) -> None:
    w = night
    alert = await w.alert()
    await w.engine.start(alert)
    await w.advance(5 * MIN)
    assert len(await w.pages()) == 2
    await w.restart()
    await w.engine.run_due()  # the new process looks at once: nothing is due
    assert len(await w.pages()) == 2
    await w.advance(10 * MIN)
    await w.engine.run_due()
    await w.restart()
    await w.engine.run_due()
    assert await w.who() == ["@vera:test", "@pat:test", "@ada:test"]
    keys = [p["dedupe_key"] for p in await w.pages()]
    assert len(set(keys)) == len(keys)


async def test_a_failed_transition_leaves_nothing_half_done(night: World) -> None:
    w = night
    alert = await w.alert()
    await w.engine.start(alert)
    before = (await w.store.escalation(alert), len(await w.store.audit_entries()))

    class Broken:
        def page(self, page: object) -> list[object]:
            raise RuntimeError("renderer bug")

        def notice(self, *args: object) -> list[object]:
            raise RuntimeError("renderer bug")

    w.engine.notifier = Broken()  # type: ignore[assignment]
    await w.clock.advance(5 * MIN)
    with pytest.raises(RuntimeError):
        await w.engine.run_due()
    assert (await w.store.escalation(alert), len(await w.store.audit_entries())) == before
    assert len(await w.pages()) == 1
    w.engine = w.new_engine()
    await w.engine.run_due()
    assert await w.who() == ["@vera:test", "@pat:test"]


async def test_overdue_step_after_downtime_fires_once_marked_late(night: World) -> None:
    w = night
    alert = await w.alert()
    await w.engine.start(alert)
    await w.restart()
    await w.clock.advance(2 * 3600)  # Vigil was down for two hours; steps 2 and 3 were due
    late_before = metric("vigil_escalation_late_total")
    await w.engine.run_due()
    await w.engine.run_due()
    pages = await w.pages()
    assert [p["who"] for p in pages] == ["@vera:test", "@pat:test"]
    assert "Late by 1 h 55 min: Vigil was not running" in pages[-1]["text"]
    assert metric("vigil_escalation_late_total") == late_before + 1
    page = [e for e in await w.store.escalation_log(alert) if e["kind"] == "page"][-1]
    assert page["late"] == pytest.approx(115 * MIN)
    # The next step is due a full delay after the late page, not in the past.
    assert (await w.store.escalation(alert))["due_at"] == pytest.approx(w.clock.now() + 10 * MIN)


async def test_alert_without_escalation_is_started_by_the_sweep_late(night: World) -> None:
    w = night
    await w.alert()  # created, then the process died before start()
    await w.clock.advance(10 * MIN)
    await w.engine.run_due()
    [page] = await w.pages()
    assert page["who"] == "@vera:test" and "Late by 10 min" in page["text"]
    low = await w.alert("low")  # no policy for low: remembered, never paged
    await w.engine.run_due()
    assert (await w.store.escalation(low))["state"] == "none"


async def test_scheduler_loop_sleeps_on_the_clock_until_the_next_step(night: World) -> None:
    w = night
    alert = await w.alert()
    w.engine.start_loop()
    await w.engine.settled()
    assert await w.who() == ["@vera:test"]  # the sweep started it
    await w.clock.advance(5 * MIN - 1)
    await w.engine.settled()
    assert len(await w.pages()) == 1
    await w.clock.advance(1)
    await w.engine.settled()
    assert await w.who() == ["@vera:test", "@pat:test"]
    assert (await w.store.escalation(alert))["step"] == 2


# --- measures ----------------------------------------------------------------------------------


async def test_report_counts_alerts_acks_takedowns_and_pages(night: World) -> None:
    w = night
    a1 = await w.alert()
    a2 = await w.alert()
    await w.engine.start(a1)
    await w.engine.start(a2)
    await w.advance(4 * MIN)
    await w.dm("@vera:test", f"ack {a1}", "$a")
    await w.advance(6 * MIN)  # a2: step 2 pages Pat
    await w.dm("@pat:test", f"dismiss {a2}", "$d")
    await w.advance(1)
    rep = await report(w.store, w.clock.now(), days=1)
    assert (rep.alerts, rep.by_severity, rep.acked, rep.unacked) == (2, {"critical": 2}, 2, 0)
    assert rep.ack_median_s == pytest.approx(7 * MIN)  # 4 min and 10 min
    assert rep.ack_worst_s == pytest.approx(10 * MIN)
    assert rep.pages == 3 and rep.pages_by_person == {"Vera": 2, "Pat": 1}
    assert rep.handled == {"Vera": {"acked": 1}, "Pat": {"dismissed": 1}}
    text = render_report(rep, "Europe/London")
    assert "Alerts: 2 (2 critical)" in text
    assert "Time to ack: median 7 min 0 s, worst 10 min 0 s" in text


# --- vigil check -------------------------------------------------------------------------------


def run_check(tmp_path: Path, rules: str, extra_toml: str = "") -> tuple[int, str]:
    path = write_config(tmp_path, rules=textwrap.dedent(rules), extra_toml=extra_toml)
    out = io.StringIO()
    return check(path, out), out.getvalue()


GHOST = """
[[staff]]
name = "Ghost"
role = "admin"
timezone = "Europe/London"
"""


def test_check_catches_a_policy_with_no_reachable_target(tmp_path: Path) -> None:
    code, out = run_check(
        tmp_path,
        """
        [[policy]]
        name = "p"
        severities = ["critical"]
          [[policy.step]]
          targets = ["person:Ghost"]
          delay = "5m"
        """,
        GHOST,
    )
    assert code == 1
    assert "policy 'p'.step[0].targets: warning: person:Ghost: Ghost cannot be paged" in out
    assert "policy 'p': error: no step of this policy can reach anyone" in out


def test_check_catches_unknown_people_schedules_and_targets(tmp_path: Path) -> None:
    code, out = run_check(
        tmp_path,
        """
        [[policy]]
        name = "p"
          [[policy.step]]
          targets = ["person:Zed", "schedule:nope", "role:boss", "pager"]
          delay = "5m"
        [[policy]]
        name = "q"
        ack_timeout = "10s"
          [[policy.step]]
          targets = []
          delay = "5m"
        """,
    )
    assert code == 1
    assert "policy[0].step[0].targets[2]: error: 'role:boss' is not a target" in out
    assert "policy[0].step[0].targets[3]: error: 'pager' is not a target" in out
    assert "policy[1].ack_timeout: error: must be at least 1m" in out
    assert "policy[1].step[0].targets: error: a step must page someone" in out


def test_check_names_unknown_person_and_schedule_targets(tmp_path: Path) -> None:
    code, out = run_check(
        tmp_path,
        """
        [[policy]]
        name = "p"
          [[policy.step]]
          targets = ["person:Zed", "schedule:nope", "room"]
          delay = "5m"
        """,
    )
    assert code == 1
    assert "policy 'p'.step[0].targets: error: no staff member called 'Zed'" in out
    assert "policy 'p'.step[0].targets: error: no schedule called 'nope'" in out


def test_check_catches_a_severity_claimed_twice(tmp_path: Path) -> None:
    step = '[[policy.step]]\ntargets = ["room"]\ndelay = "5m"\n'
    code, out = run_check(
        tmp_path,
        f'[[policy]]\nname = "a"\nseverities = ["high"]\n{step}'
        f'[[policy]]\nname = "b"\nseverities = ["high"]\n{step}',
    )
    assert code == 1
    assert "severity high is already claimed by policy 'a'" in out


def test_check_accepts_the_shipped_oncall_example(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    code, out = run_check(tmp_path, (root / "rules" / "oncall.toml").read_text(), _EXAMPLE_STAFF)
    assert code == 0, out
    assert "policy    critical (critical): room + schedule:nights" in out


_EXAMPLE_STAFF = """
[[staff]]
name = "Night volunteer"
role = "volunteer"
timezone = "Europe/London"
matrix = "@night:vigil.test"

[[staff]]
name = "Moderator"
role = "moderator"
timezone = "Europe/London"
matrix = "@mod:vigil.test"

[[staff]]
name = "On-call admin"
role = "admin"
timezone = "America/New_York"
matrix = "@oncall:vigil.test"
"""
