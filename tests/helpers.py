"""Builders the tests and benchmarks share (image folders, a template, the CLI in a subprocess,
prediction lines and runs, a labelled run); fixtures stay in conftest.py, test doubles in doubles.py.

Import them as `from helpers import make_groups` (tests/ is on the path: pytest's rootdir
conftest, and the benchmarks put it there themselves).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from autolabel.config import RunConfig
from autolabel.engine import Engine
from autolabel.prediction import ImageInfo, Prediction, Rejection, Segment, Turn, prediction_key
from autolabel.store import PredictionWriter


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


# -- the CLI in a subprocess ---------------------------------------------------------------
TESTS = Path(__file__).parent
HEAVY = ("torch", "transformers", "fiftyone")


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m autolabel ARGS` in a subprocess, tests/ on its path (`doubles:...` backends load)."""
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run([sys.executable, "-m", "autolabel", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def imported_heavy(*argv: str) -> list[str]:
    """Run the CLI in-process in a fresh interpreter; report which heavy libraries it imported."""
    code = (
        "import sys\nsys.argv = ['autolabel', *sys.argv[1:]]\nfrom autolabel.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(TESTS)}, timeout=120)
    line = [x for x in r.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line[6:].split(",") if m]


def assert_one_line_error(r, *words: str) -> None:
    """`r` (a finished CLI) exited 2 with one `error:` line, no traceback, naming every word."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for word in words:
        assert word in r.stderr, (word, r.stderr)


# -- prediction lines and runs (exports) ------------------------------------------------------
TEMPLATES = {
    "parts": {"hash": "h-parts", "category": "functional",
              "ontology": {"a cat": "cat", "a dog": "dog", "a horse": "horse"}, "categories": ["cat", "dog", "horse"]},
    "people": {"hash": "h-people", "category": "spatial", "ontology": {"someone": "person", "a kitty": "cat"},
               "categories": ["person", "cat"]},
}


# -- masks with the shapes that break exporters -----------------------------------------------
def two_parts(h: int, w: int) -> np.ndarray:
    """A mask in two separate parts."""
    m = np.zeros((h, w), bool)
    m[2:9, 3:12] = True
    m[h - 10:h - 3, w - 8:w - 2] = True
    return m


def ring(h: int, w: int) -> np.ndarray:
    """A rectangle with a hole in it."""
    m = np.zeros((h, w), bool)
    m[5:25, 5:30] = True
    m[10:20, 12:22] = False
    return m


def touching_border(h: int, w: int) -> np.ndarray:
    """A mask along the image's edges."""
    m = np.zeros((h, w), bool)
    m[0, :] = True
    m[:, w - 1] = True
    m[h - 6:, :7] = True
    return m


def ellipse(h: int, w: int, seed: int) -> np.ndarray:
    """A filled ellipse placed and sized by `seed`."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(rng.integers(w // 4, w - w // 4)), int(rng.integers(h // 4, h - h // 4))),
                (int(rng.integers(3, 15)), int(rng.integers(3, 15))), float(rng.integers(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def seg(mask: np.ndarray, image: int, category: str, score: float = 0.9, label: str | None = None,
        round: int = 0) -> Segment:
    """A Segment of `mask` on image `image`."""
    return Segment.from_mask(mask, image=image, label=label or category, category=category,
                             phrase=f"the {category}", score=score, round=round)


def prediction(group: str, files: list[tuple[str, int | None, int | None]], turns: list[Turn], *,
               template: str = "parts", status: str = "ok", error: dict | None = None,
               ids: list[int | None] | None = None) -> Prediction:
    """A prediction line of `group` under one of TEMPLATES; `files` are (file, width, height)."""
    ids = ids or [None] * len(files)
    return Prediction(key=prediction_key(group, template, "m"), group_id=group,
                      images=[ImageInfo(f, w, h, i) for (f, w, h), i in zip(files, ids)],
                      template=template, template_hash=TEMPLATES.get(template, {}).get("hash", "h?"),
                      model="m", backend="test", turns=turns, status=status, error=error,
                      category=TEMPLATES.get(template, {}).get("category", ""))


def write_run(run_dir: Path, predictions: list[Prediction], *, name: str | None = None,
              templates: dict | None = None) -> Path:
    """Write `predictions` as a run in `run_dir` (its info lists TEMPLATES unless `templates` is given)."""
    writer = PredictionWriter(run_dir, name)
    writer.write(predictions)
    writer.write_info({"input_root": "/data", "templates": TEMPLATES if templates is None else templates})
    writer.close()
    return run_dir


G1 = [("g1/b.jpg", 53, 37), ("g1/a.jpg", 41, 40)]  # (file, width, height): odd sizes


def sample_predictions() -> list[Prediction]:
    """Two groups x two templates, a failed group, multi-part / holed / border / empty masks."""
    g1_parts = prediction("g1", G1, [
        Turn("Which part is the cat?", "The cat is in image 1; the dog in image 2.",
             segments=[seg(two_parts(37, 53), 0, "cat", 0.95), seg(ring(40, 41), 1, "dog", 0.8),
                       seg(touching_border(37, 53), 0, "cat", 0.3), seg(np.zeros((40, 41), bool), 1, "dog", 0.7)],
             rejected=[Rejection("horse", "horse", "a horse", "no horse anywhere"),
                       Rejection("dog", "dog", "a dog", "not in this one", image=0)]),
        Turn("And what else?", "A zebra.", segments=[seg(ellipse(40, 41, 1), 1, "zebra", 0.6, round=1)]),
    ])
    g1_people = prediction("g1", G1, [
        Turn("Who is there?", "A person in image 2.", segments=[seg(ellipse(40, 41, 2), 1, "person", 0.85)])
    ], template="people")
    g2_parts = prediction("g2", [("g2/x.png", 30, 20)], [
        Turn("Which part is the cat?", "Here.", segments=[seg(ellipse(20, 30, 3), 0, "cat", 0.5)])])
    g3_failed = prediction("g3", [("g3/broken.jpg", None, None), ("g3/ok.jpg", 16, 16)],
                           [Turn("Which part is the cat?")], status="error",
                           error={"stage": "decode", "message": "g3/broken.jpg: truncated", "file": "g3/broken.jpg"})
    return [g1_parts, g1_people, g2_parts, g3_failed]


# -- a labelled run (the review tests) ---------------------------------------------------------
def labelled_run(tmp_path: Path, name: str = "run", model: str | None = None, n_groups: int = 4) -> Path:
    """A run of the test backend: groups of 1-3 images, two turns, a rejected target, one failed group."""
    data = tmp_path / "data"
    if not data.exists():
        make_groups(data, n_groups, per_group=2)
        make_groups(tmp_path / "more", 1, per_group=3)
        (tmp_path / "more" / "g000").rename(data / "triple")
        (data / "solo").mkdir()
        (data / "solo" / "only.png").write_bytes((data / "g000" / "img1.png").read_bytes())
        (data / "broken").mkdir()
        (data / "broken" / "a.png").write_bytes(b"not a png")
    template = tmp_path / "pets.yaml"
    template.write_text(PETS_TEMPLATE)
    cfg = RunConfig(input=data, out=tmp_path / name, prompt=[str(template)], backend="doubles:BoxBackend",
                    model=model, quiet=True)
    summary = Engine(cfg).run()
    assert summary.failed and all("broken" in key for key, _ in summary.failed)
    return tmp_path / name


def annotations_by_mask(coco_path: Path) -> dict[tuple, dict]:
    """(file, category, group, round, model label) -> annotation, for comparing two COCO files."""
    data = json.loads(coco_path.read_text())
    files = {i["id"]: i["file_name"] for i in data["images"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    out = {}
    for a in data["annotations"]:
        key = (files[a["image_id"]], names[a["category_id"]], a["attributes"]["group_id"], a["attributes"]["round"],
               a["attributes"]["model_label"])
        assert key not in out
        out[key] = a
    return out
