"""Sources: every input kind, stable ids, natural order, path safety, bad manifests."""

from __future__ import annotations

import json
import os

import pytest
from helpers import write_image

from autolabel.errors import AutolabelError
from autolabel.groups import BadGroup
from autolabel.sources import natural_key, open_source


def ids(source):
    return [g.id for g in source]


def test_folder_per_group_natural_order_and_loose_images(tmp_path):
    for name in ("b/img10.png", "b/img2.png", "a/x.jpg", "loose.png", "c/deep/z.png", "c/y.png"):
        write_image(tmp_path / name)
    (tmp_path / "b" / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    src = open_source(tmp_path)
    groups = list(src)
    assert [g.id for g in groups] == ["a", "b", "c", "loose.png"]
    assert [im.file for im in groups[1].images] == ["b/img2.png", "b/img10.png"]
    skipped = dict(src.stats.skipped)
    assert "b/notes.txt" in skipped and "empty" in skipped and "c/deep" in skipped
    assert ids(open_source(tmp_path)) == ids(src)  # stable across passes


def test_group_by_regex(tmp_path):
    for name in ("shop_1_a.jpg", "shop_1_b.jpg", "sub/shop_2_a.jpg", "other.jpg"):
        write_image(tmp_path / name)
    src = open_source(tmp_path, group_by=r"(?P<key>shop_\d+)_")
    groups = list(src)
    assert [(g.id, [i.file for i in g.images]) for g in groups] == [
        ("shop_1", ["shop_1_a.jpg", "shop_1_b.jpg"]), ("shop_2", ["sub/shop_2_a.jpg"])]
    assert dict(src.stats.skipped)["other.jpg"] == "does not match --group-by"
    with pytest.raises(AutolabelError, match="named group `key`"):
        open_source(tmp_path, group_by=r"shop_\d+")
    with pytest.raises(AutolabelError, match="not a valid regex"):
        open_source(tmp_path, group_by=r"(?P<key>[")


def test_jsonl_manifest_with_variables_prompts_and_a_bad_line(tmp_path):
    write_image(tmp_path / "i" / "a.jpg")
    write_image(tmp_path / "i" / "b.jpg")
    lines = [
        {"id": "g1", "images": ["i/a.jpg", "i/b.jpg"], "variables": {"question": "why?"},
         "prompts": [{"image": 1, "boxes": [[1, 2, 3, 4]], "label": "mug"}]},
        "{not json",
        {"images": ["i/b.jpg"]},
        {"id": "g4", "images": []},
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    g1, bad, g3, g4 = list(open_source(m))
    assert g1.variables == {"question": "why?"} and g1.images[1].prompt.boxes == ((1.0, 2.0, 3.0, 4.0),)
    assert g1.images[1].prompt.label == "mug" and g1.images[0].prompt is None
    assert isinstance(bad, BadGroup) and bad.file == "m.jsonl:2" and "not valid JSON" in bad.reason
    assert g3.id == "line-3"
    assert isinstance(g4, BadGroup) and "non-empty list" in g4.reason


def test_jsonl_is_read_lazily(tmp_path):
    write_image(tmp_path / "a.jpg")
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "first", "images": ["a.jpg"]}) + "\n")
    it = iter(open_source(m))
    assert next(it).id == "first"
    with m.open("a") as f:  # written after the first group was read
        f.write(json.dumps({"id": "later", "images": ["a.jpg"]}) + "\n")
    assert next(it).id == "later"


def test_csv_manifest(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    m = tmp_path / "m.csv"
    m.write_text("group_id,image,label,box,var.question\ng,a.jpg,mug,1 2 3 4,why?\nh,b.jpg,,,\ng,b.jpg,,,\n")
    g, h = list(open_source(m))
    assert [i.file for i in g.images] == ["a.jpg", "b.jpg"] and g.variables == {"question": "why?"}
    assert g.images[0].prompt.boxes == ((1.0, 2.0, 3.0, 4.0),) and h.id == "h"
    (tmp_path / "bad.csv").write_text("group,file\n")
    with pytest.raises(AutolabelError, match="bad.csv: missing column"):
        list(open_source(tmp_path / "bad.csv"))


def test_coco_input_groups_and_prompts(tmp_path):
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / n, 48, 64)
    coco = {"images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48, "group": "s1"},
                       {"id": 9, "file_name": "b.jpg", "width": 64, "height": 48, "group": "s1"},
                       {"id": 3, "file_name": "c.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [1, 2, 10, 20],
                             "segmentation": [[1, 2, 11, 2, 11, 22, 1, 22]]}],
            "categories": [{"id": 2, "name": "mug"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    c, s1 = list(open_source(tmp_path / "c.json"))  # ids in natural order
    assert s1.id == "s1" and [i.coco_id for i in s1.images] == [7, 9] and c.id == "c.jpg"
    prompt = s1.images[0].prompt
    assert prompt.boxes == ((1.0, 2.0, 11.0, 22.0),) and prompt.label == "mug" and prompt.mask["size"] == [48, 64]
    (tmp_path / "bad.json").write_text(json.dumps({"images": [{"file_name": "a.jpg"}]}))
    with pytest.raises(AutolabelError, match=r"images\[0\] needs `id`"):
        list(open_source(tmp_path / "bad.json"))


def test_paths_outside_the_root_are_refused_unless_allowed(tmp_path):
    root = tmp_path / "root"
    write_image(tmp_path / "outside.jpg")
    write_image(root / "in.jpg")
    os.symlink(tmp_path / "outside.jpg", root / "link.jpg")
    m = root / "m.jsonl"
    m.write_text("\n".join(json.dumps({"id": i, "images": [p]}) for i, p in
                           [("dots", "../outside.jpg"), ("abs", str(tmp_path / "outside.jpg")),
                            ("link", "link.jpg"), ("ok", "in.jpg"), ("missing", "gone.jpg")]))
    got = {g.id: g for g in open_source(m)}
    for key in ("dots", "abs", "link"):
        assert isinstance(got[key], BadGroup) and "--allow-outside-root" in got[key].reason
    assert not isinstance(got["ok"], BadGroup)
    assert isinstance(got["missing"], BadGroup) and "not found" in got["missing"].reason
    allowed = {g.id: g for g in open_source(m, allow_outside_root=True)}
    assert all(not isinstance(allowed[k], BadGroup) for k in ("dots", "abs", "link"))


def test_single_image_and_missing_input(tmp_path):
    p = write_image(tmp_path / "one.png")
    (g,) = list(open_source(p))
    assert g.id == "one.png" and g.images[0].file == "one.png"
    with pytest.raises(AutolabelError, match="input not found"):
        open_source(tmp_path / "nothing")


def test_natural_key():
    assert sorted(["img10", "Img2", "img1"], key=natural_key) == ["img1", "Img2", "img10"]


def test_a_manifest_line_names_every_refused_or_missing_image(tmp_path):
    root = tmp_path / "root"
    write_image(tmp_path / "outside.jpg")
    write_image(root / "ok.jpg")
    (root / "dangling.jpg").symlink_to(root / "deleted.jpg")
    m = root / "m.jsonl"
    m.write_text(json.dumps({"id": "g", "images": ["gone.jpg", "ok.jpg", "../outside.jpg", "dangling.jpg"]}) + "\n")
    (bad,) = list(open_source(m))
    assert isinstance(bad, BadGroup) and bad.file == "gone.jpg"
    assert [f for f, _ in bad.files] == ["gone.jpg", "../outside.jpg", "dangling.jpg"]
    reasons = dict(bad.files)
    assert reasons["gone.jpg"] == "image file not found"
    assert "--allow-outside-root" in reasons["../outside.jpg"]
    assert reasons["dangling.jpg"].startswith("broken symlink")
    assert [im.file for im in bad.images] == ["ok.jpg"]  # kept, so decoding can name its problems too
    error = bad.error()
    assert error.file == "gone.jpg" and error.files == [{"file": f, "reason": r} for f, r in bad.files]
    assert error.message.startswith("3 unusable files: gone.jpg: image file not found; ../outside.jpg: ")
    assert "\n" not in error.message
    # CSV: the same group, one row per image
    c = root / "m.csv"
    c.write_text("group_id,image\n" + "".join(f"g,{f}\n" for f in ("gone.jpg", "ok.jpg", "../outside.jpg")))
    (bad,) = list(open_source(c))
    assert isinstance(bad, BadGroup) and [f for f, _ in bad.files] == ["gone.jpg", "../outside.jpg"]
