"""Prompt templates: the built-ins render for any group size, YAML errors name file and field,
rendering is sandboxed, and the ontology / answer rules come out as the backends need them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autolabel.errors import AutolabelError
from autolabel.templates import (BUILTIN_DIR, REASONING_CATEGORIES, AnswerRules, Template, builtin_templates,
                                 load_template, render)

BUILTINS = ["functional", "spatial", "numerical", "open-ended", "multi-target", "multi-round", "visual-prompt",
            "ontology"]
REQUIRED = {"open-ended": {"question": "Which mug is red?"}}


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# -- the built-ins ------------------------------------------------------------------------------
def test_every_builtin_is_present_named_after_its_file_and_described():
    templates = {t.name: t for t in builtin_templates()}
    assert sorted(templates) == sorted(BUILTINS)
    for name, t in templates.items():
        assert (BUILTIN_DIR / f"{name}.yaml").is_file()
        assert t.category in REASONING_CATEGORIES and t.category == name
        assert len(t.description) > 60, name
        assert "Ground every" in t.system, name


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("n_images", [1, 2, 3, 4])
def test_builtin_renders_for_groups_of_one_to_four_images(name, n_images):
    t = load_template(name)
    files = [f"{i}.jpg" for i in range(n_images)]
    p = render(t, n_images=n_images, variables=REQUIRED.get(name), group_id="g", files=files)
    labels = ", ".join(f"Image {i}" for i in range(1, n_images + 1))
    assert f"labelled {labels}." in p.system
    assert f"You see {n_images} image{'' if n_images == 1 else 's'}," in p.system
    assert p.name == name and p.hash == t.content_hash and p.category == t.category
    assert len(p.turns) == len(t.turns) and all(turn.text and "{" not in turn.text for turn in p.turns)
    assert "{" not in p.system
    assert p.allowed_images and set(p.allowed_images) <= set(range(1, n_images + 1))


def test_open_ended_has_no_default_question():
    t = load_template("open-ended")
    assert t.variables["question"].default is None
    with pytest.raises(AutolabelError, match="'question' is undefined.*--var"):
        render(t, n_images=2)
    p = render(t, n_images=2, variables={"question": "Which mug is red?"})
    assert p.turns[0].text.startswith("Which mug is red?")


def test_multi_target_asks_for_the_phrases_and_maps_them_to_categories():
    t = load_template("multi-target")
    assert t.answer.multiple_targets and t.answer.allow_rejection
    p = render(t, n_images=2)
    assert p.ontology == {"person": "person", "dog": "dog", "bicycle": "bicycle"}
    p = render(t, n_images=2, variables={"targets": "cup=mug, plate,, red car = car"})
    assert "appears: cup, plate, red car." in p.turns[0].text and "=" not in p.turns[0].text
    assert p.ontology == {"cup": "mug", "plate": "plate", "red car": "car"}
    assert p.categories == ["mug", "plate", "car"]
    assert "absent" in p.turns[0].text and "reason" in p.turns[0].text


def test_multi_round_second_turn_refers_to_the_first_and_draws_it():
    p = render(load_template("multi-round"), n_images=2, variables={"first": "dog", "relation": "chasing"})
    first, second = p.turns
    assert not first.draw_previous and second.draw_previous
    assert "dog" in first.text
    assert "the object that the dog is chasing" in second.text and "previous round" in second.text


def test_visual_prompt_looks_in_the_other_images():
    t = load_template("visual-prompt")
    assert t.visual_prompt and t.answer.images == "others"
    p = render(t, n_images=3, variables={"label": "mug"})
    assert p.allowed_images == (2, 3) and p.visual_prompt and p.ontology == {"mug": "mug"}
    assert "other images" in p.turns[0].text
    single = render(t, n_images=1)
    assert single.allowed_images == (1,) and "other images" not in single.turns[0].text


def test_ontology_template_labels_every_class_and_allows_rejection():
    t = load_template("ontology")
    assert t.answer.allow_rejection and t.ontology == "{{ classes }}"
    p = render(t, n_images=2, variables={"classes": "horse, kitten=cat"})
    assert p.ontology == {"horse": "horse", "kitten": "cat"}
    assert "classes in every image: horse, kitten." in p.turns[0].text


def test_numerical_counts_one_label():
    p = render(load_template("numerical"), n_images=3, variables={"object": "car"})
    assert p.ontology == {"car": "car"} and "Count every car in each image" in p.turns[0].text


# -- hashing ------------------------------------------------------------------------------------
def test_hash_is_stable_and_follows_content(tmp_path):
    data = {"name": "mugs", "turns": ["Segment every mug."], "ontology": ["mug"]}
    a = load_template(str(write(tmp_path / "a.yaml", data)))
    b = load_template(str(write(tmp_path / "b.yaml", dict(data))))
    assert a.content_hash == b.content_hash == Template.model_validate(data).content_hash
    assert len(a.content_hash) == 12
    # a plain-string turn and its {text: ...} form are the same template
    assert Template.model_validate({**data, "turns": [{"text": "Segment every mug."}]}).content_hash == a.content_hash
    changed = [{**data, "turns": ["Segment every cup."]}, {**data, "ontology": ["cup"]},
               {**data, "answer": {"images": "first"}}, {**data, "system": "Be brief."}]
    hashes = {Template.model_validate(d).content_hash for d in changed}
    assert len(hashes) == len(changed) and a.content_hash not in hashes


def test_builtin_hash_matches_its_file_content():
    for t in builtin_templates():
        data = yaml.safe_load((BUILTIN_DIR / f"{t.name}.yaml").read_text())
        assert Template.model_validate(data).content_hash == t.content_hash


# -- errors name the file and the field ---------------------------------------------------------
@pytest.mark.parametrize("data, field", [
    ({"name": "t", "turns": ["x"], "colour": "red"}, "colour"),
    ({"name": "t", "turns": ["x"], "answer": {"max_targets": "many"}}, "answer.max_targets"),
    ({"name": "t", "turns": ["x"], "answer": {"images": "middle"}}, "answer.images"),
    ({"name": "t", "turns": [{"text": "x", "draw_previous": "sometimes"}]}, "turns.0.draw_previous"),
    ({"name": "t"}, "turns"),
    ({"name": "t", "turns": []}, "turns"),
    ({"name": "bad name!", "turns": ["x"]}, "name"),
    ({"turns": ["x"]}, "name"),
])
def test_yaml_errors_name_the_file_and_the_field(tmp_path, data, field):
    path = write(tmp_path / "mine.yaml", data)
    with pytest.raises(AutolabelError) as e:
        load_template(str(path))
    # a union-typed field (answer.images) comes with pydantic's member tag after it
    assert str(e.value).startswith(f"{path}: field ") and re.search(rf"field ['\"]{re.escape(field)}\b", str(e.value))


@pytest.mark.parametrize("text, says", [("name: [unclosed\n", "not valid YAML"),
                                        ("- just\n- a list\n", "must be a YAML mapping")])
def test_files_that_are_not_a_mapping_are_refused(tmp_path, text, says):
    path = write(tmp_path / "broken.yaml", text)
    with pytest.raises(AutolabelError, match=says) as e:
        load_template(str(path))
    assert str(path) in str(e.value)


def test_unknown_template_names_the_builtins(tmp_path):
    with pytest.raises(AutolabelError, match="unknown prompt template 'nope'.*multi-target"):
        load_template("nope")
    with pytest.raises(AutolabelError, match="not found"):
        load_template(str(tmp_path / "missing.yaml"))


def test_missing_variable_names_it_and_the_turn():
    t = Template(name="t", turns=["Find the {{ thing }} near the {{ place }}."], variables={"place": "table"})
    with pytest.raises(AutolabelError, match=r"template 't', turns\[0\]: variable 'thing' is undefined"):
        render(t, n_images=1)
    t = Template(name="t", turns=["ok"], ontology="{{ classes }}")
    with pytest.raises(AutolabelError, match="ontology: variable 'classes' is undefined"):
        render(t, n_images=1)


def test_var_overrides_defaults():
    t = Template(name="t", turns=["Segment the {{ thing }} in {{ images | join(' and ') }}."],
                 variables={"thing": {"default": "mug", "description": "what"}}, ontology="{{ thing }}")
    assert render(t, n_images=2).turns[0].text == "Segment the mug in Image 1 and Image 2."
    p = render(t, n_images=2, variables={"thing": "cup"})
    assert p.turns[0].text == "Segment the cup in Image 1 and Image 2." and p.ontology == {"cup": "cup"}
    # a plain value in YAML is the default
    assert Template(name="t", turns=["x"], variables={"n": 3}).variables["n"].default == "3"


def test_context_has_group_and_files():
    t = Template(name="t", turns=["{{ group_id }}: {{ num_images }} files, first {{ files[0] }}"])
    p = render(t, n_images=2, group_id="shop/7", files=["a.jpg", "b.jpg"])
    assert p.turns[0].text == "shop/7: 2 files, first a.jpg"


# -- sandbox ------------------------------------------------------------------------------------
@pytest.mark.parametrize("expression", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ images.__class__.__base__ }}",
    "{{ images.append('Image 9') }}",
    "{{ self.__init__.__globals__ }}",
])
def test_sandbox_refuses_unsafe_expressions(expression):
    """Each of these runs in plain Jinja2 (class hierarchy, module globals, mutating the context)."""
    t = Template(name="t", turns=[expression])
    with pytest.raises(AutolabelError, match=r"template 't', turns\[0\]: .*unsafe"):
        render(t, n_images=2)


def test_variables_are_inserted_as_text_not_rendered():
    t = Template(name="t", turns=["Q: {{ question }}"])
    p = render(t, n_images=1, variables={"question": "{{ ''.__class__.__mro__ }}"})
    assert p.turns[0].text == "Q: {{ ''.__class__.__mro__ }}"


# -- ontology forms -----------------------------------------------------------------------------
def test_ontology_as_mapping_list_and_rendered_string():
    mapping = Template(name="t", turns=["x"], ontology={"cup": "mug", "{{ extra }}": "plate"},
                       variables={"extra": "saucer"})
    assert render(mapping, n_images=1).ontology == {"cup": "mug", "saucer": "plate"}
    listed = Template(name="t", turns=["x"], ontology=["mug", "cup=mug", " plate "])
    p = render(listed, n_images=1)
    assert p.ontology == {"mug": "mug", "cup": "mug", "plate": "plate"} and p.categories == ["mug", "plate"]
    string = Template(name="t", turns=["x"], ontology="{{ classes }}", variables={"classes": "person"})
    assert render(string, n_images=1, variables={"classes": "a, b=c, , d"}).ontology == {"a": "a", "b": "c", "d": "d"}
    assert render(Template(name="t", turns=["x"]), n_images=1).ontology == {}


# -- answer rules -------------------------------------------------------------------------------
@pytest.mark.parametrize("images, n, expected", [
    ("all", 4, [1, 2, 3, 4]), ("all", 1, [1]),
    ("first", 4, [1]),
    ("others", 4, [2, 3, 4]), ("others", 1, [1]),
    ([1, 3, 9], 4, [1, 3]), ([2], 1, []),
])
def test_allowed_images(images, n, expected):
    assert AnswerRules(images=images).allowed_images(n) == expected


def test_answer_rules_reach_the_rendered_prompt(tmp_path):
    path = write(tmp_path / "firsts.yaml", {"name": "firsts", "turns": ["x"],
                                            "answer": {"images": [1, 3], "multiple_targets": False,
                                                       "allow_rejection": False, "max_targets": 2}})
    p = render(load_template(str(path)), n_images=3)
    assert p.allowed_images == (1, 3) and not p.rules.multiple_targets and not p.rules.allow_rejection
    assert p.rules.max_targets == 2


# -- user files ---------------------------------------------------------------------------------
def test_user_yaml_file_loads_by_path(tmp_path, monkeypatch):
    path = write(tmp_path / "shop mugs.yaml", """\
name: shop-mugs
version: 2
category: ontology
description: every mug
system: You see {{ num_images }} images.
turns:
  - Segment every {{ what }}.
  - text: Now the table under each {{ what }}.
    draw_previous: true
variables:
  what: {default: mug, description: the thing}
ontology: {mug: mug, table: table}
answer: {images: all, max_targets: 8}
""")
    t = load_template(str(path))
    assert t.name == "shop-mugs" and t.version == 2 and t.turns[1].draw_previous
    p = render(t, n_images=2, variables={"what": "cup"})
    assert [turn.text for turn in p.turns] == ["Segment every cup.", "Now the table under each cup."]
    assert p.system == "You see 2 images." and p.ontology == {"mug": "mug", "table": "table"}
    monkeypatch.chdir(tmp_path)  # a relative path works too
    assert load_template("shop mugs.yaml").name == "shop-mugs"


def test_prompts_render_cli_applies_var(tmp_path):
    from PIL import Image

    from autolabel.cli import app

    for name in ("1.png", "2.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    result = CliRunner().invoke(app, ["prompts", "render", "multi-target", str(tmp_path),
                                      "--var", "targets=cup=mug, plate"])
    assert result.exit_code == 0, result.output
    assert "appears: cup, plate." in result.output and "ontology: cup -> mug, plate" in result.output


def test_prompts_render_lists_a_folder_as_run_does(tmp_path):
    """Dotfiles (e.g. macOS `._2.png`) and folders are not images of the group; natural order."""
    from PIL import Image

    from autolabel.prompt_view import render_for_group
    from autolabel.sources import open_source

    group = tmp_path / "data" / "g"
    group.mkdir(parents=True)
    for name in ("10.png", "2.png", "._2.png", ".hidden.jpg"):
        Image.new("RGB", (8, 8)).save(group / name, format="PNG")
    (group / "sub.png").mkdir()
    text = render_for_group("multi-target", group, {})
    assert [line for line in text.splitlines() if line.startswith("Image ")] == ["Image 1: 2.png", "Image 2: 10.png"]
    [run_group] = list(open_source(tmp_path / "data"))
    assert [im.file for im in run_group.images] == ["g/2.png", "g/10.png"]
