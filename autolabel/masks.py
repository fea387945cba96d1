"""Binary masks <-> COCO compressed RLE, through pycocotools (exact, and what COCO tools read)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict:
    """A HxW boolean mask as a COCO RLE with a compressed `counts` string."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE (compressed string or uncompressed list counts) as a HxW boolean mask."""
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(rle.get("counts"), str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def rle_area(rle: dict) -> int:
    """Mask pixel count, computed on the RLE without decoding it."""
    return int(mask_utils.area(_compressed(rle)))


def rle_bbox(rle: dict) -> list[float]:
    """Tight `[x, y, w, h]` box of the mask (zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_compressed(rle))]


def _compressed(rle: dict) -> dict:
    if isinstance(rle.get("counts"), str):
        return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    if isinstance(rle.get("counts"), list):
        return mask_utils.frPyObjects(rle, *rle["size"])
    return rle
