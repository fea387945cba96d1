"""The JSON a VLM answers with: a schema built from a rendered template, and its typed parse.

The schema is what xgrammar constrains generation to, so it encodes the template's answer rules
(labels from the ontology, image numbers of the group, how many targets, whether rejection is
allowed) and bounds every string so that even a random model reaches the closing brace.

Strings are written without escapes and without control characters (a `pattern`), so the longest
answer a schema allows is known in bytes (`answer_bytes`), and so in tokens: no token of a
byte-level vocabulary is shorter than a byte. That bound is the default token budget of a step,
so a schema-constrained answer always closes. An answer cut by a lower `--max-new-tokens` keeps
the targets it completed (`parse_truncated`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace

from autolabel.templates import RenderedPrompt


class InvalidAnswer(RuntimeError):
    """An answer that does not parse (not the JSON asked for) or breaks the template's rules.

    `raw` is the model's whole answer, kept in the error line so a user sees what it wrote."""

    def __init__(self, message: str, raw: str = ""):
        super().__init__(message)
        self.raw = raw


# A string character: anything but control characters (C0, DEL, C1), '"' and '\\'. With no escapes
# each character is written as itself, at most 4 bytes of UTF-8.
STRING_CHARACTER = r'[^\x00-\x1f\x7f-\x9f"\\]'
MAX_CHARACTER_BYTES = 4
_LENGTH = re.compile(r"\{(\d+),(\d+)\}\$$")


def text_schema(max_chars: int, min_chars: int = 0) -> dict:
    """A string of min..max characters, none of them a control character, a quote or a backslash.

    The length is in the pattern: xgrammar drops minLength/maxLength next to a pattern (and vLLM
    then leaves xgrammar for another grammar engine)."""
    return {"type": "string", "pattern": f"^{STRING_CHARACTER}{{{min_chars},{max_chars}}}$"}


@dataclass(frozen=True)
class AnswerLimits:
    """Longest strings and point lists the schema allows (characters / items)."""

    explanation: int = 600
    label: int = 40
    phrase: int = 80
    reason: int = 160
    points: int = 4

    @classmethod
    def from_options(cls, extra: dict) -> AnswerLimits:
        """`BackendOptions.extra["answer_limits"]`, e.g. {"explanation": 300}, over the defaults."""
        return cls(**extra.get("answer_limits", {}))


@dataclass(frozen=True)
class ParsedTarget:
    image: int  # 1-based, as the model numbers images
    label: str
    phrase: str
    box: tuple[int, int, int, int]  # in the model's coordinate frame
    points: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class ParsedAbsent:
    label: str
    reason: str


@dataclass(frozen=True)
class ParsedAnswer:
    explanation: str
    targets: tuple[ParsedTarget, ...]
    absent: tuple[ParsedAbsent, ...]
    truncated: bool = False  # cut at the token budget: only what was complete is here


def answer_schema(prompt: RenderedPrompt, *, coord_max: int, limits: AnswerLimits = AnswerLimits()) -> dict:
    """JSON schema of one answer to `prompt`; coordinates are integers in [0, coord_max]."""
    rules = prompt.rules
    label = ({"type": "string", "enum": list(prompt.ontology)} if prompt.ontology
             else text_schema(limits.label, min_chars=1))
    coord = {"type": "integer", "minimum": 0, "maximum": coord_max}
    target = {
        "type": "object",
        "properties": {
            "image": {"type": "integer", "enum": list(prompt.allowed_images)},
            "label": label,
            "phrase": text_schema(limits.phrase),
            "box": {"type": "array", "items": coord, "minItems": 4, "maxItems": 4},
            "points": {"type": "array", "maxItems": limits.points,
                       "items": {"type": "array", "items": coord, "minItems": 2, "maxItems": 2}},
        },
        "required": ["image", "label", "phrase", "box"],
        "additionalProperties": False,
    }
    # One target when the template wants one; none is allowed only if it may be judged absent.
    n_max = rules.max_targets if rules.multiple_targets else 1
    n_min = 0 if rules.allow_rejection or rules.multiple_targets else 1
    properties = {
        "explanation": text_schema(limits.explanation),
        "targets": {"type": "array", "items": target, "minItems": n_min, "maxItems": n_max},
    }
    if rules.allow_rejection:
        absent = {"type": "object",
                  "properties": {"label": label, "reason": text_schema(limits.reason)},
                  "required": ["label", "reason"], "additionalProperties": False}
        # each label of the ontology can be absent once; free labels: as many as targets
        properties["absent"] = {"type": "array", "items": absent, "maxItems": len(prompt.ontology) or n_max}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def answer_bytes(schema: dict) -> int:
    """The most UTF-8 bytes a JSON value of `schema` takes as xgrammar writes it (no whitespace but
    the space after ',' and ':'): every optional property present, every array full, every string
    at its longest in 4-byte characters, every integer at its widest."""
    if "enum" in schema:
        return max(max(len(json.dumps(v).encode()), len(json.dumps(v, ensure_ascii=False).encode()))
                   for v in schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        inner = sum(len(json.dumps(k, ensure_ascii=False).encode()) + 2 + answer_bytes(v)
                    for k, v in properties.items())
        return 2 + inner + 2 * max(len(properties) - 1, 0)
    if kind == "array":
        n = int(schema["maxItems"])
        return 2 + n * answer_bytes(schema["items"]) + 2 * max(n - 1, 0)
    if kind == "string":
        return 2 + MAX_CHARACTER_BYTES * _max_chars(schema)
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind == "boolean":
        return 5
    raise ValueError(f"no bound on the length of {schema}")


def answer_token_budget(schema: dict) -> int:
    """Tokens enough for the longest answer `schema` allows, and its stop token: every token of a
    byte-level vocabulary (Qwen's, and any with byte fallback) is at least one byte long, so a
    model cannot run out even when it spells the answer byte by byte."""
    return answer_bytes(schema) + 1


def _max_chars(schema: dict) -> int:
    if "pattern" in schema:
        m = _LENGTH.search(schema["pattern"])
        if m is None:
            raise ValueError(f"no bound on the length of strings matching {schema['pattern']!r}")
        return int(m[2])
    return int(schema["maxLength"])


def parse_answer(text: str, prompt: RenderedPrompt, *, max_new_tokens: int | None = None) -> ParsedAnswer:
    """The typed answer; raises InvalidAnswer when the JSON did not close or breaks the rules.

    `max_new_tokens`: the budget the answer was cut at, named in the error (None: not cut)."""
    try:
        data = json.loads(text, strict=False)  # a server may let raw control characters into strings
        answer = _typed(data, prompt)
    except (ValueError, KeyError, TypeError) as e:
        if max_new_tokens:
            message = (f"the model's JSON answer did not complete within max_new_tokens={max_new_tokens} "
                       f"({e}); raise --max-new-tokens")
        else:
            message = f"the model's answer is not the JSON asked for ({e})"
        raise InvalidAnswer(f"{message}. Answer so far: {text[:200]!r}", text) from None
    return _checked(answer, prompt, text)


def parse_truncated(text: str, prompt: RenderedPrompt) -> ParsedAnswer:
    """What an answer cut at the token budget completed: its explanation as far as it got, and
    every target and absent object that closed; `truncated` is set. Raises InvalidAnswer only
    when a completed target breaks the template's rules."""
    data = {"explanation": _partial_string(text, "explanation"),
            "targets": [json.loads(text[a:b], strict=False) for a, b in _object_spans(text, "targets")],
            "absent": [json.loads(text[a:b], strict=False) for a, b in _object_spans(text, "absent")]}
    try:
        answer = _typed(data, prompt)
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidAnswer(f"the model's answer was cut at the token budget and a completed target does "
                            f"not read ({e}). Answer so far: {text[:200]!r}", text) from None
    return replace(_checked(answer, prompt, text), truncated=True)


def answer_json(answer: ParsedAnswer, prompt: RenderedPrompt) -> str:
    """`answer` as the JSON the schema asks for (keys in its order, xgrammar's spacing): what a cut
    answer is replayed as in later rounds, so the model reads a closed object."""
    targets = [{"image": t.image, "label": t.label, "phrase": t.phrase, "box": list(t.box),
                **({"points": [list(p) for p in t.points]} if t.points else {})} for t in answer.targets]
    data: dict = {"explanation": answer.explanation, "targets": targets}
    if prompt.rules.allow_rejection:
        data["absent"] = [{"label": a.label, "reason": a.reason} for a in answer.absent]
    return json.dumps(data, ensure_ascii=False)


def _typed(data: dict, prompt: RenderedPrompt) -> ParsedAnswer:
    targets = tuple(
        ParsedTarget(image=int(t["image"]), label=str(t["label"]), phrase=str(t.get("phrase", "")),
                     box=tuple(int(v) for v in t["box"]),  # type: ignore[arg-type]
                     points=tuple((int(x), int(y)) for x, y in t.get("points", [])))
        for t in data["targets"])
    absent = tuple(ParsedAbsent(str(a["label"]), str(a.get("reason", ""))) for a in data.get("absent", []))
    return ParsedAnswer(str(data["explanation"]), targets, absent)


def _checked(answer: ParsedAnswer, prompt: RenderedPrompt, text: str) -> ParsedAnswer:
    allowed = set(prompt.allowed_images)
    bad = [t for t in answer.targets if t.image not in allowed or len(t.box) != 4
           or (prompt.ontology and t.label not in prompt.ontology)]
    if bad:
        raise InvalidAnswer(f"answer names targets outside the template's rules: {bad[0]}", text)
    return answer


def _partial_string(text: str, key: str) -> str:
    """The string value of top-level `key`, or as much of it as was written before the cut."""
    head = f'"{key}": "'
    start = text.find(head)
    if start < 0:
        return ""
    start += len(head) - 1
    try:
        return json.JSONDecoder(strict=False).raw_decode(text, start)[0]
    except ValueError:  # cut inside the string: close it after the last whole character
        rest = re.sub(r"\\(u[0-9a-fA-F]{0,3})?$", "", text[start + 1:])
        try:
            return json.loads(f'"{rest}"', strict=False)
        except ValueError:
            return rest


def _object_spans(text: str, key: str) -> list[tuple[int, int]]:
    """Character span of each complete object in the top-level array `key` (compact JSON, as
    generated); an object cut off at the end of `text` is left out."""
    head = f'"{key}": ['  # a quote inside a JSON string is escaped, so this can only be the key
    start = text.find(head)
    if start < 0:
        return []
    decoder, pos, spans = json.JSONDecoder(strict=False), start + len(head), []
    while pos < len(text) and text[pos] == "{":
        try:
            _, end = decoder.raw_decode(text, pos)
        except ValueError:
            break
        spans.append((pos, end))
        pos = end + 2 if text.startswith(", ", end) else end
    return spans


def target_spans(text: str) -> list[tuple[int, int]]:
    """Character span of each complete object in the answer's "targets" array."""
    return _object_spans(text, "targets")


def span_confidences(text: str, token_ends: list[int], logprobs: list[float]) -> list[float]:
    """Mean token probability over each target's JSON object in `text`.

    `token_ends[k]` is the character offset where token k ends; a token counts for a target when
    it overlaps the target's span. In-process generation and a server's `logprobs` both end here.
    """
    starts = [0, *token_ends[:-1]]
    probs = [math.exp(lp) for lp in logprobs]
    out = []
    for a, b in target_spans(text):
        inside = [p for s, e, p in zip(starts, token_ends, probs) if s < b and e > a]
        out.append(sum(inside) / len(inside) if inside else 1.0)
    return out
