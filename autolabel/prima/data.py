"""PRIMA's training data: one JSONL line per group, read and checked line by line.

    {"id": "kitchen-7", "images": ["k7/a.jpg", "k7/b.jpg"],
     "conversation": [
       {"question": "Which object holds liquid in both images?",
        "answer": "In Image 1, the mug [SEG]. In Image 2, the mug [SEG]. There is no kettle [REJ].",
        "targets": [{"image": 0, "label": "mug", "mask": {"size": [h, w], "counts": "..."}},
                    {"image": 1, "label": "mug", "mask": {...}},
                    {"label": "kettle", "absent": true}],
        "refs": [{"image": 0, "box": [x0, y0, x1, y1]}]}]}

Image paths are relative to the JSONL file's folder. `targets` follow the answer's `[SEG]` and
`[REJ]` in order: a `[SEG]` needs an image index and a COCO RLE mask of that image's size, a
`[REJ]` is `"absent": true`. `refs` give a box for each `<ref>` of the question. Lines are kept
as parsed JSON (masks stay RLE); images are decoded only when their batch is built.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from autolabel.errors import AutolabelError, InputError
from autolabel.images import decode_image
from autolabel.prima.config import REFER, REJ, SEG

_MARKERS = re.compile("|".join(re.escape(m) for m in (SEG, REJ)))


@dataclass
class Record:
    """One checked line: where it came from and its JSON."""

    source: str  # "file:line", for messages
    root: Path
    data: dict

    @property
    def id(self) -> str:
        return str(self.data.get("id") or self.source)

    def example(self, *, max_pixels: int | None = None):
        """Decode the images and masks: a PrimaModel `Example` for training."""
        from autolabel.masks import rle_to_mask
        from autolabel.prima.model import Example, Target, Turn

        images = [self._image(file, max_pixels) for file in self.data["images"]]
        turns = [Turn(question=t["question"], answer=t["answer"],
                      targets=[Target(None, None) if x.get("absent") else Target(x["image"], rle_to_mask(x["mask"]))
                               for x in t.get("targets", [])],
                      refs=[(r["image"], r["box"]) for r in t.get("refs", [])])
                 for t in self.data["conversation"]]
        return Example(images, turns)

    def questions(self, *, max_pixels: int | None = None):
        """The images and the questions (with their `<ref>` boxes), no answers: what validation asks."""
        from autolabel.prima.model import Example, Turn

        images = [self._image(file, max_pixels) for file in self.data["images"]]
        return Example(images, [Turn(t["question"], refs=[(r["image"], r["box"]) for r in t.get("refs", [])])
                                for t in self.data["conversation"]])

    def _image(self, file: str, max_pixels: int | None):
        kwargs = {"max_pixels": max_pixels} if max_pixels else {}
        try:
            return decode_image(self.root / file, file, **kwargs)
        except InputError as e:
            raise AutolabelError(f"{self.source}: image {e}") from None


@dataclass
class LoadedData:
    records: list[Record]
    skipped: list[str]  # "file:line: reason" for every line left out with --skip-bad


def load_records(path: Path, *, skip_bad: bool = False, check_images: bool = True) -> LoadedData:
    """Every line of a training JSONL, checked; a bad line is an error naming it, or skipped and listed."""
    path = Path(path)
    if not path.is_file():
        raise AutolabelError(f"{path}: no such training file")
    records, skipped = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            source = f"{path}:{lineno}"
            try:
                data = json.loads(line)
                _check(data, path.parent, check_images)
            except (json.JSONDecodeError, ValueError, KeyError, TypeError, InputError) as e:
                reason = (f"{source}: missing field {e}" if isinstance(e, KeyError) else
                          f"{source}: {_image_problem(e)}" if isinstance(e, InputError) else f"{source}: {e}")
                if not skip_bad:
                    raise AutolabelError(f"{reason} (pass --skip-bad to leave bad lines out)") from None
                skipped.append(reason)
                continue
            records.append(Record(source, path.parent, data))
    if not records:
        raise AutolabelError(f"{path}: no usable training lines" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return LoadedData(records, skipped)


def _check(data: dict, root: Path, check_images: bool) -> None:
    images = data["images"]
    if not isinstance(images, list) or not images:
        raise ValueError("`images` must be a non-empty list of paths")
    sizes = [image_size(root / file, file) if check_images else None for file in images]
    conversation = data["conversation"]
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("`conversation` must be a non-empty list of turns")
    for t, turn in enumerate(conversation):
        where = f"conversation[{t}]"
        answer, targets = turn["answer"], turn.get("targets", [])
        markers = _MARKERS.findall(answer)
        if len(markers) != len(targets):
            raise ValueError(f"{where}: the answer has {len(markers)} [SEG]/[REJ] but there are "
                             f"{len(targets)} targets")
        for k, (marker, target) in enumerate(zip(markers, targets)):
            if marker == REJ:
                if not target.get("absent"):
                    raise ValueError(f"{where}.targets[{k}]: the answer has [REJ] here, so the target must be "
                                     "`\"absent\": true`")
                continue
            if target.get("absent"):
                raise ValueError(f"{where}.targets[{k}]: the answer has [SEG] here but the target is absent")
            image = target["image"]
            if not isinstance(image, int) or not 0 <= image < len(images):
                raise ValueError(f"{where}.targets[{k}].image: {image!r} is not an index into the "
                                 f"{len(images)} images")
            size = target["mask"]["size"]
            if sizes[image] is not None and list(size) != list(sizes[image]):
                raise ValueError(f"{where}.targets[{k}].mask: size {list(size)} but image {images[image]!r} is "
                                 f"{sizes[image][0]}x{sizes[image][1]} (height x width)")
        refs = turn.get("refs", [])
        if turn["question"].count(REFER) != len(refs):
            raise ValueError(f"{where}: the question has {turn['question'].count(REFER)} {REFER} but "
                             f"{len(refs)} refs")
        for k, ref in enumerate(refs):
            if not 0 <= ref["image"] < len(images) or len(ref["box"]) != 4:
                raise ValueError(f"{where}.refs[{k}]: needs an image index and a box [x0, y0, x1, y1]")


def image_size(path: Path, file: str) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header only; InputError if unusable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
            return (image.width, image.height) if turned else (image.height, image.width)
    except FileNotFoundError:
        raise InputError(file, f"not found (looked at {path})") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(file, f"cannot be read: {e}") from None


def record_image_size(record: Record, file: str) -> tuple[int, int]:
    """`image_size` of one of a record's images; an unusable one is an error naming the line."""
    try:
        return image_size(record.root / file, file)
    except InputError as e:
        raise AutolabelError(f"{record.source}: {_image_problem(e)}") from None


def _image_problem(e: InputError) -> str:
    return f"image {e.file!r} {e.reason}"


def convert_coco(coco: Path, questions: Path, images_root: Path, out: Path) -> int:
    """COCO masks + a questions JSONL -> training lines; returns how many were written.

    A questions line names a group and what to segment:
    `{"id": "g1", "images": ["a.jpg", "b.jpg"], "question": "Segment every mug.", "targets": ["mug"]}`
    (`images` are COCO file_names). The answer is written from the masks: "In Image k, the mug
    [SEG]." for every instance, "There is no mug [REJ]." for a target on none of the images.
    A missing or unreadable file, or a line or annotation that does not fit, is an AutolabelError
    naming it (and the partly written `out` is removed).
    """
    data = _read_json(Path(coco), "COCO file")
    try:
        by_file = {image["file_name"]: image for image in data["images"]}
        names = {c["id"]: c["name"] for c in data["categories"]}
        instances: dict[tuple[int, str], list[dict]] = {}
        for a in data["annotations"]:
            if a["category_id"] not in names:
                raise AutolabelError(f"{coco}: annotation {a.get('id')!r} has category_id {a['category_id']!r}, "
                                     "which is not among its categories")
            instances.setdefault((a["image_id"], names[a["category_id"]]), []).append(a)
    except (KeyError, TypeError) as e:
        raise AutolabelError(f"{coco}: not a COCO file with images, categories and annotations "
                             f"({_what_is_wrong(e)})") from None
    out = Path(out)
    relative_root = Path(os.path.relpath(Path(images_root).resolve(), out.resolve().parent))
    text = _read_text(Path(questions), "questions file")
    try:
        f = out.open("w", encoding="utf-8")
    except OSError as e:
        raise AutolabelError(f"{out}: cannot write the training lines ({e.strerror or e})") from None
    written = 0
    try:
        with f:
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                where = f"{questions}:{lineno}"
                try:
                    q = json.loads(line)
                    f.write(_training_line(q, lineno, by_file, instances, relative_root, where, coco))
                except json.JSONDecodeError as e:
                    raise AutolabelError(f"{where}: not a JSON line ({e})") from None
                except (KeyError, TypeError, ValueError) as e:
                    raise AutolabelError(f"{where}: {_what_is_wrong(e)}") from None
                written += 1
    except AutolabelError:
        out.unlink(missing_ok=True)
        raise
    return written


def _training_line(q: dict, lineno: int, by_file: dict, instances: dict, relative_root: Path, where: str,
                   coco: Path) -> str:
    """One questions line as a training line (JSON text with its newline)."""

    from autolabel.masks import mask_to_rle, polygons_to_rle, rle_to_mask

    if not isinstance(q, dict):
        raise TypeError("a questions line must be a JSON object")
    for field in ("images", "targets"):
        if not (isinstance(q[field], list) and all(isinstance(v, str) for v in q[field])):
            raise TypeError(f"`{field}` must be a list of strings, got {q[field]!r}")
    missing = [file for file in q["images"] if file not in by_file]
    if missing:
        raise AutolabelError(f"{where}: {missing[0]!r} is not an image of {coco}")
    answer, targets = [], []
    for name in q["targets"]:
        found = False
        for k, file in enumerate(q["images"]):
            image = by_file[file]
            for a in instances.get((image["id"], name), []):
                seg = a["segmentation"]
                if isinstance(seg, dict):  # RLE, compressed or not
                    rle = seg
                else:  # polygons: one mask, their union
                    rle = polygons_to_rle(seg, image["height"], image["width"])
                answer.append(f"In Image {k + 1}, the {name} [SEG].")
                targets.append({"image": k, "label": name, "mask": mask_to_rle(rle_to_mask(rle))})
                found = True
        if not found:
            answer.append(f"There is no {name} [REJ].")
            targets.append({"label": name, "absent": True})
    return json.dumps({"id": q.get("id", f"line-{lineno}"),
                       "images": [str(relative_root / file) for file in q["images"]],
                       "conversation": [{"question": q["question"], "answer": " ".join(answer),
                                         "targets": targets}]}) + "\n"


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AutolabelError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AutolabelError(f"{path}: cannot read the {what} ({getattr(e, 'strerror', None) or e})") from None


def _read_json(path: Path, what: str):
    try:
        return json.loads(_read_text(path, what))
    except json.JSONDecodeError as e:
        raise AutolabelError(f"{path}: the {what} is not JSON ({e})") from None


def _what_is_wrong(e: Exception) -> str:
    return f"missing field {e}" if isinstance(e, KeyError) else str(e)

