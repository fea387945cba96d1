"""YOLO segmentation export: the folder layout and label files Ultralytics trains from.

    OUT/data.yaml              path, train/val folders and class names
    OUT/labels/<file>.txt      one per image: `class x1 y1 x2 y2 ...` per polygon, coordinates / image size
    OUT/images/<file>          the image, a symbolic link to the input (or a copy, or left out)

Ultralytics finds an image's labels by replacing `/images/` with `/labels/` in its path and the
suffix with `.txt`, hence the two mirrored trees. Classes are 0-based indices into the categories
in the order the COCO export numbers them (COCO id - 1), so both exports name the same classes.

What YOLO's format cannot hold: a polygon has no holes (they are filled, counted in
`holes_filled`), and outlines are traced on pixel edges, not the exact RLE (IoU with the mask
about 0.95-1.0 on simple shapes, lower on thin ones). A mask in several parts becomes one line per
part, each a separate instance of the class (counted in `split_masks`). An image whose only
predictions failed is left out altogether (no label file, no image), since an empty label file
would teach the model it holds nothing; an image of a successful prediction with no mask gets an
empty label file (a background image).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import yaml

from autolabel.atomic_files import atomic_output
from autolabel.errors import AutolabelError
from autolabel.masks import mask_to_polygons, rle_to_area
from autolabel.run_index import index_runs
from autolabel.store import image_roots, read_predictions

ImagesMode = Literal["symlink", "copy", "none"]
DATA_YAML = "data.yaml"


@dataclass
class YoloStats:
    images: int = 0  # images with a label file
    instances: int = 0  # label lines (polygons)
    classes: int = 0
    groups: int = 0
    failed_groups: int = 0
    images_left_out: int = 0  # only in failed predictions: unknown labels, not a background image
    images_not_found: int = 0  # labelled, but no image to link or copy
    split_masks: int = 0  # masks in several parts, written as one line per part
    holes_filled: int = 0
    skipped_low_score: int = 0
    skipped_empty: int = 0


def export_yolo(run_dirs: list[Path], out_dir: Path, *, min_score: float = 0.0, images: ImagesMode = "symlink",
                image_root: Path | None = None) -> YoloStats:
    """Write `out_dir/labels/...txt`, `out_dir/images/...` and `out_dir/data.yaml` for `run_dirs`."""
    run_dirs = [Path(r) for r in run_dirs]
    out_dir = Path(out_dir)
    if images not in ("symlink", "copy", "none"):
        raise AutolabelError(f"--images {images!r}: choose symlink, copy or none")
    index = index_runs(run_dirs)  # also checks the run directories
    roots = image_roots(run_dirs, image_root) if images != "none" else []
    classes = {c.name: k for k, c in enumerate(index.categories)}
    stats = YoloStats(classes=len(classes))
    label_paths = _label_paths(index.images)
    started: set[str] = set()  # images whose label file this export has (re)created
    for pred in read_predictions(run_dirs):
        stats.groups += 1
        if pred.status != "ok":
            stats.failed_groups += 1
            continue
        lines: dict[str, list[str]] = {info.file: [] for info in pred.images}
        for segment in pred.segments():
            if segment.score < min_score:
                stats.skipped_low_score += 1
                continue
            if rle_to_area(segment.rle) == 0:
                stats.skipped_empty += 1
                continue
            height, width = segment.rle["size"]
            polygons, holes = mask_to_polygons(segment.mask())
            stats.holes_filled += holes
            stats.split_masks += len(polygons) > 1
            cls = classes[segment.category or segment.label]
            for polygon in polygons:
                lines[pred.images[segment.image].file].append(_line(cls, polygon, width, height))
        for file, file_lines in lines.items():
            path = out_dir / label_paths[file]
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a" if file in started else "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in file_lines)
            stats.instances += len(file_lines)
            if file not in started:
                started.add(file)
                if images != "none" and not _place_image(file, roots, out_dir / "images" / file, images):
                    stats.images_not_found += 1
    stats.images = len(started)
    stats.images_left_out = len(index.images) - len(started)
    _write_data_yaml(out_dir, [c.name for c in index.categories], run_dirs)
    return stats


def _line(cls: int, polygon: list[float], width: int, height: int) -> str:
    coords = []
    for k, value in enumerate(polygon):
        scale = width if k % 2 == 0 else height
        coords.append(f"{min(1.0, max(0.0, value / scale)):.6f}")
    return f"{cls} " + " ".join(coords)


def label_path(file: str) -> PurePosixPath:
    """Where Ultralytics looks for the labels of `images/<file>`: the last `/images/` of the path
    becomes `/labels/`, the suffix `.txt` (so `labels/<file>.txt`, unless `file` has an `images`
    folder of its own)."""
    image = "/images/" + file
    cut = image.rfind("/images/")
    return PurePosixPath((image[:cut] + "/labels/" + image[cut + len("/images/"):]).lstrip("/")).with_suffix(".txt")


def _label_paths(images) -> dict[str, PurePosixPath]:
    """file -> its label file under OUT; refuses paths leaving OUT and files that would share a
    label file (`a.jpg` and `a.png`: Ultralytics maps both to `a.txt`)."""
    paths: dict[str, PurePosixPath] = {}
    owner: dict[PurePosixPath, str] = {}
    for file in images:
        relative = PurePosixPath(file)
        if relative.is_absolute() or ".." in relative.parts or not relative.name:
            raise AutolabelError(f"image {file!r}: YOLO export needs a path inside the input root")
        path = label_path(relative.as_posix())
        if path in owner:
            raise AutolabelError(f"images {owner[path]!r} and {file!r} would share the label file {path} "
                                 "(Ultralytics pairs labels by name without suffix); rename one")
        owner[path] = file
        paths[file] = path
    return paths


def _place_image(file: str, roots: list[Path], target: Path, mode: ImagesMode) -> bool:
    """Link or copy the image to `target`; False when no root holds it."""
    source = next((root / file for root in roots if (root / file).is_file()), None)
    if source is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if mode == "symlink":
        os.symlink(source.resolve(), target)
    else:
        shutil.copy2(source, target)
    return True


def _write_data_yaml(out_dir: Path, names: list[str], run_dirs: list[Path]) -> None:
    data = {"path": str(out_dir.resolve()), "train": "images", "val": "images", "nc": len(names),
            "names": dict(enumerate(names))}
    header = ("# YOLO segmentation labels exported by autolabel from "
              + ", ".join(str(r) for r in run_dirs) + "\n"
              "# train and val both list every image: split them (e.g. into images/train, images/val) to validate.\n")
    with atomic_output(out_dir / DATA_YAML) as f:
        f.write(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
