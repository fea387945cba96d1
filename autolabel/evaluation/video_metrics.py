"""Video evaluation: J (region IoU), F (boundary F-measure) and J&F per track and overall.

These are the DAVIS / MeViS / ReVOS metrics (UniPixel reports them). Per frame, J is the mask IoU
and F the F-measure of the two boundaries matched within a tolerance of BOUND_TH of the image
diagonal; a frame where both masks are empty scores 1 for both, one where only one is empty 0.
A track's J (F) is the mean over the ground truth's frames; overall J (F) is the mean over ground-
truth tracks, and J&F their mean. Predicted tracks are matched one-to-one to ground-truth tracks of
the same clip (and category) by the largest mean J (Hungarian); an unmatched ground-truth track
scores 0, an unmatched predicted track is counted as a false track.

Ground truth is YouTube-VIS JSON (`videos` with `file_names`, `annotations` with one segmentation
per frame) or a per-frame COCO file whose images carry `video_id` and `frame_index` and whose
annotations carry a track id (`track_id`, `instance_id` or `attributes.track_id`). Predictions are a
run directory (or several) with video lines, or a YouTube-VIS file (an `export ytvis`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from autolabel.errors import AutolabelError
from autolabel.masks import polygons_to_rle, rle_to_mask

BOUND_TH = 0.008  # DAVIS: boundary tolerance as a fraction of the image diagonal
VIDEO_METRICS = ("J", "F", "J&F")


# -- per frame ---------------------------------------------------------------------------------
def region_j(pred: np.ndarray | None, gt: np.ndarray | None) -> float:
    """Mask IoU; both empty (or missing) is a perfect 1."""
    empty = _empty_score(pred, gt)
    if empty is not None:
        return empty
    inter = np.logical_and(pred, gt).sum()
    return float(inter / np.logical_or(pred, gt).sum())


def boundary_f(pred: np.ndarray | None, gt: np.ndarray | None, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure: boundary pixels of each mask matched to the other's within
    ceil(bound_th * diagonal) pixels (DAVIS `f_measure`)."""
    empty = _empty_score(pred, gt)
    if empty is not None:
        return empty
    import cv2

    h, w = gt.shape
    radius = max(1, math.ceil(bound_th * math.hypot(h, w)))
    pb, gb = boundary(pred), boundary(gt)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    gd = cv2.dilate(gb.astype(np.uint8), disk).astype(bool)
    pd = cv2.dilate(pb.astype(np.uint8), disk).astype(bool)
    n_p, n_g = pb.sum(), gb.sum()
    precision = float(np.logical_and(pb, gd).sum() / n_p) if n_p else 0.0
    recall = float(np.logical_and(gb, pd).sum() / n_g) if n_g else 0.0
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (the image edge counts as outside)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1]
    interior = inner & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return inner & ~interior


def _empty_score(pred: np.ndarray | None, gt: np.ndarray | None) -> float | None:
    """J and F where a mask is empty or missing (DAVIS): 1 when both are, 0 when one is; else None."""
    p, g = _any(pred), _any(gt)
    if p and g:
        return None
    return 1.0 if not p and not g else 0.0


def _any(mask: np.ndarray | None) -> bool:
    return mask is not None and bool(np.asarray(mask).any())


# -- tracks ------------------------------------------------------------------------------------
@dataclass
class VideoTrack:
    """One object through one clip: per frame key (position in the clip), its RLE or None."""

    video: str
    track_id: int
    category: str
    frames: dict[int, dict | None] = field(default_factory=dict)
    score: float = 1.0

    def mask(self, k: int, shape: tuple[int, int]) -> np.ndarray | None:
        rle = self.frames.get(k)
        return rle_to_mask(rle) if rle else None


@dataclass
class TrackScore:
    video: str
    gt_track: int
    category: str
    pred_track: int | None
    J: float
    F: float
    frames: int

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2

    def to_json(self) -> dict:
        return {"video": self.video, "gt_track": self.gt_track, "category": self.category,
                "pred_track": self.pred_track, "J": self.J, "F": self.F, "J&F": self.JF, "frames": self.frames}


@dataclass
class VideoEvalResult:
    tracks: list[TrackScore]
    false_tracks: int
    videos: int
    warnings: list[str] = field(default_factory=list)

    @property
    def overall(self) -> dict[str, float | None]:
        if not self.tracks:
            return {"J": None, "F": None, "J&F": None}
        j = float(np.mean([t.J for t in self.tracks]))
        f = float(np.mean([t.F for t in self.tracks]))
        return {"J": j, "F": f, "J&F": (j + f) / 2}

    def to_json(self) -> dict:
        return {"overall": self.overall, "videos": self.videos, "gt_tracks": len(self.tracks),
                "false_tracks": self.false_tracks, "tracks": [t.to_json() for t in self.tracks],
                "warnings": self.warnings}


def score_track(pred: VideoTrack | None, gt: VideoTrack, frames: list[int], shape: tuple[int, int]) -> tuple[float, float]:
    """Mean J and mean F of `pred` against `gt` over the clip's frames (empty frames included)."""
    js, fs = [], []
    for k in frames:
        g = gt.mask(k, shape)
        p = pred.mask(k, shape) if pred is not None else None
        js.append(region_j(p, g))
        fs.append(boundary_f(p, g))
    return float(np.mean(js)) if js else 0.0, float(np.mean(fs)) if fs else 0.0


def evaluate_tracks(preds: list[VideoTrack], gts: list[VideoTrack], clips: dict[str, tuple[list[int], tuple[int, int]]],
                    *, by_category: bool = True) -> VideoEvalResult:
    """Match predicted to ground-truth tracks per clip and score every ground-truth track."""
    from scipy.optimize import linear_sum_assignment

    scores: list[TrackScore] = []
    false_tracks = 0
    for video, (frames, shape) in sorted(clips.items()):
        g_tracks = [t for t in gts if t.video == video]
        p_tracks = [t for t in preds if t.video == video]
        pairs: dict[int, tuple[int, float, float]] = {}
        if g_tracks and p_tracks:
            table = np.zeros((len(g_tracks), len(p_tracks), 2))
            for i, g in enumerate(g_tracks):
                for j, p in enumerate(p_tracks):
                    if by_category and g.category != p.category:
                        table[i, j] = (-1.0, -1.0)
                        continue
                    table[i, j] = score_track(p, g, frames, shape)
            rows, cols = linear_sum_assignment(-table[:, :, 0])
            for i, j in zip(rows, cols):
                if table[i, j, 0] >= 0:
                    pairs[i] = (j, float(table[i, j, 0]), float(table[i, j, 1]))
        for i, g in enumerate(g_tracks):
            if i in pairs:
                j, jv, fv = pairs[i]
                scores.append(TrackScore(video, g.track_id, g.category, p_tracks[j].track_id, jv, fv, len(frames)))
            else:
                jv, fv = score_track(None, g, frames, shape)
                scores.append(TrackScore(video, g.track_id, g.category, None, jv, fv, len(frames)))
        false_tracks += len(p_tracks) - len(pairs)
    return VideoEvalResult(scores, false_tracks, len(clips))


# -- reading ground truth and predictions --------------------------------------------------------
def is_video_ground_truth(path: Path) -> bool:
    """A YouTube-VIS file, or a COCO file whose images are video frames."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    if isinstance(data.get("videos"), list) and any("file_names" in v for v in data["videos"] if isinstance(v, dict)):
        return True
    images = data.get("images")
    return isinstance(images, list) and bool(images) and all(isinstance(im, dict) and "video_id" in im for im in images)


@dataclass
class VideoSet:
    """Clips (name -> frame file names, (H, W)) and the tracks on them."""

    clips: dict[str, tuple[list[str], tuple[int, int]]]
    tracks: list[VideoTrack]


def read_video_json(path: Path) -> VideoSet:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    if isinstance(data.get("videos"), list) and any("file_names" in v for v in data["videos"]):
        return _read_ytvis(data, categories)
    return _read_frame_coco(data, categories, path)


def _video_name(video: dict) -> str:
    if video.get("file_name"):
        return str(video["file_name"])
    first = video["file_names"][0]
    return str(PurePosixPath(first).parent)


def _read_ytvis(data: dict, categories: dict) -> VideoSet:
    clips, names = {}, {}
    for v in data["videos"]:
        name = _video_name(v)
        names[v["id"]] = name
        clips[name] = (list(v["file_names"]), (int(v["height"]), int(v["width"])))
    tracks = []
    for n, ann in enumerate(data.get("annotations", []), 1):
        name = names[ann["video_id"]]
        h, w = clips[name][1]
        frames = {k: _rle(seg, h, w) if seg else None for k, seg in enumerate(ann.get("segmentations") or [])}
        track_id = ann.get("track_id", (ann.get("attributes") or {}).get("track_id", ann.get("id", n)))
        tracks.append(VideoTrack(name, int(track_id), categories.get(ann["category_id"], str(ann["category_id"])),
                                 frames, float(ann.get("score", 1.0))))
    return VideoSet(clips, tracks)


def _read_frame_coco(data: dict, categories: dict, path: Path) -> VideoSet:
    videos = {v["id"]: v.get("file_name") for v in data.get("videos", []) if isinstance(v, dict)}
    by_video: dict = {}
    for im in data["images"]:
        by_video.setdefault(im["video_id"], []).append(im)
    clips, where = {}, {}
    for vid, images in by_video.items():
        images.sort(key=lambda im: (im.get("frame_index", 0), im["file_name"]))
        name = videos.get(vid) or str(PurePosixPath(images[0]["file_name"]).parent)
        clips[name] = ([im["file_name"] for im in images], (int(images[0]["height"]), int(images[0]["width"])))
        for k, im in enumerate(images):
            where[im["id"]] = (name, k)
    tracks: dict = {}
    for ann in data.get("annotations", []):
        track_id = ann.get("track_id", ann.get("instance_id", (ann.get("attributes") or {}).get("track_id")))
        if track_id is None:
            raise AutolabelError(f"{path}: annotation {ann.get('id')} has no track id (track_id, instance_id "
                                 "or attributes.track_id): video J&F needs tracks")
        name, k = where[ann["image_id"]]
        h, w = clips[name][1]
        category = categories.get(ann["category_id"], str(ann["category_id"]))
        track = tracks.setdefault((name, track_id), VideoTrack(name, int(track_id), category))
        track.frames[k] = _rle(ann["segmentation"], h, w)
    return VideoSet(clips, list(tracks.values()))


def _rle(segmentation, h: int, w: int) -> dict:
    if isinstance(segmentation, dict):
        return segmentation
    return polygons_to_rle(segmentation, h, w)


def read_run_tracks(run_dirs: list[Path]) -> VideoSet:
    """Tracks of the video lines of run directories (last line per key wins)."""
    from autolabel.store import read_predictions

    clips, tracks = {}, []
    for pred in read_predictions([Path(r) for r in run_dirs]):
        if pred.status != "ok" or not pred.images or getattr(pred.images[0], "video", None) is None:
            continue
        name = pred.images[0].video
        clips[name] = ([im.file for im in pred.images], (pred.images[0].height, pred.images[0].width))
        found: dict[int, VideoTrack] = {}
        for turn in pred.turns:
            for s in turn.segments:
                if s.track_id is None:
                    continue
                track = found.setdefault(s.track_id, VideoTrack(name, s.track_id, s.category or s.label))
                track.frames[s.image] = s.rle
        tracks += found.values()
    return VideoSet(clips, tracks)


def evaluate_video(pred: Path, gt: Path, *, by_category: bool = True) -> VideoEvalResult:
    """J, F and J&F of a run directory (or a YouTube-VIS predictions file) against video ground truth.

    A predicted clip is paired with a ground-truth clip by name (a video file `walk.mp4` also pairs
    with a ground-truth folder `walk`); its frames by file name, else by position in the clip."""
    truth = read_video_json(gt)
    mine = read_video_json(pred) if Path(pred).is_file() else read_run_tracks([pred])
    rename = {}
    warnings = []
    for name in mine.clips:
        match = name if name in truth.clips else next(
            (g for g in truth.clips if PurePosixPath(g).stem == PurePosixPath(name).stem
             or PurePosixPath(g).name == PurePosixPath(name).stem), None)
        if match is None:
            warnings.append(f"predicted clip {name!r} is not in the ground truth")
            continue
        rename[name] = match
    preds = []
    for t in mine.tracks:
        if t.video not in rename:
            continue
        g_files, _ = truth.clips[rename[t.video]]
        p_files, _ = mine.clips[t.video]
        position = {f: k for k, f in enumerate(g_files)}
        frames = {}
        for k, rle in t.frames.items():
            file = p_files[k] if k < len(p_files) else None
            key = position.get(file, k if len(p_files) == len(g_files) else None)
            if key is not None:
                frames[key] = rle
        preds.append(VideoTrack(rename[t.video], t.track_id, t.category, frames, t.score))
    missing = sorted(set(truth.clips) - set(rename.values()))
    if missing:
        warnings.append(f"{len(missing)} ground-truth clip(s) have no prediction: {', '.join(missing[:5])}")
    clips = {name: (list(range(len(files))), shape) for name, (files, shape) in truth.clips.items()}
    result = evaluate_tracks(preds, truth.tracks, clips, by_category=by_category)
    result.warnings = warnings
    return result
