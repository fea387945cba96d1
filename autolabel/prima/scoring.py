"""PRIMA's answers as autolabel predictions, and training records as COCO ground truth.

Both directions name categories the same way: a generated phrase ("the red circle") is filed
under the longest known category it contains ("red circle"), so `autolabel eval` can score
validation exactly as it scores any run.
"""

from __future__ import annotations

import json
from pathlib import Path

from autolabel.masks import encode_rle, rle_area, rle_bbox
from autolabel.prediction import ImageInfo, Prediction, Rejection, Segment, Turn, prediction_key
from autolabel.prima.data import Record, image_size
from autolabel.store import PredictionWriter

VALIDATION_TEMPLATE = "prima-validation"


def match_category(phrase: str, categories: list[str]) -> str:
    """The longest category named in the phrase (case-insensitive), else the phrase itself."""
    lowered = phrase.lower()
    found = [c for c in categories if c.lower() in lowered]
    return max(found, key=len) if found else phrase


def record_categories(records: list[Record]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for turn in record.data["conversation"]:
            names.update(dict.fromkeys(t["label"] for t in turn.get("targets", []) if t.get("label")))
    return list(names)


def write_ground_truth(records: list[Record], path: Path) -> Path:
    """The records' masks as a COCO file (file names as the JSONL gives them)."""
    categories = record_categories(records)
    ids = {name: i for i, name in enumerate(categories, 1)}
    images, annotations = {}, []
    for record in records:
        files = record.data["images"]
        for turn in record.data["conversation"]:
            for target in turn.get("targets", []):
                if target.get("absent"):
                    continue
                file = files[target["image"]]
                height, width = target["mask"]["size"]
                images.setdefault(file, {"id": len(images) + 1, "file_name": file, "width": width, "height": height})
                rle = target["mask"]
                annotations.append({"id": len(annotations) + 1, "image_id": images[file]["id"],
                                    "category_id": ids[target.get("label") or categories[0]], "iscrowd": 0,
                                    "segmentation": rle, "area": rle_area(rle), "bbox": rle_bbox(rle)})
        for file in files:  # images with no target stay listed: a mask there is a false positive
            if file not in images:
                height, width = image_size(record.root / file, file)
                images[file] = {"id": len(images) + 1, "file_name": file, "width": width, "height": height}
    path.write_text(json.dumps({"images": list(images.values()), "annotations": annotations,
                                "categories": [{"id": i, "name": n} for n, i in ids.items()]}))
    return path


def write_predictions(model, records: list[Record], run_dir: Path, max_new_tokens: int, batch_size: int = 16) -> Path:
    """Generate on every record, `batch_size` groups per generate call, and write a run directory
    `autolabel eval` reads."""
    from autolabel.prima.model import Example, Turn as ModelTurn

    categories = record_categories(records)
    writer = PredictionWriter(run_dir)
    try:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            examples = [record.example() for record in batch]
            questions = [[ModelTurn(t["question"], refs=[(r["image"], r["box"]) for r in t.get("refs", [])])
                          for t in record.data["conversation"]] for record in batch]
            generated = model.generate_batch([Example(e.images, q) for e, q in zip(examples, questions)],
                                             max_new_tokens=max_new_tokens)
            lines = []
            for record, example, asked, answers in zip(batch, examples, questions, generated):
                turns = [answer_turn(q.question, g, categories, round_)
                         for round_, (q, g) in enumerate(zip(asked, answers))]
                images = [ImageInfo(file, image.shape[1], image.shape[0])
                          for file, image in zip(record.data["images"], example.images)]
                lines.append(Prediction(key=prediction_key(record.id, VALIDATION_TEMPLATE, "prima"), group_id=record.id,
                                        images=images, template=VALIDATION_TEMPLATE, template_hash="", model="prima",
                                        backend="prima", turns=turns, category="prima"))
            writer.write(lines)
        writer.write_info({"templates": {VALIDATION_TEMPLATE: {"categories": categories}}})
    finally:
        writer.close()
    return run_dir


def answer_turn(question: str, generated, categories: list[str], round_: int) -> Turn:
    """A generated turn as a prediction Turn: masks as segments, [REJ] as rejections."""
    segments, rejected = [], []
    for g in generated.grounded:
        category = match_category(g.phrase, categories)
        if g.mask is None:
            rejected.append(Rejection(label=category, category=category, phrase=g.phrase, round=round_))
        elif g.mask.any():
            segments.append(Segment(image=g.image, label=category, category=category, phrase=g.phrase,
                                    rle=(rle := encode_rle(g.mask)), bbox=rle_bbox(rle), score=g.score, round=round_))
    return Turn(question=question, answer=generated.answer, segments=segments, rejected=rejected)
