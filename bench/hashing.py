"""Benchmark: Vigil's one-decode hashing against the naive way, plus the pool choice.

    python -m bench.hashing [--quick] [--json]

Corpus: generated photo-like JPEG (quality 90) and PNG images from 0.3 to 12 megapixels
(``bench.imagegen``). Methods, both single-threaded and measured in the same run:

- ``vigil``: ``bot.hashing.hash_image`` — sha256/md5/sha1 over the bytes, then pHash, dHash
  and PDQ (with its 8 dihedral variants) from one reduced decode.
- ``naive``: hashlib, then ``imagehash.phash``, ``imagehash.dhash`` and
  ``pdqhash.compute``, each on its own full-resolution decode.

``pdq_max_bits_from_reference`` is the largest Hamming distance between our PDQ and
``pdqhash.compute`` on the full-resolution image, over images of PDQ quality >= 80.
The pool section hashes the corpus through ``HashPool`` with threads and with processes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import imagehash
import numpy as np
import pdqhash
from PIL import Image

from bench.imagegen import photo_corpus
from bot.hashing import HashPool, default_workers, hash_image

FULL_MP = [0.3, 0.5, 1, 2, 3, 5, 8, 12]
QUICK_MP = [0.3, 1, 3, 12]


def naive_hash(data: bytes) -> dict[str, object]:
    """The straightforward way: every library decodes the full image itself."""
    out: dict[str, object] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),
    }
    out["phash"] = str(imagehash.phash(Image.open(io.BytesIO(data))))
    out["dhash"] = str(imagehash.dhash(Image.open(io.BytesIO(data))))
    out["pdq"], out["pdq_quality"] = reference_pdq(data)
    return out


def reference_pdq(data: bytes) -> tuple[str, int]:
    """PDQ of the full-resolution image (the reference our thumbnail PDQ is held to)."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    bits, quality = pdqhash.compute(rgb)
    return np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality)


def hamming_hex(a: str, b: str) -> int:
    """Bits that differ between two equal-length hex strings."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def time_each(fn: Callable[[bytes], object], corpus: list[bytes], repeats: int) -> list[float]:
    """Seconds per call for every image, ``repeats`` passes over the corpus."""
    out = []
    for _ in range(repeats):
        for data in corpus:
            start = time.perf_counter()
            fn(data)
            out.append(time.perf_counter() - start)
    return out


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def pool_rate(kind: str, corpus: list[bytes], repeats: int) -> float:
    """Images per second through a HashPool of ``kind``, all images submitted at once."""
    pool = HashPool(kind=kind)  # type: ignore[arg-type]
    try:
        # Start every worker outside the timing (small images: a few per worker).
        small = min(corpus, key=len)
        await asyncio.gather(*(pool.hash(small) for _ in range(pool.workers * 2)))
        start = time.perf_counter()
        for _ in range(repeats):
            await asyncio.gather(*(pool.hash(d) for d in corpus))
        return repeats * len(corpus) / (time.perf_counter() - start)
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (and a JSON line with --json)."""
    ap = argparse.ArgumentParser(prog="python -m bench.hashing", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small corpus, under a minute")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    args = ap.parse_args(argv)

    sizes = QUICK_MP if args.quick else FULL_MP
    repeats = 1 if args.quick else 3
    t0 = time.perf_counter()
    named = photo_corpus(sizes, seed=7)
    corpus = [data for _, data in named]
    print(
        f"corpus: {len(corpus)} images ({', '.join(f'{m:g}' for m in sizes)} MP, JPEG+PNG), "
        f"generated in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )

    hash_image(corpus[0])  # warm imports (scipy for pHash) outside the timing
    naive_hash(corpus[0])

    # Accuracy: our PDQ against full-resolution PDQ, per image.
    per_image = []
    for name, data in named:
        ours = hash_image(data)
        ref_hex, ref_q = reference_pdq(data)
        per_image.append((name, hamming_hex(ours.pdq, ref_hex), ours.pdq_quality, ref_q))
    good = [bits for _, bits, q, rq in per_image if q >= 80 and rq >= 80]
    max_bits = max(good) if good else None

    # Interleave the methods pass by pass so drift in machine load hits both alike.
    t_vigil: list[float] = []
    t_naive: list[float] = []
    for _ in range(repeats):
        t_vigil += time_each(hash_image, corpus, 1)
        t_naive += time_each(naive_hash, corpus, 1)

    rows = []
    for method, times in (("vigil", t_vigil), ("naive", t_naive)):
        rows.append(
            {
                "method": method,
                "kind": "all",
                "n": len(times),
                "images_per_s": round(len(times) / sum(times), 2),
                "p50_ms": round(statistics.median(times) * 1000, 2),
                "p99_ms": round(pct(times, 0.99) * 1000, 2),
                "pdq_max_bits_from_reference": max_bits if method == "vigil" else 0,
            }
        )
    ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"]

    workers = default_workers()
    seq_rate = rows[0]["images_per_s"]
    thread_rate = asyncio.run(pool_rate("thread", corpus, repeats))
    process_rate = asyncio.run(pool_rate("process", corpus, repeats))

    print(f"\n{'image':<26}{'PDQ bits vs full-res':>22}{'quality ours/ref':>18}")
    for name, bits, q, rq in per_image:
        print(f"{name:<26}{bits:>22}{f'{q}/{rq}':>18}")
    print(f"\n{'method':<8}{'n':>5}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'PDQ max bits':>14}")
    for r in rows:
        print(
            f"{r['method']:<8}{r['n']:>5}{r['images_per_s']:>10.2f}{r['p50_ms']:>9.1f}"
            f"{r['p99_ms']:>9.1f}{r['pdq_max_bits_from_reference']!s:>14}"
        )
    print(
        f"ratio vigil/naive: {ratio:.1f}x (target >= 3x); "
        f"PDQ max bits at quality >= 80: {max_bits} (target <= 10)"
    )
    load = os.getloadavg()[0]
    print(
        f"\npool ({workers} workers, load average {load:.1f}): sequential {seq_rate:.1f}/s, "
        f"threads {thread_rate:.1f}/s, processes {process_rate:.1f}/s"
    )

    if args.json:
        print(
            json.dumps(
                {
                    "rows": rows,
                    "ratio": round(ratio, 2),
                    "pdq_max_bits_from_reference": max_bits,
                    "pool": {
                        "workers": workers,
                        # Parallel figures mean little when other work competes for the CPUs.
                        "load_average": round(load, 2),
                        "sequential_images_per_s": seq_rate,
                        "thread_images_per_s": round(thread_rate, 2),
                        "process_images_per_s": round(process_rate, 2),
                    },
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
