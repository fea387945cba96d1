"""The model side of a run, shared by every engine: requests in, prediction lines out.

One `Labeler` lives in each process that holds a model (the local engine, each Ray actor). It
renders a group's templates into requests, calls the backend in batches, and turns answers and
failures into prediction lines. Two kinds of failure are handled here so every engine behaves
the same: a batch that raises is retried one request at a time (one bad group fails alone),
and a CUDA out-of-memory error halves the batch, retries it and keeps the smaller size.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from autolabel.backends import available_backends, backend_class
from autolabel.backends.base import Answer, Backend, BackendOptions, Request
from autolabel.config import RunConfig
from autolabel.errors import AutolabelError, InputError
from autolabel.groups import BadGroup, ImageGroup
from autolabel.prediction import ImageInfo, Prediction, Segment, Turn, prediction_key
from autolabel.templates import RenderedPrompt, Template, load_template, render, used_variables
from autolabel.video import keyframe_names

# `--batch-size auto` on CUDA starts here and halves on out-of-memory until a batch fits.
AUTO_BATCH_START = 64
# `--batch-size auto` without CUDA: host memory is not an exception one can catch, so no probing.
AUTO_BATCH_CPU = 4


@dataclass
class OomEvent:
    """One out-of-memory retry, recorded in run.json."""

    batch: int
    retried_as: int
    message: str

    def to_json(self) -> dict:
        return {"batch": self.batch, "retried_as": self.retried_as, "message": self.message}


@dataclass
class Predicted:
    """Answers for requests, in order, with each batch's timings; turned into lines by `lines()`
    (RLE encoding), which engines run behind the model."""

    requests: list[Request] = field(default_factory=list)
    answers: list[Answer | Exception] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    predict_s: float = 0.0
    oom: list[OomEvent] = field(default_factory=list)


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, checked only if torch is already imported (it is, once a model ran)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


def load_templates(config: RunConfig) -> list[Template]:
    templates = [load_template(p) for p in config.prompt]
    names = [t.name for t in templates]
    if len(set(names)) != len(names):
        raise AutolabelError(f"--prompt: the same template is given twice ({', '.join(names)})")
    return templates


def model_id_of(config: RunConfig) -> str:
    """The model id in prediction keys; known without loading (or importing) the backend."""
    spec = available_backends().get(config.backend)
    default = spec.default_model if spec else backend_class(config.backend).default_model
    return config.model or default or config.backend


class Labeler:
    def __init__(self, config: RunConfig, backend_factory: Callable[[BackendOptions], Backend] | None = None):
        self.config = config
        self.templates = load_templates(config)
        self.model_id = model_id_of(config)
        self.options = BackendOptions(model=config.model, mask_model=config.mask_model,
                                      device=config.device, dtype=config.dtype,
                                      max_new_tokens=config.max_new_tokens,
                                      trust_remote_code=config.trust_remote_code, server=config.server,
                                      concurrency=config.concurrency, api_key_env=config.api_key_env,
                                      extra=dict(config.backend_option))
        self._backend_factory = backend_factory
        self._backend: Backend | None = None
        # on a server, a "batch" is the requests in flight: the server batches them continuously;
        # None: `auto`, settled when the model loads
        self._batch_size: int | None = (config.concurrency if config.server else
                                        config.batch_size if isinstance(config.batch_size, int) else None)

    # -- the model ------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            factory = self._backend_factory or backend_class(self.config.backend)
            try:
                self._backend = factory(self.options)
            except AutolabelError:
                raise
            except Exception as e:  # noqa: BLE001 - a model that will not load is a configuration error
                raise AutolabelError(f"backend {self.config.backend!r} could not load model "
                                     f"{self.model_id!r}: {type(e).__name__}: {e}") from e
            if self._batch_size is None:  # `auto`: the loaded model's device decides where probing starts
                self._batch_size = AUTO_BATCH_START if self._on_cuda() else AUTO_BATCH_CPU
        return self._backend

    @property
    def batch_size(self) -> int:
        """Requests per backend call: as given (with --server, --concurrency). `auto` settles when
        the model loads (`predict` loads it first); until then it reads as AUTO_BATCH_CPU."""
        return self._batch_size if self._batch_size is not None else AUTO_BATCH_CPU

    def _on_cuda(self) -> bool:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return False
        return (self.config.device or "cuda").startswith("cuda")

    def model_info(self) -> dict:
        return self._backend.model_info() if self._backend is not None else {"model": self.model_id}

    def stats(self) -> dict:
        """The backend's own counters for run.json (e.g. mask-head busy time, server retries)."""
        return self._backend.stats() if self._backend is not None else {}

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    # -- requests --------------------------------------------------------------------------
    def keys(self, group_id: str) -> list[str]:
        return [prediction_key(group_id, t.name, self.model_id) for t in self.templates]

    def asked(self, group: ImageGroup | BadGroup) -> dict[str, Asked]:
        """What each of the group's keys asks the model: the template's hash and the variables it
        renders with. A key done with the same ask is done; done with another, it is redone."""
        given = given_variables(self.config.var, group)
        return {prediction_key(group.id, t.name, self.model_id): (t.content_hash, used_variables(t, given))
                for t in self.templates}

    def finished_keys(self, group: ImageGroup | BadGroup, done: Mapping[str, Asked]) -> tuple[set[str], set[str]]:
        """The group's keys done with the same ask, and those done with another (to redo)."""
        same, changed = set(), set()
        for key, ask in self.asked(group).items():
            if key in done:
                (same if same_ask(done[key], ask) else changed).add(key)
        return same, changed

    def requests(self, group: ImageGroup, images: list[np.ndarray], skip: Iterable[str] = (), decode_s: float = 0.0
                 ) -> tuple[list[Request], list[Prediction]]:
        """The group's requests, one per template not in `skip`; a template that will not render
        for this group becomes an error line instead."""
        skip = set(skip)
        requests, failures = [], []
        for template in self.templates:
            key = prediction_key(group.id, template.name, self.model_id)
            if key in skip:
                continue
            try:
                prompt = render_group(template, group, self.config.var)
            except AutolabelError as e:
                failures.append(self.failure(group, key, "template", str(e), template=template))
                continue
            requests.append(Request(key, group, images, prompt, round(decode_s, 4)))
        return requests, failures

    # -- predicting ------------------------------------------------------------------------
    def predict(self, requests: list[Request]) -> Predicted:
        """Answers for `requests`, calling the backend `batch_size` requests at a time."""
        if requests:
            self.backend  # noqa: B018 - loaded first: that settles `--batch-size auto`
        done = Predicted()
        start = 0
        while start < len(requests):
            chunk = requests[start:start + self.batch_size]
            t0 = time.perf_counter()
            answers = self._predict(chunk, done.oom)
            if answers is None:
                continue  # out of memory: batch_size was halved, the same requests go again
            seconds = time.perf_counter() - t0
            done.predict_s += seconds
            timings = {"predict_s": round(seconds / len(chunk), 4), "batch": len(chunk)}
            done.requests += chunk
            done.answers += answers
            done.timings += [timings] * len(chunk)
            start += len(chunk)
        return done

    def _predict(self, requests: list[Request], oom: list[OomEvent]) -> list[Answer | Exception] | None:
        backend = self.backend  # a load failure is a configuration error: it propagates (exit 2)
        try:
            answers = backend.predict(requests)
            if len(answers) != len(requests):
                raise RuntimeError(f"backend returned {len(answers)} answers for {len(requests)} requests")
            return answers
        except Exception as e:  # noqa: BLE001 - sorted below: out of memory, or a bad request
            if is_out_of_memory(e) and len(requests) > 1:
                self._batch_size = max(1, len(requests) // 2)
                oom.append(OomEvent(len(requests), self._batch_size, str(e).splitlines()[0][:200]))
                _free_cuda_cache()
                return None
            return [self._predict_one(backend, r) for r in requests]

    @staticmethod
    def _predict_one(backend: Backend, request: Request) -> Answer | Exception:
        try:
            answers = backend.predict([request])
            if len(answers) != 1:
                raise RuntimeError(f"backend returned {len(answers)} answers for 1 request")
            return answers[0]
        except Exception as e:  # noqa: BLE001 - one group's failure must not stop the run
            if is_out_of_memory(e):
                _free_cuda_cache()
            return e

    # -- lines -----------------------------------------------------------------------------
    def lines(self, predicted: Predicted) -> list[Prediction]:
        """Prediction lines (masks RLE-encoded) for predicted answers, failures included."""
        out = []
        for request, answer, timings in zip(predicted.requests, predicted.answers, predicted.timings):
            if isinstance(answer, Exception):
                line = self.failure(request.group, request.key, "predict", f"{type(answer).__name__}: {answer}",
                                    prompt=request.prompt, images=request.images)
                if getattr(answer, "raw", None):  # what the model wrote, when that is why it failed
                    line.error["answer"] = answer.raw
            else:
                line = self._success(request, answer)
            line.timings = {**timings, "decode_s": request.decode_s}
            out.append(line)
        return out

    def _success(self, request: Request, answer: Answer) -> Prediction:
        min_score = self.config.min_score  # `--min-score`: masks below it are not written at all
        turns = [
            Turn(question=t.question, answer=t.answer, rejected=list(t.rejected),
                 segments=[Segment.from_target(m) for m in t.masks if m.score >= min_score])
            for t in answer.turns
        ]
        return Prediction(key=request.key, group_id=request.group.id,
                          images=_image_infos(request.group, request.images),
                          template=request.prompt.name, template_hash=request.prompt.hash,
                          model=self.model_id, backend=self.config.backend, turns=turns,
                          variables=dict(request.prompt.variables), category=request.prompt.category,
                          truncated=any(getattr(t, "truncated", False) for t in answer.turns))

    def failure(self, group: ImageGroup | BadGroup, key: str, stage: str, message: str, *,
                template: Template | None = None, file: str | None = None, files: list[dict] | None = None,
                prompt=None, images=None) -> Prediction:
        """An error line for `key`, naming what was asked: the rendered `prompt`, else the `template`."""
        if prompt is None and template is None:
            raise TypeError("failure() needs the prompt or the template the key asked")
        name, thash = (prompt.name, prompt.hash) if prompt else (template.name, template.content_hash)
        infos = [] if isinstance(group, BadGroup) else _image_infos(group, images)
        turns = [Turn(question=t.text) for t in prompt.turns] if prompt else []
        return Prediction(key=key, group_id=group.id, images=infos, template=name, template_hash=thash,
                          model=self.model_id, backend=self.config.backend, turns=turns, status="error",
                          error={"stage": stage, "message": message, "file": file, "files": files or []},
                          category=(prompt or template).category)

    def group_failure(self, group: ImageGroup | BadGroup, stage: str, file: str | InputError,
                      reason: str = "") -> list[Prediction]:
        """One error line per template for a group that could not be read at all. `file` may be the
        InputError itself (a GroupInputError names every bad file of the group)."""
        error = file if isinstance(file, InputError) else InputError(file, reason)
        return [self.failure(group, prediction_key(group.id, t.name, self.model_id), stage, error.message,
                             template=t, file=error.file, files=error.files)
                for t in self.templates]


# what a key asked the model: (template hash, the variables it rendered with)
Asked = tuple[str, dict[str, str]]


def same_ask(done: Asked, asked: Asked) -> bool:
    """A line done with `done` answers `asked`: the same template hash and the same value of every
    variable both name (lines written before lines stored every variable they used name fewer)."""
    (done_hash, done_vars), (hash_, variables) = done, asked
    return done_hash == hash_ and all(done_vars[k] == v for k, v in variables.items() if k in done_vars)


def render_group(template: Template, group: ImageGroup, config_var: Mapping[str, str]) -> RenderedPrompt:
    """The template rendered for a group: its variables over --var, its files, exemplars, and a
    decoded clip's keyframes called 'Frame k (t=...s)'. `run` and `prompts render` both use it."""
    return render(template, n_images=len(group.images), variables=given_variables(config_var, group),
                  group_id=group.id, files=[im.file for im in group.images], exemplars=exemplar_images(group),
                  image_names=keyframe_names(group.video))


def given_variables(config_var: Mapping[str, str], group: ImageGroup | BadGroup) -> dict[str, str]:
    """A group's template variables: --var, then its exemplar's label (a manifest prompt's `label`,
    a COCO annotation's category) as `label`, then the group's own manifest variables; later wins."""
    label = next((im.prompt.label for im in group.images if im.prompt is not None and im.prompt.label), None)
    return {**config_var, **({"label": label} if label else {}), **getattr(group, "variables", {})}


def exemplar_images(group: ImageGroup) -> tuple[int, ...]:
    """1-based numbers of the group's images that carry a visual prompt."""
    return tuple(i for i, im in enumerate(group.images, 1) if im.prompt is not None)


def _image_infos(group: ImageGroup, images: list[np.ndarray] | None) -> list[ImageInfo]:
    if getattr(group.video, "frames", None) is not None:  # a decoded clip: every sampled frame is an image
        from autolabel.video import frame_infos

        return frame_infos(group.video)
    return [ImageInfo(im.file, int(px.shape[1]) if images else None, int(px.shape[0]) if images else None,
                      im.coco_id, im.sample_id)
            for im, px in zip(group.images, images or [None] * len(group.images))]


def _free_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
