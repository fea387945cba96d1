"""Builders the tests and benchmarks share (image folders, a template); fixtures stay in conftest.py.

Import them as `from helpers import make_groups` (tests/ is on the path: pytest's rootdir
conftest, and the benchmarks put it there themselves).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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
