"""`autolabel push`: run directories -> a persistent grouped FiftyOne dataset, in bulk, idempotently.

Samples are found again by (group_id, template, image_index); each carries a digest of its
prediction line, so pushing the same run twice writes nothing, and a changed line replaces only
that sample's values in the chosen field. New samples go in with bulk `add_samples`, changed ones
with one `set_values` per field, in batches, so memory stays bounded by the batch. Then the doubt
of every label on the images written is computed again (review/doubt.py).

A run of `autolabel run --from-fiftyone NAME` pushed back into NAME writes onto the samples it
came from (their ids are in the lines) instead of adding any: one field per template there, as a
sample is one image of the user's dataset, not one image of one template's group.

The whole push holds the dataset's lock (review/lock.py): two pushes at once take turns.
"""

from __future__ import annotations

import copy
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
from autolabel.review.doubt import declare_doubt_fields, update_doubt
from autolabel.review.layout import (DEFAULT_FIELD, FAILED_TAG, GROUP_FIELD, IDENTITY_FIELDS, IMAGE_FIELDS,
                                     INFO_KEY, REJECTED_TAG, RunFields, all_samples, check_field_name, slice_name)
from autolabel.review.lock import dataset_lock
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
    ids: set[str] = field(default_factory=set)  # every sample id (a run from this dataset writes onto them)


def push(run_dirs: list[Path], dataset_name: str, *, label_field: str | None = None,
         image_root: Path | None = None) -> PushStats:
    """Push the predictions of `run_dirs` (merged like an export) into dataset `dataset_name`."""
    run_dirs = [Path(r) for r in run_dirs]
    infos = [read_run_info(r) for r in run_dirs]
    adopt = _labelled_from(run_dirs, infos) == dataset_name
    roots = [None if adopt else _image_root(r, info, image_root) for r, info in zip(run_dirs, infos)]
    fo = connect()
    with dataset_lock(dataset_name, "push"):
        dataset = _open_dataset(fo, dataset_name, adopt)
        state = dict(dataset.info.get(INFO_KEY) or {"runs": {}})
        models = sorted({info.get("model") for info in infos if info.get("model")})
        templates = list(dict.fromkeys(t for info in infos for t in info.get("templates") or {}))
        by_template = _choose_fields(label_field, state["runs"], state.get("reviews") or {}, models,
                                     templates if adopt else None)
        fields = {t: RunFields.of(name) for t, name in by_template.items()}
        for f in fields.values():
            _declare_fields(fo, dataset, f)
        stats = PushStats(field=", ".join(dict.fromkeys(by_template.values())))
        existing = _scan(dataset, fields, adopt)
        writer = _BatchWriter(fo, dataset, fields, existing, stats, adopt)
        for run_dir, info, root in zip(run_dirs, infos, roots):
            for pred in read_predictions([run_dir]):
                writer.add(pred, root, info.get("run_id", ""))
        writer.flush()
        for template, name in by_template.items():
            _record_run(dataset, state, name, run_dirs, infos, models, template)
        if writer.touched:
            update_doubt(dataset, writer.touched)
    return stats


def _labelled_from(run_dirs: list[Path], infos: list[dict]) -> str | None:
    """The FiftyOne dataset the runs labelled (`run --from-fiftyone`), if any; all or none of them."""
    sources = {(info.get("parameters") or {}).get("from_fiftyone") for info in infos}
    if len(sources) > 1:
        raise AutolabelError(f"{', '.join(map(str, run_dirs))}: these runs labelled different inputs "
                             f"({', '.join(sorted(map(str, sources)))}); push them one source at a time")
    return next(iter(sources))


def _image_root(run_dir: Path, info: dict, override: Path | None) -> Path:
    root = override or (Path(info["input_root"]) if info.get("input_root") else None)
    if root is None:
        raise AutolabelError(f"{run_dir}: run.json names no input_root; pass --image-root DIR")
    if not root.is_dir():
        raise AutolabelError(f"{run_dir}: images were read from {root}, which is not a folder here; "
                             "pass --image-root DIR where the images are now")
    return root.resolve()


def _open_dataset(fo, name: str, adopt: bool = False):
    if adopt:
        return _adopt_dataset(fo, name)
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        dataset.reload()  # FiftyOne keeps one object per dataset in a process: see other writers' changes
        if INFO_KEY not in dataset.info:
            raise AutolabelError(f"FiftyOne dataset {name!r} exists and was not made by `autolabel push`; "
                                 "choose another --dataset name")
        if (dataset.info[INFO_KEY] or {}).get("from_fiftyone"):
            raise AutolabelError(f"FiftyOne dataset {name!r} holds runs made from it (`run --from-fiftyone`); "
                                 "only those push into it: choose another --dataset name")
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


def _adopt_dataset(fo, name: str):
    """The user's dataset a run was made from: our fields go onto its own samples."""
    if not fo.dataset_exists(name):
        raise AutolabelError(f"the run labelled FiftyOne dataset {name!r}, which is no longer there")
    dataset = fo.load_dataset(name)
    dataset.reload()
    if INFO_KEY not in dataset.info:
        schema = dataset.get_field_schema()
        taken = [f for f in ("group_id", "image_index", *IMAGE_FIELDS) if f in schema]
        if taken:
            raise AutolabelError(f"FiftyOne dataset {name!r} has its own field(s) {', '.join(taken)}, which "
                                 "autolabel would write; push into a clone (`dataset.clone()`) or rename them")
        kinds = {"group_id": fo.StringField, "image_index": fo.IntField, "file": fo.StringField,
                 "image_id": fo.IntField}
        for field_name, kind in kinds.items():
            dataset.add_sample_field(field_name, kind)
        dataset.info[INFO_KEY] = {"runs": {}, "from_fiftyone": True}
        dataset.save()
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
    declare_doubt_fields(fo, dataset, fields)


def _choose_fields(requested: str | None, runs: dict, reviews: dict, models: list[str],
                   templates: list[str] | None) -> dict[str | None, str]:
    """template -> field: one field for every template (None), or, writing onto a FiftyOne dataset's own
    samples (`templates` given), one per template when there are several (`predictions_<template>`)."""
    if not templates or len(templates) == 1:
        name = _choose_field(requested, runs, reviews, models)
        return {templates[0]: name} if templates else {None: name}
    return {t: _choose_field(f"{requested}_{_slug(t)}" if requested else None, runs, reviews, models,
                             default=f"{DEFAULT_FIELD}_{_slug(t)}") for t in templates}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "run"


def _choose_field(requested: str | None, runs: dict, reviews: dict, models: list[str],
                  default: str = DEFAULT_FIELD) -> str:
    """The asked field; else `predictions`, unless it holds another model's run: then its own field."""
    if requested:
        if requested in reviews:
            raise AutolabelError(f"--field {requested!r} is a reviewed field; reviewers' edits live there")
        return check_field_name(requested)
    pushed = runs.get(default)
    if pushed is None or set(pushed.get("models", [])) == set(models):
        return default
    return f"{default}_{_slug('_'.join(models))}"


def _scan(dataset, by_template: dict[str | None, RunFields], adopt: bool) -> _Existing:
    existing = _Existing()
    view = all_samples(dataset)
    if not len(view):
        return existing
    if adopt:  # a sample is found by its id, once per template (each has its own field)
        for template, fields in by_template.items():
            for sample_id, tags, digest in zip(*view.values(["id", "tags", fields.digest])):
                existing.samples[(sample_id, template)] = (sample_id, digest, tags or [])
                existing.ids.add(sample_id)
        return existing
    fields = by_template[None]
    columns = view.values(["id", "group.id", "tags", *IDENTITY_FIELDS, fields.digest])
    for sample_id, fo_group_id, tags, group_id, template, index, digest in zip(*columns):
        existing.samples[(group_id, template, index)] = (sample_id, digest, tags or [])
        existing.groups[(group_id, template)] = fo_group_id
    return existing


class _BatchWriter:
    """Turns predictions into new samples and per-field updates, written BATCH at a time."""

    def __init__(self, fo, dataset, fields: dict[str | None, RunFields], existing: _Existing, stats: PushStats,
                 adopt: bool = False):
        self.fo, self.dataset, self.existing, self.stats, self.adopt = fo, dataset, existing, stats, adopt
        self.by_template = fields
        self.new: dict[tuple, object] = {}  # identity -> fo.Sample; a repeated identity: the last wins
        self.updates: dict[str, dict] = {}
        self.touched: list[str] = []  # ids of the samples written: their doubt is computed again

    def add(self, pred: Prediction, root: Path | None, run_id: str) -> None:
        if not pred.images:
            self.stats.skipped_no_images += 1
            return
        self.stats.groups += 1
        self.stats.failed_groups += pred.status != "ok"
        self.stats.rejected_targets += sum(len(t.rejected) for t in pred.turns)
        digest = hashlib.sha1(pred.to_json().encode()).hexdigest()
        if self.adopt:
            self._add_onto_samples(pred, run_id, digest)
        else:
            self._add(pred, root, run_id, digest)
        if len(self.new) + len(self.updates) >= BATCH:
            self.flush()

    def _add_onto_samples(self, pred: Prediction, run_id: str, digest: str) -> None:
        """A line of a run made from this dataset: its values go onto the samples it names."""
        fields = self.by_template.get(pred.template)
        if fields is None:
            raise AutolabelError(f"prediction {pred.key}: template {pred.template!r} is not in the run's run.json")
        shared = None
        for index, image in enumerate(pred.images):
            if image.sample_id not in self.existing.ids:
                raise AutolabelError(f"prediction {pred.key}: sample {image.sample_id} is not in FiftyOne dataset "
                                     f"{self.dataset.name!r} (deleted since the run?)")
            sample_id, known, tags = self.existing.samples[(image.sample_id, pred.template)]
            if known == digest:
                self.stats.samples_unchanged += 1
                continue
            shared = shared or self._shared_values(fields, pred, run_id, digest)
            values = {**shared, **self._image_values(fields, pred, index), "group_id": pred.group_id,
                      "image_index": index, "file": image.file, "image_id": image.id}
            pending = self.updates.setdefault(sample_id, {})
            # tags only add up here: the sample's other templates may have set them
            values["tags"] = sorted(set(tags) | set(pending.get("tags", [])) | set(values["tags"]))
            pending.update(values)
            self.stats.samples_updated += 1

    def _add(self, pred: Prediction, root: Path, run_id: str, digest: str) -> None:
        fields = self.by_template[None]
        shared, fo_group = None, None
        for index, image in enumerate(pred.images):
            identity = (pred.group_id, pred.template, index)
            known = self.existing.samples.get(identity)
            if known is not None and known[1] == digest:
                self.stats.samples_unchanged += 1
                continue
            shared = shared or self._shared_values(fields, pred, run_id, digest)
            values = {**shared, **self._image_values(fields, pred, index)}
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

    @staticmethod
    def _shared_values(f: RunFields, pred: Prediction, run_id: str, digest: str) -> dict:
        record = asdict(pred)
        for turn in record["turns"]:
            turn["segments"] = []
        return {f.key: pred.key, f.model: pred.model, f.run_id: run_id,
                f.question: "\n".join(t.question for t in pred.turns), f.explanation: pred.explanation,
                f.error: (pred.error or {}).get("message") if pred.status != "ok" else None,
                f.record: json.dumps(record, ensure_ascii=False, separators=(",", ":")), f.digest: digest}

    def _image_values(self, fields: RunFields, pred: Prediction, index: int) -> dict:
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
        return {fields.labels: self.fo.Detections(detections=detections), fields.rejected: rejected,
                "tags": tags}

    def flush(self) -> None:
        if self.new:
            for name in sorted({sample.group.name for sample in self.new.values()} - set(self.dataset.group_slices)):
                self.dataset.add_group_slice(name, "image")
            ids = self.dataset.add_samples(list(self.new.values()), expand_schema=False, validate=False,
                                           progress=False)
            digest = self.by_template[None].digest
            for (identity, sample), sample_id in zip(self.new.items(), ids):
                self.existing.samples[identity] = (sample_id, sample[digest], sample.tags)
                self.existing.groups[identity[:2]] = sample.group.id
            self.touched += ids
            self.new = {}
        if self.updates:
            view = all_samples(self.dataset)
            for name in dict.fromkeys(name for values in self.updates.values() for name in values):
                view.set_values(name, {sid: values[name] for sid, values in self.updates.items() if name in values},
                                key_field="id", expand_schema=False)
            self.touched += list(self.updates)
            self.updates = {}


def _record_run(dataset, state: dict, label_field: str, run_dirs: list[Path], infos: list[dict],
                models: list[str], only_template: str | None = None) -> None:
    """Remember what the field holds: its models, runs and the templates' category order for pull."""
    templates: dict = {}
    for info in infos:
        for name, spec in (info.get("templates") or {}).items():
            if only_template is None or name == only_template:
                templates.setdefault(name, spec)
    state["runs"][label_field] = {
        "models": models, "run_ids": [info.get("run_id") for info in infos],
        "run_dirs": [str(r.resolve()) for r in run_dirs], "templates": templates,
        "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    dataset.info[INFO_KEY] = copy.deepcopy(state)  # a new object: FiftyOne saves only a changed one
    dataset.save()
