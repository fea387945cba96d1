"""`autolabel review`: a `reviewed` field reviewers can edit in the App's Annotate tab, and the App.

The reviewed field starts as a clone of a pushed field (label ids kept, so pull can tell edited,
added and deleted masks apart). Preparing again never overwrites reviewers' work: it only fills
the field on samples pushed since. An active label schema lists every ontology category, so a
reviewer can also draw a mask of a class the model never found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from autolabel.errors import AutolabelError
from autolabel.review.layout import DEFAULT_FIELD, DEFAULT_REVIEWED_FIELD, INFO_KEY, check_field_name


@dataclass
class ReviewSetup:
    source: str
    reviewed: str
    samples_added: int  # samples given a reviewed field just now
    classes: list[str]


def prepare_review(dataset, source: str | None = None, reviewed: str | None = None) -> ReviewSetup:
    """Create or extend the reviewed field and make it editable in the App."""
    state = dict(dataset.info[INFO_KEY])
    runs = state.get("runs") or {}
    reviews = state.setdefault("reviews", {})
    reviewed = check_field_name(reviewed or DEFAULT_REVIEWED_FIELD)
    earlier = reviews.get(reviewed) or {}
    source = source or earlier.get("source") or (DEFAULT_FIELD if DEFAULT_FIELD in runs else next(iter(runs), None))
    if source not in runs:
        pushed = ", ".join(runs) or "none yet"
        raise AutolabelError(f"dataset {dataset.name!r} has no pushed field {source!r} (pushed: {pushed}); "
                             f"push a run with `autolabel push RUN_DIR --dataset {dataset.name}`")
    if reviewed in runs:
        raise AutolabelError(f"--reviewed-field {reviewed!r} holds a pushed run; choose another name")
    if earlier and earlier["source"] != source:
        raise AutolabelError(f"field {reviewed!r} is already the review of {earlier['source']!r}; "
                             "pass another --reviewed-field to review a second run")

    view = dataset.select_group_slices()
    todo = view.exists(source).exists(reviewed, False) if reviewed in view.get_field_schema() else view.exists(source)
    ids, labels = todo.values(["id", source])
    if ids:
        view.set_values(reviewed, dict(zip(ids, labels)), key_field="id", dynamic=True)
    classes = _classes(dataset, runs, reviewed)
    schema = dataset.generate_label_schemas([reviewed])
    # reviewers pick a class from the list (FiftyOne's own cut-off between a radio and a dropdown)
    schema[reviewed].update(classes=classes, component="radio" if len(classes) <= 5 else "dropdown")
    dataset.set_label_schemas({**dataset.label_schemas, **schema})
    if reviewed not in dataset.active_label_schemas:
        dataset.activate_label_schemas([reviewed], prepend=True)
    reviews[reviewed] = {**earlier, "source": source,
                         "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    dataset.info[INFO_KEY] = state
    dataset.save()
    return ReviewSetup(source, reviewed, len(ids), classes)


def _classes(dataset, runs: dict, reviewed: str) -> list[str]:
    """Ontology categories in template order, then any other label already in the field."""
    names: dict[str, None] = {}
    for run in runs.values():
        for spec in (run.get("templates") or {}).values():
            names.update(dict.fromkeys(spec.get("categories") or []))
    names.update(dict.fromkeys(dataset.select_group_slices().distinct(f"{reviewed}.detections.label")))
    return list(names)


def launch(fo, dataset, *, address: str, port: int):
    """Serve the App for `dataset` (no browser is opened: the URL is printed instead)."""
    try:
        return fo.launch_app(dataset, address=address, port=port, remote=True, auto=False)
    except Exception as e:  # the server subprocess reports failures as assorted types
        raise AutolabelError(f"could not start the FiftyOne App on {address}:{port}: {e}") from None


def app_url(address: str, port: int, dataset_name: str) -> str:
    from urllib.parse import quote

    host = "localhost" if address in ("127.0.0.1", "0.0.0.0", "localhost") else address
    return f"http://{host}:{port}/datasets/{quote(dataset_name)}"
