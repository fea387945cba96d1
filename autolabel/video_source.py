"""Video inputs of a source: a video file is a clip, a folder of videos one clip per file, and
with `--frames` a folder of ordered frame images one clip (or each subfolder one clip).

A clip is an ImageGroup of one file (the video, or the folder's first frame) carrying a
`VideoSpec`; decoding (video.py) turns it into its keyframes and sampled frames. Ids follow the
image rules: the file's (or folder's) path relative to the input root.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from autolabel.groups import BadGroup, ImageGroup, ImageRef
from autolabel.images import folder_images, is_image_file, natural_key
from autolabel.video import VideoSpec, is_video_file, open_clip


def video_group(resolver, group_id: str, given: str, spec: VideoSpec, *, where: str | None = None,
                variables: dict | None = None) -> ImageGroup | BadGroup:
    """A clip from a video file named relative to the root (refused or missing: a BadGroup naming it)."""
    from autolabel.errors import InputError

    try:
        path, rel = resolver.resolve(given)
    except InputError as e:
        return BadGroup(group_id, where or e.file, e.reason, files=((e.file, e.reason),))
    if not path.is_file():
        return BadGroup(group_id, where or given, "video file not found", files=((given, "video file not found"),))
    return ImageGroup(group_id, resolver.root, (ImageRef(rel, path),),
                      {str(k): str(v) for k, v in (variables or {}).items()}, video=spec)


def frames_clip(resolver, folder: Path, spec: VideoSpec, stats) -> ImageGroup | None:
    """A folder of frame images as one clip, frames listed as every command lists a folder
    (`folder_images`: natural order, dotfiles left out); None when it has no images."""
    root = resolver.root
    images, skipped = folder_images(folder)
    files = [f.relative_to(root).as_posix() for f in images]
    stats.skipped += [((folder / name).relative_to(root).as_posix(), "not a frame image (by its extension)")
                      for name, _ in skipped]
    if not files:
        stats.skipped.append((folder.relative_to(root).as_posix() or ".", "a frames folder with no images"))
        return None
    group_id = folder.relative_to(root).as_posix() if folder != root else folder.name
    return ImageGroup(group_id, root, (ImageRef(files[0], root / files[0]),),
                      video=replace(spec, frame_files=tuple(files)))


def frames_groups(resolver, spec: VideoSpec, stats) -> Iterator[ImageGroup]:
    """`--frames`: the folder's images are one clip; if it has none, each subfolder is one
    (subfolders in natural order, img2 before img10)."""
    root = resolver.root
    if any(is_image_file(p) and p.is_file() for p in root.iterdir()):
        clip = frames_clip(resolver, root, spec, stats)
        if clip is not None:
            yield clip
        return
    for entry in sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name)):
        if entry.is_dir():
            clip = frames_clip(resolver, entry, spec, stats)
            if clip is not None:
                yield clip
        else:
            stats.skipped.append((entry.name, "not a frames folder"))


def is_video_input(path: Path) -> bool:
    return path.is_file() and is_video_file(path)


def decode_clip_group(group: ImageGroup, max_pixels: int):
    """A video group decoded: (the group with its keyframes as images and the VideoClip, keyframe
    arrays), or an InputError naming the clip. The keyframes' names are their frame names."""
    spec: VideoSpec = group.video
    ref = group.images[0]
    clip, images = open_clip(ref.file, ref.path, spec, max_pixels=max_pixels, root=group.root)
    keyframes = tuple(ImageRef(clip.frame_file(k), clip.frame_paths[k] if clip.is_folder else ref.path)
                      for k in clip.keyframes)
    return replace(group, images=keyframes, video=clip), images
