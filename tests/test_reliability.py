"""An acknowledged delivery is never lost: SIGKILL the service mid-stream, restart, count.

This runs the real `vigil run` in a subprocess and talks to it over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import discourse_headers, discourse_post_body, encode, free_port, write_config

ROOT = Path(__file__).resolve().parent.parent


def start_service(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "-c", str(config)],
        cwd=config.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "service.log", "ab"),
    )


async def wait_healthy(http: aiohttp.ClientSession, port: int, deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                if resp.status in (200, 503):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("service did not come up")


async def send(http: aiohttp.ClientSession, port: int, n: int) -> int | None:
    body = encode(discourse_post_body(post_id=n))
    try:
        async with http.post(
            f"http://127.0.0.1:{port}/webhooks/discourse",
            data=body,
            headers=discourse_headers(body, delivery=f"d{n}"),
        ) as resp:
            return resp.status
    except (TimeoutError, aiohttp.ClientError):
        return None


async def test_every_acknowledged_delivery_survives_sigkill(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port=port)
    acked: set[int] = set()
    proc = start_service(config)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            await wait_healthy(http, port)
            counter = iter(range(100_000))
            killed = asyncio.Event()

            async def sender() -> None:
                # Each sender keeps going until the kill, then a little beyond it.
                for n in counter:
                    status = await send(http, port, n)
                    if status == 200:
                        acked.add(n)
                    if killed.is_set() and status is None:
                        return

            async def killer() -> None:
                while len(acked) < 300:
                    await asyncio.sleep(0.005)
                proc.send_signal(signal.SIGKILL)
                killed.set()

            await asyncio.wait_for(asyncio.gather(killer(), *(sender() for _ in range(16))), 60)
            proc.wait(10)
            assert len(acked) >= 300

            # Restart on the same database; everything acknowledged must be processed.
            proc = start_service(config)
            await wait_healthy(http, port)
            # A redelivery of an acknowledged event is a duplicate, not a second event.
            some = sorted(acked)[:5]
            assert [await send(http, port, n) for n in some] == [200] * 5
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    inbox = (await resp.json())["inbox"]
                if set(inbox) == {"done"}:
                    break
                await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0  # a clean drain on SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    db = sqlite3.connect(tmp_path / "data" / "vigil.db")
    rows = db.execute("SELECT delivery_id, state FROM inbox").fetchall()
    db.close()
    stored = [int(d[1:]) for d, _ in rows]
    assert len(stored) == len(set(stored)), "a delivery was stored twice"
    assert acked <= set(stored), f"lost {len(acked - set(stored))} acknowledged deliveries"
    assert {state for _, state in rows} == {"done"}, "not every stored event was processed"
