"""`evaluate`: PRED against GT, sample by sample, into overall / category / template / reasoning scopes.

Masks stay RLEs from loading to COCOeval; samples are scored image by image and folded into
running sums as they come, so only floats per sample are kept (for the report's plots).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from autolabel.errors import AutolabelError
from autolabel.evaluation.coco_ap import CocoAP
from autolabel.evaluation.counted import CountedWarnings
from autolabel.evaluation.ground_truth import GroundTruth, load_ground_truth
from autolabel.evaluation.metrics import AP_METRICS, Tally, score_labelling
from autolabel.evaluation.predictions import PredictionSet, load_predictions
from autolabel.evaluation.result import EvalResult

OVERALL = ("overall", "")


def evaluate(pred: Path, gt: Path, *, iou_threshold: float = 0.5) -> EvalResult:
    """Score PRED (a run dir or a COCO file) against GT (a COCO file) with the papers' metrics."""
    if not 0.0 < iou_threshold <= 1.0:
        raise AutolabelError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    warnings = CountedWarnings()
    truth = load_ground_truth(Path(gt), warnings)
    predictions = load_predictions(Path(pred), truth, warnings)
    if not predictions.labellings:
        examples = ", ".join(repr(im.file_name) for im in list(truth.images.values())[:2])
        raise AutolabelError(f"{pred} and {gt} have no image in common ({'; '.join(warnings.lines()) or 'no image'}; "
                             f"GT file names look like {examples or 'nothing: GT has no images'})")
    _warn_left_out(truth, predictions, warnings)

    tallies: dict[tuple[str, str], Tally] = defaultdict(lambda: Tally(iou_threshold))
    members: dict[tuple[str, str], list[str]] = defaultdict(list)  # scope -> labelling keys, for AP
    result = EvalResult({}, {}, {}, {}, {}, [], iou_threshold)
    for lab in predictions.labellings:
        for scope in (("template", lab.template), ("reasoning", lab.reasoning)):
            members[scope].append(lab.key)
        if truth.labellings is not None and not truth.per_labelling(lab.group_id, lab.template):
            warnings.add("labellings whose group and template GT `groups` do not list, judged against every "
                         "GT mask of their images", repr(lab.key))
        total = count = 0
        for sample in score_labelling(lab, truth):
            for scope in (OVERALL, ("category", sample.category), ("template", lab.template),
                          ("reasoning", lab.reasoning)):
                if scope[1] or scope == OVERALL:  # a COCO file without templates has no template scopes
                    tallies[scope].add(sample)
            result.ious_by_category.setdefault(sample.category, []).append(sample.iou)
            total += sample.iou
            count += 1
        result.labelling_scores[lab.key] = (total, count)

    ap = CocoAP(truth, predictions.labellings)
    overall_ap, category_ap = ap.scores()
    can_reject = predictions.can_reject
    result.overall = {**tallies[OVERALL].metrics(can_reject), **overall_ap}
    for (kind, name), tally in sorted(tallies.items()):
        metrics = tally.metrics(can_reject)
        if kind == "category":
            result.per_category[name] = {**metrics, **category_ap.get(name, dict.fromkeys(AP_METRICS))}
        elif kind == "template":
            result.per_template[name] = {**metrics, **ap.scores(members[kind, name])[0]}
        elif kind == "reasoning":
            result.per_reasoning_category[name] = {**metrics, **ap.scores(members[kind, name])[0]}
    result.counts = {"labellings": len(predictions.labellings),
                     "images": len({i for lab in predictions.labellings for i in lab.images}),
                     **tallies[OVERALL].counts(),
                     "predicted_masks": sum(len(m) for lab in predictions.labellings
                                            for by_category in lab.masks.values() for m in by_category.values())}
    result.warnings = warnings.lines()
    return result


def _warn_left_out(truth: GroundTruth, predictions: PredictionSet, warnings: CountedWarnings) -> None:
    """Count what the metrics cannot see or can only assume: uncovered GT images, unknown categories."""
    covered = {i for lab in predictions.labellings for i in lab.images}
    uncovered = [im.file_name for i, im in truth.images.items() if i not in covered]
    if uncovered:
        warnings.add("GT images with no prediction, left out of every metric", repr(uncovered[0]), len(uncovered))
    for lab in predictions.labellings:
        for by_category in lab.masks.values():
            for name, masks in by_category.items():
                if name not in truth.category_ids:
                    warnings.add("masks of categories GT lacks, counted as false positives (no AP)",
                                 repr(name), len(masks))
        for names in lab.rejected.values():
            for name in names - truth.category_ids.keys():
                warnings.add("rejections of categories GT lacks, counted as right (GT has none of them)", repr(name))
