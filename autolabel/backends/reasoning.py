"""Where a VLM's reasoning runs: in this process (transformers) or on a serving engine.

The `vlm-sam` backend builds each step (the chat, the images the model sees, the JSON schema of
the answer) and hands a list of steps to a `Reasoner`; the reasoner returns the generated text
with per-token log-probabilities. Parsing, confidences and masks stay in the backend, so both
places answer under the same rules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from autolabel.backends.answer_schema import answer_token_budget
from autolabel.backends.vlm_coords import CoordinateFrame, ImageFrame


@dataclass
class ReasonStep:
    """One generation: `chat` holds `{"type": "image"}` placeholders, one per entry of `images`."""

    chat: list[dict]
    images: list[np.ndarray]
    frames: list[ImageFrame]
    schema: dict


def token_budget(step: ReasonStep, max_new_tokens: int | None) -> int:
    """Tokens a step may generate: `--max-new-tokens` when given, else (auto) enough for the
    longest answer its schema allows, so a constrained answer always closes. Both reasoners use it."""
    return max_new_tokens or answer_token_budget(step.schema)


class ImageNotAccepted(Exception):
    """An image the model's processor will not take (e.g. an aspect ratio over 200:1): `index` in
    the group, `reason` says why. Its group fails alone, with the file named."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"Image {index + 1}: {reason}")
        self.index = index
        self.reason = reason


@dataclass
class Generated:
    """The answer text and, where known, where each token ends in it and its log-probability."""

    text: str
    token_ends: list[int] | None = None
    logprobs: list[float] | None = None
    cut_at: int | None = None  # the token budget generation stopped at; None: the answer ended by itself

    @property
    def truncated(self) -> bool:
        return self.cut_at is not None


class Reasoner(ABC):
    frame: CoordinateFrame

    @abstractmethod
    def frames(self, images: list[np.ndarray]) -> list[ImageFrame]:
        """How each image is presented to the model: its original and model-input sizes.
        Raises ImageNotAccepted for an image the model cannot take."""

    @abstractmethod
    def reason(self, steps: list[ReasonStep]) -> list[Generated | Exception]:
        """One result per step, in order; an Exception in a step's place fails that step alone."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Provenance for run.json."""

    def stats(self) -> dict[str, Any]:
        """Counters for run.json (e.g. responses the server asked to retry)."""
        return {}

    def close(self) -> None:
        """Release the model or the connection."""
