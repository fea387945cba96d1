"""`autolabel review`: a `reviewed` field reviewers can edit in the App's Annotate tab, and the App.

The reviewed field starts as a clone of a pushed field (label ids kept, so pull can tell edited,
added and deleted masks apart). Preparing again never overwrites reviewers' work: it only fills
the field on samples pushed since. An active label schema lists every ontology category, so a
reviewer can also draw a mask of a class the model never found.

Preparing also saves the review queue as FiftyOne saved views: `by-doubt` (the most doubtful
groups first, see review/doubt.py) and the one asked for (`--order`, `--min-doubt`), which the App
opens on. Everything lives in the database, so a hosted App (FiftyOne Enterprise, a shared App
over a shared MongoDB) shows the same queue: `review --no-app` prepares and exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from autolabel.errors import AutolabelError
from autolabel.review.layout import (DEFAULT_FIELD, DEFAULT_REVIEWED_FIELD, IDENTITY_FIELDS, INFO_KEY, RunFields,
                                     all_samples, check_field_name)

ORDERS = ("doubt", "score", "random", "file")
DEFAULT_ORDER = "doubt"  # most doubtful first
RANDOM_SEED = 0  # `--order random` is the same shuffle for every reviewer


@dataclass
class ReviewSetup:
    source: str
    reviewed: str
    samples_added: int  # samples given a reviewed field just now
    classes: list[str]
    view: str = ""  # the saved view the App opens on
    queued: int = 0  # groups (samples, in a flat dataset) in that view
    doubt_computed: int = 0  # samples pushed before doubt existed, given one now


def queue_name(reviewed: str, order: str = DEFAULT_ORDER, min_doubt: float | None = None) -> str:
    """`by-doubt`, `by-score-over-0.5`, ...; prefixed with the reviewed field unless it is `reviewed`."""
    name = f"by-{order}" + (f"-over-{min_doubt:g}" if min_doubt is not None else "")
    return name if reviewed == DEFAULT_REVIEWED_FIELD else f"{reviewed}-{name}"


def prepare_review(dataset, source: str | None = None, reviewed: str | None = None, *, order: str = DEFAULT_ORDER,
                   min_doubt: float | None = None) -> ReviewSetup:
    """Create or extend the reviewed field, make it editable in the App and save the review queue.
    Holds the dataset's lock: a push or another reviewer preparing at the same time waits."""
    from autolabel.review.lock import dataset_lock

    if order not in ORDERS:
        raise AutolabelError(f"--order {order!r}: choose one of {', '.join(ORDERS)}")
    if min_doubt is not None and not 0 <= min_doubt <= 1:
        raise AutolabelError(f"--min-doubt {min_doubt:g}: doubt is between 0 and 1")
    with dataset_lock(dataset.name, "review"):
        dataset.reload()
        return _prepare(dataset, source, reviewed, order, min_doubt)


def _prepare(dataset, source: str | None, reviewed: str | None, order: str, min_doubt: float | None) -> ReviewSetup:
    from autolabel.review.doubt import update_doubt

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

    fields = RunFields.of(source)
    view = all_samples(dataset)
    # samples pushed before doubt existed (or by an older autolabel) get one now
    no_doubt = view.exists(fields.record).exists(fields.doubt, False).values("id")
    computed = update_doubt(dataset, no_doubt) if no_doubt else 0
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
    dataset.save_view(queue_name(reviewed), queue(dataset, fields), overwrite=True,
                      description=f"review queue of {reviewed!r}: the most doubtful groups of {source!r} first")
    name = queue_name(reviewed, order, min_doubt)
    chosen = queue(dataset, fields, order, min_doubt)
    if name != queue_name(reviewed):
        dataset.save_view(name, chosen, overwrite=True, description=f"review queue of {reviewed!r}: {source!r} by "
                          f"{order}" + (f", doubt >= {min_doubt:g}" if min_doubt is not None else ""))
    return ReviewSetup(source, reviewed, len(ids), classes, name, len(chosen), computed)


def queue(dataset, fields: RunFields, order: str = DEFAULT_ORDER, min_doubt: float | None = None):
    """The pushed groups of `fields` in review order (a grouped dataset stays grouped: a reviewer sees
    all images of a question together), keeping only those at least `min_doubt` doubtful."""
    from fiftyone import ViewField as F

    view = dataset.exists(fields.record)
    if min_doubt is not None:
        view = view.match(F(fields.group_doubt) >= min_doubt)
    identity = [(f, 1) for f in IDENTITY_FIELDS if f in dataset.get_field_schema()]
    if order == "doubt":  # unknown doubt (None) sorts last
        return view.sort_by([(fields.group_doubt, -1), *identity])
    if order == "score":  # the least sure first; groups without a label last
        return view.sort_by([((F(fields.group_score) == None).if_else(2.0, F(fields.group_score)), 1),  # noqa: E711
                             *identity])
    if order == "random":
        return view.shuffle(seed=RANDOM_SEED)
    return view.sort_by(identity)


def _classes(dataset, runs: dict, reviewed: str) -> list[str]:
    """Ontology categories in template order, then any other label already in the field."""
    names: dict[str, None] = {}
    for run in runs.values():
        for spec in (run.get("templates") or {}).values():
            names.update(dict.fromkeys(spec.get("categories") or []))
    names.update(dict.fromkeys(all_samples(dataset).distinct(f"{reviewed}.detections.label")))
    return list(names)


def launch(fo, dataset, *, address: str, port: int, view: str | None = None):
    """Serve the App for `dataset`, open on saved view `view` (no browser is opened: the URL is printed)."""
    try:
        return fo.launch_app(dataset, view=dataset.load_saved_view(view) if view else None, address=address,
                             port=port, remote=True, auto=False)
    except Exception as e:  # the server subprocess reports failures as assorted types
        raise AutolabelError(f"could not start the FiftyOne App on {address}:{port}: {e}") from None


def app_url(address: str, port: int, dataset_name: str, view: str | None = None) -> str:
    """The App's address for the dataset, opening saved view `view` (the App reads it as ?view=SLUG)."""
    from urllib.parse import quote

    host = "localhost" if address in ("127.0.0.1", "0.0.0.0", "localhost") else address
    url = f"http://{host}:{port}/datasets/{quote(dataset_name)}"
    return f"{url}?view={quote(view_slug(view))}" if view else url


def view_slug(name: str) -> str:
    """FiftyOne's URL name of a saved view (`by-doubt-over-0.5` -> `by-doubt-over-0-5`)."""
    from fiftyone.core.utils import to_slug

    return to_slug(name)
