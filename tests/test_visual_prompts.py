"""Visual prompts as users give them: the exemplar's label (a manifest prompt's `label`, a COCO
annotation's category) names the target of its group, and the exemplar may be on any image."""

from __future__ import annotations

import json
from pathlib import Path

from doubles import BoxBackend
from helpers import cli, make_groups

from autolabel.config import RunConfig
from autolabel.engine import Engine
from autolabel.store import read_predictions


class Recording(BoxBackend):
    """Keeps every rendered prompt it was asked."""

    prompts: dict[str, object] = {}

    def predict(self, requests):
        for r in requests:
            Recording.prompts[r.group.id] = r.prompt
        return super().predict(requests)


def manifest(tmp_path: Path) -> Path:
    make_groups(tmp_path / "data", 3, per_group=3)
    path = tmp_path / "data" / "m.jsonl"
    lines = [
        {"id": "mugs", "images": ["g000/img1.png", "g000/img2.png", "g000/img3.png"],
         "prompts": [{"image": 1, "boxes": [[2, 2, 12, 12]], "label": "mug"}]},       # exemplar on Image 2
        {"id": "kettles", "images": ["g001/img1.png", "g001/img2.png", "g001/img3.png"],
         "prompts": [{"image": 0, "boxes": [[2, 2, 12, 12]], "label": "kettle"}]},    # on Image 1
        {"id": "named", "images": ["g002/img1.png", "g002/img2.png"], "variables": {"label": "teapot"},
         "prompts": [{"image": 1, "boxes": [[2, 2, 12, 12]], "label": "pot"}]},       # its variable wins
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_the_exemplar_label_is_the_target_label_and_category(tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(input=manifest(tmp_path), out=out, prompt=["visual-prompt"], backend="doubles:BoxBackend",
                    quiet=True, var={"label": "thing"})
    assert Engine(cfg, backend_factory=Recording).run().exit_code == 0
    lines = {p.group_id: p for p in read_predictions([out])}
    for group, label in [("mugs", "mug"), ("kettles", "kettle"), ("named", "teapot")]:
        segments = list(lines[group].segments())
        assert segments and {(s.label, s.category) for s in segments} == {(label, label)}, group
        assert lines[group].variables == {"label": label}
    coco = tmp_path / "coco.json"
    assert cli("export", "coco", str(out), "-o", str(coco)).returncode == 0
    assert {c["name"] for c in json.loads(coco.read_text())["categories"]} >= {"mug", "kettle", "teapot"}


def test_the_prompt_names_the_image_with_the_exemplar_and_targets_may_be_everywhere_else(tmp_path):
    cfg = RunConfig(input=manifest(tmp_path), out=tmp_path / "run", prompt=["visual-prompt"],
                    backend="doubles:BoxBackend", quiet=True)
    Engine(cfg, backend_factory=Recording).run()
    mugs, kettles = Recording.prompts["mugs"], Recording.prompts["kettles"]
    assert 'The object marked in Image 2 is called "mug"' in mugs.turns[0].text
    assert "marked in Image 2 (the exemplar)" in mugs.system and "Image 1 (the exemplar)" not in mugs.system
    assert mugs.allowed_images == (1, 3)
    assert 'marked in Image 1 is called "kettle"' in kettles.turns[0].text and kettles.allowed_images == (2, 3)


def test_a_coco_exemplar_category_labels_its_group(tmp_path):
    make_groups(tmp_path / "data", 1, per_group=2)
    coco = tmp_path / "data" / "exemplars.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "g000/img1.png", "group": "g"},
                   {"id": 2, "file_name": "g000/img2.png", "group": "g"}],
        "categories": [{"id": 5, "name": "bottle"}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 5, "bbox": [2, 2, 8, 8]}]}))
    out = tmp_path / "run"
    cfg = RunConfig(input=coco, out=out, prompt=["visual-prompt"], backend="doubles:BoxBackend", quiet=True)
    Engine(cfg, backend_factory=Recording).run()
    (line,) = read_predictions([out])
    assert {s.category for s in line.segments()} == {"bottle"}
    assert 'marked in Image 2 is called "bottle"' in Recording.prompts["g"].turns[0].text
    assert Recording.prompts["g"].allowed_images == (1,)


def test_prompts_render_shows_a_manifest_group_with_its_exemplar(tmp_path):
    path = manifest(tmp_path)
    r = cli("prompts", "render", "visual-prompt", str(path), "--group", "mugs")
    assert r.returncode == 0, r.stderr
    assert "Image 2: g000/img2.png  (exemplar 'mug': box [2.0, 2.0, 12.0, 12.0])" in r.stdout
    assert 'The object marked in Image 2 is called "mug"' in r.stdout and "images [1, 3]" in r.stdout
    first = cli("prompts", "render", "visual-prompt", str(path))
    assert first.returncode == 0 and "g000/img1.png" in first.stdout  # the first group by default
    r = cli("prompts", "render", "visual-prompt", str(path), "--group", "nope")
    assert r.returncode == 2 and "no group 'nope'" in r.stderr
