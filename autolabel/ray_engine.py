"""`--engine ray`: the same run spread over the GPUs and machines of a Ray cluster, with Ray Data.

The driver plans as the local engine does (shard, limit, keys already done in RUN_DIR, whichever
engine did them) and streams the groups left to do into `RUN_DIR/.todo-<id>.jsonl`, so its
memory does not grow with the dataset. Ray Data then reads that file in blocks, decodes images
in CPU tasks, and feeds batches to a pool of actors that each load the model once and write
their own `predictions.ray-<host>-<pid>-<id>.jsonl` in RUN_DIR (no two writers share a file;
`export` and every reader merge them). A batch's lines are on disk before the actor reports it
done, so when an actor dies Ray restarts it and redoes its unfinished batches: nothing is lost,
and a key written twice reads once (the last line wins). RUN_DIR and the images must be on a
filesystem every node sees.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.backends.base import Backend, BackendOptions
from autolabel.config import RunConfig
from autolabel.engine import Engine, Progress, RunSummary, decode_group, failure_lines, planned_groups, \
    todo_groups
from autolabel.errors import AutolabelError, GroupInputError, InputError
from autolabel.groups import BadGroup, ImageGroup
from autolabel.labeler import AUTO_BATCH_START, Asked, Labeler, OomEvent
from autolabel.sources import Source
from autolabel.store import PredictionWriter

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'autolabel[ray]'  (or: pip install 'ray[data]')"
# Decoding is mostly file reads and libjpeg; half a CPU per task lets two run per core. Its
# resources also differ from the actors', which keeps Ray from fusing decoding into the actors.
DECODE_CPUS = 0.5
# Each actor reserves one CPU slot: it feeds its GPU (or, on CPU, runs the model's threads).
WORKER_CPUS = 1


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise AutolabelError(INSTALL_HINT) from None
    return ray


class RayEngine(Engine):
    """The local engine's run (planning, run.json, summary) with the labelling done by Ray."""

    name = "ray"

    def __init__(self, config: RunConfig, progress: Progress | None = None,
                 backend_factory: Callable[[BackendOptions], Backend] | None = None):
        super().__init__(config, progress, backend_factory)  # the driver's labeler never loads the model
        self._backend_factory = backend_factory

    def run(self) -> RunSummary:
        import_ray()  # missing Ray is a usage error before anything is written
        return super().run()

    def _process(self, source: Source, writer: PredictionWriter, done: Mapping[str, Asked],
                 summary: RunSummary) -> None:
        todo_path = self.config.out / f".todo-{uuid.uuid4().hex[:12]}.jsonl"
        try:
            if self._plan(source, writer, done, summary, todo_path):
                ray = import_ray()
                self.engine_info.update(self._connect(ray))
                self._execute(ray, todo_path, summary)
        finally:
            todo_path.unlink(missing_ok=True)

    def _plan(self, source, writer: PredictionWriter, done: Mapping[str, Asked], summary: RunSummary,
              todo_path: Path) -> int:
        """Write the groups left to do to the todo file; groups the source could not build are
        written as error lines here. Returns how many groups the workers get."""
        n = 0
        with todo_path.open("w", encoding="utf-8") as f:
            for group in todo_groups(planned_groups(self.config, source), self.labeler, done, summary):
                summary.groups += 1
                if isinstance(group, BadGroup):  # its other images are decoded here only to name their problems
                    lines = failure_lines(self.labeler, decode_group(group, self.config.max_pixels))
                    writer.write(lines)
                    self._written.expect([line.key for line in lines], 0)
                    self.written(lines, summary.count(lines))
                    continue
                skip, _ = self.labeler.finished_keys(group, done)
                f.write(json.dumps({"group": group.to_json(), "skip": sorted(skip)}, ensure_ascii=False) + "\n")
                n += 1
        return n

    def _connect(self, ray) -> dict[str, Any]:
        """Join `--ray-address` (or a cluster already joined), else start a local one, and size the
        actor pool to it."""
        cfg = self.config
        if not ray.is_initialized():
            local = {} if cfg.ray_address else {
                # a local cluster: enough CPU slots for every actor plus decoding, however few cores
                "num_cpus": max(os.cpu_count() or 1, (cfg.workers or 1) * WORKER_CPUS + 1)}
            try:
                ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False,
                         logging_level="WARNING", **local)
            except ConnectionError as e:
                raise AutolabelError(f"--ray-address {cfg.ray_address}: cannot join the Ray cluster: {e}") from None
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
        per_worker = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1 if gpus else 0)
        workers = cfg.workers or (max(1, int(gpus // per_worker)) if per_worker else 1)
        if per_worker and per_worker * workers > gpus:
            raise AutolabelError(f"--workers {workers} x --gpus-per-worker {per_worker:g} needs {per_worker * workers:g}"
                                 f" GPUs; the Ray cluster has {gpus:g}")
        if workers * WORKER_CPUS + DECODE_CPUS > cpus:
            raise AutolabelError(f"--workers {workers} needs {workers * WORKER_CPUS + DECODE_CPUS:g} CPUs "
                                 f"({WORKER_CPUS} per worker, {DECODE_CPUS} for decoding); the Ray cluster has {cpus:g}")
        return {"workers": workers, "gpus_per_worker": per_worker, "cluster_cpus": cpus, "cluster_gpus": gpus}

    def _execute(self, ray, todo_path: Path, summary: RunSummary) -> None:
        cfg = self.config
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan and tuning notes are not the user's
        ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI shows its own progress
        groups_per_call = (cfg.concurrency if cfg.server else  # a worker keeps that many requests in flight
                           cfg.batch_size if isinstance(cfg.batch_size, int) else AUTO_BATCH_START)
        ds = (ray.data.read_text(str(todo_path))
              .map(_decode_row, fn_kwargs={"max_pixels": cfg.max_pixels}, num_cpus=DECODE_CPUS)
              .map_batches(LabelWorker, batch_size=groups_per_call, batch_format="numpy",
                           compute=ray.data.ActorPoolStrategy(size=self.engine_info["workers"]),
                           num_cpus=WORKER_CPUS, num_gpus=self.engine_info["gpus_per_worker"],
                           fn_constructor_kwargs={"config": _absolute_paths(cfg).model_dump(mode="json"),
                                                  "backend_factory": self._backend_factory}))
        for rows in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for report in map(json.loads, rows["report"]):
                if "fatal" in report:  # a configuration error in a worker: every worker would hit it
                    raise AutolabelError(report["fatal"])
                summary.images += report["images"]
                summary.done += report["done"]
                summary.failed += [tuple(f) for f in report["failed"]]
                summary.predict_s += report["predict_s"]
                summary.oom += [OomEvent(**e) for e in report["oom"]]
                if report["batch_size"]:  # the smallest any worker settled on
                    summary.batch_size = min(summary.batch_size or report["batch_size"], report["batch_size"])
                for key, status in report["keys"]:  # a worker's batch is on disk: whole groups
                    self._status[key] = status
                self.progress.advance(report["groups"], report["images"], len(report["failed"]))


def _absolute_paths(config: RunConfig) -> RunConfig:
    """The config as workers need it: their working directory is not the driver's."""
    update: dict[str, Any] = {"out": config.out.resolve(), "input": config.input.resolve() if config.input else None}
    if config.manifest is not None:
        update["manifest"] = config.manifest.resolve()
    for key in ("model", "mask_model"):
        value = getattr(config, key)
        if value and Path(value).exists():  # a local directory or file, not a hub id
            update[key] = str(Path(value).resolve())
    return config.model_copy(update=update)


def _decode_row(row: dict[str, Any], max_pixels: int) -> dict[str, Any]:
    """A Ray Data task: the todo line -> its group's decoded images (or the decode error)."""
    todo = json.loads(row["text"])
    decoded = decode_group(ImageGroup.from_json(todo["group"]), max_pixels)
    error = {"files": decoded.error.files} if decoded.error else None
    return {"todo": row["text"], "images": decoded.images or [], "error": json.dumps(error),
            "decode_s": decoded.seconds}


class LabelWorker:
    """A Ray actor: loads the model once, labels batches of decoded groups, writes its own file."""

    def __init__(self, config: dict, backend_factory: Callable[[BackendOptions], Backend] | None = None):
        self.config = RunConfig.model_validate(config)
        self.labeler = Labeler(self.config, backend_factory)
        name = f"ray-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.writer = PredictionWriter(self.config.out, name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        try:
            return self._label(batch)
        except AutolabelError as e:  # e.g. the model will not load: reported as one clear message
            return {"report": [json.dumps({"fatal": str(e)})]}

    def _label(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        requests, lines, images_read = [], [], 0
        for todo, images, error, seconds in zip(batch["todo"], batch["images"], batch["error"], batch["decode_s"]):
            todo, error = json.loads(todo), json.loads(error)
            group = ImageGroup.from_json(todo["group"])
            if error:
                lines += self.labeler.group_failure(
                    group, "decode", GroupInputError([InputError(f["file"], f["reason"]) for f in error["files"]]))
                continue
            images_read += len(group.images)
            group_requests, failures = self.labeler.requests(group, list(images), skip=todo["skip"],
                                                             decode_s=float(seconds))
            requests += group_requests
            lines += failures
        report = RunSummary(images=images_read)
        if requests:
            predicted = self.labeler.predict(requests)
            lines += self.labeler.lines(predicted)
            report.predict_s, report.oom, report.batch_size = predicted.predict_s, predicted.oom, self.labeler.batch_size
        self.writer.write(lines)  # on disk before the batch counts as done
        report.count(lines)
        return {"report": [json.dumps({"groups": len(batch["todo"]), "images": report.images, "done": report.done,
                                       "keys": [[line.key, line.status] for line in lines],
                                       "failed": report.failed, "predict_s": report.predict_s,
                                       "oom": [e.to_json() for e in report.oom], "batch_size": report.batch_size})]}
