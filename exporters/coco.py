"""COCO JSON export: exact compressed RLE, ids from 1, one `groups` list with the reasoning.

The ids come from `autolabel.run_index`, shared by every exporter, so a PNG legend and a COCO
file of the same runs name the same categories and images. Two passes over the store keep memory
flat: the first (`index_runs`) collects only per-image facts and the category order, the second
streams annotations into a temp file that replaces `out` when complete (`atomic_output`: a crash
leaves no half-written export).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from autolabel import __version__
from autolabel.atomic_files import JsonItems, atomic_output, dumps
from autolabel.masks import mask_to_polygons, polygons_to_area, rle_to_area, rle_to_xywh
from autolabel.prediction import Prediction
from autolabel.run_index import RunIndex, index_runs
from autolabel.store import read_predictions


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
