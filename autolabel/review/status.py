"""`autolabel review status NAME`: how far the review is, per category, without opening the App.

Labels are compared as `pull` compares them (label ids, masks at image resolution): untouched,
edited, added, deleted. A sample counts as reviewed when a reviewer changed any of its labels or
tagged it with the reviewed field's name (`reviewed`: "I looked, it is right"). Mean score and mean
doubt are over the pushed labels.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from autolabel.errors import AutolabelError
from autolabel.review.database import load_dataset
from autolabel.review.detections import detection_mask
from autolabel.review.layout import DEFAULT_REVIEWED_FIELD, INFO_KEY, RunFields, all_samples

CHANGES = ("untouched", "edited", "added", "deleted")


@dataclass
class CategoryStatus:
    samples: Counter = field(default_factory=Counter)  # pushed, reviewed, and each change
    labels: Counter = field(default_factory=Counter)  # pushed, and each change
    scores: list[float] = field(default_factory=list)
    doubts: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"samples": {k: self.samples[k] for k in ("pushed", "reviewed", *CHANGES)},
                "labels": {k: self.labels[k] for k in ("pushed", *CHANGES)},
                "mean_score": _mean(self.scores), "mean_doubt": _mean(self.doubts)}


@dataclass
class ReviewStatus:
    dataset: str
    source: str
    reviewed: str
    categories: dict[str, CategoryStatus] = field(default_factory=dict)
    total: CategoryStatus = field(default_factory=CategoryStatus)  # samples counted once each

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "source_field": self.source, "reviewed_field": self.reviewed,
                "totals": self.total.to_json(),
                "per_category": {name: c.to_json() for name, c in sorted(self.categories.items())}}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def review_status(dataset_name: str, reviewed: str | None = None) -> ReviewStatus:
    from autolabel.review.pull import _change

    dataset = load_dataset(dataset_name)
    reviewed = reviewed or DEFAULT_REVIEWED_FIELD
    review = (dataset.info[INFO_KEY].get("reviews") or {}).get(reviewed)
    if review is None:
        raise AutolabelError(f"dataset {dataset_name!r} has no reviewed field {reviewed!r}; "
                             f"start the review with `autolabel review {dataset_name}` (or `--no-app`)")
    source = RunFields.of(review["source"])
    status = ReviewStatus(dataset_name, source.labels, reviewed)
    view = all_samples(dataset).exists(source.record)
    columns = ["filepath", "tags", "image_index", source.labels, reviewed, source.record]
    for filepath, tags, index, pushed_labels, reviewed_labels, record in zip(*view.values(columns)):
        pushed = {d.id: d for d in (pushed_labels.detections if pushed_labels is not None else [])}
        counts: dict[str, Counter] = {}
        for d in pushed.values():
            counts.setdefault(d.label, Counter())["pushed"] += 1
            category = status.categories.setdefault(d.label, CategoryStatus())
            for values, total, value in ((category.scores, status.total.scores, d.confidence),
                                         (category.doubts, status.total.doubts, d["doubt"] if d.has_field("doubt")
                                          else None)):
                if value is not None:
                    values.append(value)
                    total.append(value)
        if reviewed_labels is None:  # not under review yet (pushed after the last `review`): nothing changed
            for label, n in list(counts.items()):
                counts[label]["untouched"] = n["pushed"]
        else:
            drawn = reviewed_labels.detections
            width, height = _size(json.loads(record), index, filepath) if drawn else (0, 0)
            for detection in drawn:
                original = pushed.pop(detection.id, None)
                change = _change(original, detection, detection_mask(detection, width, height), width, height)
                counts.setdefault(detection.label, Counter())[change] += 1
            for original in pushed.values():
                counts.setdefault(original.label, Counter())["deleted"] += 1
        looked = reviewed in (tags or []) or any(c[k] for c in counts.values() for k in ("edited", "added", "deleted"))
        for label, c in counts.items():
            category = status.categories.setdefault(label, CategoryStatus())
            category.labels.update(c)
            category.samples["pushed"] += c["pushed"] > 0
            category.samples["reviewed"] += looked
            for k in CHANGES:
                category.samples[k] += c[k] > 0
        status.total.labels.update(sum(counts.values(), Counter()))
        status.total.samples["pushed"] += 1
        status.total.samples["reviewed"] += looked
        for k in CHANGES:
            status.total.samples[k] += any(c[k] for c in counts.values())
    return status


def _size(record: dict, index: int | None, filepath: str) -> tuple[int, int]:
    images = record.get("images") or []
    info = images[index] if index is not None and index < len(images) else {}
    if info.get("width") and info.get("height"):
        return info["width"], info["height"]
    from PIL import Image  # a failed group has no size on record

    with Image.open(filepath) as image:
        return image.size
