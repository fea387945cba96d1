from __future__ import annotations

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
