"""YOLO segmentation export: polygons that rasterise back to the masks, classes in COCO order,
the images/ + labels/ layout Ultralytics pairs by path, and data.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import yaml
from helpers import cli, ellipse, imported_heavy, prediction, ring, sample_predictions, seg, two_parts, write_run
from PIL import Image
from pycocotools import mask as mask_utils

from autolabel.exporters import export_coco
from autolabel.exporters.yolo import export_yolo
from autolabel.prediction import Turn


def write_images(root: Path, files) -> Path:
    for file, w, h in files:
        path = root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (100, 100, 100)).save(path)
    return root


def read_labels(path: Path, w: int, h: int) -> list[tuple[int, np.ndarray]]:
    """(class, mask) per line, each polygon rasterised the way COCO tools do."""
    out = []
    for line in path.read_text().splitlines():
        values = line.split()
        coords = np.array(values[1:], float).reshape(-1, 2)
        assert len(coords) >= 3 and (coords >= 0).all() and (coords <= 1).all()
        polygon = (coords * [w, h]).ravel().tolist()
        rle = mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))
        out.append((int(values[0]), mask_utils.decode(rle).astype(bool)))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def ultralytics_label_path(image: Path) -> Path:
    """Ultralytics' img2label_paths: the last /images/ becomes /labels/, the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def test_polygons_rasterise_back_to_the_masks(tmp_path: Path):
    h, w = 60, 80
    shapes = {"box": box(h, w, 10, 40, 20, 60), "ellipse": ellipse(h, w, 4) | ellipse(h, w, 4),
              "parts": two_parts(h, w), "ring": ring(h, w)}
    pred = prediction("g", [("img.jpg", w, h)], [Turn("q", segments=[
        seg(shapes["box"], 0, "cat"), seg(shapes["ellipse"], 0, "dog"), seg(shapes["parts"], 0, "horse"),
        seg(shapes["ring"], 0, "cat")])])
    images = write_images(tmp_path / "images", [("img.jpg", w, h)])
    out = tmp_path / "yolo"
    stats = export_yolo([write_run(tmp_path / "run", [pred])], out, image_root=images)
    lines = read_labels(out / "labels" / "img.txt", w, h)
    # one line per mask part: the two-part mask is two instances of its class
    assert [c for c, _ in lines] == [0, 1, 2, 2, 0]
    assert iou(lines[0][1], shapes["box"]) > 0.9
    assert iou(lines[1][1], shapes["ellipse"]) > 0.9
    assert iou(lines[2][1] | lines[3][1], shapes["parts"]) > 0.9
    filled = box(h, w, 5, 25, 5, 30)  # YOLO polygons have no holes: the ring comes back filled
    assert iou(lines[4][1], filled) > 0.9
    assert (stats.instances, stats.split_masks, stats.holes_filled) == (5, 1, 1)


def test_classes_follow_the_coco_export_and_data_yaml_names_them(tmp_path: Path):
    run = write_run(tmp_path / "run", sample_predictions())
    export_coco([run], tmp_path / "coco.json")
    coco = json.loads((tmp_path / "coco.json").read_text())
    out = tmp_path / "yolo"
    stats = export_yolo([run], out, images="none")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {c["id"] - 1: c["name"] for c in coco["categories"]}
    assert data["nc"] == len(coco["categories"]) == stats.classes
    assert (data["path"], data["train"], data["val"]) == (str(out.resolve()), "images", "images")
    # every COCO annotation's class is on its image's label lines (COCO id - 1)
    images = {i["id"]: i for i in coco["images"]}
    for ann in coco["annotations"]:
        image = images[ann["image_id"]]
        label = out / "labels" / Path(image["file_name"]).with_suffix(".txt")
        mask = mask_utils.decode({"size": ann["segmentation"]["size"],
                                  "counts": ann["segmentation"]["counts"].encode()}).astype(bool)
        best = max((iou(m, mask) for c, m in read_labels(label, image["width"], image["height"])
                    if c == ann["category_id"] - 1), default=0.0)
        assert best > 0.3, (image["file_name"], ann["category_id"])  # parts of multi-part masks overlap less
    # the failed group's images have no label (their labels are unknown, not empty)
    assert not (out / "labels" / "g3").exists()
    assert (stats.images, stats.images_left_out, stats.failed_groups, stats.skipped_empty) == (3, 2, 1, 1)


def test_images_are_linked_where_ultralytics_looks_for_their_labels(tmp_path: Path):
    files = [("a/one.jpg", 20, 10), ("ds/images/two.png", 10, 20), ("empty.jpg", 8, 8)]
    pred = prediction("g", files, [Turn("q", segments=[seg(box(10, 20, 0, 5, 0, 5), 0, "cat"),
                                                       seg(box(20, 10, 5, 15, 2, 8), 1, "dog")])])
    images = write_images(tmp_path / "images", files)
    out = tmp_path / "yolo"
    stats = export_yolo([write_run(tmp_path / "run", [pred])], out, image_root=images)
    linked = sorted(p for p in (out / "images").rglob("*") if p.is_symlink())
    assert [p.relative_to(out / "images").as_posix() for p in linked] == [
        "a/one.jpg", "ds/images/two.png", "empty.jpg"]
    for image in linked:
        assert image.resolve() == (images / image.relative_to(out / "images")).resolve()
        assert ultralytics_label_path(image).is_file()
    assert ultralytics_label_path(out / "images" / "empty.jpg").read_text() == ""  # a background image
    assert stats.images == 3 and stats.images_not_found == 0
    copied = export_yolo([tmp_path / "run"], tmp_path / "copy", image_root=images, images="copy")
    assert not (tmp_path / "copy/images/a/one.jpg").is_symlink() and copied.images == 3


def test_min_score_and_an_image_listed_by_two_templates(tmp_path: Path):
    h, w = 20, 20
    first = prediction("g", [("a.jpg", w, h)], [Turn("q", segments=[seg(box(h, w, 0, 5, 0, 5), 0, "cat", 0.9),
                                                                     seg(box(h, w, 5, 9, 5, 9), 0, "dog", 0.1)])])
    second = prediction("g", [("a.jpg", w, h)], [Turn("q", segments=[seg(box(h, w, 10, 20, 10, 20), 0, "person")])],
                        template="people")
    out = tmp_path / "yolo"
    run = write_run(tmp_path / "run", [first, second])
    stats = export_yolo([run], out, images="none", min_score=0.5)
    assert [c for c, _ in read_labels(out / "labels/a.txt", w, h)] == [0, 3]  # cat, person (dog: 0.1 dropped)
    assert stats.skipped_low_score == 1
    export_yolo([run], out, images="none", min_score=0.5)  # again: the file is rewritten, not appended to
    assert len((out / "labels/a.txt").read_text().splitlines()) == 2


def test_cli_export_yolo_without_heavy_imports(tmp_path: Path):
    run = write_run(tmp_path / "run", sample_predictions())
    r = cli("export", "yolo", str(run), "-o", str(tmp_path / "yolo"), "--images", "none")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "yolo/data.yaml").is_file() and (tmp_path / "yolo/labels/g1/a.txt").is_file()
    assert imported_heavy("export", "yolo", str(run), "-o", str(tmp_path / "y2"), "--images", "none") == []
    r = cli("export", "yolo", str(run), "-o", str(tmp_path / "y3"))  # run.json's /data is not here
    assert r.returncode == 2 and "--image-root" in r.stderr and "Traceback" not in r.stderr
