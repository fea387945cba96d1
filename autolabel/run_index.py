"""The first pass of every reader of run directories: category ids and image ids, once for all.

Exporters (COCO, PNG masks, YOLO, YouTube-VIS) and `autolabel pull` must number categories and
images the same way, so a PNG legend and a COCO file of the same runs name the same things. The
numbering is a fact of the runs, not of any one output format, hence its home beside the store.
Only per-image facts and the category order are kept: memory stays flat however many masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autolabel.errors import AutolabelError
from autolabel.prediction import Segment, segment_category
from autolabel.store import read_predictions, read_run_info


@dataclass
class Category:
    id: int
    name: str
    supercategory: str


@dataclass
class ImageRecord:
    """The small facts an export keeps per image file across the whole dataset."""

    file: str
    width: int | None = None
    height: int | None = None
    id: int | None = None
    predictions: int = 0  # how many predictions list this file (the PNG export finishes on the last)
    video: str | None = None  # a frame of a video clip: the clip, its frame index and time (s)
    frame: int | None = None
    timestamp: float | None = None


@dataclass
class RunIndex:
    """Category and image ids of a set of run directories: the first pass of every export."""

    categories: list[Category]
    images: dict[str, ImageRecord]

    def category_id(self, segment: Segment) -> int:
        return self._ids[segment_category(segment)]

    def __post_init__(self) -> None:
        self._ids = {c.name: c.id for c in self.categories}


def index_runs(run_dirs: list[Path]) -> RunIndex:
    """Category ids (ontology order, unknown ones appended) and image ids, per the COCO contract.

    Image ids come from the input COCO file where predictions carry one; the other files get
    ids after the largest given one, in sorted path order, so reruns and shards agree.
    """
    supercategory: dict[str, str] = {}
    for run_dir in run_dirs:
        for template, spec in (read_run_info(Path(run_dir)).get("templates") or {}).items():
            for name in spec.get("categories") or []:
                supercategory.setdefault(name, template)
    images: dict[str, ImageRecord] = {}
    for pred in read_predictions(run_dirs):
        for info in pred.images:
            record = images.setdefault(info.file, ImageRecord(info.file))
            _merge_image(record, info.width, info.height, info.id, f"prediction {pred.key}")
            if getattr(info, "video", None) is not None:
                record.video, record.frame, record.timestamp = info.video, info.frame, info.timestamp
        for file in {info.file for info in pred.images}:
            images[file].predictions += 1
        for segment in pred.segments():
            if not 0 <= segment.image < len(pred.images):
                raise AutolabelError(f"prediction {pred.key}: segment image index {segment.image} "
                                     f"out of range ({len(pred.images)} images)")
            h, w = segment.rle["size"]
            _merge_image(images[pred.images[segment.image].file], w, h, None,
                         f"prediction {pred.key}, mask of {segment.label!r}")
            supercategory.setdefault(segment_category(segment), "object")
    categories = [Category(i, name, sup) for i, (name, sup) in enumerate(supercategory.items(), 1)]
    assign_image_ids(images)
    return RunIndex(categories, images)


def _merge_image(record: ImageRecord, width: int | None, height: int | None, image_id: int | None,
                 where: str) -> None:
    for attr, value in (("width", width), ("height", height), ("id", image_id)):
        if value is None:
            continue
        known = getattr(record, attr)
        if known is None:
            setattr(record, attr, int(value))
        elif known != value:
            raise AutolabelError(f"{where}: image {record.file!r} has {attr} {value}, "
                                 f"another prediction says {known}")


def assign_image_ids(images: dict[str, ImageRecord]) -> None:
    """Keep given ids; number the rest after the largest one, in sorted path order."""
    owner: dict[int, str] = {}
    for record in images.values():
        if record.id is not None:
            if record.id in owner:
                raise AutolabelError(f"image id {record.id} is given to both {owner[record.id]!r} "
                                     f"and {record.file!r}")
            owner[record.id] = record.file
    next_id = max(owner, default=0) + 1
    for file in sorted(images):
        if images[file].id is None:
            images[file].id = next_id
            next_id += 1
