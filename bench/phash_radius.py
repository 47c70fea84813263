"""Measurement: which Hamming radius for 64-bit pHash/dHash lists (and how PDQ compares).

    python -m bench.phash_radius [--quick] [--json]

Corpus: generated photo-like images (``bench.imagegen``), each hashed by Vigil's own
``hash_image`` as a PNG original and as edited copies: JPEG recompression (q 50),
resized to 50 %, resized + recompressed, cropped 3 % a side, brightened 10 %, blurred,
and mirrored. For each kind and each radius the table gives the share of edited copies
within the radius of their original (recall, higher is better) and the share of pairs
of *distinct* originals within it (false matches, must stay at 0). Mirrors are listed
apart: pHash and dHash are not flip-invariant (PDQ catches mirrors through its
dihedral variants), so they do not count against the radius.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from itertools import combinations

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from bench.imagegen import encode, make_image
from bot.hashing import hash_image

RADII = (4, 6, 8, 10, 12, 14, 16)
KINDS = ("phash", "dhash", "pdq")


def _jpeg(img: Image.Image, q: int) -> bytes:
    return encode(img, "JPEG", quality=q)


def _crop(img: Image.Image, share: float) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * share), int(h * share)
    return img.crop((dx, dy, w - dx, h - dy))


EDITS: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg-q50": lambda im: _jpeg(im, 50),
    "resize-50%": lambda im: encode(im.resize((im.width // 2, im.height // 2)), "PNG"),
    "resize+jpeg-q60": lambda im: _jpeg(im.resize((im.width * 2 // 3, im.height * 2 // 3)), 60),
    "crop-3%": lambda im: _jpeg(_crop(im, 0.03), 85),
    "brighter-10%": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.1), 85),
    "blur-r1": lambda im: _jpeg(im.filter(ImageFilter.GaussianBlur(1)), 85),
}
MIRROR = "mirror"


def bits(a: str, b: str) -> int:
    """Hamming distance of two equal-length hex strings."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def measure(n: int, size: tuple[int, int]) -> dict[str, object]:
    """Distances of edited copies and of distinct pairs, per kind."""
    originals = []
    edited: dict[str, list[dict[str, int]]] = {e: [] for e in [*EDITS, MIRROR]}
    for seed in range(n):
        img = make_image(10_000 + seed, *size)
        h0 = hash_image(encode(img, "PNG"))
        originals.append(h0)
        for name, edit in EDITS.items():
            h = hash_image(edit(img))
            edited[name].append({k: bits(getattr(h0, k), getattr(h, k)) for k in KINDS})
        hm = hash_image(encode(ImageOps.mirror(img), "PNG"))
        d = {k: bits(getattr(h0, k), getattr(hm, k)) for k in ("phash", "dhash")}
        d["pdq"] = min(bits(v, hm.pdq) for v in h0.pdq_dihedral)  # what the matcher does
        edited[MIRROR].append(d)
    distinct = {
        k: [bits(getattr(a, k), getattr(b, k)) for a, b in combinations(originals, 2)]
        for k in KINDS
    }
    return {"edited": edited, "distinct": distinct}


def table(result: dict[str, object], n: int) -> list[dict[str, object]]:
    """One row per kind and radius: recall on edits, false matches on distinct pairs."""
    edited: dict[str, list[dict[str, int]]] = result["edited"]  # type: ignore[assignment]
    distinct: dict[str, list[int]] = result["distinct"]  # type: ignore[assignment]
    rows = []
    for kind in KINDS:
        radii = (*RADII, 31) if kind == "pdq" else RADII
        for r in radii:
            copies = [d[kind] for e in EDITS for d in edited[e]]
            rows.append(
                {
                    "method": "vigil",
                    "kind": kind,
                    "n": n,
                    "radius": r,
                    "recall_edits": round(sum(x <= r for x in copies) / len(copies), 3),
                    "recall_mirror": round(sum(d[kind] <= r for d in edited[MIRROR]) / n, 3),
                    "false_match_rate": round(
                        sum(x <= r for x in distinct[kind]) / len(distinct[kind]), 5
                    ),
                    "max_edit_bits": max(copies),
                    "min_distinct_bits": min(distinct[kind]),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print the tables (and JSON with --json)."""
    ap = argparse.ArgumentParser(prog="python -m bench.phash_radius", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="30 images (under a minute)")
    ap.add_argument("--json", action="store_true", help="JSON object on the last line")
    args = ap.parse_args(argv)
    n = 30 if args.quick else 120
    started = time.perf_counter()
    result = measure(n, (640, 480))
    rows = table(result, n)
    edited: dict[str, list[dict[str, int]]] = result["edited"]  # type: ignore[assignment]
    print(f"{n} generated images 640x480, {n * (n - 1) // 2} distinct pairs")
    print("\nEdited copy vs its original, Hamming bits: median / max")
    print(f"{'edit':<18}" + "".join(f"{k:>14}" for k in KINDS))
    for e in [*EDITS, MIRROR]:
        cells = []
        for k in KINDS:
            xs = sorted(d[k] for d in edited[e])
            cells.append(f"{xs[len(xs) // 2]:>6} / {xs[-1]:<5}")
        print(f"{e:<18}" + "".join(f"{c:>14}" for c in cells))
    distinct: dict[str, list[int]] = result["distinct"]  # type: ignore[assignment]
    print(
        f"{'distinct pairs':<18}" + "".join(f"{'min ' + str(min(distinct[k])):>14}" for k in KINDS)
    )
    print("\nRadius: recall on edits (mirror excluded) / mirror recall / false-match rate")
    print(f"{'kind':<7}{'radius':>7}{'recall':>9}{'mirror':>9}{'false':>10}")
    for r in rows:
        print(
            f"{r['kind']:<7}{r['radius']:>7}{r['recall_edits']:>9.3f}"
            f"{r['recall_mirror']:>9.3f}{r['false_match_rate']:>10.5f}"
        )
    print(f"\n({time.perf_counter() - started:.1f} s)")
    if args.json:
        print(json.dumps({"rows": rows, "images": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
