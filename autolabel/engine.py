"""The local engine: stream groups -> decode ahead in threads -> batch -> backend -> write behind.

Memory stays flat: at most a window of decoded groups is alive at a time, and each batch is
encoded and written (and flushed) behind the model while the next one runs. The model is
loaded only when the first request needs it, so a rerun with nothing left to do never imports
torch. The planning helpers here (which groups, which keys are done, decoding) also serve the
Ray engine, so both engines agree on what a run has left to do.
"""

from __future__ import annotations

import hashlib
import json
import platform
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
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
from autolabel.labeler import AUTO_BATCH_CPU, Asked, Labeler, OomEvent, Predicted, given_variables
from autolabel.prediction import Prediction
from autolabel.prefetch import read_ahead
from autolabel.sources import Source, open_source
from autolabel.store import PredictionWriter, scan_lines
from autolabel.templates import missing_variables, render


@dataclass
class RunSummary:
    groups: int = 0            # groups seen in this shard/limit
    images: int = 0
    done: int = 0              # predictions written ok in this run
    already_done: int = 0      # keys skipped because an earlier run finished them with the same ask
    redone: int = 0            # keys an earlier run finished with another template or variables: done again
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
    """What the engine reports as it goes; the CLI renders it with rich, tests can count it.

    `start` gets the groups of this shard/limit and how many of them earlier runs finished;
    `advance` is called as lines reach the disk: `groups` whose every line is now written (with
    their `images`), and `failed` lines among those just written."""

    def note(self, lines: list[str]) -> None: ...
    def start(self, total_groups: int | None, finished: int = 0) -> None: ...
    def advance(self, groups: int, images: int, failed: int) -> None: ...
    def stop(self) -> None: ...


class GroupsWritten:
    """Which groups have every line on disk: a group counts as labelled when its last line is
    written, not when it is queued. Filled from the reading thread, drained by the writer's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, deque[list[int]]] = {}  # key -> [lines left, images] of its group

    def expect(self, keys: list[str], images: int) -> None:
        entry = [len(keys), images]
        with self._lock:
            for key in keys:
                self._owners.setdefault(key, deque()).append(entry)

    def written(self, lines: list[Prediction]) -> tuple[int, int]:
        """Groups (and their images) that `lines` finished."""
        groups = images = 0
        with self._lock:
            for line in lines:
                owners = self._owners.get(line.key)
                if not owners:
                    continue
                entry = owners.popleft()
                if not owners:
                    del self._owners[line.key]
                entry[0] -= 1
                if entry[0] == 0:
                    groups += 1
                    images += entry[1]
        return groups, images


@dataclass
class Plan:
    """What a run has to do, found in one pass over the source before anything loads or is written."""

    total: int = 0     # groups in this shard/limit
    finished: int = 0  # of them, every key done by an earlier run with the same ask
    work: int = 0      # groups with something to label (the model is needed)
    bad: int = 0       # groups the source could not build (error lines, no model)


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


def todo_groups(groups: Iterator[ImageGroup | BadGroup], labeler: Labeler, done: Mapping[str, Asked],
                summary: RunSummary) -> Iterator[ImageGroup | BadGroup]:
    """Groups with at least one key left to do (or done with another ask); the rest are counted,
    not decoded."""
    for group in groups:
        same, changed = labeler.finished_keys(group, done)
        summary.already_done += len(same)
        summary.redone += len(changed)
        if not isinstance(group, BadGroup) and len(same) == len(labeler.templates):
            continue
        yield group


def plan_run(config: RunConfig, source: Source, labeler: Labeler, done: Mapping[str, Asked]) -> Plan:
    """Count the run's groups and what is left, and refuse, before anything loads, a run that
    cannot label anything: an input with no groups at all, or a template variable that neither
    --var, a default nor any group left to do gives (every group would fail alone)."""
    plan = Plan()
    seen = 0

    def every_group() -> Iterator[ImageGroup | BadGroup]:
        nonlocal seen
        for group in source:
            seen += 1
            yield group

    unset = {name: t.name for t in labeler.templates for name in missing_variables(t, config.var)}
    given: set[str] = set()
    for group in planned_groups(config, every_group()):
        plan.total += 1
        if isinstance(group, BadGroup):
            plan.bad += 1
            continue
        same, _ = labeler.finished_keys(group, done)
        if len(same) == len(labeler.templates):
            plan.finished += 1
            continue
        plan.work += 1
        if unset:
            given |= unset.keys() & given_variables(config.var, group).keys()
    if seen == 0:
        skipped = source.stats.skipped
        why = "; ".join(f"{f}: {r}" for f, r in skipped[:3]) + (f"; ... {len(skipped) - 3} more" if len(skipped) > 3 else "")
        raise AutolabelError(f"{config.manifest or config.input or config.from_fiftyone}: nothing to label: no images found"
                             + (f" ({len(skipped)} files skipped: {why})" if skipped else ""))
    needed = sorted(set(unset) - given)
    if needed and plan.work:
        name = needed[0]
        also = f" (and {', '.join(repr(n) for n in needed[1:])})" if needed[1:] else ""
        raise AutolabelError(f"template {unset[name]!r} needs variable {name!r}{also}, which has no default: "
                             f"give it with --var {name}=VALUE (or per group in a manifest's `variables`)")
    return plan


def decode_group(group: ImageGroup | BadGroup, max_pixels: int) -> Decoded:
    """Decode every image of the group, going on past a bad one so that all of them are named;
    a BadGroup's remaining images are decoded only for that."""
    t0 = time.perf_counter()
    if isinstance(group, ImageGroup) and group.video is not None:  # a clip: its keyframes (video.py)
        from autolabel.video_source import decode_clip_group

        try:
            clip_group, keyframes = decode_clip_group(group, max_pixels)
        except InputError as e:
            return Decoded(group, None, GroupInputError([e]), time.perf_counter() - t0)
        return Decoded(clip_group, keyframes, None, time.perf_counter() - t0)
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
        self._written = GroupsWritten()
        self._status: dict[str, str] = {}  # key -> status of its last line in the run directory

    @property
    def backend(self) -> Backend:
        return self.labeler.backend

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Plan and check (nothing is loaded or written before), open the run directory, label what
        is left (`_process`), and record the invocation in run.json however it ends."""
        cfg = self.config
        t0 = time.perf_counter()
        started = _now()
        from autolabel.video import VideoSpec

        source = open_source(cfg.input, manifest=cfg.manifest, group_by=cfg.group_by,
                             video=VideoSpec(cfg.fps, cfg.max_frames, cfg.keyframes), frames=cfg.frames,
                             allow_outside_root=cfg.allow_outside_root, from_fiftyone=cfg.from_fiftyone, view=cfg.view)
        lines = scan_lines([cfg.out]) if cfg.out.is_dir() else {}
        done = {} if cfg.overwrite else {k: (h, v) for k, (status, h, v) in lines.items() if status == "ok"}
        plan = plan_run(cfg, source, self.labeler, done)
        if plan.work:
            from autolabel.preflight import check_run

            self.progress.note(check_run(cfg))
        writer = PredictionWriter(cfg.out, cfg.shard_name)
        self._status = {key: line[0] for key, line in lines.items()}
        del lines
        summary = RunSummary()
        run_id = uuid.uuid4().hex[:12]
        history = _earlier_invocations(writer.info_path)
        ending: dict = {"outcome": "interrupted", "message": "stopped (Ctrl-C or a signal) before the end"}
        try:
            writer.write_info(self._run_info(run_id, source, summary, history, started, {"outcome": "running"}))
            self.progress.start(plan.total, plan.finished)
            self._process(source, writer, done, summary)
            summary.skipped_files = list(source.stats.skipped)
            ending = {"outcome": "completed", "exit_code": summary.exit_code}
        except KeyboardInterrupt:
            raise
        except AutolabelError as e:
            ending = {"outcome": "error", "exit_code": 2, "message": str(e)}
            raise
        except BaseException as e:
            ending = {"outcome": "error", "message": f"{type(e).__name__}: {e}"}
            raise
        finally:
            self.progress.stop()
            summary.wall_s = time.perf_counter() - t0
            self.labeler.close()
            try:
                writer.write_info(self._run_info(run_id, source, summary, history, started,
                                                 {**ending, "ended": _now()}))
            finally:
                writer.close()
        return summary

    def _process(self, source: Source, writer: PredictionWriter, done: Mapping[str, Asked],
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

            def abandon() -> None:
                """Ctrl-C or an error: requests not yet sent are dropped; those in flight end when
                the backend closes its connection (Engine.run), instead of being waited for."""
                if requesters is not None:
                    requesters.shutdown(wait=False, cancel_futures=True)

            try:
                todo = todo_groups(planned_groups(cfg, source), self.labeler, done, summary)
                for decoded in read_ahead(todo, partial(decode_group, max_pixels=cfg.max_pixels), decoders, window):
                    group = decoded.group
                    summary.groups += 1
                    if isinstance(group, BadGroup) or decoded.error is not None:
                        lines = failure_lines(self.labeler, decoded)
                        self._written.expect([line.key for line in lines], 0)
                        write_behind_model(lambda lines=lines: lines)
                        continue
                    summary.images += len(group.images)
                    skip, _ = self.labeler.finished_keys(group, done)
                    requests, failures = self.labeler.requests(group, decoded.images, skip=skip, decode_s=decoded.seconds)
                    self._written.expect([r.key for r in requests] + [f.key for f in failures], len(group.images))
                    if failures:
                        write_behind_model(lambda failures=failures: failures)
                    if streaming:
                        send(requests)
                    else:
                        batch.extend(requests)
                        if batch and len(batch) >= self.labeler.batch_size:
                            flush(batch)
                            batch = []
                if batch:
                    flush(batch)
                if requesters is not None:
                    collect(0)
                    requesters.shutdown()
            except BaseException:
                abandon()
                raise
            for f in pending:
                f.result()
        summary.batch_size = self.labeler.batch_size if self.labeler.loaded else None

    def _write(self, writer: PredictionWriter, make_lines: Callable[[], list[Prediction]],
               summary: RunSummary) -> None:
        lines = make_lines()
        writer.write(lines)
        self.written(lines, summary.count(lines))

    def written(self, lines: list[Prediction], failed: int) -> None:
        """Lines now on disk: the directory's totals and the progress move (groups when complete)."""
        for line in lines:
            self._status[line.key] = line.status
        groups, images = self._written.written(lines)
        self.progress.advance(groups, images, failed)

    def _run_info(self, run_id: str, source: Source, summary: RunSummary, history: list[dict], started: str,
                  ending: dict) -> dict:
        info = run_info(self.config, self.labeler, source, summary, run_id=run_id,
                        finished=ending["outcome"] == "completed", engine=self.name, engine_info=self.engine_info)
        this = {"run_id": run_id, "started": started, **ending, "engine": self.name,
                "options": info["parameters"], "counts": info["counts"]}
        statuses = list(self._status.values())
        return {**info, "invocations": [*history, this],
                "totals": {"keys": len(statuses), "done": statuses.count("ok"), "failed": statuses.count("error")}}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _earlier_invocations(info_path: Path) -> list[dict]:
    """The invocations an existing run.json records; one written before they were kept becomes one."""
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(info, dict):
        return []
    if isinstance(info.get("invocations"), list):
        return info["invocations"]
    return [{"run_id": info.get("run_id"), "started": None, "ended": None,
             "outcome": "completed" if info.get("finished") else "unknown", "engine": (info.get("engine") or {}).get("name"),
             "options": info.get("parameters"), "counts": info.get("counts")}]


def run_info(config: RunConfig, labeler: Labeler, source: Source, summary: RunSummary, *, run_id: str,
             finished: bool, engine: str, engine_info: dict | None = None) -> dict:
    """What run.json records of the latest invocation: provenance, parameters, counts, timings,
    out-of-memory retries (the engine adds every invocation and the directory's totals)."""
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
                   "already_done": summary.already_done, "redone": summary.redone, "failed": len(summary.failed),
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
