"""``vigil bank add`` and ``vigil scan``: enrol originals with their variants, check images.

``vigil bank add [-c bot.toml] PATH...`` puts each image in the local bank as a
moderator's takedown would, plus what only the original allows (:mod:`bot.variants`):
PDQs of crop variants (matched like any banked PDQ, confident tier) and ``lowfreq``
hashes (review tier). One JSON line per path: ``{"path", "added", "variants"}`` or
``{"path", "error"}``.

``vigil scan [-c bot.toml] PATH...`` checks each image against every list in force and
the bank, hashing it as the service would plus the robust query hashes (the picture
cut out of a frame, PDQ at the variants' scale, lowfreq). One JSON line per path:
``{"path", "verdict": "allow" | "hold" | "block", "matches": [{"list", "kind",
"distance", "tier"}, ...]}``. A review-tier match never makes the verdict ``block``
(:func:`bot.tiers.verdict`). Exit status 1 if a file could not be read or hashed.

Both go through the registry as the service does: ``bank add`` through
:meth:`bot.lists.ListRegistry.bank_enrol` (as a takedown whose original could be fetched
again), ``scan`` through :meth:`bot.lists.ListRegistry.match_query` (as the pipeline and
``/v1/check``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from bot.hashing import MAX_LOCAL_BYTES, ImageRejected
from bot.lists import ListRegistry, strictest_verdict
from bot.store import Store
from bot.variants import hash_for_enrolment, hash_for_query

log = logging.getLogger(__name__)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_LOCAL_BYTES + 1)
    if len(data) > MAX_LOCAL_BYTES:
        raise ImageRejected(f"file is larger than {MAX_LOCAL_BYTES >> 20} MiB")
    return data


def _error_line(path: str, e: Exception) -> dict[str, Any]:
    if isinstance(e, ImageRejected):
        return {"path": path, "error": e.reason}
    if isinstance(e, OSError):
        return {"path": path, "error": e.strerror or type(e).__name__}
    raise e


def _write(out: TextIO, line: dict[str, Any]) -> None:
    out.write(json.dumps(line) + "\n")
    with contextlib.suppress(AttributeError, ValueError):
        out.flush()


async def enrol_bytes(
    registry: ListRegistry, data: bytes, added_by: str, reason: str
) -> tuple[int, int]:
    """Bank an original with its variants; returns (hashes new to the bank, variants kept).

    The same path as a takedown whose original could be fetched again
    (:meth:`bot.lists.ListRegistry.bank_enrol`).
    """
    base, enrol = await asyncio.to_thread(hash_for_enrolment, data)
    added = await registry.bank_enrol(base, enrol, added_by, reason)
    return added, len(enrol.pdq) + len(enrol.lowfreq)


async def _open(config_path: Path, err: TextIO) -> tuple[ListRegistry, Store] | None:
    from bot.app import load_everything

    loaded, problems = load_everything(config_path)
    if loaded is None:
        for problem in problems.items:
            print(problem, file=err)
        print("vigil: the configuration has errors; run `vigil check`.", file=err)
        return None
    cfg = loaded.config
    store = await Store.open(cfg.store.path, synchronous=cfg.store.synchronous)
    registry = ListRegistry(cfg.service.data_dir / "lists-cache", store)
    await registry.load(loaded.rules)
    return registry, store


async def bank_add(config_path: Path, paths: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Body of ``vigil bank add``: one JSON line per path; exit status 1 if any failed."""
    opened = await _open(config_path, err)
    if opened is None:
        return 1
    registry, store = opened
    added_by = f"cli:{os.environ.get('USER', 'unknown')}"
    status = 0
    try:
        for path in paths:
            try:
                data = _read(path)
                added, variants = await enrol_bytes(registry, data, added_by, "vigil bank add")
                _write(out, {"path": path, "added": added, "variants": variants})
            except (ImageRejected, OSError) as e:
                _write(out, _error_line(path, e))
                status = 1
    finally:
        await store.close()
    return status


async def scan(config_path: Path, paths: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Body of ``vigil scan``: one JSON line per path; exit status 1 if any failed."""
    opened = await _open(config_path, err)
    if opened is None:
        return 1
    registry, store = opened
    status = 0
    try:
        for path in paths:
            try:
                q = await asyncio.to_thread(hash_for_query, _read(path))
            except (ImageRejected, OSError) as e:
                _write(out, _error_line(path, e))
                status = 1
                continue
            result = registry.match_query(q)
            _write(
                out,
                {
                    "path": path,
                    "verdict": strictest_verdict(registry, result),
                    "matches": [
                        {"list": m.list, "kind": m.kind, "distance": m.distance, "tier": m.tier}
                        for m in result.matches
                    ],
                },
            )
    finally:
        await store.close()
    return status


def add_parsers(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``bank add`` and ``scan`` on the ``vigil`` subcommands (``bot.cli``)."""
    bank = sub.add_parser("bank", help="the local bank: vigil bank add PATH...")
    actions = bank.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="enrol images into the local bank, as a takedown would")
    config_arg(add)
    add.add_argument("paths", nargs="+", metavar="PATH")
    p = sub.add_parser("scan", help="check images against the lists, one JSON line each")
    config_arg(p)
    p.add_argument("paths", nargs="+", metavar="PATH")


def dispatch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run a parsed ``vigil bank add`` or ``vigil scan``."""
    body = bank_add if args.command == "bank" else scan
    return asyncio.run(body(args.config, args.paths, out, err))


def command(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``vigil bank add ...`` or ``vigil scan ...`` from the words after ``vigil``."""
    ap = argparse.ArgumentParser(prog="vigil")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser) -> None:
        default = Path(os.environ.get("VIGIL_CONFIG", "bot.toml"))
        p.add_argument("-c", "--config", type=Path, default=default, help="path to bot.toml")

    add_parsers(sub, config_arg)
    return dispatch(ap.parse_args(list(argv)), out, err)
