"""Benchmark: Vigil's multi-index Hamming matcher against faiss flat and numpy brute force.

    python -m bench.matching [--quick] [--json] [--phash-radius 8,10] [--queries 200]

Data (generated, seeded): 256-bit PDQ lists of 1M and 10M uniformly random hashes and
a *clustered* list (real lists hold families of near-duplicates: each hash is a centre
with 0-24 bits flipped, centres drawn with a skew so a few families are large), and
64-bit pHash lists of the same two shapes. Queries, one at a time:

- ``near``: a stored hash with 10-25 bits flipped (PDQ) or 1..radius bits (pHash);
- ``far``: a uniformly random hash (almost never within the radius of anything).

Methods, all measured in this run on the same queries:

- ``vigil-mih``: ``bot.matching.HammingIndex`` (numpy, single thread);
- ``faiss-flat``: ``faiss.IndexBinaryFlat.range_search``, which keeps distances
  strictly below its radius, so it is called with radius + 1 (checked at start);
  one thread by default like ours (``--faiss-threads``): on this shared 2-core machine
  its OpenMP threads contend and 2 threads measured 3-5x *slower* (40-74 ms vs 12-14 ms);
- ``numpy-brute``: ``bot.matching.brute_force`` (1M lists only: about 0.4 s a query at 10M).

Columns: p50/p99 ms per query; ``build_s``; ``rss_mb`` = the process's resident
memory right after that method's index is built (the process then holds the list's
own array, shared by vigil-mih and numpy-brute, and that one index; other indexes
are freed first); ``index_mb`` = the index's own arrays; ``identical`` = this
method's (id, distance) lists equal every other method's on every common query.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bot.matching import HammingIndex, Match, brute_force

try:
    import faiss
except ImportError:  # the bench extra; the table says it was skipped
    faiss = None

PDQ_RADIUS = 31
# pHash radius: a parameter, chosen by the hashing helper's false/true positive
# measurements. Benchmarked at 8 and 10, the usual near-duplicate range for 64-bit
# DCT hashes; at 10M uniformly random 64-bit hashes the expected number of chance
# matches a query is 0.003 at r = 8 and 0.08 at r = 10 (real pHashes are not uniform,
# so that is a lower bound).
PHASH_RADII = (8, 10)


def rss_mb() -> float:
    """Current resident memory of this process, MiB (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def flip_bits(rng: np.random.Generator, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Copy of rows with ``counts[i]`` random bits of row i flipped (distinct positions)."""
    out = rows.copy()
    bits = rows.shape[1] * 8
    kmax = int(counts.max(initial=0))
    if kmax == 0:
        return out
    # Distinct positions per row: the first kmax of a random permutation-ish draw.
    pos = np.argsort(rng.random((rows.shape[0], bits), dtype=np.float32), axis=1)[:, :kmax]
    idx = np.arange(rows.shape[0])
    for j in range(kmax):
        live = counts > j
        p = pos[live, j]
        out[idx[live], p >> 3] ^= (1 << (7 - (p & 7))).astype(np.uint8)
    return out


def random_list(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    """n uniformly random hashes."""
    return rng.integers(0, 256, (n, nbytes), dtype=np.uint8)


def clustered_list(
    rng: np.random.Generator, n: int, nbytes: int, spread: int, chunk: int = 1 << 20
) -> np.ndarray:
    """n hashes in families: a centre with 0..spread bits flipped; skewed family sizes."""
    centres = random_list(rng, max(1, n // 16), nbytes)
    out = np.empty((n, nbytes), dtype=np.uint8)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        # u**2 skews towards low centre ids: the largest family holds ~0.1% of the list.
        which = (centres.shape[0] * rng.random(hi - lo) ** 2).astype(np.int64)
        counts = rng.integers(0, spread + 1, hi - lo)
        out[lo:hi] = flip_rows_sparse(rng, centres[which], counts)
    return out


def flip_rows_sparse(rng: np.random.Generator, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Like flip_bits but cheap for big arrays: positions may repeat, so 'at most' counts."""
    out = rows.copy()
    bits = rows.shape[1] * 8
    idx = np.arange(rows.shape[0])
    for j in range(int(counts.max(initial=0))):
        live = counts > j
        p = rng.integers(0, bits, int(live.sum()))
        out[idx[live], p >> 3] ^= (1 << (7 - (p & 7))).astype(np.uint8)
    return out


@dataclass
class Result:
    """Timings and answers of one method on one (list, query set)."""

    method: str
    build_s: float
    rss_mb: float
    index_mb: float
    times: dict[str, list[float]] = field(default_factory=dict)
    answers: dict[str, list[list[Match]]] = field(default_factory=dict)


def run_queries(fn: Callable[[np.ndarray], list[Match]], queries: np.ndarray) -> tuple:
    """Call fn on each query once (after one warm-up); seconds and answers."""
    fn(queries[0])
    times, answers = [], []
    for q in queries:
        start = time.perf_counter()
        ans = fn(q)
        times.append(time.perf_counter() - start)
        answers.append(ans)
    return times, answers


def faiss_range(index: object, q: np.ndarray, radius: int) -> list[Match]:
    """faiss binary range search as sorted (id, distance); faiss keeps d < radius."""
    _, dist, ids = index.range_search(q[None, :], radius + 1)
    order = np.lexsort((ids, dist))
    return list(zip(ids[order].tolist(), dist[order].astype(int).tolist(), strict=True))


def check_faiss_boundary() -> bool:
    """True if faiss's binary range search excludes distance == radius (so we pass r + 1)."""
    rows = np.zeros((2, 8), dtype=np.uint8)
    rows[1, 0] = 0b0000_0111  # distance 3 from row 0
    index = faiss.IndexBinaryFlat(64)
    index.add(rows)
    _, _, ids = index.range_search(rows[:1], 3)
    return ids.tolist() == [0]


def bench_list(
    kind: str,
    dataset: str,
    rows: np.ndarray,
    queries: dict[str, np.ndarray],
    radii: tuple[int, ...],
    brute_queries: int,
) -> list[dict]:
    """Every method on one list; returns JSON rows (one per method, query set, radius)."""
    bits = rows.shape[1] * 8
    n = rows.shape[0]
    max_r = max(radii)
    results: list[Result] = []

    gc.collect()
    start = time.perf_counter()
    ours = HammingIndex(rows, bits, max_r)
    res = Result("vigil-mih", time.perf_counter() - start, rss_mb(), ours.nbytes / 2**20)
    cands: dict[str, float] = {}
    for r in radii:
        for qname, qs in queries.items():
            key = f"{qname}@{r}"
            res.times[key], res.answers[key] = run_queries(
                lambda q, r=r, ix=ours: ix.query(q, r), qs
            )
            cands[key] = statistics.median(ours.candidate_count(q, r) for q in qs)
    results.append(res)
    del ours
    gc.collect()

    if faiss is not None:
        start = time.perf_counter()
        flat = faiss.IndexBinaryFlat(bits)
        flat.add(rows)
        res = Result("faiss-flat", time.perf_counter() - start, rss_mb(), rows.nbytes / 2**20)
        for r in radii:
            for qname, qs in queries.items():
                key = f"{qname}@{r}"
                res.times[key], res.answers[key] = run_queries(
                    lambda q, r=r, ix=flat: faiss_range(ix, q, r), qs
                )
        results.append(res)
        del flat
        gc.collect()

    if brute_queries:
        res = Result("numpy-brute", 0.0, rss_mb(), 0.0)
        for r in radii:
            for qname, qs in queries.items():
                key = f"{qname}@{r}"
                res.times[key], res.answers[key] = run_queries(
                    lambda q, r=r: brute_force(rows, q, r), qs[:brute_queries]
                )
        results.append(res)

    out = []
    for res in results:
        for key, times in res.times.items():
            qname, r = key.split("@")
            mine = res.answers[key]
            identical = all(
                other.answers[key][: len(mine)] == mine[: len(other.answers[key])]
                for other in results
                if other is not res
            )
            ms = sorted(t * 1e3 for t in times)
            row = {
                "method": res.method,
                "kind": kind,
                "dataset": dataset,
                "query": qname,
                "radius": int(r),
                "n": n,
                "queries": len(times),
                "p50_ms": round(statistics.median(ms), 4),
                "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 4),
                "build_s": round(res.build_s, 2),
                "rss_mb": round(res.rss_mb, 1),
                "index_mb": round(res.index_mb, 1),
                "identical": identical,
                "matches_p50": statistics.median(len(a) for a in mine),
            }
            if res.method == "vigil-mih":
                row["candidates_p50"] = cands[key]
            out.append(row)
    return out


def make_queries(
    rng: np.random.Generator, rows: np.ndarray, count: int, near_flips: tuple[int, int]
) -> dict[str, np.ndarray]:
    """``near`` (a stored hash with near_flips[0]..near_flips[1] bits flipped) and ``far``."""
    base = rows[rng.integers(0, rows.shape[0], count)]
    flips = rng.integers(near_flips[0], near_flips[1] + 1, count)
    return {
        "near": flip_bits(rng, base, flips),
        "far": random_list(rng, count, rows.shape[1]),
    }


def print_table(rows: list[dict]) -> None:
    """One line per row, with the speed-up of vigil-mih over faiss-flat."""
    ref = {
        (r["kind"], r["dataset"], r["n"], r["query"], r["radius"]): r["p50_ms"]
        for r in rows
        if r["method"] == "faiss-flat"
    }
    head = (
        f"{'method':<12}{'kind':<6}{'dataset':<10}{'n':>10}{'query':>6}{'r':>4}"
        f"{'p50 ms':>10}{'p99 ms':>10}{'vs faiss':>9}{'build s':>9}{'rss MB':>8}"
        f"{'index MB':>9}{'cand':>8}{'same':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        f = ref.get((r["kind"], r["dataset"], r["n"], r["query"], r["radius"]))
        ratio = f"{f / r['p50_ms']:.1f}x" if f and r["p50_ms"] else "-"
        print(
            f"{r['method']:<12}{r['kind']:<6}{r['dataset']:<10}{r['n']:>10}{r['query']:>6}"
            f"{r['radius']:>4}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{ratio:>9}"
            f"{r['build_s']:>9.2f}{r['rss_mb']:>8.0f}{r['index_mb']:>9.0f}"
            f"{r.get('candidates_p50', ''):>8}{'yes' if r['identical'] else 'NO':>6}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table (and one JSON object last with --json)."""
    ap = argparse.ArgumentParser(prog="python -m bench.matching", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1M lists only (under a minute)")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    ap.add_argument("--queries", type=int, default=0, help="queries per set (default 200/100)")
    ap.add_argument(
        "--phash-radius",
        default=",".join(map(str, PHASH_RADII)),
        help="comma-separated pHash radii to measure (default %(default)s)",
    )
    ap.add_argument("--faiss-threads", type=int, default=1, help="OpenMP threads for faiss")
    args = ap.parse_args(argv)
    phash_radii = tuple(sorted(int(x) for x in args.phash_radius.split(",")))
    nq = args.queries or (100 if args.quick else 200)
    brute_q = min(nq, 50)
    wall = time.perf_counter()
    rng = np.random.default_rng(20240531)

    faiss_strict = None
    if faiss is None:
        print("faiss not installed (pip install faiss-cpu): faiss-flat skipped", file=sys.stderr)
    else:
        faiss.omp_set_num_threads(args.faiss_threads)
        faiss_strict = check_faiss_boundary()
        if not faiss_strict:
            print("warning: faiss range_search includes d == radius here", file=sys.stderr)

    # (kind, dataset, n, radii, brute?)
    sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000]
    plan = []
    for n in sizes:
        for dataset in ("random", "clustered"):
            plan.append(("pdq", dataset, n, (PDQ_RADIUS,)))
    for dataset in ("random", "clustered"):
        plan.append(("phash", dataset, 1_000_000 if args.quick else 10_000_000, phash_radii))

    rows: list[dict] = []
    for kind, dataset, n, radii in plan:
        nbytes = 32 if kind == "pdq" else 8
        t0 = time.perf_counter()
        if dataset == "random":
            data = random_list(rng, n, nbytes)
        else:
            data = clustered_list(rng, n, nbytes, spread=24 if kind == "pdq" else 4)
        near = (10, 25) if kind == "pdq" else (1, max(radii))
        queries = make_queries(rng, data, nq, near)
        print(
            f"# {kind} {dataset} n={n:,}: generated in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        brute = brute_q if (kind == "pdq" and n <= 1_000_000) else 0
        rows += bench_list(kind, dataset, data, queries, radii, brute)
        del data, queries
        gc.collect()

    print_table(rows)
    wall = time.perf_counter() - wall
    print(
        f"peak rss {peak_rss_mb():.0f} MB, wall {wall:.0f} s, faiss threads "
        f"{faiss.omp_get_max_threads() if faiss else '-'}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "rows": rows,
                    "quick": args.quick,
                    "faiss_range_is_strict": faiss_strict,
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                    "wall_s": round(wall, 1),
                    "rss_note": "rss_mb = process VmRSS right after building that index",
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
