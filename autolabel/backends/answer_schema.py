"""The JSON a VLM answers with: a schema built from a rendered template, and its typed parse.

The schema is what xgrammar constrains generation to, so it encodes the template's answer rules
(labels from the ontology, image numbers of the group, how many targets, whether rejection is
allowed) and bounds every string so that even a random model reaches the closing brace.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from autolabel.templates import RenderedPrompt


class InvalidAnswer(RuntimeError):
    """An answer that does not parse (its JSON was cut off at max_new_tokens) or breaks the rules.

    `raw` is the model's whole answer, kept in the error line so a user sees what it wrote."""

    def __init__(self, message: str, raw: str = ""):
        super().__init__(message)
        self.raw = raw


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


def answer_schema(prompt: RenderedPrompt, *, coord_max: int, limits: AnswerLimits = AnswerLimits()) -> dict:
    """JSON schema of one answer to `prompt`; coordinates are integers in [0, coord_max]."""
    rules = prompt.rules
    label = ({"type": "string", "enum": list(prompt.ontology)} if prompt.ontology
             else {"type": "string", "minLength": 1, "maxLength": limits.label})
    coord = {"type": "integer", "minimum": 0, "maximum": coord_max}
    target = {
        "type": "object",
        "properties": {
            "image": {"type": "integer", "enum": list(prompt.allowed_images)},
            "label": label,
            "phrase": {"type": "string", "maxLength": limits.phrase},
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
        "explanation": {"type": "string", "maxLength": limits.explanation},
        "targets": {"type": "array", "items": target, "minItems": n_min, "maxItems": n_max},
    }
    if rules.allow_rejection:
        absent = {"type": "object",
                  "properties": {"label": label, "reason": {"type": "string", "maxLength": limits.reason}},
                  "required": ["label", "reason"], "additionalProperties": False}
        properties["absent"] = {"type": "array", "items": absent, "maxItems": max(len(prompt.ontology), n_max)}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def parse_answer(text: str, prompt: RenderedPrompt, *, max_new_tokens: int | None = None) -> ParsedAnswer:
    """The typed answer; raises InvalidAnswer when the JSON did not close or breaks the rules."""
    try:
        data = json.loads(text, strict=False)  # xgrammar lets raw control characters into strings
        allowed = set(prompt.allowed_images)
        targets = tuple(
            ParsedTarget(image=int(t["image"]), label=str(t["label"]), phrase=str(t.get("phrase", "")),
                         box=tuple(int(v) for v in t["box"]),  # type: ignore[arg-type]
                         points=tuple((int(x), int(y)) for x, y in t.get("points", [])))
            for t in data["targets"])
        absent = tuple(ParsedAbsent(str(a["label"]), str(a.get("reason", ""))) for a in data.get("absent", []))
        explanation = str(data["explanation"])
    except (ValueError, KeyError, TypeError) as e:
        budget = f" within max_new_tokens={max_new_tokens}" if max_new_tokens else ""
        raise InvalidAnswer(f"the model's JSON answer did not complete{budget} ({e}); "
                            f"raise --max-new-tokens. Answer so far: {text[:200]!r}", text) from None
    bad = [t for t in targets if t.image not in allowed or len(t.box) != 4
           or (prompt.ontology and t.label not in prompt.ontology)]
    if bad:
        raise InvalidAnswer(f"answer names targets outside the template's rules: {bad[0]}", text)
    return ParsedAnswer(explanation, targets, absent)


def target_spans(text: str) -> list[tuple[int, int]]:
    """Character span of each object in the answer's "targets" array (compact JSON, as generated)."""
    key = '"targets": ['  # a quote inside a JSON string is escaped, so this can only be the key
    start = text.find(key)
    if start < 0:
        return []
    decoder, pos, spans = json.JSONDecoder(strict=False), start + len(key), []
    while pos < len(text) and text[pos] == "{":
        _, end = decoder.raw_decode(text, pos)
        spans.append((pos, end))
        pos = end + 2 if text.startswith(", ", end) else end
    return spans


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
