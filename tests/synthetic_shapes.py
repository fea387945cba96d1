"""A synthetic multi-image task for PRIMA: coloured shapes on grey, in groups of two images.

Three kinds of question, each answer in PRIMA's training format:
- find: "Segment the red circle." -> the one image that has it, "[SEG]" on it;
- absent: the same question when no image has it -> "[REJ]";
- common: "Segment the shape that appears in every image." -> "[SEG]" on each image (cross-image).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from autolabel.masks import mask_to_rle

SIDE = 32
COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 70, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")
OBJECTS = [f"{c} {s}" for c in COLORS for s in SHAPES]


def _draw(image: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    color, shape = name.split()
    r = int(rng.integers(6, 9))
    cy, cx = (int(v) for v in rng.integers(r + 1, SIDE - r - 1, 2))
    yy, xx = np.mgrid[:SIDE, :SIDE]
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if shape == "circle" else \
        ((abs(yy - cy) <= r - 1) & (abs(xx - cx) <= r - 1))
    image[mask & ~(image != 128).any(-1)] = COLORS[color]  # no overlap with what is drawn already
    return mask & (image == COLORS[color]).all(-1)


def make_task(root: Path, n: int, seed: int, name: str = "train") -> Path:
    """`n` groups under root/NAME/, their JSONL at root/NAME.jsonl."""
    rng = np.random.default_rng(seed)
    lines = []
    for g in range(n):
        kind = ("find", "absent", "common")[g % 3]
        images = [np.full((SIDE, SIDE, 3), 128, np.uint8) for _ in range(2)]
        objects = list(rng.permutation(OBJECTS))
        target = objects[0]  # distractors never share its colour: colour tells where it is
        others = [o for o in objects[1:] if o.split()[0] != target.split()[0]]
        targets, answer = [], ""
        if kind == "common":
            question = "Segment the shape that appears in every image."
            for k, image in enumerate(images):
                mask = _draw(image, target, rng)
                _draw(image, others[k], rng)
                targets.append({"image": k, "label": target, "mask": mask_to_rle(mask)})
            answer = f"In Image 1, the {target} [SEG]. In Image 2, the {target} [SEG]."
        else:
            question = f"Segment the {target}."
            holder = int(rng.integers(0, 2))
            for k, image in enumerate(images):
                if kind == "find" and k == holder:
                    mask = _draw(image, target, rng)
                    targets.append({"image": k, "label": target, "mask": mask_to_rle(mask)})
                _draw(image, others[k], rng)
            answer = (f"In Image {holder + 1}, the {target} [SEG]." if kind == "find"
                      else f"There is no {target} [REJ].")
            if kind == "absent":
                targets.append({"label": target, "absent": True})
        files = []
        for k, image in enumerate(images):
            file = f"{name}/g{g:04d}_{k + 1}.png"
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / file)
            files.append(file)
        lines.append({"id": f"{name}-{g:04d}", "images": files, "kind": kind,
                      "conversation": [{"question": question, "answer": answer, "targets": targets}]})
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
