"""The matcher returns exactly what brute force returns, on random and clustered lists."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.matching import ExactIndex, HammingIndex, brute_force, plan_layout

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def flip(row: np.ndarray, bits: list[int] | np.ndarray) -> np.ndarray:
    """A copy of ``row`` with the given bit positions flipped."""
    b = np.unpackbits(row)
    b[np.asarray(bits, dtype=np.intp)] ^= 1
    return np.packbits(b)


def flip_random(rng: np.random.Generator, row: np.ndarray, count: int) -> np.ndarray:
    return flip(row, rng.choice(row.size * 8, size=count, replace=False))


def clustered(
    rng: np.random.Generator, n: int, bits: int, centres: int, spread: int
) -> tuple[np.ndarray, np.ndarray]:
    """n hashes, each a centre with 0..spread bits flipped (near-duplicates), and the centres."""
    c = rng.integers(0, 256, (centres, bits // 8), dtype=np.uint8)
    rows = np.empty((n, bits // 8), dtype=np.uint8)
    for i in range(n):
        rows[i] = flip_random(rng, c[rng.integers(centres)], int(rng.integers(0, spread + 1)))
    return rows, c


kinds = st.sampled_from([(256, 31), (64, 10), (64, 8)])
# None = the planned layout; otherwise forced slot widths, which may leave bits uncovered.
layouts = st.one_of(st.none(), st.lists(st.integers(5, 16), min_size=1, max_size=20))


def _widths(layout: list[int] | None, bits: int, max_r: int) -> list[int] | None:
    """The drawn widths that fit in ``bits``, topped up with 16-bit slots if they cannot
    cover ``max_r`` (a slot of width w covers at most w + 1)."""
    if layout is None:
        return None
    out, used = [], 0
    for w in layout:
        if used + w <= bits:
            out.append(w)
            used += w
    while sum(w + 1 for w in out) < max_r + 1:
        out.append(min(16, bits - used))
        used += out[-1]
    return out


@FAST
@given(kind=kinds, n=st.integers(0, 400), seed=st.integers(0, 2**32 - 1), layout=layouts)
def test_query_equals_brute_force_on_random_hashes(kind, n, seed, layout) -> None:
    bits, max_r = kind
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    index = HammingIndex(rows, bits, max_r, slot_widths=_widths(layout, bits, max_r))
    queries = [rng.integers(0, 256, bits // 8, dtype=np.uint8)]
    if n:  # near a stored hash, so some results exist
        queries += [flip_random(rng, rows[rng.integers(n)], int(rng.integers(0, max_r + 3)))]
    for q in queries:
        for r in range(max_r + 1):
            assert index.query(q, r) == brute_force(rows, q, r)


@FAST
@given(
    kind=kinds,
    n=st.integers(1, 400),
    centres=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    layout=layouts,
)
def test_query_equals_brute_force_on_clustered_hashes(kind, n, centres, seed, layout) -> None:
    bits, max_r = kind
    rng = np.random.default_rng(seed)
    rows, c = clustered(rng, n, bits, centres, spread=max_r + 4)
    index = HammingIndex(rows, bits, max_r, slot_widths=_widths(layout, bits, max_r))
    for k in range(3):
        q = flip_random(rng, c[k % centres], int(rng.integers(0, max_r + 1)))
        for r in range(max_r + 1):
            assert index.query(q, r) == brute_force(rows, q, r)


@FAST
@given(bits=st.sampled_from([64, 256]), n=st.integers(0, 10**8), r=st.integers(0, 64))
def test_plan_covers_radius_by_pigeonhole(bits, n, r) -> None:
    slots, thresholds = plan_layout(bits, n, r)
    assert sum(t + 1 for t in thresholds) >= r + 1
    assert all(t >= 0 for t in thresholds)
    ends = [s.start + s.width for s in slots]
    assert all(e <= s.start for e, s in zip(ends, slots[1:], strict=False))  # disjoint
    assert ends[-1] <= bits
    assert max(s.width for s in slots) <= 24


def test_ten_million_pdq_layout_uses_wide_slots() -> None:
    # DESIGN §6: 16 slots of 16 bits give ~41k candidates a query at 10M; 11 slots of
    # 23-24 bits with <= 2 flips give ~3k. Guard the plan against regressing to narrow slots.
    slots, thresholds = plan_layout(256, 10_000_000, 31)
    assert len(slots) == 11
    assert max(thresholds) == 2


def test_empty_index_matches_nothing() -> None:
    index = HammingIndex(np.zeros((0, 32), dtype=np.uint8), 256, 31)
    assert len(index) == 0
    assert index.query(bytes(32)) == []
    assert HammingIndex.from_hex([], 64, 8).query(bytes(8)) == []


def test_single_hash_at_and_beyond_the_radius_boundary() -> None:
    rng = np.random.default_rng(1)
    row = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    index = HammingIndex(row, 256, 31)
    at = flip(row[0], list(range(0, 256, 8))[:31])
    beyond = flip(row[0], list(range(0, 256, 8))[:32])
    assert index.query(at) == [(0, 31)]
    assert index.query(beyond) == []
    assert index.query(at, 30) == []
    assert index.query(row[0], 0) == [(0, 0)]
    assert index.query(flip(row[0], [255]), 0) == []


def test_duplicate_hashes_all_returned_sorted_by_distance_then_id() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 256, (2, 8), dtype=np.uint8)
    rows = np.stack([a, b, a, flip(a, [3]), a])
    index = HammingIndex(rows, 64, 8)
    assert index.query(a, 0) == [(0, 0), (2, 0), (4, 0)]
    assert index.query(a, 1) == [(0, 0), (2, 0), (4, 0), (3, 1)]


def test_from_hex_and_query_many_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, (200, 32), dtype=np.uint8)
    index = HammingIndex.from_hex([r.tobytes().hex() for r in rows], 256, 31)
    variants = np.stack([flip_random(rng, rows[i], 12) for i in range(8)])
    assert index.query_many(variants) == [brute_force(rows, v, 31) for v in variants]
    assert index.query(rows[5].tobytes()) == [(5, 0)]
    assert index.nbytes >= rows.nbytes


def test_bad_arguments_are_refused_with_a_reason() -> None:
    rows = np.zeros((3, 8), dtype=np.uint8)
    index = HammingIndex(rows, 64, 8)
    with pytest.raises(ValueError, match="radius"):
        index.query(bytes(8), 9)
    with pytest.raises(ValueError, match="8 bytes"):
        index.query(bytes(32))
    with pytest.raises(ValueError, match="shape"):
        HammingIndex(rows, 256, 31)
    with pytest.raises(ValueError, match="hex digits"):
        HammingIndex.from_hex(["abcd"], 64, 8)


def test_exact_index_finds_every_row_ignoring_hex_case() -> None:
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    index = ExactIndex([md5, "00" * 16, md5.upper()])
    assert len(index) == 3
    assert index.lookup(md5) == [0, 2]
    assert index.lookup("ff" * 16) == []
    assert len(ExactIndex([])) == 0
