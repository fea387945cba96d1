"""COCO segm AP, AP50 and AP75 by pycocotools' COCOeval, over every (labelling, image).

Each labelling's view of an image becomes its own COCO image, so two templates that label the
same image are scored as two answers, as in the other metrics, each against its own GT when GT is
per labelling; GT instances outside a labelling's scope are left out of its images. Categories GT lacks cannot have an AP (COCOeval
needs GT of a category to rank its detections), so their masks do not enter AP; they still count
as false positives in gIoU and cIoU. The COCO structures reference the loaded RLEs, no copies.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from autolabel.evaluation.ground_truth import GroundTruth
from autolabel.evaluation.metrics import AP_METRICS
from autolabel.evaluation.predictions import Labelling

APScores = dict[str, float | None]


class CocoAP:
    def __init__(self, gt: GroundTruth, labellings: list[Labelling]):
        self._category_names = {i: name for name, i in gt.category_ids.items()}
        categories = [{"id": i, "name": name} for i, name in self._category_names.items()]
        images: list[dict] = []
        truth: list[dict] = []
        detections: list[dict] = []
        self._images_of: dict[str, list[int]] = {}
        for lab in labellings:
            for image_id in lab.images:
                image = gt.images[image_id]
                view = len(images) + 1
                images.append({"id": view, "height": image.height, "width": image.width})
                self._images_of.setdefault(lab.key, []).append(view)
                for name, instances in gt.truth_for(lab.group_id, lab.template, image_id).items():
                    if lab.scope is None or name in lab.scope:
                        for t in instances:
                            truth.append(_annotation(len(truth) + 1, view, gt.category_ids[name], t.rle,
                                                     iscrowd=int(t.crowd)))
                for name, masks in lab.masks.get(image_id, {}).items():
                    if name in gt.category_ids:
                        for m in masks:
                            detections.append(_annotation(len(detections) + 1, view, gt.category_ids[name], m.rle,
                                                          iscrowd=0, score=m.score))
        self._scores: dict[tuple[int, ...], tuple[APScores, dict[str, APScores]]] = {}  # one template = overall
        self._gt = _coco({"images": images, "categories": categories, "annotations": truth})
        self._dt = _coco({"images": images, "categories": categories, "annotations": detections})

    def scores(self, labellings: Iterable[str] | None = None) -> tuple[APScores, dict[str, APScores]]:
        """AP/AP50/AP75 over the given labellings' images (all when None), overall and per GT category."""
        keys = self._images_of if labellings is None else labellings
        views = tuple(sorted(v for key in keys for v in self._images_of.get(key, [])))
        if not views:
            return dict.fromkeys(AP_METRICS), {}
        if views not in self._scores:
            self._scores[views] = self._evaluate(list(views))
        return self._scores[views]

    def _evaluate(self, views: list[int]) -> tuple[APScores, dict[str, APScores]]:
        evaluator = COCOeval(self._gt, self._dt, iouType="segm")
        evaluator.params.imgIds = views
        # only the summary numbers (all areas, 100 detections) are reported: computing the small,
        # medium and large breakdowns too would take 4x the time and memory
        evaluator.params.areaRng, evaluator.params.areaRngLbl = [evaluator.params.areaRng[0]], ["all"]
        evaluator.params.maxDets = [100]
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
            evaluator.evaluate()
            evaluator.accumulate()
        precision = evaluator.eval["precision"][:, :, :, 0, 0]  # [iou threshold, recall, category]
        thresholds = evaluator.params.iouThrs
        per_category = {self._category_names[c]: _ap(precision[:, :, k:k + 1], thresholds)
                        for k, c in enumerate(evaluator.params.catIds)}
        return _ap(precision, thresholds), per_category


def _ap(precision: np.ndarray, thresholds: np.ndarray) -> APScores:
    """COCOeval.summarize's means: over thresholds, recall points and categories with GT.

    Rounded to 10 decimals: COCOeval's precision is tp / (tp + fp + eps), so a perfect AP would
    otherwise read 0.9999999999999998 and fail a `--fail-under AP=1` gate.
    """
    def mean(p: np.ndarray) -> float | None:
        valid = p[p > -1]
        return round(float(valid.mean()), 10) if valid.size else None

    return {"AP": mean(precision), "AP50": mean(precision[np.isclose(thresholds, 0.5)]),
            "AP75": mean(precision[np.isclose(thresholds, 0.75)])}


def _annotation(ann_id: int, image_id: int, category_id: int, rle: dict, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": float(mask_utils.area(rle)), **extra}


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
