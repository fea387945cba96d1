from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel.review.database import PrivateMongo


def write_image(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def make_groups(root: Path, n_groups: int, per_group: int = 2, side: int = 32, seed: int = 0) -> Path:
    """root/g000/img1.png ... : a folder per group, sizes (from `side` pixels) varying by group;
    another `seed` gives other pixels."""
    for g in range(n_groups):
        for i in range(per_group):
            write_image(root / f"g{g:03d}" / f"img{i + 1}.png", side + 4 * (g % 5), side + 8 + 8 * i,
                        seed=seed + g * 10 + i)
    return root


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


PETS_TEMPLATE = """
name: pets
category: multi-target
turns:
  - "Segment {{ targets }} in the {{ num_images }} images."
  - "Now the one next to it."
variables:
  targets: {default: "cat, dog, bird"}
ontology: "{{ targets }}"
"""


@pytest.fixture
def template(tmp_path: Path) -> str:
    """A two-turn template file whose ontology has three entries (the test double rejects the third)."""
    path = tmp_path / "pets.yaml"
    path.write_text(PETS_TEMPLATE)
    return str(path)
