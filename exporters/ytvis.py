"""YouTube-VIS JSON export: the standard file of video instance segmentation.

`videos` lists each clip with its sampled frames in order (`file_names`, and `timestamps`, `frames`
as extra fields); each track of each prediction line is one annotation with one segmentation per
frame (compressed RLE, `null` on a frame where the track has no mask), `areas` and `bboxes` per
frame, the track's mean `score`, and `track_id`, template, question and explanation in
`attributes`. Categories and their ids are those of the COCO export of the same runs. The file
holds the exact RLEs of the prediction lines, so masks round-trip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from autolabel import __version__
from autolabel.atomic_files import JsonItems, atomic_output, dumps
from autolabel.masks import rle_to_area, rle_to_xywh
from autolabel.run_index import index_runs
from autolabel.store import read_predictions


@dataclass
class YtvisStats:
    videos: int = 0
    annotations: int = 0
    categories: int = 0
    skipped_image_groups: int = 0  # lines that are not video clips: not in a video file
    failed_groups: int = 0
    skipped_low_score: int = 0


def export_ytvis(run_dirs: list[Path], out: Path, *, min_score: float = 0.0) -> YtvisStats:
    run_dirs = [Path(r) for r in run_dirs]
    index = index_runs(run_dirs)
    stats = YtvisStats(categories=len(index.categories))
    videos: dict[str, dict] = {}
    for pred in read_predictions(run_dirs):  # first pass: the clips and their frames
        if pred.images and getattr(pred.images[0], "video", None) is not None:
            name = pred.images[0].video
            videos.setdefault(name, {"file_names": [i.file for i in pred.images], "width": pred.images[0].width,
                                     "height": pred.images[0].height, "frames": [i.frame for i in pred.images],
                                     "timestamps": [i.timestamp for i in pred.images]})
    ids = {name: i for i, name in enumerate(sorted(videos), 1)}
    stats.videos = len(ids)
    info = {"description": "autolabel video predictions of " + ", ".join(str(r) for r in run_dirs),
            "version": __version__, "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with atomic_output(Path(out)) as f:
        f.write('{"info":' + dumps(info) + ',"licenses":[],"categories":'
                + dumps([{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in index.categories])
                + ',"videos":' + dumps([{"id": ids[name], "file_name": name, **v, "length": len(v["file_names"])}
                                        for name, v in sorted(videos.items())])
                + ',"annotations":[')
        annotations = JsonItems(f)
        for pred in read_predictions(run_dirs):
            if not pred.images or getattr(pred.images[0], "video", None) is None:
                stats.skipped_image_groups += 1
                continue
            stats.failed_groups += pred.status != "ok"
            frames = videos[pred.images[0].video]["file_names"]
            position = {file: p for p, file in enumerate(frames)}
            for turn in pred.turns:
                tracks: dict[int, list] = {}
                for s in turn.segments:
                    if s.track_id is None:
                        continue
                    if s.score < min_score:
                        stats.skipped_low_score += 1
                        continue
                    tracks.setdefault(s.track_id, []).append(s)
                for track_id, segments in sorted(tracks.items()):
                    per_frame: list = [None] * len(frames)
                    for s in segments:
                        if rle_to_area(s.rle):
                            per_frame[position[pred.images[s.image].file]] = s
                    shown = [s for s in per_frame if s is not None]
                    first = segments[0]
                    stats.annotations += 1
                    annotations.add(dumps({
                        "id": stats.annotations, "video_id": ids[pred.images[0].video],
                        "category_id": index.category_id(first), "iscrowd": 0,
                        "score": sum(s.score for s in segments) / len(segments),
                        "segmentations": [{"size": s.rle["size"], "counts": s.rle["counts"]} if s else None
                                          for s in per_frame],
                        "areas": [rle_to_area(s.rle) if s else None for s in per_frame],
                        "bboxes": [rle_to_xywh(s.rle) if s else None for s in per_frame],
                        "track_id": track_id, "length": len(shown),
                        "attributes": {"group_id": pred.group_id, "template": pred.template, "model": pred.model,
                                       "question": turn.question, "explanation": pred.explanation,
                                       "model_label": first.label, "phrase": first.phrase, "track_id": track_id,
                                       "scores": [s.score if s else None for s in per_frame]}}))
        f.write("]}\n")
    return stats
