"""Evaluation: are edited copies of enrolled images caught, and distinct images left alone?

    python -m bench.robustness [--quick] [--json] [-n ORIGINALS]

Corpus (``bench.robust_corpus``): generated photo-like images in five styles (scenes,
screenshots, portraits, dark scenes, framed pictures); never real photographs. The
originals are enrolled as the local bank would enrol a takedown
(``bot.variants.hash_for_enrolment``). Then every edit of ``EDITS`` is applied to every
original and the copy is scanned (``hash_for_query`` + ``VariantBank.match``), as are
``distractors`` (other images of the corpus, never enrolled) and, as hard negatives
reported apart, ``siblings`` (the same scene as an original with other foreground
objects).

Reported, each measured in this run:

- recall per edit: **plain** (what Vigil did before: exact hash or PDQ within 31 of the
  original, its 8 dihedral variants included), **confident** and **any tier** (ours);
- false positives per tier: matched (query, enrolled original) pairs whose images are
  different, over every such pair (edited copies x other originals, distractors x
  originals);
- time per scanned image: ``bot.hashing.hash_image`` (plain) vs ``hash_for_query``
  (ours), interleaved image by image; and time per enrolment;
- the **live path**, as the pipeline and ``/v1/check`` run it: the originals banked in a
  real store through ``ListRegistry.bank_add_entries`` (what a takedown does), then
  ``hash_image`` + ``ListRegistry.match_image`` (plain) vs ``hash_for_query`` +
  ``ListRegistry.match_query`` (ours), interleaved, on the distractors and a 3% and a
  10% crop of every original; and whether the registry finds the enrolled original in
  the same best tier as the evaluation's ``VariantBank``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.robust_corpus import EDITS, EXTRA_EDITS, corpus_image, original_bytes, sibling_of
from bot.hashing import ImageHashes, hash_image
from bot.lists import ListRegistry, enrolment_entries
from bot.store import Store
from bot.tiers import CONFIDENT
from bot.variants import (
    EnrolmentHashes,
    QueryHashes,
    VariantBank,
    hash_for_enrolment,
    hash_for_query,
)

TARGETS = {"common": 0.95, "harder": 0.80}
REVIEW_FP_TARGET = 0.001


@dataclass
class EditResult:
    """Counts for one edit."""

    name: str
    group: str
    n: int = 0
    plain: int = 0
    confident: int = 0
    any_tier: int = 0
    missed: list[int] = field(default_factory=list)


@dataclass
class FalsePositives:
    """False matches per tier over distinct-image pairs."""

    pairs: int = 0
    confident: int = 0
    review: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, query: str, hits_other: dict[int, str], others: int) -> None:
        """Count one query's matches against ``others`` enrolled originals not its own."""
        self.pairs += others
        for owner, tier in hits_other.items():
            if tier == CONFIDENT:
                self.confident += 1
            else:
                self.review += 1
            if len(self.examples) < 5:
                self.examples.append(f"{query} ~ original {owner} ({tier})")


def _plain_query(data: bytes) -> QueryHashes:
    """What Vigil matched before this work: the ordinary hashes only."""
    base = hash_image(data)
    return QueryHashes(base, None, (), 0, ())


def _tiers_by_owner(hits: list) -> dict[int, str]:
    """Per matched original, the best tier among its hits."""
    out: dict[int, str] = {}
    for h in hits:
        if out.get(h.owner) != CONFIDENT:
            out[h.owner] = h.tier
    return out


@dataclass
class LiveTiming:
    """The live path's cost, and its agreement with the evaluation's matcher."""

    plain: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    agree: int = 0
    compared: int = 0


def _best_tier(tiers: list[str]) -> str | None:
    return CONFIDENT if CONFIDENT in tiers else (tiers[0] if tiers else None)


def _live(
    enrolled: list[tuple[ImageHashes, EnrolmentHashes]],
    scans: list[tuple[bytes, str | None]],
) -> LiveTiming:
    """Time the pipeline's matching path against a bank in a real store (see the docstring).

    ``scans``: (bytes, the best tier ``VariantBank`` gave its own original, or None for
    an image that is no copy of any original).
    """
    out = LiveTiming()

    async def run(directory: Path) -> None:
        store = await Store.open(directory / "bench.db")
        try:
            registry = ListRegistry(None, store)
            await registry.load_bank()
            entries = [e for base, enrol in enrolled for e in enrolment_entries(base, enrol)]
            await registry.bank_add_entries(entries, "bench", "bench.robustness")
            for data, expected in scans:
                start = time.perf_counter()
                registry.match_image(hash_image(data))
                out.plain.append(time.perf_counter() - start)
                start = time.perf_counter()
                result = registry.match_query(hash_for_query(data))
                out.ours.append(time.perf_counter() - start)
                if expected is not None:
                    out.compared += 1
                    out.agree += _best_tier([m.tier for m in result.matches]) == expected
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(Path(d)))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation, print the tables (and a JSON line with --json)."""
    ap = argparse.ArgumentParser(prog="python -m bench.robustness", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small corpus, under a minute")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    ap.add_argument("-n", type=int, default=None, help="originals to enrol (default 240, quick 24)")
    args = ap.parse_args(argv)
    n = args.n or (24 if args.quick else 240)
    n_distractors = n

    t0 = time.perf_counter()
    originals = []
    for i in range(n):
        style, img = corpus_image(i)
        originals.append((style, img, original_bytes(img)))
    distractors = [original_bytes(corpus_image(n + j)[1]) for j in range(n_distractors)]
    scene_ids = [i for i, (style, _, _) in enumerate(originals) if style == "scene"]
    siblings = [(i, original_bytes(sibling_of(i))) for i in scene_ids[: max(8, n // 4)]]
    print(
        f"corpus: {n} originals, {len(distractors)} distractors, {len(siblings)} siblings, "
        f"generated in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )

    hash_image(originals[0][2])  # warm imports outside the timing
    hash_for_query(originals[0][2])

    ours = VariantBank()
    plain = VariantBank()
    t_enrol: list[float] = []
    low_quality = 0
    enrolled: list[tuple[ImageHashes, EnrolmentHashes]] = []
    for i, (_, _, data) in enumerate(originals):
        start = time.perf_counter()
        base, enrol = hash_for_enrolment(data)
        t_enrol.append(time.perf_counter() - start)
        enrolled.append((base, enrol))
        ours.add(i, base, enrol)
        plain.add(i, base, EnrolmentHashes((), ()))
        low_quality += base.pdq_quality < 50
    per_original = (len(ours) - n) / n
    print(
        f"enrolled in {sum(t_enrol):.1f} s ({per_original:.0f} stored hashes per original)",
        file=sys.stderr,
    )

    results: dict[str, EditResult] = {}
    fp_ours = FalsePositives()
    fp_plain = FalsePositives()
    t_plain: list[float] = []
    t_ours: list[float] = []

    def scan(data: bytes) -> tuple[dict[int, str], dict[int, str]]:
        start = time.perf_counter()
        pq = _plain_query(data)
        t_plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        q = hash_for_query(data)
        t_ours.append(time.perf_counter() - start)
        return _tiers_by_owner(ours.match(q)), _tiers_by_owner(plain.match(pq))

    live_scans: list[tuple[bytes, str | None]] = []
    for name, (group, edit) in {**EDITS, **EXTRA_EDITS}.items():
        r = results[name] = EditResult(name, group)
        for i, (_, img, data) in enumerate(originals):
            rng = random.Random(f"{name}/{i}")
            copy = data if name == "same file" else edit(img, rng)
            got, got_plain = scan(copy)
            if name in ("crop 3%", "crop 10%") and not set(got) - {i}:
                live_scans.append((copy, got.get(i)))
            r.n += 1
            r.plain += got_plain.get(i) == CONFIDENT
            r.confident += got.get(i) == CONFIDENT
            r.any_tier += i in got
            if i not in got:
                r.missed.append(i)
            label = f"{name} of {i}"
            fp_ours.add(label, {o: t for o, t in got.items() if o != i}, n - 1)
            fp_plain.add(label, {o: t for o, t in got_plain.items() if o != i}, n - 1)
        print(f"  {name}: done", file=sys.stderr)

    for j, data in enumerate(distractors):
        got, got_plain = scan(data)
        if not got:
            live_scans.append((data, None))
        fp_ours.add(f"distractor {j}", got, n)
        fp_plain.add(f"distractor {j}", got_plain, n)

    sib_ours = FalsePositives()
    sib_plain = FalsePositives()
    for i, data in siblings:
        got, got_plain = scan(data)
        sib_ours.add(f"sibling of {i}", {o: t for o, t in got.items() if o == i}, 1)
        sib_plain.add(f"sibling of {i}", {o: t for o, t in got_plain.items() if o == i}, 1)

    rows = []
    print(
        f"\n{'edit':<20}{'group':<8}{'n':>5}{'plain':>8}{'confident':>11}{'any tier':>10}"
        f"{'target':>9}  met"
    )
    for r in results.values():
        target = TARGETS.get(r.group)
        got = r.confident if r.group == "common" else r.any_tier
        met = None if target is None else got / r.n >= target
        row = {
            "method": "vigil",
            "edit": r.name,
            "group": r.group,
            "n": r.n,
            "plain_recall": round(r.plain / r.n, 4),
            "confident_recall": round(r.confident / r.n, 4),
            "any_tier_recall": round(r.any_tier / r.n, 4),
            "target": target,
            "target_tier": {"common": "confident", "harder": "any"}.get(r.group),
            "met": met,
        }
        rows.append(row)
        print(
            f"{r.name:<20}{r.group:<8}{r.n:>5}{r.plain / r.n:>8.1%}{r.confident / r.n:>11.1%}"
            f"{r.any_tier / r.n:>10.1%}{f'>={target:.0%}' if target else '-':>9}  "
            f"{'-' if met is None else 'yes' if met else 'NO'}"
        )

    def rate(x: int, pairs: int) -> float:
        return x / pairs if pairs else 0.0

    print(
        f"\n{'false positives':<22}{'pairs':>10}{'confident':>11}{'review':>9}{'review rate':>13}"
    )
    for label, fp in (("plain", fp_plain), ("ours", fp_ours)):
        print(
            f"{label:<22}{fp.pairs:>10}{fp.confident:>11}{fp.review:>9}"
            f"{rate(fp.review, fp.pairs):>13.4%}"
        )
    for ex in fp_ours.examples:
        print(f"  e.g. {ex}")
    print(
        f"siblings (hard negatives: same scene, other objects; {len(siblings)}): "
        f"plain confident {sib_plain.confident}, ours confident {sib_ours.confident}, "
        f"ours review {sib_ours.review}"
    )
    p50_plain = statistics.median(t_plain) * 1000
    p50_ours = statistics.median(t_ours) * 1000
    mean_ratio = sum(t_ours) / sum(t_plain)
    print(
        f"\ntime per scanned image ({len(t_ours)}): plain hash_image p50 {p50_plain:.1f} ms, "
        f"ours p50 {p50_ours:.1f} ms; ours/plain {p50_ours / p50_plain:.2f}x at p50, "
        f"{mean_ratio:.2f}x in total (target <= 2x)"
    )
    print(
        f"enrolment: p50 {statistics.median(t_enrol) * 1000:.0f} ms per original, "
        f"{per_original:.0f} stored hashes each; {low_quality} of {n} originals have "
        "PDQ quality < 50 (PDQ unusable for them)"
    )
    live = _live(enrolled, live_scans)
    live_p50_plain = statistics.median(live.plain) * 1000
    live_p50_ours = statistics.median(live.ours) * 1000
    live_ratio = sum(live.ours) / sum(live.plain)
    print(
        f"live path ({len(live.ours)} scans, bank of {n} originals in the store): plain "
        f"hash_image + match_image p50 {live_p50_plain:.1f} ms, ours hash_for_query + "
        f"match_query p50 {live_p50_ours:.1f} ms; {live_p50_ours / live_p50_plain:.2f}x at "
        f"p50, {live_ratio:.2f}x in total (target <= 2x); same best tier as the evaluation "
        f"for {live.agree} of {live.compared} crops"
    )
    common_ok = all(r["met"] for r in rows if r["group"] == "common")
    harder_ok = all(r["met"] for r in rows if r["group"] == "harder")
    summary = {
        "common_met": common_ok,
        "harder_met": harder_ok,
        "confident_fp_zero": fp_ours.confident == 0,
        "review_fp_rate": round(rate(fp_ours.review, fp_ours.pairs), 6),
        "review_fp_met": rate(fp_ours.review, fp_ours.pairs) < REVIEW_FP_TARGET,
        "time_ratio_total": round(mean_ratio, 3),
        "time_met": mean_ratio <= 2.0,
        "live_ratio_total": round(live_ratio, 3),
        "live_time_met": live_ratio <= 2.0,
    }
    print("targets: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    if args.json:
        print(
            json.dumps(
                {
                    "rows": rows,
                    "false_positives": {
                        "pairs": fp_ours.pairs,
                        "confident": fp_ours.confident,
                        "review": fp_ours.review,
                        "plain_pairs": fp_plain.pairs,
                        "plain_confident": fp_plain.confident,
                        "plain_review": fp_plain.review,
                    },
                    "siblings": {
                        "n": len(siblings),
                        "plain_confident": sib_plain.confident,
                        "confident": sib_ours.confident,
                        "review": sib_ours.review,
                    },
                    "timing": {
                        "n": len(t_ours),
                        "plain_p50_ms": round(p50_plain, 2),
                        "ours_p50_ms": round(p50_ours, 2),
                        "ratio_p50": round(p50_ours / p50_plain, 3),
                        "ratio_total": round(mean_ratio, 3),
                        "enrol_p50_ms": round(statistics.median(t_enrol) * 1000, 1),
                        "stored_per_original": round(per_original, 1),
                        "live_n": len(live.ours),
                        "live_plain_p50_ms": round(live_p50_plain, 2),
                        "live_ours_p50_ms": round(live_p50_ours, 2),
                        "live_ratio_p50": round(live_p50_ours / live_p50_plain, 3),
                        "live_ratio_total": round(live_ratio, 3),
                        "live_agree": live.agree,
                        "live_compared": live.compared,
                    },
                    "originals": n,
                    "low_quality_originals": low_quality,
                    "summary": summary,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
