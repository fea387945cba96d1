"""Does the doubt-first queue find wrong masks sooner? A synthetic run with known errors, pushed and
queued the way `autolabel review` does it, on a private mongod.

    .venv/bin/python benchmarks/doubt.py --images 300 --seed 0

Each image (128x128, groups of one) holds 2 objects (rectangles of 18-44 px, categories cat, dog,
bird); the truth is known. Two templates label every image independently, as a run with two
`--prompt`s would. Per object and template a mask is, with these chances:

- right (80%): the truth moved by 0-1 px (IoU with the truth about 0.9);
- moved (12%): the truth shifted so that its IoU with the truth is drawn uniformly from 0.1-0.45;
- broken (8%): a few specks inside the box (SAM falling apart): fragmented, small;

and per image and template there is a 6% chance of a hallucination (a mask of a category that is
not in the image; the other template rejects that category there, as it was asked about it). A mask
is *wrong* when its IoU with its truth is below 0.5 (hallucinations have none). Scores are weakly
informative, as a model's are: right masks draw from U(0.70, 0.98), wrong ones from U(0.55, 0.95).

The queue is the one `review` saves: groups (image x template) in `--order`. Printed: the share of
all wrong masks that sit in the first 20% of the queue, for each order, with both templates pushed
and with one template only (no second opinion: score and shape alone), and the best any order
could do (the 20% holds fewer groups than there are groups with a wrong mask).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
SIZE = 128
CATEGORIES = ("cat", "dog", "bird")
TEMPLATES = ("ontology", "multi-target")


def rect(x: int, y: int, w: int, h: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def synthesize(n_images: int, rng: np.random.Generator):
    """Yield (image name, {template: (segments, rejections, wrong count)})."""
    from autolabel.prediction import Rejection, Segment

    for i in range(n_images):
        truth = []
        for category in rng.choice(CATEGORIES, 2, replace=False):
            w, h = rng.integers(18, 45, 2)
            x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
            truth.append((str(category), int(x), int(y), int(w), int(h)))
        present = {t[0] for t in truth}
        answers = {}
        for template in TEMPLATES:
            segments, wrong = [], 0
            for category, x, y, w, h in truth:
                kind = rng.choice(["right", "moved", "broken"], p=[0.80, 0.12, 0.08])
                if kind == "right":
                    mask = rect(x + int(rng.integers(-1, 2)), y + int(rng.integers(-1, 2)), w, h)
                elif kind == "moved":  # a rectangle shifted by s along x has IoU (w - s) / (w + s)
                    target = rng.uniform(0.1, 0.45)
                    s = int(round(w * (1 - target) / (1 + target)))
                    mask = rect(x + s * int(rng.choice([-1, 1])), y, w, h)
                else:
                    mask = np.zeros((SIZE, SIZE), bool)
                    for _ in range(4):
                        px, py = x + rng.integers(0, w - 3), y + rng.integers(0, h - 3)
                        mask[py:py + 2, px:px + 2] = True
                is_wrong = iou(mask, rect(x, y, w, h)) < 0.5
                wrong += is_wrong
                score = rng.uniform(0.55, 0.95) if is_wrong else rng.uniform(0.70, 0.98)
                segments.append(Segment.from_mask(mask, image=0, label=category, category=category,
                                                  phrase=f"the {category}", score=score))
            answers[template] = [segments, [], wrong]
        absent = [c for c in CATEGORIES if c not in present]
        for template in TEMPLATES:
            other = TEMPLATES[1 - TEMPLATES.index(template)]
            if rng.random() < 0.06:  # a hallucination the other template rejects
                w, h = rng.integers(18, 45, 2)
                mask = rect(int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h)), int(w), int(h))
                answers[template][0].append(Segment.from_mask(mask, image=0, label=absent[0], category=absent[0],
                                                              phrase=f"the {absent[0]}",
                                                              score=rng.uniform(0.55, 0.95)))
                answers[template][2] += 1
                answers[other][1].append(Rejection(absent[0], absent[0], absent[0], "not in the image"))
        for template in TEMPLATES:  # each template rejects what it did not find
            found = {s.category for s in answers[template][0]}
            said = {r.category for r in answers[template][1]}
            answers[template][1] += [Rejection(c, c, c, "not in the image") for c in absent
                                     if c not in found and c not in said]
        yield f"img{i:05d}.png", answers


def write_run(run_dir: Path, images: Path, n_images: int, seed: int, templates: tuple[str, ...]) -> dict:
    """The run directory and {(group id, template): wrong masks}."""
    from PIL import Image

    from autolabel.prediction import ImageInfo, Prediction, Turn, prediction_key
    from autolabel.store import PredictionWriter

    images.mkdir(parents=True, exist_ok=True)
    blank = Image.new("RGB", (SIZE, SIZE))
    writer = PredictionWriter(run_dir)
    wrong: dict[tuple[str, str], int] = {}
    for name, answers in synthesize(n_images, np.random.default_rng(seed)):
        if not (images / name).exists():
            blank.save(images / name)
        lines = []
        for template in templates:
            segments, rejected, n_wrong = answers[template]
            wrong[(name, template)] = n_wrong
            lines.append(Prediction(key=prediction_key(name, template, "synthetic"), group_id=name,
                                    images=[ImageInfo(name, SIZE, SIZE)], template=template, template_hash="0",
                                    model="synthetic", backend="synthetic",
                                    turns=[Turn("Segment cat, dog, bird.", "", segments, rejected)]))
        writer.write(lines)
    spec = {"hash": "0", "category": "bench", "ontology": {c: c for c in CATEGORIES}, "categories": list(CATEGORIES)}
    writer.write_info({"run_id": "bench", "input_root": str(images), "model": "synthetic",
                       "templates": {t: spec for t in templates}})
    writer.close()
    return wrong


def first_share(order: list[tuple[str, str]], wrong: dict, share: float = 0.2) -> tuple[float, int]:
    head = order[:round(len(order) * share)]
    return sum(wrong[g] for g in head) / sum(wrong.values()), len(head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from export import start_mongod

    work = Path(tempfile.mkdtemp(prefix="autolabel-doubt-"))
    os.environ.update(start_mongod(work / "db"))  # before fiftyone is imported
    from autolabel.review.app import ORDERS, queue
    from autolabel.review.database import load_dataset
    from autolabel.review.layout import RunFields
    from autolabel.review.push import push

    print(f"{args.images} images x 2 objects, seed {args.seed}; share of the wrong masks in the first 20% "
          "of the queue (groups = image x template)")
    for label, templates in (("two templates", TEMPLATES), ("one template", TEMPLATES[:1])):
        run = work / f"run-{len(templates)}"
        wrong = write_run(run, work / "images", args.images, args.seed, templates)
        name = f"doubt-{len(templates)}"
        t0 = time.perf_counter()
        push([run], name)
        seconds = time.perf_counter() - t0
        ds = load_dataset(name)
        fields = RunFields.of("predictions")
        total = sum(wrong.values())
        masks = sum(len(d.detections) for d in ds.values("predictions"))
        print(f"\n{label}: {len(wrong)} groups, {masks} masks, {total} wrong ({total / masks:.1%}); "
              f"push with doubt {seconds:.1f} s")
        for order in ORDERS:
            found, head = first_share(list(zip(*queue(ds, fields, order).values(["group_id", "template"]))), wrong)
            print(f"  --order {order:6s}: {found:6.1%} of the wrong masks in the first {head} groups")
        best, head = first_share(sorted(wrong, key=lambda g: -wrong[g]), wrong)
        print(f"  best possible  : {best:6.1%} (an oracle that knows the errors)")


if __name__ == "__main__":
    main()
