"""`autolabel pull`: the reviewed field -> COCO (through the exact exporter) and a change report.

Groups are read back slice by slice in identity order; each group's prediction line is rebuilt
from the record push stored, with its masks replaced by the reviewed detections at image
resolution. Reviewed masks are compared with the pushed ones by label id (review clones keep
them): untouched, edited (mask, box or class changed), added (drawn in the App), deleted.
Masks a reviewer drew or edited get score 1.0; untouched ones keep the model's score.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import groupby
from pathlib import Path

import numpy as np

from autolabel.errors import AutolabelError
from autolabel.exporters.coco import ExportStats, export_coco
from autolabel.prediction import Prediction, Segment
from autolabel.review.database import load_dataset
from autolabel.review.detections import detection_mask
from autolabel.review.layout import (DEFAULT_REVIEWED_FIELD, IDENTITY_FIELDS, IMAGE_FIELDS, INFO_KEY, RunFields,
                                     all_samples)
from autolabel.review.lock import dataset_lock
from autolabel.run_index import ImageRecord, assign_image_ids
from autolabel.store import PredictionWriter

CHANGES = ("untouched", "edited", "added", "deleted")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass
class PullReport:
    reviewed: str
    source: str
    groups: int = 0
    export: ExportStats | None = None
    changes: dict[str, Counter] = field(default_factory=dict)  # category -> Counter over CHANGES

    def count(self, category: str, change: str) -> None:
        self.changes.setdefault(category, Counter())[change] += 1

    def totals(self) -> Counter:
        return sum(self.changes.values(), Counter())

    def to_json(self) -> dict:
        return {"reviewed_field": self.reviewed, "source_field": self.source, "groups": self.groups,
                "totals": {c: self.totals()[c] for c in CHANGES},
                "per_category": {name: {c: counts[c] for c in CHANGES} for name, counts in sorted(self.changes.items())}}


def parse_since(text: str, last_pull: str | None) -> datetime:
    """An ISO time (UTC unless it says otherwise), a duration back from now (`90m`, `2h`, `1d`), or `last`."""
    now = datetime.now(timezone.utc)
    if text == "last":
        if not last_pull:
            raise AutolabelError("--since last: this reviewed field was never pulled before")
        return datetime.fromisoformat(last_pull)
    if match := _DURATION.fullmatch(text.strip()):
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise AutolabelError(f"--since {text!r}: give an ISO time (2026-11-23T14:00), a duration (90m, 2h, 1d) "
                             "or `last`") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def pull(dataset_name: str, out: Path, *, since: str | None = None, reviewed: str | None = None) -> PullReport:
    """Write the reviewed masks of `dataset_name` as COCO at `out` and report what reviewers changed."""
    dataset = load_dataset(dataset_name)
    state = dict(dataset.info[INFO_KEY])
    reviewed = reviewed or DEFAULT_REVIEWED_FIELD
    review = (state.get("reviews") or {}).get(reviewed)
    if review is None:
        raise AutolabelError(f"dataset {dataset_name!r} has no reviewed field {reviewed!r}; "
                             f"start the review with `autolabel review {dataset_name}`")
    started = datetime.now(timezone.utc)
    source = RunFields.of(review["source"])
    view = all_samples(dataset).exists(source.record)
    # a dataset a run came from (`run --from-fiftyone`) has no `template` field: one field per template there
    identity = [f for f in IDENTITY_FIELDS if f in dataset.get_field_schema()]
    if since:
        from fiftyone import ViewField as F

        # mongo keeps naive UTC datetimes
        cutoff = parse_since(since, review.get("last_pull")).astimezone(timezone.utc).replace(tzinfo=None)
        touched = view.match(F("last_modified_at") > cutoff).distinct("group._id")
        view = view.match(F("group._id").is_in(touched))
    view = view.select_fields([source.labels, source.record, reviewed, *identity, *IMAGE_FIELDS])
    image_ids = _image_ids(dataset)
    report = PullReport(reviewed, source.labels)
    templates = state["runs"][source.labels].get("templates") or {}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".autolabel-pull-", dir=out.parent) as tmp:
        writer = PredictionWriter(Path(tmp))
        try:
            for slices in _groups(view.sort_by([(f, 1) for f in identity]), identity[:-1]):
                pred = _corrected(slices, source, reviewed, image_ids, report)
                writer.write([pred])
                report.groups += 1
            writer.write_info({"templates": templates})
        finally:
            writer.close()
        report.export = export_coco([Path(tmp)], out, description=f"autolabel review {reviewed!r} of FiftyOne "
                                                                     f"dataset {dataset_name!r}")
    with dataset_lock(dataset_name, "pull"):  # another writer may have changed dataset.info meanwhile
        dataset.reload()
        state = dict(dataset.info[INFO_KEY])
        state["reviews"][reviewed]["last_pull"] = started.isoformat(timespec="seconds")
        dataset.info[INFO_KEY] = state
        dataset.save()
    return report


def _image_ids(dataset) -> dict[str, int]:
    """COCO ids over every image in the dataset, not just the pulled ones, so partial pulls agree."""
    records: dict[str, ImageRecord] = {}
    for file, image_id in zip(*all_samples(dataset).exists("file").values(list(IMAGE_FIELDS))):
        records.setdefault(file, ImageRecord(file, id=image_id))
    assign_image_ids(records)
    return {file: record.id for file, record in records.items()}


def _groups(view, keys: list[str]) -> Iterator[list]:
    """The view's samples, gathered per (group_id, template) (the view is sorted by identity)."""
    for _, slices in groupby(view.iter_samples(autosave=False), key=lambda s: tuple(s[k] for k in keys)):
        yield list(slices)


def _corrected(slices: list, source: RunFields, reviewed: str, image_ids: dict[str, int],
               report: PullReport) -> Prediction:
    pred = Prediction.from_dict(json.loads(slices[0][source.record]))
    for info in pred.images:
        info.id = image_ids.get(info.file, info.id)
    last_turn = max(len(pred.turns) - 1, 0)
    for sample in slices:
        pushed = {d.id: d for d in _detections(sample[source.labels])}
        drawn = _detections(sample[reviewed])
        width, height = _image_size(pred, sample) if drawn else (0, 0)
        for detection in drawn:
            original = pushed.pop(detection.id, None)
            mask = detection_mask(detection, width, height)
            change = _change(original, detection, mask, width, height)
            report.count(detection.label, change)
            if change == "deleted":  # a reviewer erased every pixel
                continue
            turn = detection["turn"] if _has(detection, "turn") and 0 <= detection["turn"] <= last_turn else last_turn
            keep_label = original is not None and original.label == detection.label
            pred.turns[turn].segments.append(Segment.from_mask(
                mask, image=sample.image_index, category=detection.label,
                label=original["model_label"] if keep_label else detection.label,
                phrase=detection["phrase"] if _has(detection, "phrase") else "",
                score=original.confidence if change == "untouched" else 1.0,
                round=detection["round"] if _has(detection, "round") else turn))
        for original in pushed.values():
            report.count(original.label, "deleted")
    return pred


def _change(original, detection, mask: np.ndarray, width: int, height: int) -> str:
    if not mask.any():
        return "deleted"
    if original is None:
        return "added"
    if original.label != detection.label:
        return "edited"
    if original.bounding_box == detection.bounding_box and _same_crop(original, detection):
        return "untouched"
    return "untouched" if np.array_equal(detection_mask(original, width, height), mask) else "edited"


def _same_crop(a, b) -> bool:
    ma, mb = (d.get_mask() if d.has_mask else None for d in (a, b))
    return (ma is None) == (mb is None) and (ma is None or np.array_equal(ma > 0, mb > 0))


def _image_size(pred: Prediction, sample) -> tuple[int, int]:
    info = pred.images[sample.image_index]
    if info.width and info.height:
        return info.width, info.height
    from PIL import Image  # a failed group has no size on record; a reviewer may still draw on it

    with Image.open(sample.filepath) as image:
        return image.size


def _detections(labels) -> list:
    return list(labels.detections) if labels is not None else []


def _has(detection, name: str) -> bool:
    return detection.has_field(name) and detection[name] is not None
