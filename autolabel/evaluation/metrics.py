"""The papers' mask metrics, computed on RLEs with pycocotools (no mask is decoded).

A sample is one (labelling, image, category) present in GT or PRED (a rejection counts as
present in PRED); its masks are the unions of that category's instances on that image.

- gIoU (LISA, GSVA): mean of per-sample IoU; GT and PRED both empty scores 1.0.
- cIoU: sum of intersections / sum of unions; a mask on an empty GT adds its area to the union.
- N-acc (GSVA), on samples with empty GT: a rejection is a true positive, a mask a false
  negative; TP / (TP + FN). T-acc, on samples with GT: a mask is a true negative, a rejection a
  false positive; TN / (TN + FP). A target neither masked nor rejected is not a decision and
  counts in neither (only in the IoU metrics).
- mIoU and recall@T (GLaMM-style): per sample, GT and predicted instances are matched one to one,
  greedily by highest IoU; every GT instance scores its match's IoU, or 0 unmatched. mIoU is the
  mean over GT instances and recall the share matched at IoU >= T. Unmatched predictions do not
  enter these two (gIoU, cIoU and AP count them).
A metric with nothing to average over is None, never 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from autolabel.evaluation.ground_truth import GroundTruth, GtInstance
from autolabel.evaluation.predictions import Labelling, PredInstance

AP_METRICS = ("AP", "AP50", "AP75")


def recall_name(iou_threshold: float) -> str:
    return f"recall@{iou_threshold:g}"


def metric_names(iou_threshold: float = 0.5) -> tuple[str, ...]:
    """Every metric eval reports, in table order."""
    return ("gIoU", "cIoU", "mIoU", recall_name(iou_threshold), "N-acc", "T-acc", *AP_METRICS)


@dataclass(frozen=True, slots=True)
class Sample:
    """One (labelling, image, category) with the overlap of its union masks and matched instances."""

    image_id: int
    category: str
    intersection: int
    union: int
    gt_area: int
    pred_area: int
    rejected: bool
    instance_ious: tuple[float, ...]  # per GT instance (crowd excluded): its match's IoU, 0 if unmatched

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 1.0

    @property
    def outcome(self) -> str:
        """How the sample counts in N-acc/T-acc, in words for the report."""
        if self.gt_area == 0:
            return "mask on absent target" if self.pred_area else "absent target rejected"
        if self.pred_area:
            return "masked"
        return "present target rejected" if self.rejected else "missed"


def score_labelling(lab: Labelling, gt: GroundTruth) -> Iterator[Sample]:
    """Every sample of one labelling, image by image, against its GT (see GroundTruth.truth_for)."""
    for image_id in lab.images:
        truth = gt.truth_for(lab.group_id, lab.template, image_id)
        masks = lab.masks.get(image_id, {})
        rejected = lab.rejected.get(image_id, set())
        categories = {c for c in truth if lab.scope is None or c in lab.scope} | set(masks) | rejected
        for category in sorted(categories):
            yield _sample(image_id, category, truth.get(category, []), masks.get(category, []), category in rejected)


def _sample(image_id: int, category: str, truth: list[GtInstance], masks: list[PredInstance], rejected: bool) -> Sample:
    gt_union = mask_utils.merge([t.rle for t in truth]) if truth else None
    pred_union = mask_utils.merge([m.rle for m in masks]) if masks else None
    gt_area = int(mask_utils.area(gt_union)) if gt_union else 0
    pred_area = int(mask_utils.area(pred_union)) if pred_union else 0
    intersection = (int(mask_utils.area(mask_utils.merge([gt_union, pred_union], intersect=True)))
                    if gt_union and pred_union else 0)
    return Sample(image_id, category, intersection, gt_area + pred_area - intersection, gt_area, pred_area, rejected,
                  matched_ious([t.rle for t in truth if not t.crowd], [m.rle for m in masks]))


def matched_ious(truth: list[dict], predicted: list[dict]) -> tuple[float, ...]:
    """One-to-one greedy matching by highest IoU: each GT instance's matched IoU (0 if none)."""
    if not truth or not predicted:
        return (0.0,) * len(truth)
    ious = np.asarray(mask_utils.iou(predicted, truth, [0] * len(truth)), dtype=float)
    ious = ious.reshape(len(predicted), len(truth))
    best = [0.0] * len(truth)
    used_pred: set[int] = set()
    used_truth: set[int] = set()
    for flat in np.argsort(-ious, axis=None, kind="stable"):
        p, t = divmod(int(flat), len(truth))
        if ious[p, t] <= 0:
            break
        if p not in used_pred and t not in used_truth:
            used_pred.add(p)
            used_truth.add(t)
            best[t] = float(ious[p, t])
    return tuple(best)


class Tally:
    """Running sums over the samples of one scope (overall, a category, a template...)."""

    def __init__(self, iou_threshold: float):
        self.iou_threshold = iou_threshold
        self.samples = 0
        self.iou_sum = 0.0
        self.intersection = 0
        self.union = 0
        self.instances = 0
        self.instance_iou_sum = 0.0
        self.recalled = 0
        self.absent_rejected = self.absent_masked = 0  # N-acc: TP, FN
        self.present_masked = self.present_rejected = 0  # T-acc: TN, FP

    def add(self, s: Sample) -> None:
        self.samples += 1
        self.iou_sum += s.iou
        self.intersection += s.intersection
        self.union += s.union
        self.instances += len(s.instance_ious)
        self.instance_iou_sum += sum(s.instance_ious)
        self.recalled += sum(iou >= self.iou_threshold for iou in s.instance_ious)
        if s.gt_area == 0:
            self.absent_masked += s.pred_area > 0
            self.absent_rejected += s.pred_area == 0 and s.rejected
        else:
            self.present_masked += s.pred_area > 0
            self.present_rejected += s.pred_area == 0 and s.rejected

    def metrics(self, can_reject: bool) -> dict[str, float | None]:
        """The IoU and rejection metrics of this scope (AP comes from COCOeval separately)."""
        return {
            "gIoU": _ratio(self.iou_sum, self.samples),
            "cIoU": _ratio(self.intersection, self.union),
            "mIoU": _ratio(self.instance_iou_sum, self.instances),
            recall_name(self.iou_threshold): _ratio(self.recalled, self.instances),
            "N-acc": _ratio(self.absent_rejected, self.absent_rejected + self.absent_masked) if can_reject else None,
            "T-acc": _ratio(self.present_masked, self.present_masked + self.present_rejected) if can_reject else None,
        }

    def counts(self) -> dict[str, int]:
        return {"samples": self.samples, "gt_instances": self.instances}


def _ratio(num: float, den: float) -> float | None:
    return float(num) / den if den else None
