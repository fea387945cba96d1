"""Push benchmark: `autolabel push` samples/s next to a raw FiftyOne `add_samples` of the same samples.

    .venv/bin/python benchmarks/push.py --masks 30000

Synthetic run (benchmarks/export.py's): 256x256 images, 5 masks each, 2 images per group. Each
measurement runs in a fresh child process against one private mongod. `raw` builds the very
samples push would write (same grouped layout, fields and instance masks) before its clock
starts and times only `add_samples`: the floor for writing them through FiftyOne's API (its
end-to-end time, reading and building included, is printed too). Push's time covers everything:
reading predictions.jsonl, decoding RLE, building samples, writing, and the doubt of every label
(printed on its own). `again` pushes the same run a second time (nothing to write).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from export import IMAGES_PER_GROUP, MASKS_PER_IMAGE, image_file, start_mongod, write_run


def child_push(run_dir: str, images_dir: str, name: str) -> dict:
    import autolabel.review.push as pushing
    from autolabel.review.database import connect

    connect()  # importing fiftyone is not part of the push: raw's import is outside its clock too
    doubt_s = []
    update_doubt = pushing.update_doubt

    def timed_doubt(*args, **kwargs):  # the doubt pass's share of the push
        t0 = time.perf_counter()
        try:
            return update_doubt(*args, **kwargs)
        finally:
            doubt_s.append(time.perf_counter() - t0)

    pushing.update_doubt = timed_doubt
    start = time.perf_counter()
    stats = pushing.push([Path(run_dir)], name, image_root=Path(images_dir))
    return {"seconds": time.perf_counter() - start, "samples": stats.samples_added + stats.samples_updated,
            "unchanged": stats.samples_unchanged, "masks": stats.masks, "doubt_s": sum(doubt_s)}


def child_raw(run_dir: str, images_dir: str, name: str) -> dict:
    from autolabel.review.database import connect
    from autolabel.review.detections import segment_detection
    from autolabel.review.layout import slice_name
    from autolabel.store import read_predictions

    fo = connect()
    dataset = fo.Dataset(name)
    dataset.add_group_field("group", default=slice_name(0))
    built = time.perf_counter()
    samples = []
    for pred in read_predictions([Path(run_dir)]):
        group = fo.Group()
        for index, info in enumerate(pred.images):
            detections = [segment_detection(fo, s, 0) for s in pred.segments() if s.image == index]
            samples.append(fo.Sample(filepath=f"{images_dir}/{info.file}", group=group.element(slice_name(index)),
                                     group_id=pred.group_id, template=pred.template, image_index=index,
                                     file=info.file, predictions=fo.Detections(detections=detections),
                                     predictions_explanation=pred.explanation))
    start = time.perf_counter()
    dataset.add_samples(samples, dynamic=True, progress=False)
    end = time.perf_counter()
    return {"seconds": end - start, "with_build_s": end - built, "samples": len(samples)}


CHILDREN = {"push": child_push, "raw": child_raw}


def run_child(role: str, *args: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", role, *args], capture_output=True, text=True,
                          env={**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(f"child {role} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=30_000, help="masks in the synthetic run")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, *rest = args.child
        print(json.dumps(CHILDREN[role](*rest)))
        return
    with tempfile.TemporaryDirectory(prefix="autolabel-push-bench-") as tmp:
        workdir = Path(tmp)
        env = start_mongod(workdir)
        run_dir, images_dir = workdir / "run", workdir / "images"
        write_run(run_dir, args.masks)
        images_dir.mkdir()
        n_images = (args.masks + MASKS_PER_IMAGE - 1) // MASKS_PER_IMAGE
        for image_no in range(n_images):
            (images_dir / image_file(image_no)).touch()  # push checks the files exist; nothing reads pixels
        print(f"== {args.masks:,} masks on {n_images:,} images ({n_images // IMAGES_PER_GROUP:,} groups of "
              f"{IMAGES_PER_GROUP})")
        raw = run_child("raw", str(run_dir), str(images_dir), "raw", env=env)
        ours = run_child("push", str(run_dir), str(images_dir), "pushed", env=env)
        again = run_child("push", str(run_dir), str(images_dir), "pushed", env=env)
        for label, r in (("raw add_samples (write only)", raw), ("autolabel push (end to end)", ours)):
            print(f"{label:30s}: {r['seconds']:7.2f} s  {r['samples'] / r['seconds']:8,.0f} samples/s  "
                  f"{args.masks / r['seconds']:8,.0f} masks/s")
        print(f"{'  of which doubt':30s}: {ours['doubt_s']:7.2f} s  (computing and writing every label's doubt)")
        print(f"{'push again (nothing new)':30s}: {again['seconds']:7.2f} s  ({again['unchanged']:,} samples "
              f"unchanged, {again['samples']} written)")
        print(f"{'raw read + build + add_samples':30s}: {raw['with_build_s']:7.2f} s  "
              f"{raw['samples'] / raw['with_build_s']:8,.0f} samples/s")
        print(f"ratio push / raw add_samples alone: {ours['seconds'] / raw['seconds']:.2f}x the time; "
              f"push / raw end to end: {ours['seconds'] / raw['with_build_s']:.2f}x")


if __name__ == "__main__":
    main()
