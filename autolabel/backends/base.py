"""The backend interface: load a model once, then answer batches of requests."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from autolabel.backends import DEFAULT_API_KEY_ENV, DEFAULT_CONCURRENCY
from autolabel.groups import ImageGroup
from autolabel.prediction import Rejection
from autolabel.templates import RenderedPrompt


@dataclass
class Request:
    """One group x template: the decoded images (RGB uint8 HxWx3) and the rendered prompt."""

    key: str
    group: ImageGroup
    images: list[np.ndarray]
    prompt: RenderedPrompt
    decode_s: float = 0.0  # how long its group's images took to decode, written in the line's timings


@dataclass
class TargetMask:
    """A grounded target with its full-resolution boolean mask on image `image` (0-based)."""

    image: int
    label: str
    category: str
    phrase: str
    mask: np.ndarray | None  # None when `rle` is given
    score: float
    round: int = 0
    # video: the mask already RLE-encoded (a tracker encodes frame by frame), the clip's frame index,
    # its time (s) and the track; `image` is then the position among the clip's sampled frames
    rle: dict | None = None
    frame: int | None = None
    timestamp: float | None = None
    track_id: int | None = None


@dataclass
class TurnAnswer:
    question: str
    answer: str
    masks: list[TargetMask] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    truncated: bool = False  # the answer was cut at the token budget: only its completed targets are here


@dataclass
class Answer:
    turns: list[TurnAnswer]


@dataclass
class BackendOptions:
    """What `autolabel run` passes to a backend; backends ignore options they do not use."""

    model: str | None = None
    mask_model: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: int | None = None  # None: the backend's own default (vlm-sam: the schema's longest answer)
    trust_remote_code: bool = False
    server: str | None = None        # an OpenAI-compatible endpoint that runs the reasoning model
    concurrency: int = DEFAULT_CONCURRENCY  # requests in flight to the server
    api_key_env: str = DEFAULT_API_KEY_ENV  # the variable holding the server's API key (never stored)
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """Subclass, set `name` and `default_model`, and register it (see backends/__init__.py)."""

    name: ClassVar[str]
    default_model: ClassVar[str | None] = None

    def __init__(self, options: BackendOptions):
        self.options = options

    @property
    def model_id(self) -> str:
        return self.options.model or self.default_model or self.name

    def model_info(self) -> dict[str, Any]:
        """Provenance written to run.json: ids, revisions, anything needed to reproduce."""
        return {"model": self.model_id}

    @abstractmethod
    def predict(self, requests: list[Request]) -> list[Answer | Exception]:
        """One answer per request, in order; an Exception in a request's place fails that request
        alone. Raise to fail the batch; the engine then retries each request alone."""

    def stats(self) -> dict[str, Any]:
        """Counters of the work done so far, written to run.json's timings."""
        return {}

    def close(self) -> None:
        """Free model memory; called once at the end of a run."""
