"""The engine: stream groups -> decode ahead in threads -> batch -> backend -> write behind.

Memory stays flat: at most a window of decoded groups is alive at a time, and each batch is
written (and flushed) before the next few are decoded. A failing batch is retried one request
at a time so a bad group fails alone. The model is loaded only when the first request needs
it, so a rerun with nothing left to do never imports torch.
"""

from __future__ import annotations

import hashlib
import platform
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from autolabel import __version__
from autolabel.backends import available_backends, backend_class
from autolabel.backends.base import Answer, Backend, BackendOptions, Request
from autolabel.config import RunConfig
from autolabel.errors import AutolabelError, InputError
from autolabel.groups import BadGroup, ImageGroup
from autolabel.images import decode_image
from autolabel.prediction import ImageInfo, Prediction, Segment, Turn, prediction_key
from autolabel.sources import Source, open_source
from autolabel.store import PredictionWriter, scan_status
from autolabel.templates import Template, load_template, render


@dataclass
class RunSummary:
    groups: int = 0            # groups seen in this shard/limit
    images: int = 0
    done: int = 0              # predictions written ok in this run
    already_done: int = 0      # keys skipped because an earlier run finished them
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    model_loaded: bool = False
    wall_s: float = 0.0
    predict_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class Progress:
    """What the engine reports as it goes; the CLI renders it with rich, tests can count it."""

    def start(self, total_groups: int | None) -> None: ...
    def advance(self, groups: int, images: int, failed: int) -> None: ...
    def stop(self) -> None: ...


@dataclass
class _Decoded:
    group: ImageGroup | BadGroup
    images: list[np.ndarray] | None
    error: InputError | None
    seconds: float


def shard_of(group_id: str, n: int) -> int:
    """A stable shard for a group: the same on every machine and every rerun."""
    return int.from_bytes(hashlib.sha1(group_id.encode()).digest()[:8], "big") % n


class Engine:
    def __init__(self, config: RunConfig, progress: Progress | None = None,
                 backend_factory: Callable[[BackendOptions], Backend] | None = None):
        self.config = config
        self.progress = progress or Progress()
        self.templates: list[Template] = [load_template(p) for p in config.prompt]
        names = [t.name for t in self.templates]
        if len(set(names)) != len(names):
            raise AutolabelError(f"--prompt: the same template is given twice ({', '.join(names)})")
        self.spec = available_backends().get(config.backend)
        default_model = self.spec.default_model if self.spec else backend_class(config.backend).default_model
        self.options = BackendOptions(model=config.model, mask_model=config.mask_model,
                                      device=config.device, dtype=config.dtype,
                                      max_new_tokens=config.max_new_tokens,
                                      trust_remote_code=config.trust_remote_code,
                                      extra=dict(config.backend_option))
        self.model_id = config.model or default_model or config.backend
        self._backend_factory = backend_factory
        self._backend: Backend | None = None
        self._decode_seconds: dict[str, float] = {}  # key -> its group's decode time, until written

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunSummary:
        cfg = self.config
        t0 = time.perf_counter()
        source = open_source(cfg.input, manifest=cfg.manifest, group_by=cfg.group_by,
                             allow_outside_root=cfg.allow_outside_root)
        writer = PredictionWriter(cfg.out, cfg.shard_name)
        summary = RunSummary()
        run_id = uuid.uuid4().hex[:12]
        try:
            status = {} if cfg.overwrite else scan_status([cfg.out])
            done = {k for k, s in status.items() if s == "ok"}
            writer.write_info(self._run_info(run_id, source, summary, finished=False))
            total = None if cfg.quiet else sum(1 for _ in self._groups(source))
            self.progress.start(total)
            self._process(source, writer, done, summary)
            summary.skipped_files = list(source.stats.skipped)
        finally:
            self.progress.stop()
            summary.wall_s = time.perf_counter() - t0
            if self._backend is not None:
                self._backend.close()
            try:
                writer.write_info(self._run_info(run_id, source, summary, finished=True))
            finally:
                writer.close()
        return summary

    def _groups(self, source: Source) -> Iterator[ImageGroup | BadGroup]:
        """The groups of this shard, up to --limit, in source order."""
        shard = self.config.shard
        taken = 0
        for group in source:
            if shard and shard_of(group.id, shard[1]) != shard[0]:
                continue
            if self.config.limit is not None and taken >= self.config.limit:
                return
            taken += 1
            yield group

    def _process(self, source: Source, writer: PredictionWriter, done: set[str],
                 summary: RunSummary) -> None:
        cfg = self.config
        batch: list[Request] = []
        window = max(2 * cfg.batch_size, cfg.decode_workers * 2)
        with ThreadPoolExecutor(cfg.decode_workers, thread_name_prefix="decode") as decoders, \
                ThreadPoolExecutor(1, thread_name_prefix="write") as write_behind:
            pending_writes: deque[Future] = deque()

            def flush(requests: list[Request]) -> None:
                t = time.perf_counter()
                answers = self._predict(requests)
                seconds = time.perf_counter() - t
                summary.predict_s += seconds
                timings = {"predict_s": round(seconds / len(requests), 4), "batch": len(requests)}
                pending_writes.append(write_behind.submit(self._write, writer, requests, answers, timings, summary))
                while len(pending_writes) > 2:  # bound what waits to be encoded and written
                    pending_writes.popleft().result()

            for decoded in self._decode_ahead(self._todo(source, done, summary), decoders, window):
                group = decoded.group
                summary.groups += 1
                if isinstance(group, BadGroup) or decoded.error is not None:
                    self._write_group_failure(writer, decoded, summary)
                    continue
                summary.images += len(group.images)
                for template in self.templates:
                    key = prediction_key(group.id, template.name, self.model_id)
                    if key in done:
                        continue
                    try:
                        prompt = render(template, n_images=len(group.images), variables={**cfg.var, **group.variables},
                                        group_id=group.id, files=[im.file for im in group.images])
                    except AutolabelError as e:
                        writer.write([self._failure(group, template, key, "template", str(e))])
                        summary.failed.append((key, str(e)))
                        continue
                    batch.append(Request(key, group, decoded.images, prompt))
                    self._decode_seconds[key] = round(decoded.seconds, 4)
                    if len(batch) >= cfg.batch_size:
                        flush(batch)
                        batch = []
                self.progress.advance(1, len(group.images), 0)
            if batch:
                flush(batch)
            for f in pending_writes:
                f.result()

    def _todo(self, source: Source, done: set[str], summary: RunSummary) -> Iterator[ImageGroup | BadGroup]:
        """Groups with at least one key left to do; the rest are counted, not decoded."""
        for group in self._groups(source):
            keys = [prediction_key(group.id, t.name, self.model_id) for t in self.templates]
            if not isinstance(group, BadGroup) and all(k in done for k in keys):
                summary.already_done += len(keys)
                self.progress.advance(1, len(group.images), 0)
                continue
            summary.already_done += sum(k in done for k in keys)
            yield group

    def _decode_ahead(self, groups: Iterator[ImageGroup | BadGroup], pool: ThreadPoolExecutor,
                      window: int) -> Iterator[_Decoded]:
        """Decode up to `window` groups ahead of the consumer, yielding in source order."""
        queue: deque[Future] = deque()
        for group in groups:
            queue.append(pool.submit(self._decode, group))
            if len(queue) >= window:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()

    def _decode(self, group: ImageGroup | BadGroup) -> _Decoded:
        t0 = time.perf_counter()
        if isinstance(group, BadGroup):
            return _Decoded(group, None, None, 0.0)
        try:
            images = [decode_image(im.path, im.file, max_pixels=self.config.max_pixels) for im in group.images]
        except InputError as e:
            return _Decoded(group, None, e, time.perf_counter() - t0)
        return _Decoded(group, images, None, time.perf_counter() - t0)

    # -- the model ------------------------------------------------------------------------
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
        return self._backend

    def _predict(self, requests: list[Request]) -> list[Answer | Exception]:
        backend = self.backend  # a load failure is a configuration error: it propagates (exit 2)
        try:
            answers = backend.predict(requests)
            if len(answers) != len(requests):
                raise RuntimeError(f"backend returned {len(answers)} answers for {len(requests)} requests")
            return answers
        except Exception:
            if len(requests) == 1:
                return [self._predict_one(backend, requests[0])]
            return [self._predict_one(backend, r) for r in requests]

    @staticmethod
    def _predict_one(backend: Backend, request: Request) -> Answer | Exception:
        try:
            answers = backend.predict([request])
            if len(answers) != 1:
                raise RuntimeError(f"backend returned {len(answers)} answers for 1 request")
            return answers[0]
        except Exception as e:  # noqa: BLE001 - one group's failure must not stop the run
            e.__autolabel_trace__ = traceback.format_exc(limit=3)  # type: ignore[attr-defined]
            return e

    # -- records ---------------------------------------------------------------------------
    def _write(self, writer: PredictionWriter, requests: list[Request], answers: list[Answer | Exception],
               timings: dict[str, float], summary: RunSummary) -> None:
        lines: list[Prediction] = []
        for request, answer in zip(requests, answers):
            if isinstance(answer, Exception):
                reason = f"{type(answer).__name__}: {answer}"
                lines.append(self._failure(request.group, None, request.key, "predict", reason,
                                           prompt=request.prompt, images=request.images))
                summary.failed.append((request.key, reason))
            else:
                lines.append(self._success(request, answer))
                summary.done += 1
            lines[-1].timings = {**timings, "decode_s": self._decode_seconds.pop(request.key, 0.0)}
        writer.write(lines)
        self.progress.advance(0, 0, sum(isinstance(a, Exception) for a in answers))

    def _image_infos(self, group: ImageGroup, images: list[np.ndarray] | None) -> list[ImageInfo]:
        return [ImageInfo(im.file, int(px.shape[1]) if images else None, int(px.shape[0]) if images else None,
                          im.coco_id)
                for im, px in zip(group.images, images or [None] * len(group.images))]

    def _success(self, request: Request, answer: Answer) -> Prediction:
        turns = [
            Turn(question=t.question, answer=t.answer, rejected=list(t.rejected),
                 segments=[Segment.from_mask(m.mask, image=m.image, label=m.label, category=m.category,
                                             phrase=m.phrase, score=m.score, round=m.round) for m in t.masks])
            for t in answer.turns
        ]
        return Prediction(key=request.key, group_id=request.group.id,
                          images=self._image_infos(request.group, request.images),
                          template=request.prompt.name, template_hash=request.prompt.hash,
                          model=self.model_id, backend=self.config.backend, turns=turns,
                          variables=dict(request.group.variables), category=request.prompt.category)

    def _failure(self, group: ImageGroup | BadGroup, template: Template | None, key: str, stage: str,
                 message: str, *, file: str | None = None, prompt=None, images=None) -> Prediction:
        name = prompt.name if prompt else template.name if template else key.split("|")[1]
        thash = prompt.hash if prompt else template.content_hash if template else ""
        infos = [] if isinstance(group, BadGroup) else self._image_infos(group, images)
        turns = [Turn(question=t.text) for t in prompt.turns] if prompt else []
        return Prediction(key=key, group_id=group.id, images=infos, template=name, template_hash=thash,
                          model=self.model_id, backend=self.config.backend, turns=turns, status="error",
                          error={"stage": stage, "message": message, "file": file},
                          category=prompt.category if prompt else template.category if template else "")

    def _write_group_failure(self, writer: PredictionWriter, decoded: _Decoded, summary: RunSummary) -> None:
        group = decoded.group
        if isinstance(group, BadGroup):
            stage, file, reason = "source", group.file, group.reason
        else:
            stage, file, reason = "decode", decoded.error.file, decoded.error.reason
        lines = []
        for template in self.templates:
            key = prediction_key(group.id, template.name, self.model_id)
            lines.append(self._failure(group, template, key, stage, f"{file}: {reason}", file=file))
            summary.failed.append((key, f"{file}: {reason}"))
        writer.write(lines)
        self.progress.advance(1, 0, 1)

    def _run_info(self, run_id: str, source: Source, summary: RunSummary, *, finished: bool) -> dict:
        cfg = self.config
        templates = {}
        for t in self.templates:
            try:
                ontology = render(t, n_images=1, variables=cfg.var).ontology
            except AutolabelError:
                ontology = {}
            templates[t.name] = {"hash": t.content_hash, "category": t.category, "version": t.version,
                                 "ontology": ontology, "categories": list(dict.fromkeys(ontology.values()))}
        model_info = self._backend.model_info() if self._backend is not None else {"model": self.model_id}
        return {
            "run_id": run_id,
            "finished": finished,
            "autolabel_version": __version__,
            "input_root": str(source.root),
            "source_kind": source.kind,
            "backend": cfg.backend,
            "model": self.model_id,
            "model_info": model_info,
            "templates": templates,
            "parameters": cfg.model_dump(mode="json"),
            "counts": {"groups": summary.groups, "images": summary.images, "done": summary.done,
                       "already_done": summary.already_done, "failed": len(summary.failed),
                       "skipped_files": len(source.stats.skipped)},
            "timings": {"wall_s": round(summary.wall_s, 3), "predict_s": round(summary.predict_s, 3)},
            "versions": _versions(),
        }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "segment-anything", "xgrammar", "pycocotools", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
