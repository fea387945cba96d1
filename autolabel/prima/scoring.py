"""Categories of PRIMA's answers, and training records as COCO ground truth.

Both sides name categories the same way: a generated phrase ("the red circle") is filed by the
`prima` backend under the longest known category it contains ("red circle"), and the records'
masks are filed under their labels, so `autolabel eval` can score validation
(`autolabel/prima_validation.py`) exactly as it scores any run.
"""

from __future__ import annotations

import json
from pathlib import Path

from autolabel.masks import rle_to_area, rle_to_xywh
from autolabel.prima.data import Record, record_image_size


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
                                    "segmentation": rle, "area": rle_to_area(rle), "bbox": rle_to_xywh(rle)})
        for file in files:  # images with no target stay listed: a mask there is a false positive
            if file not in images:
                height, width = record_image_size(record, file)
                images[file] = {"id": len(images) + 1, "file_name": file, "width": width, "height": height}
    path.write_text(json.dumps({"images": list(images.values()), "annotations": annotations,
                                "categories": [{"id": i, "name": n} for n, i in ids.items()]}))
    return path
