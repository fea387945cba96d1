"""PNG export: one instance-indexed PNG per image plus `legend.json` saying what each value is.

Pixel values: 0 is background, 1..K the image's instances in stream order (uint8 PNG while
K < 256, 16-bit beyond). Such a PNG looks black in an image viewer, so each gets a colour
twin, `NAME.color.png` (RGB: background black, instance k in colour k of `palette.py`, the
colours `legend.json` lists under `palette`); the index PNG is the one to read values from. Overlaps: the highest score is on top; between equal scores the later
instance wins. An instance hidden entirely by others still has its legend entry, with
`"visible_pixels": 0`. Masks with no pixel at all are left out and counted (as in COCO).

Memory stays flat however many masks there are: predictions are streamed, and an image listed
by several predictions (several templates, merged runs) is painted prediction by prediction:
its PNG is read back and painted over (read-modify-write) until the last prediction that lists
it, counted in the first pass, finishes it and writes its legend entry. Only the instance lists
of images still waiting for a prediction stay in memory; pixels always live on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from autolabel.atomic_files import JsonItems, atomic_output, atomic_write_bytes, dumps
from autolabel.errors import AutolabelError
from autolabel.masks import rle_to_mask
from autolabel.prediction import Prediction, segment_category
from autolabel.run_index import ImageRecord, RunIndex, index_runs
from autolabel.store import read_predictions

from autolabel.exporters.coco import ExportStats
from autolabel.exporters.palette import index_lut

LEGEND = "legend.json"
COLOR_SUFFIX = ".color.png"  # the colour twin of an index PNG: a.png -> a.color.png


@dataclass
class _Pending:
    """An image painted by some of the predictions that list it, waiting for the rest."""

    seen: int = 0
    instances: list[dict] = field(default_factory=list)


def export_masks(run_dirs: list[Path], out_dir: Path) -> ExportStats:
    """Write `out_dir/<file>.png` for every image of `run_dirs` and `out_dir/legend.json`."""
    run_dirs = [Path(r) for r in run_dirs]
    out_dir = Path(out_dir)
    index = index_runs(run_dirs)
    png_paths = _png_paths(index.images, out_dir)
    stats = ExportStats(categories=len(index.categories))
    pending: dict[str, _Pending] = {}
    most_instances = 0
    with atomic_output(out_dir / LEGEND) as f:
        categories = [{"id": c.id, "name": c.name} for c in index.categories]
        f.write('{"categories":' + dumps(categories) + ',"images":{')
        legend = JsonItems(f)
        for pred in read_predictions(run_dirs):
            stats.groups += 1
            stats.failed_groups += pred.status != "ok"
            for position, file in _distinct_files(pred):
                record = index.images[file]
                state = pending.setdefault(file, _Pending())
                state.seen += 1
                canvas = _paint(pred, position, record, index, png_paths.get(file), state, stats)
                if state.seen == record.predictions:
                    del pending[file]
                    if canvas is not None:
                        _write_color_png(color_path(png_paths[file]), canvas, len(state.instances))
                    most_instances = max(most_instances, len(state.instances))
                    legend.add(dumps(file) + ":" + dumps(_legend_entry(record, png_paths.get(file), out_dir,
                                                                       canvas, state.instances)))
                    stats.images += 1
        f.write('},"palette":' + dumps(index_lut(most_instances).tolist()) + "}\n")
    return stats


def color_path(png: Path) -> Path:
    """Where the colour twin of index PNG `png` goes: `a.png` -> `a.color.png`."""
    return png.with_name(png.name.removesuffix(".png") + COLOR_SUFFIX)


def _distinct_files(pred: Prediction) -> list[tuple[int, str]]:
    """(first position, file) for each file of the prediction: a file listed twice is one image."""
    first: dict[str, int] = {}
    for position, info in enumerate(pred.images):
        first.setdefault(info.file, position)
    return [(position, file) for file, position in first.items()]


def _paint(pred: Prediction, position: int, record: ImageRecord, index: RunIndex, png: Path | None,
           state: _Pending, stats: ExportStats) -> np.ndarray | None:
    """Paint this prediction's masks of one image onto its PNG; returns the canvas (None: size unknown)."""
    if png is None:
        return None
    positions = {i for i, info in enumerate(pred.images) if info.file == record.file}
    canvas = _read_png(png) if state.seen > 1 else np.zeros((record.height, record.width), np.uint16)
    top_score = np.array([-np.inf] + [i["score"] for i in state.instances])[canvas]
    for turn in pred.turns:
        for segment in turn.segments:
            if segment.image not in positions:
                continue
            mask = rle_to_mask(segment.rle)
            if not mask.any():
                stats.skipped_empty += 1
                continue
            state.instances.append({
                "index": len(state.instances) + 1, "category_id": index.category_id(segment),
                "category": segment_category(segment), "label": segment.label, "score": segment.score,
                "group_id": pred.group_id, "template": pred.template, "round": segment.round,
            })
            stats.annotations += 1
            on_top = mask & (segment.score >= top_score)
            canvas[on_top] = len(state.instances)
            top_score[on_top] = segment.score
    _write_png(png, canvas, len(state.instances))
    return canvas


def _legend_entry(record: ImageRecord, png: Path | None, out_dir: Path, canvas: np.ndarray | None,
                  instances: list[dict]) -> dict:
    if canvas is not None:
        visible = np.bincount(canvas.ravel(), minlength=len(instances) + 1)
        for instance in instances:
            instance["visible_pixels"] = int(visible[instance["index"]])
    return {"png": png.relative_to(out_dir).as_posix() if png else None, "width": record.width,
            "height": record.height, "instances": instances}


def _png_paths(images: dict[str, ImageRecord], out_dir: Path) -> dict[str, Path]:
    """file -> its PNG under out_dir (same folders, `.png` suffix), for every image of known size.

    Two files that would share a PNG (`a.jpg`, `a.png`) keep their full name plus `.png`; a path
    that would leave `out_dir` (absolute, `..`) is refused.
    """
    by_target: dict[PurePosixPath, list[str]] = {}
    for file, record in images.items():
        relative = PurePosixPath(file)
        if relative.is_absolute() or ".." in relative.parts or not relative.name:
            raise AutolabelError(f"image {file!r}: PNG export needs a path inside the input root")
        if record.width is not None and record.height is not None:
            by_target.setdefault(relative.with_suffix(".png"), []).append(file)
    paths: dict[str, Path] = {}
    for target, files in by_target.items():
        for file in files:
            name = target if len(files) == 1 or file == target.as_posix() else PurePosixPath(file + ".png")
            paths[file] = out_dir.joinpath(*name.parts)
    if len(set(paths.values())) != len(paths):
        raise AutolabelError(f"{out_dir}: image paths collide after adding .png; rename the inputs")
    taken = {path: file for file, path in paths.items()}
    for file, path in paths.items():
        if color_path(path) in taken:
            raise AutolabelError(f"{out_dir}: the colour PNG of {file!r} would overwrite the mask PNG of "
                                 f"{taken[color_path(path)]!r} ({color_path(path).name}); rename the inputs")
    return paths


def _read_png(path: Path) -> np.ndarray:
    data = np.frombuffer(path.read_bytes(), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED).astype(np.uint16)


def _write_png(path: Path, canvas: np.ndarray, instances: int) -> None:
    """8-bit while the values fit, 16-bit beyond; written whole (temp file + rename)."""
    write_png(path, canvas.astype(np.uint8 if instances < 256 else np.uint16))


def _write_color_png(path: Path, canvas: np.ndarray, instances: int) -> None:
    """The index canvas in colour (RGB), for eyes: background black, instance k in colour k."""
    rgb = index_lut(instances)[canvas]
    write_png(path, np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR


def write_png(path: Path, pixels: np.ndarray) -> None:
    """`pixels` (BGR, gray or 16-bit) as a PNG, written whole: a temp file, then a rename."""
    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise AutolabelError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, data.tobytes())
