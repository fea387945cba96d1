from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest
from helpers import PETS_TEMPLATE, make_groups

from autolabel.review.database import PrivateMongo


@pytest.fixture
def box_backend(monkeypatch):
    """A BoxBackend class of this test's own: `.instances` lists the backends built from it in this
    test. The engine builds backends by import string, so it is put at `.target`
    ("doubles:RecordedBox") for this test only and taken away after it."""
    import doubles

    cls = doubles.recording()
    cls.target = "doubles:RecordedBox"
    monkeypatch.setattr(doubles, "RecordedBox", cls, raising=False)
    return cls


@pytest.fixture
def dataset_name(request) -> str:
    """A FiftyOne dataset name of this test's own."""
    return f"t_{request.node.name}"[:60].replace("[", "_").replace("]", "_")


@pytest.fixture
def groups_dir(tmp_path: Path) -> Path:
    return make_groups(tmp_path / "data", 6)


@pytest.fixture(scope="session")
def fo_db(tmp_path_factory):
    """A private mongod; FiftyOne never touches ~/.fiftyone or a user's database. Never skipped.

    The environment is set before fiftyone is imported (it reads its settings then), and the
    subprocesses the CLI tests start inherit it.
    """
    if "fiftyone" in sys.modules:
        raise RuntimeError("fiftyone was imported before the fo_db fixture set its environment: "
                           "it would use the real ~/.fiftyone database")
    mongo = PrivateMongo.start(tmp_path_factory.mktemp("fiftyone"))
    os.environ.update(mongo.env, FIFTYONE_DATABASE_NAME="autolabel_test")
    # atexit runs last-registered first: registered before fiftyone connects, this runs after
    # FiftyOne's own exit hook, which still needs the database.
    atexit.register(mongo.stop)
    import fiftyone

    return fiftyone


@pytest.fixture
def template(tmp_path: Path) -> str:
    """A two-turn template file whose ontology has three entries (the test double rejects the third)."""
    path = tmp_path / "pets.yaml"
    path.write_text(PETS_TEMPLATE)
    return str(path)


@pytest.fixture(scope="session")
def ray_cluster():
    """One private local Ray cluster for every test that needs it (a second `ray.init` in the same
    process after a shutdown can time out starting its GCS); its workers import tests/."""
    import ray

    tests = Path(__file__).resolve().parent
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(tests), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()
