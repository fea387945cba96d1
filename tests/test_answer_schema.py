"""The answer schema follows the template's rules, xgrammar enforces it, and the parse is typed."""

from __future__ import annotations

import json

import pytest

from autolabel.backends.answer_schema import (AnswerLimits, InvalidAnswer, ParsedTarget, answer_bytes, answer_json,
                                              answer_schema, answer_token_budget, parse_answer, parse_truncated,
                                              target_spans)
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
    # 1..7 characters, as a pattern (xgrammar drops min/maxLength next to one): no control characters
    assert free["properties"]["targets"]["items"]["properties"]["label"] == {
        "type": "string", "pattern": '^[^\\x00-\\x1f\\x7f-\\x9f"\\\\]{1,7}$'}


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


def test_strings_never_hold_control_characters(compiler):
    schema = answer_schema(render(Template(name="f", turns=["what?"]), n_images=2), coord_max=99)
    good = {"image": 1, "label": "cup", "phrase": "the cup", "box": [1, 2, 3, 4]}

    def raw(text: str, where: str) -> str:  # an answer with `text` written as is (json.dumps would escape it)
        answer = {"explanation": "e@" if where == "explanation" else "e",
                  "targets": [{**good, where: "a@"}] if where != "explanation" else [good], "absent": []}
        return json.dumps(answer, ensure_ascii=False).replace("@", text)

    assert _accepts(compiler, schema, raw("A mug, une tasse, 杯子 😀.", "explanation"))
    for bad in ("\x01", "\t", "\n", "\x1b[31m", "\x7f", "\x85", '\\"', "\\u0001"):
        for where in ("explanation", "phrase", "label"):
            assert not _accepts(compiler, schema, raw(bad, where)), (bad, where)


def _longest(schema: dict):
    """The longest value `schema` allows: strings of 4-byte characters, full arrays, wide integers."""
    if "enum" in schema:
        return max(schema["enum"], key=lambda v: len(json.dumps(v, ensure_ascii=False).encode()))
    if schema["type"] == "object":
        return {k: _longest(v) for k, v in schema["properties"].items()}
    if schema["type"] == "array":
        return [_longest(schema["items"])] * schema["maxItems"]
    if schema["type"] == "integer":
        return max(schema["minimum"], schema["maximum"], key=lambda v: len(str(v)))
    n = int(schema["pattern"].rsplit(",", 1)[1].split("}")[0])
    return "😀" * n


@pytest.mark.parametrize("rules", [{}, {"images": "others", "max_targets": 3}, {"multiple_targets": False,
                                                                                 "allow_rejection": False}])
def test_answer_bytes_is_the_longest_answer_the_grammar_takes(compiler, rules):
    """The auto token budget is exact: xgrammar takes the longest answer, byte for byte what
    answer_bytes counts, and not one character more in any string."""
    schema = answer_schema(_prompt(**rules), coord_max=1000, limits=AnswerLimits(explanation=50, phrase=9, reason=7))
    longest = _longest(schema)
    text = json.dumps(longest, ensure_ascii=False)  # xgrammar's spacing: ", " and ": "
    assert _accepts(compiler, schema, text)
    assert len(text.encode()) == answer_bytes(schema) and answer_token_budget(schema) == answer_bytes(schema) + 1
    assert not _accepts(compiler, schema, json.dumps({**longest, "explanation": longest["explanation"] + "a"},
                                                     ensure_ascii=False))
    free = answer_schema(render(Template(name="f", turns=["what?"]), n_images=1), coord_max=7)
    assert _accepts(compiler, free, json.dumps(_longest(free), ensure_ascii=False))
    assert len(json.dumps(_longest(free), ensure_ascii=False).encode()) == answer_bytes(free)


def test_a_cut_answer_keeps_its_completed_targets():
    prompt = _prompt()
    targets = [{"image": 1, "label": "mug", "phrase": "left mug", "box": [1, 2, 30, 40]},
               {"image": 2, "label": "cup", "phrase": "cup", "box": [5, 6, 7, 8], "points": [[6, 7]]},
               {"image": 3, "label": "plate", "phrase": "plate", "box": [0, 0, 9, 9]}]
    text = _answer(targets, [{"label": "plate", "reason": "none"}], explanation="three things")
    ends = [b for _, b in target_spans(text)]
    assert len(ends) == 3
    for cut in range(len(text)):  # wherever the budget ran out, nothing raises
        parsed = parse_truncated(text[:cut], prompt)
        assert parsed.truncated
        assert len(parsed.targets) == sum(end <= cut for end in ends)
        assert [t.label for t in parsed.targets] == [t["label"] for t in targets][:len(parsed.targets)]
        assert "three things".startswith(parsed.explanation)
        replay = json.loads(answer_json(parsed, prompt))  # what a later round reads: closed JSON
        assert len(replay["targets"]) == len(parsed.targets) and "absent" in replay
    whole = parse_truncated(text, prompt)
    assert whole.targets == parse_answer(text, prompt).targets and whole.absent[0].label == "plate"
    with pytest.raises(InvalidAnswer, match="outside the template's rules"):  # a completed target is still checked
        parse_truncated(_answer([{**targets[0], "image": 9}], [])[:-5], prompt)


def test_an_answer_that_is_not_json_says_so_without_blaming_the_budget():
    with pytest.raises(InvalidAnswer, match="not the JSON asked for") as e:
        parse_answer("I think the mug is on the left.", _prompt())
    assert "max-new-tokens" not in str(e.value)
