"""A FiftyOne dataset, or one of its saved views, as the input: `autolabel run --from-fiftyone NAME
[--view SAVED_VIEW]`. People who curate data in FiftyOne label exactly the view they built.

- A grouped dataset (or view): each FiftyOne group is an image group, its image slices in the
  dataset's slice order; the group id is the FiftyOne group id. A saved view that picked slices
  out of a grouped dataset keeps its samples together by their FiftyOne group.
- A flat dataset (or view): each sample is a group of one; the group id is the sample id.

Files are named relative to the folder all the images share (the run's input root); every image
carries its sample id into the prediction lines (`images[].sample_id`), so `autolabel push RUN
--dataset NAME` writes the labels back onto the very samples they came from. Images are checked
and decoded like a folder's: a missing file is an error record naming it. Groups come in the view's
order, so shards, `--limit` and resume behave as for folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from autolabel.errors import AutolabelError


def fiftyone_members(name: str, view_name: str | None = None) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    """(the common folder of the images, group id -> [(sample id, file path)]) of a dataset or saved view.

    sources.py turns them into groups with the same path rules as a folder."""
    from autolabel.review.database import connect

    fo = connect()
    if not fo.dataset_exists(name):
        known = fo.list_datasets()
        raise AutolabelError(f"--from-fiftyone {name!r}: no such FiftyOne dataset "
                             f"({'datasets there: ' + ', '.join(known) if known else 'the database has no datasets'})")
    dataset = fo.load_dataset(name)
    if view_name is not None:
        if not dataset.has_saved_view(view_name):
            saved = dataset.list_saved_views()
            raise AutolabelError(f"--view {view_name!r}: FiftyOne dataset {name!r} has no such saved view "
                                 f"({'saved views: ' + ', '.join(saved) if saved else 'it has no saved views'})")
        view = dataset.load_saved_view(view_name)
    else:
        view = dataset.view()
    members = _members(dataset, view, f"{name}" + (f" view {view_name}" if view_name else ""))
    if not members:
        where = f"--from-fiftyone {name!r}" + (f" --view {view_name!r}" if view_name else "")
        raise AutolabelError(f"{where}: no image samples")
    paths = [path for images in members.values() for _, path in images]
    if any("://" in p for p in paths):
        raise AutolabelError(f"--from-fiftyone {name!r}: images in cloud storage are not supported; "
                             "download them (FiftyOne's media cache) and label a dataset of local files")
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths])), members


def _members(dataset, view, where: str) -> dict[str, list[tuple[str, str]]]:
    """group id -> [(sample id, filepath)] in slice order, groups in the view's order."""
    if dataset.media_type == "group":
        if view.media_type == "group":
            view = view.select_group_slices(media_type="image")
        order = {name: k for k, name in enumerate(dataset.group_slices)}
        ids, paths, group_ids, slices = view.values(["id", "filepath", "group.id", "group.name"])
        members: dict[str, list[tuple[int, str, str]]] = {}
        for sample_id, path, group_id, slice_name in zip(ids, paths, group_ids, slices):
            members.setdefault(group_id, []).append((order.get(slice_name, len(order)), sample_id, path))
        return {g: [(sid, p) for _, sid, p in sorted(items, key=lambda x: x[0])] for g, items in members.items()}
    if view.media_type != "image":
        raise AutolabelError(f"--from-fiftyone {where}: its samples are {view.media_type}s; autolabel labels images")
    return {sample_id: [(sample_id, path)] for sample_id, path in zip(*view.values(["id", "filepath"]))}
