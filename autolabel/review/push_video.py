"""`autolabel push` of video runs: a FiftyOne *video* dataset the App plays with its masks.

One sample per clip (its video file); each template's masks are a frame-level `Detections` field
`<field>_<template>` (default field `predictions`), one detection per track and frame, with
`index` = the track id (the App colours and follows a track by it), the mask cropped to its box,
`confidence` the tracker's score on that frame, and `model_label`, `phrase`, `turn` as image pushes
have them. FiftyOne frame numbers count from 1: frame index i of the clip is frame i + 1. A clip
read from a folder of frames has no video file to play: push writes one (`review_video`), every
frame of the folder in the clip's order, and pushes it like a video file. Pushing again replaces a
clip's frame labels of the same field (a rerun's newer lines win).

`pull` (`pull_video`) reads the frame fields back, as reviewers left them, into per-frame COCO
(the `export coco` of video: `video_id`, `frame_index`, `timestamp`, `track_id` = the detection's
`index`); the sample keeps what that needs (`autolabel_video`: the clip's name in the run;
`autolabel_frames`: each sampled frame's name, index and time; the clip's size; the pushed
templates), so a frames-folder clip comes back under its own frame names and `eval` pairs the
pulled clip with the run's.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from autolabel.atomic_files import atomic_path, atomic_write_bytes
from autolabel.errors import AutolabelError, InputError
from autolabel.store import read_predictions, read_run_info
from autolabel.video import FRAMES_FOLDER_FPS

REVIEW_VIDEOS = "review-videos"  # in the first run directory: the frames-folder clips as videos
# VP8 in WebM: OpenCV's own FFmpeg writes it, and browsers (the App) play it; they play no mp4v
REVIEW_CODEC, REVIEW_MIME = "VP80", "video/webm"


@dataclass
class VideoPushStats:
    clips: int = 0
    frames: int = 0
    masks: int = 0
    failed: int = 0
    review_videos: int = 0  # frames-folder clips written as review videos by this push (not reused ones)
    not_pushed: list[str] = dataclass_field(default_factory=list)  # frames-folder clips: "file: why"
    field: str = ""

    def __str__(self) -> str:
        return (f"{self.clips} clip(s), {self.frames} labelled frame(s), {self.masks} masks in frame field(s) "
                f"{self.field}_<template>; {self.failed} failed line(s) skipped"
                + (f"; {self.review_videos} review video(s) of frames folders written to {REVIEW_VIDEOS}/ "
                   "in the run directory" if self.review_videos else "")
                + "".join(f"; frames-folder clip not pushed: {why}" for why in self.not_pushed))


def is_video_run(run_dirs: list[Path]) -> bool:
    """Whether the runs' lines are video clips (the first line with images decides)."""
    for pred in read_predictions([Path(r) for r in run_dirs]):
        if pred.images:
            return getattr(pred.images[0], "video", None) is not None
    return False


def is_video_dataset(dataset_name: str) -> bool:
    import fiftyone as fo

    return fo.dataset_exists(dataset_name) and fo.load_dataset(dataset_name).media_type == "video"


def push_video(run_dirs: list[Path], dataset_name: str, *, label_field: str | None = None,
               image_root: Path | None = None) -> VideoPushStats:
    import fiftyone as fo

    from autolabel.review.detections import segment_detection

    run_dirs = [Path(r) for r in run_dirs]
    field = label_field or "predictions"
    stats = VideoPushStats(field=field)
    info = read_run_info(run_dirs[0])
    root = image_root or (Path(info["input_root"]) if info.get("input_root") else None)
    if root is None or not Path(root).is_dir():
        raise AutolabelError(f"{run_dirs[0]}: the clips' folder {root} is not here; pass --image-root DIR")
    if fo.dataset_exists(dataset_name):
        dataset = fo.load_dataset(dataset_name)
        if dataset.media_type not in (None, "video"):
            raise AutolabelError(f"dataset {dataset_name!r} holds {dataset.media_type}s; push a video run to a "
                                 "new dataset name")
    else:
        dataset = fo.Dataset(dataset_name, persistent=True)
    existing = {s.filepath: s for s in dataset} if len(dataset) else {}
    for pred in read_predictions(run_dirs):
        first = pred.images[0] if pred.images else None
        if first is None or getattr(first, "video", None) is None:
            continue
        if pred.status != "ok":
            stats.failed += 1
            continue
        metadata = None
        if first.file == f"{first.video}/{first.frame:06d}":  # a frame of a video file
            path = str((Path(root) / first.video).resolve())
        else:  # a folder of frame images: a video of them to play
            try:
                video, metadata, written = review_video(run_dirs[0], Path(root), pred)
            except InputError as e:
                stats.not_pushed.append(e.message)
                continue
            path, stats.review_videos = str(video.resolve()), stats.review_videos + written
        sample = existing.get(path)
        if sample is None:
            sample = fo.Sample(filepath=path)
            dataset.add_sample(sample)
            existing[path] = sample
        if metadata is not None:  # known as written: the App needs no ffprobe for it
            sample.metadata = fo.VideoMetadata(**metadata)
        name = f"{field}_{re.sub(r'[^0-9A-Za-z_]+', '_', pred.template)}"
        by_frame: dict[int, list] = {}
        for turn_index, turn in enumerate(pred.turns):
            for segment in turn.segments:
                if segment.track_id is None or segment.frame is None:
                    continue
                detection = segment_detection(fo, segment, turn_index)
                if detection is None:
                    continue
                detection.index = segment.track_id
                by_frame.setdefault(segment.frame + 1, []).append(detection)
        for number in sorted(by_frame):
            sample.frames[number][name] = fo.Detections(detections=by_frame[number])
            stats.masks += len(by_frame[number])
        sample["autolabel_group"] = pred.group_id
        sample["autolabel_model"] = pred.model
        sample["autolabel_video"] = first.video
        sample["autolabel_frames"] = [[im.file, im.frame, im.timestamp] for im in pred.images]
        sample["autolabel_size"] = [first.width, first.height]
        sample["autolabel_fields"] = sorted({*(_get(sample, "autolabel_fields") or []), name})
        sample["autolabel_templates"] = {**(_get(sample, "autolabel_templates") or {}),
                                         name: [pred.template, pred.template_hash, pred.category]}
        sample.save()
        stats.clips += 1
        stats.frames += len(by_frame)
    return stats


def review_video(run_dir: Path, root: Path, pred) -> tuple[Path, dict, bool]:
    """A frames-folder clip as a video the App plays: (its path, its FiftyOne metadata, whether this
    call wrote it), or an InputError naming the frame that stops it.

    Every frame image of the folder, in the clip's (natural) order, so the clip's frame index i is
    video frame i + 1 as for a video file, also where the run sampled fewer (`--fps`); at the
    frames' own size (the masks'); at the run's frame rate (its frames' timestamps). It is written
    to `<run_dir>/review-videos/<clip>.webm`, not into the input folder: that may be read-only or
    shared, and a video there would sit among the frames; the run directory holds what is derived
    from the run. Written atomically (temp file + rename); a later push reuses it while the
    folder's frames have the same names, sizes and modification times.
    """
    import cv2

    from autolabel.images import decode_image, folder_images

    first, last = pred.images[0], pred.images[-1]
    folder = (root / first.file).parent
    if not folder.is_dir():
        raise InputError(folder.relative_to(root).as_posix(), "frames folder not found")
    files = folder_images(folder)[0]
    names = [f.relative_to(root).as_posix() for f in files]
    for image in pred.images:
        now = names[image.frame] if image.frame < len(names) else "gone"
        if now != image.file:
            raise InputError(image.file, f"the frames folder changed since the run (frame {image.frame} is now {now})")
    fps = round(last.frame / last.timestamp, 3) if last.timestamp else FRAMES_FOLDER_FPS
    path = run_dir / REVIEW_VIDEOS / f"{pred.group_id}.webm"
    stamp = path.with_name(path.name + ".frames")  # what the video was written from
    frames = [(name, f.stat().st_size, f.stat().st_mtime_ns) for name, f in zip(names, files)]
    signature = hashlib.sha256(repr((fps, first.width, first.height, frames)).encode()).hexdigest()
    written = not (path.is_file() and stamp.is_file() and stamp.read_text() == signature)
    if written:
        with atomic_path(path) as tmp:
            with _quiet_stderr():  # OpenCV's FFmpeg prints a harmless note on the WebM codec tag
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*REVIEW_CODEC), fps,
                                         (first.width, first.height))
            try:
                if not writer.isOpened():
                    raise AutolabelError(f"{path}: OpenCV cannot write a {REVIEW_CODEC} video here")
                for name, f in zip(names, files):
                    frame = decode_image(f, name)
                    if frame.shape[:2] != (first.height, first.width):
                        raise InputError(name, f"frame is {frame.shape[1]}x{frame.shape[0]}, "
                                               f"the clip {first.width}x{first.height}")
                    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            finally:
                writer.release()
        atomic_write_bytes(stamp, signature.encode())
    metadata = dict(size_bytes=path.stat().st_size, mime_type=REVIEW_MIME, frame_width=first.width,
                    frame_height=first.height, frame_rate=fps, total_frame_count=len(files),
                    duration=len(files) / fps, encoding_str=REVIEW_CODEC)
    return path, metadata, written


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the block (C libraries that print to it directly)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _get(document, name: str):
    return document[name] if document.has_field(name) else None


@dataclass
class VideoPullStats:
    clips: int = 0
    frames: int = 0
    masks: int = 0


def pull_video(dataset_name: str, out: Path, *, field: str | None = None) -> VideoPullStats:
    """The video dataset's frame labels (every field push wrote, or only `field`) as per-frame COCO."""
    import tempfile

    import fiftyone as fo

    from autolabel.exporters.coco import export_coco
    from autolabel.prediction import ImageInfo, Prediction, Segment, Turn
    from autolabel.review.detections import detection_mask
    from autolabel.store import PredictionWriter

    if not fo.dataset_exists(dataset_name):
        raise AutolabelError(f"no FiftyOne dataset {dataset_name!r}")
    dataset = fo.load_dataset(dataset_name)
    stats = VideoPullStats()
    with tempfile.TemporaryDirectory() as tmp:
        writer = PredictionWriter(Path(tmp), None)
        try:
            for sample in dataset:
                frames = _get(sample, "autolabel_frames")
                if not frames:
                    continue
                width, height = sample["autolabel_size"]
                position = {number + 1: p for p, (_, number, _) in enumerate(frames)}
                video = _get(sample, "autolabel_video") or frames[0][0].rsplit("/", 1)[0]  # pushed before it
                images = [ImageInfo(file, width, height, video=video, frame=number, timestamp=t)
                          for file, number, t in frames]
                templates = _get(sample, "autolabel_templates") or {}
                for name in sample["autolabel_fields"]:
                    if field is not None and name != field:
                        continue
                    segments = []
                    for number, frame in sample.frames.items():
                        labels = frame[name] if frame.has_field(name) else None
                        if number not in position or labels is None:
                            continue
                        for d in labels.detections:
                            mask = detection_mask(d, width, height)
                            segments.append(Segment.from_mask(
                                mask, image=position[number], label=_get(d, "model_label") or d.label,
                                category=d.label, phrase=_get(d, "phrase") or d.label,
                                score=d.confidence if d.confidence is not None else 1.0))
                            segments[-1].frame, segments[-1].track_id = number - 1, d.index
                            segments[-1].timestamp = frames[position[number]][2]
                        stats.frames += 1
                    stats.masks += len(segments)
                    template, thash, category = templates.get(name, [name, "", ""])
                    writer.write([Prediction(key=f"{sample['autolabel_group']}|{template}|{sample['autolabel_model']}",
                                             group_id=sample["autolabel_group"], images=images, template=template,
                                             template_hash=thash, model=sample["autolabel_model"], backend="review",
                                             turns=[Turn(question="", segments=segments)], category=category)])
                stats.clips += 1
        finally:
            writer.close()
        export_coco([Path(tmp)], Path(out))
    return stats
