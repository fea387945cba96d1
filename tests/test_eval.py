"""`autolabel eval`: every metric checked against numbers worked out by hand on tiny masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel.errors import AutolabelError
from autolabel.evaluation import evaluate, failures, metric_names, parse_fail_under, render_table, write_report
from autolabel.exporters import export_coco
from autolabel.masks import mask_to_rle
from autolabel.prediction import ImageInfo, Prediction, Rejection, Segment, Turn, prediction_key
from autolabel.store import PredictionWriter

H = W = 10


def box(*boxes: tuple[int, int, int, int], h: int = H, w: int = W) -> np.ndarray:
    """A mask that is the union of boxes (y0, y1, x0, x1), ends exclusive."""
    m = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def write_gt(path: Path, files: list[str], categories: dict[str, int], annotations: list[tuple[str, str, object]],
             *, first_image_id: int = 1, h: int = H, w: int = W) -> Path:
    """A GT COCO file; an annotation is (file, category name, mask or raw segmentation)."""
    ids = {f: first_image_id + k for k, f in enumerate(files)}
    anns = [{"id": 100 + k, "image_id": ids[f], "category_id": categories[c], "iscrowd": 0,
             "segmentation": mask_to_rle(m) if isinstance(m, np.ndarray) else m}
            for k, (f, c, m) in enumerate(annotations)]
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f, "height": h, "width": w} for f, i in ids.items()],
                                "categories": [{"id": i, "name": n} for n, i in categories.items()],
                                "annotations": anns}))
    return path


def seg(mask: np.ndarray, image: int, category: str, score: float = 0.9) -> Segment:
    return Segment.from_mask(mask, image=image, label=category, category=category, phrase=category, score=score)


def prediction(group: str, files: list[str], segments: list[Segment] = (), rejected: list[Rejection] = (), *,
               template: str = "ask", reasoning: str = "functional", status: str = "ok") -> Prediction:
    return Prediction(key=prediction_key(group, template, "m"), group_id=group,
                      images=[ImageInfo(f, W, H) for f in files], template=template, template_hash="h",
                      model="m", backend="test", turns=[Turn("q?", "a.", list(segments), list(rejected))],
                      status=status, category=reasoning)


def write_run(run_dir: Path, predictions: list[Prediction], *, templates: dict | None = None,
              input_root: Path | None = None) -> Path:
    writer = PredictionWriter(run_dir)
    writer.write(predictions)
    writer.write_info({"input_root": str(input_root or run_dir), "templates": templates or {}})
    writer.close()
    return run_dir


def close(value: float | None, expected: float) -> bool:
    return value is not None and abs(value - expected) < 1e-9


# -- the GSVA cases: rejections, empty GT, a mask on an absent target ----------------------------
@pytest.fixture
def gsva_case(tmp_path: Path) -> tuple[Path, Path]:
    """a.png: cat GT rows 0-4 (50 px), cat predicted cols 0-4 (50 px): overlap 25, union 75.
    dog rejected for the whole group: absent on a.png (right), present on b.png (20 px, wrong).
    b.png: no cat in GT but a 10 px cat mask predicted."""
    gt = write_gt(tmp_path / "gt.json", ["g1/a.png", "g1/b.png"], {"cat": 7, "dog": 3},
                  [("g1/a.png", "cat", box((0, 5, 0, 10))), ("g1/b.png", "dog", box((0, 2, 0, 10)))])
    run = write_run(tmp_path / "run", [prediction("g1", ["g1/a.png", "g1/b.png"],
                                                  [seg(box((0, 10, 0, 5)), 0, "cat", 0.9),
                                                   seg(box((9, 10, 0, 10)), 1, "cat", 0.8)],
                                                  [Rejection(label="dog", category="dog")])])
    return run, gt


def test_gsva_case_every_metric_by_hand(gsva_case):
    result = evaluate(*gsva_case)
    o = result.overall
    # samples: (a,cat) 25/75; (a,dog) rejected + absent -> 1; (b,cat) 0/10; (b,dog) rejected + present -> 0/20
    assert close(o["gIoU"], (1 / 3 + 1 + 0 + 0) / 4)
    assert close(o["cIoU"], 25 / (75 + 10 + 20))
    assert close(o["N-acc"], 1 / 2)  # TP: dog on a; FN: cat mask on b
    assert close(o["T-acc"], 1 / 2)  # TN: cat on a; FP: dog rejected on b
    assert close(o["mIoU"], (1 / 3 + 0) / 2)  # GT instances: cat on a (1/3), dog on b (unmatched)
    assert o["recall@0.5"] == 0.0
    assert o["AP"] == 0.0 and o["AP50"] == 0.0  # the only cat mask overlapping GT is at IoU 1/3
    assert result.counts["samples"] == 4 and result.counts["gt_instances"] == 2
    cat, dog = result.per_category["cat"], result.per_category["dog"]
    assert close(cat["gIoU"], (1 / 3 + 0) / 2) and close(cat["cIoU"], 25 / 85)
    assert cat["N-acc"] == 0.0 and cat["T-acc"] == 1.0
    assert close(dog["gIoU"], 0.5) and dog["cIoU"] == 0.0 and dog["N-acc"] == 1.0 and dog["T-acc"] == 0.0
    assert close(result.per_template["ask"]["gIoU"], 1 / 3)
    assert close(result.per_reasoning_category["functional"]["cIoU"], 25 / 105)


def test_only_a_right_rejection_gives_one_and_nulls(tmp_path):
    """GT and PRED both empty (a rejected absent target) scores 1.0; metrics with nothing to count are None."""
    gt = write_gt(tmp_path / "gt.json", ["a.png"], {"cat": 1}, [])
    run = write_run(tmp_path / "run", [prediction("g", ["a.png"], rejected=[Rejection("cat", "cat", image=0)])])
    o = evaluate(run, gt).overall
    assert o["gIoU"] == 1.0 and o["N-acc"] == 1.0
    for name in ("cIoU", "mIoU", "recall@0.5", "T-acc", "AP", "AP50", "AP75"):
        assert o[name] is None, name


def test_a_mask_outweighs_a_rejection_of_the_same_target(tmp_path):
    """The model rejects dog for the group yet masks one on a.png, where GT has none: that is the
    GSVA false negative (a mask on an absent target), not a right rejection."""
    gt = write_gt(tmp_path / "gt.json", ["a.png", "b.png"], {"dog": 1}, [("b.png", "dog", box((0, 2, 0, 10)))])
    run = write_run(tmp_path / "run", [prediction("g", ["a.png", "b.png"], [seg(box((0, 1, 0, 10)), 0, "dog")],
                                                  [Rejection(label="dog", category="dog")])])
    o = evaluate(run, gt).overall
    assert o["N-acc"] == 0.0 and o["T-acc"] == 0.0 and o["gIoU"] == 0.0 and o["cIoU"] == 0.0


def test_json_shape_and_null_is_not_zero(gsva_case, tmp_path):
    gt = write_gt(tmp_path / "gt2.json", ["a.png"], {"cat": 1}, [("a.png", "cat", box((0, 5, 0, 5)))])
    results = tmp_path / "results.json"  # a plain COCO results list: it cannot express rejections
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.7,
                                    "segmentation": mask_to_rle(box((0, 5, 0, 5)))}]))
    doc = json.loads(json.dumps(evaluate(results, gt).to_json()))
    assert {"overall", "per_category", "per_template", "per_reasoning_category"} <= doc.keys()
    assert list(doc["overall"]) == list(metric_names())
    assert doc["overall"]["N-acc"] is None and doc["overall"]["T-acc"] is None  # null, not 0
    assert doc["overall"]["gIoU"] == 1.0 and doc["overall"]["AP"] == 1.0
    assert doc["per_template"] == {} and list(doc["per_category"]) == ["cat"]
    full = evaluate(*gsva_case).to_json()
    assert full["per_template"]["ask"]["N-acc"] == 0.5 and full["overall"]["AP"] == 0.0  # a real 0 stays 0


# -- instances: multi-part masks and one-to-one matching ------------------------------------------
def test_multi_part_masks_and_greedy_one_to_one_matching(tmp_path):
    """GT: cat on a.png is ONE instance of two parts (29 + 11 px); dog on b.png is TWO instances
    (29 and 11 px). PRED: the cat as two masks, one per part; the dog as ONE mask over both."""
    part1, part2 = (0, 1, 0, 10), (2, 3, 0, 10)
    big, small = box((0, 2, 0, 10), (2, 3, 0, 9)), box((5, 6, 0, 10), (6, 7, 0, 1))  # 29 px, 11 px
    gt = write_gt(tmp_path / "gt.json", ["a.png", "b.png"], {"cat": 1, "dog": 2},
                  [("a.png", "cat", big | small), ("b.png", "dog", big), ("b.png", "dog", small)])
    run = write_run(tmp_path / "run", [prediction("g", ["a.png", "b.png"], [
        seg(big, 0, "cat", 0.9), seg(small, 0, "cat", 0.8), seg(big | small, 1, "dog", 0.9)])])
    result = evaluate(run, gt)
    assert result.overall["gIoU"] == 1.0 and result.overall["cIoU"] == 1.0  # the unions are equal
    # cat: its one GT instance matches the 29 px part (IoU 29/40); the 11 px part stays unmatched
    # dog: the one mask matches the 29 px instance (29/40); the 11 px instance is unmatched -> 0
    assert close(result.per_category["cat"]["mIoU"], 29 / 40) and result.per_category["cat"]["recall@0.5"] == 1.0
    assert close(result.per_category["dog"]["mIoU"], 29 / 40 / 2) and result.per_category["dog"]["recall@0.5"] == 0.5
    assert close(result.overall["mIoU"], (29 / 40 + 29 / 40 + 0) / 3)
    assert close(result.overall["recall@0.5"], 2 / 3)
    # AP: at IoU 0.5..0.70 (5 of 10 thresholds) both categories' best mask is a TP ranked first
    cat = result.per_category["cat"]
    assert close(cat["AP"], 0.5) and cat["AP50"] == 1.0 and cat["AP75"] == 0.0
    # dog: 1 of 2 GT found at precision 1 -> AP50 = 101-point mean of [1]*51 + [0]*50
    assert close(result.per_category["dog"]["AP50"], 51 / 101)
    strict = evaluate(run, gt, iou_threshold=0.75).overall
    assert strict["recall@0.75"] == 0.0 and "recall@0.5" not in strict


def test_ap_ranks_masks_by_score(tmp_path):
    gt = write_gt(tmp_path / "gt.json", ["a.png"], {"cat": 1}, [("a.png", "cat", box((0, 5, 0, 5)))])
    exact = seg(box((0, 5, 0, 5)), 0, "cat", 0.5)
    wrong = seg(box((6, 10, 6, 10)), 0, "cat", 0.9)
    first = evaluate(write_run(tmp_path / "r1", [prediction("g", ["a.png"], [exact])]), gt).overall
    assert first["AP"] == 1.0
    # a false positive scored higher: precision 1/2 at every recall level
    second = evaluate(write_run(tmp_path / "r2", [prediction("g", ["a.png"], [exact, wrong])]), gt).overall
    assert close(second["AP"], 0.5) and close(second["gIoU"], 25 / 41)


def test_crowd_regions_join_the_union_but_are_not_instances(tmp_path):
    """GT cat: one object (25 px) and a crowd region (25 px); a mask on each is predicted."""
    gt = write_gt(tmp_path / "gt.json", ["a.png"], {"cat": 1},
                  [("a.png", "cat", box((0, 5, 0, 5))), ("a.png", "cat", box((5, 10, 5, 10)))])
    data = json.loads(gt.read_text())
    data["annotations"][1]["iscrowd"] = 1
    gt.write_text(json.dumps(data))
    run = write_run(tmp_path / "run", [prediction("g", ["a.png"], [seg(box((0, 5, 0, 5)), 0, "cat", 0.9),
                                                                   seg(box((5, 10, 5, 10)), 0, "cat", 0.8)])])
    result = evaluate(run, gt)
    assert result.overall["gIoU"] == 1.0 and result.counts["gt_instances"] == 1
    assert result.overall["mIoU"] == 1.0 and result.overall["recall@0.5"] == 1.0
    assert result.overall["AP"] == 1.0  # COCOeval ignores the mask on the crowd region
    assert any(w.startswith("GT crowd annotations") for w in result.warnings)


# -- matching PRED to GT: images and categories ------------------------------------------------------
def test_categories_map_by_name_across_different_ids(tmp_path):
    """GT ids cat=7, dog=3 (dog as a polygon); the export numbers them 1, 2 in its own order."""
    gt = write_gt(tmp_path / "gt.json", ["g/a.png"], {"cat": 7, "dog": 3},
                  [("g/a.png", "cat", box((0, 4, 0, 4))), ("g/a.png", "dog", [[5, 5, 10, 5, 10, 10, 5, 10]])],
                  first_image_id=50)  # the export numbers its images from 1: matched by file name
    run = write_run(tmp_path / "run", [prediction("g", ["g/a.png"], [
        seg(box((0, 4, 0, 4)), 0, "cat"), seg(box((5, 10, 5, 10)), 0, "dog")])])
    export = tmp_path / "export.json"
    export_coco([run], export)
    assert {c["name"]: c["id"] for c in json.loads(export.read_text())["categories"]} != {"cat": 7, "dog": 3}
    for pred in (run, export):
        result = evaluate(pred, gt)
        assert result.overall["gIoU"] == 1.0 and result.overall["AP"] == 1.0, pred
        assert set(result.per_category) == {"cat", "dog"}


def test_an_export_scores_like_its_run(gsva_case, tmp_path):
    run, gt = gsva_case
    export = tmp_path / "export.json"
    export_coco([run], export)
    assert evaluate(export, gt).to_json()["overall"] == evaluate(run, gt).to_json()["overall"]


def test_images_missing_from_pred_are_left_out_and_counted(tmp_path):
    gt = write_gt(tmp_path / "gt.json", ["data/a.png", "data/b.png", "data/c.png"], {"cat": 1},
                  [(f, "cat", box((0, 5, 0, 5))) for f in ("data/a.png", "data/b.png", "data/c.png")])
    # the run names files relative to data/ (a prefix difference); x.png is not in GT at all
    run = write_run(tmp_path / "run", [prediction("g", ["a.png", "x.png"], [seg(box((0, 5, 0, 5)), 0, "cat"),
                                                                         seg(box((0, 5, 0, 5)), 1, "cat")])])
    result = evaluate(run, gt)
    assert result.overall["gIoU"] == 1.0 and result.counts["images"] == 1 and result.counts["samples"] == 1
    text = "\n".join(result.warnings)
    assert "GT images with no prediction, left out of every metric: 2" in text
    assert "predicted images not in GT, left out: 1 (e.g. 'x.png')" in text
    assert "matched to GT by a path prefix difference: 1" in text


def test_a_different_folder_with_the_same_file_name_does_not_match(tmp_path):
    gt = write_gt(tmp_path / "gt.json", ["g1/a.png"], {"cat": 1}, [("g1/a.png", "cat", box((0, 5, 0, 5)))])
    run = write_run(tmp_path / "run", [prediction("g2", ["g2/a.png"], [seg(box((0, 5, 0, 5)), 0, "cat")])])
    with pytest.raises(AutolabelError, match="no image in common.*'g2/a.png'.*'g1/a.png'"):
        evaluate(run, gt)


def test_unknown_categories_are_counted_false_positives(tmp_path):
    gt = write_gt(tmp_path / "gt.json", ["a.png"], {"cat": 1}, [("a.png", "cat", box((0, 5, 0, 5)))])
    run = write_run(tmp_path / "run", [prediction("g", ["a.png"], [seg(box((0, 5, 0, 5)), 0, "cat"),
                                                                   seg(box((5, 10, 5, 10)), 0, "unicorn")])])
    result = evaluate(run, gt)
    assert close(result.overall["gIoU"], 0.5) and close(result.overall["cIoU"], 25 / 50)
    assert result.overall["AP"] == 1.0  # COCOeval cannot rank a category GT lacks
    assert result.per_category["unicorn"]["gIoU"] == 0.0 and result.per_category["unicorn"]["AP"] is None
    assert any("categories GT lacks, counted as false positives (no AP): 1 (e.g. 'unicorn')" in w
               for w in result.warnings)


def test_template_scope_and_separate_templates(tmp_path):
    """Two templates label the same image: each is judged on its own. `count-cats` asked only for
    cat (run.json ontology), so the dog in GT is not a miss for it."""
    gt = write_gt(tmp_path / "gt.json", ["a.png"], {"cat": 1, "dog": 2},
                  [("a.png", "cat", box((0, 5, 0, 5))), ("a.png", "dog", box((5, 10, 5, 10)))])
    run = write_run(tmp_path / "run", [
        prediction("g", ["a.png"], [seg(box((0, 5, 0, 5)), 0, "cat")], template="count-cats", reasoning="numerical"),
        prediction("g", ["a.png"], [seg(box((0, 5, 0, 5)), 0, "cat")], template="anything", reasoning="open"),
    ], templates={"count-cats": {"categories": ["cat"]}})
    result = evaluate(run, gt)
    assert result.per_template["count-cats"]["gIoU"] == 1.0 and result.per_template["count-cats"]["AP"] == 1.0
    assert result.per_template["anything"]["gIoU"] == 0.5  # cat 1.0, dog missed 0.0
    assert result.per_reasoning_category["open"]["mIoU"] == 0.5
    assert close(result.overall["gIoU"], 2 / 3) and result.counts["samples"] == 3
    assert result.per_template["anything"]["T-acc"] == 1.0  # a silent miss is not a rejection


def test_failed_groups_are_counted_not_scored(gsva_case, tmp_path):
    run, gt = gsva_case
    writer = PredictionWriter(run)
    writer.write([prediction("g2", ["g1/b.png"], status="error")])
    writer.close()
    result = evaluate(run, gt)
    assert any("groups that failed in the run (status error), left out: 1" in w for w in result.warnings)
    assert result.counts["labellings"] == 1


# -- bad input: clear errors naming what is wrong -------------------------------------------------------
def test_malformed_rle_names_the_annotation(tmp_path):
    gt = write_gt(tmp_path / "gt.json", ["a.png"], {"cat": 1},
                  [("a.png", "cat", {"size": [H, W], "counts": "0d0"})])  # a valid string for 4x5, not 10x10
    run = write_run(tmp_path / "run", [prediction("g", ["a.png"])])
    with pytest.raises(AutolabelError, match=r"gt.json: GT annotation id 100: malformed RLE"):
        evaluate(run, gt)


def test_mask_size_mismatch_names_the_prediction(tmp_path):
    gt = write_gt(tmp_path / "gt.json", ["a.png"], {"cat": 1}, [("a.png", "cat", box((0, 5, 0, 5)))])
    run = write_run(tmp_path / "run", [prediction("g", ["a.png"], [seg(box((0, 5, 0, 5), h=12, w=10), 0, "cat")])])
    with pytest.raises(AutolabelError,
                       match=r"prediction 'g\|ask\|m', mask of 'cat' on 'a.png': mask is 12x10 .* image is 10x10"):
        evaluate(run, gt)


def test_results_list_on_unknown_category_id_is_an_error(tmp_path):
    gt = write_gt(tmp_path / "gt.json", ["a.png"], {"cat": 1}, [])
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"id": 5, "image_id": 1, "category_id": 9, "score": 1,
                                    "segmentation": mask_to_rle(box((0, 1, 0, 1)))}]))
    with pytest.raises(AutolabelError, match="PRED annotation id 5: unknown `category_id` 9"):
        evaluate(results, gt)


# -- CI gates ---------------------------------------------------------------------------------------------
def test_parse_fail_under():
    assert parse_fail_under(["gIoU=0.5", "ap50=0.25", "N-acc = 0.9"]) == {"gIoU": 0.5, "AP50": 0.25, "N-acc": 0.9}
    with pytest.raises(AutolabelError, match="unknown metric 'F1'; valid: gIoU, cIoU, mIoU, recall@0.5"):
        parse_fail_under(["F1=0.5"])
    with pytest.raises(AutolabelError, match="not percent"):
        parse_fail_under(["gIoU=50"])
    with pytest.raises(AutolabelError, match="must be a number"):
        parse_fail_under(["gIoU=high"])
    with pytest.raises(AutolabelError, match="METRIC=VALUE"):
        parse_fail_under(["gIoU"])


def test_failures_below_threshold_and_on_null(gsva_case):
    result = evaluate(*gsva_case)  # gIoU 1/3, N-acc 0.5
    assert failures(result, {"gIoU": 0.3, "N-acc": 0.5}) == []
    lines = failures(result, {"gIoU": 0.4, "N-acc": 0.5})
    assert lines == ["gIoU = 0.3333 is below 0.4"]
    result.overall["AP75"] = None
    assert failures(result, {"AP75": 0.0}) == ["AP75 is null (does not apply to this data), required >= 0"]


# -- output ------------------------------------------------------------------------------------------------
def test_table_lists_every_scope(gsva_case):
    from rich.console import Console

    console = Console(record=True, width=250)
    console.print(render_table(evaluate(*gsva_case)))
    text = console.export_text()
    for needle in ("gIoU", "recall@0.5", "overall", "cat", "dog", "ask", "functional", "0.333", "4 samples"):
        assert needle in text, needle


def test_report_writes_markdown_and_pngs(gsva_case, tmp_path):
    run, gt = gsva_case
    result = evaluate(run, gt)
    out = tmp_path / "report"
    path = write_report(result, out, run, gt)
    text = path.read_text()
    assert path == out / "report.md" and "## Per category" in text and "## Worst groups" in text
    assert "g1/a.png not found" in text  # no image files: drawn on grey, said so
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["iou-001-cat.png", "iou-002-dog.png", "worst-1.png"]
    for png in pngs:
        assert f"]({png})" in text
        with Image.open(out / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_report_draws_the_real_images(gsva_case, tmp_path):
    run, gt = gsva_case
    for name, colour in (("a.png", (17, 99, 201)), ("b.png", (0, 0, 0))):
        (tmp_path / "g1").mkdir(exist_ok=True)
        Image.fromarray(np.full((H, W, 3), colour, np.uint8)).save(tmp_path / "g1" / name)
    path = write_report(evaluate(run, gt), tmp_path / "report", run, gt)  # found next to GT
    assert "not found" not in path.read_text()
    with Image.open(tmp_path / "report" / "worst-1.png") as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert (pixels == [17, 99, 201]).all(axis=1).any()  # the image shows where no mask covers it
