"""What sources produce: image groups with stable ids, their files and optional visual prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class VisualPrompt:
    """An exemplar on one image (UniPixel-style referring): boxes, points or a mask file.

    Coordinates are pixels of the original image: boxes `[x0, y0, x1, y1]`, points `[x, y]`
    with `point_labels` 1 (foreground) or 0 (background). `mask` is a path relative to the
    input root, or a COCO RLE dict.
    """

    boxes: tuple[tuple[float, float, float, float], ...] = ()
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    mask: str | dict | None = None
    label: str | None = None

    def to_json(self) -> dict:
        out: dict = {}
        if self.boxes:
            out["boxes"] = [list(b) for b in self.boxes]
        if self.points:
            out["points"] = [list(p) for p in self.points]
            out["point_labels"] = list(self.point_labels)
        if self.mask is not None:
            out["mask"] = self.mask
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass(frozen=True)
class ImageRef:
    """One image of a group: `file` is its posix path relative to the input root."""

    file: str
    path: Path
    prompt: VisualPrompt | None = None
    coco_id: int | None = None  # kept from an input COCO file so exports reuse its ids


@dataclass(frozen=True)
class ImageGroup:
    """A group of images the model reads together; `id` is stable across reruns and machines."""

    id: str
    root: Path
    images: tuple[ImageRef, ...]
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BadGroup:
    """A group the source could not build (a refused path, a manifest line that does not parse).

    The engine records it as an error line; nothing is dropped silently.
    """

    id: str
    file: str
    reason: str
