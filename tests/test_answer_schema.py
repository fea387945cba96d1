"""The answer schema follows the template's rules, xgrammar enforces it, and the parse is typed."""

from __future__ import annotations

import json

import pytest

from autolabel.backends.answer_schema import (AnswerLimits, InvalidAnswer, ParsedTarget, answer_schema,
                                              parse_answer, target_spans)
from autolabel.templates import AnswerRules, Template, render


def _prompt(n_images=3, **rules):
    template = Template(name="t", turns=["Find the mug."], ontology=["mug", "cup=mug", "plate"],
                        answer=AnswerRules(**rules))
    return render(template, n_images=n_images)


@pytest.fixture(scope="module")
def compiler():
    import xgrammar as xgr

    from tests.tiny_vlm import qwen_tokenizer

    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(qwen_tokenizer(), vocab_size=384))


def _accepts(compiler, schema: dict, text: str) -> bool:
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))
    return matcher.accept_string(text) and matcher.is_completed()


def _answer(targets, absent=None, explanation="ok"):
    out = {"explanation": explanation, "targets": targets}
    if absent is not None:
        out["absent"] = absent
    return json.dumps(out)


def test_schema_follows_the_rules():
    schema = answer_schema(_prompt(images="others", max_targets=2), coord_max=640)
    target = schema["properties"]["targets"]
    assert target["maxItems"] == 2
    assert target["items"]["properties"]["image"]["enum"] == [2, 3]
    assert target["items"]["properties"]["label"]["enum"] == ["mug", "cup", "plate"]
    assert target["items"]["properties"]["box"]["items"]["maximum"] == 640
    assert schema["required"] == ["explanation", "targets", "absent"]

    single = answer_schema(_prompt(multiple_targets=False, allow_rejection=False), coord_max=1000)
    assert (single["properties"]["targets"]["minItems"], single["properties"]["targets"]["maxItems"]) == (1, 1)
    assert "absent" not in single["properties"]

    free = answer_schema(render(Template(name="f", turns=["what?"]), n_images=1), coord_max=1000,
                         limits=AnswerLimits(label=7))
    assert free["properties"]["targets"]["items"]["properties"]["label"] == {
        "type": "string", "minLength": 1, "maxLength": 7}


def test_grammar_enforces_labels_images_coordinates_and_lengths(compiler):
    schema = answer_schema(_prompt(images="others", max_targets=2), coord_max=640,
                           limits=AnswerLimits(explanation=10))
    good = {"image": 2, "label": "cup", "phrase": "the cup", "box": [1, 2, 640, 30]}
    assert _accepts(compiler, schema, _answer([good], []))
    assert _accepts(compiler, schema, _answer([{**good, "points": [[3, 4]]}], [{"label": "plate", "reason": "none"}]))
    assert not _accepts(compiler, schema, _answer([{**good, "image": 1}], []))  # image 1 not allowed
    assert not _accepts(compiler, schema, _answer([{**good, "label": "dog"}], []))  # not in the ontology
    assert not _accepts(compiler, schema, _answer([{**good, "box": [1, 2, 641, 30]}], []))  # out of range
    assert not _accepts(compiler, schema, _answer([good] * 3, []))  # more than max_targets
    assert not _accepts(compiler, schema, _answer([good], [], explanation="x" * 11))  # too long


def test_parse_answer_types_and_failures():
    prompt = _prompt()
    parsed = parse_answer(_answer([{"image": 2, "label": "mug", "phrase": "a mug", "box": [1, 2, 3, 4],
                                    "points": [[2, 3]]}], [{"label": "plate", "reason": "no plate"}],
                                  explanation="mug on the right"), prompt)
    assert parsed.explanation == "mug on the right"
    assert parsed.targets == (ParsedTarget(2, "mug", "a mug", (1, 2, 3, 4), ((2, 3),)),)
    assert parsed.absent[0].label == "plate" and parsed.absent[0].reason == "no plate"

    cut = _answer([{"image": 2, "label": "mug", "phrase": "a mug", "box": [1, 2, 3, 4]}], [])[:-12]
    with pytest.raises(InvalidAnswer, match="max_new_tokens=64"):
        parse_answer(cut, prompt, max_new_tokens=64)
    with pytest.raises(InvalidAnswer, match="outside the template's rules"):
        parse_answer(_answer([{"image": 9, "label": "mug", "phrase": "", "box": [1, 2, 3, 4]}], []), prompt)


def test_target_spans_cover_each_target_object():
    targets = [{"image": 1, "label": "mug", "phrase": "a {weird} \"targets\": [ phrase", "box": [1, 2, 3, 4]},
               {"image": 2, "label": "cup", "phrase": "}", "box": [5, 6, 7, 8], "points": [[1, 1]]}]
    text = _answer(targets, [], explanation='he said "targets": [ {')
    spans = target_spans(text)
    assert [json.loads(text[a:b]) for a, b in spans] == targets
    assert target_spans('{"explanation": "x", "targets": []}') == []
