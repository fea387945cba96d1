"""One writer at a time per dataset: a lease kept in FiftyOne's own MongoDB, so it holds for every
machine that shares the database (`FIFTYONE_DATABASE_URI`), not just for this one.

`push` and `review` change a dataset in several steps (find samples, add or update them, record
the run in `dataset.info`); two of them at once would add the same samples twice or lose one's
record. The lock is a document with the dataset's name as `_id` (MongoDB's unique index makes
taking it atomic); its holder renews it while working, so a lock left by a killed process runs out
after LEASE_S seconds and the next writer takes it over.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from autolabel.errors import AutolabelError

COLLECTION = "autolabel_locks"
LEASE_S = 60.0  # a lock nobody renewed for this long is free
WAIT_S = 900.0  # how long a second writer waits before giving up


def _say(holder: dict) -> None:
    sys.stderr.write(f"waiting for {holder.get('owner')} ({holder.get('what')} since "
                     f"{holder.get('since'):%H:%M:%S} UTC) to finish with the dataset\n")
    sys.stderr.flush()


@contextmanager
def dataset_lock(name: str, what: str, *, wait_s: float = WAIT_S,
                 on_wait: Callable[[dict], None] | None = _say) -> Iterator[str]:
    """Hold the dataset `name` for `what` ("push", "review"); wait while another writer holds it."""
    from fiftyone.core.odm.database import get_db_conn
    from pymongo.errors import DuplicateKeyError

    locks = get_db_conn()[COLLECTION]
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        now = datetime.now(timezone.utc)
        doc = {"owner": owner, "what": what, "since": now, "expires": now + timedelta(seconds=LEASE_S)}
        try:
            locks.insert_one({"_id": name, **doc})
            break
        except DuplicateKeyError:
            pass
        # the holder died without releasing: its lease ran out
        if locks.find_one_and_update({"_id": name, "expires": {"$lt": now}}, {"$set": doc}):
            break
        holder = locks.find_one({"_id": name})
        if holder is None:
            continue
        if not told and on_wait is not None:
            on_wait(holder)
            told = True
        if time.monotonic() > deadline:
            raise AutolabelError(f"dataset {name!r} is still held by {holder.get('owner')} ({holder.get('what')}) "
                                 f"after {wait_s:.0f} s; try again when it has finished")
        time.sleep(0.2)

    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 4):
            locks.update_one({"_id": name, "owner": owner},
                             {"$set": {"expires": datetime.now(timezone.utc) + timedelta(seconds=LEASE_S)}})

    renewer = threading.Thread(target=renew, name=f"lock-{name}", daemon=True)
    renewer.start()
    try:
        yield owner
    finally:
        stop.set()
        renewer.join()
        locks.delete_one({"_id": name, "owner": owner})
