"""`vlm-sam`: a chat VLM reasons over a whole group, a SAM-family head draws the masks.

Per batch and per turn: the backend builds each group's chat, images and JSON schema
(answer_schema.py) and a reasoner answers them: in this process with one constrained transformers
`generate` (local_reasoner.py), or on a serving engine such as vLLM (`--server URL`,
server_reasoner.py). The boxes and points are mapped back to original pixels (vlm_coords.py) and
sent to the mask head, which encodes each image once per (group, file) and reuses it; one thread
owns the head (mask_batcher.py), so concurrent server answers are segmented together.

A segment's score is the head's predicted IoU times the mean probability the VLM gave the tokens
of that target's JSON object, so a box the model hesitated on scores lower than a confident one.

By default a step may generate as many tokens as the longest answer its schema allows, so an
answer always closes; one cut by a lower `--max-new-tokens` keeps the targets it completed and
is marked `truncated`, and the group does not fail.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autolabel.backends import BUILTIN_BACKENDS
from autolabel.backends.answer_schema import (AnswerLimits, InvalidAnswer, ParsedAnswer, answer_json, answer_schema,
                                              parse_answer, parse_truncated, span_confidences)
from autolabel.backends.base import Answer, Backend, BackendOptions, Request, TargetMask, TurnAnswer
from autolabel.backends.chat import PastTurn, build_chat, draw_images
from autolabel.backends.reasoning import Generated, ImageNotAccepted, Reasoner, ReasonStep
from autolabel.backends.vlm_coords import ImageFrame
from autolabel.errors import InputError
from autolabel.prediction import Rejection
from autolabel.templates import RenderedPrompt

EXEMPLAR_IOU = 0.5  # a target box this close to an exemplar box on the same image uses the exemplar
FRAME_CACHE_SIZE = 1024  # images whose frame is kept: every template and turn of a group reuses it


@dataclass
class _GroupState:
    """One request through the turns: its image frames and the turns answered so far."""

    request: Request
    frames: list[ImageFrame]
    past: list[PastTurn] = field(default_factory=list)
    failed: Exception | None = None


@dataclass
class _Reasoned:
    parsed: ParsedAnswer
    raw: str  # what later rounds replay: the model's JSON, or a cut answer's completed part, closed
    confidence: list[float]  # per target, in order


class VlmSamBackend(Backend):
    """Options read from `BackendOptions.extra` (all optional):

    - "coordinates": "pixels" or "relative-1000", for a model family not in FAMILY_FRAMES
      (unknown families are read as Qwen2.5-VL's pixels of the resized input);
    - "generate": extra `generate()` arguments, e.g. {"do_sample": True, "temperature": 0.7}
      (the default is greedy decoding, so reruns give the same labels);
    - "answer_limits": longest strings of the JSON answer (see AnswerLimits);
    - with `--server`: "request" (extra chat-completion fields, e.g. {"temperature": 0.2}),
      "max_image_pixels", "image_format" (png, jpeg), "timeout" (s), "retries".
    """

    name = "vlm-sam"
    default_model = BUILTIN_BACKENDS[name].default_model  # the registry names the defaults
    default_mask_model = BUILTIN_BACKENDS[name].default_mask_model

    def __init__(self, options: BackendOptions):
        super().__init__(options)
        from autolabel.backends.local_reasoner import snapshot_revision
        from autolabel.backends.mask_batcher import MaskBatcher
        from autolabel.backends.mask_heads import load_mask_head
        from autolabel.loading import pick_device, pick_dtype

        self.device = pick_device(options.device)
        self.dtype = pick_dtype(options.dtype, self.device)
        self.limits = AnswerLimits.from_options(options.extra)
        self.reasoner: Reasoner
        if options.server:
            from autolabel.backends.server_reasoner import ServerReasoner

            self.reasoner = ServerReasoner(options)
        else:
            from autolabel.backends.local_reasoner import TransformersReasoner

            self.reasoner = TransformersReasoner(self.model_id, options, self.device, self.dtype)
        self.mask_model = options.mask_model or self.default_mask_model
        self.mask_head = load_mask_head(self.mask_model, device=self.device, dtype=self.dtype)
        self.masks = MaskBatcher(self.mask_head)
        self._mask_info = {"mask_model": self.mask_head.model_id, "mask_revision": snapshot_revision(self.mask_head.source),
                           "device": self.device, "dtype": str(self.dtype),
                           "max_new_tokens": options.max_new_tokens or "auto (the longest answer the schema allows)"}
        self._frames: OrderedDict[tuple, ImageFrame] = OrderedDict()

    def model_info(self) -> dict[str, Any]:
        return {**self.reasoner.info(), **self._mask_info}

    def stats(self) -> dict[str, Any]:
        return {"mask_head_s": round(self.masks.busy_s, 3), **self.reasoner.stats()}

    def close(self) -> None:
        """Drop the model and mask head so their memory can be freed (model_info and stats stay valid)."""
        self.masks.close()
        self.reasoner.close()
        del self.mask_head

    def frames(self, images: list[np.ndarray]) -> list[ImageFrame]:
        return self.reasoner.frames(images)

    def _state(self, request: Request) -> _GroupState:
        """A request's frames (kept per group image for its other templates); an image the model
        cannot take fails the request alone, naming the file."""
        group = request.group
        keys = [(group.id, ref.file, im.shape[:2]) for ref, im in zip(group.images, request.images)]
        if not all(k in self._frames for k in keys):
            try:
                frames = self.frames(request.images)
            except ImageNotAccepted as e:
                return _GroupState(request, [], failed=InputError(group.images[e.index].file, e.reason))
            for k, f in zip(keys, frames):
                self._frames[k] = f
                if len(self._frames) > FRAME_CACHE_SIZE:
                    self._frames.popitem(last=False)
        for k in keys:
            self._frames.move_to_end(k)
        return _GroupState(request, [self._frames[k] for k in keys])

    # -- one batch ------------------------------------------------------------------------
    def predict(self, requests: list[Request]) -> list[Answer | Exception]:
        """An answer per request; a request whose answer cannot be read fails alone (its Exception)."""
        states = [self._state(r) for r in requests]
        for t in range(max(len(r.prompt.turns) for r in requests)):
            active = [s for s in states if t < len(s.request.prompt.turns) and s.failed is None]
            reasoned = self._reason(active, t)
            for s, r in zip(active, reasoned):
                if isinstance(r, Exception):
                    s.failed = r
            answered = [(s, r) for s, r in zip(active, reasoned) if not isinstance(r, Exception)]
            targets = self._segment([s for s, _ in answered], [r for _, r in answered], t)
            for (state, r), masks in zip(answered, targets):
                prompt = state.request.prompt
                rejected = [Rejection(label=a.label, category=prompt.ontology.get(a.label, a.label), phrase=a.label,
                                      reason=a.reason, round=t) for a in r.parsed.absent]
                turn = TurnAnswer(question=prompt.turns[t].text, answer=r.parsed.explanation, masks=masks,
                                  rejected=rejected, truncated=r.parsed.truncated)
                state.past.append(PastTurn(turn, r.raw))
        return [s.failed or Answer([p.answer for p in s.past]) for s in states]

    # -- reasoning: one step per group for turn t ------------------------------------------
    def steps(self, states: list[_GroupState], t: int) -> list[ReasonStep]:
        """What the model is asked at turn t: chat, images as it sees them, and the answer's schema."""
        out = []
        for s in states:
            r = s.request
            out.append(ReasonStep(
                chat=build_chat(r.prompt, r.group, s.frames, self.reasoner.frame, s.past),
                images=draw_images(r.images, r.group, s.past, draw_previous=r.prompt.turns[t].draw_previous),
                frames=s.frames,
                schema=answer_schema(r.prompt, coord_max=max(f.coord_max for f in s.frames), limits=self.limits)))
        return out

    def _reason(self, states: list[_GroupState], t: int) -> list[_Reasoned | Exception]:
        if not states:
            return []
        results: list[_Reasoned | Exception] = []
        steps = self.steps(states, t)
        for s, g in zip(states, self.reasoner.reason(steps)):
            if isinstance(g, Exception):
                results.append(g)
                continue
            try:
                parsed, raw = self._read(g, s.request.prompt)
            except Exception as e:  # noqa: BLE001 - InvalidAnswer: this group fails, the batch goes on
                results.append(e)
                continue
            n = len(parsed.targets)
            confidence = (span_confidences(g.text, g.token_ends, g.logprobs) if g.logprobs is not None
                          else [1.0] * n)
            results.append(_Reasoned(parsed, raw, (confidence + [1.0] * n)[:n]))
        return results

    @staticmethod
    def _read(g: Generated, prompt: RenderedPrompt) -> tuple[ParsedAnswer, str]:
        """The typed answer and the JSON later rounds replay. An answer cut at the budget keeps
        what it completed (marked truncated) instead of failing its group."""
        try:
            return parse_answer(g.text, prompt, max_new_tokens=g.cut_at), g.text
        except InvalidAnswer:
            if not g.truncated:
                raise
        parsed = parse_truncated(g.text, prompt)
        return parsed, answer_json(parsed, prompt)

    # -- masks: every target of every image of the batch through the mask head at once -------
    def _segment(self, states: list[_GroupState], answers: list[_Reasoned], t: int) -> list[list[TargetMask]]:
        if any(getattr(s.request.group, "video", None) is not None for s in states):
            from autolabel.backends.tracking import segment_with_clips  # a clip's targets are tracked

            return segment_with_clips(self, states, answers, t, _exemplar_box)
        from autolabel.backends.mask_heads.base import PromptSet, TextPromptedHead

        if isinstance(self.mask_head, TextPromptedHead):
            return [self._segment_by_phrase(s, a, t) for s, a in zip(states, answers)]

        sets, owners = [], []  # owners[j]: (state index, the targets of prompt set j)
        for si, (s, answer) in enumerate(zip(states, answers)):
            parsed = answer.parsed
            by_set: dict[tuple[int, int], list[tuple[int, np.ndarray, np.ndarray]]] = {}
            for k, target in enumerate(parsed.targets):
                i = target.image - 1
                frame = s.frames[i]
                box = _exemplar_box(frame.box_to_original(target.box), s.request.group.images[i].prompt)
                points = frame.to_original(np.array(target.points, dtype=np.float64).reshape(-1, 2))
                by_set.setdefault((i, len(points)), []).append((k, box, points))
            for (i, n_points), items in by_set.items():
                group = s.request.group
                sets.append(PromptSet(
                    image_key=(group.id, group.images[i].file), image=s.request.images[i],
                    boxes=np.stack([b for _, b, _ in items]).astype(np.float32),
                    points=np.stack([p for _, _, p in items]).astype(np.float32) if n_points else None,
                    point_labels=np.ones((len(items), n_points), dtype=np.int64) if n_points else None))
                owners.append((si, i, [k for k, _, _ in items]))
        results = self.masks.predict(sets)
        masks: list[dict[int, TargetMask]] = [{} for _ in states]
        for (si, i, ks), result in zip(owners, results):
            parsed, confidence = answers[si].parsed, answers[si].confidence
            prompt = states[si].request.prompt
            for j, k in enumerate(ks):
                target = parsed.targets[k]
                masks[si][k] = TargetMask(
                    image=i, label=target.label, category=prompt.ontology.get(target.label, target.label),
                    phrase=target.phrase or target.label, mask=np.asarray(result.masks[j], dtype=bool),
                    score=float(result.scores[j]) * confidence[k], round=t)
        return [[m[k] for k in sorted(m)] for m in masks]

    def _segment_by_phrase(self, state: _GroupState, answer: _Reasoned, t: int) -> list[TargetMask]:
        """A text-prompted head (SAM 3): the VLM says which labels are in which image; the head
        segments every instance of that label there (exhaustive ontology labeling)."""
        parsed, confidence = answer.parsed, answer.confidence
        prompt, group = state.request.prompt, state.request.group
        asked: dict[tuple[int, str], float] = {}
        for k, target in enumerate(parsed.targets):
            key = (target.image - 1, target.label)
            asked[key] = max(asked.get(key, 0.0), confidence[k])
        masks = []
        for (i, label), conf in asked.items():
            (found,) = self.masks.call(self.mask_head.segment_text, (group.id, group.images[i].file),
                                       state.request.images[i], [label])
            masks += [TargetMask(image=i, label=label, category=prompt.ontology.get(label, label), phrase=label,
                                 mask=m, score=float(score) * conf, round=t)
                      for m, score in zip(found.masks, found.scores)]
        return masks


def _exemplar_box(box: np.ndarray, prompt) -> np.ndarray:
    """The user's exemplar box when the model's box is on it (exact pixels beat a VLM's guess)."""
    for exemplar in (prompt.boxes if prompt is not None else ()):
        if _iou(box, np.asarray(exemplar, dtype=np.float64)) >= EXEMPLAR_IOU:
            return np.asarray(exemplar, dtype=np.float64)
    return box


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0
