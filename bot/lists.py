"""The hash lists in force: imported, indexed, matched, reloaded, plus the local bank.

``ListRegistry`` turns the ``[[list]]`` declarations of the rules files into indexes:
exact kinds (sha256, sha1, md5) as sorted arrays searched by bisection, perceptual
kinds (PDQ 256-bit, pHash/dHash 64-bit) as :class:`bot.matching.HammingIndex`. Imports
run in a thread and are cached under ``<data_dir>/lists-cache`` keyed by the file's
path, mtime and size, so a restart does not parse a 10-million-line file again.

Matching one image: the exact hashes, PDQ (only when its quality is at least 50) and,
when the list allows it, the 8 dihedral variants of PDQ (rotated and mirrored copies;
the distance is the smallest over the variants), pHash, dHash, and the perceptual
hashes of an animation's extra frames. An allow-list overrides: when one matches an
image, every other match of that image is dropped and the image counts as allowed.

The **local bank** (``local-bank``) is Vigil's own list, kept in the database: when a
moderator takes an image down, its hashes go in (``bank_add``) so the same image
posted again is caught automatically, by exact hash or by PDQ within 31 bits
(rotations and mirrors included). When Vigil has the original's bytes (a takedown that
can fetch them again, ``vigil bank add``) it also banks the enrolment variants of
:mod:`bot.variants` (``bank_enrol``): PDQs of crops (confident tier, like any PDQ) and
``lowfreq`` hashes (review tier). A scanned image is matched with its query hashes
(``match_query``): its own, the PDQs of the picture cut out of a frame and at the
variants' scale, and its ``lowfreq`` hashes.

Every match has a tier (:func:`bot.tiers.tier_of`); a list reports only the tiers its
declaration names (``tiers``, both by default).

A reload (``reload``) re-imports only lists whose file or declaration changed; a list
that fails to import keeps its previous version in force and the failure is recorded
as a problem an operator will see.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bot.clock import Clock, SystemClock
from bot.hashing import ImageHashes, ImageRejected
from bot.hashlists import (
    KIND_HEX_LEN,
    HashListError,
    KindTable,
    ListFormat,
    import_list,
    load_cache,
    save_cache,
)
from bot.matching import HammingIndex
from bot.model import Match, Severity
from bot.rules import LOCAL_BANK, ListSpec, RuleSet
from bot.store import Store
from bot.tiers import CONFIDENT, REVIEW_LOWFREQ_DISTANCE, strictest, tier_of, verdict
from bot.variants import LOWFREQ_BITS, EnrolmentHashes, QueryHashes

log = logging.getLogger(__name__)

EXACT_KINDS = ("sha256", "sha1", "md5")
HASH_BITS = {"pdq": 256, "phash": 64, "dhash": 64, "lowfreq": LOWFREQ_BITS}
# Meta's guidance: PDQ hashes of quality below 50 (flat, featureless images) match
# far too much to be used.
MIN_PDQ_QUALITY = 50
LOWFREQ = "lowfreq"

# The local bank behaves like a declared list with these settings.
BANK_SPEC = ListSpec(
    name=LOCAL_BANK,
    file=Path("(database table bank)"),
    format="bank",
    kinds=(*EXACT_KINDS, "pdq", "phash", "dhash", LOWFREQ),
    # pHash/dHash catch what PDQ misses on a repost: crops (docs/hashing.md). The bank is
    # small, so their wider net costs no false matches worth counting. lowfreq is only
    # ever review tier (docs/robustness.md).
    max_distance={"pdq": 31, "phash": 8, "dhash": 8, LOWFREQ: REVIEW_LOWFREQ_DISTANCE},
    severity=Severity.CRITICAL,
    category=LOCAL_BANK,
    dihedral=True,
    allow=False,
    verdict="block",
    declared_in="(built in)",
)


@dataclass(frozen=True, slots=True)
class MatchResult:
    """What the lists say about one image: its matches, or the allow-list that cleared it."""

    matches: tuple[Match, ...] = ()
    allowed_by: str | None = None


@dataclass(frozen=True, slots=True)
class ListStatus:
    """One list as loaded: how many entries, from what, and any trouble."""

    name: str
    entries: int
    by_kind: dict[str, int]
    source: str
    problems: int = 0
    error: str | None = None  # the last reload failed; the previous version stays


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload did to each list."""

    rebuilt: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


class ExactTable:
    """Exact lookup of fixed-width hashes: a sorted array searched by bisection.

    About the raw hash bytes plus 8 bytes a row, where a Python set of strings of
    10 million MD5s would cost over a gigabyte.
    """

    def __init__(self, values: np.ndarray) -> None:
        """Index ``values`` ((n, nbytes) uint8; row i is id i)."""
        rows = np.ascontiguousarray(values, dtype=np.uint8)
        self._nbytes = rows.shape[1]
        self._dtype = np.dtype((np.void, self._nbytes))
        keys = rows.view(self._dtype).ravel()
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    def lookup(self, hex_value: str) -> int | None:
        """The id of a row equal to ``hex_value`` (lowercase or not), or None."""
        try:
            raw = bytes.fromhex(hex_value)
        except ValueError:
            return None
        if len(raw) != self._nbytes or not self._sorted.size:
            return None
        q = np.frombuffer(raw, dtype=self._dtype)[0]
        i = int(np.searchsorted(self._sorted, q))
        if i < self._sorted.size and self._sorted[i] == q:
            return int(self._order[i])
        return None

    def __len__(self) -> int:
        return int(self._sorted.size)


@dataclass
class LoadedList:
    """One list's indexes, with the declaration and file state they were built from."""

    spec: ListSpec
    key: tuple[Any, ...]
    tables: dict[str, KindTable]
    exact: dict[str, ExactTable] = field(default_factory=dict)
    hamming: dict[str, HammingIndex] = field(default_factory=dict)
    problems: int = 0

    @property
    def entries(self) -> int:
        """Live entries over all kinds."""
        return sum(len(t) for t in self.tables.values())

    def status(self, error: str | None = None) -> ListStatus:
        """This list's :class:`ListStatus`."""
        return ListStatus(
            self.spec.name,
            self.entries,
            {k: len(t) for k, t in self.tables.items()},
            str(self.spec.file),
            self.problems,
            error,
        )


def _build(
    spec: ListSpec, key: tuple[Any, ...], tables: dict[str, KindTable], problems: int
) -> LoadedList:
    """Index every kind of a list (CPU-bound: run in a thread for big lists)."""
    loaded = LoadedList(spec, key, dict(tables), problems=problems)
    for kind, table in tables.items():
        if not len(table):
            continue
        if kind in EXACT_KINDS:
            loaded.exact[kind] = ExactTable(table.values)
        elif kind in HASH_BITS:
            radius = spec.max_distance.get(kind, 0)
            loaded.hamming[kind] = HammingIndex(table.values, HASH_BITS[kind], radius)
    return loaded


def _import_key(spec: ListSpec) -> tuple[Any, ...]:
    """What decides whether a list must be imported again: the file and how it is read."""
    st = spec.file.stat()
    return (
        str(spec.file.resolve()),
        st.st_mtime_ns,
        st.st_size,
        spec.format,
        tuple(sorted(spec.kinds)),
    )


def _index_key(spec: ListSpec, import_key: tuple[Any, ...]) -> tuple[Any, ...]:
    """Import key plus what shapes the indexes (the radii)."""
    radii = tuple(sorted((k, spec.max_distance.get(k, 0)) for k in HASH_BITS))
    return (*import_key, radii)


def _cache_path(cache_dir: Path, spec: ListSpec, import_key: tuple[Any, ...]) -> Path:
    digest = hashlib.sha256(repr(import_key).encode()).hexdigest()[:24]
    return cache_dir / f"{_safe_name(spec.name)}-{digest}.npz"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "list"


def _import(spec: ListSpec, cache_dir: Path | None) -> LoadedList:
    """Import (or load from cache) and index one list; raises HashListError/OSError."""
    import_key = _import_key(spec)
    cache = _cache_path(cache_dir, spec, import_key) if cache_dir else None
    result = None
    if cache is not None and cache.is_file():
        try:
            result = load_cache(cache)
            log.info("hash list %s loaded from cache (%d entries)", spec.name, result.loaded)
        except HashListError as e:
            log.warning("hash list %s: ignoring unreadable cache: %s", spec.name, e)
    if result is None:
        result = import_list(
            spec.file, ListFormat(spec.format), kinds=frozenset(spec.kinds), name=spec.name
        )
        for problem in result.problems[:5]:
            log.warning("hash list %s: %s", spec.name, problem)
        if result.invalid > 5:
            log.warning("hash list %s: ... %d bad entries in all", spec.name, result.invalid)
        if result.loaded == 0 and (result.invalid or result.skipped):
            # A list file that turned to garbage must not silently empty the list.
            raise HashListError(f"{spec.file}: no usable entry ({result.summary()})")
        if not result.complete:
            raise HashListError(
                f"{spec.file}: the file broke off part-way ({result.problems[-1]}); "
                "fix or replace it"
            )
        if cache is not None:
            try:
                save_cache(result, cache)
                for old in cache.parent.glob(f"{_safe_name(spec.name)}-*.npz"):
                    if old != cache:
                        old.unlink(missing_ok=True)
            except OSError as e:  # a cache is a speed-up, never a reason to fail
                log.warning("hash list %s: cannot write cache %s: %s", spec.name, cache, e.strerror)
    return _build(spec, _index_key(spec, import_key), result.tables, result.invalid)


#: The original of a banked image: given (event id, media index), its hashes and
#: enrolment variants from bytes fetched again, or None when they cannot be had
#: (:meth:`bot.scanning.MediaScanner.enrolment`).
Originals = Callable[[int, int], Awaitable[tuple[ImageHashes, EnrolmentHashes] | None]]


class ListRegistry:
    """Every list in force (declared lists and the local bank), matched as one."""

    def __init__(
        self,
        cache_dir: Path | None,
        store: Store | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.store = store
        self.clock = clock or SystemClock()
        self._lists: dict[str, LoadedList] = {}
        self._errors: dict[str, str] = {}
        self._bank = LoadedList(BANK_SPEC, ("bank",), {})
        self._bank_values: dict[str, list[str]] = {}
        self._lock = asyncio.Lock()

    # --- loading -------------------------------------------------------------------------

    async def load(self, ruleset: RuleSet) -> ReloadReport:
        """Load every declared list and the local bank (at start)."""
        await self.load_bank()
        return await self.reload(ruleset)

    async def reload(self, ruleset: RuleSet) -> ReloadReport:
        """Bring the lists in line with ``ruleset``; only changed lists are re-imported.

        A list whose file fails to import keeps its previous version (if any) in force;
        the failure is logged and recorded as a problem.
        """
        async with self._lock:
            old = self._lists
            new: dict[str, LoadedList] = {}
            rebuilt: list[str] = []
            kept: list[str] = []
            failed: list[str] = []
            for spec in ruleset.lists:
                if spec.name == LOCAL_BANK:
                    await self._problem(
                        spec.name,
                        f"the name {LOCAL_BANK} is Vigil's own list; rename the list in {spec.declared_in}",
                    )
                    failed.append(spec.name)
                    continue
                previous = old.get(spec.name)
                try:
                    key = _index_key(spec, _import_key(spec))
                    if previous is not None and previous.key == key:
                        # Same file, same radii: severity, category, verdict may differ.
                        new[spec.name] = LoadedList(
                            spec,
                            key,
                            previous.tables,
                            previous.exact,
                            previous.hamming,
                            previous.problems,
                        )
                        kept.append(spec.name)
                        continue
                    new[spec.name] = await asyncio.to_thread(_import, spec, self.cache_dir)
                    self._errors.pop(spec.name, None)
                    rebuilt.append(spec.name)
                    log.info(
                        "hash list %s in force: %d entries (%s)",
                        spec.name,
                        new[spec.name].entries,
                        ", ".join(f"{k} {len(t)}" for k, t in new[spec.name].tables.items())
                        or "empty",
                    )
                except (HashListError, OSError, ValueError) as e:
                    detail = (
                        str(e) if not isinstance(e, OSError) else f"{spec.file}: {e.strerror or e}"
                    )
                    failed.append(spec.name)
                    self._errors[spec.name] = detail
                    if previous is not None:
                        new[spec.name] = previous
                        detail += "; the previous version of the list stays in force"
                    else:
                        detail += "; the list is NOT in force"
                    await self._problem(spec.name, detail)
            removed = tuple(n for n in old if n not in new)
            self._lists = new  # one assignment: a concurrent match sees old or new, whole
            return ReloadReport(tuple(rebuilt), tuple(kept), removed, tuple(failed))

    async def _problem(self, name: str, detail: str) -> None:
        log.error("hash list %s: %s", name, detail)
        if self.store is not None:
            await self.store.add_problem("list_failed", f"list {name}", detail, self.clock.now())

    def statuses(self) -> list[ListStatus]:
        """Every list in force, the local bank last."""
        out = [lst.status(self._errors.get(n)) for n, lst in self._lists.items()]
        out.append(self._bank.status())
        return out

    def spec(self, name: str) -> ListSpec | None:
        """The declaration of a list in force (the bank's built-in one for ``local-bank``)."""
        if name == LOCAL_BANK:
            return BANK_SPEC
        lst = self._lists.get(name)
        return lst.spec if lst else None

    # --- the local bank ------------------------------------------------------------------

    async def load_bank(self) -> None:
        """(Re)build the bank's indexes from the database."""
        if self.store is None:
            return
        rows = await self.store.bank_entries()
        values: dict[str, list[str]] = {}
        for kind, value in rows:
            values.setdefault(kind, []).append(value)
        self._bank_values = values
        self._bank = _bank_list(values)

    async def bank_add(
        self,
        hashes: ImageHashes,
        added_by: str,
        reason: str,
        alert_id: int | None = None,
    ) -> int:
        """Put a taken-down image in the local bank; returns how many hashes were new.

        What is kept: :func:`bank_entries_for`. Takes effect for the next image matched.
        """
        return await self.bank_add_entries(bank_entries_for(hashes), added_by, reason, alert_id)

    async def bank_add_entries(
        self,
        entries: Iterable[tuple[str, str]],
        added_by: str,
        reason: str,
        alert_id: int | None = None,
    ) -> int:
        """Bank raw ``(kind, hex)`` pairs (e.g. only the SHA-1 of an image never fetched)."""
        if self.store is None:
            raise RuntimeError("the local bank needs the store")
        clean: list[tuple[str, str]] = []
        for kind, value in entries:
            if kind not in BANK_SPEC.kinds:
                raise ValueError(f"the local bank holds {', '.join(BANK_SPEC.kinds)}, not {kind}")
            value = value.strip().lower()
            if len(value) != KIND_HEX_LEN[kind] or len(bytes.fromhex(value)) * 2 != len(value):
                raise ValueError(f"{kind} needs {KIND_HEX_LEN[kind]} hex digits")
            clean.append((kind, value))
        added = await self.store.bank_insert(clean, added_by, reason, alert_id, self.clock.now())
        if added:
            await self.load_bank()
            log.info("local bank: %d hashes added by %s", added, added_by)
        return added

    async def bank_enrol(
        self,
        hashes: ImageHashes,
        enrol: EnrolmentHashes,
        added_by: str,
        reason: str,
        alert_id: int | None = None,
    ) -> int:
        """Bank an original with its enrolment variants; returns how many hashes were new.

        The one way an original's bytes reach the bank: a takedown that could fetch them
        again and ``vigil bank add`` both come here.
        """
        return await self.bank_add_entries(
            enrolment_entries(hashes, enrol), added_by, reason, alert_id
        )

    async def bank_add_event(
        self,
        event_id: int,
        added_by: str,
        reason: str,
        alert_id: int | None = None,
        originals: Originals | None = None,
    ) -> int:
        """Bank every image of a processed event (what the takedown of its alert calls).

        First the hashes the pipeline recorded (an image that was never fetched, its
        SHA-1 already on a list, is banked by that SHA-1), so a repost is caught at once.
        Then, with ``originals``, each hashed image's enrolment variants: only when the
        bytes had again are the very bytes that were scanned (same SHA-256); otherwise
        the scan-time hashes stay all the bank has of it.
        """
        if self.store is None:
            raise RuntimeError("the local bank needs the store")
        from bot.scanning import hashes_from_json  # scanning imports this module

        entries: list[tuple[str, str]] = []
        hashed: list[tuple[int, ImageHashes]] = []
        for row in await self.store.media_results(event_id):
            if row["hashes"]:
                h = hashes_from_json(row["hashes"])
                entries += bank_entries_for(h)
                hashed.append((row["media_index"], h))
            elif row["sha1_hint"]:
                entries.append(("sha1", row["sha1_hint"]))
        if not entries:
            return 0
        added = await self.bank_add_entries(entries, added_by, reason, alert_id)
        if originals is None:
            return added
        # Every image's variants in one insert: each insert rebuilds the bank's indexes.
        variants: list[tuple[str, str]] = []
        for index, h in hashed:
            enrol = await self._original_variants(originals, event_id, index, h)
            if enrol is not None:
                variants += variant_entries(enrol)
        if variants:
            new = await self.bank_add_entries(variants, added_by, reason, alert_id)
            log.info("event %d: enrolled %d variants (%d new hashes)", event_id, len(variants), new)
            added += new
        return added

    async def _original_variants(
        self, originals: Originals, event_id: int, index: int, scanned: ImageHashes
    ) -> EnrolmentHashes | None:
        """The enrolment variants of one banked image, if its original can be had."""
        try:
            found = await originals(event_id, index)
        except ImageRejected as e:
            found = None
            log.info("event %d image %d: the original does not hash: %s", event_id, index, e.reason)
        if found is None:
            log.info(
                "event %d image %d: original not available; banked its scan-time hashes only",
                event_id,
                index,
            )
            return None
        base, enrol = found
        if base.sha256 != scanned.sha256:
            # The forum serves other bytes under that address now: enrolling them would
            # bank an image no moderator took down.
            log.warning(
                "event %d image %d: the forum now serves a different file; banked the"
                " scan-time hashes only",
                event_id,
                index,
            )
            return None
        return enrol

    # --- matching ------------------------------------------------------------------------

    def _all(self) -> list[LoadedList]:
        return [*self._lists.values(), self._bank]

    def match_image(self, hashes: ImageHashes, media_index: int = 0) -> MatchResult:
        """Every list entry ``hashes`` matches, with allow-lists applied."""
        return self._match(hashes, media_index)

    def match_query(self, q: QueryHashes, media_index: int = 0) -> MatchResult:
        """Every match of a scanned image's query hashes (:func:`bot.variants.hash_for_query`).

        Its own hashes as :meth:`match_image`; the PDQs of the picture cut out of its frame
        (with their dihedral variants where the list wants them) and at the variants'
        scale against every list's PDQ; its ``lowfreq`` hashes against every list that
        holds some (the local bank), always review tier.
        """
        extra: list[Sequence[str]] = [q.trimmed_pdq] if q.trimmed_pdq else []
        extra += [(h,) for h in q.small_pdq]  # only kept when their quality was >= 50
        return self._match(q.base, media_index, extra, q.lowfreq)

    def _match(
        self,
        hashes: ImageHashes,
        media_index: int,
        extra_pdq: Sequence[Sequence[str]] = (),
        lowfreq: Sequence[str] = (),
    ) -> MatchResult:
        """``extra_pdq``: more PDQs of the same image, each as-is first, then its dihedral
        variants (if any); ``lowfreq``: its lowfreq hashes."""
        best: dict[tuple[str, str], tuple[int, LoadedList, int]] = {}

        def keep(lst: LoadedList, kind: str, row: int, distance: int) -> None:
            k = (lst.spec.name, kind)
            if k not in best or distance < best[k][0]:
                best[k] = (distance, lst, row)

        pdq_ok = hashes.pdq_quality >= MIN_PDQ_QUALITY
        frames = [f for f in hashes.extra_frames]
        for lst in self._all():
            for kind, table in lst.exact.items():
                row = table.lookup(getattr(hashes, kind))
                if row is not None:
                    keep(lst, kind, row, 0)
            for kind, index in lst.hamming.items():
                queries: list[str] = []
                if kind == "pdq":
                    if pdq_ok:
                        queries += list(hashes.pdq_dihedral) if lst.spec.dihedral else [hashes.pdq]
                    queries += [f.pdq for f in frames if f.pdq_quality >= MIN_PDQ_QUALITY]
                    for group in extra_pdq:
                        queries += list(group) if lst.spec.dihedral else list(group[:1])
                elif kind == LOWFREQ:
                    queries += lowfreq
                else:
                    queries.append(getattr(hashes, kind))
                    queries += [getattr(f, kind) for f in frames]
                for q in dict.fromkeys(queries):
                    found = index.query(bytes.fromhex(q))
                    if found:
                        row, distance = found[0]
                        keep(lst, kind, row, distance)
        return self._result(best, media_index)

    def match_sha1(self, sha1: str, media_index: int = 0) -> MatchResult:
        """Matches of a SHA-1 known before download (Discourse names uploads by it)."""
        best: dict[tuple[str, str], tuple[int, LoadedList, int]] = {}
        for lst in self._all():
            table = lst.exact.get("sha1")
            row = table.lookup(sha1) if table is not None else None
            if row is not None:
                best[(lst.spec.name, "sha1")] = (0, lst, row)
        return self._result(best, media_index)

    def match(self, hashes: ImageHashes, media_index: int = 0) -> list[Match]:
        """The matches of one image (empty when an allow-list cleared it)."""
        return list(self.match_image(hashes, media_index).matches)

    @staticmethod
    def _result(
        best: dict[tuple[str, str], tuple[int, LoadedList, int]], media_index: int
    ) -> MatchResult:
        # A list reports only the tiers it names (``tiers``), allow-lists included.
        best = {
            (name, kind): found
            for (name, kind), found in best.items()
            if tier_of(kind, found[0]) in found[1].spec.tiers
        }
        allowed = sorted(name for (name, _k), (_d, lst, _r) in best.items() if lst.spec.allow)
        if allowed:
            return MatchResult((), allowed[0])
        # A lowfreq match says "maybe this picture" beside a list's confident match of it:
        # nothing a person needs to weigh.
        sure = {name for (name, kind), (d, _l, _r) in best.items() if tier_of(kind, d) == CONFIDENT}
        matches = []
        for (name, kind), (distance, lst, row) in sorted(best.items()):
            if kind == LOWFREQ and name in sure:
                continue
            table = lst.tables[kind]
            matches.append(
                Match(
                    list=name,
                    kind=kind,
                    distance=distance,
                    category=lst.spec.category or table.category(row),
                    severity=lst.spec.severity,
                    media_index=media_index,
                    tier=tier_of(kind, distance),
                    ref=table.ref(row),
                )
            )
        return MatchResult(tuple(matches))


def bank_entries_for(h: ImageHashes) -> list[tuple[str, str]]:
    """The ``(kind, hex)`` pairs the local bank keeps of one image.

    Exact hashes, pHash and dHash, and PDQ (with the PDQs of an animation's frames) when
    its quality is good enough to match on.
    """
    entries = [(k, getattr(h, k)) for k in (*EXACT_KINDS, "phash", "dhash")]
    if h.pdq_quality >= MIN_PDQ_QUALITY:
        entries.append(("pdq", h.pdq))
    entries += [("pdq", f.pdq) for f in h.extra_frames if f.pdq_quality >= MIN_PDQ_QUALITY]
    return entries


def variant_entries(enrol: EnrolmentHashes) -> list[tuple[str, str]]:
    """The ``(kind, hex)`` pairs the local bank keeps of an original's enrolment variants."""
    return [("pdq", h) for h in enrol.pdq] + [(LOWFREQ, h) for h in enrol.lowfreq]


def enrolment_entries(hashes: ImageHashes, enrol: EnrolmentHashes) -> list[tuple[str, str]]:
    """Everything the local bank keeps of an original whose bytes Vigil had."""
    return bank_entries_for(hashes) + variant_entries(enrol)


def _bank_list(values: dict[str, list[str]]) -> LoadedList:
    tables: dict[str, KindTable] = {}
    for kind, hexes in values.items():
        raw = bytes.fromhex("".join(hexes))
        arr = np.frombuffer(raw, dtype=np.uint8).reshape(len(hexes), -1).copy()
        tables[kind] = KindTable(
            kind,
            arr,
            b"",
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int32),
            (),
        )
    return _build(BANK_SPEC, ("bank", len(values)), tables, 0)


def strictest_verdict(registry: ListRegistry, result: MatchResult) -> str:
    """``allow``, ``hold`` or ``block``: the strictest verdict of the lists matched.

    A review-tier match is at most ``hold``: only a confident match may block by itself.
    """
    if result.allowed_by is not None:
        return "allow"
    return strictest(
        verdict(spec.verdict if (spec := registry.spec(m.list)) is not None else "block", m)
        for m in result.matches
    )
