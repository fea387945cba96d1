"""What sources produce: image groups with stable ids, their files and optional visual prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autolabel.errors import GroupInputError, InputError
from autolabel.video import video_from_json, video_to_json


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

    @classmethod
    def from_json(cls, data: dict) -> VisualPrompt:
        return cls(boxes=tuple(tuple(b) for b in data.get("boxes", ())),
                   points=tuple(tuple(p) for p in data.get("points", ())),
                   point_labels=tuple(data.get("point_labels", ())), mask=data.get("mask"), label=data.get("label"))


@dataclass(frozen=True)
class ImageRef:
    """One image of a group: `file` is its posix path relative to the input root."""

    file: str
    path: Path
    prompt: VisualPrompt | None = None
    coco_id: int | None = None  # kept from an input COCO file so exports reuse its ids
    sample_id: str | None = None  # the FiftyOne sample it came from (`run --from-fiftyone`), for push


@dataclass(frozen=True)
class ImageGroup:
    """A group of images the model reads together; `id` is stable across reruns and machines."""

    id: str
    root: Path
    images: tuple[ImageRef, ...]
    variables: dict[str, str] = field(default_factory=dict)
    # a video clip (video.py): a VideoSpec from the source, a VideoClip once decoded; None for images
    video: object | None = None

    def to_json(self) -> dict:
        """Everything needed to rebuild the group in another process (a Ray worker)."""
        return {"id": self.id, "root": str(self.root), "variables": self.variables,
                "images": [{"file": im.file, "path": str(im.path), "coco_id": im.coco_id, "sample_id": im.sample_id,
                            "prompt": im.prompt.to_json() if im.prompt else None} for im in self.images],
                **({"video": video_to_json(self.video)} if self.video is not None else {})}

    @classmethod
    def from_json(cls, data: dict) -> ImageGroup:
        images = tuple(ImageRef(im["file"], Path(im["path"]),
                                VisualPrompt.from_json(im["prompt"]) if im["prompt"] is not None else None,
                                im["coco_id"], im.get("sample_id")) for im in data["images"])
        return cls(data["id"], Path(data["root"]), images, dict(data["variables"]), video_from_json(data.get("video")))


@dataclass(frozen=True)
class BadGroup:
    """A group the source could not build (a refused path, a manifest line that does not parse).

    The engine records it as an error line; nothing is dropped silently. When images were
    refused or missing, `files` names each with its reason (`file` is then the manifest line, or the
    first of them) and `images` holds the others, which the engine decodes only to name their
    problems too, so one error record lists every bad file of the group.
    """

    id: str
    file: str
    reason: str
    files: tuple[tuple[str, str], ...] = ()  # (image, reason) for each refused or missing image
    images: tuple[ImageRef, ...] = ()  # the group's other images, still to be checked

    def error(self, decode_errors: list[InputError] = ()) -> InputError:
        """The error record's content: every bad image (the source's, then `decode_errors`), or
        the reason the group could not be built at all."""
        found = [InputError(f, r) for f, r in self.files] + list(decode_errors)
        if not found:
            return InputError(self.file, self.reason)
        return GroupInputError(found, where=None if self.file == found[0].file else self.file)
