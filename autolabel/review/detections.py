"""Masks between our full-image RLE segments and FiftyOne's box-relative instance masks.

FiftyOne keeps an instance mask as the crop inside its relative bounding box. Masks drawn in the
App are stored at screen resolution, so going back resizes the crop to the box's pixel size
(nearest neighbour keeps it binary) before pasting it into the full image. Box edges are rounded
the same way both ways, so an untouched mask comes back pixel for pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from autolabel.prediction import Segment, segment_category


def segment_detection(fo, segment: Segment, turn: int):
    """The segment as an `fo.Detection`, or None for a mask with no pixel (nothing to review)."""
    x, y, w, h = (int(v) for v in segment.bbox)  # rle_to_xywh of a mask: whole pixels
    if w == 0 or h == 0:
        return None
    height, width = segment.rle["size"]
    crop = segment.mask()[y:y + h, x:x + w]
    # Reviewers classify by COCO category; the model's own word for it stays as `model_label`.
    return fo.Detection(label=segment_category(segment), bounding_box=[x / width, y / height, w / width, h / height],
                        mask=crop, confidence=segment.score, model_label=segment.label, phrase=segment.phrase,
                        round=segment.round, turn=turn)


def detection_mask(detection, width: int, height: int) -> np.ndarray:
    """The detection as a full `height` x `width` boolean mask; a box without a mask fills the box."""
    full = np.zeros((height, width), bool)
    x0, y0, crop = pixel_crop(detection, width, height)
    if crop.size:
        full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return full


def pixel_crop(detection, width: int, height: int) -> tuple[int, int, np.ndarray]:
    """(x0, y0, crop): the detection's mask at image resolution, inside the image, as the part
    within its box; `detection_mask` without the full-image array (for large images)."""
    return box_crop(detection.bounding_box, detection.get_mask() if detection.has_mask else None, width, height)


def box_crop(bounding_box, crop: np.ndarray | None, width: int, height: int) -> tuple[int, int, np.ndarray]:
    """`pixel_crop` of a relative box and its mask (None: the whole box), as FiftyOne stores them."""
    bx, by, bw, bh = bounding_box
    x0, y0, w, h = round(bx * width), round(by * height), round(bw * width), round(bh * height)
    if w <= 0 or h <= 0:
        return 0, 0, np.zeros((0, 0), bool)
    if crop is None:
        crop = np.ones((h, w), bool)
    elif crop.shape[:2] != (h, w):
        crop = cv2.resize((crop > 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    xs, ys, xe, ye = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    if xe <= xs or ye <= ys:
        return 0, 0, np.zeros((0, 0), bool)
    return xs, ys, crop[ys - y0:ye - y0, xs - x0:xe - x0] > 0
