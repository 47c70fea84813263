"""Image hashing: exact hashes over the bytes, perceptual hashes from one reduced decode.

``hash_image`` is the only place Vigil decodes an untrusted image. It sniffs the format
from the magic bytes, checks the declared pixel count before any pixel is decoded, asks
the JPEG decoder for a reduced-size decode (``draft``), shrinks everything else to a
``thumbnail_px`` thumbnail, and computes pHash, dHash (imagehash, 64-bit) and PDQ with
its 8 dihedral variants (pdqhash) from that one small image. Hashing the thumbnail moves
PDQ by a few bits and is many times faster than hashing the full image
(``python -m bench.hashing``). :func:`hash_image_and_thumbnail` also hands out that upright
thumbnail, so the robust hashes of :mod:`bot.variants` need no second decode.

Animations (GIF, animated WebP/PNG, multi-page TIFF): the main hashes are those of the
first frame; frames 1 .. ``max_frames - 1`` are hashed too (``ImageHashes.extra_frames``)
so an animation whose first frame is a decoy is still caught. Later frames are never
decoded, so a 10,000-frame GIF costs the same as a 4-frame one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO, TypeVar

import imagehash
import numpy as np
import pdqhash
from PIL import Image, ImageFile

log = logging.getLogger(__name__)
T = TypeVar("T")

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 50_000_000

# Pillow's own bomb guard is a backstop behind our declared-size check: it must never be
# off (None) or looser than our default, whatever another library set it to.
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > DEFAULT_MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
# Sizes between Pillow's limit and twice it only warn; our declared-size check rejects
# them with a reason, so the warning would be noise on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# A truncated file is a rejected file, never a half-grey image with a hash.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112


class ImageRejected(Exception):
    """The bytes are not an image Vigil will hash; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """Caps on what one image may cost to decode.

    ``max_frames`` counts the first frame: 4 means frame 0 (the main hashes) plus up to
    three more of an animation (``extra_frames``); frames after that are never decoded.
    ``thumbnail_px`` caps each side of the image the perceptual hashes are computed from.
    576, not 512: PDQ blurs with a box of ceil(side / 128) pixels, and an even box (4 at
    512) is off-centre by half a pixel per pass; at 576 the box is 5 wide and centred.
    Measured on 24 generated photos (0.3-12 MP): at most 6 bits from full-resolution PDQ
    at 576, 14-16 at 512, for the same speed.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_frames: int = 4
    thumbnail_px: int = 576


@dataclass(frozen=True, slots=True)
class FrameHashes:
    """Perceptual hashes of one extra frame of an animation (``index`` >= 1)."""

    index: int
    phash: str
    dhash: str
    pdq: str
    pdq_quality: int


@dataclass(frozen=True, slots=True)
class ImageHashes:
    """Every hash of one image; hex strings are lowercase."""

    sha256: str
    md5: str
    sha1: str
    phash: str
    dhash: str
    pdq: str
    pdq_quality: int
    pdq_dihedral: tuple[str, ...]
    width: int
    height: int
    format: str
    extra_frames: tuple[FrameHashes, ...] = field(default=())

    def to_json_dict(self) -> dict[str, Any]:
        """The keys of a ``vigil hash`` line (DESIGN §5), without ``path``."""
        return {
            "sha256": self.sha256,
            "md5": self.md5,
            "sha1": self.sha1,
            "phash": self.phash,
            "dhash": self.dhash,
            "pdq": self.pdq,
            "pdq_quality": self.pdq_quality,
        }


def sniff_format(data: bytes) -> str | None:
    """Name the format from the magic bytes alone (``"JPEG"``, ``"SVG"``, ...), or None."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    # Formats we refuse, named so the recorded reason tells a moderator what it was.
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"%!PS"):
        return "PostScript"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"mif1", b"msf1"):
            return "HEIF"
        return "MP4"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "JPEG XL"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"PK\x03\x04"):
        return "ZIP"
    if head.startswith(b"\x1f\x8b"):
        return "GZIP"
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        return "HTML"
    if text.startswith(b"<?xml"):
        return "XML"
    if text.startswith((b"{", b"[")):
        return "JSON"
    return None


def _bits_to_hex(bits: np.ndarray) -> str:
    # pdqhash returns the reference's bit order (bit 255 first), so packing MSB-first gives
    # the same 64 hex digits as Meta's pdq-photo-hasher and ThreatExchange.
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, transparency composited onto white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # convert("L") would clip 16-bit values at 255 (a white image): scale instead.
        arr = np.asarray(im).astype(np.uint32)
        shift = 8 if im.mode != "I" or arr.max(initial=0) > 255 else 0
        im = Image.fromarray(np.clip(arr >> shift, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8; a corrupted EXIF block counts as 'upright', never as an error."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return value if isinstance(value, int) and value in _ORIENTATION_FIX else 1
    except Exception:  # Pillow raises a zoo of types on broken EXIF; none may fail the image
        log.debug("ignoring unreadable EXIF block")
        return 1


def _reduce(im: Image.Image, limits: DecodeLimits) -> Image.Image:
    """Decode the current frame into a small RGB image, each side at most thumbnail_px."""
    w, h = im.size
    # Each axis on its own: PDQ, pHash and dHash all squash the image to a square anyway.
    size = (min(w, limits.thumbnail_px), min(h, limits.thumbnail_px))
    if im.format in ("JPEG", "MPO") and size != (w, h):
        # The DCT decoder then decodes at 1/2, 1/4 or 1/8 scale (never below ``size``),
        # which is most of the speed-up over a full decode.
        im.draft("RGB", size)
    im.load()
    small = im
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        # Resampling palette, 1-bit or 16-bit images is nearest-neighbour or unsupported.
        small = _to_rgb(im)
    if small.size != size:
        small = small.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    return _to_rgb(small)


def _declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height from the header alone, past Pillow's bomb guard (for the reason)."""
    Image.init()
    try:
        factory, _accept = Image.OPEN[fmt]
        with factory(io.BytesIO(data), "") as im:  # reads the header; decodes nothing
            return im.size
    except Exception:  # only used to word a rejection; the image is rejected anyway
        return None


def _perceptual(rgb: Image.Image) -> tuple[str, str, str, int, tuple[str, ...]]:
    """pHash, dHash, PDQ, PDQ quality and the 8 dihedral PDQs of one RGB image."""
    phash = str(imagehash.phash(rgb))
    dhash = str(imagehash.dhash(rgb))
    arr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    vectors, quality = pdqhash.compute_dihedral(arr)
    dihedral = tuple(_bits_to_hex(v) for v in vectors)
    return phash, dhash, dihedral[0], int(quality), dihedral


# Pillow reports truncation and corruption through all of these.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)


def _upright_thumbnail(
    im: Image.Image, limits: DecodeLimits, fix: Image.Transpose | None
) -> Image.Image:
    """The current frame decoded small (RGB, at most ``thumbnail_px`` a side), upright."""
    small = _reduce(im, limits)
    return small.transpose(fix) if fix is not None else small


def hash_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> ImageHashes:
    """Hash one image file's bytes; raise ImageRejected (with a reason) for anything bad."""
    return hash_image_and_thumbnail(data, limits)[0]


def hash_image_and_thumbnail(
    data: bytes, limits: DecodeLimits = DecodeLimits()
) -> tuple[ImageHashes, Image.Image]:
    """:func:`hash_image` and the upright frame-0 thumbnail it hashed, from its one decode.

    The thumbnail (RGB, at most ``limits.thumbnail_px`` a side) is what the robust hashes
    of :mod:`bot.variants` are computed from, so they cost no second decode.
    """
    # Another library in the process (Synapse sets it at import) may have switched
    # Pillow to accepting truncated files; a truncated upload must stay a rejection.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if not data:
        raise ImageRejected("empty file")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not a recognised image format")
    if fmt not in ACCEPTED_FORMATS:
        raise ImageRejected(f"format {fmt} is not accepted")

    sha256 = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()

    try:
        # formats=[fmt]: Pillow may only use the plugin the magic bytes named, so no bytes
        # can steer it into another decoder (EPS would even run Ghostscript).
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            width, height = im.size  # header only: nothing decoded yet
            if width <= 0 or height <= 0:
                raise ImageRejected("image has no pixels")
            mp_limit = limits.max_pixels / 1_000_000
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    f"declared size {width}x{height} exceeds the {mp_limit:g} megapixel limit"
                )
            orientation = _orientation(im)
            fix = _ORIENTATION_FIX.get(orientation)

            thumb = _upright_thumbnail(im, limits, fix)
            if thumb is im:  # a small RGB frame is its own thumbnail; seeking would change it
                thumb = im.copy()
            frames = [_perceptual(thumb)]
            if getattr(im, "is_animated", False):
                for index in range(1, limits.max_frames):
                    try:
                        im.seek(index)
                        if im.size[0] * im.size[1] > limits.max_pixels:
                            break
                        frames.append(_perceptual(_upright_thumbnail(im, limits, fix)))
                    except EOFError:
                        break
                    except _DECODE_ERRORS:
                        # The first frame hashed: a broken later frame only ends the scan.
                        log.debug("stopping at unreadable frame %d", index)
                        break
    except ImageRejected:
        raise
    except Image.DecompressionBombError:
        # Pillow's guard fired inside Image.open, before our own check could name the size.
        size = _declared_size(data, fmt)
        what = f"declared size {size[0]}x{size[1]}" if size else "declared size"
        mp_limit = limits.max_pixels / 1_000_000
        raise ImageRejected(f"{what} exceeds the {mp_limit:g} megapixel limit") from None
    except _DECODE_ERRORS as e:
        log.debug("decode failed: %s", type(e).__name__)
        raise ImageRejected("truncated or corrupt image") from None
    except MemoryError:
        raise ImageRejected("image too large to decode") from None

    phash, dhash, pdq, quality, dihedral = frames[0]
    seen = {pdq}
    extra: list[FrameHashes] = []
    for i, (fp, fd, fq, fqual, _) in enumerate(frames[1:], start=1):
        if fq not in seen:  # identical frames add nothing to match against
            seen.add(fq)
            extra.append(FrameHashes(i, fp, fd, fq, fqual))
    if orientation in (5, 6, 7, 8):  # a quarter turn: the upright image is portrait
        width, height = height, width
    hashes = ImageHashes(
        sha256=sha256,
        md5=md5,
        sha1=sha1,
        phash=phash,
        dhash=dhash,
        pdq=pdq,
        pdq_quality=quality,
        pdq_dihedral=dihedral,
        width=width,
        height=height,
        format=fmt,
        extra_frames=tuple(extra),
    )
    return hashes, thumb


def default_workers() -> int:
    """Workers for the hash pool: one per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class HashPool:
    """Runs ``hash_image`` off the event loop, one worker per CPU.

    Threads by default. Measured here on 2 idle CPUs (generated photos 0.3-5 MP, same
    harness as ``python -m bench.hashing``'s pool section): JPEG 40.6 images/s with
    threads, 28.2 with processes, 23.3 sequential; PNG about 15 for all three. Pillow
    releases the GIL while it decodes and resizes, which is most of the work once pdqhash
    only sees a 576-pixel thumbnail, while a process pool pays for copying up to 20 MiB of
    bytes to a worker. (On a loaded machine all three converge; the bench prints the load
    average next to its pool figures.) ``kind="process"`` remains for deployments that
    want a crashed decoder contained: the pool is then rebuilt and only the images in
    flight are rejected; its workers start with ``forkserver`` so they never inherit the
    event loop's threads or sockets.
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: DecodeLimits = DecodeLimits(),
        kind: Literal["thread", "process"] = "thread",
    ) -> None:
        self.workers = workers or default_workers()
        self.limits = limits
        self.kind = kind
        self._lock = threading.Lock()
        self._executor: Executor | None = self._new_executor()
        # Bounded in-flight work: each queued image holds its bytes (up to 20 MiB) in memory.
        self._slots = asyncio.Semaphore(self.workers * 4)

    def _new_executor(self) -> Executor:
        if self.kind == "thread":
            return ThreadPoolExecutor(self.workers, thread_name_prefix="vigil-hash")
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_warm_worker)

    async def hash(self, data: bytes) -> ImageHashes:
        """Hash one image in the pool; raises ImageRejected like ``hash_image``."""
        return await self.run(hash_image, data)

    async def run(self, fn: Callable[[bytes, DecodeLimits], T], data: bytes) -> T:
        """``fn(data, self.limits)`` in the pool (``hash_image`` or another one-decode hasher,
        e.g. ``bot.variants.hash_for_query``); raises ImageRejected like it."""
        async with self._slots:
            executor = self._executor
            if executor is None:
                raise RuntimeError("HashPool is closed")
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(executor, fn, data, self.limits)
            except BrokenProcessPool:
                log.warning("a hash worker died; rebuilding the pool")
                with self._lock:
                    if self._executor is executor:
                        executor.shutdown(wait=False, cancel_futures=True)
                        self._executor = self._new_executor()
                raise ImageRejected("the decoder crashed on this image") from None

    def close(self) -> None:
        """Stop the workers (waits for images in flight)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    async def __aenter__(self) -> HashPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)


def _warm_worker() -> None:
    """Import pHash's lazy scipy dependency when a worker starts, not on its first image."""
    import scipy.fftpack  # noqa: F401


# Local files may be bigger than fetched media (20 MiB) but not unbounded: a path to a
# device or a huge file must not fill memory.
MAX_LOCAL_BYTES = 256 * 1024 * 1024


def hash_paths(
    paths: list[str],
    out: TextIO,
    limits: DecodeLimits = DecodeLimits(),
) -> int:
    """Body of ``vigil hash PATH...``: one JSON line per path; exit status 1 if any failed."""
    status = 0
    for path in paths:
        line: dict[str, Any] = {"path": path}
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_LOCAL_BYTES + 1)
            if len(data) > MAX_LOCAL_BYTES:
                raise ImageRejected(f"file is larger than {MAX_LOCAL_BYTES >> 20} MiB")
            line.update(hash_image(data, limits).to_json_dict())
        except ImageRejected as e:
            line["error"] = e.reason
            status = 1
        except OSError as e:
            line["error"] = e.strerror or type(e).__name__
            status = 1
        out.write(json.dumps(line) + "\n")
        with contextlib.suppress(AttributeError, ValueError):
            out.flush()
    return status
