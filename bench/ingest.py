"""Ingest benchmark: signed Discourse deliveries over loopback, Vigil against a no-op server.

    python -m bench.ingest [--n 4000] [--concurrency 32] [--quick] [--json]

Each server runs in its own process (as in production); the client shares the same
two cores, so the no-op row is the ceiling of this stack on this machine. Vigil is
measured with synchronous=NORMAL (a delivery survives a killed process) and FULL
(it survives a power cut too); every acknowledgement waits for its commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bot.ingest import sign

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"bench-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_noop(port: int) -> None:
    """A handler that reads the body and answers 200: the ceiling of aiohttp here."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/webhooks/discourse", handle)
    app.router.add_get("/healthz", lambda _r: web.json_response({"status": "ok"}))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _vigil_config(root: Path, port: int, synchronous: str) -> Path:
    (root / "rules").mkdir()
    (root / "rules" / "main.toml").write_text(
        '[[rule]]\nname = "reports"\nwhen = { events = ["report_created"] }\nalert = false\n'
    )
    (root / ".env").write_text(f"BENCH_SECRET={SECRET.decode()}\n")
    (root / "bot.toml").write_text(
        textwrap.dedent(
            f"""
            [service]
            port = {port}
            log_level = "warning"
            [store]
            synchronous = "{synchronous}"
            [[source]]
            name = "forum"
            kind = "discourse"
            base_url = "http://127.0.0.1:9"
            webhook_secret_env = "BENCH_SECRET"
            """
        )
    )
    return root / "bot.toml"


def _body(n: int) -> bytes:
    post = {
        "id": n,
        "username": f"member{n % 500}",
        "created_at": "2026-11-20T23:01:02.000Z",
        "cooked": "<p>An ordinary post about school runs and packed lunches.</p>",
        "post_number": 2,
        "post_type": 1,
        "topic_id": 1000 + n % 50,
        "topic_slug": "packed-lunches",
        "topic_title": "Packed lunches",
        "category_id": 4,
        "raw": "An ordinary post about school runs and packed lunches.",
        "user_id": 10 + n % 500,
        "trust_level": 1,
        "moderator": False,
        "admin": False,
        "staff": False,
        "hidden": False,
        "topic_archetype": "regular",
    }
    return json.dumps({"post": post}).encode()


async def _wait_up(port: int) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status in (200, 503):
                        return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


async def _load(port: int, n: int, concurrency: int, offset: int) -> tuple[float, list[float], int]:
    bodies = [_body(offset + i) for i in range(n)]
    headers = [
        {
            "Content-Type": "application/json",
            "X-Discourse-Instance": "http://forum.example",
            "X-Discourse-Event-Id": str(offset + i),
            "X-Discourse-Event-Type": "post",
            "X-Discourse-Event": "post_created",
            "X-Discourse-Event-Signature": sign(SECRET, b),
        }
        for i, b in enumerate(bodies)
    ]
    latencies: list[float] = []
    failures = 0
    url = f"http://127.0.0.1:{port}/webhooks/discourse"
    next_i = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal failures
            for i in next_i:
                t0 = time.perf_counter()
                async with http.post(url, data=bodies[i], headers=headers[i]) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies, failures


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _measure(method: str, cmd: list[str], port: int, n: int, conc: int, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    try:
        await _wait_up(port)
        await _load(port, min(500, n), conc, offset=10_000_000)  # warm-up
        elapsed, lat, failures = await _load(port, n, conc, offset=0)
    finally:
        proc.terminate()
        proc.wait(20)
    return {
        "method": method,
        "n": n,
        "concurrency": conc,
        "deliveries_per_s": round(n / elapsed, 1),
        "p50_ms": round(_pct(lat, 0.50), 2),
        "p99_ms": round(_pct(lat, 0.99), 2),
        "mean_ms": round(statistics.fmean(lat) * 1000, 2),
        "failures": failures,
    }


async def _run(n: int, conc: int, repeats: int) -> list[dict]:
    rows: list[dict] = []
    for rep in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            port = _free_port()
            rows.append(
                {
                    **await _measure(
                        "noop",
                        [sys.executable, "-m", "bench.ingest", "--serve-noop", str(port)],
                        port,
                        n,
                        conc,
                        Path(tmp),
                    ),
                    "repeat": rep,
                }
            )
        for sync in ("normal", "full"):
            with tempfile.TemporaryDirectory() as tmp:
                port = _free_port()
                cfg = _vigil_config(Path(tmp), port, sync)
                row = await _measure(
                    "vigil",
                    [sys.executable, "-m", "bot", "run", "-c", str(cfg)],
                    port,
                    n,
                    conc,
                    Path(tmp),
                )
                rows.append({**row, "synchronous": sync, "repeat": rep})
    return rows


def _median_rows(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r.get("synchronous", "")), []).append(r)
    out = []
    for (method, sync), rs in groups.items():
        row = {"method": method, "n": rs[0]["n"], "concurrency": rs[0]["concurrency"]}
        if sync:
            row["synchronous"] = sync
        for key in ("deliveries_per_s", "p50_ms", "p99_ms"):
            row[key] = round(statistics.median(r[key] for r in rs), 2)
        row["failures"] = sum(r["failures"] for r in rs)
        row["repeats"] = len(rs)
        out.append(row)
    return out


def main() -> None:
    """Parse arguments, run, print the table (and JSON on the last line with --json)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1,000 deliveries, one repeat")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_noop:
        serve_noop(args.serve_noop)
        return
    n, repeats = (1000, 1) if args.quick else (args.n, args.repeats)
    rows = _median_rows(asyncio.run(_run(n, args.concurrency, repeats)))
    noop = next(r for r in rows if r["method"] == "noop")
    print(f"ingest: {n} signed deliveries, concurrency {args.concurrency}, median of {repeats}")
    print(f"{'method':<22}{'deliveries/s':>14}{'p50 ms':>9}{'p99 ms':>9}{'vs noop':>9}{'fail':>6}")
    for r in rows:
        name = r["method"] + (f" sync={r['synchronous']}" if "synchronous" in r else "")
        r["ratio_vs_noop"] = round(r["deliveries_per_s"] / noop["deliveries_per_s"], 3)
        print(
            f"{name:<22}{r['deliveries_per_s']:>14.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['ratio_vs_noop']:>9.2f}{r['failures']:>6}"
        )
    if args.json:
        print(json.dumps({"rows": rows, "n": n, "concurrency": args.concurrency}))


if __name__ == "__main__":
    main()
