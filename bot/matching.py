"""Hash matching: exact kinds by set lookup, perceptual kinds by multi-index hashing.

``HammingIndex`` answers "every stored hash within Hamming distance r of q" for
fixed-width binary hashes (256-bit PDQ, 64-bit pHash/dHash) and returns exactly
what :func:`brute_force` returns.

How it works (multi-index hashing, generalised pigeonhole): the hash is cut into m
disjoint slots; slot i is probed with every key within t_i bit flips of the query's
key in that slot. If ``sum(t_i + 1) > r`` then any hash within distance r agrees
with the query to within t_i bits in at least one slot (otherwise its distance would
be at least ``sum(t_i + 1)``), so it is among the candidates; candidates are then
verified by popcount. A slot may get t_i = -1 (not probed at all), which is how
small radii (r = 0 probes one slot) stay cheap.

Each slot is a direct-address CSR table: ``offsets`` has ``2**width + 1`` entries
and the row ids are sorted by slot key, so one probe is one O(1) slice. Wide slots
mean few candidates a query (random candidates cost a cache miss each to verify),
so the layout uses the widest slots whose tables stay affordable (at most 2**24
entries, about 2**(log2 n + 1)); the thresholds t_i come from a small dynamic
programme over an estimated cost of probes and candidates.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Cost model for choosing slot thresholds, in arbitrary units: one probe (two
# reads of a random offsets entry plus the slice) vs one candidate (a random
# gather of a full hash row plus its popcount). Measured on this machine to be of
# the same order; the plan is not sensitive to the exact ratio.
_PROBE_COST = 1.0
_CANDIDATE_COST = 1.5
_MAX_SLOT_BITS = 24  # a 2**24-entry int32 table is 64 MiB; 2**25 per slot is too much at 11 slots

Match = tuple[int, int]  # (row id, Hamming distance)


def _ball(width: int, flips: int) -> int:
    """Number of ``width``-bit keys within ``flips`` bit flips of a key."""
    return sum(math.comb(width, i) for i in range(flips + 1))


def _as_rows(hashes: np.ndarray, nbytes: int) -> np.ndarray:
    """Validate an (n, nbytes) uint8 array and return it C-contiguous."""
    arr = np.asarray(hashes)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != nbytes:
        raise ValueError(
            f"hashes must be a uint8 array of shape (n, {nbytes}), got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def _as_query(q: bytes | np.ndarray, nbytes: int) -> np.ndarray:
    """Turn one query hash (bytes or uint8 array) into a (nbytes,) uint8 array."""
    if isinstance(q, bytes | bytearray | memoryview):
        arr = np.frombuffer(bytes(q), dtype=np.uint8)
    else:
        arr = np.asarray(q, dtype=np.uint8).reshape(-1)
    if arr.shape[0] != nbytes:
        raise ValueError(f"query must be {nbytes} bytes, got {arr.shape[0]}")
    return arr


def _words(rows: np.ndarray) -> np.ndarray:
    """(n, nbytes) uint8 -> (n, nbytes//8) little-endian uint64 view (no copy on x86/ARM).

    Slots are defined on this view: bit k of the hash is bit ``k % 64`` of word
    ``k // 64``, which is also bit k of ``int.from_bytes(hash, "little")``. Any fixed
    assignment of bits to disjoint slots is correct; this one needs no byte swap.
    """
    return rows.view(np.dtype("<u8"))


def _pairwise_distance(words: np.ndarray, qwords: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of ``words`` (k, w) and ``qwords`` (w,)."""
    counts = np.bitwise_count(words ^ qwords)
    # Adding columns is ~2.5x faster than counts.sum(axis=1) on short rows.
    dist = counts[:, 0].astype(np.int32)
    for j in range(1, counts.shape[1]):
        dist += counts[:, j]
    return dist


def _sorted_matches(ids: np.ndarray, dist: np.ndarray) -> list[Match]:
    """Dedupe (id, distance) pairs by id and sort them by (distance, id)."""
    if ids.size == 0:
        return []
    uniq, first = np.unique(ids, return_index=True)
    d = dist[first]
    order = np.lexsort((uniq, d))
    return list(zip(uniq[order].tolist(), d[order].tolist(), strict=True))


def brute_force(hashes: np.ndarray, q: bytes | np.ndarray, radius: int) -> list[Match]:
    """Reference matcher: xor + popcount against every row; (id, distance) sorted."""
    arr = np.asarray(hashes)
    if arr.ndim != 2 or arr.shape[0] == 0:
        return []
    nbytes = arr.shape[1]
    qv = _as_query(q, nbytes)
    dist = np.bitwise_count(arr ^ qv).sum(axis=1, dtype=np.int32)
    ids = np.flatnonzero(dist <= radius)
    d = dist[ids]
    order = np.lexsort((ids, d))
    return list(zip(ids[order].tolist(), d[order].tolist(), strict=True))


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot of the layout: bits ``[start, start + width)`` of the hash."""

    start: int
    width: int


def _slot_widths(bits: int, slots: int) -> list[int]:
    """Cut ``bits`` into ``slots`` near-equal widths, widest first."""
    base, extra = divmod(bits, slots)
    return [base + 1] * extra + [base] * (slots - extra)


def _plan_thresholds(widths: Sequence[int], n: int, radius: int) -> tuple[list[int], float]:
    """Cheapest thresholds t_i (-1 = skip) with ``sum(t_i + 1) >= radius + 1``.

    Returns (thresholds, estimated cost per query); ``([], inf)`` when the slots
    cannot cover the radius. A knapsack over the slots, coverage capped at radius + 1.
    """
    need = radius + 1
    inf = float("inf")
    best = [0.0] + [inf] * need  # best[c]: cheapest cost reaching coverage c so far
    back: list[list[tuple[int, int]]] = []  # back[i][c]: (coverage before slot i, t_i)
    for width in widths:
        per_key = _PROBE_COST + _CANDIDATE_COST * n / float(1 << width)
        costs = [_ball(width, t) * per_key for t in range(min(width, need - 1) + 1)]
        nxt = list(best)  # t = -1: slot not probed, coverage unchanged
        step = [(c, -1) for c in range(need + 1)]
        for covered, cost in enumerate(best):
            if cost == inf:
                continue
            for t, c_t in enumerate(costs):
                c2 = min(need, covered + t + 1)
                if cost + c_t < nxt[c2]:
                    nxt[c2] = cost + c_t
                    step[c2] = (covered, t)
        back.append(step)
        best = nxt
    if best[need] == inf:
        return [], inf
    ts, c = [], need
    for step in reversed(back):
        c, t = step[c]
        ts.append(t)
    return ts[::-1], best[need]


def plan_layout(bits: int, n: int, max_radius: int) -> tuple[list[Slot], list[int]]:
    """Choose slots (and their thresholds at ``max_radius``) for n hashes of ``bits`` bits.

    Only slots that are probed at ``max_radius`` are returned; smaller radii probe
    a subset of them with smaller thresholds.
    """
    cap = min(_MAX_SLOT_BITS, max(8, math.ceil(math.log2(max(n, 2))) + 1), bits)
    best: tuple[float, list[int], list[int]] | None = None
    for m in range(math.ceil(bits / cap), bits + 1):
        widths = _slot_widths(bits, m)
        ts, cost = _plan_thresholds(widths, n, max_radius)
        if best is None or cost < best[0]:
            best = (cost, widths, ts)
        if m > max_radius + 1:
            break  # more slots than radius + 1 never helps: each t_i can be 0
    assert best is not None
    _, widths, ts = best
    slots, thresholds, start = [], [], 0
    for width, t in zip(widths, ts, strict=True):
        if t >= 0:
            slots.append(Slot(start, width))
            thresholds.append(t)
        start += width
    return slots, thresholds


def _flip_masks(width: int, flips: int) -> np.ndarray:
    """All ``width``-bit masks with at most ``flips`` bits set, as int64."""
    masks = [0]
    frontier = [0]
    # Grow by setting one bit above the highest set bit: each mask generated once.
    for _ in range(flips):
        nxt = []
        for m in frontier:
            low = m.bit_length()
            nxt.extend(m | (1 << b) for b in range(low, width))
        masks.extend(nxt)
        frontier = nxt
    return np.asarray(masks, dtype=np.int64)


def _slot_keys(words: np.ndarray, slot: Slot) -> np.ndarray:
    """The slot's key for every row of ``words`` (n, w) as int64."""
    wi, off = divmod(slot.start, 64)
    mask = np.uint64((1 << slot.width) - 1)
    key = words[:, wi] >> np.uint64(off)
    if off + slot.width > 64:
        key |= words[:, wi + 1] << np.uint64(64 - off)
    key &= mask
    return key.astype(np.int64)


@dataclass(frozen=True, slots=True)
class _Probes:
    """Everything one radius needs to turn the query's slot keys into table rows."""

    slot_of_probe: np.ndarray  # which slot key each probe flips
    masks: np.ndarray  # the flip mask of each probe
    base: np.ndarray  # where that slot's table starts in the concatenated offsets


class HammingIndex:
    """All stored hashes within Hamming distance r of a query, equal to brute force."""

    def __init__(
        self,
        hashes: np.ndarray,
        bits: int,
        max_radius: int,
        *,
        slot_widths: Sequence[int] | None = None,
    ) -> None:
        """Build the index over ``hashes`` ((n, bits//8) uint8; row i is id i).

        Like ``np.asarray``, a C-contiguous uint8 array is kept without copying (a
        10M-row PDQ list is 320 MB), so do not modify it afterwards. ``slot_widths``
        overrides the planned layout (widths summing to at most ``bits``; thresholds
        are still planned) and exists for tests and benchmarks.
        """
        if bits <= 0 or bits % 64:
            raise ValueError(f"bits must be a positive multiple of 64, got {bits}")
        if not 0 <= max_radius <= bits:
            raise ValueError(f"max_radius must be in 0..{bits}, got {max_radius}")
        self.bits = bits
        self.max_radius = max_radius
        rows = _as_rows(hashes, bits // 8)
        self._n = rows.shape[0]
        self._rows = rows
        self._words = _words(rows)
        if slot_widths is None:
            self.slots, _ = plan_layout(bits, self._n, max_radius)
        else:
            if sum(slot_widths) > bits or min(slot_widths, default=1) <= 0:
                raise ValueError(f"slot widths {list(slot_widths)} do not fit in {bits} bits")
            if max(slot_widths, default=0) > 30:
                raise ValueError("slot widths above 30 bits need too much memory")
            if sum(w + 1 for w in slot_widths) < max_radius + 1:
                raise ValueError(
                    f"slot widths {list(slot_widths)} cannot cover radius {max_radius}"
                )
            starts = np.cumsum([0, *slot_widths[:-1]]).tolist()
            self.slots = [Slot(s, w) for s, w in zip(starts, slot_widths, strict=True)]
        self._widths = [s.width for s in self.slots]
        self._build()
        self._probes: dict[int, _Probes] = {}
        self._probes_for(max_radius)  # so the first query is not the slow one
        log.debug(
            "hamming index built n=%d bits=%d max_radius=%d slots=%s",
            self._n,
            bits,
            max_radius,
            self._widths,
        )

    def _build(self) -> None:
        n, m = self._n, len(self.slots)
        pos_dtype = np.int32 if m * n + 1 < 2**31 else np.int64
        id_dtype = np.int32 if n < 2**31 else np.int64
        id_bits = max(1, (n - 1).bit_length())
        sizes = [(1 << s.width) + 1 for s in self.slots]
        self._table_base = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        # One array for all tables (and one for all id lists) so a query gathers from
        # each with a single np.take; preallocated so the build never holds two copies.
        self._offsets = np.zeros(max(1, sum(sizes)), dtype=pos_dtype)
        self._ids = np.empty(m * n, dtype=id_dtype)
        for i, slot in enumerate(self.slots):
            keys = _slot_keys(self._words, slot)
            table = self._offsets[self._table_base[i] : self._table_base[i] + sizes[i]]
            table[0] = i * n
            np.cumsum(np.bincount(keys, minlength=1 << slot.width), out=table[1:])
            table[1:] += i * n
            out = self._ids[i * n : (i + 1) * n]
            if slot.width + id_bits <= 63:
                # Sorting (key << id_bits | id) is a plain integer sort, faster than argsort.
                keys <<= id_bits
                keys |= np.arange(n, dtype=np.int64)
                keys.sort()
                keys &= (1 << id_bits) - 1
                out[:] = keys
            else:
                out[:] = np.argsort(keys, kind="stable")
            del keys

    def _probes_for(self, radius: int) -> _Probes:
        probes = self._probes.get(radius)
        if probes is None:
            ts, _ = _plan_thresholds(self._widths, self._n, radius)
            slot_of, masks, base = [], [], []
            for i, t in enumerate(ts):
                if t < 0:
                    continue
                mk = _flip_masks(self._widths[i], t)
                masks.append(mk)
                slot_of.append(np.full(mk.shape[0], i, dtype=np.intp))
                base.append(np.full(mk.shape[0], self._table_base[i], dtype=np.int64))
            probes = _Probes(np.concatenate(slot_of), np.concatenate(masks), np.concatenate(base))
            self._probes[radius] = probes
        return probes

    def _query_keys(self, qrow: np.ndarray) -> np.ndarray:
        # Same bit order as _words/_slot_keys, with Python ints: cheaper for one row.
        value = int.from_bytes(qrow.tobytes(), "little")
        return np.array(
            [(value >> s.start) & ((1 << s.width) - 1) for s in self.slots], dtype=np.int64
        )

    def query(self, q: bytes | np.ndarray, radius: int | None = None) -> list[Match]:
        """(id, distance) of every stored hash within ``radius`` of q, by (distance, id)."""
        r = self.max_radius if radius is None else radius
        if not 0 <= r <= self.max_radius:
            raise ValueError(f"radius must be in 0..{self.max_radius}, got {r}")
        qrow = _as_query(q, self.bits // 8)
        if self._n == 0:
            return []
        return self._query_row(qrow, r)

    def _candidates(self, qrow: np.ndarray, r: int) -> np.ndarray:
        """Row ids found by the probes (with repeats across slots), before verification."""
        p = self._probes_for(r)
        rows = (self._query_keys(qrow)[p.slot_of_probe] ^ p.masks) + p.base
        # np.take, not fancy indexing: several times faster for gathers from big arrays.
        starts = np.take(self._offsets, rows)
        lengths = np.take(self._offsets, rows + 1) - starts
        total = int(lengths.sum())
        # Concatenate the slices [start, start + length) without a Python loop.
        shift = starts - (np.cumsum(lengths) - lengths)
        positions = np.repeat(shift, lengths) + np.arange(total, dtype=shift.dtype)
        return np.take(self._ids, positions)

    def _query_row(self, qrow: np.ndarray, r: int) -> list[Match]:
        cand = self._candidates(qrow, r)
        if cand.size == 0:
            return []
        dist = _pairwise_distance(np.take(self._words, cand, axis=0), _words(qrow[None, :])[0])
        hit = dist <= r
        return _sorted_matches(cand[hit], dist[hit])

    def candidate_count(self, q: bytes | np.ndarray, radius: int | None = None) -> int:
        """How many candidates (with repeats) a query verifies; for benchmarks and tuning."""
        r = self.max_radius if radius is None else radius
        if self._n == 0:
            return 0
        return int(self._candidates(_as_query(q, self.bits // 8), r).size)

    def query_many(self, qs: np.ndarray, radius: int | None = None) -> list[list[Match]]:
        """``query`` for each row of qs (e.g. the 8 PDQ dihedral variants of one image)."""
        arr = np.asarray(qs, dtype=np.uint8).reshape(-1, self.bits // 8)
        return [self.query(row, radius) for row in arr]

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays, in bytes."""
        return int(self._rows.nbytes + self._offsets.nbytes + self._ids.nbytes)

    @staticmethod
    def from_hex(hex_list: Sequence[str], bits: int, max_radius: int) -> HammingIndex:
        """Build from hex strings (``bits // 4`` hex digits each; row i is id i)."""
        nbytes = bits // 8
        if not hex_list:
            return HammingIndex(np.zeros((0, nbytes), dtype=np.uint8), bits, max_radius)
        for lineno, h in enumerate(hex_list):
            if len(h) != 2 * nbytes:
                raise ValueError(f"hash {lineno}: expected {2 * nbytes} hex digits, got {len(h)}")
        raw = bytes.fromhex("".join(hex_list))
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, nbytes)
        return HammingIndex(rows, bits, max_radius)


class ExactIndex:
    """Set lookup for exact hash kinds (sha256, sha1, md5 hex strings)."""

    def __init__(self, values: Iterable[str]) -> None:
        """Index ``values``; the i-th value gets id i. Hex case is ignored."""
        table: defaultdict[str, list[int]] = defaultdict(list)
        n = 0
        for n, v in enumerate(values, start=1):
            table[v.strip().lower()].append(n - 1)
        self._table = dict(table)
        self._n = n

    def lookup(self, value: str) -> list[int]:
        """Ids of every row holding ``value`` (empty if none)."""
        return list(self._table.get(value.strip().lower(), ()))

    def __len__(self) -> int:
        return self._n
