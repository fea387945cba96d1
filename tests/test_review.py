"""The FiftyOne review loop on a real MongoDB: push, prepare the review, edit through FiftyOne, pull."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import annotations_by_mask, cli, labelled_run
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from autolabel.errors import AutolabelError
from autolabel.exporters import export_coco
from autolabel.review.app import prepare_review
from autolabel.review.database import load_dataset
from autolabel.review.detections import detection_mask
from autolabel.review.pull import parse_since, pull
from autolabel.review.push import push


def iou(a: dict, b: dict) -> float:
    return float(mask_utils.iou([a], [b], [0])[0][0])


def test_push_review_pull_without_edits_returns_the_runs_masks(fo_db, tmp_path, dataset_name):
    run = labelled_run(tmp_path)
    stats = push([run], dataset_name)
    assert stats.field == "predictions" and stats.groups == 7 and stats.failed_groups == 1
    assert stats.samples_added == 2 * 4 + 3 + 1 + 1 and stats.masks > 0

    ds = load_dataset(dataset_name)
    slices = ds.select_group_slices()
    assert len(slices) == stats.samples_added
    assert sorted(ds.group_slices) == ["image1", "image2", "image3"]
    assert len(slices.distinct("group.id")) == 7  # one FiftyOne group per image group x template
    sample = slices.match({"group_id": "g001", "image_index": 1}).first()
    assert sample.template == "pets" and sample.file == "g001/img2.png"
    assert sample.predictions_model == "test/box-v1" and sample.predictions_run_id
    assert sample.predictions_question.startswith("Segment cat, dog, bird")
    assert sample.predictions_explanation.startswith("found")
    assert sample.predictions_rejected == ["bird: not in any image"] and "rejected" in sample.tags
    detection = sample.predictions.detections[0]
    assert detection.label == "cat" and detection.phrase == "the cat" and detection.round == 0
    assert 0 < detection.confidence <= 1
    failed = slices.match({"group_id": "broken"}).first()
    assert "failed" in failed.tags and "broken/a.png" in failed.predictions_error

    setup = prepare_review(ds)
    assert (setup.source, setup.reviewed, setup.samples_added) == ("predictions", "reviewed", len(slices))
    assert setup.classes[:3] == ["cat", "dog", "bird"]
    assert ds.active_label_schemas == ["reviewed"] and ds.label_schemas["reviewed"]["classes"][:3] == setup.classes[:3]

    report = pull(dataset_name, tmp_path / "corrected.json")
    totals = report.totals()
    assert totals["untouched"] == stats.masks and totals["edited"] == totals["added"] == totals["deleted"] == 0

    export_coco([run], tmp_path / "run.json")
    ours, theirs = annotations_by_mask(tmp_path / "corrected.json"), annotations_by_mask(tmp_path / "run.json")
    assert ours.keys() == theirs.keys() and len(ours) == stats.masks
    for key, a in ours.items():
        b = theirs[key]
        assert a["segmentation"] == b["segmentation"] and iou(a["segmentation"], b["segmentation"]) == 1.0
        assert (a["bbox"], a["area"], a["score"], a["image_id"]) == (b["bbox"], b["area"], b["score"], b["image_id"])
    corrected, exported = (json.loads((tmp_path / f).read_text()) for f in ("corrected.json", "run.json"))
    assert corrected["categories"] == exported["categories"] and corrected["images"] == exported["images"]
    assert [g["rejected"] for g in corrected["groups"]] == [g["rejected"] for g in exported["groups"]]
    COCO(str(tmp_path / "corrected.json"))  # loads in pycocotools


def test_pushing_twice_adds_nothing_and_a_second_model_gets_its_own_field(fo_db, tmp_path, dataset_name):
    run = labelled_run(tmp_path)
    first = push([run], dataset_name)
    again = push([run], dataset_name)
    assert again.samples_added == again.samples_updated == 0 and again.samples_unchanged == first.samples_added
    ds = load_dataset(dataset_name)
    assert len(ds.select_group_slices()) == first.samples_added

    other = labelled_run(tmp_path, "run2", model="test/box-v2")
    second = push([other], dataset_name)
    assert second.field == "predictions_test_box_v2" and second.samples_added == 0
    assert second.samples_updated == first.samples_added
    ds.reload()
    assert set(ds.info["autolabel"]["runs"]) == {"predictions", "predictions_test_box_v2"}
    sample = ds.select_group_slices().match({"group_id": "g000", "image_index": 0}).first()
    assert sample.predictions_model == "test/box-v1" and sample.predictions_test_box_v2_model == "test/box-v2"

    replaced = push([other], dataset_name, label_field="predictions")
    assert replaced.field == "predictions" and replaced.samples_updated == first.samples_added
    sample.reload()
    assert sample.predictions_model == "test/box-v2"
    assert len(ds.select_group_slices()) == first.samples_added


def test_edits_through_fiftyone_come_back_in_pull_and_the_change_report(fo_db, tmp_path, dataset_name):
    run = labelled_run(tmp_path)
    push([run], dataset_name)
    ds = load_dataset(dataset_name)
    prepare_review(ds)
    before_edit = parse_since("0s", None)
    fo = fo_db
    sample = ds.select_group_slices().match({"group_id": "g002", "image_index": 0}).first()
    record = json.loads(sample.predictions_record)
    width, height = record["images"][0]["width"], record["images"][0]["height"]
    detections = sample.reviewed.detections
    assert [d.label for d in detections] == ["cat", "dog", "cat", "dog"]
    # 1: redrawn at twice the box's pixel size, as the App stores a brushed mask (screen resolution)
    edited = detections[0]
    bx, by, bw, bh = edited.bounding_box
    pw, ph = round(bw * width), round(bh * height)
    screen = np.zeros((2 * ph, 2 * pw), bool)
    screen[: ph, :] = True  # the top half of the box
    edited.mask = screen
    # 2: class changed; 3: deleted; 4: a new mask drawn by the reviewer
    detections[1].label = "bird"
    del detections[2]
    added = fo.Detection(label="dog", bounding_box=[0.0, 0.0, 0.5, 0.5], mask=np.ones((4, 4), bool))
    detections.append(added)
    sample.save()

    report = pull(dataset_name, tmp_path / "corrected.json")
    assert report.changes["cat"]["edited"] == 1 and report.changes["cat"]["deleted"] == 1
    assert report.changes["bird"]["edited"] == 1 and report.changes["dog"]["added"] == 1
    totals = report.totals()
    assert totals["edited"] == 2 and totals["added"] == 1 and totals["deleted"] == 1

    coco = json.loads((tmp_path / "corrected.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"] == "g002/img1.png")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    on_image = [a for a in coco["annotations"] if a["image_id"] == image_id]
    cats = [a for a in on_image if names[a["category_id"]] == "cat"]
    assert len(cats) == 1 and cats[0]["score"] == 1.0
    expected = np.zeros((height, width), bool)  # the top half of the box, back at image resolution
    x0, y0 = round(bx * width), round(by * height)
    expected[y0:y0 + (ph + 1) // 2, x0:x0 + pw] = True
    got = mask_utils.decode({"size": cats[0]["segmentation"]["size"],
                             "counts": cats[0]["segmentation"]["counts"].encode()}).astype(bool)
    assert got.shape == (height, width) and np.array_equal(got, expected)
    birds = [a for a in on_image if names[a["category_id"]] == "bird"]
    assert len(birds) == 1 and birds[0]["attributes"]["model_label"] == "bird"
    dogs = [a for a in on_image if names[a["category_id"]] == "dog"]
    assert len(dogs) == 2 and any(d["area"] == round(width / 2) * round(height / 2) for d in dogs)

    # --since: only the group edited after the cut-off comes back
    recent = pull(dataset_name, tmp_path / "recent.json", since=before_edit.isoformat())
    assert recent.groups == 1
    partial = json.loads((tmp_path / "recent.json").read_text())
    assert {g["id"] for g in partial["groups"]} == {"g002"}
    full_ids = {i["file_name"]: i["id"] for i in coco["images"]}
    assert {i["file_name"]: i["id"] for i in partial["images"]} == {f: full_ids[f] for f in ("g002/img1.png",
                                                                                           "g002/img2.png")}


def test_detection_mask_keeps_binary_masks_at_another_resolution(fo_db):
    detection = fo_db.Detection(label="x", bounding_box=[0.25, 0.5, 0.5, 0.25], mask=np.eye(8, dtype=bool))
    full = detection_mask(detection, 16, 16)
    assert full.shape == (16, 16) and full[8:12, 4:12].sum() > 0 and full[:8].sum() == 0 and full[12:].sum() == 0


def test_review_never_overwrites_reviewers_work(fo_db, tmp_path, dataset_name):
    run = labelled_run(tmp_path)
    push([run], dataset_name)
    ds = load_dataset(dataset_name)
    prepare_review(ds)
    sample = ds.select_group_slices().match({"group_id": "g000", "image_index": 0}).first()
    sample.reviewed.detections = []
    sample.save()
    again = prepare_review(ds)
    assert again.samples_added == 0
    with pytest.raises(AutolabelError, match="'reviewed' is a reviewed field"):
        push([run], dataset_name, label_field="reviewed")
    sample.reload()
    assert sample.reviewed.detections == []
    push([labelled_run(tmp_path, "run2", model="m2")], dataset_name)
    with pytest.raises(AutolabelError, match="already the review of 'predictions'"):
        prepare_review(ds, source="predictions_m2")
    assert prepare_review(ds, source="predictions_m2", reviewed="reviewed_m2").samples_added == 13


def test_cli_push_pull_and_clear_errors(fo_db, tmp_path, dataset_name):
    run = labelled_run(tmp_path)
    r = cli("push", str(run), "--dataset", dataset_name)
    assert r.returncode == 0, r.stderr
    assert "samples added 13" in r.stderr.replace("\n", " ")
    r = cli("push", str(run), "--dataset", dataset_name)
    assert r.returncode == 0 and "samples added 0" in r.stderr and "samples unchanged 13" in r.stderr

    r = cli("pull", dataset_name, "-o", str(tmp_path / "c.json"))
    assert r.returncode == 2 and f"autolabel review {dataset_name}" in r.stderr and "Traceback" not in r.stderr
    prepare_review(load_dataset(dataset_name))
    r = cli("pull", dataset_name, "-o", str(tmp_path / "c.json"), "--json", str(tmp_path / "changes.json"))
    assert r.returncode == 0, r.stderr
    assert "untouched" in r.stdout
    changes = json.loads((tmp_path / "changes.json").read_text())
    assert changes["totals"]["untouched"] > 0 and changes["totals"]["edited"] == 0
    COCO(str(tmp_path / "c.json"))

    r = cli("pull", "no_such_dataset", "-o", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "no FiftyOne dataset named 'no_such_dataset'" in r.stderr
    assert dataset_name in r.stderr
    r = cli("pull", dataset_name, "-o", str(tmp_path / "x.json"), "--since", "yesterday")
    assert r.returncode == 2 and "--since 'yesterday'" in r.stderr
    r = cli("push", str(run), "--dataset", dataset_name, "--field", "filepath")
    assert r.returncode == 2 and "--field 'filepath'" in r.stderr
    r = cli("push", str(run), "--dataset", dataset_name, "--image-root", str(tmp_path / "gone"))
    assert r.returncode == 2 and "gone" in r.stderr and "--image-root" in r.stderr
    r = cli("push", str(run), "--dataset", "x", env={"FIFTYONE_DATABASE_URI": "mongodb://127.0.0.1:9"})
    assert r.returncode == 2 and "cannot reach the MongoDB server" in r.stderr and "Traceback" not in r.stderr
