"""`vlm-sam`: a transformers chat VLM reasons over a whole group, a SAM-family head draws the masks.

Per batch and per turn: one left-padded `generate` over every group that has that turn, each
answer constrained by xgrammar to the JSON schema of its template (answer_schema.py); the boxes
and points are mapped back to original pixels (vlm_coords.py) and sent, for all images of the
batch at once, to the mask head, which encodes each image once per (group, file) and reuses it.

A segment's score is SAM's predicted IoU times the mean probability the VLM gave the tokens of
that target's JSON object (recorded from the raw logits during generation, before the grammar
mask), so a box the model hesitated on scores lower than a confident one.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.backends.answer_schema import AnswerLimits, ParsedAnswer, answer_schema, parse_answer, target_spans
from autolabel.backends.base import Answer, Backend, BackendOptions, Request, TargetMask, TurnAnswer
from autolabel.backends.chat import PastTurn, build_chat, draw_images
from autolabel.backends.vlm_coords import (CoordinateFrame, ImageFrame, coordinate_frame, grid_input_sizes,
                                           model_input_size)
from autolabel.prediction import Rejection

GRAMMAR_CACHE_SIZE = 256
EXEMPLAR_IOU = 0.5  # a target box this close to an exemplar box on the same image uses the exemplar


@dataclass
class _GroupState:
    """One request through the turns: its image frames and the turns answered so far."""

    request: Request
    frames: list[ImageFrame]
    past: list[PastTurn] = field(default_factory=list)


class VlmSamBackend(Backend):
    """Options read from `BackendOptions.extra` (all optional):

    - "coordinates": "pixels" or "relative-1000", for a model family not in FAMILY_FRAMES
      (unknown families are read as Qwen2.5-VL's pixels of the resized input);
    - "generate": extra `generate()` arguments, e.g. {"do_sample": True, "temperature": 0.7}
      (the default is greedy decoding, so reruns give the same labels);
    - "answer_limits": longest strings of the JSON answer (see AnswerLimits).
    """

    name = "vlm-sam"
    default_model = "Qwen/Qwen2.5-VL-3B-Instruct"
    default_mask_model = "facebook/sam2.1-hiera-base-plus"

    def __init__(self, options: BackendOptions):
        super().__init__(options)
        import xgrammar as xgr
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from autolabel.backends.loading import pick_device, pick_dtype, resolve_pretrained
        from autolabel.backends.mask_heads import load_mask_head

        self.device = pick_device(options.device)
        self.dtype = pick_dtype(options.dtype, self.device)
        self.model_path = resolve_pretrained(self.model_id, local_files_only=None)
        remote = options.trust_remote_code
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.model_path, dtype=self.dtype, trust_remote_code=remote).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(self.model_path, padding_side="left", trust_remote_code=remote)
        self.frame = coordinate_frame(self.model.config.model_type, options.extra.get("coordinates"))
        self.limits = AnswerLimits.from_options(options.extra)
        self.generate_kwargs: dict[str, Any] = {"do_sample": False, **options.extra.get("generate", {})}
        tokenizer = self.processor.tokenizer
        self.stop_token_ids = _stop_token_ids(self.model.generation_config, tokenizer)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self._compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab, stop_token_ids=self.stop_token_ids))
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self.mask_model = options.mask_model or self.default_mask_model
        self.mask_head = load_mask_head(self.mask_model, device=self.device, dtype=self.dtype)
        self._info = {"model": self.model_id, "revision": snapshot_revision(self.model_path),
                      "model_type": self.model.config.model_type, "coordinates": self.frame.value,
                      "mask_model": self.mask_head.model_id,
                      "mask_revision": snapshot_revision(self.mask_head.source), "device": self.device, "dtype": str(self.dtype)}

    def model_info(self) -> dict[str, Any]:
        return dict(self._info)

    def close(self) -> None:
        """Drop the model and mask head so their memory can be freed (model_info stays valid)."""
        del self.model, self.mask_head

    # -- one batch ------------------------------------------------------------------------
    def predict(self, requests: list[Request]) -> list[Answer]:
        states = [_GroupState(r, self._frames(r.images)) for r in requests]
        for t in range(max(len(r.prompt.turns) for r in requests)):
            active = [s for s in states if t < len(s.request.prompt.turns)]
            answers = self._reason(active, t)
            targets = self._segment(active, answers, t)
            for state, (parsed, raw, _), masks in zip(active, answers, targets):
                prompt = state.request.prompt
                rejected = [Rejection(label=a.label, category=prompt.ontology.get(a.label, a.label), phrase=a.label,
                                      reason=a.reason, round=t) for a in parsed.absent]
                turn = TurnAnswer(question=prompt.turns[t].text, answer=parsed.explanation, masks=masks,
                                  rejected=rejected)
                state.past.append(PastTurn(turn, raw))
        return [Answer([p.answer for p in s.past]) for s in states]

    def _frames(self, images: list[np.ndarray]) -> list[ImageFrame]:
        """Relative coordinates do not depend on the resize; pixel ones need the processor's."""
        if self.frame is CoordinateFrame.RELATIVE_1000:
            return [ImageFrame(self.frame, im.shape[:2], im.shape[:2]) for im in images]
        ip = self.processor.image_processor
        return [ImageFrame(self.frame, im.shape[:2], model_input_size(ip, *im.shape[:2])) for im in images]

    # -- reasoning: one constrained generate over the batch for turn t ---------------------
    def _reason(self, states: list[_GroupState], t: int) -> list[tuple[ParsedAnswer, str, list[float]]]:
        import torch
        from xgrammar.contrib.hf import LogitsProcessor

        processor = self.processor
        chats, images, grammars = [], [], []
        for s in states:
            r = s.request
            chats.append(processor.apply_chat_template(
                build_chat(r.prompt, r.group, s.frames, self.frame, s.past), add_generation_prompt=True, tokenize=False))
            images.append(draw_images(r.images, r.group, s.past, draw_previous=r.prompt.turns[t].draw_previous))
            schema = answer_schema(r.prompt, coord_max=max(f.coord_max for f in s.frames), limits=self.limits)
            grammars.append(self._grammar(json.dumps(schema)))
        inputs = processor(text=chats, images=images, return_tensors="pt", padding=True).to(self.device)
        if self.frame is CoordinateFrame.PIXELS:
            self._check_resize(states, inputs["image_grid_thw"])
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        recorder = _TokenLogProbs()
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.options.max_new_tokens,
                                      logits_processor=[recorder, LogitsProcessor(grammars)],
                                      pad_token_id=processor.tokenizer.pad_token_id,
                                      eos_token_id=self.stop_token_ids, **self.generate_kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
        logp = recorder.finish(new)
        results = []
        for s, ids, lp in zip(states, new, logp):
            text = processor.tokenizer.decode(ids, skip_special_tokens=True)
            parsed = parse_answer(text, s.request.prompt, max_new_tokens=self.options.max_new_tokens)
            results.append((parsed, text, self._target_confidences(ids, lp, text)))
        return results

    def _grammar(self, schema: str):
        """A compiled grammar per schema string, kept in a small LRU (templates repeat)."""
        if schema in self._grammars:
            self._grammars.move_to_end(schema)
        else:
            self._grammars[schema] = self._compiler.compile_json_schema(schema, any_whitespace=False)
            if len(self._grammars) > GRAMMAR_CACHE_SIZE:
                self._grammars.popitem(last=False)
        return self._grammars[schema]

    def _check_resize(self, states: list[_GroupState], image_grid_thw) -> None:
        """The sizes written into the prompt must be the sizes the processor really produced."""
        real = grid_input_sizes(image_grid_thw, self.processor.image_processor.patch_size)
        expected = [f.model_input for s in states for f in s.frames]
        if real != expected:
            raise RuntimeError(f"the processor resized images to {real}, expected {expected}: this image "
                               f"processor does not follow Qwen's smart_resize; set option coordinates")

    def _target_confidences(self, ids, logp, text: str) -> list[float]:
        """Mean token probability over each target's JSON object in the answer."""
        tokenizer = self.processor.tokenizer
        ends = [len(s) for s in tokenizer.batch_decode([ids[:k + 1] for k in range(len(ids))],
                                                       skip_special_tokens=True)]
        starts = [0, *ends[:-1]]
        probs = np.exp(logp.float().cpu().numpy())
        out = []
        for a, b in target_spans(text):
            inside = [p for s, e, p in zip(starts, ends, probs) if s < b and e > a]
            out.append(float(np.mean(inside)) if inside else 1.0)
        return out

    # -- masks: every target of every image of the batch through the mask head at once -------
    def _segment(self, states: list[_GroupState], answers, t: int) -> list[list[TargetMask]]:
        if getattr(self.mask_head, "text_prompted", False):
            return [self._segment_by_phrase(s, a, t) for s, a in zip(states, answers)]
        from autolabel.backends.mask_heads import PromptSet

        sets, owners = [], []  # owners[j]: (state index, the targets of prompt set j)
        for si, (s, (parsed, _, _)) in enumerate(zip(states, answers)):
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
        results = self.mask_head.predict(sets) if sets else []
        masks: list[dict[int, TargetMask]] = [{} for _ in states]
        for (si, i, ks), result in zip(owners, results):
            parsed, _, confidence = answers[si]
            prompt = states[si].request.prompt
            for j, k in enumerate(ks):
                target = parsed.targets[k]
                masks[si][k] = TargetMask(
                    image=i, label=target.label, category=prompt.ontology.get(target.label, target.label),
                    phrase=target.phrase or target.label, mask=np.asarray(result.masks[j], dtype=bool),
                    score=float(result.scores[j]) * confidence[k], round=t)
        return [[m[k] for k in sorted(m)] for m in masks]


    def _segment_by_phrase(self, state: _GroupState, answer, t: int) -> list[TargetMask]:
        """A text-prompted head (SAM 3): the VLM says which labels are in which image; the head
        segments every instance of that label there (exhaustive ontology labeling)."""
        parsed, _, confidence = answer
        prompt, group = state.request.prompt, state.request.group
        asked: dict[tuple[int, str], float] = {}
        for k, target in enumerate(parsed.targets):
            key = (target.image - 1, target.label)
            asked[key] = max(asked.get(key, 0.0), confidence[k])
        masks = []
        for (i, label), conf in asked.items():
            (found,) = self.mask_head.segment_text((group.id, group.images[i].file), state.request.images[i], [label])
            masks += [TargetMask(image=i, label=label, category=prompt.ontology.get(label, label), phrase=label,
                                 mask=m, score=float(score) * conf, round=t)
                      for m, score in zip(found.masks, found.scores)]
        return masks


class _TokenLogProbs:
    """A logits processor that records the log-probability of each generated token.

    It sees the raw scores before the grammar mask; the token chosen at step n is known only at
    step n+1 (as the last input id), so it keeps one step of log-softmax, never all logits.
    """

    def __init__(self):
        self._last = None
        self._picked: list = []

    def __call__(self, input_ids, scores):
        import torch

        if self._last is not None:
            self._picked.append(self._last.gather(1, input_ids[:, -1:]).squeeze(1))
        self._last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, new_ids):
        """(batch, new tokens) log-probabilities of `new_ids`, the tokens generate returned."""
        import torch

        picked = [*self._picked, self._last.gather(1, new_ids[:, -1:]).squeeze(1)]
        return torch.stack(picked[: new_ids.shape[1]], dim=1)


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


def _stop_token_ids(generation_config, tokenizer) -> list[int]:
    """Every id that ends an answer: the generation config's eos ids and the tokenizer's."""
    eos = generation_config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def snapshot_revision(path: str) -> str | None:
    """The commit hash of a hub-cache snapshot directory (…/snapshots/<hash>), else None."""
    p = Path(path)
    return p.name if p.parent.name == "snapshots" else None
