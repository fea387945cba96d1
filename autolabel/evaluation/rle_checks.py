"""Masks read from files, checked once before any metric touches them.

pycocotools trusts its input: a truncated or corrupt `counts` string still gets an `area` and an
`iou` (and decodes to uninitialised memory), so a bad file would turn into a silently wrong score.
Every mask is therefore converted to one form (compressed RLE, `bytes` counts) and checked when
it is loaded: its runs must be non-negative and cover exactly the image it belongs to.
"""

from __future__ import annotations

import numpy as np

from autolabel.errors import AutolabelError
from autolabel.masks import polygons_to_rle, rle_to_compressed

_MAX_CHARS_PER_COUNT = 7  # 7 x 5 bits hold any uint32 run length


def checked_rle(segmentation: object, height: int, width: int, where: str) -> dict:
    """`segmentation` (compressed or uncompressed RLE, or COCO polygons) as a compressed RLE of
    exactly `height` x `width` pixels; anything else is an AutolabelError that starts with `where`."""
    if isinstance(segmentation, list):
        return _from_polygons(segmentation, height, width, where)
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        raise AutolabelError(f"{where}: `segmentation` must be an RLE {{size, counts}} or a list of polygons")
    size = segmentation["size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise AutolabelError(f"{where}: RLE `size` must be [height, width], got {size!r}")
    if list(size) != [height, width]:
        raise AutolabelError(f"{where}: mask is {size[0]}x{size[1]} (height x width) "
                             f"but its image is {height}x{width}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != height * width:
            raise AutolabelError(f"{where}: malformed RLE: uncompressed counts must be non-negative "
                                 f"integers summing to {height * width} (height x width)")
        return rle_to_compressed({"size": [height, width], "counts": counts})
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if not isinstance(counts, bytes):
        raise AutolabelError(f"{where}: malformed RLE: `counts` must be a string or a list of integers")
    runs = _run_lengths(counts)
    if runs is None or (runs < 0).any() or int(runs.sum()) != height * width:
        raise AutolabelError(f"{where}: malformed RLE: the compressed `counts` string does not encode "
                             f"{height}x{width} pixels (truncated or corrupt)")
    return {"size": [height, width], "counts": counts}


def _from_polygons(polygons: list, height: int, width: int, where: str) -> dict:
    if not polygons or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in polygons):
        raise AutolabelError(f"{where}: polygon segmentation must be a non-empty list of [x1, y1, x2, y2, ...] "
                             "with at least 3 points each")
    try:
        rle = polygons_to_rle(polygons, height, width)
    except ValueError as e:
        raise AutolabelError(f"{where}: {e}") from None
    return rle_to_compressed(rle)


def _run_lengths(counts: bytes) -> np.ndarray | None:
    """The run lengths a COCO compressed-RLE string encodes, or None when it cannot be parsed.

    The format (pycocotools `rleFrString`): each run is a little-endian sequence of 5-bit groups
    stored as chars 48..111, bit 0x20 meaning "more groups follow", the last group's bit 0x10 the
    sign; from the fourth run on, each value is a delta to the run two places before.
    """
    chars = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, np.int64)
    if (chars < 0).any() or (chars > 63).any() or chars[-1] & 0x20:
        return None
    ends = np.flatnonzero((chars & 0x20) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_CHARS_PER_COUNT:
        return None
    position = np.arange(chars.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    values = np.where(chars[ends] & 0x10, values - (np.int64(1) << (5 * lengths)), values)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs
