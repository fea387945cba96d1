"""Doubt: how much a person should look at a pushed label, from what the runs know. The review
queue (`autolabel review`, saved view `by-doubt`) shows the most doubtful first.

Per label (a pushed detection), four parts, each in [0, 1]:

- `score`: 1 - the segment's score (vlm-sam: the mask head's predicted IoU x the VLM's token
  confidence for that target).
- `disagreement`: over the answers for the same image and category that found it there (another
  template, or another model pushed into another field, and this answer itself, which agrees with
  itself), the mean of 1 - the best mask IoU between this label and their masks of that category:
  sum over the n others of (1 - IoU) / (n + 1). 0 when no other answer found it; with one other
  answer, (1 - IoU) / 2, as nothing tells which of the two is wrong.
- `conflict`: of the answers that found or rejected the category on this image, this one
  included, the fraction that rejected it: rejecters / (rejecters + other finders + 1).
- `shape`: the largest of `tiny` = 1 - area / (0.1% of the image), `huge` = (area / image -
  0.8) / 0.2 and `fragmented` = 1 - (largest connected piece / area), each clipped to [0, 1].

    doubt = 1 - (1 - score part) (1 - disagreement) (1 - conflict) (1 - shape)
          = 1 - score x (1 - disagreement) x (1 - conflict) x (1 - shape)

that is, the chance the label is wrong if each part were the independent chance of one way to be
wrong. A sample's parts are the largest of its labels'; a rejected target adds, the same way, the
fraction of the answers about that category on the image that found it (finders / (finders + other
rejecters + 1)) to `conflict`. Its doubt is the largest of its labels' doubts and those rejection
conflicts; a failed sample's is 1, and one with no label and no conflict 0. A FiftyOne group's
doubt is its most doubtful sample's, and its score its lowest label score: the queue sorts groups,
so every image of a question is reviewed together.

The pure part (masks in, parts out) comes first; `update_doubt` applies it to a dataset.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from autolabel.review.layout import INFO_KEY, RunFields, all_samples

TINY = 0.001  # a mask below 0.1% of its image starts to look like a speck
HUGE = 0.8  # a mask above 80% of its image starts to look like the background
PARTS = ("score", "disagreement", "conflict", "shape")
CHUNK = 1000  # images per read; memory stays bounded by it


# -- the pure part ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Mask:
    """A boolean mask at image resolution, kept as the crop inside its box at (x, y)."""

    x: int
    y: int
    crop: np.ndarray

    @classmethod
    def of(cls, full: np.ndarray) -> Mask:
        ys, xs = np.nonzero(full)
        if not len(xs):
            return cls(0, 0, np.zeros((0, 0), bool))
        x0, y0 = int(xs.min()), int(ys.min())
        return cls(x0, y0, full[y0:ys.max() + 1, x0:xs.max() + 1].astype(bool))

    @property
    def area(self) -> int:
        return int(self.crop.sum())


def mask_iou(a: Mask, b: Mask) -> float:
    union = a.area + b.area
    if union == 0:
        return 0.0
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.crop.shape[1], b.x + b.crop.shape[1]), min(a.y + a.crop.shape[0], b.y + b.crop.shape[0])
    inter = 0
    if x1 > x0 and y1 > y0:
        inter = int((a.crop[y0 - a.y:y1 - a.y, x0 - a.x:x1 - a.x] & b.crop[y0 - b.y:y1 - b.y, x0 - b.x:x1 - b.x]).sum())
    return inter / (union - inter)


def shape_part(mask: Mask, image_area: int) -> float:
    """max(tiny, huge, fragmented), as the module says."""
    area = mask.area
    if area == 0 or image_area <= 0:
        return 1.0
    tiny = 1 - area / (TINY * image_area)
    huge = (area / image_area - HUGE) / (1 - HUGE)
    fragmented = 1 - _largest_piece(mask.crop) / area
    return float(np.clip(max(tiny, huge, fragmented), 0.0, 1.0))


def _largest_piece(crop: np.ndarray) -> int:
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(crop.astype(np.uint8), connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0


def disagreement_part(mask: Mask, others: list[list[Mask]]) -> float:
    """Mean of 1 - the best IoU with `mask` over the other answers that found the category (each: its
    masks of it) and this answer itself (IoU 1)."""
    found = [masks for masks in others if masks]
    return float(sum(1 - max(mask_iou(mask, m) for m in masks) for masks in found) / (len(found) + 1))


def conflict_part(against: int, along: int) -> float:
    """The share of the answers that say otherwise (`against`) among all that say anything: the `along`
    others and this one."""
    return against / (against + along + 1)


def combine(parts: dict[str, float]) -> float:
    """1 - the product of (1 - part): any one strong reason is enough to look."""
    return float(1 - np.prod([1 - parts.get(p, 0.0) for p in PARTS]))


@dataclass
class Label:
    """One pushed mask on an image, from one answer (a field x template)."""

    answer: Hashable
    category: str
    mask: Mask
    score: float | None


@dataclass
class ImageAnswers:
    """Everything every answer said about one image: its masks and the categories it rejected."""

    area: int
    labels: list[Label] = field(default_factory=list)
    rejected: dict[Hashable, set[str]] = field(default_factory=dict)

    def found(self, category: str, besides: Hashable) -> dict[Hashable, list[Mask]]:
        out: dict[Hashable, list[Mask]] = {}
        for label in self.labels:
            if label.category == category and label.answer != besides:
                out.setdefault(label.answer, []).append(label.mask)
        return out

    def rejecters(self, category: str, besides: Hashable, found: dict) -> int:
        return sum(category in cats for answer, cats in self.rejected.items()
                   if answer != besides and answer not in found)


def label_parts(label: Label, image: ImageAnswers) -> dict[str, float]:
    found = image.found(label.category, label.answer)
    return {"score": 1 - float(np.clip(label.score, 0, 1)) if label.score is not None else 0.0,
            "disagreement": disagreement_part(label.mask, list(found.values())),
            "conflict": conflict_part(image.rejecters(label.category, label.answer, found), len(found)),
            "shape": shape_part(label.mask, image.area)}


def rejection_conflict(answer: Hashable, category: str, image: ImageAnswers) -> float:
    """For a category `answer` rejected on this image: the fraction of the other answers that found it."""
    found = image.found(category, answer)
    return conflict_part(len(found), image.rejecters(category, answer, found))


@dataclass
class SampleDoubt:
    doubt: float
    parts: dict[str, float]
    labels: list[tuple[float, dict[str, float]]]  # (doubt, parts) per label, in order


def sample_doubt(labels: list[Label], rejected: Iterable[str], answer: Hashable, image: ImageAnswers,
                 failed: bool = False) -> SampleDoubt:
    per_label = []
    for label in labels:
        parts = label_parts(label, image)
        per_label.append((combine(parts), parts))
    parts = {p: max([lp[p] for _, lp in per_label], default=0.0) for p in PARTS}
    conflicts = [rejection_conflict(answer, category, image) for category in rejected]
    parts["conflict"] = max([parts["conflict"], *conflicts])
    doubt = 1.0 if failed else max([d for d, _ in per_label] + conflicts, default=0.0)
    return SampleDoubt(doubt, parts, per_label)


# -- on a dataset ----------------------------------------------------------------------------
def declare_doubt_fields(fo, dataset, fields: RunFields) -> None:
    schema = dataset.get_field_schema(flat=True)
    for name in (*fields.doubt_fields, *(f"{fields.labels}.detections.{n}" for n in _label_attrs())):
        if name not in schema:
            dataset.add_sample_field(name, fo.FloatField)


def _label_attrs() -> tuple[str, ...]:
    return ("doubt", *(f"doubt_{p}" for p in PARTS))


def update_doubt(dataset, sample_ids: Iterable[str] | None = None) -> int:
    """Recompute the doubt of every pushed field on the images of `sample_ids` (None: all), and the
    group doubt of every group those images are in; write only what changed. Returns samples written.
    The caller holds the dataset's lock (review/lock.py)."""
    import fiftyone as fo

    state = dataset.info.get(INFO_KEY) or {}
    run_fields = [RunFields.of(name) for name in state.get("runs") or {}]
    if not run_fields:
        return 0
    for fields in run_fields:
        declare_doubt_fields(fo, dataset, fields)
    view = all_samples(dataset)
    if sample_ids is None:
        filepaths = sorted(set(view.distinct("filepath")))
    else:
        filepaths = sorted({p for chunk in _chunks(list(sample_ids), 10 * CHUNK)
                            for p in view.select(chunk).distinct("filepath")})
    grouped = dataset.media_type == "group"
    written, groups = 0, set()
    for chunk in _chunks(filepaths, CHUNK):
        part = view.match(fo.ViewField("filepath").is_in(chunk))
        written += _update_images(dataset, part, run_fields, groups, grouped)
    if grouped:
        for chunk in _chunks(sorted(groups), 10 * CHUNK):
            written += _update_groups(dataset, view, chunk, run_fields)
    return written


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclass
class _Pushed:
    """One sample's answer in one field."""

    sample_id: str
    fields: RunFields
    answer: tuple[str, str]  # (field, template)
    has_labels: bool  # False: the sample holds no Detections in the field (a failed group)
    labels: list[Label]
    rejected: set[str]
    failed: bool


_READ = ("label", "confidence", "mask", "bounding_box")  # what doubt reads of each label (masks, not documents)


def _update_images(dataset, view, run_fields: list[RunFields], groups: set, grouped: bool) -> int:
    base = ["id", "filepath", "image_index"] + (["group.id"] if grouped else [])
    stored = {f.labels: _stored(f, grouped) for f in run_fields}
    columns = base + [path for f in run_fields for path in
                      (*(f"{f.labels}.detections.{a}" for a in _READ), f.record, *stored[f.labels])]
    stride = len(_READ) + 1 + len(stored[run_fields[0].labels])
    images: dict[str, ImageAnswers] = {}
    pushed: list[tuple[str, _Pushed, dict]] = []  # (filepath, answer, the doubt values it holds now)
    for row in zip(*view.values(columns)):
        sample_id, filepath, index = row[:3]
        if grouped:
            groups.add(row[3])
        values = row[len(base):]
        for k, fields in enumerate(run_fields):
            labels, confidences, masks, boxes, record, *now = values[k * stride:(k + 1) * stride]
            if record is None:
                continue
            item, area = _read(sample_id, fields, (labels, confidences, masks, boxes), json.loads(record), index)
            image = images.setdefault(filepath, ImageAnswers(0))
            image.area = image.area or area
            image.labels += item.labels
            if item.rejected:
                image.rejected.setdefault(item.answer, set()).update(item.rejected)
            pushed.append((filepath, item, dict(zip(stored[fields.labels], now))))
    updates: dict[str, dict] = {}
    for filepath, item, now in pushed:
        result = sample_doubt(item.labels, item.rejected, item.answer, images[filepath], item.failed)
        new = _values(item.fields, result, None if grouped else item.labels)
        if not item.has_labels:
            new = {k: v for k, v in new.items() if ".detections." not in k}
        if any(now[name] != value for name, value in new.items()):
            updates.setdefault(item.sample_id, {}).update(_paths(new))
    _write(dataset, updates)
    return len(updates)


def _paths(values: dict[str, object]) -> dict[str, object]:
    """Database paths: a label list `F.detections.doubt` becomes `F.detections.0.doubt`, ..."""
    out = {}
    for name, value in values.items():
        if ".detections." in name:
            head, attr = name.rsplit(".", 1)
            out.update({f"{head}.{i}.{attr}": v for i, v in enumerate(value)})
        else:
            out[name] = value
    return out


def _write(dataset, updates: dict[str, dict]) -> None:
    """One update per sample with all its doubt values. FiftyOne's `set_values` would send one per
    field and one per label and field (20 per sample here), which doubled the time of a push."""
    if not updates:
        return
    from datetime import datetime, timezone

    from bson import ObjectId
    from pymongo import UpdateOne

    now = datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne keeps naive UTC
    ops = [UpdateOne({"_id": ObjectId(sid)}, {"$set": {**values, "last_modified_at": now}})
           for sid, values in updates.items()]
    dataset._bulk_write(ops, ids=list(updates))  # the bulk write set_values does, then its in-memory sync


def _stored(fields: RunFields, grouped: bool) -> list[str]:
    """The doubt values a sample holds now, in the order `_values` makes them."""
    return [fields.doubt, *(getattr(fields, f"doubt_{p}") for p in PARTS),
            *(f"{fields.labels}.detections.{n}" for n in _label_attrs()),
            *([] if grouped else [fields.group_doubt, fields.group_score])]


def _values(fields: RunFields, result: SampleDoubt, flat_labels: list[Label] | None) -> dict[str, object]:
    """A sample's doubt values; in a flat dataset a sample is its own group (`flat_labels`)."""
    out: dict[str, object] = {fields.doubt: _round(result.doubt)}
    out.update({getattr(fields, f"doubt_{p}"): _round(result.parts[p]) for p in PARTS})
    out[f"{fields.labels}.detections.doubt"] = [_round(d) for d, _ in result.labels]
    for p in PARTS:
        out[f"{fields.labels}.detections.doubt_{p}"] = [_round(parts[p]) for _, parts in result.labels]
    if flat_labels is not None:
        scores = [label.score for label in flat_labels if label.score is not None]
        out[fields.group_doubt] = out[fields.doubt]
        out[fields.group_score] = _round(min(scores)) if scores else None
    return out


def _round(x: float) -> float:
    return round(float(x), 4)


def _read(sample_id: str, fields: RunFields, labels: tuple, record: dict, index: int | None) -> tuple[_Pushed, int]:
    from autolabel.review.detections import box_crop

    if index is None:  # not written by push: find the sample in the line
        index = next((i for i, im in enumerate(record["images"]) if im.get("sample_id") == sample_id), 0)
    answer = (fields.labels, record.get("template", ""))
    info = record["images"][index] if index < len(record["images"]) else {}
    width, height = info.get("width") or 0, info.get("height") or 0
    categories, confidences, masks, boxes = labels
    found = []
    for category, confidence, mask, box in zip(categories or [], confidences or [], masks or [], boxes or []):
        x, y, crop = box_crop(box, mask, width, height) if width and height else (0, 0, np.zeros((0, 0), bool))
        found.append(Label(answer, category, Mask(x, y, crop), confidence))
    rejected = {r.get("category") or r.get("label") for t in record.get("turns", []) for r in t.get("rejected", [])
                if r.get("image") in (None, index)}
    failed = record.get("status", "ok") != "ok"
    return _Pushed(sample_id, fields, answer, categories is not None, found, rejected, failed), width * height


def _update_groups(dataset, view, group_ids: list[str], run_fields: list[RunFields]) -> int:
    from bson import ObjectId
    from fiftyone import ViewField as F

    part = view.match(F("group._id").is_in([ObjectId(g) for g in group_ids]))
    columns = ["id", "group.id"] + [path for f in run_fields for path in
                                    (f.doubt, f"{f.labels}.detections.confidence", f.group_doubt, f.group_score)]
    rows = list(zip(*part.values(columns)))
    updates: dict[str, dict] = {}
    for k, fields in enumerate(run_fields):
        doubt: dict[str, float] = {}
        score: dict[str, float] = {}
        for row in rows:
            group, (d, confidences, _, _) = row[1], row[2 + 4 * k:6 + 4 * k]
            if d is not None:
                doubt[group] = max(doubt.get(group, 0.0), d)
            for c in confidences or []:
                if c is not None:
                    score[group] = min(score.get(group, 1.0), _round(c))
        for row in rows:
            sample_id, group, (d, _, group_doubt, group_score) = row[0], row[1], row[2 + 4 * k:6 + 4 * k]
            if d is None:
                continue
            new = (doubt.get(group), score.get(group))
            if new != (group_doubt, group_score):
                updates.setdefault(sample_id, {}).update({fields.group_doubt: new[0], fields.group_score: new[1]})
    _write(dataset, updates)
    return len(updates)
