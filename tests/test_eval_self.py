"""A run scored against its own export (or a reviewers' pull, which has the same shape) scores 1.0
on every metric, however many templates label the same images: GT that says which labelling each
mask answers is matched per labelling. Plain COCO GT stays per image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli, make_groups

from autolabel.evaluation import evaluate

REPO = Path(__file__).resolve().parent.parent
PERFECT = ("gIoU", "cIoU", "mIoU", "recall@0.5", "N-acc", "T-acc", "AP", "AP50", "AP75")


def labelled(data: Path, out: Path, *args: str) -> Path:
    r = cli("run", str(data), "--backend", "doubles:BoxBackend", "--out", str(out), "-q", *args)
    assert r.returncode == 0, r.stderr
    return out


def exported(run_dir: Path, path: Path) -> Path:
    r = cli("export", "coco", str(run_dir), "-o", str(path))
    assert r.returncode == 0, r.stderr
    return path


def assert_perfect(result, templates: int) -> None:
    """1.0 for every metric of every scope that applies (null: a category only ever rejected has no
    IoU, one never rejected no N-acc); overall every metric applies."""
    assert len(result.per_template) == templates
    assert [result.overall[name] for name in PERFECT] == [1.0] * len(PERFECT), result.overall
    for scope, metrics in [*result.per_template.items(), *result.per_category.items()]:
        assert {name: metrics[name] for name in PERFECT if metrics[name] is not None} \
            == {name: 1.0 for name in PERFECT if metrics[name] is not None}, (scope, metrics)
    assert not [w for w in result.warnings if "every GT mask" in w or "no labelling" in w], result.warnings


def test_the_readme_demo_scores_one_against_its_own_export(tmp_path):
    """`autolabel run examples/groups --prompt functional --prompt ontology --var classes="cat, horse, person"`,
    then `export coco`, then `eval` of the run and of the export against it."""
    run_dir = labelled(REPO / "examples" / "groups", tmp_path / "demo", "--prompt", "functional", "--prompt", "ontology",
                       "--var", "classes=cat, horse, person")
    gt = exported(run_dir, tmp_path / "coco.json")
    assert_perfect(evaluate(run_dir, gt), 2)
    assert_perfect(evaluate(gt, gt), 2)
    metrics = tmp_path / "m.json"
    r = cli("eval", str(run_dir), "--gt", str(gt), "--json", str(metrics), "--fail-under", "mIoU=1", "--fail-under", "AP=1")
    assert r.returncode == 0, r.stderr + r.stdout
    assert json.loads(metrics.read_text())["overall"]["recall@0.5"] == 1.0


@pytest.mark.parametrize("n_templates", [2, 3])
def test_templates_that_mask_the_same_categories_differently_score_one(tmp_path, n_templates):
    """Each template puts its `cat` and `dog` masks elsewhere on the same images (the double places
    the k-th ontology entry k pixels lower), the case that scored mIoU 0.50 against its own export."""
    data = make_groups(tmp_path / "data", 2, per_group=1)
    prompts = ["--prompt", "ontology", "--prompt", "multi-target", "--prompt", "numerical"][:2 * n_templates]
    run_dir = labelled(data, tmp_path / "run", *prompts, "--var", "classes=cat, dog, bird",
                       "--var", "targets=dog, cat", "--var", "object=cat")
    gt = exported(run_dir, tmp_path / "gt.json")
    for pred in (run_dir, gt):
        result = evaluate(pred, gt)
        assert result.counts["labellings"] == 2 * n_templates
        assert_perfect(result, n_templates)


def test_a_visual_prompt_run_scores_one_against_its_own_export(tmp_path):
    """Per-group labels from the exemplars (not in run.json's ontology) are in scope of their labelling."""
    data = make_groups(tmp_path / "data", 2, per_group=2)
    manifest = tmp_path / "data" / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"g{g}", "images": [f"g{g:03d}/img1.png", f"g{g:03d}/img2.png"],
                                            "prompts": [{"image": 0, "boxes": [[1, 1, 9, 9]], "label": label}]}) + "\n"
                                for g, label in enumerate(["mug", "kettle"])))
    run_dir = labelled(manifest, tmp_path / "run", "--prompt", "visual-prompt", "--prompt", "ontology",
                       "--var", "classes=mug, cup, kettle")
    gt = exported(run_dir, tmp_path / "gt.json")
    assert_perfect(evaluate(run_dir, gt), 2)


def test_plain_coco_gt_stays_per_image(tmp_path):
    """GT without `groups` (any COCO file): every labelling of an image is judged against all of its
    GT, so a second template's differently placed cat counts against the first."""
    data = make_groups(tmp_path / "data", 1, per_group=1)
    run_dir = labelled(data, tmp_path / "run", "--prompt", "ontology", "--prompt", "multi-target",
                       "--var", "classes=cat, dog", "--var", "targets=dog, cat")
    gt = json.loads(exported(run_dir, tmp_path / "gt.json").read_text())
    del gt["groups"]
    for ann in gt["annotations"]:
        del ann["attributes"]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(gt))
    result = evaluate(run_dir, plain)
    assert result.overall["mIoU"] < 1.0 and result.overall["gIoU"] < 1.0


def test_a_labelling_gt_does_not_list_is_judged_per_image_and_counted(tmp_path):
    data = make_groups(tmp_path / "data", 1, per_group=1)
    first = labelled(data, tmp_path / "run", "--prompt", "ontology", "--var", "classes=cat, dog")
    gt = exported(first, tmp_path / "gt.json")
    labelled(data, first, "--prompt", "multi-target", "--var", "targets=cat, dog")  # a template GT never saw
    result = evaluate(first, gt)
    assert result.per_template["ontology"]["mIoU"] == 1.0
    assert any("GT `groups` do not list" in w and "multi-target" in w for w in result.warnings), result.warnings
