"""COCO JSON export: exact compressed RLE, ids from 1, one `groups` list with the reasoning.

The id rules are shared by every exporter (`index_runs`), so a PNG legend and a COCO file of the
same runs name the same categories and images. Two passes over the store keep memory flat: the
first collects only per-image facts and the category order, the second streams annotations into a
temp file that replaces `out` when complete (a crash leaves no half-written export).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from autolabel import __version__
from autolabel.errors import AutolabelError
from autolabel.masks import mask_to_polygons, polygons_to_area, rle_to_area, rle_to_xywh
from autolabel.prediction import Prediction, Segment
from autolabel.store import read_predictions, read_run_info


@dataclass
class ExportStats:
    """What an export wrote and what it left out, so nothing is dropped silently."""

    images: int = 0
    annotations: int = 0
    groups: int = 0
    categories: int = 0
    failed_groups: int = 0
    skipped_low_score: int = 0
    skipped_empty: int = 0  # masks with no pixel: not a label, and COCOeval can never match them
    holes_filled: int = 0  # polygon mode only: masks whose holes polygons cannot express


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


def segment_category(segment: Segment) -> str:
    """The category a mask is filed under; a backend that gives none falls back to its label."""
    return segment.category or segment.label


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


def export_coco(run_dirs: list[Path], out: Path, *, polygons: bool = False, min_score: float = 0.0,
                description: str | None = None) -> ExportStats:
    """Write the predictions of `run_dirs` (merged, last line per key wins) as one COCO file."""
    run_dirs = [Path(r) for r in run_dirs]
    out = Path(out)
    index = index_runs(run_dirs)
    stats = ExportStats(images=len(index.images), categories=len(index.categories))
    description = description or "autolabel predictions of " + ", ".join(str(r) for r in run_dirs)
    info = {"description": description,
            "version": __version__, "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in index.categories]
    with atomic_output(out) as f, tempfile.TemporaryFile("w+", encoding="utf-8", dir=out.parent) as spool:
        f.write('{"info":' + dumps(info) + ',"licenses":[],"categories":' + dumps(categories) + ',"images":[')
        images = JsonItems(f)
        video_ids = {name: i for i, name in enumerate(sorted({r.video for r in index.images.values() if r.video}), 1)}
        for record in sorted(index.images.values(), key=lambda r: r.id):
            frame = ({"video_id": video_ids[record.video], "frame_index": record.frame, "timestamp": record.timestamp}
                     if record.video else {})  # a video frame: which clip, where in it (image tools ignore these)
            images.add(dumps({"id": record.id, "file_name": record.file, "width": record.width,
                              "height": record.height, **frame}))
        f.write('],"annotations":[')
        annotations = JsonItems(f)
        groups = JsonItems(spool)  # written after the annotations, copied in at the end
        for pred in read_predictions(run_dirs):
            image_ids = [index.images[i.file].id for i in pred.images]
            stats.groups += 1
            stats.failed_groups += pred.status != "ok"
            groups.add(dumps(_group_entry(pred, image_ids)))
            for annotation in _annotations(pred, image_ids, index, stats, polygons=polygons, min_score=min_score):
                stats.annotations += 1
                annotations.add(dumps({"id": stats.annotations, **annotation}))
        if video_ids:
            f.write('],"videos":' + dumps([{"id": i, "file_name": name} for name, i in video_ids.items()]))
            f.write(',"groups":[')
        else:
            f.write('],"groups":[')
        spool.seek(0)
        shutil.copyfileobj(spool, f)
        f.write("]}\n")
    return stats


def _annotations(pred: Prediction, image_ids: list[int], index: RunIndex, stats: ExportStats, *,
                 polygons: bool, min_score: float) -> Iterator[dict]:
    """The prediction's masks as COCO annotations (without ids), counting what is left out."""
    explanation = pred.explanation
    for turn in pred.turns:
        for segment in turn.segments:
            if segment.score < min_score:
                stats.skipped_low_score += 1
                continue
            area = rle_to_area(segment.rle)
            if area == 0:
                stats.skipped_empty += 1
                continue
            if polygons:
                segmentation, holes = mask_to_polygons(segment.mask())
                stats.holes_filled += holes
                area = polygons_to_area(segmentation, *segment.rle["size"])  # what the file holds: holes filled
            else:
                segmentation = {"size": segment.rle["size"], "counts": segment.rle["counts"]}
            # CVAT and FiftyOne lift `attributes` onto the object: a key named `label` would
            # clash with the class name there, hence `model_label`.
            yield {"image_id": image_ids[segment.image], "category_id": index.category_id(segment), "iscrowd": 0,
                   "area": area, "bbox": rle_to_xywh(segment.rle), "score": segment.score, "segmentation": segmentation,
                   "attributes": {"group_id": pred.group_id, "template": pred.template,
                                  "template_hash": pred.template_hash, "question": turn.question,
                                  "explanation": explanation, "model_label": segment.label,
                                  "phrase": segment.phrase, "round": segment.round, "model": pred.model,
                                  **({"track_id": segment.track_id} if segment.track_id is not None else {})}}


def _group_entry(pred: Prediction, image_ids: list[int]) -> dict:
    def image_id(index: int | None) -> int | None:
        return image_ids[index] if index is not None and 0 <= index < len(image_ids) else None

    return {
        "id": pred.group_id, "template": pred.template, "template_hash": pred.template_hash,
        "category": pred.category, "model": pred.model, "status": pred.status, "error": pred.error,
        "image_ids": image_ids, "questions": [t.question for t in pred.turns], "explanation": pred.explanation,
        "rejected": [{"label": r.label, "category": r.category, "phrase": r.phrase, "reason": r.reason,
                      "image_id": image_id(r.image)} for t in pred.turns for r in t.rejected],
    }


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A text file that appears at `path` only once fully written (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JsonItems:
    """Writes the elements of a JSON array or object one at a time, commas in between."""

    def __init__(self, f: IO[str]):
        self._f = f
        self._separator = ""

    def add(self, text: str) -> None:
        self._f.write(self._separator + text)
        self._separator = ","


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


