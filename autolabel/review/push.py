"""`autolabel push`: run directories -> a persistent grouped FiftyOne dataset, in bulk, idempotently.

Samples are found again by (group_id, template, image_index); each carries a digest of its
prediction line, so pushing the same run twice writes nothing, and a changed line replaces only
that sample's values in the chosen field. New samples go in with bulk `add_samples`, changed ones
with one `set_values` per field, in batches, so memory stays bounded by the batch.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from autolabel.errors import AutolabelError
from autolabel.prediction import Prediction
from autolabel.review.database import connect
from autolabel.review.detections import segment_detection
from autolabel.review.layout import (DEFAULT_FIELD, FAILED_TAG, GROUP_FIELD, IDENTITY_FIELDS, IMAGE_FIELDS,
                                     INFO_KEY, REJECTED_TAG, RunFields, check_field_name, slice_name)
from autolabel.store import read_predictions, read_run_info

BATCH = 256  # samples per bulk write


@dataclass
class PushStats:
    field: str
    groups: int = 0
    samples_added: int = 0
    samples_updated: int = 0
    samples_unchanged: int = 0
    masks: int = 0  # masks written (none for unchanged samples)
    failed_groups: int = 0
    rejected_targets: int = 0
    skipped_no_images: int = 0  # failures before any image was known (a bad manifest line)

    def __str__(self) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in asdict(self).items() if k != "field")


@dataclass
class _Existing:
    """What the dataset already holds for the chosen field, keyed by sample identity."""

    samples: dict[tuple, tuple[str, str | None, list[str]]] = field(default_factory=dict)  # id, digest, tags
    groups: dict[tuple[str, str], str] = field(default_factory=dict)  # (group_id, template) -> FiftyOne group id


def push(run_dirs: list[Path], dataset_name: str, *, label_field: str | None = None,
         image_root: Path | None = None) -> PushStats:
    """Push the predictions of `run_dirs` (merged like an export) into dataset `dataset_name`."""
    run_dirs = [Path(r) for r in run_dirs]
    infos = [read_run_info(r) for r in run_dirs]
    roots = [_image_root(r, info, image_root) for r, info in zip(run_dirs, infos)]
    fo = connect()
    dataset = _open_dataset(fo, dataset_name)
    state = dict(dataset.info.get(INFO_KEY) or {"runs": {}})
    models = sorted({info.get("model") for info in infos if info.get("model")})
    fields = RunFields.of(_choose_field(label_field, state["runs"], state.get("reviews") or {}, models))
    _declare_fields(fo, dataset, fields)
    stats = PushStats(field=fields.labels)
    existing = _scan(dataset, fields)
    writer = _BatchWriter(fo, dataset, fields, existing, stats)
    for run_dir, info, root in zip(run_dirs, infos, roots):
        for pred in read_predictions([run_dir]):
            writer.add(pred, root, info.get("run_id", ""))
    writer.flush()
    _record_run(dataset, state, fields.labels, run_dirs, infos, models)
    return stats


def _image_root(run_dir: Path, info: dict, override: Path | None) -> Path:
    root = override or (Path(info["input_root"]) if info.get("input_root") else None)
    if root is None:
        raise AutolabelError(f"{run_dir}: run.json names no input_root; pass --image-root DIR")
    if not root.is_dir():
        raise AutolabelError(f"{run_dir}: images were read from {root}, which is not a folder here; "
                             "pass --image-root DIR where the images are now")
    return root.resolve()


def _open_dataset(fo, name: str):
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        if INFO_KEY not in dataset.info:
            raise AutolabelError(f"FiftyOne dataset {name!r} exists and was not made by `autolabel push`; "
                                 "choose another --dataset name")
        return dataset
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_group_field(GROUP_FIELD, default=slice_name(0))
    kinds = {"group_id": fo.StringField, "template": fo.StringField, "image_index": fo.IntField,
             "file": fo.StringField, "image_id": fo.IntField}
    for field_name in (*IDENTITY_FIELDS, *IMAGE_FIELDS):
        dataset.add_sample_field(field_name, kinds[field_name])
    dataset.info[INFO_KEY] = {"runs": {}}
    dataset.save()
    # pull reads groups in this order, and push finds samples by it
    dataset.create_index([(f, 1) for f in IDENTITY_FIELDS])
    return dataset


def _declare_fields(fo, dataset, fields: RunFields) -> None:
    """Declare the run's fields once, so bulk writes skip FiftyOne's per-sample schema merging."""
    schema = dataset.get_field_schema(flat=True)
    declared = {fields.labels: dict(ftype=fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections),
                f"{fields.labels}.detections.model_label": dict(ftype=fo.StringField),
                f"{fields.labels}.detections.phrase": dict(ftype=fo.StringField),
                f"{fields.labels}.detections.round": dict(ftype=fo.IntField),
                f"{fields.labels}.detections.turn": dict(ftype=fo.IntField),
                fields.rejected: dict(ftype=fo.ListField, subfield=fo.StringField)}
    for name in (fields.key, fields.model, fields.run_id, fields.question, fields.explanation, fields.error,
                 fields.record, fields.digest):
        declared[name] = dict(ftype=fo.StringField)
    for name, kind in declared.items():
        if name not in schema:
            dataset.add_sample_field(name, **kind)


def _choose_field(requested: str | None, runs: dict, reviews: dict, models: list[str]) -> str:
    """The asked field; else `predictions`, unless it holds another model's run: then its own field."""
    if requested:
        if requested in reviews:
            raise AutolabelError(f"--field {requested!r} is a reviewed field; reviewers' edits live there")
        return check_field_name(requested)
    pushed = runs.get(DEFAULT_FIELD)
    if pushed is None or set(pushed.get("models", [])) == set(models):
        return DEFAULT_FIELD
    slug = re.sub(r"[^a-z0-9]+", "_", "_".join(models).lower()).strip("_") or "run"
    return f"{DEFAULT_FIELD}_{slug}"


def _scan(dataset, fields: RunFields) -> _Existing:
    existing = _Existing()
    view = dataset.select_group_slices()
    if not len(view):
        return existing
    columns = view.values(["id", "group.id", "tags", *IDENTITY_FIELDS, fields.digest])
    for sample_id, fo_group_id, tags, group_id, template, index, digest in zip(*columns):
        existing.samples[(group_id, template, index)] = (sample_id, digest, tags or [])
        existing.groups[(group_id, template)] = fo_group_id
    return existing


class _BatchWriter:
    """Turns predictions into new samples and per-field updates, written BATCH at a time."""

    def __init__(self, fo, dataset, fields: RunFields, existing: _Existing, stats: PushStats):
        self.fo, self.dataset, self.fields, self.existing, self.stats = fo, dataset, fields, existing, stats
        self.new: dict[tuple, object] = {}  # identity -> fo.Sample; a repeated identity: the last wins
        self.updates: dict[str, dict] = {}

    def add(self, pred: Prediction, root: Path, run_id: str) -> None:
        if not pred.images:
            self.stats.skipped_no_images += 1
            return
        self.stats.groups += 1
        self.stats.failed_groups += pred.status != "ok"
        self.stats.rejected_targets += sum(len(t.rejected) for t in pred.turns)
        digest = hashlib.sha1(pred.to_json().encode()).hexdigest()
        shared, fo_group = None, None
        for index, image in enumerate(pred.images):
            identity = (pred.group_id, pred.template, index)
            known = self.existing.samples.get(identity)
            if known is not None and known[1] == digest:
                self.stats.samples_unchanged += 1
                continue
            shared = shared or self._shared_values(pred, run_id, digest)
            values = {**shared, **self._image_values(pred, index)}
            if known is not None:
                sample_id, _, tags = known
                values["tags"] = sorted(set(tags) - {FAILED_TAG, REJECTED_TAG} | set(values["tags"]))
                self.updates[sample_id] = values
                self.stats.samples_updated += 1
                continue
            if fo_group is None:
                known_group = self.existing.groups.get((pred.group_id, pred.template))
                fo_group = self.fo.Group(id=known_group) if known_group else self.fo.Group()
            filepath = root / image.file
            if pred.status == "ok" and not filepath.is_file():
                raise AutolabelError(f"prediction {pred.key}: image {filepath} does not exist; "
                                     "pass --image-root DIR where the run's images are now")
            self.stats.samples_added += identity not in self.new
            self.new[identity] = self.fo.Sample(
                filepath=str(filepath), group=fo_group.element(slice_name(index)), group_id=pred.group_id,
                template=pred.template, image_index=index, file=image.file, image_id=image.id, **values)
        if len(self.new) + len(self.updates) >= BATCH:
            self.flush()

    def _shared_values(self, pred: Prediction, run_id: str, digest: str) -> dict:
        record = asdict(pred)
        for turn in record["turns"]:
            turn["segments"] = []
        f = self.fields
        return {f.key: pred.key, f.model: pred.model, f.run_id: run_id,
                f.question: "\n".join(t.question for t in pred.turns), f.explanation: pred.explanation,
                f.error: (pred.error or {}).get("message") if pred.status != "ok" else None,
                f.record: json.dumps(record, ensure_ascii=False, separators=(",", ":")), f.digest: digest}

    def _image_values(self, pred: Prediction, index: int) -> dict:
        detections = []
        for turn_index, turn in enumerate(pred.turns):
            for segment in turn.segments:
                if segment.image == index:
                    detection = segment_detection(self.fo, segment, turn_index)
                    if detection is not None:
                        detections.append(detection)
        self.stats.masks += len(detections)
        rejected = list(dict.fromkeys(f"{r.category or r.label}: {r.reason}" if r.reason else (r.category or r.label)
                                      for t in pred.turns for r in t.rejected if r.image in (None, index)))
        tags = ([FAILED_TAG] if pred.status != "ok" else []) + ([REJECTED_TAG] if rejected else [])
        return {self.fields.labels: self.fo.Detections(detections=detections), self.fields.rejected: rejected,
                "tags": tags}

    def flush(self) -> None:
        if self.new:
            for name in sorted({sample.group.name for sample in self.new.values()} - set(self.dataset.group_slices)):
                self.dataset.add_group_slice(name, "image")
            ids = self.dataset.add_samples(list(self.new.values()), expand_schema=False, validate=False,
                                           progress=False)
            for (identity, sample), sample_id in zip(self.new.items(), ids):
                self.existing.samples[identity] = (sample_id, sample[self.fields.digest], sample.tags)
                self.existing.groups[identity[:2]] = sample.group.id
            self.new = {}
        if self.updates:
            view = self.dataset.select_group_slices()
            for name in next(iter(self.updates.values())):
                view.set_values(name, {sid: values[name] for sid, values in self.updates.items()},
                                key_field="id", expand_schema=False)
            self.updates = {}


def _record_run(dataset, state: dict, label_field: str, run_dirs: list[Path], infos: list[dict],
                models: list[str]) -> None:
    """Remember what the field holds: its models, runs and the templates' category order for pull."""
    templates: dict = {}
    for info in infos:
        for name, spec in (info.get("templates") or {}).items():
            templates.setdefault(name, spec)
    state["runs"][label_field] = {
        "models": models, "run_ids": [info.get("run_id") for info in infos],
        "run_dirs": [str(r.resolve()) for r in run_dirs], "templates": templates,
        "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    dataset.info[INFO_KEY] = state
    dataset.save()
