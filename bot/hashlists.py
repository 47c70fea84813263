"""Hash list importers: the formats that really circulate, read into one compact table.

Formats (``ListFormat``):

- ``plain``: one entry a line, ``<hex>``, ``<type> <hex>`` or ``<hex> <label>``
  (``sha256sum``/``md5sum`` output); ``#`` comments and blank lines ignored.
- ``threatexchange_csv``: ``threatexchange dataset -P --csv`` output, header
  ``signal_type,signal_str,collab,category,tags`` (columns found by name).
- ``hma_csv``: HMA-lite CSV without header, ``hash,id,timestamp,tags``.
- ``stopncii_json``: a StopNCII ``FetchHashes`` page ``{"hashRecords": [...]}``,
  a bare list of records, or one record a line.
- ``tcap_json``: Tech Against Terrorism's hash list: a JSON list of
  ``{hash_digest, algorithm, deleted, id, ideology, file_type, ...}`` (the v1 file),
  a v2 page ``{"results": [...]}``, or one record a line.
- ``ncmec_xml``: NCMEC hash-sharing ``queryResult`` XML; ``<image>`` entries with
  ``<fingerprints><md5/><sha1/><pdq/></fingerprints>``, ``<deletedImage>`` tombstones.

A bad entry never stops an import: it becomes an :class:`ImportProblem` (file:line)
and is counted as skipped. Entries of types Vigil cannot match (video MD5, URLs,
PhotoDNA, ...) are skipped with a reason. Only a file that cannot be read at all, or
is not the format at all, raises :class:`HashListError`.

Entries are kept column-wise per kind (numpy bytes, refs in one blob), so a
10-million-entry list costs about its raw hash bytes, and the cache (``save_cache``)
reloads without parsing.
"""

from __future__ import annotations

import argparse
import binascii
import codecs
import contextlib
import csv
import gzip
import json
import logging
import os
import re
import sys
import tempfile
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, overload
from xml.parsers import expat

import numpy as np

log = logging.getLogger(__name__)

#: Hex digits per hash kind Vigil can match.
KIND_HEX_LEN: dict[str, int] = {
    "md5": 32,
    "sha1": 40,
    "sha256": 64,
    "pdq": 64,
    "phash": 16,
    "dhash": 16,
    # Vigil's own review-tier hash (bot.variants): the local bank enrols it; a list file
    # may carry it typed ("lowfreq <hex>"), never bare (32 digits are an MD5).
    "lowfreq": 32,
}
KINDS = frozenset(KIND_HEX_LEN)
# Kinds a bare value is guessed as from its length when a list declares no kinds.
_GUESSED_KINDS = KINDS - {"lowfreq"}

# Type names as the exchanges spell them (lowercased, '-' and '_' removed) -> our kind.
_KIND_ALIASES = {
    "md5": "md5",
    "photomd5": "md5",
    "imagemd5": "md5",
    "sha1": "sha1",
    "photosha1": "sha1",
    "sha256": "sha256",
    "photosha256": "sha256",
    "pdq": "pdq",
    "photopdq": "pdq",
    "imagepdq": "pdq",  # StopNCII
    "phash": "phash",
    "dhash": "dhash",
    "lowfreq": "lowfreq",
}

#: Problems kept in memory per import; all are counted, the rest only summarised.
MAX_PROBLEMS = 10_000
_MAX_SKIP_REASONS = 50
# A file that breaks while being read (I/O, a corrupt or cut gzip stream).
_READ_ERRORS = (OSError, EOFError, gzip.BadGzipFile, zlib.error)

_CHUNK = 1 << 20
_PROGRESS_EVERY = 1 << 13  # lines between progress callbacks
_MAX_LINE = 1 << 20  # a longer line is no hash list entry (and must not fill memory)
_MAX_JSON_ELEMENT = 16 << 20  # one record larger than this is not a hash record
_VIDEO_FILE_TYPES = frozenset(
    ["mp4", "m4v", "mov", "webm", "mkv", "avi", "flv", "wmv", "mpg", "mpeg", "3gp", "ts", "ogv"]
)
_NEGATIVE_OPINIONS = frozenset({"NEGATIVE_CLASS", "FALSE_POSITIVE"})
_HEX_RE = re.compile(r"(?:0x)?[0-9a-fA-F]+")
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]+")
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,39}")
_CACHE_VERSION = "vigil-hashlist-cache/1"
_ALL_BY_LEN: dict[int, tuple[str, ...]] = {}
for _k in sorted(_GUESSED_KINDS):
    _ALL_BY_LEN[KIND_HEX_LEN[_k]] = (*_ALL_BY_LEN.get(KIND_HEX_LEN[_k], ()), _k)


def _lens_str() -> str:
    return ", ".join(f"{'/'.join(ks)} {n}" for n, ks in sorted(_ALL_BY_LEN.items()))


class HashListError(ValueError):
    """The file as a whole cannot be read as the given hash list format."""


class ListFormat(StrEnum):
    """The hash list formats Vigil imports."""

    PLAIN = "plain"
    THREATEXCHANGE_CSV = "threatexchange_csv"
    HMA_CSV = "hma_csv"
    STOPNCII_JSON = "stopncii_json"
    TCAP_JSON = "tcap_json"
    NCMEC_XML = "ncmec_xml"


@dataclass(frozen=True, slots=True)
class HashRecord:
    """One list entry: a hash of a known kind, as lowercase hex.

    ``ref`` is the list's own id for the entry (NCMEC image id, TCAP id, HMA id);
    ``deleted`` marks a tombstone while parsing (records in a result are live).
    """

    kind: str
    value: str
    ref: str | None = None
    category: str | None = None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class ImportProblem:
    """A bad entry (or a fatal error part-way through a file), where it was and why."""

    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True, eq=False)
class KindTable:
    """All live entries of one kind, column-wise.

    ``values`` is an ``(n, nbytes)`` uint8 array (the matcher packs it as it likes);
    refs are one UTF-8 blob cut by ``ref_off`` (``n + 1`` offsets; an empty range is
    no ref); ``cat_codes`` index ``categories`` (-1 = none). When no entry has a ref
    (or a category) that array is empty instead, so a bare list costs its hash bytes.
    """

    kind: str
    values: np.ndarray
    ref_blob: bytes
    ref_off: np.ndarray
    cat_codes: np.ndarray
    categories: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def hex(self, i: int) -> str:
        """Entry ``i``'s hash as lowercase hex."""
        return self.values[i].tobytes().hex()

    def ref(self, i: int) -> str | None:
        """Entry ``i``'s ref, or None."""
        if not self.ref_off.size:
            return None
        a, b = int(self.ref_off[i]), int(self.ref_off[i + 1])
        return self.ref_blob[a:b].decode("utf-8") if b > a else None

    def category(self, i: int) -> str | None:
        """Entry ``i``'s category, or None."""
        if not self.cat_codes.size:
            return None
        c = int(self.cat_codes[i])
        return self.categories[c] if c >= 0 else None

    def record(self, i: int) -> HashRecord:
        """Entry ``i`` as a :class:`HashRecord`."""
        return HashRecord(self.kind, self.hex(i), self.ref(i), self.category(i))

    def records(self) -> Iterator[HashRecord]:
        """Every entry, in file order."""
        n = len(self)
        raw = self.values.tobytes()
        nb = self.values.shape[1]
        off = self.ref_off.tolist() if self.ref_off.size else [0] * (n + 1)
        codes = self.cat_codes.tolist() if self.cat_codes.size else [-1] * n
        blob, cats, kind = self.ref_blob, self.categories, self.kind
        for i in range(n):
            a, b = off[i], off[i + 1]
            c = codes[i]
            yield HashRecord(
                kind,
                raw[i * nb : (i + 1) * nb].hex(),
                blob[a:b].decode("utf-8") if b > a else None,
                cats[c] if c >= 0 else None,
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KindTable):
            return NotImplemented
        return (
            self.kind == other.kind
            and np.array_equal(self.values, other.values)
            and self.ref_blob == other.ref_blob
            and np.array_equal(self.ref_off, other.ref_off)
            and self._category_names() == other._category_names()
        )

    def _category_names(self) -> list[str | None]:
        if not self.cat_codes.size:
            return []
        names = [*self.categories, None]  # code -1 picks the None at the end
        return [names[c] for c in self.cat_codes.tolist()]

    __hash__ = None  # type: ignore[assignment]


class RecordTable(Sequence[HashRecord]):
    """A read-only sequence of :class:`HashRecord` over per-kind tables.

    Records are grouped by kind (kinds in order of first appearance), each kind in
    file order. Records are built on access, so a 10M-entry list stays compact.
    """

    def __init__(self, tables: Iterable[KindTable] = ()) -> None:
        self.tables: dict[str, KindTable] = {t.kind: t for t in tables}
        self._list = list(self.tables.values())
        self._starts: list[int] = []
        n = 0
        for t in self.tables.values():
            self._starts.append(n)
            n += len(t)
        self._len = n

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, i: int) -> HashRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[HashRecord]: ...
    def __getitem__(self, i: int | slice) -> HashRecord | list[HashRecord]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        t = bisect_right(self._starts, i) - 1
        table = self._list[t]
        return table.record(i - self._starts[t])

    def __iter__(self) -> Iterator[HashRecord]:
        for t in self.tables.values():
            yield from t.records()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordTable):
            return self.tables == other.tables
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}={len(t)}" for k, t in self.tables.items())
        return f"RecordTable({kinds})"


@dataclass
class ImportResult:
    """What an import made of a list file.

    ``records`` holds the live entries after tombstones (a deletion removes the
    earlier entries with the same kind and value, or the same ref for NCMEC), with
    duplicates merged (the later entry wins). ``complete`` is False when the file
    broke off part-way (truncated JSON/XML): what came before is kept.
    """

    name: str
    records: RecordTable
    problems: list[ImportProblem]
    loaded: int
    skipped: int
    skip_reasons: dict[str, int] = field(default_factory=dict)
    invalid: int = 0  # bad entries (each is a problem; all counted, MAX_PROBLEMS kept)
    deleted: int = 0  # entries removed by tombstones
    duplicates: int = 0
    complete: bool = True
    source: str = ""
    format: str = ""

    def by_kind(self) -> dict[str, list[HashRecord]]:
        """Live records grouped by kind (materialised; prefer ``tables`` for big lists)."""
        return {k: list(t.records()) for k, t in self.records.tables.items()}

    @property
    def tables(self) -> dict[str, KindTable]:
        """The per-kind column tables (what the matcher should index)."""
        return self.records.tables

    def summary(self) -> str:
        """One line: ``loaded N, skipped M (reasons)`` and what tombstones/dedupe did."""
        parts = []
        if self.invalid:
            parts.append(f"{self.invalid} invalid")
        parts += [f"{n} {r}" for r, n in sorted(self.skip_reasons.items(), key=lambda x: -x[1])]
        line = f"loaded {self.loaded}, skipped {self.skipped}"
        if parts:
            line += f" ({', '.join(parts)})"
        extra = []
        if self.deleted:
            extra.append(f"{self.deleted} removed by deletions")
        if self.duplicates:
            extra.append(f"{self.duplicates} duplicates merged")
        if not self.complete:
            extra.append("INCOMPLETE: the file broke off, see problems")
        if extra:
            line += "; " + ", ".join(extra)
        return line


# --- building -----------------------------------------------------------------------


class _Col:
    """Append-only columns for one kind while a file is read.

    Row order is file order, so "earlier than a tombstone" is "row index below the
    row count when the tombstone was read". Ref and category columns start only
    when the first ref/category appears: a bare list pays for its hash bytes alone.
    """

    __slots__ = ("cats", "n", "ref_off", "refs", "values")

    def __init__(self) -> None:
        self.values = bytearray()
        self.n = 0
        self.refs = bytearray()
        self.ref_off: array[int] | None = None
        self.cats: array[int] | None = None


class _Builder:
    """Collects entries, tombstones, skips and problems; ``finish`` applies them."""

    def __init__(
        self,
        file: str,
        *,
        default_kind: str | None,
        kinds: frozenset[str] | None,
        progress: Callable[[int, int], None] | None,
        total: int,
    ) -> None:
        self.file = file
        self.default_kind = default_kind
        self.kinds = kinds
        self.progress_cb = progress
        self.total = total
        self.cols: dict[str, _Col] = {}
        self.cat_index: dict[str, int] = {}
        # tombstones -> row count(s) when read: rows below it are earlier
        self.tomb_keys: dict[tuple[str, bytes], int] = {}
        self.tomb_refs: dict[str, dict[str, int]] = {}
        self.problems: list[ImportProblem] = []
        self.invalid = 0
        self.skip_reasons: dict[str, int] = {}
        self.complete = True
        allowed = kinds if kinds is not None else _GUESSED_KINDS
        self.by_len: dict[int, tuple[str, ...]] = {}
        for k in sorted(allowed):
            self.by_len.setdefault(KIND_HEX_LEN[k], ())
            self.by_len[KIND_HEX_LEN[k]] += (k,)

    # -- outcomes

    def problem(self, line: int | None, reason: str, *, entry: bool = True) -> None:
        """Record a problem; ``entry`` problems are bad entries and count as skipped."""
        if entry:
            self.invalid += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(ImportProblem(self.file, line, reason))

    def skip(self, reason: str) -> None:
        """Count an entry Vigil deliberately does not load."""
        if reason not in self.skip_reasons and len(self.skip_reasons) >= _MAX_SKIP_REASONS:
            reason = "other unsupported entries"  # a garbage file must not grow this forever
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1

    def fatal(self, line: int | None, reason: str) -> None:
        """The file broke off: keep what was read, mark the result incomplete."""
        self.complete = False
        self.problems.append(ImportProblem(self.file, line, reason))  # kept even past the cap

    def progress(self, done: int) -> None:
        if self.progress_cb is not None:
            self.progress_cb(done, self.total)

    # -- entries

    def _kind(self, type_name: str | None, text: str, line: int) -> str | None:
        """Resolve the entry's kind; None if it was skipped or is a problem."""
        if type_name is not None:
            kind = _KIND_ALIASES.get(type_name.strip().lower().replace("-", "").replace("_", ""))
            if kind is None:
                self.skip(f"unsupported type {type_name.strip()[:40]}")
                return None
            if self.kinds is not None and kind not in self.kinds:
                self.skip(f"{kind} not declared for this list")
                return None
            return kind
        n = len(text)
        dk = self.default_kind
        if dk is not None and KIND_HEX_LEN[dk] == n:
            return dk
        cands = self.by_len.get(n, ())
        if len(cands) == 1:
            return cands[0]
        if not cands:
            known = _ALL_BY_LEN.get(n)
            if known:
                self.skip(f"{' or '.join(known)} not declared for this list")
            else:
                self.problem(line, f"{n} hex digits fits no hash kind ({_lens_str()})")
        else:
            self.problem(
                line,
                f"{n} hex digits is ambiguous ({' or '.join(cands)}): declare the list's kind",
            )
        return None

    def _value(self, kind: str, text: str, line: int, raw: bytes | None) -> bytes | None:
        want = KIND_HEX_LEN[kind]
        if len(text) != want:
            self.problem(line, f"{kind} needs {want} hex digits, got {len(text)}")
            return None
        if raw is None:
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                self.problem(line, f"{kind} value is not hexadecimal")
                return None
        if len(raw) * 2 != want:  # fromhex skips whitespace inside the text
            self.problem(line, f"{kind} value contains whitespace")
            return None
        return raw

    def _parse(self, type_name: str | None, text: str, line: int) -> tuple[str, bytes] | None:
        text = text.strip()
        if text[:2] in ("0x", "0X"):
            text = text[2:]
        if not text:
            self.problem(line, "empty hash value")
            return None
        raw = None
        if type_name is None:
            # Bare value: say "not hex" before guessing a kind from a garbage length.
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raw = None
            if (raw is None or len(raw) * 2 != len(text)) and not _HEX_DIGITS.fullmatch(text):
                self.problem(line, "not a hexadecimal hash")
                return None
        kind = self._kind(type_name, text, line)
        if kind is None:
            return None
        raw = self._value(kind, text, line, raw)
        return None if raw is None else (kind, raw)

    def add(
        self,
        type_name: str | None,
        text: str,
        ref: str | None,
        category: str | None,
        line: int,
    ) -> None:
        """Add one entry; a bad one becomes a problem, an unsupported one a skip."""
        # Fast path: a kind spelled as we spell it, with a value of the right length.
        kind = _KIND_ALIASES.get(type_name) if type_name is not None else None
        if (
            kind is not None
            and len(text) == KIND_HEX_LEN[kind]
            and (self.kinds is None or kind in self.kinds)
        ):
            try:
                raw = binascii.unhexlify(text)
            except (binascii.Error, ValueError):
                pass  # the slow path says what is wrong
            else:
                self.append(kind, raw, ref, category)
                return
        parsed = self._parse(type_name, text, line)
        if parsed is not None:
            self.append(parsed[0], parsed[1], ref, category)

    def append(self, kind: str, raw: bytes, ref: str | None, category: str | None) -> None:
        """Append a checked entry."""
        col = self.cols.get(kind)
        if col is None:
            col = self.cols[kind] = _Col()
        col.values += raw
        if ref:
            if col.ref_off is None:
                col.ref_off = array("q", [0]) * (col.n + 1)
            col.refs += ref.encode("utf-8")
            col.ref_off.append(len(col.refs))
        elif col.ref_off is not None:
            col.ref_off.append(len(col.refs))
        if category:
            code = self.cat_index.get(category)
            if code is None:
                code = self.cat_index[category] = len(self.cat_index)
            if col.cats is None:
                col.cats = array("i", [-1]) * col.n
            col.cats.append(code)
        elif col.cats is not None:
            col.cats.append(-1)
        col.n += 1

    def fast_maps(self) -> tuple[dict[int, str], dict[bytes, str]]:
        """Lookups for the plain reader's fast path: bare length -> kind, type -> kind."""
        bare = {n: ks[0] for n, ks in self.by_len.items() if len(ks) == 1}
        if self.default_kind is not None:
            bare[KIND_HEX_LEN[self.default_kind]] = self.default_kind
        typed = {
            name.encode(): kind
            for name, kind in _KIND_ALIASES.items()
            if self.kinds is None or kind in self.kinds
        }
        return bare, typed

    def delete_value(self, type_name: str | None, text: str, line: int) -> None:
        """A tombstone by kind and value: earlier entries with that hash are removed."""
        parsed = self._parse(type_name, text, line)
        if parsed is None:
            return
        col = self.cols.get(parsed[0])
        self.tomb_keys[parsed] = col.n if col is not None else 0

    def delete_ref(self, ref: str) -> None:
        """A tombstone by the list's id (NCMEC): earlier entries with that ref go."""
        self.tomb_refs[ref] = {k: c.n for k, c in self.cols.items()}

    # -- result

    def finish(self, name: str, fmt: ListFormat) -> ImportResult:
        categories = tuple(self.cat_index)
        tables = []
        deleted = duplicates = 0
        for kind, col in self.cols.items():
            table, d, u = self._finish_kind(kind, col, categories)
            tables.append(table)
            deleted += d
            duplicates += u
        records = RecordTable(tables)
        invalid = self.invalid
        skipped = invalid + sum(self.skip_reasons.values())
        return ImportResult(
            name=name,
            records=records,
            problems=self.problems,
            loaded=len(records),
            skipped=skipped,
            skip_reasons=dict(self.skip_reasons),
            invalid=invalid,
            deleted=deleted,
            duplicates=duplicates,
            complete=self.complete,
            source=self.file,
            format=str(fmt),
        )

    def _finish_kind(
        self, kind: str, col: _Col, categories: tuple[str, ...]
    ) -> tuple[KindTable, int, int]:
        nb = KIND_HEX_LEN[kind] // 2
        n = col.n
        # Views over the builder's buffers, no copies: the builder is dropped after this.
        values = np.frombuffer(col.values, dtype=np.uint8).reshape(n, nb)
        ref_off = _EMPTY_OFF if col.ref_off is None else np.frombuffer(col.ref_off, np.int64)
        cats = _EMPTY_CATS if col.cats is None else np.frombuffer(col.cats, np.int32)
        keep: np.ndarray | None = None

        key_tombs = {v: c for (k, v), c in self.tomb_keys.items() if k == kind}
        if key_tombs:
            void = values.view(f"V{nb}").ravel()
            hits = np.nonzero(np.isin(void, np.array(list(key_tombs), dtype=f"V{nb}")))[0]
            for i in hits.tolist():
                if i < key_tombs[values[i].tobytes()]:
                    if keep is None:
                        keep = np.ones(n, dtype=bool)
                    keep[i] = False
        if self.tomb_refs and col.ref_off is not None:
            tombs = {r.encode("utf-8"): c.get(kind, 0) for r, c in self.tomb_refs.items()}
            blob = bytes(col.refs)
            off = col.ref_off
            get = tombs.get
            for i in range(n):
                before = get(blob[off[i] : off[i + 1]])
                if before is not None and i < before:
                    if keep is None:
                        keep = np.ones(n, dtype=bool)
                    keep[i] = False

        deleted = 0 if keep is None else n - int(np.count_nonzero(keep))
        live = None if keep is None else np.nonzero(keep)[0]
        dup_drop = _duplicates_to_drop(values if live is None else values[live])
        duplicates = len(dup_drop)
        if live is None and not duplicates:
            return (
                KindTable(kind, values, bytes(col.refs), ref_off, cats, categories),
                0,
                0,
            )
        if live is None:
            live = np.arange(n)
        sel = np.delete(live, dup_drop)
        if col.ref_off is None:
            blob_out, off_out = b"", _EMPTY_OFF
        else:
            blob_arr = np.frombuffer(bytes(col.refs), dtype=np.uint8)
            blob_out, off_out = _gather_blob(blob_arr, ref_off, sel)
        cats_out = _EMPTY_CATS if col.cats is None else cats[sel]
        table = KindTable(kind, values[sel], blob_out, off_out, cats_out, categories)
        return table, deleted, duplicates


_EMPTY_OFF = np.zeros(0, dtype=np.int64)
_EMPTY_CATS = np.zeros(0, dtype=np.int32)
_KEY_MIX = np.uint64(0x9E3779B97F4A7C15)


def _duplicates_to_drop(values: np.ndarray) -> np.ndarray:
    """Row positions that a later identical row supersedes (the last occurrence wins).

    Sorts a 64-bit key per row (4x faster than sorting the rows), then checks the
    full bytes of every equal-key pair; a key collision between different rows
    (practically never) falls back to an exact row sort.
    """
    n, nb = values.shape
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    words = -(-nb // 8)
    if nb % 8:
        padded = np.zeros((n, words * 8), dtype=np.uint8)
        padded[:, :nb] = values
        w = padded.view("<u8")
    else:
        w = np.ascontiguousarray(values).view("<u8")
    key = w[:, 0].copy()
    for j in range(1, words):
        key *= _KEY_MIX
        key ^= w[:, j]
    order = np.argsort(key, kind="stable")  # equal keys stay in file order
    k_sorted = key[order]
    pairs = np.nonzero(k_sorted[1:] == k_sorted[:-1])[0]
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.int64)
    same = np.all(values[order[pairs]] == values[order[pairs + 1]], axis=1)
    if same.all():
        return np.sort(order[pairs])  # the earlier row of each identical pair
    void = np.ascontiguousarray(values).view(f"V{nb}").ravel()
    _, first_rev = np.unique(void[::-1], return_index=True)
    keep = np.zeros(n, dtype=bool)
    keep[n - 1 - first_rev] = True
    return np.nonzero(~keep)[0]


def _gather_blob(blob: np.ndarray, off: np.ndarray, sel: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The refs of rows ``sel`` as a new blob and offsets, without a Python loop."""
    starts = off[sel]
    lens = off[sel + 1] - starts
    new_off = np.zeros(len(sel) + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    total = int(new_off[-1])
    if total == 0:
        return b"", new_off
    pos = np.repeat(starts - new_off[:-1], lens) + np.arange(total, dtype=np.int64)
    return blob[pos].tobytes(), new_off


# --- reading files ------------------------------------------------------------------


class _Source:
    """An opened list file (gzip transparently), with progress over the raw bytes."""

    def __init__(self, path: Path) -> None:
        try:
            self.raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise HashListError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise HashListError(f"{path}: is a directory, not a list file") from None
        except OSError as e:
            raise HashListError(f"{path}: cannot open ({e.strerror})") from None
        self.total = os.fstat(self.raw.fileno()).st_size
        head = self.raw.read(2)
        self.raw.seek(0)
        self.stream: IO[bytes] = (
            gzip.GzipFile(fileobj=self.raw, mode="rb") if head == b"\x1f\x8b" else self.raw
        )

    def done(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        if self.stream is not self.raw:
            self.stream.close()
        self.raw.close()


def _read_error(src: _Source, b: _Builder, e: Exception) -> None:
    """A read error part-way (bad gzip, I/O): keep what was read, say where it stopped."""
    b.fatal(None, f"read error after {src.done()} bytes: {e}")


def _line_batches(src: _Source, b: _Builder) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, lines) a chunk at a time, progress reported per chunk.

    Lines keep no newline. A line over ``_MAX_LINE`` bytes is reported, stands as an
    empty line (so numbering stays right) and is never held whole in memory.
    """
    rest = b""
    lineno = 0  # lines handed out so far
    skipping = False  # inside an over-long line
    read = src.stream.read
    try:
        while chunk := read(_CHUNK):
            b.progress(src.done())
            if lineno == 0 and not rest and chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[3:]
            if skipping:
                nl = chunk.find(b"\n")
                if nl < 0:
                    continue
                chunk = chunk[nl + 1 :]
                skipping = False
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            if len(rest) > _MAX_LINE:
                b.problem(lineno + len(lines) + 1, f"line longer than {_MAX_LINE} bytes")
                lines.append(b"")
                rest = b""
                skipping = True
            if lines:
                yield lineno + 1, lines
                lineno += len(lines)
                if lineno >= _PROGRESS_EVERY and lineno - len(lines) < _PROGRESS_EVERY:
                    _refuse_binary(b)
        if rest:
            yield lineno + 1, [rest]
    except _READ_ERRORS as e:
        _read_error(src, b, e)


def _decoded_lines(src: _Source, b: _Builder) -> Iterator[tuple[int, str | None]]:
    """(line number, text); a line that is not UTF-8 is reported and given as None."""
    for start, lines in _line_batches(src, b):
        for lineno, raw in enumerate(lines, start):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                b.problem(lineno, "not UTF-8 text")
                yield lineno, None


def _refuse_binary(b: _Builder) -> None:
    """A text format that yielded nothing valid for thousands of lines is not that format."""
    if not b.cols and b.invalid >= _PROGRESS_EVERY // 2:
        raise HashListError(
            f"{b.file}: not a hash list in this format "
            f"(no valid entry in the first {_PROGRESS_EVERY} lines; first: {b.problems[0]})"
        )


def _read_plain(src: _Source, b: _Builder) -> None:
    bare, typed = b.fast_maps()
    cols = b.cols
    for start, lines in _line_batches(src, b):
        for lineno, raw in enumerate(lines, start):
            line = raw.strip()
            if not line or line[0] == 35:  # '#'
                continue
            # Fast path for the common shapes, on bytes; anything unusual goes the slow way.
            parts = line.split()
            kind = None
            if len(parts) == 1:
                kind = bare.get(len(line))
                value = line
            elif len(parts) == 2:
                kind = typed.get(parts[0].lower())
                value = parts[1]
            if kind is not None and len(value) == KIND_HEX_LEN[kind] and b"#" not in line:
                try:
                    digest = binascii.unhexlify(value)
                except binascii.Error:
                    pass
                else:
                    col = cols.get(kind)
                    if col is not None and col.ref_off is None and col.cats is None:
                        col.values += digest
                        col.n += 1
                    else:
                        b.append(kind, digest, None, None)
                    continue
            _plain_line(b, lineno, raw)


def _plain_line(b: _Builder, lineno: int, raw: bytes) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        b.problem(lineno, "not UTF-8 text")
        return
    hash_at = text.find("#")
    if hash_at >= 0:
        text = text[:hash_at]
    parts = text.split()
    if not parts:
        return
    if len(parts) == 1:
        b.add(None, parts[0], None, None, lineno)
    elif _HEX_RE.fullmatch(parts[0]):
        # "<hex> <label>": sha256sum/md5sum output; '*' marks binary mode there.
        label = text.strip()[len(parts[0]) :].strip().lstrip("*")
        b.add(None, parts[0], label or None, None, lineno)
    elif _TYPE_NAME.fullmatch(parts[0]):
        label = " ".join(parts[2:]) or None
        b.add(parts[0], parts[1], label, None, lineno)
    else:
        b.problem(lineno, "expected <hex>, <type> <hex> or <hex> <label>")


def _csv_rows(src: _Source, b: _Builder) -> Iterator[tuple[int, list[str]]]:
    """CSV rows with the line each starts on; lines that are not UTF-8 become problems."""

    def lines() -> Iterator[str]:
        for _lineno, text in _decoded_lines(src, b):
            # A bad line was reported already; a blank one keeps csv's line count aligned.
            yield "\n" if text is None else text

    reader = csv.reader(lines(), strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            b.problem(reader.line_num, f"bad CSV: {e}")
            start = reader.line_num + 1
            continue
        yield start, row
        start = reader.line_num + 1


def _read_threatexchange_csv(src: _Source, b: _Builder) -> None:
    rows = _csv_rows(src, b)
    cols: dict[str, int] = {}
    for _, row in rows:
        if not any(c.strip() for c in row):
            continue
        cols = {c.strip().lower(): i for i, c in reversed(list(enumerate(row)))}
        break
    if "signal_type" not in cols or "signal_str" not in cols:
        raise HashListError(
            f"{b.file}: not ThreatExchange CSV: expected a header "
            "'signal_type,signal_str,collab,category,tags' (threatexchange dataset -P --csv)"
        )
    i_type, i_str = cols["signal_type"], cols["signal_str"]
    i_cat = cols.get("category")
    need = max(i_type, i_str) + 1
    for lineno, row in rows:
        if not any(c.strip() for c in row):
            continue
        if len(row) < need:
            b.problem(lineno, f"expected signal_type and signal_str, got {len(row)} columns")
            continue
        category = row[i_cat].strip() if i_cat is not None and i_cat < len(row) else ""
        if category.upper() in _NEGATIVE_OPINIONS:
            # A negative opinion says the signal is NOT the bad thing: never block on it.
            b.skip(f"negative opinion ({category.upper()})")
            continue
        b.add(row[i_type], row[i_str], None, category or None, lineno)


def _read_hma_csv(src: _Source, b: _Builder) -> None:
    first = True
    for lineno, row in _csv_rows(src, b):
        if not row or not any(c.strip() for c in row):
            continue
        if first and row[0].strip().lower() in ("hash", "pdq_hash", "signal"):
            first = False
            continue  # a header line some exports add
        first = False
        if len(row) > 4:
            b.problem(lineno, f"expected hash,id,timestamp,tags; got {len(row)} columns")
            continue
        ref = row[1].strip() if len(row) > 1 else ""
        tags = row[3].strip() if len(row) > 3 else ""
        b.add(None, row[0], ref or None, tags or None, lineno)


# -- JSON, streamed: big exports need not fit in memory twice


class _JsonStream:
    """Reads JSON values one by one from a byte stream, tracking line numbers."""

    def __init__(self, src: _Source, b: _Builder) -> None:
        self.src, self.b = src, b
        self.dec = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.line = 1  # line of buf[counted]
        self.counted = 0
        self.raw = json.JSONDecoder()

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.src.stream.read(_CHUNK)
        self.b.progress(self.src.done())
        if not chunk:
            self.eof = True
            tail = self.dec.decode(b"", final=True)
            self.buf += tail
            return bool(tail)
        self.line_at(self.pos)
        self.buf = self.buf[self.pos :] + self.dec.decode(chunk)
        self.counted -= self.pos
        self.pos = 0
        return True

    def line_at(self, pos: int) -> int:
        if pos > self.counted:
            self.line += self.buf.count("\n", self.counted, pos)
            self.counted = pos
        return self.line

    def peek(self) -> str | None:
        """The next non-blank character, or None at the end."""
        while True:
            buf, n = self.buf, len(self.buf)
            p = self.pos
            while p < n and buf[p] in " \t\r\n":
                p += 1
            self.pos = p
            if p < n:
                return buf[p]
            if not self._fill():
                return None

    def take(self, ch: str) -> None:
        if self.peek() != ch:
            raise json.JSONDecodeError(f"expected {ch!r}", self.buf, self.pos)
        self.pos += 1

    def value(self) -> tuple[Any, int]:
        """The next JSON value and the line it starts on."""
        self.peek()
        line = self.line_at(self.pos)
        while True:
            try:
                obj, end = self.raw.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.eof or len(self.buf) - self.pos > _MAX_JSON_ELEMENT:
                    raise
                self._fill()
                continue
            if end == len(self.buf) and not self.eof and self._fill():
                continue  # a number may go on in the next chunk
            self.pos = end
            return obj, line


def _iter_json_records(js: _JsonStream, list_key: str) -> Iterator[tuple[int, Any]]:
    """Yield (line, record) from ``[...]``, ``{list_key: [...], ...}`` pages or JSON lines.

    A top-level object is read key by key until it shows whether it is a page (then
    its list is streamed) or a bare record (then the rest are read whole, one a line).
    """
    records_mode = False
    while (c := js.peek()) is not None:
        if c == "[":
            js.take("[")
            yield from _iter_json_array(js)
            continue
        if c != "{":
            raise json.JSONDecodeError("expected an object or a list", js.buf, js.pos)
        if records_mode:
            obj, line = js.value()
            yield line, obj
            continue
        start_line = js.line_at(js.pos)
        js.take("{")
        fields: dict[str, Any] = {}
        is_page = False
        if js.peek() == "}":
            js.take("}")
            continue
        while True:
            key, _ = js.value()
            js.take(":")
            if key == list_key and js.peek() == "[":
                js.take("[")
                is_page = True
                yield from _iter_json_array(js)
            else:
                fields[key], _ = js.value()
            if js.peek() == ",":
                js.take(",")
                continue
            js.take("}")
            break
        if not is_page:
            records_mode = True
            yield start_line, fields


def _iter_json_array(js: _JsonStream) -> Iterator[tuple[int, Any]]:
    if js.peek() == "]":
        js.take("]")
        return
    while True:
        obj, line = js.value()
        yield line, obj
        if js.peek() == ",":
            js.take(",")
            continue
        js.take("]")
        return


def _read_json(
    src: _Source,
    b: _Builder,
    list_key: str,
    handle: Callable[[_Builder, int, dict[str, Any]], None],
    what: str,
) -> None:
    js = _JsonStream(src, b)
    seen = False
    try:
        for line, rec in _iter_json_records(js, list_key):
            seen = True
            if not isinstance(rec, dict):
                b.problem(line, f"expected a record object, got {type(rec).__name__}")
                continue
            handle(b, line, rec)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = js.line_at(js.pos)
        if not seen:
            raise HashListError(f"{b.file}:{line}: not {what}: {_json_msg(e)}") from None
        b.fatal(line, f"JSON broke off: {_json_msg(e)}; the rest of the file was not read")
    except _READ_ERRORS as e:
        _read_error(src, b, e)


def _json_msg(e: Exception) -> str:
    return e.msg if isinstance(e, json.JSONDecodeError) else str(e)


def _str(rec: dict[str, Any], key: str) -> str | None:
    v = rec.get(key)
    if v is None or isinstance(v, dict | list):
        return None
    return str(v)


_STOPNCII_GONE = frozenset({"withdrawn", "deleted"})


def _stopncii_record(b: _Builder, line: int, rec: dict[str, Any]) -> None:
    signal, value = _str(rec, "signalType"), _str(rec, "hashValue")
    if not signal or value is None:
        b.problem(line, "record without signalType and hashValue")
        return
    # caseNumbers identify a victim's case: never kept.
    if (_str(rec, "hashStatus") or "").lower() in _STOPNCII_GONE:
        b.delete_value(signal, value, line)
    else:
        b.add(signal, value, None, None, line)


def _tcap_record(b: _Builder, line: int, rec: dict[str, Any]) -> None:
    algorithm, value = _str(rec, "algorithm"), _str(rec, "hash_digest")
    if not algorithm or value is None:
        b.problem(line, "record without algorithm and hash_digest")
        return
    file_type = (_str(rec, "file_type") or "").lower().lstrip(".")
    if file_type in _VIDEO_FILE_TYPES:
        b.skip("video entries")
        return
    deleted = rec.get("deleted")
    if deleted is True or (isinstance(deleted, str) and deleted.lower() == "true"):
        b.delete_value(algorithm, value, line)
    else:
        b.add(algorithm, value, _str(rec, "id"), _str(rec, "ideology"), line)


# -- NCMEC XML


class _Refused(Exception):
    pass


_NCMEC_FP_KINDS = {"md5": "md5", "sha1": "sha1", "sha256": "sha256", "pdq": "pdq"}


class _NcmecHandler:
    """expat callbacks for NCMEC entries; text is kept only for the elements we read."""

    _ENTRIES = frozenset({"image", "deletedImage", "video", "deletedVideo"})

    def __init__(self, b: _Builder, p: expat.XMLParserType) -> None:
        self.b, self.p = b, p
        self.depth = 0
        self.root: str | None = None
        self.entries = False
        self.cur: dict[str, Any] | None = None
        self.entry_depth = 0
        self.in_fp = False
        self.capture: str | None = None
        self.text: list[str] = []

    def start(self, name: str, _attrs: dict[str, str]) -> None:
        self.depth += 1
        local = name.rpartition(":")[2]  # a prefix, if the export uses one
        if self.cur is None:
            if local in self._ENTRIES:
                self.entries = True
                self.entry_depth = self.depth
                self.cur = {
                    "tag": local, "id": None, "cls": None, "fps": [],
                    "line": self.p.CurrentLineNumber,
                }  # fmt: skip
            elif self.depth == 1:
                self.root = local
            return
        rel = self.depth - self.entry_depth
        if rel == 1:
            if local == "fingerprints":
                self.in_fp = True
            elif local in ("id", "classification"):
                self.capture = local
                self.text.clear()
        elif rel == 2 and self.in_fp:
            self.capture = local
            self.text.clear()

    def chars(self, data: str) -> None:
        if self.capture is not None:
            self.text.append(data)

    def end(self, _name: str) -> None:
        depth = self.depth
        self.depth -= 1
        cur = self.cur
        if cur is None:
            return
        rel = depth - self.entry_depth
        if self.capture is not None and rel in (1, 2):
            value = "".join(self.text).strip()
            if rel == 2:
                cur["fps"].append((self.capture, value, self.p.CurrentLineNumber))
            elif self.capture == "id":
                cur["id"] = value
            else:
                cur["cls"] = value
            self.capture = None
        elif rel == 1:
            self.in_fp = False
        elif rel == 0:
            self.cur = None
            self.in_fp = False
            _ncmec_entry(self.b, cur)


def _read_ncmec_xml(src: _Source, b: _Builder) -> None:
    # expat directly (not ElementTree) so a DOCTYPE or entity can be refused outright:
    # entity expansion is how XML bombs and external-file reads work.
    p = expat.ParserCreate()
    p.buffer_text = True
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    h = _NcmecHandler(b, p)

    def refuse(*_: Any) -> None:
        raise _Refused("DOCTYPE/entity declarations are refused")

    p.StartElementHandler = h.start
    p.EndElementHandler = h.end
    p.CharacterDataHandler = h.chars
    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    p.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    try:
        while True:
            chunk = src.stream.read(_CHUNK)
            b.progress(src.done())
            p.Parse(chunk, not chunk)
            if not chunk:
                break
    except _Refused:
        raise HashListError(
            f"{b.file}:{p.CurrentLineNumber}: XML with a DOCTYPE or entity declaration is "
            "refused (entities can expand without bound or read other files); "
            "NCMEC exports have none"
        ) from None
    except expat.ExpatError as e:
        if h.root is None:
            raise HashListError(f"{b.file}:{e.lineno}: not XML: {_expat_msg(e)}") from None
        b.fatal(e.lineno, f"XML broke off: {_expat_msg(e)}; the rest of the file was not read")
    except _READ_ERRORS as e:
        _read_error(src, b, e)
    if h.root is not None and not h.entries and h.root != "queryResult":
        raise HashListError(
            f"{b.file}: not NCMEC hash-sharing XML (root element <{h.root}>, "
            "expected <queryResult> with <images>)"
        )


def _expat_msg(e: expat.ExpatError) -> str:
    return expat.ErrorString(e.code) if e.code else str(e)


def _ncmec_entry(b: _Builder, cur: dict[str, Any]) -> None:
    tag, ref, line = cur["tag"], cur["id"], cur["line"]
    if tag in ("video", "deletedVideo"):
        b.skip("video entries")
        return
    if tag == "deletedImage":
        if ref:
            b.delete_ref(ref)
        else:
            b.problem(line, "<deletedImage> without an <id>")
        return
    if not cur["fps"]:
        b.problem(line, "<image> without fingerprints")
        return
    for fp_tag, value, fp_line in cur["fps"]:
        kind = _NCMEC_FP_KINDS.get(fp_tag.lower())
        if kind is None:
            b.skip(f"unsupported type {fp_tag}")  # pdna (PhotoDNA) is licensed
            continue
        b.add(kind, value, ref or None, cur["cls"] or None, fp_line)


_READERS: dict[ListFormat, Callable[[_Source, _Builder], None]] = {
    ListFormat.PLAIN: _read_plain,
    ListFormat.THREATEXCHANGE_CSV: _read_threatexchange_csv,
    ListFormat.HMA_CSV: _read_hma_csv,
    ListFormat.STOPNCII_JSON: lambda s, b: _read_json(
        s, b, "hashRecords", _stopncii_record, "StopNCII JSON"
    ),
    ListFormat.TCAP_JSON: lambda s, b: _read_json(s, b, "results", _tcap_record, "TCAP JSON"),
    ListFormat.NCMEC_XML: _read_ncmec_xml,
}


def _canonical_kind(kind: str, what: str) -> str:
    k = _KIND_ALIASES.get(kind.strip().lower().replace("-", "").replace("_", ""))
    if k is None:
        raise HashListError(f"{what} {kind!r} is not a hash kind Vigil knows ({_kinds_str()})")
    return k


def _kinds_str() -> str:
    return ", ".join(sorted(KINDS))


def import_list(
    path: Path,
    fmt: ListFormat,
    *,
    default_kind: str | None = None,
    kinds: frozenset[str] | None = None,
    name: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Read a hash list file; bad entries become problems, never exceptions.

    ``default_kind`` resolves bare hex whose length is ambiguous (64: sha256 or pdq);
    ``kinds`` limits the list to the kinds its declaration allows. Raises
    :class:`HashListError` only if the file cannot be read or is not ``fmt`` at all.
    """
    path = Path(path)
    fmt = ListFormat(fmt)
    allowed = None if kinds is None else frozenset(_canonical_kind(k, "kind") for k in kinds)
    dk = None if default_kind is None else _canonical_kind(default_kind, "default kind")
    if dk is not None and allowed is not None and dk not in allowed:
        raise HashListError(f"default kind {dk} is not one of the list's kinds")
    if fmt is ListFormat.HMA_CSV and dk is None and (allowed is None or "pdq" in allowed):
        dk = "pdq"  # HMA's CSV datasets carry PDQ hashes
    src = _Source(path)
    b = _Builder(str(path), default_kind=dk, kinds=allowed, progress=progress, total=src.total)
    try:
        _READERS[fmt](src, b)
    finally:
        src.close()
    nothing_valid = (
        not b.cols and b.problems and b.invalid and b.invalid >= sum(b.skip_reasons.values())
    )
    if fmt in (ListFormat.PLAIN, ListFormat.HMA_CSV) and nothing_valid:
        raise HashListError(
            f"{path}: not a {fmt} hash list: no valid entry (first: {b.problems[0]})"
        )
    b.progress(src.total)
    result = b.finish(name or path.stem, fmt)
    log.info("hash list %s imported (%s): %s", result.name, fmt, result.summary())
    return result


def detect_format(path: Path) -> ListFormat | None:
    """Best-effort guess of a list file's format from its first bytes; None if unsure."""
    try:
        src = _Source(Path(path))
    except HashListError:
        return None
    try:
        head = src.stream.read(64 << 10)
    except _READ_ERRORS:
        return None
    finally:
        src.close()
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        return None
    if text.startswith("<"):
        markers = ("hashsharing", "<queryResult", "<images", "<fingerprints")
        return ListFormat.NCMEC_XML if any(m in text for m in markers) else None
    if text[0] in "[{":
        if '"hashRecords"' in text or '"signalType"' in text:
            return ListFormat.STOPNCII_JSON
        if '"hash_digest"' in text:
            return ListFormat.TCAP_JSON
        return None
    lines = [ln.strip() for ln in text.splitlines()]
    data = [ln for ln in lines if ln and not ln.startswith("#")]
    if not data:
        return None
    first = data[0].lower().replace(" ", "")
    if first.startswith("signal_type,") or ",signal_type," in first:
        return ListFormat.THREATEXCHANGE_CSV
    field0 = data[0].split(",")[0].strip()
    if "," in data[0] and (_HEX_RE.fullmatch(field0) or field0.lower() in ("hash", "pdq_hash")):
        return ListFormat.HMA_CSV
    tokens = data[0].split()
    if _HEX_RE.fullmatch(tokens[0]) or (len(tokens) >= 2 and _HEX_RE.fullmatch(tokens[1])):
        return ListFormat.PLAIN
    return None


# --- cache --------------------------------------------------------------------------


def save_cache(result: ImportResult, path: Path) -> None:
    """Write ``result`` as an uncompressed .npz (no pickle), atomically."""
    path = Path(path)
    categories: tuple[str, ...] = ()
    arrays: dict[str, np.ndarray] = {}
    for kind, t in result.tables.items():
        categories = t.categories
        arrays[f"{kind}.values"] = t.values
        arrays[f"{kind}.ref_blob"] = np.frombuffer(t.ref_blob, dtype=np.uint8)
        arrays[f"{kind}.ref_off"] = t.ref_off
        arrays[f"{kind}.cat_codes"] = t.cat_codes
    meta = {
        "version": _CACHE_VERSION,
        "name": result.name,
        "kinds": list(result.tables),
        "categories": list(categories),
        "problems": [[p.file, p.line, p.reason] for p in result.problems],
        "skipped": result.skipped,
        "skip_reasons": result.skip_reasons,
        "invalid": result.invalid,
        "deleted": result.deleted,
        "duplicates": result.duplicates,
        "complete": result.complete,
        "source": result.source,
        "format": result.format,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_cache(path: Path) -> ImportResult:
    """Read a cache written by :func:`save_cache`; HashListError if it is not one."""
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise HashListError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise HashListError(f"{path}: not a hash list cache ({e})") from None
    with npz:
        try:
            meta = json.loads(npz["meta"].tobytes())
        except (KeyError, ValueError):
            raise HashListError(f"{path}: not a hash list cache (no metadata)") from None
        if meta.get("version") != _CACHE_VERSION:
            raise HashListError(
                f"{path}: cache version {meta.get('version')!r}, expected {_CACHE_VERSION}; "
                "re-import the list"
            )
        categories = tuple(meta["categories"])
        tables = []
        for kind in meta["kinds"]:
            if kind not in KINDS:
                raise HashListError(f"{path}: unknown kind {kind!r} in cache")
            try:
                values = npz[f"{kind}.values"]
                blob = npz[f"{kind}.ref_blob"].tobytes()
                off = npz[f"{kind}.ref_off"]
                codes = npz[f"{kind}.cat_codes"]
            except KeyError as e:
                raise HashListError(f"{path}: cache is missing {e}") from None
            n = values.shape[0] if values.ndim == 2 else -1
            if (
                values.dtype != np.uint8
                or values.ndim != 2
                or values.shape[1] != KIND_HEX_LEN[kind] // 2
                or off.shape not in ((n + 1,), (0,))
                or codes.shape not in ((n,), (0,))
                or (off.size and int(off[-1]) != len(blob))
                or int(codes.max(initial=-1)) >= len(categories)
            ):
                raise HashListError(f"{path}: cache table {kind} is inconsistent; re-import")
            tables.append(
                KindTable(
                    kind,
                    values,
                    blob,
                    off.astype(np.int64, copy=False),
                    codes.astype(np.int32, copy=False),
                    categories,
                )
            )
    records = RecordTable(tables)
    return ImportResult(
        name=meta["name"],
        records=records,
        problems=[ImportProblem(f, ln, r) for f, ln, r in meta["problems"]],
        loaded=len(records),
        skipped=meta["skipped"],
        skip_reasons=dict(meta["skip_reasons"]),
        invalid=meta["invalid"],
        deleted=meta["deleted"],
        duplicates=meta["duplicates"],
        complete=meta["complete"],
        source=meta["source"],
        format=meta["format"],
    )


def is_cache(path: Path) -> bool:
    """True if ``path`` looks like a cache file (a zip with our metadata)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def list_stats(result: ImportResult) -> dict[str, Any]:
    """Counts for ``vigil hashlist stats``: per kind, deleted, duplicates, problems."""
    return {
        "name": result.name,
        "format": result.format,
        "loaded": result.loaded,
        "by_kind": {k: len(t) for k, t in result.tables.items()},
        "skipped": result.skipped,
        "skip_reasons": dict(result.skip_reasons),
        "invalid": result.invalid,
        "deleted": result.deleted,
        "duplicates": result.duplicates,
        "problems": result.invalid + (0 if result.complete else 1),
        "complete": result.complete,
    }


# --- CLI ----------------------------------------------------------------------------


class _ArgError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that writes to the streams it was given and never exits the process."""

    def __init__(self, *a: Any, out: TextIO, err: TextIO, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._out, self._err = out, err

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        if message:
            (self._out if file is sys.stdout else self._err).write(message)

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        if message:
            self._err.write(message)
        raise _ArgError(status)


class ProgressBar:
    """Progress for big imports: a redrawn bar on a TTY, a line per 10% otherwise."""

    def __init__(self, err: TextIO, label: str) -> None:
        self.err, self.label = err, label
        isatty = getattr(err, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        step = pct if self.tty else pct // 10 * 10
        if step == self.last:
            return
        self.last = step
        mb = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
        if self.tty:
            bar = "#" * (pct // 4) + "-" * (25 - pct // 4)
            end = "\n" if pct >= 100 else ""
            self.err.write(f"\r{self.label} [{bar}] {pct:3d}% {mb}{end}")
        else:
            self.err.write(f"{self.label}: {step}% ({mb})\n")
        self.err.flush()


def _print_problems(result: ImportResult, err: TextIO, limit: int = 20) -> None:
    for p in result.problems[:limit]:
        err.write(f"{p}\n")
    more = result.invalid + (0 if result.complete else 1) - min(limit, len(result.problems))
    if more > 0:
        err.write(f"... and {more} more problems\n")


def _print_stats(stats: dict[str, Any], out: TextIO) -> None:
    out.write(f"{stats['name']} ({stats['format']}): {stats['loaded']} entries\n")
    for kind, n in stats["by_kind"].items():
        out.write(f"  {kind}: {n}\n")
    out.write(
        f"  skipped: {stats['skipped']} (invalid {stats['invalid']}"
        + "".join(f", {r} {n}" for r, n in stats["skip_reasons"].items())
        + ")\n"
    )
    out.write(f"  removed by deletions: {stats['deleted']}, duplicates: {stats['duplicates']}\n")
    if not stats["complete"]:
        out.write("  INCOMPLETE: the file broke off part-way\n")


def hashlist_command(argv: list[str], out: TextIO, err: TextIO) -> int:
    """``vigil hashlist import|stats``: import a list (optionally to a cache) or show counts."""
    ap = _Parser(prog="vigil hashlist", out=out, err=err, description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    formats = [f.value for f in ListFormat]
    imp = sub.add_parser("import", help="import a list file", out=out, err=err)
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", choices=formats, help="default: detected from the file")
    imp.add_argument("--kind", help=f"kind of bare ambiguous hashes ({_kinds_str()})")
    imp.add_argument("--name", default="", help="list name (default: file name)")
    imp.add_argument("--out", type=Path, help="write a cache file (.npz) for fast reloads")
    imp.add_argument("--strict", action="store_true", help="exit 1 if any entry was invalid")
    st = sub.add_parser("stats", help="counts of a list file or cache", out=out, err=err)
    st.add_argument("file", type=Path)
    st.add_argument("--format", choices=formats)
    st.add_argument("--kind")
    st.add_argument("--json", action="store_true", help="one JSON object")
    try:
        args = ap.parse_args(argv)
    except _ArgError as e:
        return e.status

    try:
        if args.cmd == "stats" and args.format is None and is_cache(args.file):
            result = load_cache(args.file)
        else:
            fmt = ListFormat(args.format) if args.format else detect_format(args.file)
            if fmt is None:
                if not args.file.exists():
                    raise HashListError(f"{args.file}: no such file")
                raise HashListError(
                    f"{args.file}: cannot tell the list format; pass --format "
                    f"({', '.join(formats)})"
                )
            bar = ProgressBar(err, args.file.name)
            result = import_list(
                args.file,
                fmt,
                default_kind=args.kind,
                name=getattr(args, "name", ""),
                progress=bar,
            )
            _print_problems(result, err)
    except HashListError as e:
        err.write(f"error: {e}\n")
        return 1

    if args.cmd == "stats":
        stats = list_stats(result)
        if args.json:
            out.write(json.dumps(stats) + "\n")
        else:
            _print_stats(stats, out)
        return 0 if result.complete else 1

    out.write(f"{result.name}: {result.summary()}\n")
    kinds = ", ".join(f"{k} {len(t)}" for k, t in result.tables.items())
    if kinds:
        out.write(f"  by kind: {kinds}\n")
    if args.out is not None:
        try:
            save_cache(result, args.out)
        except OSError as e:
            err.write(f"error: cannot write cache {args.out}: {e.strerror}\n")
            return 1
        out.write(f"  cache written: {args.out}\n")
    if not result.complete or (args.strict and result.invalid):
        return 1
    return 0
