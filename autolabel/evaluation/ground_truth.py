"""The ground truth: a COCO file read into per-image, per-category instances (RLEs, never decoded).

GT that says which labelling each mask answers (an autolabel export or a reviewers' `pull`: a
`groups` list, and `attributes.group_id` / `template` on the annotations) is also kept per
labelling: a group x template is then judged against its own GT masks only, not against those of
another template that labelled the same image. Plain COCO GT is per image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pycocotools import mask as mask_utils

from autolabel.errors import AutolabelError
from autolabel.evaluation.counted import CountedWarnings
from autolabel.evaluation.rle_checks import checked_rle


@dataclass(frozen=True)
class GtImage:
    id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class GtInstance:
    """One true object; a crowd region joins the category's union mask but is never matched."""

    rle: dict
    crowd: bool = False


Instances = dict[str, list[GtInstance]]  # category -> objects on one image


@dataclass
class GroundTruth:
    path: Path
    category_ids: dict[str, int]  # name -> id: PRED categories are mapped by name
    images: dict[int, GtImage]
    instances: dict[int, Instances] = field(default_factory=dict)  # image -> category -> objects (all of them)
    # (group id, template) -> image -> category -> objects, when GT says which labelling each mask answers
    labellings: dict[tuple[str, str], dict[int, Instances]] | None = None
    unattributed: dict[int, Instances] = field(default_factory=dict)  # per-labelling GT: masks naming no labelling

    def per_labelling(self, group_id: str, template: str) -> bool:
        """Whether this labelling has its own GT (else it is judged against every GT mask of its images)."""
        return self.labellings is not None and (group_id, template) in self.labellings

    def truth_for(self, group_id: str, template: str, image_id: int) -> Instances:
        """The GT objects one labelling is judged against on one image: its own (and any naming no
        labelling) when GT is per labelling and has it, else every GT object of the image."""
        own = self.labellings.get((group_id, template)) if self.labellings is not None else None
        if own is None:
            return self.instances.get(image_id, {})
        extra = self.unattributed.get(image_id)
        if not extra:
            return own.get(image_id, {})
        merged = {name: list(objects) for name, objects in own.get(image_id, {}).items()}
        for name, objects in extra.items():
            merged.setdefault(name, []).extend(objects)
        return merged


def read_coco_json(path: Path, role: str) -> object:
    """The parsed JSON of a COCO file; `role` (GT, PRED) names it in errors."""
    try:
        with Path(path).open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise AutolabelError(f"{path}: {role} file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AutolabelError(f"{path}: {role} is not valid JSON: {e}") from None


def coco_categories(data: dict, path: Path, role: str) -> dict[int, str]:
    """id -> name of a COCO file's categories; names must be unique since files are matched by name."""
    categories = data.get("categories")
    if not isinstance(categories, list):
        raise AutolabelError(f"{path}: {role} needs a `categories` list")
    names: dict[int, str] = {}
    for k, c in enumerate(categories):
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
            raise AutolabelError(f"{path}: {role} categories[{k}] needs an integer `id` and a `name`")
        if c["id"] in names:
            raise AutolabelError(f"{path}: {role} categories[{k}]: id {c['id']} is used twice")
        if c["name"] in names.values():
            raise AutolabelError(f"{path}: {role} categories[{k}]: name {c['name']!r} is used twice "
                                 "(eval maps categories between files by name)")
        names[c["id"]] = c["name"]
    return names


def load_ground_truth(path: Path, warnings: CountedWarnings) -> GroundTruth:
    """Read and check a GT COCO file: every mask must be well-formed and the size of its image."""
    path = Path(path)
    data = read_coco_json(path, "GT")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AutolabelError(f"{path}: GT must be a COCO object with an `images` list")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise AutolabelError(f"{path}: GT `annotations` must be a list")
    category_names = coco_categories(data, path, "GT")
    gt = GroundTruth(path, {name: i for i, name in category_names.items()}, _images(data["images"], path))
    gt.labellings = _labellings(data, path)
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise AutolabelError(f"{path}: GT annotations[{k}] is not an object")
        where = f"{path}: GT annotation id {ann['id']}" if "id" in ann else f"{path}: GT annotations[{k}]"
        image = gt.images.get(ann.get("image_id"))
        if image is None:
            raise AutolabelError(f"{where}: unknown `image_id` {ann.get('image_id')!r}")
        if ann.get("category_id") not in category_names:
            raise AutolabelError(f"{where}: unknown `category_id` {ann.get('category_id')!r}")
        if not ann.get("segmentation"):
            raise AutolabelError(f"{where}: no `segmentation` (eval compares masks, not boxes)")
        rle = checked_rle(ann["segmentation"], image.height, image.width, where)
        if mask_utils.area(rle) == 0:
            warnings.add("GT annotations with an empty mask, ignored", where)
            continue
        crowd = bool(ann.get("iscrowd", 0))
        if crowd:
            warnings.add("GT crowd annotations: part of gIoU/cIoU masks, not matched as instances "
                         "(COCOeval ignores detections on them)")
        name = category_names[ann["category_id"]]
        instance = GtInstance(rle, crowd)
        gt.instances.setdefault(image.id, {}).setdefault(name, []).append(instance)
        if gt.labellings is not None:
            attributes = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
            owner = gt.labellings.get((str(attributes.get("group_id", "")), str(attributes.get("template", ""))))
            if owner is None or image.id not in owner:
                warnings.add("GT masks naming no labelling of GT `groups` (on its images), judged as GT of every "
                             "labelling of their image", where)
                owner = gt.unattributed
            owner.setdefault(image.id, {}).setdefault(name, []).append(instance)
    return gt


def _labellings(data: dict, path: Path) -> dict[tuple[str, str], dict[int, Instances]] | None:
    """(group id, template) -> {image id: {}} for GT whose `groups` name their templates (an autolabel
    export or pull), else None (plain COCO: GT is per image). Failed groups are no labelling."""
    groups = data.get("groups")
    if not isinstance(groups, list) or not groups:
        return None
    labellings: dict[tuple[str, str], dict[int, Instances]] = {}
    for k, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("image_ids"), list):
            raise AutolabelError(f"{path}: GT groups[{k}] needs `image_ids`")
        if not group.get("template"):
            return None  # groups without templates: not an autolabel export, judged per image
        if group.get("status", "ok") != "ok":
            continue
        key = (str(group.get("id", "")), str(group["template"]))
        images = labellings.setdefault(key, {})
        for image_id in group["image_ids"]:
            images.setdefault(image_id, {})
    return labellings


def _images(images: list, path: Path) -> dict[int, GtImage]:
    out: dict[int, GtImage] = {}
    for k, im in enumerate(images):
        if not (isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)
                and isinstance(im.get("height"), int) and isinstance(im.get("width"), int)):
            raise AutolabelError(f"{path}: GT images[{k}] needs an integer `id`, `height`, `width` and a `file_name`")
        if im["id"] in out:
            raise AutolabelError(f"{path}: GT images[{k}]: id {im['id']} is used twice")
        out[im["id"]] = GtImage(im["id"], im["file_name"], im["height"], im["width"])
    return out
