"""SAM 3 through transformers (`Sam3Model`): text-prompted concept segmentation.

A phrase finds every instance of its concept on the image, which fits plain ontology labeling:
the VLM says which labels occur on which image and SAM 3 segments all of them. Vision features
are computed once per image (cached like every head's embeddings) and all phrases asked about an
image run in one decoder batch against them.

It takes no box prompts (it is not a `BoxPromptedHead`): in `Sam3Model` a box is an exemplar of
a concept (it returns every similar object), not "the object in this box", so a box -> one mask
head must be SAM or SAM 2.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from autolabel.backends.mask_heads.base import MaskResult, TextPromptedHead, image_slice, map_tensors


class Sam3TextHead(TextPromptedHead):
    def __init__(self, model_id: str, path: str, model_type: str, *, device: str, dtype, cache_size: int,
                 threshold: float = 0.5, mask_threshold: float = 0.5):
        super().__init__(model_id, path, cache_size)
        from transformers import Sam3Model, Sam3Processor

        self.device, self.dtype = device, dtype
        self.threshold, self.mask_threshold = threshold, mask_threshold  # instance score / mask pixel cut-offs
        self.model = Sam3Model.from_pretrained(path, dtype=dtype).to(device).eval()
        self.processor = Sam3Processor.from_pretrained(path)

    def segment_text(self, image_key: Hashable, image: np.ndarray, phrases: list[str]) -> list[MaskResult]:
        """One MaskResult per phrase: every instance found, masks at the image's size."""
        import torch

        h, w = image.shape[:2]
        if not phrases:
            return []
        with torch.inference_mode():
            vision = self._embeddings({image_key: image})[image_key]
            text = self.processor(text=phrases, return_tensors="pt").to(self.device)
            n = len(phrases)
            repeated = map_tensors(vision, lambda t: t.expand(n, *t.shape[1:]))  # a view per phrase, no copy
            out = self.model(vision_embeds=repeated, input_ids=text["input_ids"],
                             attention_mask=text["attention_mask"])
            found = self.processor.post_process_instance_segmentation(
                out, threshold=self.threshold, mask_threshold=self.mask_threshold, target_sizes=[(h, w)] * n)
        return [MaskResult(f["masks"].cpu().numpy().astype(bool).reshape(-1, h, w),
                           f["scores"].float().cpu().numpy().clip(0, 1).astype(np.float32)) for f in found]

    def _encode(self, images: list[np.ndarray]) -> list[Any]:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        features = self.model.get_vision_features(pixel_values=pixels)
        return [image_slice(features, i) for i in range(len(images))]
