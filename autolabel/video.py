"""Video as a group of frames: which frames a clip is labelled on, and reading them from disk.

A clip is a video file (`.mp4 .mov .mkv .webm .avi`) or, with `--frames`, a folder of ordered
frame images. The source yields it as a group of one file carrying a `VideoSpec` (how to sample
it); decoding (`open_clip`) reads the clip once to find its sampled frames (every frame, or `--fps`
of them per second, at most `--max-frames`) with their timestamps, picks `--keyframes` of them
spread over the clip for the VLM, and decodes only those. The result is a `VideoClip`: the frame
indices and timestamps, no pixels; the tracker streams the frames again from disk
(`read_frames`), a few at a time, so memory does not grow with the clip's length.

Frame names: a frame of a video file is `<video>/<frame index, 6 digits>` (e.g.
`walk.mp4/000012`), a frame of a frames folder is its own file. Timestamps are seconds from the
start (the container's, else index / fps); a frames folder has no clock and is read at
FRAMES_FOLDER_FPS.

cv2 is imported inside functions only, so the CLI starts fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autolabel.errors import InputError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"})
FRAMES_FOLDER_FPS = 30.0  # the clock of a folder of frame images
DEFAULT_KEYFRAMES = 4
SEEK_CHUNK = 16  # frames read at a time when a clip is walked backwards


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoSpec:
    """How a clip is sampled: `--fps` (None: every frame), `--max-frames`, `--keyframes`."""

    fps: float | None = None
    max_frames: int | None = None
    keyframes: int = DEFAULT_KEYFRAMES
    frame_files: tuple[str, ...] = ()  # a frames folder: its frame images in order (relative to the root)

    def to_json(self) -> dict:
        return {"fps": self.fps, "max_frames": self.max_frames, "keyframes": self.keyframes,
                "frame_files": list(self.frame_files)}

    @classmethod
    def from_json(cls, d: dict) -> VideoSpec:
        return cls(d.get("fps"), d.get("max_frames"), int(d.get("keyframes", DEFAULT_KEYFRAMES)),
                   tuple(d.get("frame_files", ())))


@dataclass(frozen=True)
class VideoClip:
    """A decoded clip's frame list: what is labelled, never the pixels.

    `frames[i]` is the clip's frame index of sampled frame i, `timestamps[i]` its time (s);
    `keyframes` are positions into `frames` the VLM sees, in order.
    """

    file: str  # the video (or frames folder) relative to the input root
    path: Path
    spec: VideoSpec
    frames: tuple[int, ...]
    timestamps: tuple[float, ...]
    width: int
    height: int
    keyframes: tuple[int, ...]
    native_fps: float = 0.0
    frame_paths: tuple[Path, ...] = field(default=(), repr=False)  # a frames folder: one path per sampled frame

    @property
    def is_folder(self) -> bool:
        return bool(self.spec.frame_files)

    def frame_file(self, position: int) -> str:
        """The name of sampled frame `position` (a frames folder: the image file itself)."""
        if self.is_folder:
            return self.spec.frame_files[self.frames[position]]
        return f"{self.file}/{self.frames[position]:06d}"

    def to_json(self) -> dict:
        return {"file": self.file, "path": str(self.path), "spec": self.spec.to_json(), "frames": list(self.frames),
                "timestamps": list(self.timestamps), "width": self.width, "height": self.height,
                "keyframes": list(self.keyframes), "native_fps": self.native_fps,
                "frame_paths": [str(p) for p in self.frame_paths]}

    @classmethod
    def from_json(cls, d: dict) -> VideoClip:
        return cls(d["file"], Path(d["path"]), VideoSpec.from_json(d["spec"]), tuple(d["frames"]),
                   tuple(d["timestamps"]), d["width"], d["height"], tuple(d["keyframes"]), d.get("native_fps", 0.0),
                   tuple(Path(p) for p in d.get("frame_paths", ())))


def video_to_json(video) -> dict | None:
    """A group's `video` (a VideoSpec before decoding, a VideoClip after) for ImageGroup.to_json."""
    if video is None:
        return None
    return {"clip" if isinstance(video, VideoClip) else "spec": video.to_json()}


def video_from_json(d: dict | None):
    if not d:
        return None
    return VideoClip.from_json(d["clip"]) if "clip" in d else VideoSpec.from_json(d["spec"])


# -- sampling ----------------------------------------------------------------------------------
class _Sampler:
    """Which frames to keep as they stream past: every frame, or the first at or after each 1/fps."""

    def __init__(self, fps: float | None, max_frames: int | None):
        self.fps, self.max_frames = fps, max_frames
        self.kept = 0
        self._next_t = 0.0

    @property
    def full(self) -> bool:
        return self.max_frames is not None and self.kept >= self.max_frames

    def keep(self, t: float) -> bool:
        if self.full:
            return False
        if self.fps is not None:
            if t + 1e-6 < self._next_t:
                return False
            while self._next_t <= t + 1e-6:
                self._next_t += 1.0 / self.fps
        self.kept += 1
        return True


def spread_keyframes(n: int, k: int) -> tuple[int, ...]:
    """k positions spread over n frames: the middles of k equal stretches (all frames if k >= n)."""
    if n <= 0:
        return ()
    if k >= n:
        return tuple(range(n))
    return tuple(sorted({min(n - 1, int((j + 0.5) * n / k)) for j in range(k)}))


# -- opening a clip ----------------------------------------------------------------------------
def open_clip(file: str, path: Path, spec: VideoSpec, *, max_pixels: int,
              root: Path | None = None) -> tuple[VideoClip, list[np.ndarray]]:
    """The clip's sampled frames and its keyframes decoded (RGB uint8), or one InputError naming it."""
    if spec.frame_files:
        return _open_frames_folder(file, path, spec, max_pixels=max_pixels, root=root)
    cv2 = _cv2()
    cap = _capture(cv2, file, path)
    try:
        native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > max_pixels:
            raise InputError(file, f"frames are {width}x{height} = {width * height} pixels, over --max-pixels {max_pixels}")
        sampler = _Sampler(spec.fps, spec.max_frames)
        frames, stamps = [], []
        index = 0
        while not sampler.full and cap.grab():
            t = _timestamp(cv2, cap, index, native)
            if sampler.keep(t):
                frames.append(index)
                stamps.append(round(t, 6))
            index += 1
    finally:
        cap.release()
    if not frames:
        raise InputError(file, "no frame could be decoded (an empty, corrupt or unsupported video)")
    keys = spread_keyframes(len(frames), spec.keyframes)
    clip = VideoClip(file, path, spec, tuple(frames), tuple(stamps), width, height, keys, native)
    images = [image for _, image in read_frames(clip, [keys[i] for i in range(len(keys))])]
    if len(images) != len(keys):
        raise InputError(file, f"frames {[clip.frames[k] for k in keys[len(images):]]} could not be decoded "
                               "(a corrupt video)")
    return clip, images


def _open_frames_folder(file: str, path: Path, spec: VideoSpec, *, max_pixels: int,
                        root: Path | None) -> tuple[VideoClip, list[np.ndarray]]:
    from autolabel.images import decode_image

    base = root if root is not None else path.parent
    sampler = _Sampler(spec.fps, spec.max_frames)
    frames, stamps = [], []
    for index in range(len(spec.frame_files)):
        t = index / FRAMES_FOLDER_FPS
        if sampler.keep(t):
            frames.append(index)
            stamps.append(round(t, 6))
        if sampler.full:
            break
    paths = tuple(base / spec.frame_files[i] for i in frames)
    keys = spread_keyframes(len(frames), spec.keyframes)
    images = [decode_image(paths[k], spec.frame_files[frames[k]], max_pixels=max_pixels) for k in keys]
    h, w = images[0].shape[:2]
    for k, image in zip(keys, images):
        if image.shape[:2] != (h, w):
            raise InputError(spec.frame_files[frames[k]], f"frame is {image.shape[1]}x{image.shape[0]}, "
                                                          f"the clip's first keyframe {w}x{h}")
    clip = VideoClip(file, path, spec, tuple(frames), tuple(stamps), w, h, keys, FRAMES_FOLDER_FPS, paths)
    return clip, images


# -- streaming frames --------------------------------------------------------------------------
def read_frames(clip: VideoClip, positions: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(position, RGB frame) for sampled positions in ascending order, read sequentially from disk."""
    wanted = sorted(set(positions))
    if not wanted:
        return
    if clip.is_folder:
        from autolabel.images import decode_image

        for p in wanted:
            image = decode_image(clip.frame_paths[p], clip.frame_file(p))
            if image.shape[:2] != (clip.height, clip.width):
                raise InputError(clip.frame_file(p), f"frame is {image.shape[1]}x{image.shape[0]}, "
                                                     f"the clip {clip.width}x{clip.height}")
            yield p, image
        return
    cv2 = _cv2()
    cap = _capture(cv2, clip.file, clip.path)
    try:
        index = clip.frames[wanted[0]]
        if index > 0 and not _seek(cv2, cap, index):
            index = 0
        by_index = {clip.frames[p]: p for p in wanted}
        last = clip.frames[wanted[-1]]
        while index <= last:
            if not cap.grab():
                return
            if index in by_index:
                ok, bgr = cap.retrieve()
                if not ok:
                    return
                yield by_index[index], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


def iter_clip(clip: VideoClip, start: int, stop: int, *, reverse: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Sampled positions start..stop (inclusive) in order, or backwards from `start` down to `stop`.

    Backwards, the clip is read in chunks of SEEK_CHUNK frames (each chunk forward, then handed
    out in reverse), so at most one chunk of frames is in memory.
    """
    if not reverse:
        expected = list(range(start, stop + 1))
        yield from _checked(clip, read_frames(clip, expected), expected)
        return
    hi = start
    chunk: list = []
    while hi >= stop:
        lo = max(stop, hi - SEEK_CHUNK + 1)
        expected = list(range(lo, hi + 1))
        chunk.clear()  # the last chunk goes before the next is read: one chunk in memory, not two
        chunk = list(_checked(clip, read_frames(clip, expected), expected))
        yield from reversed(chunk)
        hi = lo - 1


def _checked(clip: VideoClip, frames: Iterator[tuple[int, np.ndarray]], expected: list[int]):
    n = 0
    for p, image in frames:
        n += 1
        yield p, image
    if n != len(expected):
        raise InputError(clip.file, f"frame {clip.frames[expected[n]]} could not be decoded (a corrupt video)")


def _cv2():
    import cv2

    return cv2


def _capture(cv2, file: str, path: Path):
    if not Path(path).is_file():
        raise InputError(file, "video file not found")
    if Path(path).stat().st_size == 0:
        raise InputError(file, "empty file (0 bytes)")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputError(file, "cannot be opened as a video (corrupt, or a codec OpenCV's FFmpeg lacks)")
    return cap


def _timestamp(cv2, cap, index: int, native_fps: float) -> float:
    ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    if index > 0 and (not ms or ms <= 0) and native_fps > 0:
        return index / native_fps
    if ms and ms > 0:
        return ms / 1000.0
    return index / native_fps if native_fps > 0 else float(index)


def _seek(cv2, cap, index: int) -> bool:
    """Move to frame `index` (frame-accurate in OpenCV's FFmpeg backend); False if the container refuses."""
    if not cap.set(cv2.CAP_PROP_POS_FRAMES, index):
        return False
    if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == index:
        return True
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return False


def keyframe_names(clip: VideoClip | VideoSpec | None) -> list[str] | None:
    """What the VLM calls a decoded clip's keyframes: 'Frame k (t=...s)', k from 1 in clip order;
    None for an image group or a clip not decoded yet (its images are called 'Image N')."""
    if not isinstance(clip, VideoClip):
        return None
    return [f"Frame {k + 1} (t={clip.timestamps[p]:.2f}s)" for k, p in enumerate(clip.keyframes)]


def frame_infos(clip: VideoClip) -> list:
    """The prediction line's images for a clip: every sampled frame, with its index and time."""
    from autolabel.prediction import ImageInfo

    return [ImageInfo(clip.frame_file(p), clip.width, clip.height, video=clip.file, frame=clip.frames[p],
                      timestamp=clip.timestamps[p]) for p in range(len(clip.frames))]

