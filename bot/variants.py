"""Hashes that survive the edits re-posters make: crops, frames, captions, small rotations.

PDQ moves about 26 bits for a 1% shift and 50-120 for a 3% crop, a border or a caption
band (``docs/robustness.md``), so one hash of the original misses most edited copies.
Three measures, each cheap on the side where it runs:

**Query side** (every image, about +30% over ``hash_image``): the picture is cut out of
its frame (:mod:`bot.trimming`) and hashed as well as the untrimmed image: PDQ with its
8 dihedral variants, PDQ at the variants' scale (:func:`_small_pdq`) and ``lowfreq``.

**Enrolment side** (when Vigil has the original: a takedown, ``vigil bank add``): PDQs
of *variants* are stored beside the original's own: every crop cutting 0, 1.5, 3 or
4.5% from each side (255), of the original and of its trimmed picture. A re-post
cropped by up to about 5% a side lands within 31 bits of one of them, so it is caught
in the **confident** tier by the ordinary PDQ index (a variant is a PDQ like any other).

**Review tier**: ``lowfreq``, a 128-bit hash of the lowest spatial frequencies (the 128
lowest DCT coefficients of a 32 x 32 grid of area means, median-thresholded like PDQ),
computed from an integral image, so any crop costs 1,024 lookups and two small matrix
products. Low frequencies move slowly under shifts, so one stored variant covers a wide
range of crops; the original is enrolled on a grid of crops (0-15% a side, 5% steps)
and at +-5 degree rotations. A ``lowfreq`` match only ever raises an alert for a person
(:mod:`bot.tiers`).

Everything works on the upright thumbnail (at most 576 px a side) that
:func:`bot.hashing.hash_image` hashes, from the same single decode
(:func:`bot.hashing.hash_image_and_thumbnail`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pdqhash
from PIL import Image

from bot.hashing import DecodeLimits, ImageHashes, hash_image_and_thumbnail
from bot.matching import HammingIndex
from bot.tiers import CONFIDENT, CONFIDENT_PDQ_DISTANCE, REVIEW, REVIEW_LOWFREQ_DISTANCE, tier_of
from bot.trimming import Box, content_box

log = logging.getLogger(__name__)

LOWFREQ_BITS = 128
_GRID = 32  # area-mean grid the DCT runs on
_LUMA_MAX = 320  # the integral image is built at half scale above this side
_K = 12  # DCT coefficients per axis the 128 lowest are chosen from

# Enrolment grids, in fractions of a side cut from each side (every combination). PDQ:
# a crop of up to ~5% a side lands within 0.75% a side of a variant, where PDQ moves
# about 15-25 bits. lowfreq tolerates ~3% a side, so 5% steps up to 15% suffice.
PDQ_CROP_STEPS = (0.0, 0.015, 0.03, 0.045)
SMALL_PDQ_PX = 288
LOWFREQ_CROP_STEPS = (0.0, 0.05, 0.10, 0.15)
ROTATIONS = (-5.0, 5.0)
QUERY_LOWFREQ_FLIPS = 2


def _dct_matrix(k: int, n: int) -> np.ndarray:
    x = np.arange(n)
    u = np.arange(k)[:, None]
    return np.cos(np.pi * (2 * x + 1) * u / (2 * n)).astype(np.float64)


_D = _dct_matrix(_K, _GRID)
# The coefficients kept: lowest u + v first, DC excluded, LOWFREQ_BITS of them.
_ORDER = sorted(
    ((u, v) for u in range(_K) for v in range(_K) if (u, v) != (0, 0)),
    key=lambda uv: (uv[0] + uv[1], uv[0]),
)[:LOWFREQ_BITS]
_SEL_U = np.array([u for u, _ in _ORDER])
_SEL_V = np.array([v for _, v in _ORDER])


class Luma:
    """An image's luminance as an integral image: the mean of any box in O(1).

    Built at half the thumbnail's resolution when that is over ``_LUMA_MAX`` px: the 32 x
    32 grid needs no more, and the integral image costs a quarter. Boxes are given in
    the image's own pixels either way.
    """

    def __init__(self, img: Image.Image) -> None:
        """Build from an RGB (or L) image."""
        grey = img.convert("L")  # ITU-R 601 weights, as PDQ's luminance
        self.width, self.height = img.size
        self._scale = 1
        while max(grey.size) > _LUMA_MAX:
            grey = grey.reduce(2)
            self._scale *= 2
        y = np.asarray(grey, dtype=np.float64)
        s = np.zeros((y.shape[0] + 1, y.shape[1] + 1), dtype=np.float64)
        np.cumsum(np.cumsum(y, axis=0), axis=1, out=s[1:, 1:])
        self._s = s
        self._h, self._w = y.shape

    def grid(self, box: Box, n: int = _GRID) -> np.ndarray:
        """(n, n) means of an n x n grid of cells tiling ``box``."""
        k = self._scale
        xs = np.round(np.linspace(box.left / k, box.right / k, n + 1)).astype(np.intp)
        ys = np.round(np.linspace(box.top / k, box.bottom / k, n + 1)).astype(np.intp)
        xs = np.clip(xs, 0, self._w)
        ys = np.clip(ys, 0, self._h)
        s = self._s
        # A cell narrower than a pixel (a tiny image) takes the pixel it starts in.
        x0 = np.minimum(xs[:-1], self._w - 1)
        y0 = np.minimum(ys[:-1], self._h - 1)
        x1 = np.maximum(xs[1:], x0 + 1)
        y1 = np.maximum(ys[1:], y0 + 1)
        sums = s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0]
        return sums / ((y1 - y0)[:, None] * (x1 - x0)[None, :])

    @property
    def box(self) -> Box:
        """The whole image."""
        return Box(0, 0, self.width, self.height)


def _coefficients(grid: np.ndarray) -> np.ndarray:
    return _D @ grid @ _D.T  # (K, K): u along y, v along x


def _bits_hex(values: np.ndarray) -> str:
    bits = values > np.median(values)
    return np.packbits(bits).tobytes().hex()


def _dihedral_coefficients(c: np.ndarray) -> list[np.ndarray]:
    """The DCT coefficients of the 8 rotations/flips of the image, from its own."""
    sign_u = (-1.0) ** np.arange(_K)[:, None]  # vertical flip negates odd u
    sign_v = (-1.0) ** np.arange(_K)[None, :]  # horizontal mirror negates odd v
    out = []
    for base in (c, c.T):  # transposing the image transposes the coefficients
        for flip_u, flip_v in itertools.product((False, True), repeat=2):
            m = base
            if flip_u:
                m = m * sign_u
            if flip_v:
                m = m * sign_v
            out.append(m)
    return out


def lowfreq(luma: Luma, box: Box | None = None, flips: int = 1) -> list[str]:
    """The lowfreq hash of ``box`` (default: the whole image) as hex.

    ``flips`` > 1 adds hashes of the flipped/rotated image, in the order: as is,
    mirrored, upside down, rotated 180, then the four transposed ones (at most 8).
    """
    c = _coefficients(luma.grid(box or luma.box))
    mats = _dihedral_coefficients(c)[:flips] if flips > 1 else [c]
    return [_bits_hex(m[_SEL_U, _SEL_V]) for m in mats]


def _pdq(rgb: np.ndarray, dihedral: bool = False) -> tuple[list[str], int]:
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if dihedral:
        vectors, quality = pdqhash.compute_dihedral(arr)
    else:
        vector, quality = pdqhash.compute(arr)
        vectors = [vector]
    return [np.packbits(v.astype(np.uint8)).tobytes().hex() for v in vectors], int(quality)


def _crop_boxes(box: Box, steps: Sequence[float]) -> list[Box]:
    """Every crop of ``box`` cutting ``steps[i]`` of a side from each side (not the box itself)."""
    out = []
    for fl, ft, fr, fb in itertools.product(steps, repeat=4):
        if fl == ft == fr == fb == 0:
            continue
        cut = Box(
            box.left + round(box.width * fl),
            box.top + round(box.height * ft),
            box.right - round(box.width * fr),
            box.bottom - round(box.height * fb),
        )
        out.append(cut)
    return out


def _small_pdq(img: Image.Image, box: Box | None = None) -> tuple[str, int]:
    """PDQ of ``box`` of ``img`` (default: all of it) squeezed to ``SMALL_PDQ_PX`` square.

    Each variant and each query is hashed at this one scale, so they compare like with
    like; at 288 px PDQ's blur box is 3 wide (odd, so centred) and a hash costs about a
    millisecond, a third of one at 576.
    """
    region = None if box is None else (box.left, box.top, box.right, box.bottom)
    small = img.resize((SMALL_PDQ_PX, SMALL_PDQ_PX), Image.Resampling.BOX, box=region)
    (h,), q = _pdq(np.asarray(small.convert("RGB") if small.mode != "RGB" else small))
    return h, q


@dataclass(frozen=True, slots=True)
class EnrolmentHashes:
    """What the bank stores for one original besides its :class:`ImageHashes`.

    ``pdq``: PDQs of crop variants and of the trimmed original (confident tier);
    ``lowfreq``: lowfreq hashes of the original, its crops and rotations (review tier).
    """

    pdq: tuple[str, ...]
    lowfreq: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueryHashes:
    """What a scanned image is matched with: its ordinary hashes plus the robust ones.

    ``trimmed_pdq``: the 8 dihedral PDQs of the picture cut out of its frame (empty when
    there was no frame or its quality is too low); ``lowfreq``: the lowfreq hashes
    (as is and mirrored) of the untrimmed and (if any) trimmed image; ``small_pdq``: the
    PDQ of the untrimmed and trimmed image at the variants' scale (:func:`_small_pdq`).
    """

    base: ImageHashes
    trimmed: Box | None
    trimmed_pdq: tuple[str, ...]
    trimmed_pdq_quality: int
    lowfreq: tuple[str, ...]
    small_pdq: tuple[str, ...] = ()


MIN_PDQ_QUALITY = 50
_LIMITS = DecodeLimits()


def enrolment_hashes(thumb: Image.Image) -> EnrolmentHashes:
    """Variant hashes of an upright original ``thumb`` (the reduced decode, RGB)."""
    rgb = np.asarray(thumb.convert("RGB"))
    luma = Luma(thumb)
    bases = [luma.box]
    inner = content_box(rgb)
    if inner is not None:
        bases.append(inner)  # a framed original: its picture is what a trimmed query shows
    pdqs: list[str] = []
    lows: list[str] = []
    for base in bases:
        for box in [base, *_crop_boxes(base, PDQ_CROP_STEPS)]:
            h, q = _small_pdq(thumb, box)
            if q >= MIN_PDQ_QUALITY:
                pdqs.append(h)
        lows += lowfreq(luma, base)
        lows += [lowfreq(luma, b)[0] for b in _crop_boxes(base, LOWFREQ_CROP_STEPS)]
    for angle in ROTATIONS:
        for expand in (True, False):
            rot = thumb.rotate(angle, Image.Resampling.BILINEAR, expand=expand, fillcolor=(0, 0, 0))
            r_luma = Luma(rot)
            box = r_luma.box if expand else _inscribed(r_luma.box, angle)
            lows += lowfreq(r_luma, box)
    return EnrolmentHashes(tuple(dict.fromkeys(pdqs)), tuple(dict.fromkeys(lows)))


def _inscribed(box: Box, angle: float) -> Box:
    """The largest centred box of the same aspect inside ``box`` rotated by ``angle``."""
    w, h = box.width, box.height
    a = math.radians(abs(angle))
    k = 1.0 / (math.cos(a) + math.sin(a) * max(w / h, h / w))
    cw, ch = w * k, h * k
    return Box(
        round(box.left + (w - cw) / 2),
        round(box.top + (h - ch) / 2),
        round(box.left + (w + cw) / 2),
        round(box.top + (h + ch) / 2),
    )


def query_hashes_from(base: ImageHashes, thumb: Image.Image) -> QueryHashes:
    """The robust hashes of a scanned image from its upright thumbnail."""
    rgb = np.asarray(thumb.convert("RGB"))
    luma = Luma(thumb)
    # As is and mirrored only: each extra query hash multiplies the chances of a false
    # match, and rotated/flipped copies are caught by the dihedral PDQs already.
    lows = lowfreq(luma, flips=QUERY_LOWFREQ_FLIPS)
    box = content_box(rgb)
    tpdq: tuple[str, ...] = ()
    tq = 0
    small = [_small_pdq(thumb)]
    if box is not None:
        crop = np.ascontiguousarray(rgb[box.top : box.bottom, box.left : box.right])
        hexes, tq = _pdq(crop, dihedral=True)
        if tq >= MIN_PDQ_QUALITY:
            tpdq = tuple(hexes)
        small.append(_small_pdq(thumb, box))
        lows += lowfreq(luma, box, flips=QUERY_LOWFREQ_FLIPS)
    small_pdq = tuple(h for h, q in small if q >= MIN_PDQ_QUALITY)
    return QueryHashes(base, box, tpdq, tq, tuple(dict.fromkeys(lows)), small_pdq)


def hash_for_query(data: bytes, limits: DecodeLimits = _LIMITS) -> QueryHashes:
    """Every hash of a scanned image: ``hash_image``'s and the robust ones (one decode)."""
    base, thumb = hash_image_and_thumbnail(data, limits)
    return query_hashes_from(base, thumb)


def hash_for_enrolment(
    data: bytes, limits: DecodeLimits = _LIMITS
) -> tuple[ImageHashes, EnrolmentHashes]:
    """Every hash the bank keeps of an original: ``hash_image``'s and its variants'."""
    base, thumb = hash_image_and_thumbnail(data, limits)
    return base, enrolment_hashes(thumb)


def query_pdqs(q: QueryHashes) -> list[str]:
    """The PDQs a scanned image is matched with (quality >= 50): untrimmed and trimmed."""
    out: list[str] = []
    if q.base.pdq_quality >= MIN_PDQ_QUALITY:
        out += q.base.pdq_dihedral
    out += q.trimmed_pdq
    out += q.small_pdq
    return list(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Hit:
    """One enrolled original a scanned image matched: best distance per kind, and its tier."""

    owner: int
    kind: str  # "sha256", "pdq" (the original or a variant), "lowfreq"
    distance: int
    tier: str


class VariantBank:
    """Originals enrolled with their variants, matched as the tiers say.

    In memory, for ``python -m bench.robustness`` and ``vigil scan``; the service keeps
    the same hashes in the local bank (see ``bot.bank_cli``).
    """

    def __init__(self) -> None:
        self._sha256: dict[str, int] = {}
        self._rows: dict[str, list[tuple[int, str]]] = {"pdq": [], "lowfreq": []}
        self._index: dict[str, tuple[HammingIndex, np.ndarray]] = {}

    def add(self, owner: int, base: ImageHashes | None, enrol: EnrolmentHashes) -> None:
        """Enrol one original under ``owner`` (its own hashes, if known, and its variants)."""
        if base is not None:
            self._sha256[base.sha256] = owner
            if base.pdq_quality >= MIN_PDQ_QUALITY:
                self._rows["pdq"].append((owner, base.pdq))
        self._rows["pdq"] += [(owner, h) for h in enrol.pdq]
        self._rows["lowfreq"] += [(owner, h) for h in enrol.lowfreq]
        self._index.clear()

    def add_hex(self, owner: int, kind: str, value: str) -> None:
        """Enrol one stored ``(kind, hex)`` (as the local bank keeps them)."""
        if kind == "sha256":
            self._sha256[value] = owner
        elif kind in self._rows:
            self._rows[kind].append((owner, value))
        self._index.clear()

    def _built(self, kind: str) -> tuple[HammingIndex, np.ndarray] | None:
        if kind not in self._index:
            rows = self._rows[kind]
            if not rows:
                return None
            bits = 256 if kind == "pdq" else LOWFREQ_BITS
            radius = CONFIDENT_PDQ_DISTANCE if kind == "pdq" else REVIEW_LOWFREQ_DISTANCE
            raw = bytes.fromhex("".join(h for _, h in rows))
            arr = np.frombuffer(raw, dtype=np.uint8).reshape(len(rows), bits // 8).copy()
            owners = np.array([o for o, _ in rows], dtype=np.int64)
            self._index[kind] = (HammingIndex(arr, bits, radius), owners)
        return self._index[kind]

    def _nearest(self, kind: str, queries: Sequence[str]) -> dict[int, int]:
        built = self._built(kind)
        best: dict[int, int] = {}
        if built is None:
            return best
        index, owners = built
        for q in queries:
            for row, distance in index.query(bytes.fromhex(q)):
                owner = int(owners[row])
                if distance < best.get(owner, 1 << 30):
                    best[owner] = distance
        return best

    def match(self, q: QueryHashes) -> list[Hit]:
        """Every enrolled original ``q`` matches, best distance per (original, kind)."""
        hits: list[Hit] = []
        owner = self._sha256.get(q.base.sha256)
        if owner is not None:
            hits.append(Hit(owner, "sha256", 0, CONFIDENT))
        for o, d in self._nearest("pdq", query_pdqs(q)).items():
            hits.append(Hit(o, "pdq", d, tier_of("pdq", d)))
        for o, d in self._nearest("lowfreq", q.lowfreq).items():
            hits.append(Hit(o, "lowfreq", d, REVIEW))
        return sorted(hits, key=lambda h: (h.owner, h.kind))

    def __len__(self) -> int:
        return len(self._sha256) + sum(len(r) for r in self._rows.values())
