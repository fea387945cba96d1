"""What every mask head shares: the prompt and result types, and encode-once image embeddings.

Two kinds of head, each its own small interface, chosen by type (`isinstance`) by the backend:
- `BoxPromptedHead` (SAM, SAM 2): boxes and/or points on an image -> one mask per prompt;
- `TextPromptedHead` (SAM 3): a phrase -> every instance of that concept on the image.

Both encode each image once and keep its embedding in an LRU cache keyed by the caller's
`image_key` (the vlm-sam backend uses (group id, file)), so every prompt on the image and every
later template over the same group reuse it. The encoder is the expensive part, so all uncached
images of a call are encoded together; decoding is cheap and runs per image on the cached
embedding, which is also how ragged prompt counts per image are handled.

No torch at import time, so the CLI stays fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class PromptSet:
    """What to segment on ONE image: K boxes (xyxy) and/or K sets of P points, original pixels."""

    image_key: Hashable
    image: np.ndarray                        # RGB uint8 (H, W, 3)
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


@dataclass
class Prompts:
    """One image's prompts, checked and clipped to the image: what `_decode` receives."""

    size: tuple[int, int]                    # original (H, W)
    boxes: np.ndarray | None                 # (K, 4) float32 xyxy, x1 <= x2, y1 <= y2
    points: np.ndarray | None                # (K, P, 2) float32
    labels: np.ndarray | None                # (K, P) int64, given whenever points are

    @classmethod
    def of(cls, ps: PromptSet) -> Prompts:
        h, w = ps.image.shape[:2]
        limits = np.array([w, h], np.float32)
        boxes = points = labels = None
        if ps.boxes is not None:
            b = np.asarray(ps.boxes, np.float32)
            if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all():
                raise ValueError(f"PromptSet {ps.image_key!r}: boxes must be finite (K, 4) xyxy, got shape {b.shape}")
            corners = b.reshape(-1, 2, 2).clip(0, limits)
            boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
        if ps.points is not None:
            p = np.asarray(ps.points, np.float32)
            if p.ndim != 3 or p.shape[2] != 2 or not np.isfinite(p).all():
                raise ValueError(f"PromptSet {ps.image_key!r}: points must be finite (K, P, 2), got shape {p.shape}")
            points = p.clip(0, limits)
            labels = (np.ones(p.shape[:2], np.int64) if ps.point_labels is None
                      else np.asarray(ps.point_labels, np.int64))
            if labels.shape != p.shape[:2]:
                raise ValueError(f"PromptSet {ps.image_key!r}: point_labels shape {labels.shape} != {p.shape[:2]}")
        if boxes is not None and points is not None and len(boxes) != len(points):
            raise ValueError(f"PromptSet {ps.image_key!r}: {len(boxes)} boxes but {len(points)} point sets")
        return cls((h, w), boxes, points, labels)


@dataclass
class EncodedImage:
    """A cached image embedding and the resize it was made with, which prompts must follow."""

    features: Any                      # the encoder output for this image, batch dimension 1
    original_size: tuple[int, int]     # (H, W) of the image
    input_size: tuple[int, int]        # (h, w) the model saw the image at, before any padding


class CachedEncoder(ABC):
    """Encode-once, decode-many: the image-embedding cache both kinds of head are built on."""

    max_encode_batch = 8    # images per encoder call: bounds activation memory on large batches

    def __init__(self, model_id: str, source: str, cache_size: int = 64):
        self.model_id = model_id  # as the user named it
        self.source = source      # where the weights were read: a directory (hub-cache snapshot) or a .pth file
        self.encoder_calls = 0  # images actually encoded, for tests and benchmarks of reuse
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._cache_size = cache_size

    def _embeddings(self, images: dict[Hashable, np.ndarray]) -> dict[Hashable, Any]:
        """The embedding of each image: from the cache, else encoded (all missing ones together).

        Returned as a dict rather than read back from the cache, so a call with more images than
        the cache holds still has all of them.
        """
        found: dict[Hashable, Any] = {}
        missing: list[Hashable] = []
        for key in images:
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
            else:
                missing.append(key)
        for start in range(0, len(missing), self.max_encode_batch):
            keys = missing[start:start + self.max_encode_batch]
            for key, embedding in zip(keys, self._encode([images[k] for k in keys]), strict=True):
                found[key] = embedding
                self._remember(key, embedding)
            self.encoder_calls += len(keys)
        return found

    def _remember(self, key: Hashable, embedding: Any) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = embedding
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    @abstractmethod
    def _encode(self, images: list[np.ndarray]) -> list[Any]:
        """One embedding per image, in one encoder call where the model allows it."""


class BoxPromptedHead(CachedEncoder):
    """Boxes and/or points on an image -> one mask per prompt. Subclasses implement `_encode`, `_decode`."""

    def predict(self, prompt_sets: list[PromptSet]) -> list[MaskResult]:
        """Masks for every prompt set, in order; K=0 sets give empty (0, H, W) results."""
        import torch

        prompts = [Prompts.of(ps) for ps in prompt_sets]
        with torch.inference_mode():
            embeddings = self._embeddings({ps.image_key: ps.image for ps in prompt_sets if ps.count})
            results = []
            for ps, p in zip(prompt_sets, prompts):
                if not ps.count:
                    results.append(MaskResult(np.zeros((0, *p.size), bool), np.zeros(0, np.float32)))
                    continue
                masks, scores = self._decode(embeddings[ps.image_key], p)
                results.append(MaskResult(np.asarray(masks, bool), np.clip(scores, 0.0, 1.0).astype(np.float32)))
            return results

    @abstractmethod
    def _decode(self, embedding: Any, prompts: Prompts) -> tuple[np.ndarray, np.ndarray]:
        """(K, H, W) masks and (K,) scores for one image's prompts."""


class TextPromptedHead(CachedEncoder):
    """A phrase -> every instance of its concept on the image. Subclasses implement `_encode`, `segment_text`."""

    @abstractmethod
    def segment_text(self, image_key: Hashable, image: np.ndarray, phrases: list[str]) -> list[MaskResult]:
        """One MaskResult per phrase: every instance found, masks at the image's size."""


MaskHead = BoxPromptedHead | TextPromptedHead


def map_tensors(features: Any, fn) -> Any:
    """`fn` applied to every tensor of an encoder output, keeping its structure.

    Encoder outputs are a tensor, a list/tuple of per-level tensors (SAM 2) or a ModelOutput
    (SAM 3); this lets one batched encoder call be split into per-image cache entries.
    """
    if isinstance(features, Mapping):
        return type(features)(**{k: map_tensors(v, fn) for k, v in features.items()})
    if isinstance(features, (list, tuple)):
        return type(features)(map_tensors(v, fn) for v in features)
    return fn(features)


def image_slice(batch: Any, i: int) -> Any:
    """Image `i` of a batched encoder output, batch dimension kept."""
    return map_tensors(batch, lambda t: t[i:i + 1])
