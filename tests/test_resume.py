"""Resume by what the model was asked: a key done with other variables or another template is
redone (the key stays group|template|model; the line's template_hash and variables tell)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import PETS_TEMPLATE, make_groups

from autolabel.config import RunConfig
from autolabel.engine import Engine
from autolabel.store import read_predictions


def run(input: Path, out: Path, prompts: list[str], **kw):
    cfg = RunConfig(input=input, out=out, prompt=prompts, quiet=True, **{"backend": "doubles:BoxBackend", **kw})
    return Engine(cfg).run()


def test_other_variables_redo_the_keys_that_use_them(tmp_path, box_backend):
    data = make_groups(tmp_path / "data", 3, per_group=1)
    out = tmp_path / "run"
    first = run(data, out, ["ontology", "functional"], var={"classes": "cat, dog"}, backend=box_backend.target)
    assert first.done == 6
    ontology = next(p for p in read_predictions([out]) if p.template == "ontology")
    assert ontology.variables == {"classes": "cat, dog"}  # what it was asked, stored on the line
    same = run(data, out, ["ontology", "functional"], var={"classes": "cat, dog"}, backend=box_backend.target)
    assert same.done == 0 and same.already_done == 6 and same.redone == 0
    before = len(box_backend.instances)
    changed = run(data, out, ["ontology", "functional"], var={"classes": "cat, horse"}, backend=box_backend.target)
    assert len(box_backend.instances) == before + 1
    # only the template that uses `classes` is redone; functional's question did not change
    assert changed.done == 3 and changed.redone == 3 and changed.already_done == 3
    lines = {p.key: p for p in read_predictions([out])}
    assert {p.variables["classes"] for p in lines.values() if p.template == "ontology"} == {"cat, horse"}
    assert {s.category for p in lines.values() if p.template == "ontology" for s in p.segments()} == {"cat", "horse"}
    info = json.loads((out / "run.json").read_text())
    assert info["counts"]["redone"] == 3 and info["totals"] == {"keys": 6, "done": 6, "failed": 0}


def test_an_edited_template_is_redone(tmp_path):
    data = make_groups(tmp_path / "data", 2, per_group=1)
    out = tmp_path / "run"
    template = tmp_path / "pets.yaml"
    template.write_text(PETS_TEMPLATE)
    assert run(data, out, [str(template)]).done == 2
    assert run(data, out, [str(template)]).already_done == 2
    template.write_text(PETS_TEMPLATE.replace("Now the one next to it.", "Now the one behind it."))
    again = run(data, out, [str(template)])
    assert again.done == 2 and again.redone == 2 and again.already_done == 0
    hashes = {p.template_hash for p in read_predictions([out])}
    assert len(hashes) == 1 and [t.question for t in next(iter(read_predictions([out]))).turns][1] == "Now the one behind it."


def test_a_manifest_group_with_new_variables_is_redone_alone(tmp_path):
    make_groups(tmp_path / "data", 2, per_group=1)
    manifest = tmp_path / "data" / "m.jsonl"

    def write(second_targets: str) -> None:
        manifest.write_text(json.dumps({"id": "a", "images": ["g000/img1.png"], "variables": {"targets": "cup"}}) + "\n"
                            + json.dumps({"id": "b", "images": ["g001/img1.png"],
                                          "variables": {"targets": second_targets}}) + "\n")

    write("mug")
    out = tmp_path / "run"
    assert run(manifest, out, ["multi-target"]).done == 2
    write("bottle")
    again = run(manifest, out, ["multi-target"])
    assert again.redone == 1 and again.already_done == 1
    assert {p.group_id: p.variables["targets"] for p in read_predictions([out])} == {"a": "cup", "b": "bottle"}


def test_lines_written_before_variables_were_stored_are_not_redone(tmp_path):
    """Lines of earlier versions held only a manifest's variables: a variable they do not name is
    not taken for a change (the template hash still is)."""
    data = make_groups(tmp_path / "data", 2, per_group=1)
    out = tmp_path / "run"
    run(data, out, ["ontology"], var={"classes": "cat, dog"})
    path = out / "predictions.jsonl"
    old = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**line, "variables": {}}) + "\n" for line in old))
    again = run(data, out, ["ontology"], var={"classes": "cat, dog"})
    assert again.done == 0 and again.already_done == 2 and again.redone == 0


def test_overwrite_still_redoes_everything(tmp_path):
    data = make_groups(tmp_path / "data", 2, per_group=1)
    out = tmp_path / "run"
    run(data, out, ["ontology"])
    again = run(data, out, ["ontology"], overwrite=True)
    assert again.done == 2 and again.already_done == 0
