"""The central record: one prediction line per (group x template x model) in predictions.jsonl.

Every later step (export, push, eval) reads these records, so their JSON form is a contract
(README.md, "Outputs"): change it only in ways old readers survive.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from autolabel.masks import mask_to_rle, rle_to_mask, rle_to_xywh

Status = Literal["ok", "error"]
# optional fields of an image and of a segment, left out of a line when unset (old readers never see them)
_WRITTEN_WHEN_SET = (("sample_id", "video", "frame", "timestamp"), ("frame", "timestamp", "track_id"))


@dataclass
class Segment:
    """One grounded object: a mask on image `image` (0-based index into the group's images)."""

    image: int
    label: str
    category: str
    phrase: str
    rle: dict
    bbox: list[float]
    score: float
    round: int = 0
    # video (written only there): the clip's frame index, its time (s) and the track the mask belongs to
    frame: int | None = None
    timestamp: float | None = None
    track_id: int | None = None

    @classmethod
    def from_target(cls, m) -> Segment:
        """A backend's TargetMask: its mask array, or the RLE a tracker already encoded (video)."""
        rle = getattr(m, "rle", None)
        rle = rle if rle is not None else mask_to_rle(m.mask)
        return cls(image=m.image, label=m.label, category=m.category, phrase=m.phrase, rle=rle, bbox=rle_to_xywh(rle),
                   score=float(m.score), round=m.round, frame=getattr(m, "frame", None),
                   timestamp=getattr(m, "timestamp", None), track_id=getattr(m, "track_id", None))

    @classmethod
    def from_mask(cls, mask: np.ndarray, *, image: int, label: str, category: str, phrase: str,
                  score: float, round: int = 0) -> Segment:
        rle = mask_to_rle(mask)
        return cls(image=image, label=label, category=category, phrase=phrase, rle=rle,
                   bbox=rle_to_xywh(rle), score=float(score), round=round)

    def mask(self) -> np.ndarray:
        return rle_to_mask(self.rle)


def segment_category(segment: Segment) -> str:
    """The category a mask is filed under; a backend that gives none falls back to its label."""
    return segment.category or segment.label


@dataclass
class Rejection:
    """A target the model judged absent from the group (GSVA's [REJ]), with its reason."""

    label: str
    category: str
    phrase: str = ""
    reason: str = ""
    image: int | None = None
    round: int = 0


@dataclass
class Turn:
    """One question of a template and what the model answered to it."""

    question: str
    answer: str = ""
    segments: list[Segment] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class ImageInfo:
    file: str
    width: int | None = None
    height: int | None = None
    id: int | None = None  # the image id of an input COCO file, kept for exports
    sample_id: str | None = None  # the FiftyOne sample of `run --from-fiftyone` (written only then)
    # a frame of a video clip (written only then): the clip, the frame's index in it and its time (s)
    video: str | None = None
    frame: int | None = None
    timestamp: float | None = None


@dataclass
class Prediction:
    key: str
    group_id: str
    images: list[ImageInfo]
    template: str
    template_hash: str
    model: str
    backend: str
    turns: list[Turn] = field(default_factory=list)
    status: Status = "ok"
    error: dict | None = None  # {"stage", "message", "file" (the first bad one), "files": [{"file", "reason"}]}
    timings: dict[str, float] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    category: str = ""  # the template's reasoning category (functional, spatial, ...)
    truncated: bool = False  # an answer was cut at the token budget: the line keeps its completed targets

    def to_json(self) -> str:
        d = asdict(self)
        if not self.truncated:  # written only as a warning, on the lines it marks
            del d["truncated"]
        for image in d["images"]:
            for key in _WRITTEN_WHEN_SET[0]:
                if image[key] is None:
                    del image[key]
        for turn in d["turns"]:
            for segment in turn["segments"]:
                for key in _WRITTEN_WHEN_SET[1]:
                    if segment[key] is None:
                        del segment[key]
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> Prediction:
        turns = [
            Turn(question=t["question"], answer=t.get("answer", ""),
                 segments=[Segment(**s) for s in t.get("segments", [])],
                 rejected=[Rejection(**r) for r in t.get("rejected", [])])
            for t in d.get("turns", [])
        ]
        return cls(
            key=d["key"], group_id=d["group_id"], images=[ImageInfo(**i) for i in d["images"]],
            template=d["template"], template_hash=d["template_hash"], model=d["model"],
            backend=d.get("backend", ""), turns=turns, status=d.get("status", "ok"),
            error=d.get("error"), timings=d.get("timings", {}), variables=d.get("variables", {}),
            category=d.get("category", ""), truncated=bool(d.get("truncated", False)),
        )

    @property
    def explanation(self) -> str:
        """The model's text answers, turn by turn: what COCO attributes and reviewers see."""
        return "\n".join(t.answer for t in self.turns if t.answer)

    def segments(self):
        for t in self.turns:
            yield from t.segments


def prediction_key(group_id: str, template: str, model: str) -> str:
    """The resume key: a group, a template and a model are labelled once."""
    return f"{group_id}|{template}|{model}"
