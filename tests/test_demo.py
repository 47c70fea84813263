"""``vigil demo``: the whole night replayed on a real Synapse, the simulated Discourse
and Vigil's App, every step checked from the outside; a step that does not happen
makes it exit non-zero, naming the step."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from adapters.demo import CHECKS, DemoClock, DemoOptions, demo_picture, night_start, run_demo
from bot.cli import main as cli_main
from tests.synapse_server import SynapseServer
from tests.synapse_server import synapse as synapse  # the session's Synapse (fixture)

ROOT = Path(__file__).resolve().parent.parent


def test_demo_fast_replays_the_night_and_every_step_happens() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--fast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"All {len(CHECKS)} steps happened." in out
    for key, _ in CHECKS:
        assert re.search(rf"^  ✓ {key}\b", out, re.M), key
    # The credentials a person needs to log in are printed.
    for label in ("homeserver", "night volunteer", "moderator", "on-call admin", "staff room"):
        assert re.search(rf"^  {label}\s+\S", out, re.M), label
    assert re.search(r"^  moderator\s+@mod:vigil\.demo\s+password \S+$", out, re.M)
    # The summary: hidden within seconds, acked and taken down on the demo clock, paged.
    hide = re.search(r"^  time to hide\s+([\d.]+) s", out, re.M)
    assert hide and float(hide[1]) < 5.0, out
    assert re.search(r"^  time to ack\s+11 min", out, re.M), out
    assert re.search(r"^  time to take down\s+13 min", out, re.M), out
    assert re.search(
        r"^  pages sent\s+3 @room in the staff room, 3 DMs to the night volunteer, "
        r"3 DMs to the on-call admin$",
        out,
        re.M,
    )
    assert re.search(r"^  lockdown\s+on until \d\d:\d\d", out, re.M)
    # The timeline is in demo-clock time: the burst at 23:00, escalation after it.
    assert re.search(r"^23:00:00  forum .* ON the demo hash list", out, re.M)
    assert re.search(r"^23:\d\d:\d\d  DM → admin ", out, re.M)
    # A passing run leaves nothing behind.
    files = re.search(r"^Files: (\S+)", out, re.M)
    assert files and not Path(files[1]).exists()


async def test_a_step_that_does_not_happen_fails_the_demo_naming_it(
    synapse: SynapseServer, tmp_path: Path
) -> None:
    synapse.start()  # no-op unless an earlier test left it stopped
    out = io.StringIO()
    options = DemoOptions(fast=True, data=tmp_path / "demo", skip=frozenset({"reaction"}))

    status = await run_demo(options, out, synapse=synapse)

    text = out.getvalue()
    assert status == 1, text
    assert "vigil demo: these steps did not happen: takedown " in text
    assert re.search(r"^  ✗ takedown\s.*still up on the forum", text, re.M)
    for key, _ in CHECKS:
        if key != "takedown":
            assert re.search(rf"^  ✓ {key}\b", text, re.M), key
    assert "time to take down  —" in text


def test_unknown_skip_is_refused() -> None:
    assert cli_main(["demo", "--fast", "--skip", "everything"]) == 2


async def test_demo_clock_runs_in_real_time_and_a_jump_wakes_sleepers() -> None:
    start = 1_700_000_000.0
    clock = DemoClock(start)
    assert abs(clock.now() - start) < 1.0
    sleeper = asyncio.create_task(clock.sleep(600))
    await asyncio.sleep(0)
    assert not sleeper.done()

    clock.advance_to(clock.now() + 300)  # half way: still asleep
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance_to(clock.now() + 301)
    await asyncio.wait_for(sleeper, 2.0)
    before = clock.now()
    clock.advance_to(before - 60)  # never backwards
    assert clock.now() >= before


def test_the_night_starts_at_the_last_ten_to_eleven_in_london() -> None:
    now = time.time()
    start = night_start(now)
    local = datetime.fromtimestamp(start, ZoneInfo("Europe/London"))
    assert (local.hour, local.minute, local.second) == (22, 50, 0)
    assert now - 86400 - 7200 < start <= now


def test_demo_pictures_are_stable_and_distinct() -> None:
    assert demo_picture(100) == demo_picture(100)
    assert len({demo_picture(s) for s in (100, 101, 102, 200)}) == 4
