"""The local engine: stream groups -> decode ahead in threads -> batch -> backend -> write behind.

Memory stays flat: at most a window of decoded groups is alive at a time, and each batch is
encoded and written (and flushed) behind the model while the next one runs. The model is
loaded only when the first request needs it, so a rerun with nothing left to do never imports
torch. The planning helpers here (which groups, which keys are done, decoding) also serve the
Ray engine, so both engines agree on what a run has left to do.
"""

from __future__ import annotations

import hashlib
import platform
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from autolabel import __version__
from autolabel.backends.base import Backend, BackendOptions, Request
from autolabel.config import RunConfig
from autolabel.errors import AutolabelError, GroupInputError, InputError
from autolabel.groups import BadGroup, ImageGroup
from autolabel.images import decode_image
from autolabel.labeler import AUTO_BATCH_CPU, Labeler, OomEvent, Predicted
from autolabel.prediction import Prediction
from autolabel.prefetch import read_ahead
from autolabel.sources import Source, open_source
from autolabel.store import PredictionWriter, scan_status
from autolabel.templates import render


@dataclass
class RunSummary:
    groups: int = 0            # groups seen in this shard/limit
    images: int = 0
    done: int = 0              # predictions written ok in this run
    already_done: int = 0      # keys skipped because an earlier run finished them
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    oom: list[OomEvent] = field(default_factory=list)  # out-of-memory retries
    batch_size: int | None = None  # what `auto` settled on, or the size given
    wall_s: float = 0.0
    predict_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def count(self, lines: list[Prediction]) -> int:
        """Count written lines as done or failed; returns how many failed."""
        failed = 0
        for line in lines:
            if line.status == "ok":
                self.done += 1
            else:
                failed += 1
                self.failed.append((line.key, line.error.get("message", "") if line.error else ""))
        return failed


class Progress:
    """What the engine reports as it goes; the CLI renders it with rich, tests can count it."""

    def start(self, total_groups: int | None) -> None: ...
    def advance(self, groups: int, images: int, failed: int) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Decoded:
    group: ImageGroup | BadGroup
    images: list[np.ndarray] | None
    error: GroupInputError | None  # every image of the group that would not decode
    seconds: float
    notes: list[str] = field(default_factory=list)  # e.g. which page of a multi-page TIFF was used


def shard_of(group_id: str, n: int) -> int:
    """A stable shard for a group: the same on every machine and every rerun."""
    return int.from_bytes(hashlib.sha1(group_id.encode()).digest()[:8], "big") % n


def done_keys(run_dirs: list[Path]) -> set[str]:
    """Keys finished by any earlier run into these directories, whichever engine wrote them."""
    return {k for k, s in scan_status(run_dirs).items() if s == "ok"}


def planned_groups(config: RunConfig, source: Source) -> Iterator[ImageGroup | BadGroup]:
    """The groups of this shard, up to --limit, in source order."""
    taken = 0
    for group in source:
        if config.shard and shard_of(group.id, config.shard[1]) != config.shard[0]:
            continue
        if config.limit is not None and taken >= config.limit:
            return
        taken += 1
        yield group


def todo_groups(groups: Iterator[ImageGroup | BadGroup], labeler: Labeler, done: set[str],
                summary: RunSummary, progress: Progress) -> Iterator[ImageGroup | BadGroup]:
    """Groups with at least one key left to do; the rest are counted, not decoded."""
    for group in groups:
        keys = labeler.keys(group.id)
        finished = sum(k in done for k in keys)
        summary.already_done += finished
        if not isinstance(group, BadGroup) and finished == len(keys):
            progress.advance(1, len(group.images), 0)
            continue
        yield group


def decode_group(group: ImageGroup | BadGroup, max_pixels: int) -> Decoded:
    """Decode every image of the group, going on past a bad one so that all of them are named;
    a BadGroup's remaining images are decoded only for that."""
    t0 = time.perf_counter()
    images, errors, notes = [], [], []
    for im in group.images:
        try:
            images.append(decode_image(im.path, im.file, max_pixels=max_pixels, notes=notes))
        except InputError as e:
            errors.append(e)
    error = GroupInputError(errors) if errors else None
    ok = not errors and not isinstance(group, BadGroup)
    return Decoded(group, images if ok else None, error, time.perf_counter() - t0, notes)


def failure_lines(labeler: Labeler, decoded: Decoded) -> list[Prediction]:
    """Error lines for a group that could not be listed or decoded, naming every bad file."""
    group = decoded.group
    if isinstance(group, BadGroup):
        return labeler.group_failure(group, "source", group.error(decoded.error.errors if decoded.error else []))
    return labeler.group_failure(group, "decode", decoded.error)


class Engine:
    """The local engine: one process, one model, decoding and writing overlapped with it."""

    name = "local"

    def __init__(self, config: RunConfig, progress: Progress | None = None,
                 backend_factory: Callable[[BackendOptions], Backend] | None = None):
        self.config = config
        self.progress = progress or Progress()
        self.labeler = Labeler(config, backend_factory)
        self.engine_info: dict = {}  # what run.json records of the engine beyond its name and batch size

    @property
    def backend(self) -> Backend:
        return self.labeler.backend

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Open the source and the run directory, label what is left (`_process`), record run.json."""
        cfg = self.config
        t0 = time.perf_counter()
        source = open_source(cfg.input, manifest=cfg.manifest, group_by=cfg.group_by,
                             allow_outside_root=cfg.allow_outside_root)
        writer = PredictionWriter(cfg.out, cfg.shard_name)
        summary = RunSummary()
        run_id = uuid.uuid4().hex[:12]
        try:
            done = set() if cfg.overwrite else done_keys([cfg.out])
            writer.write_info(self._run_info(run_id, source, summary, finished=False))
            total = None if cfg.quiet else sum(1 for _ in planned_groups(cfg, source))
            self.progress.start(total)
            self._process(source, writer, done, summary)
            summary.skipped_files = list(source.stats.skipped)
        finally:
            self.progress.stop()
            summary.wall_s = time.perf_counter() - t0
            self.labeler.close()
            try:
                writer.write_info(self._run_info(run_id, source, summary, finished=True))
            finally:
                writer.close()
        return summary

    def _process(self, source: Source, writer: PredictionWriter, done: set[str],
                 summary: RunSummary) -> None:
        """Label the groups of `source` not in `done`, writing lines and counting them in `summary`."""
        cfg = self.config
        batch: list[Request] = []
        # decode ahead by two batches (or threads); `auto` is not known before the model loads
        window = max(2 * (cfg.batch_size if isinstance(cfg.batch_size, int) else AUTO_BATCH_CPU), cfg.decode_workers * 2)
        with ThreadPoolExecutor(cfg.decode_workers, thread_name_prefix="decode") as decoders, \
                ThreadPoolExecutor(1, thread_name_prefix="write") as write_behind:
            pending: deque[Future] = deque()

            def write_behind_model(job: Callable[[], list[Prediction]]) -> None:
                """Encode and write on the one writer thread, keeping at most two jobs waiting."""
                pending.append(write_behind.submit(self._write, writer, job, summary))
                while len(pending) > 2:
                    pending.popleft().result()

            def written(predicted: Predicted) -> None:
                summary.predict_s += predicted.predict_s
                summary.oom.extend(predicted.oom)
                write_behind_model(lambda: self.labeler.lines(predicted))

            def flush(requests: list[Request]) -> None:
                written(self.labeler.predict(requests))

            # --server: each request is in flight on its own, so a slow answer holds up nobody;
            # finished ones are written as they land, and at most `concurrency` wait at once.
            streaming = cfg.server is not None
            requesters = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="request") if streaming else None
            in_flight: set[Future] = set()

            def collect(limit: int) -> None:
                nonlocal in_flight
                finished, in_flight = wait(in_flight, timeout=0)
                while len(in_flight) > limit:
                    more, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    finished |= more
                for f in finished:
                    written(f.result())

            def send(requests: list[Request]) -> None:
                self.labeler.backend  # noqa: B018 - loaded (and the server checked) here, not in a request thread
                for request in requests:
                    in_flight.add(requesters.submit(self.labeler.predict, [request]))
                collect(cfg.concurrency)

            todo = todo_groups(planned_groups(cfg, source), self.labeler, done, summary, self.progress)
            for decoded in read_ahead(todo, partial(decode_group, max_pixels=cfg.max_pixels), decoders, window):
                group = decoded.group
                summary.groups += 1
                if isinstance(group, BadGroup) or decoded.error is not None:
                    lines = failure_lines(self.labeler, decoded)
                    write_behind_model(lambda lines=lines: lines)
                    self.progress.advance(1, 0, 0)
                    continue
                summary.images += len(group.images)
                requests, failures = self.labeler.requests(group, decoded.images, skip=done, decode_s=decoded.seconds)
                if failures:
                    write_behind_model(lambda failures=failures: failures)
                if streaming:
                    send(requests)
                else:
                    batch.extend(requests)
                    if batch and len(batch) >= self.labeler.batch_size:
                        flush(batch)
                        batch = []
                self.progress.advance(1, len(group.images), 0)
            if batch:
                flush(batch)
            if requesters is not None:
                collect(0)
                requesters.shutdown()
            for f in pending:
                f.result()
        summary.batch_size = self.labeler.batch_size if self.labeler.loaded else None

    def _write(self, writer: PredictionWriter, make_lines: Callable[[], list[Prediction]],
               summary: RunSummary) -> None:
        lines = make_lines()
        writer.write(lines)
        self.progress.advance(0, 0, summary.count(lines))

    def _run_info(self, run_id: str, source: Source, summary: RunSummary, *, finished: bool) -> dict:
        return run_info(self.config, self.labeler, source, summary, run_id=run_id, finished=finished,
                        engine=self.name, engine_info=self.engine_info)


def run_info(config: RunConfig, labeler: Labeler, source: Source, summary: RunSummary, *, run_id: str,
             finished: bool, engine: str, engine_info: dict | None = None) -> dict:
    """What run.json records: provenance, parameters, counts, timings, out-of-memory retries."""
    templates = {}
    for t in labeler.templates:
        try:
            ontology = render(t, n_images=1, variables=config.var).ontology
        except AutolabelError:
            ontology = {}
        templates[t.name] = {"hash": t.content_hash, "category": t.category, "version": t.version,
                             "ontology": ontology, "categories": list(dict.fromkeys(ontology.values()))}
    return {
        "run_id": run_id,
        "finished": finished,
        "autolabel_version": __version__,
        "input_root": str(source.root),
        "source_kind": source.kind,
        "backend": config.backend,
        "model": labeler.model_id,
        "model_info": labeler.model_info(),
        "templates": templates,
        "parameters": config.model_dump(mode="json"),
        "engine": {"name": engine, "batch_size": summary.batch_size, **(engine_info or {})},
        "counts": {"groups": summary.groups, "images": summary.images, "done": summary.done,
                   "already_done": summary.already_done, "failed": len(summary.failed),
                   "skipped_files": len(source.stats.skipped)},
        "timings": {"wall_s": round(summary.wall_s, 3), "predict_s": round(summary.predict_s, 3),
                    **labeler.stats()},
        "oom_retries": [e.to_json() for e in summary.oom],
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
