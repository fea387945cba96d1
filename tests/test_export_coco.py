"""COCO export: every file loads in pycocotools, scores AP 1.0 against itself and keeps masks exact."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import ellipse, prediction, sample_predictions, seg, write_run
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from autolabel.errors import AutolabelError
from autolabel.exporters import export_coco
from autolabel.exporters import coco as coco_module
from autolabel.masks import mask_to_polygons
from autolabel.prediction import Turn


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def self_eval(gt: COCO) -> np.ndarray:
    """COCOeval of the export's own annotations (as detections) against it, segm."""
    dets = []
    for ann in gt.loadAnns(gt.getAnnIds()):
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": ann["score"],
                     "segmentation": gt.annToRLE(ann)})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", sample_predictions())


def test_export_loads_in_pycocotools_and_scores_ap_1_against_itself(run_dir: Path, tmp_path: Path):
    out = tmp_path / "out" / "coco.json"
    stats = export_coco([run_dir], out)
    gt = quiet_coco(out)
    assert len(gt.getAnnIds()) == stats.annotations == 6
    ap = self_eval(gt)
    assert ap[0] == pytest.approx(1.0) and ap[1] == pytest.approx(1.0)
    assert not list(out.parent.glob("*.tmp")), "temp file left behind"


def test_masks_round_trip_exactly_with_area_and_box_from_the_mask(run_dir: Path, tmp_path: Path):
    out = tmp_path / "coco.json"
    export_coco([run_dir], out)
    data = load(out)
    originals = {(s.label, s.score): s.mask() for p in sample_predictions() for s in p.segments()}
    for ann in data["annotations"]:
        assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        mask = mask_utils.decode({"size": ann["segmentation"]["size"],
                                  "counts": ann["segmentation"]["counts"].encode()}).astype(bool)
        original = originals[(ann["attributes"]["model_label"], ann["score"])]
        assert np.array_equal(mask, original)
        assert ann["area"] == int(original.sum())
        ys, xs = np.nonzero(original)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        image = next(i for i in data["images"] if i["id"] == ann["image_id"])
        assert ann["segmentation"]["size"] == [image["height"], image["width"]]


def test_ids_from_1_images_sorted_by_path_and_categories_in_ontology_order(run_dir: Path, tmp_path: Path):
    out = tmp_path / "coco.json"
    stats = export_coco([run_dir], out)
    data = load(out)
    assert [(c["id"], c["name"], c["supercategory"]) for c in data["categories"]] == [
        (1, "cat", "parts"), (2, "dog", "parts"), (3, "horse", "parts"), (4, "person", "people"),
        (5, "zebra", "object")]
    assert [(i["id"], i["file_name"]) for i in data["images"]] == [
        (1, "g1/a.jpg"), (2, "g1/b.jpg"), (3, "g2/x.png"), (4, "g3/broken.jpg"), (5, "g3/ok.jpg")]
    assert [a["id"] for a in data["annotations"]] == list(range(1, 7))
    by_label = {a["attributes"]["model_label"]: a["category_id"] for a in data["annotations"]}
    assert by_label == {"cat": 1, "dog": 2, "zebra": 5, "person": 4}
    assert data["licenses"] == [] and {"description", "version", "date_created"} <= data["info"].keys()
    assert (stats.images, stats.categories, stats.groups, stats.failed_groups, stats.skipped_empty) == (5, 5, 4, 1, 1)


def test_annotation_attributes_carry_the_reasoning(run_dir: Path, tmp_path: Path):
    out = tmp_path / "coco.json"
    export_coco([run_dir], out)
    zebra = next(a for a in load(out)["annotations"] if a["attributes"]["model_label"] == "zebra")
    assert zebra["attributes"] == {
        "group_id": "g1", "template": "parts", "template_hash": "h-parts", "question": "And what else?",
        "explanation": "The cat is in image 1; the dog in image 2.\nA zebra.", "model_label": "zebra",
        "phrase": "the zebra", "round": 1, "model": "m"}
    assert zebra["image_id"] == 1 and zebra["score"] == 0.6


def test_groups_list_one_entry_per_prediction_with_failed_images_listed(run_dir: Path, tmp_path: Path):
    out = tmp_path / "coco.json"
    export_coco([run_dir], out)
    data = load(out)
    groups = {(g["id"], g["template"]): g for g in data["groups"]}
    assert len(data["groups"]) == 4
    g1 = groups[("g1", "parts")]
    assert g1["image_ids"] == [2, 1]  # group order: b.jpg then a.jpg
    assert g1["questions"] == ["Which part is the cat?", "And what else?"]
    assert g1["category"] == "functional" and g1["status"] == "ok" and g1["error"] is None
    assert g1["rejected"] == [
        {"label": "horse", "category": "horse", "phrase": "a horse", "reason": "no horse anywhere", "image_id": None},
        {"label": "dog", "category": "dog", "phrase": "a dog", "reason": "not in this one", "image_id": 2}]
    failed = groups[("g3", "parts")]
    assert failed["status"] == "error" and failed["error"]["file"] == "g3/broken.jpg"
    assert failed["image_ids"] == [4, 5]
    images = {i["id"]: i for i in data["images"]}
    assert images[4]["width"] is None and images[5]["width"] == 16  # listed, size only where known
    assert not [a for a in data["annotations"] if a["image_id"] in (4, 5)]


def test_same_file_in_two_templates_is_one_image(run_dir: Path, tmp_path: Path):
    out = tmp_path / "coco.json"
    export_coco([run_dir], out)
    data = load(out)
    assert [i["file_name"] for i in data["images"]].count("g1/a.jpg") == 1
    on_a = {a["attributes"]["template"] for a in data["annotations"] if a["image_id"] == 1}
    assert on_a == {"parts", "people"}


def test_image_ids_stable_across_reruns_and_merged_shards(tmp_path: Path):
    preds = sample_predictions()
    whole = write_run(tmp_path / "whole", preds)
    shard_a = write_run(tmp_path / "shard0", [preds[3], preds[1]])
    shard_b = write_run(tmp_path / "shard1", [preds[2], preds[0]])
    same_dir = write_run(tmp_path / "shared", [preds[2], preds[0]], name="shard-1-of-2")
    write_run(same_dir, [preds[3], preds[1]], name="shard-0-of-2")

    def summary(path: Path) -> tuple:
        data = load(path)
        names = {c["id"]: c["name"] for c in data["categories"]}
        images = {i["id"]: i["file_name"] for i in data["images"]}
        anns = sorted((images[a["image_id"]], names[a["category_id"]], a["segmentation"]["counts"])
                      for a in data["annotations"])
        return sorted(images.items()), sorted(names.items()), anns

    outs = []
    for i, dirs in enumerate([[whole], [whole], [shard_a, shard_b], [shard_b, shard_a], [same_dir]]):
        outs.append(tmp_path / f"out{i}.json")
        export_coco(dirs, outs[-1])
    first = summary(outs[0])
    assert all(summary(o) == first for o in outs[1:])


def test_input_coco_image_ids_are_kept_and_the_rest_come_after(tmp_path: Path):
    given = prediction("g", [("z.jpg", 20, 10), ("a.jpg", 20, 10)],
                       [Turn("q", "a", segments=[seg(ellipse(10, 20, 5), 1, "cat")])], ids=[42, 7])
    plain = prediction("h", [("b.jpg", 8, 8), ("c.jpg", 8, 8)], [Turn("q")])
    out = tmp_path / "coco.json"
    export_coco([write_run(tmp_path / "run", [plain, given])], out)
    data = load(out)
    assert {i["file_name"]: i["id"] for i in data["images"]} == {"a.jpg": 7, "z.jpg": 42, "b.jpg": 43, "c.jpg": 44}
    assert data["annotations"][0]["image_id"] == 7


def test_conflicting_input_ids_or_sizes_are_clear_errors(tmp_path: Path):
    one = prediction("g", [("a.jpg", 20, 10)], [], ids=[3])
    two = prediction("h", [("b.jpg", 20, 10)], [], ids=[3])
    with pytest.raises(AutolabelError, match="image id 3"):
        export_coco([write_run(tmp_path / "ids", [one, two])], tmp_path / "x.json")
    wrong_size = prediction("g", [("a.jpg", 20, 10)], [Turn("q", segments=[seg(ellipse(12, 20, 1), 0, "cat")])])
    with pytest.raises(AutolabelError, match="a.jpg.*height 12"):
        export_coco([write_run(tmp_path / "size", [wrong_size])], tmp_path / "y.json")
    bad_index = prediction("g", [("a.jpg", 20, 10)], [Turn("q", segments=[seg(ellipse(10, 20, 1), 3, "cat")])])
    with pytest.raises(AutolabelError, match="segment image index 3"):
        export_coco([write_run(tmp_path / "index", [bad_index])], tmp_path / "z.json")
    assert not list(tmp_path.glob("*.json"))


def test_min_score_drops_and_counts(run_dir: Path, tmp_path: Path):
    out = tmp_path / "coco.json"
    stats = export_coco([run_dir], out, min_score=0.61)
    scores = sorted(a["score"] for a in load(out)["annotations"])
    assert scores == [0.8, 0.85, 0.95]
    assert stats.skipped_low_score == 3 and stats.annotations == 3  # 0.3, 0.5, 0.6
    assert stats.skipped_empty == 1  # the empty mask (0.7) is above the threshold: counted as empty


def test_polygons_keep_every_part_and_load_in_pycocotools(run_dir: Path, tmp_path: Path):
    out = tmp_path / "poly.json"
    stats = export_coco([run_dir], out, polygons=True)
    gt = quiet_coco(out)
    originals = {(s.label, s.score): s.mask() for p in sample_predictions() for s in p.segments()}
    for ann in gt.loadAnns(gt.getAnnIds()):
        assert isinstance(ann["segmentation"], list)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
        original = originals[(ann["attributes"]["model_label"], ann["score"])]
        decoded = gt.annToMask(ann).astype(bool)
        n_parts, _ = cv2.connectedComponents(original.astype(np.uint8), connectivity=8)
        assert len(ann["segmentation"]) == n_parts - 1
        assert ann["area"] == int(decoded.sum())  # the area of what the file holds, as readers decode it
        if ann["attributes"]["model_label"] == "dog":  # the ring: polygons cannot express its hole ...
            filled = original.copy()
            filled[10:20, 12:22] = True
            assert np.array_equal(decoded, filled)
            assert ann["area"] == int(filled.sum()) > int(original.sum())  # ... so its area counts the hole
        else:
            assert (decoded & original).sum() / (decoded | original).sum() > 0.9
    assert stats.holes_filled == 1  # ... so it is filled, and the export says so
    ap = self_eval(gt)
    assert ap[1] > 0.99


def test_polygons_follow_pixel_edges():
    mask = np.zeros((9, 11), bool)
    mask[2:5, 3:7] = True
    mask[7, 9] = True  # a single pixel is a part too
    polygons, holes = mask_to_polygons(mask)
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 9, 11))).astype(bool)
    assert len(polygons) == 2 and holes == 0
    assert np.array_equal(decoded, mask)


def test_empty_input_is_a_valid_empty_coco(tmp_path: Path):
    out = tmp_path / "coco.json"
    stats = export_coco([write_run(tmp_path / "run", [], templates={})], out)
    data = load(out)
    assert data["images"] == [] and data["annotations"] == [] and data["groups"] == [] and data["categories"] == []
    quiet_coco(out)
    assert stats.images == stats.annotations == 0


def test_missing_run_dir_is_a_usage_error(tmp_path: Path):
    with pytest.raises(AutolabelError, match="not a run directory"):
        export_coco([tmp_path / "nope"], tmp_path / "coco.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutolabelError, match="no predictions.jsonl"):
        export_coco([tmp_path / "empty"], tmp_path / "coco.json")


def test_a_crash_mid_export_leaves_the_previous_file_whole(run_dir: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "coco.json"
    out.write_text('{"previous": true}')
    calls = 0
    real_bbox = coco_module.rle_to_xywh

    def failing_bbox(rle: dict) -> list[float]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("disk on fire")
        return real_bbox(rle)

    monkeypatch.setattr(coco_module, "rle_to_xywh", failing_bbox)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_coco([run_dir], out)
    assert load(out) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.json", "run"]
