"""Coordinates as each VLM family speaks them, mapped to and from original image pixels.

Qwen2.5-VL answers absolute pixels of the image *as its processor resized it*; Qwen2-VL and
Qwen3-VL answer 0-1000 coordinates relative to the image. The resized size is read from what the
processor really produced for that image (its `image_grid_thw`), never from a re-implementation
of its rule, so a prompt and its answer share one frame for every size and aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from autolabel.errors import AutolabelError


class CoordinateFrame(str, Enum):
    PIXELS = "pixels"            # absolute pixels of the resized model input
    RELATIVE_1000 = "relative-1000"  # 0..1000 across each image's width and height


# config.model_type -> how that family answers; unknown families default to PIXELS
# (the Qwen2.5-VL convention) unless BackendOptions.extra["coordinates"] says otherwise.
FAMILY_FRAMES = {
    "qwen2_5_vl": CoordinateFrame.PIXELS,
    "qwen2_vl": CoordinateFrame.RELATIVE_1000,
    "qwen3_vl": CoordinateFrame.RELATIVE_1000,
    "qwen3_vl_moe": CoordinateFrame.RELATIVE_1000,
}

RELATIVE_SCALE = 1000


def coordinate_frame(model_type: str, override: str | None = None) -> CoordinateFrame:
    """The family's frame, or `override` ("pixels" / "relative-1000") when given."""
    if override is None:
        return FAMILY_FRAMES.get(model_type, CoordinateFrame.PIXELS)
    try:
        return CoordinateFrame(override)
    except ValueError:
        choices = ", ".join(f.value for f in CoordinateFrame)
        raise AutolabelError(f"option coordinates={override!r}: use one of {choices}") from None


def processed_size(image_processor, image: np.ndarray) -> tuple[int, int]:
    """(height, width) the image processor really resizes `image` (H x W x 3) to, read from the
    `image_grid_thw` it returns. Channels-last is said explicitly: left to guess, the processor
    reads a 1-pixel-high image (1 x W x 3) as channels-first."""
    out = image_processor(images=[image], input_data_format="channels_last", return_tensors="pt")
    if "image_grid_thw" not in out:
        raise ValueError(f"{type(image_processor).__name__} returns no image_grid_thw (it returned "
                         f"{', '.join(out.keys())})")
    (size,) = grid_input_sizes(out["image_grid_thw"], image_processor.patch_size)
    return size


def model_input_size(image_processor, height: int, width: int) -> tuple[int, int]:
    """(height, width) the image processor resizes an image of this size to (it processes one)."""
    return processed_size(image_processor, np.zeros((height, width, 3), np.uint8))


def grid_input_sizes(image_grid_thw, patch_size: int) -> list[tuple[int, int]]:
    """(height, width) of each processed image, read from the processor's `image_grid_thw`."""
    return [(int(h) * patch_size, int(w) * patch_size) for _, h, w in image_grid_thw.tolist()]


@dataclass(frozen=True)
class ImageFrame:
    """One image as the model sees it: its original size, its model input size and the frame."""

    frame: CoordinateFrame
    original: tuple[int, int]  # (height, width)
    model_input: tuple[int, int]  # (height, width) after the processor's resize

    @property
    def _span(self) -> tuple[float, float]:
        """(x, y) extent of the model's coordinates across the whole image."""
        if self.frame is CoordinateFrame.RELATIVE_1000:
            return float(RELATIVE_SCALE), float(RELATIVE_SCALE)
        return float(self.model_input[1]), float(self.model_input[0])

    @property
    def coord_max(self) -> int:
        return int(max(self._span))

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Model coordinates (..., 2) as original pixels, clipped to the image."""
        h, w = self.original
        sx, sy = self._span
        out = np.asarray(xy, dtype=np.float64) * np.array([w / sx, h / sy])
        return np.clip(out, 0, [w, h])

    def from_original(self, xy: np.ndarray) -> np.ndarray:
        """Original pixels (..., 2) as rounded model coordinates."""
        h, w = self.original
        sx, sy = self._span
        return np.rint(np.asarray(xy, dtype=np.float64) * np.array([sx / w, sy / h])).astype(int)

    def box_to_original(self, box) -> np.ndarray:
        """A model-frame [x0, y0, x1, y1] (corners in any order) as an ordered, clipped pixel box."""
        corners = self.to_original(np.asarray(box, dtype=np.float64).reshape(2, 2))
        return np.concatenate([corners.min(axis=0), corners.max(axis=0)])

    def box_from_original(self, box) -> list[int]:
        return self.from_original(np.asarray(box, dtype=np.float64).reshape(2, 2)).reshape(4).tolist()
