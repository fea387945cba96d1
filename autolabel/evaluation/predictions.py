"""The predictions to judge, from a run dir or a COCO file, as labellings of GT images.

A labelling is one answer: a group x template x model prediction (a run line, or an export's
`groups` entry with its annotations), or one image of a COCO file that has no groups. Each is
judged on its own against the GT of the images it covers, so two templates that label the same
image give two sets of samples instead of one mixed union of masks.

Categories are matched to GT by name; images by path (see image_matching), or by id when PRED
has no file names (a COCO results list). Masks stay RLEs, checked once here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pycocotools import mask as mask_utils

from autolabel.errors import AutolabelError
from autolabel.evaluation.counted import CountedWarnings
from autolabel.evaluation.ground_truth import GroundTruth, coco_categories, read_coco_json
from autolabel.evaluation.image_matching import ImageMatcher
from autolabel.evaluation.rle_checks import checked_rle
from autolabel.prediction import prediction_key, segment_category
from autolabel.store import read_predictions, read_run_info


@dataclass(frozen=True)
class PredInstance:
    rle: dict
    score: float


@dataclass
class Labelling:
    """One answer being judged, with its masks and rejections per GT image and category."""

    key: str
    group_id: str = ""
    template: str = ""
    reasoning: str = ""  # the template's reasoning category (functional, spatial, ...)
    scope: frozenset[str] | None = None  # categories it was asked for (run.json ontology); None: all of GT
    images: dict[int, str] = field(default_factory=dict)  # GT image id -> the file name PRED gives it
    masks: dict[int, dict[str, list[PredInstance]]] = field(default_factory=dict)
    rejected: dict[int, set[str]] = field(default_factory=dict)

    def add_mask(self, gt: GroundTruth, image_id: int, category: str, segmentation: object, score: float,
                 where: str, warnings: CountedWarnings) -> None:
        image = gt.images[image_id]
        rle = checked_rle(segmentation, image.height, image.width, where)
        if mask_utils.area(rle) == 0:
            warnings.add("predicted masks with no pixel, ignored (as the COCO export drops them)", where)
            return
        self.masks.setdefault(image_id, {}).setdefault(category, []).append(PredInstance(rle, float(score)))

    def reject(self, image_ids: Iterable[int | None], category: str) -> None:
        for image_id in image_ids:
            if image_id is not None:
                self.rejected.setdefault(image_id, set()).add(category)


@dataclass
class PredictionSet:
    labellings: list[Labelling]
    can_reject: bool  # False for COCO files without `groups`: N-acc and T-acc do not apply
    image_root: Path | None  # where a run's file names are relative to (run.json input_root)


def load_predictions(pred: Path, gt: GroundTruth, warnings: CountedWarnings, *,
                     only: set[str] | None = None) -> PredictionSet:
    """PRED (run dir or COCO file) as labellings of GT images; `only` keeps just those keys."""
    pred = Path(pred)
    matcher = ImageMatcher(gt.images, warnings)
    if pred.is_dir():
        return _from_run_dir(pred, gt, matcher, warnings, only)
    return _from_coco(pred, gt, matcher, warnings, only)


def _from_run_dir(run_dir: Path, gt: GroundTruth, matcher: ImageMatcher, warnings: CountedWarnings,
                  only: set[str] | None) -> PredictionSet:
    info = read_run_info(run_dir)
    scopes = {name: frozenset(spec["categories"]) for name, spec in (info.get("templates") or {}).items()
              if isinstance(spec, dict) and spec.get("categories")}
    labellings = []
    for pred in read_predictions([run_dir]):
        if only is not None and pred.key not in only:
            continue
        if pred.status != "ok":
            warnings.add("groups that failed in the run (status error), left out", repr(pred.key))
            continue
        lab = Labelling(pred.key, pred.group_id, pred.template, pred.category, scopes.get(pred.template))
        image_ids = [_gt_image(matcher, image.file, warnings) for image in pred.images]
        for image_id, image in zip(image_ids, pred.images):
            if image_id is not None:
                lab.images.setdefault(image_id, image.file)
        where = f"{run_dir}: prediction {pred.key!r}"
        for segment in pred.segments():
            image_id = _at(image_ids, segment.image, f"{where}, mask of {segment.label!r}")
            if image_id is None:
                warnings.add("masks on predicted images not in GT, not evaluated")
                continue
            lab.add_mask(gt, image_id, segment_category(segment), segment.rle, segment.score,
                         f"{where}, mask of {segment.label!r} on {lab.images[image_id]!r}", warnings)
        for turn in pred.turns:
            for r in turn.rejected:
                on = image_ids if r.image is None else [_at(image_ids, r.image, f"{where}, rejection of {r.label!r}")]
                lab.reject(on, r.category or r.label)
        if lab.scope is not None:  # what it was asked for includes what it answered about (an ontology
            # rendered from the group's own variables, e.g. an exemplar's label, is not in run.json)
            lab.scope = lab.scope | {c for m in lab.masks.values() for c in m} | {c for r in lab.rejected.values() for c in r}
        if lab.images:
            labellings.append(lab)
    root = info.get("input_root")
    return PredictionSet(labellings, can_reject=True, image_root=Path(root) if root else None)


def _gt_image(matcher: ImageMatcher, file: str, warnings: CountedWarnings) -> int | None:
    image_id = matcher.match(file)
    if image_id is None:
        warnings.add("predicted images not in GT, left out", repr(file))
    return image_id


def _at(image_ids: list[int | None], index: int, where: str) -> int | None:
    if not 0 <= index < len(image_ids):
        raise AutolabelError(f"{where}: image index {index} out of range ({len(image_ids)} images)")
    return image_ids[index]


def _from_coco(path: Path, gt: GroundTruth, matcher: ImageMatcher, warnings: CountedWarnings,
               only: set[str] | None) -> PredictionSet:
    """A COCO results list (ids are GT's), or a COCO object (images matched by file name)."""
    data = read_coco_json(path, "PRED")
    if isinstance(data, list):
        data = {"annotations": data}
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise AutolabelError(f"{path}: PRED must be a COCO results list or a COCO object with `annotations`")
    names = (coco_categories(data, path, "PRED") if "categories" in data
             else {i: name for name, i in gt.category_ids.items()})
    to_gt = _coco_images(data, path, gt, matcher, warnings)
    labellings = _coco_labellings(data, path, gt, to_gt, warnings)
    by_image: dict[int, Labelling] = {}
    for lab in labellings.values():
        for image_id in lab.images:
            by_image.setdefault(image_id, lab)
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise AutolabelError(f"{path}: PRED annotations[{k}] is not an object")
        where = f"{path}: PRED annotation id {ann['id']}" if "id" in ann else f"{path}: PRED annotations[{k}]"
        if ann.get("image_id") not in to_gt:
            raise AutolabelError(f"{where}: unknown `image_id` {ann.get('image_id')!r}")
        image_id = to_gt[ann["image_id"]]
        if image_id is None:
            warnings.add("masks on predicted images not in GT, not evaluated")
            continue
        lab = _owner(ann, labellings, by_image, image_id, warnings) if "groups" in data else by_image[image_id]
        if lab is None or (only is not None and lab.key not in only):
            continue
        if ann.get("category_id") not in names:
            raise AutolabelError(f"{where}: unknown `category_id` {ann.get('category_id')!r}")
        if not ann.get("segmentation"):
            raise AutolabelError(f"{where}: no `segmentation` (eval compares masks, not boxes)")
        score = ann.get("score")
        if score is None:
            warnings.add("predicted masks without a `score`, ranked as 1.0 for AP", where)
            score = 1.0
        elif not isinstance(score, int | float):
            raise AutolabelError(f"{where}: `score` must be a number, got {score!r}")
        lab.add_mask(gt, image_id, names[ann["category_id"]], ann["segmentation"], score, where, warnings)
    kept = [lab for lab in labellings.values() if lab.images and (only is None or lab.key in only)]
    return PredictionSet(kept, can_reject="groups" in data, image_root=None)


def _coco_images(data: dict, path: Path, gt: GroundTruth, matcher: ImageMatcher,
                 warnings: CountedWarnings) -> dict[object, int | None]:
    """PRED image id -> GT image id: by file name when PRED lists its images, else ids are GT's."""
    if "images" not in data:
        return {i: i for i in gt.images}
    if not isinstance(data["images"], list):
        raise AutolabelError(f"{path}: PRED `images` must be a list")
    to_gt: dict[object, int | None] = {}
    for k, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise AutolabelError(f"{path}: PRED images[{k}] needs an `id`")
        if isinstance(image.get("file_name"), str):
            to_gt[image["id"]] = _gt_image(matcher, image["file_name"], warnings)
        elif image["id"] in gt.images:
            to_gt[image["id"]] = image["id"]
        else:
            warnings.add("predicted images not in GT, left out", f"id {image['id']!r}")
            to_gt[image["id"]] = None
    return to_gt


def _coco_labellings(data: dict, path: Path, gt: GroundTruth, to_gt: dict[object, int | None],
                     warnings: CountedWarnings) -> dict[str, Labelling]:
    """An autolabel export's `groups` (with their rejections); without them, each image is a group."""
    if "groups" not in data:
        files = {i: gt.images[i].file_name for i in to_gt.values() if i is not None}
        return {file: Labelling(file, file, images={i: ""}) for i, file in files.items()}
    if not isinstance(data["groups"], list):
        raise AutolabelError(f"{path}: PRED `groups` must be a list")
    labellings: dict[str, Labelling] = {}
    for k, group in enumerate(data["groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("image_ids"), list):
            raise AutolabelError(f"{path}: PRED groups[{k}] needs `image_ids`")
        key = prediction_key(str(group.get("id", "")), str(group.get("template", "")), str(group.get("model", "")))
        if group.get("status", "ok") != "ok":
            warnings.add("groups that failed in the run (status error), left out", repr(key))
            continue
        unknown = [i for i in group["image_ids"] if i not in to_gt]
        if unknown:
            raise AutolabelError(f"{path}: PRED groups[{k}]: image ids {unknown} are not in `images`")
        lab = Labelling(key, str(group.get("id", "")), str(group.get("template", "")), str(group.get("category", "")))
        image_ids = [to_gt[i] for i in group["image_ids"]]
        lab.images = {i: "" for i in image_ids if i is not None}
        for r in group.get("rejected") or []:
            if not isinstance(r, dict):
                raise AutolabelError(f"{path}: PRED groups[{k}]: `rejected` entries must be objects")
            if r.get("image_id") is not None and r["image_id"] not in to_gt:
                raise AutolabelError(f"{path}: PRED groups[{k}]: rejection on unknown image id {r['image_id']!r}")
            lab.reject(image_ids if r.get("image_id") is None else [to_gt[r["image_id"]]],
                       r.get("category") or r.get("label", ""))
        labellings[key] = lab
    return labellings


def _owner(ann: dict, labellings: dict[str, Labelling], by_image: dict[int, Labelling], image_id: int,
           warnings: CountedWarnings) -> Labelling | None:
    """The labelling an annotation belongs to: its group (from `attributes`), else one covering its image."""
    attributes = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    key = prediction_key(str(attributes.get("group_id", "")), str(attributes.get("template", "")),
                         str(attributes.get("model", "")))
    lab = labellings.get(key)
    if lab is not None and image_id in lab.images:
        return lab
    if image_id in by_image:
        warnings.add("PRED annotations naming no group of `groups`, judged with the first group of their image")
        return by_image[image_id]
    warnings.add("PRED annotations on images no group covers, not evaluated")
    return None
