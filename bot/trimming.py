"""Find the picture inside an image: cut uniform borders, letterbox bars and caption bands.

Re-posters frame a known image (a dark border, letterbox bars from a video player, a
meme caption on a white band). PDQ sees the frame as part of the picture and moves by
100 bits or more. ``content_box`` finds the rectangle the frame surrounds, from the
small thumbnail the hashes are computed from (at most 576 px a side: about a
millisecond of numpy).

What counts as a band, scanning in from one side:

- **uniform border / letterbox**: rows (or columns) whose pixels are nearly all the
  colour of the edge; allowed on every side.
- **caption band**: on the top or bottom only, a band whose edge rows are uniform and
  whose inner rows are still mostly that colour (text on a plain background), ending
  where the picture starts: a few rows in a row that are mostly *not* that colour.

A genuine picture with a flat area at its edge (a clear sky, a studio backdrop) can be
cut too; the caller hashes the untrimmed image as well, so a wrong cut costs a query,
never a miss. A band thinner than 1% of the side is ignored (JPEG edge noise), and the
picture left must keep at least a quarter of each side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# A pixel is "band colour" within this many levels (max over R, G, B) of the edge colour.
# JPEG at quality 40 moves a flat band by up to about 10 levels and rings around text.
_NEAR = 30
# An edge row is uniform when this share of its pixels is near the edge colour, and the
# edge itself must be flat to this tighter tolerance (a smooth gradient is not a border).
_UNIFORM_SHARE = 0.97
_FLAT = 14
# Rows of a caption band: text covers the background only partly.
_CAPTION_SHARE = 0.6
# The picture starts when this many rows in a row are mostly not band colour.
_CONTENT_SHARE = 0.5
_CONTENT_RUN = 3
_MIN_BAND = 0.01  # of the side
_MAX_BAND = 0.45  # of the side, per band
_MIN_KEEP = 0.25  # of the side, what must remain
_CHUNK = 24


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle in pixels: ``left <= x < right``, ``top <= y < bottom``."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.right - self.left

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.bottom - self.top


def _near_share(lines: np.ndarray, ref: np.ndarray, tol: int) -> np.ndarray:
    """Per line (axis 0), the share of pixels within ``tol`` of colour ``ref``.

    Every other pixel along the line is enough for a share, at half the cost.
    """
    d = np.abs(lines[:, ::2].astype(np.int16) - ref.astype(np.int16))
    # Three maximums beat .max(axis=2), a reduction over a short strided axis.
    worst = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])
    return (worst <= tol).mean(axis=1)


def _band(lines: np.ndarray, captions: bool) -> int:
    """How many lines, from line 0 inward, belong to a border or caption band (0 if none).

    ``lines`` is (n, m, 3): line 0 is the edge. Lines are rows for top/bottom and columns
    (transposed) for left/right.
    """
    n = lines.shape[0]
    limit = int(n * _MAX_BAND)
    edge = lines[:2].reshape(-1, 3)
    ref = np.median(edge, axis=0)
    if _near_share(lines[:1], ref, _FLAT)[0] < _UNIFORM_SHARE:
        return 0  # the edge is not flat: no frame on this side
    # Measure lines a chunk at a time: most frames end within a few dozen lines, and
    # scanning 45% of the image for every framed picture would cost milliseconds.
    end = min(n, limit + _CONTENT_RUN + 1)
    chunks: list[np.ndarray] = []
    done = 0
    while done < end:
        step = min(_CHUNK, end - done)
        chunks.append(_near_share(lines[done : done + step], ref, _NEAR))
        done += step
        share = np.concatenate(chunks)
        content = share < _CONTENT_SHARE
        if content.size >= _CONTENT_RUN and (
            np.lib.stride_tricks.sliding_window_view(content, _CONTENT_RUN).all(axis=1).any()
        ):
            break
    share = np.concatenate(chunks)
    # Plain border: leading lines that are all (nearly) edge colour.
    uniform = (
        int(np.argmax(share < _UNIFORM_SHARE)) if (share < _UNIFORM_SHARE).any() else share.size
    )
    band = uniform
    if captions and uniform < share.size:
        # Extend through lines that are mostly background (text on the band) until a run
        # of content lines. The band must still be mostly background on average.
        content = share < _CONTENT_SHARE
        i = uniform
        while i < share.size and not content[i : i + _CONTENT_RUN].all():
            i += 1
        if i < share.size and i > uniform and share[uniform:i].mean() >= 0.8:
            band = i
    if band > limit or band < max(2, int(n * _MIN_BAND)):
        return 0
    return band


def content_box(rgb: np.ndarray) -> Box | None:
    """The picture inside borders/letterbox/caption bands of ``rgb`` (H, W, 3), or None.

    None means nothing to cut (or what would be left is too small to be the picture).
    """
    h, w = rgb.shape[:2]
    if h < 16 or w < 16:
        return None
    top, bottom, left, right = 0, h, 0, w
    for _ in range(3):  # a caption band inside a border, or a border around a caption
        changed = False
        region = rgb[top:bottom, left:right]
        t = _band(region, captions=True)
        b = _band(region[::-1], captions=True)
        if t or b:
            top, bottom, changed = top + t, bottom - b, True
            region = rgb[top:bottom, left:right]
        if region.shape[0] < 16:
            return None
        cols = region.transpose(1, 0, 2)
        lft = _band(cols, captions=False)
        rgt = _band(cols[::-1], captions=False)
        if lft or rgt:
            left, right, changed = left + lft, right - rgt, True
        if not changed or right - left < 16 or bottom - top < 16:
            break
    if (top, bottom, left, right) == (0, h, 0, w):
        return None
    if bottom - top < h * _MIN_KEEP or right - left < w * _MIN_KEEP:
        log.debug("not trimming: the picture left would be too small")
        return None
    return Box(left, top, right, bottom)


def trim(img: Image.Image) -> Image.Image | None:
    """``img`` cut to its :func:`content_box`, or None when there is nothing to cut."""
    rgb = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    box = content_box(rgb)
    if box is None:
        return None
    return img.crop((box.left, box.top, box.right, box.bottom))
