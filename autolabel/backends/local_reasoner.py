"""Reasoning in this process: one left-padded transformers `generate` per batch of steps.

Each answer is constrained by xgrammar to its step's JSON schema, within the step's token budget
(reasoning.token_budget); the log-probability of every generated token is recorded from the raw
logits, before the grammar mask, so a confident answer and a forced one score differently.

The size each image has for the model is what the processor really produces for it (one image
through the image processor), so pixel coordinates map back exactly for any size; an image the
processor refuses fails its group alone, and a processor whose output size cannot be read at all
stops the run at load (exit 2) when the model answers in pixels.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.backends.base import BackendOptions
from autolabel.backends.reasoning import Generated, ImageNotAccepted, Reasoner, ReasonStep, token_budget
from autolabel.backends.vlm_coords import (CoordinateFrame, ImageFrame, coordinate_frame, grid_input_sizes,
                                           processed_size)
from autolabel.errors import AutolabelError

GRAMMAR_CACHE_SIZE = 256


class TransformersReasoner(Reasoner):
    def __init__(self, model_id: str, options: BackendOptions, device: str, dtype):
        import xgrammar as xgr
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from autolabel.loading import resolve_pretrained

        self.device, self.dtype, self.options = device, dtype, options
        self.model_id = model_id
        self.model_path = resolve_pretrained(model_id, local_files_only=None)
        remote = options.trust_remote_code
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=remote).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(self.model_path, padding_side="left", trust_remote_code=remote)
        self.frame = coordinate_frame(self.model.config.model_type, options.extra.get("coordinates"))
        self.generate_kwargs: dict[str, Any] = {"do_sample": False, **options.extra.get("generate", {})}
        tokenizer = self.processor.tokenizer
        self.stop_token_ids = _stop_token_ids(self.model.generation_config, tokenizer)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self._compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab, stop_token_ids=self.stop_token_ids))
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._sizes_known = self._probe_processor()
        self._info = {"model": model_id, "revision": snapshot_revision(self.model_path),
                      "model_type": self.model.config.model_type, "coordinates": self.frame.value}

    def _probe_processor(self) -> bool:
        """Whether the processor's output size can be read (one small image). Pixel coordinates
        need it: without it every group would fail, so the run stops here, once (exit 2)."""
        ip = getattr(self.processor, "image_processor", None)
        try:
            processed_size(ip, np.zeros((48, 64, 3), np.uint8))
            return True
        except Exception as e:  # noqa: BLE001 - any processor we cannot read
            if self.frame is CoordinateFrame.RELATIVE_1000:
                return False  # relative coordinates do not depend on the resize
            raise AutolabelError(
                f"--model {self.model_id}: cannot read the size its image processor gives an image "
                f"({type(ip).__name__}: {type(e).__name__}: {e}); pixel coordinates ({self.frame.value}) "
                "need it. If this model answers 0-1000 coordinates, set --backend-option "
                "coordinates=relative-1000") from None

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def close(self) -> None:
        del self.model

    def frames(self, images: list[np.ndarray]) -> list[ImageFrame]:
        """Each image's size after the processor, from the processor itself (ImageNotAccepted
        names an image it refuses, e.g. an aspect ratio over 200:1)."""
        out = []
        for k, im in enumerate(images):
            h, w = im.shape[:2]
            if not self._sizes_known:  # relative coordinates only: the resize does not matter
                out.append(ImageFrame(self.frame, (h, w), (h, w)))
                continue
            try:
                size = processed_size(self.processor.image_processor, im)
            except Exception as e:  # noqa: BLE001 - this image's group fails alone
                raise ImageNotAccepted(k, f"{w}x{h} pixels, which the model's image processor does not take: "
                                          f"{type(e).__name__}: {e}") from None
            out.append(ImageFrame(self.frame, (h, w), size))
        return out

    def reason(self, steps: list[ReasonStep]) -> list[Generated | Exception]:
        import torch
        from xgrammar.contrib.hf import LogitsProcessor

        processor = self.processor
        chats = [processor.apply_chat_template(s.chat, add_generation_prompt=True, tokenize=False) for s in steps]
        grammars = [self._grammar(json.dumps(s.schema)) for s in steps]
        inputs = processor(text=chats, images=[s.images for s in steps], return_tensors="pt",
                           padding=True, input_data_format="channels_last").to(self.device)
        if self.frame is CoordinateFrame.PIXELS:
            self._check_resize(steps, inputs["image_grid_thw"])
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        recorder = _TokenLogProbs()
        budget = max(token_budget(s, self.options.max_new_tokens) for s in steps)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=budget,
                                      logits_processor=[recorder, LogitsProcessor(grammars)],
                                      pad_token_id=processor.tokenizer.pad_token_id,
                                      eos_token_id=self.stop_token_ids, **self.generate_kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
        logp = recorder.finish(new).float().cpu().numpy()
        results: list[Generated | Exception] = []
        for ids, lp in zip(new, logp):
            stopped = [k for k, t in enumerate(ids.tolist()) if t in self.stop_token_ids]
            n = stopped[0] if stopped else len(ids)  # padding after the stop token is not the answer
            text = processor.tokenizer.decode(ids[:n], skip_special_tokens=True)
            results.append(Generated(text, self._token_ends(ids[:n]), lp[:n].tolist(), cut_at=None if stopped else budget))
        return results

    def _token_ends(self, ids) -> list[int]:
        """Where each token ends in the decoded text (decoding prefixes keeps multi-byte characters whole)."""
        decoded = self.processor.tokenizer.batch_decode([ids[:k + 1] for k in range(len(ids))],
                                                        skip_special_tokens=True)
        return [len(s) for s in decoded]

    def _grammar(self, schema: str):
        """A compiled grammar per schema string, kept in a small LRU (templates repeat)."""
        if schema in self._grammars:
            self._grammars.move_to_end(schema)
        else:
            self._grammars[schema] = self._compiler.compile_json_schema(schema, any_whitespace=False)
            if len(self._grammars) > GRAMMAR_CACHE_SIZE:
                self._grammars.popitem(last=False)
        return self._grammars[schema]

    def _check_resize(self, steps: list[ReasonStep], image_grid_thw) -> None:
        """The sizes written into the prompt are what the processor produced for each image alone;
        in this batch it must produce them again."""
        real = iter(grid_input_sizes(image_grid_thw, self.processor.image_processor.patch_size))
        for s in steps:
            for k, f in enumerate(s.frames):
                got = next(real)
                if got != f.model_input:
                    raise RuntimeError(f"the image processor resized Image {k + 1} ({f.original[1]}x{f.original[0]}) "
                                       f"to {got[1]}x{got[0]} in a batch but to {f.model_input[1]}x{f.model_input[0]} "
                                       "alone")


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
