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

:func:`match_query` is the matching both commands' service counterparts need: the
pipeline and ``/v1/check`` can call it with the same arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bot.hashing import MAX_LOCAL_BYTES, ImageRejected
from bot.lists import (
    BANK_SPEC,
    LOCAL_BANK,
    ListRegistry,
    MatchResult,
    bank_entries_for,
    strictest_verdict,
)
from bot.matching import HammingIndex
from bot.model import Match
from bot.scanning import merge_results
from bot.store import Store
from bot.tiers import REVIEW, REVIEW_LOWFREQ_DISTANCE
from bot.variants import LOWFREQ_BITS, QueryHashes, hash_for_enrolment, hash_for_query

log = logging.getLogger(__name__)

LOWFREQ = "lowfreq"


class ReviewIndex:
    """The bank's lowfreq hashes (review tier), indexed for radius ``REVIEW_LOWFREQ_DISTANCE``."""

    def __init__(self, hexes: Sequence[str]) -> None:
        """Index ``hexes`` (32 hex digits each)."""
        self._index: HammingIndex | None = None
        if hexes:
            raw = bytes.fromhex("".join(hexes))
            arr = np.frombuffer(raw, dtype=np.uint8).reshape(len(hexes), LOWFREQ_BITS // 8)
            self._index = HammingIndex(arr.copy(), LOWFREQ_BITS, REVIEW_LOWFREQ_DISTANCE)

    @classmethod
    async def from_store(cls, store: Store) -> ReviewIndex:
        """The lowfreq rows of the bank table."""
        return cls([v for kind, v in await store.bank_entries() if kind == LOWFREQ])

    def nearest(self, queries: Sequence[str]) -> int | None:
        """The smallest distance from any query to any stored hash within the radius."""
        if self._index is None:
            return None
        best: int | None = None
        for q in queries:
            found = self._index.query(bytes.fromhex(q))
            if found and (best is None or found[0][1] < best):
                best = found[0][1]
        return best


def match_query(
    registry: ListRegistry, q: QueryHashes, review: ReviewIndex, media_index: int = 0
) -> MatchResult:
    """Every match of a scanned image: its own hashes, its trimmed and small-scale PDQs
    against every list (tier as the registry says), and lowfreq against the bank (review).
    """
    base = q.base
    lookups = [registry.match_image(base, media_index)]
    extra = [(q.trimmed_pdq, q.trimmed_pdq_quality)] if q.trimmed_pdq else []
    extra += [((h,), 100) for h in q.small_pdq]  # only kept when their quality was >= 50
    for pdqs, quality in extra:
        # The same image with other PDQs: exact and 64-bit matches repeat and merge away.
        alt = dataclasses.replace(
            base, pdq=pdqs[0], pdq_dihedral=tuple(pdqs), pdq_quality=quality, extra_frames=()
        )
        lookups.append(registry.match_image(alt, media_index))
    result = merge_results(*lookups)
    if result.allowed_by is not None:
        return result
    distance = review.nearest(q.lowfreq)
    if distance is not None and not any(
        m.list == LOCAL_BANK and m.tier != REVIEW for m in result.matches
    ):
        lowfreq = Match(
            list=LOCAL_BANK,
            kind=LOWFREQ,
            distance=distance,
            category=BANK_SPEC.category,
            severity=BANK_SPEC.severity,
            media_index=media_index,
            tier=REVIEW,
        )
        result = MatchResult(
            tuple(sorted((*result.matches, lowfreq), key=lambda m: (m.list, m.kind)))
        )
    return result


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

    What a takedown should call while it still holds the image's bytes.
    """
    store = registry.store
    if store is None:
        raise RuntimeError("the local bank needs the store")
    base, enrol = await asyncio.to_thread(hash_for_enrolment, data)
    entries = bank_entries_for(base) + [("pdq", h) for h in enrol.pdq]
    added = await registry.bank_add_entries(entries, added_by, reason)
    # lowfreq rows go in the same table; the registry keeps kinds it does not index.
    added += await store.bank_insert(
        [(LOWFREQ, h) for h in enrol.lowfreq], added_by, reason, None, registry.clock.now()
    )
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
        review = await ReviewIndex.from_store(store)
        for path in paths:
            try:
                q = await asyncio.to_thread(hash_for_query, _read(path))
            except (ImageRejected, OSError) as e:
                _write(out, _error_line(path, e))
                status = 1
                continue
            result = match_query(registry, q, review)
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
