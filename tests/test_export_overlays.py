"""Overlay export: one picture per group x template, masks coloured where they are, failures shown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, imported_heavy, prediction, sample_predictions, seg, write_run
from PIL import Image

from autolabel.errors import AutolabelError
from autolabel.exporters.overlays import CAPTION, FILL_ALPHA, MIN_WIDTH, PAD, export_overlays
from autolabel.exporters.palette import instance_colors
from autolabel.prediction import Rejection, Turn

GREY = 128


def write_images(root: Path, files: list[tuple[str, int, int]]) -> Path:
    """Uniform grey images (JPEG keeps a flat colour exact) at the sizes the predictions say."""
    for file, w, h in files:
        path = root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (GREY, GREY, GREY)).save(path)
    return root


def picture(path: Path) -> np.ndarray:
    image = Image.open(path)
    assert image.mode == "RGB"
    return np.array(image)


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_one_png_per_group_and_template_with_the_expected_size(tmp_path: Path):
    images = write_images(tmp_path / "images", [("g1/b.jpg", 53, 37), ("g1/a.jpg", 41, 40),
                                                ("g2/x.png", 30, 20), ("g3/ok.jpg", 16, 16)])
    (images / "g3/broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "overlays"
    stats = export_overlays([write_run(tmp_path / "run", sample_predictions())], out, image_root=images, height=400)
    assert sorted(p.name for p in out.glob("*.png")) == [
        "g1__parts.png", "g1__people.png", "g2__parts.png", "g3__parts.png"]
    # g1: 53x37 and 41x40 scaled to height 400 -> 573 and 410 wide, with margins and the gap
    g1 = picture(out / "g1__parts.png")
    assert g1.shape[1] == PAD + 573 + PAD + 410 + PAD and g1.shape[0] > PAD + CAPTION + 400
    assert picture(out / "g2__parts.png").shape[1] == MIN_WIDTH  # one narrow image: the text panel's width
    index = json.loads((out / "overlays.json").read_text())["overlays"]
    assert [(e["png"], e["status"], e["masks"]) for e in index] == [
        ("g1__parts.png", "ok", 4), ("g1__people.png", "ok", 1), ("g2__parts.png", "ok", 1),
        ("g3__parts.png", "error", 0)]
    assert (stats.overlays, stats.failed_groups, stats.masks, stats.skipped_empty) == (4, 1, 6, 1)
    assert stats.images_missing == 1  # g3/broken.jpg: drawn as a grey tile that says why


def test_mask_pixels_are_coloured_and_the_rest_of_the_image_is_not(tmp_path: Path):
    h, w = 40, 60
    images = write_images(tmp_path / "images", [("img.jpg", w, h), ("other.jpg", w, h)])
    pred = prediction("g", [("img.jpg", w, h), ("other.jpg", w, h)], [Turn(
        "Which one?", "The box on the left, the strip on the right.",
        segments=[seg(box(h, w, 10, 30, 10, 30), 0, "cat", 0.9), seg(box(h, w, 0, 40, 40, 50), 1, "dog", 0.7)],
        rejected=[Rejection("horse", "horse", "a horse", "no horse")])])
    out = tmp_path / "overlays"
    export_overlays([write_run(tmp_path / "run", [pred])], out, image_root=images, height=80)  # scale 2
    pixels = picture(out / "g__parts.png").astype(int)
    top = PAD + CAPTION
    first, second = instance_colors(2).astype(int)
    blend = lambda color: GREY * (1 - FILL_ALPHA) + color * FILL_ALPHA  # noqa: E731
    inside = pixels[top + 40, PAD + 40]  # the centre of the box on image 1
    assert np.abs(inside - blend(first)).max() <= 2
    assert np.abs(pixels[top + 70, PAD + 100] - GREY).max() <= 2  # outside the box: the image as it is
    second_x = PAD + 2 * w + PAD
    assert np.abs(pixels[top + 40, second_x + 90] - blend(second)).max() <= 2  # the strip, in its own colour
    assert np.abs(pixels[top + 40, second_x + 20] - GREY).max() <= 2
    outline = pixels[top + 40, PAD + 20]  # the box's left edge: the outline in the full colour
    assert np.abs(outline - first).max() <= 2


def test_failed_line_is_drawn_without_masks_and_with_its_error(tmp_path: Path):
    images = write_images(tmp_path / "images", [("a.jpg", 30, 30)])
    failed = prediction("g", [("a.jpg", 30, 30)], [Turn("Which one?")], status="error",
                        error={"stage": "predict", "message": "RuntimeError: exploded", "file": None})
    out = tmp_path / "overlays"
    stats = export_overlays([write_run(tmp_path / "run", [failed])], out, image_root=images, height=60)
    pixels = picture(out / "g__parts.png")
    tile = pixels[PAD + CAPTION:PAD + CAPTION + 60, PAD:PAD + 60].astype(int)
    assert np.abs(tile - GREY).max() <= 2  # the image, no mask
    panel = pixels[PAD + CAPTION + 60 + PAD:]
    assert ((panel[..., 0] > 180) & (panel[..., 1] < 40) & (panel[..., 2] < 40)).any()  # the error, in red
    assert (stats.failed_groups, stats.masks) == (1, 0)


def test_min_score_and_a_missing_image(tmp_path: Path):
    h, w = 20, 20
    pred = prediction("g", [("gone.jpg", w, h)], [Turn("q", segments=[
        seg(box(h, w, 0, 10, 0, 10), 0, "cat", 0.9), seg(box(h, w, 10, 20, 10, 20), 0, "dog", 0.2)])])
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "overlays"
    stats = export_overlays([write_run(tmp_path / "run", [pred])], out, image_root=images, min_score=0.5, height=80)
    pixels = picture(out / "g__parts.png").astype(int)
    top = PAD + CAPTION  # scale 4: the 0.9 mask covers rows and columns 0-40 (its label the top rows)
    assert np.abs(pixels[top + 30, PAD + 20] - (200 * (1 - FILL_ALPHA) + instance_colors(1)[0] * FILL_ALPHA)).max() <= 2
    assert np.abs(pixels[top + 60, PAD + 60] - 200).max() <= 2  # grey tile, the 0.2 mask not drawn
    assert (stats.masks, stats.skipped_low_score, stats.images_missing) == (1, 1, 1)


def test_image_root_defaults_to_the_runs_input_root_and_a_missing_one_is_one_clear_error(tmp_path: Path):
    run = write_run(tmp_path / "run", sample_predictions())  # run.json says the images were in /data
    with pytest.raises(AutolabelError, match="--image-root"):
        export_overlays([run], tmp_path / "overlays")
    images = write_images(tmp_path / "images", [("a.jpg", 8, 8)])
    pred = prediction("g", [("a.jpg", 8, 8)], [Turn("q")])
    run2 = write_run(tmp_path / "run2", [pred])
    info = json.loads((run2 / "run.json").read_text())
    (run2 / "run.json").write_text(json.dumps({**info, "input_root": str(images)}))
    assert export_overlays([run2], tmp_path / "overlays").images_missing == 0


def test_same_group_and_template_from_two_models_get_their_own_files(tmp_path: Path):
    images = write_images(tmp_path / "images", [("a.jpg", 8, 8)])
    one = prediction("g/1", [("a.jpg", 8, 8)], [Turn("q")])
    other = prediction("g/1", [("a.jpg", 8, 8)], [Turn("q")])
    other.model, other.key = "other/model", "g/1|parts|other/model"
    out = tmp_path / "overlays"
    export_overlays([write_run(tmp_path / "run", [one, other])], out, image_root=images)
    assert sorted(p.name for p in out.glob("*.png")) == ["g-1__parts.png", "g-1__parts__other-model.png"]


def test_cli_export_overlays_writes_pictures_without_heavy_imports(tmp_path: Path):
    images = write_images(tmp_path / "images", [("g1/b.jpg", 53, 37), ("g1/a.jpg", 41, 40),
                                                ("g2/x.png", 30, 20), ("g3/ok.jpg", 16, 16)])
    run = write_run(tmp_path / "run", sample_predictions())
    out = tmp_path / "overlays"
    r = cli("export", "overlays", str(run), "-o", str(out), "--image-root", str(images), "--height", "100")
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("*.png"))) == 4 and "overlays=4" in r.stderr
    assert imported_heavy("export", "overlays", str(run), "-o", str(tmp_path / "o2"),
                          "--image-root", str(images)) == []
