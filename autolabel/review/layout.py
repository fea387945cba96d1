"""The dataset layout `push` writes and `review`/`pull` read: slices, identity and run fields.

One FiftyOne group per (image group x template), one slice per image (`image1`, `image2`, ...).
A sample is identified by (group_id, template, image_index), so a second push finds it again.
Everything a run says about a sample lives in fields named after its label field, so a second run
pushed to another field sits beside the first instead of overwriting its explanation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from autolabel.errors import AutolabelError

INFO_KEY = "autolabel"  # dataset.info[INFO_KEY]: the pushed runs and the review, for review and pull
GROUP_FIELD = "group"
IDENTITY_FIELDS = ("group_id", "template", "image_index")
# Shared by every run: the image's path relative to the input root and its input COCO id.
IMAGE_FIELDS = ("file", "image_id")
FAILED_TAG = "failed"
REJECTED_TAG = "rejected"
DEFAULT_FIELD = "predictions"
DEFAULT_REVIEWED_FIELD = "reviewed"
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_RESERVED = {"id", "filepath", "tags", "metadata", "created_at", "last_modified_at", GROUP_FIELD,
             *IDENTITY_FIELDS, *IMAGE_FIELDS}


def all_samples(dataset):
    """Every image sample: each slice of a grouped dataset (image slices only), or a flat dataset's
    samples (a FiftyOne dataset labelled with `run --from-fiftyone` and pushed back onto itself)."""
    if dataset.media_type == "group":
        return dataset.select_group_slices(media_type="image")
    return dataset.view()


def slice_name(image_index: int) -> str:
    return f"image{image_index + 1}"


def check_field_name(name: str) -> str:
    """A label field name FiftyOne and MongoDB accept and that no layout field uses."""
    if not _FIELD_NAME.fullmatch(name) or name in _RESERVED:
        raise AutolabelError(f"--field {name!r}: use letters, digits and _ (starting with a letter), "
                             f"and none of {', '.join(sorted(_RESERVED))}")
    return name


@dataclass(frozen=True)
class RunFields:
    """The sample fields one pushed run occupies, all named after its label field (`F`, `F_key`, ...)."""

    labels: str  # fo.Detections with the instance masks
    key: str
    model: str
    run_id: str
    question: str
    explanation: str
    rejected: str
    error: str
    record: str  # the prediction line without its masks (JSON): pull rebuilds the line from it
    digest: str  # a hash of the whole line: a second push of the same line writes nothing
    # how much a person should doubt the sample's labels (0..1, see review/doubt.py) and its parts
    doubt: str
    doubt_score: str
    doubt_disagreement: str
    doubt_conflict: str
    doubt_shape: str
    group_doubt: str  # the most doubtful sample of its FiftyOne group: what the review queue sorts by
    group_score: str  # the lowest label score of its FiftyOne group (None: no label)

    @property
    def doubt_fields(self) -> tuple[str, ...]:
        return (self.doubt, self.doubt_score, self.doubt_disagreement, self.doubt_conflict, self.doubt_shape,
                self.group_doubt, self.group_score)

    @classmethod
    def of(cls, labels: str) -> RunFields:
        return cls(labels, *(f"{labels}_{f.name}" for f in fields(cls)[1:]))
