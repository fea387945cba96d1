"""SAM-family mask heads behind one interface: boxes/points on an image -> full-size masks.

Each image is encoded once and its embedding kept in an LRU cache keyed by the caller's
`image_key` (the vlm-sam backend uses (group id, file)), so every box of the image and every
later template over the same group reuse it. Decoding is cheap; ragged prompt counts per image
are decoded per image on the cached embeddings.

`load_mask_head` picks the implementation from the model:
- `*.pth` (optionally `vit_b:/path.pth`): an original segment-anything checkpoint, built from
  `segment_anything.sam_model_registry` and loaded with `weights_only=True`;
- a hub id or directory whose config says `sam` or `sam2`: transformers `SamModel` / `Sam2Model`;
- one whose config says `sam3`: transformers `Sam3Model`, prompted by phrase (`segment_text`).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.errors import AutolabelError, ModelNotAvailable


@dataclass
class PromptSet:
    """What to segment on ONE image: K boxes (xyxy) and/or K sets of P points, original pixels."""

    image_key: Hashable
    image: np.ndarray
    boxes: np.ndarray | None = None          # (K, 4)
    points: np.ndarray | None = None         # (K, P, 2)
    point_labels: np.ndarray | None = None   # (K, P), 1 foreground / 0 background

    @property
    def count(self) -> int:
        for a in (self.boxes, self.points):
            if a is not None:
                return len(a)
        return 0


@dataclass
class MaskResult:
    masks: np.ndarray   # (K, H, W) bool at the image's original size
    scores: np.ndarray  # (K,) the head's predicted IoU, 0..1


class MaskHead(ABC):
    """Encode-once, decode-many. Subclasses implement `_encode` and `_decode`."""

    def __init__(self, model_id: str, cache_size: int = 64, source: str | None = None):
        self.model_id = model_id
        self.source = source or model_id  # the directory or file the weights were read from
        self.encoder_calls = 0
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._cache_size = cache_size

    def predict(self, prompt_sets: list[PromptSet]) -> list[MaskResult]:
        import torch

        with torch.inference_mode():
            missing = {ps.image_key: ps.image for ps in prompt_sets if ps.count and ps.image_key not in self._cache}
            if missing:
                embeddings = self._encode(list(missing.values()))
                self.encoder_calls += len(missing)
                for key, emb in zip(missing, embeddings):
                    self._remember(key, emb)
            results = []
            for ps in prompt_sets:
                h, w = ps.image.shape[:2]
                if not ps.count:
                    results.append(MaskResult(np.zeros((0, h, w), bool), np.zeros(0, np.float32)))
                    continue
                embedding = self._cache[ps.image_key]
                self._cache.move_to_end(ps.image_key)
                boxes = None if ps.boxes is None else _clip_boxes(np.asarray(ps.boxes, np.float32), w, h)
                masks, scores = self._decode(embedding, (h, w), boxes, ps.points, ps.point_labels)
                results.append(MaskResult(masks.astype(bool), np.clip(scores, 0.0, 1.0).astype(np.float32)))
            return results

    def segment_text(self, image_key: Hashable, image: np.ndarray, phrases: list[str]) -> list[MaskResult]:
        raise NotImplementedError(f"{self.model_id}: this mask head takes boxes and points, not text")

    def _remember(self, key: Hashable, embedding: Any) -> None:
        self._cache[key] = embedding
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    @abstractmethod
    def _encode(self, images: list[np.ndarray]) -> list[Any]:
        """One embedding per image, computed in as few encoder calls as the model allows."""

    @abstractmethod
    def _decode(self, embedding: Any, size: tuple[int, int], boxes, points, labels) -> tuple[np.ndarray, np.ndarray]:
        """(K, H, W) masks and (K,) scores for one image's prompts."""


def _clip_boxes(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    boxes = boxes.reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


class TransformersSam(MaskHead):
    """transformers `SamModel` / `Sam2Model` with their processors."""

    def __init__(self, model_id: str, path: str, *, device: str, dtype, cache_size: int):
        super().__init__(model_id, cache_size, path)
        from transformers import AutoModel, AutoProcessor

        self.device, self.dtype = device, dtype
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.multi_level = type(self.model).__name__.startswith("Sam2")

    def _encode(self, images: list[np.ndarray]) -> list[Any]:
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        emb = self.model.get_image_embeddings(pixels)
        if self.multi_level:  # SAM 2: a list of feature levels, each (B, C, h, w)
            return [[level[i:i + 1] for level in emb] for i in range(len(images))]
        return [emb[i:i + 1] for i in range(len(images))]

    def _decode(self, embedding, size, boxes, points, labels):
        h, w = size
        kwargs: dict[str, Any] = {}
        if boxes is not None:
            kwargs["input_boxes"] = [boxes.tolist()]
        if points is not None:
            kwargs["input_points"] = [np.asarray(points, np.float32).tolist()]
            kwargs["input_labels"] = [np.asarray(labels if labels is not None else np.ones(np.shape(points)[:2]),
                                                 int).tolist()]
        # the processor maps original-pixel prompts into the model's input frame; it needs the image
        # size, which for SAM 1 it reads from an image, so a blank of the right size stands in
        prompts = self.processor(images=np.zeros((h, w, 3), np.uint8), return_tensors="pt", **kwargs)
        model_inputs = {k: v.to(self.device) for k, v in prompts.items() if k in ("input_boxes", "input_points", "input_labels")}
        for k in ("input_boxes", "input_points"):
            if k in model_inputs:
                model_inputs[k] = model_inputs[k].to(self.dtype)
        out = self.model(image_embeddings=embedding, multimask_output=False, **model_inputs)
        post = [out.pred_masks.float().cpu(), prompts["original_sizes"]]
        if "reshaped_input_sizes" in prompts:
            post.append(prompts["reshaped_input_sizes"])
        masks = self.processor.post_process_masks(*post)[0]  # (K, 1, H, W) bool
        return masks[:, 0].numpy(), out.iou_scores.float().cpu().numpy().reshape(-1)


class SegmentAnythingSam(MaskHead):
    """An original segment-anything checkpoint (vit_b / vit_l / vit_h, or a registered variant)."""

    def __init__(self, model_id: str, variant: str, path: Path, *, device: str, dtype, cache_size: int):
        super().__init__(model_id, cache_size, str(path))
        import torch
        from segment_anything import SamPredictor, sam_model_registry

        if variant not in sam_model_registry:
            raise AutolabelError(f"--mask-model {model_id}: unknown SAM variant {variant!r}; "
                                 f"one of {', '.join(sorted(sam_model_registry))}")
        sam = sam_model_registry[variant](checkpoint=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
        self.device = device
        self.predictor = SamPredictor(sam.to(device).eval())

    def _encode(self, images: list[np.ndarray]) -> list[Any]:
        out = []
        for image in images:  # SamPredictor encodes one image per call
            self.predictor.set_image(image)
            p = self.predictor
            out.append((p.features, p.original_size, p.input_size))
        return out

    def _decode(self, embedding, size, boxes, points, labels):
        import torch

        p = self.predictor
        p.features, p.original_size, p.input_size = embedding
        p.is_image_set = True
        box_t = None if boxes is None else p.transform.apply_boxes_torch(
            torch.as_tensor(boxes, device=self.device), size)
        pts_t = lbl_t = None
        if points is not None:
            pts_t = p.transform.apply_coords_torch(torch.as_tensor(np.asarray(points, np.float32), device=self.device), size)
            lbl_t = torch.as_tensor(np.asarray(labels if labels is not None else np.ones(np.shape(points)[:2]), int),
                                    device=self.device)
        masks, scores, _ = p.predict_torch(pts_t, lbl_t, box_t, multimask_output=False)
        return masks[:, 0].cpu().numpy(), scores[:, 0].float().cpu().numpy()


class TransformersSam3(MaskHead):
    """transformers `Sam3Model`: text-prompted concept segmentation, every instance of a phrase.

    Vision features are computed once per image and reused for every phrase asked about it.
    Box/point prompts are not offered: with SAM 3 the vlm-sam backend asks by phrase instead.
    """

    text_prompted = True

    def __init__(self, model_id: str, path: str, *, device: str, dtype, cache_size: int,
                 threshold: float = 0.5, mask_threshold: float = 0.5):
        super().__init__(model_id, cache_size, path)
        from transformers import AutoModel, AutoProcessor

        self.device, self.dtype = device, dtype
        self.threshold, self.mask_threshold = threshold, mask_threshold
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path)

    def _encode(self, images: list[np.ndarray]) -> list[Any]:
        out = []
        for image in images:  # the vision features are a nested structure: one image per entry
            pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            out.append(self.model.get_vision_features(pixel_values=pixels))
        return out

    def _decode(self, embedding, size, boxes, points, labels):
        raise NotImplementedError(f"{self.model_id}: SAM 3 is prompted by text here; use segment_text")

    def segment_text(self, image_key: Hashable, image: np.ndarray, phrases: list[str]) -> list[MaskResult]:
        import torch

        with torch.inference_mode():
            if image_key not in self._cache:
                self._remember(image_key, self._encode([image])[0])
                self.encoder_calls += 1
            vision = self._cache[image_key]
            self._cache.move_to_end(image_key)
            h, w = image.shape[:2]
            results = []
            for phrase in phrases:
                text = self.processor(text=[phrase], return_tensors="pt").to(self.device)
                out = self.model(vision_embeds=vision, input_ids=text["input_ids"],
                                 attention_mask=text["attention_mask"])
                found = self.processor.post_process_instance_segmentation(
                    out, threshold=self.threshold, mask_threshold=self.mask_threshold, target_sizes=[(h, w)])[0]
                masks = found["masks"].cpu().numpy().astype(bool).reshape(-1, h, w)
                results.append(MaskResult(masks, found["scores"].float().cpu().numpy().clip(0, 1)))
            return results


_PTH_VARIANT = re.compile(r"vit_[bhl]")


def load_mask_head(model: str, *, device: str, dtype, cache_size: int = 64,
                   local_files_only: bool | None = None) -> MaskHead:
    """The mask head for a hub id, a directory, or a segment-anything `.pth` file."""
    variant, _, file = model.rpartition(":") if re.match(r"^\w+:.+\.pth$", model) else ("", "", model)
    if file.endswith(".pth"):
        path = Path(file).expanduser()
        if not path.is_file():
            raise ModelNotAvailable(f"mask model {model!r}: file {path.resolve()} not found")
        if not variant:
            found = _PTH_VARIANT.search(path.name)
            if not found:
                raise AutolabelError(f"--mask-model {model}: cannot tell the SAM variant from the file name; "
                                     f"write it as vit_b:{model} (or vit_l / vit_h)")
            variant = found.group(0)
        return SegmentAnythingSam(model, variant, path, device=device, dtype=dtype, cache_size=cache_size)
    from autolabel.backends.loading import resolve_pretrained

    path = resolve_pretrained(model, local_files_only=local_files_only)
    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type", "")
    if model_type in ("sam", "sam2"):
        return TransformersSam(model, path, device=device, dtype=dtype, cache_size=cache_size)
    if model_type == "sam3":
        return TransformersSam3(model, path, device=device, dtype=dtype, cache_size=cache_size)
    raise AutolabelError(f"--mask-model {model}: model type {model_type!r} is not a supported mask head "
                         "(SAM, SAM 2 or SAM 3 via transformers, or a segment-anything .pth)")
