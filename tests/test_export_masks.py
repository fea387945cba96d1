"""PNG export: instance values, legend, the overlap rule, 16-bit, one PNG per image across templates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ellipse, prediction, ring, sample_predictions, seg, two_parts, write_run
from PIL import Image

from autolabel.errors import AutolabelError
from autolabel.exporters import export_coco, export_masks
from autolabel.exporters.palette import instance_colors
from autolabel.prediction import Turn


def png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def legend(out: Path) -> dict:
    return json.loads((out / "legend.json").read_text())


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_one_png_per_image_mirroring_folders_with_instance_values(tmp_path: Path):
    out = tmp_path / "masks"
    stats = export_masks([write_run(tmp_path / "run", sample_predictions())], out)
    data = legend(out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.name.endswith(".color.png")) == [
        "g1/a.png", "g1/b.png", "g2/x.png", "g3/ok.png"]
    b = png(out / "g1/b.png")
    assert b.dtype == np.uint8 and b.shape == (37, 53)
    entry = data["images"]["g1/b.jpg"]
    assert entry["png"] == "g1/b.png" and (entry["width"], entry["height"]) == (53, 37)
    two, border = entry["instances"]
    assert two == {"index": 1, "category_id": 1, "category": "cat", "label": "cat", "score": 0.95,
                   "group_id": "g1", "template": "parts", "round": 0, "visible_pixels": int((b == 1).sum())}
    # the border mask (0.3) lies under the two-part mask (0.95) where they overlap
    assert np.array_equal(b == 1, two_parts(37, 53))
    assert border["index"] == 2 and border["visible_pixels"] == int((b == 2).sum()) > 0
    assert not np.any(b > 2)
    assert np.array_equal(png(out / "g3/ok.png"), np.zeros((16, 16), np.uint8))
    assert data["images"]["g3/broken.jpg"] == {"png": None, "width": None, "height": None, "instances": []}
    assert (stats.images, stats.annotations, stats.skipped_empty, stats.failed_groups) == (5, 6, 1, 1)


def test_same_image_from_two_templates_is_one_png_with_all_instances(tmp_path: Path):
    out = tmp_path / "masks"
    export_masks([write_run(tmp_path / "run", sample_predictions())], out)
    a = png(out / "g1/a.png")
    instances = legend(out)["images"]["g1/a.jpg"]["instances"]
    assert [(i["index"], i["label"], i["template"]) for i in instances] == [
        (1, "dog", "parts"), (2, "zebra", "parts"), (3, "person", "people")]
    # reference: paint in ascending score (ties: later on top) and compare pixel for pixel
    masks = [ring(40, 41), ellipse(40, 41, 1), ellipse(40, 41, 2)]
    scores = [0.8, 0.6, 0.85]
    expected = np.zeros((40, 41), np.uint8)
    for k in sorted(range(3), key=lambda k: scores[k]):
        expected[masks[k]] = k + 1
    assert np.array_equal(a, expected)


def test_overlap_rule_highest_score_on_top_and_hidden_instances_listed(tmp_path: Path):
    h, w = 20, 30
    big_low = box(h, w, 0, 20, 0, 30)
    mid_high = box(h, w, 5, 15, 5, 25)
    hidden = box(h, w, 8, 12, 8, 12)
    tie_first, tie_second = box(h, w, 0, 3, 0, 10), box(h, w, 0, 3, 5, 15)
    pred = prediction("g", [("img.jpg", w, h)], [Turn("q", segments=[
        seg(big_low, 0, "cat", 0.2), seg(mid_high, 0, "dog", 0.9), seg(hidden, 0, "cat", 0.5),
        seg(tie_first, 0, "cat", 0.7), seg(tie_second, 0, "cat", 0.7)])])
    out = tmp_path / "masks"
    export_masks([write_run(tmp_path / "run", [pred])], out)
    values = png(out / "img.png")
    assert values[10, 10] == 2  # 0.9 over 0.5 over 0.2
    assert values[19, 29] == 1
    assert values[1, 7] == 5 and values[1, 2] == 4 and values[1, 12] == 5  # equal scores: the later wins
    instances = legend(out)["images"]["img.jpg"]["instances"]
    assert instances[2]["visible_pixels"] == 0 and instances[2]["score"] == 0.5
    assert sum(i["visible_pixels"] for i in instances) == h * w


def test_more_than_255_instances_write_a_16_bit_png(tmp_path: Path):
    h, w = 20, 15  # 300 pixels, one instance each
    segments = []
    for k in range(300):
        m = np.zeros((h, w), bool)
        m.flat[k] = True
        segments.append(seg(m, 0, "cat", 0.5))
    half = len(segments) // 2
    first = prediction("g", [("img.jpg", w, h)], [Turn("q", segments=segments[:half])])
    second = prediction("g", [("img.jpg", w, h)], [Turn("q", segments=segments[half:])], template="people")
    out = tmp_path / "masks"
    export_masks([write_run(tmp_path / "run", [first, second])], out)
    image = Image.open(out / "img.png")
    assert image.mode.startswith("I;16") or image.mode == "I"
    values = np.array(image)
    assert np.array_equal(values.ravel(), np.arange(1, 301))
    assert len(legend(out)["images"]["img.jpg"]["instances"]) == 300


def test_legend_categories_match_the_coco_export(tmp_path: Path):
    run = write_run(tmp_path / "run", sample_predictions())
    export_masks([run], tmp_path / "masks")
    export_coco([run], tmp_path / "coco.json")
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert legend(tmp_path / "masks")["categories"] == [{"id": c["id"], "name": c["name"]} for c in coco["categories"]]


def test_colliding_names_keep_their_suffix_and_paths_stay_inside(tmp_path: Path):
    pred = prediction("g", [("a/x.jpg", 4, 4), ("a/x.png", 4, 4), ("a/y.tif", 4, 4)],
                      [Turn("q", segments=[seg(box(4, 4, 0, 2, 0, 2), 0, "cat")])])
    out = tmp_path / "masks"
    export_masks([write_run(tmp_path / "run", [pred])], out)
    pngs = {f: e["png"] for f, e in legend(out)["images"].items()}
    assert pngs == {"a/x.jpg": "a/x.jpg.png", "a/x.png": "a/x.png", "a/y.tif": "a/y.png"}
    assert png(out / "a/x.jpg.png").sum() == 4 and png(out / "a/x.png").sum() == 0
    escaping = prediction("h", [("../outside.jpg", 4, 4)], [Turn("q")])
    with pytest.raises(AutolabelError, match="outside.jpg"):
        export_masks([write_run(tmp_path / "bad", [escaping])], tmp_path / "masks2")
    assert not (tmp_path / "outside.png").exists()


def test_same_image_across_merged_run_dirs(tmp_path: Path):
    preds = sample_predictions()
    merged, single = tmp_path / "merged", tmp_path / "single"
    export_masks([write_run(tmp_path / "r0", [preds[0], preds[2]]), write_run(tmp_path / "r1", [preds[1], preds[3]])],
                 merged)
    export_masks([write_run(tmp_path / "all", preds)], single)
    for file in ("g1/a.png", "g1/b.png", "g2/x.png"):
        assert np.array_equal(png(merged / file), png(single / file))
    assert legend(merged)["images"]["g1/a.jpg"] == legend(single)["images"]["g1/a.jpg"]


def test_each_index_png_has_a_colour_twin_in_the_legend_palette(tmp_path: Path):
    out = tmp_path / "masks"
    export_masks([write_run(tmp_path / "run", sample_predictions())], out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.color.png")) == [
        "g1/a.color.png", "g1/b.color.png", "g2/x.color.png", "g3/ok.color.png"]
    data = legend(out)
    palette = np.array(data["palette"], np.uint8)
    assert palette.shape == (4, 3) and palette[0].tolist() == [0, 0, 0]  # g1/a.jpg has the most: 3 instances
    assert np.array_equal(palette[1:], instance_colors(3))
    for name in ("g1/a", "g1/b", "g2/x", "g3/ok"):
        index = png(out / f"{name}.png")
        color = Image.open(out / f"{name}.color.png")
        assert color.mode == "RGB" and color.size == (index.shape[1], index.shape[0])
        rgb = np.array(color)
        assert np.array_equal(rgb, palette[index])  # each value in its palette colour, background black
    b = png(out / "g1/b.png")
    assert (b == 1).any() and (b == 2).any()
    rgb = np.array(Image.open(out / "g1/b.color.png"))
    assert rgb[b == 1].tolist()[0] != rgb[b == 2].tolist()[0] != [0, 0, 0]


def test_colour_twin_of_a_16_bit_png(tmp_path: Path):
    h, w = 20, 15
    segments = []
    for k in range(300):
        m = np.zeros((h, w), bool)
        m.flat[k] = True
        segments.append(seg(m, 0, "cat", 0.5))
    out = tmp_path / "masks"
    export_masks([write_run(tmp_path / "run", [prediction("g", [("img.jpg", w, h)], [Turn("q", segments=segments)])])],
                 out)
    rgb = np.array(Image.open(out / "img.color.png"))
    assert np.array_equal(rgb.reshape(-1, 3), instance_colors(300))
    assert len({tuple(c) for c in instance_colors(300)}) == 300  # every instance a colour of its own


def test_a_colour_twin_that_would_overwrite_another_images_png_is_refused(tmp_path: Path):
    pred = prediction("g", [("a.jpg", 4, 4), ("a.color.jpg", 4, 4)], [Turn("q")])
    with pytest.raises(AutolabelError, match="colour PNG"):
        export_masks([write_run(tmp_path / "run", [pred])], tmp_path / "masks")
