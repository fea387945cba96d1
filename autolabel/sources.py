"""Sources: turn an INPUT into a lazy, deterministic stream of image groups.

Kinds, chosen from the input:
- a folder: each immediate subfolder is a group (id = its name, images in natural order);
  images directly in the folder are groups of one (id = the file name);
- a folder with `--group-by REGEX`: every image below it, grouped by the regex's named group
  `key` searched in the relative path (id = the key);
- a JSONL manifest: one group per line, `{"id", "images", "variables", "prompts"}`; a line
  without `id` gets `line-N` (its 1-based line number);
- a CSV manifest: one row per image, columns `group_id,image[,label,box,var.NAME...]`;
- a COCO JSON: groups by the images' `group`/`group_id` field, else `--group-by` on
  `file_name`, else one per image (id = file_name); annotations become visual prompts;
- a single image file: one group of one;
- a FiftyOne dataset or saved view (`from_fiftyone`, `view`): see fiftyone_source.py.

Manifest and COCO paths are relative to the file's folder, which is the root. Every path must
stay inside the root (after symlinks) unless `allow_outside_root`. A group that cannot be built
is yielded as a BadGroup so the engine records it (naming every refused or missing image, not just
the first); unused files are listed in `stats.skipped`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from autolabel.errors import AutolabelError, InputError, describe_files
from autolabel.groups import BadGroup, ImageGroup, ImageRef, VisualPrompt
from autolabel.images import folder_images, is_image_file, natural_key
from autolabel.video import VideoSpec, is_video_file
from autolabel.video_source import frames_groups, video_group

@dataclass
class SourceStats:
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


@dataclass
class Source:
    root: Path
    kind: str
    _groups: object  # a callable returning the group iterator
    stats: SourceStats = field(default_factory=SourceStats)

    def __iter__(self) -> Iterator[ImageGroup | BadGroup]:
        self.stats.skipped.clear()  # each pass recounts
        return self._groups()


def open_source(input: Path | None, *, manifest: Path | None = None, group_by: str | None = None,
                allow_outside_root: bool = False, from_fiftyone: str | None = None,
                view: str | None = None, video: VideoSpec | None = None, frames: bool = False) -> Source:
    video = video or VideoSpec()
    if from_fiftyone is not None:  # a FiftyOne dataset or saved view (fiftyone_source.py)
        from autolabel.fiftyone_source import fiftyone_members

        root, members = fiftyone_members(from_fiftyone, view)
        resolver = _PathResolver(root, allow_outside=False)
        return _source(resolver, "fiftyone", lambda s: _fiftyone_groups(resolver, members))
    input = Path(input)
    if manifest is not None:
        input = Path(manifest)
    if not input.exists():
        raise AutolabelError(f"{input}: input not found")
    pattern = _compile_group_by(group_by) if group_by else None
    resolver = _PathResolver(input.parent.resolve() if input.is_file() else input.resolve(), allow_outside_root)
    if input.is_dir():
        if frames:  # --frames: a folder of ordered frame images is one clip (video_source.py)
            return _source(resolver, "frames", lambda s: frames_groups(resolver, video, s))
        if pattern is not None:
            return _source(resolver, "folder-group-by", lambda s: _flat_groups(resolver, pattern, s))
        return _source(resolver, "folder", lambda s: _folder_groups(resolver, s, video))
    suffix = input.suffix.lower()
    if suffix == ".jsonl":
        return _source(resolver, "manifest-jsonl", lambda s: _jsonl_groups(input, resolver, video))
    if suffix == ".csv":
        return _source(resolver, "manifest-csv", lambda s: _csv_groups(input, resolver))
    if suffix == ".json":
        return _source(resolver, "coco", lambda s: _coco_groups(input, resolver, pattern))
    if is_image_file(input):
        return _source(resolver, "image", lambda s: iter([_group(resolver, input.name, [input.name])]))
    if is_video_file(input):
        return _source(resolver, "video", lambda s: iter([video_group(resolver, input.name, input.name, video)]))
    raise AutolabelError(f"{input}: not a folder, manifest (.jsonl/.csv), COCO (.json), image or video file")


def _source(resolver: _PathResolver, kind: str, make) -> Source:
    src = Source(resolver.root, kind, None)
    src._groups = lambda: make(src.stats)
    return src


def _fiftyone_groups(resolver: _PathResolver, members: dict[str, list[tuple[str, str]]]
                     ) -> Iterator[ImageGroup | BadGroup]:
    """A FiftyOne group (or sample) per image group; each image keeps its sample id, so push
    writes back onto the same samples."""
    for group_id, images in members.items():
        group = _group(resolver, group_id, [Path(p).relative_to(resolver.root).as_posix() for _, p in images])
        if isinstance(group, ImageGroup):
            group = replace(group, images=tuple(replace(ref, sample_id=sample_id)
                                                for ref, (sample_id, _) in zip(group.images, images)))
        yield group


def _compile_group_by(regex: str) -> re.Pattern:
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise AutolabelError(f"--group-by '{regex}': not a valid regex: {e}") from None
    if "key" not in pattern.groupindex:
        raise AutolabelError(f"--group-by '{regex}': needs a named group `key`, e.g. '(?P<key>scene_\\d+)_'")
    return pattern


class _PathResolver:
    """Maps a path given relative to the root to (absolute path, relative posix name), safely."""

    def __init__(self, root: Path, allow_outside: bool):
        self.root = root
        self.allow_outside = allow_outside

    def resolve(self, given: str) -> tuple[Path, str]:
        """`..`, absolute paths and symlinks are judged by where they really lead."""
        raw = Path(given)
        real = (raw if raw.is_absolute() else self.root / raw).resolve()
        if real == self.root or self.root in real.parents:
            return real, real.relative_to(self.root).as_posix()
        if not self.allow_outside:
            raise InputError(given, f"leads outside the input root {self.root} "
                                    "(pass --allow-outside-root to allow it)")
        return real, given


def _group(resolver: _PathResolver, group_id: str, files: list[str], *, variables: dict | None = None,
           prompts: dict[int, VisualPrompt] | None = None, coco_ids: list[int | None] | None = None,
           where: str | None = None) -> ImageGroup | BadGroup:
    """Resolve every file of a group; refused or missing files make it a BadGroup naming all of them."""
    refs, bad = [], []
    for i, given in enumerate(files):
        try:
            path, rel = resolver.resolve(given)
        except InputError as e:
            bad.append((e.file, e.reason))
            continue
        if not path.exists():
            bad.append((given, _missing(resolver.root, given)))
            continue
        refs.append(ImageRef(rel, path, (prompts or {}).get(i), (coco_ids or [None] * len(files))[i]))
    if bad:
        reason = bad[0][1] if len(bad) == 1 else describe_files([{"file": f, "reason": r} for f, r in bad])
        return BadGroup(group_id, where or bad[0][0], reason, files=tuple(bad), images=tuple(refs))
    if not refs:
        return BadGroup(group_id, where or group_id, "a group with no images")
    return ImageGroup(group_id, resolver.root, tuple(refs), {str(k): str(v) for k, v in (variables or {}).items()})


def _missing(root: Path, given: str) -> str:
    link = Path(given) if Path(given).is_absolute() else root / given
    return f"broken symlink (to {os.readlink(link)})" if link.is_symlink() else "image file not found"


# -- folders -----------------------------------------------------------------------------------
def _folder_groups(resolver: _PathResolver, stats: SourceStats,
                   video: VideoSpec | None = None) -> Iterator[ImageGroup | BadGroup]:
    root = resolver.root
    entries = sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))
    for entry in entries:
        if entry.is_dir():
            images, skipped = folder_images(entry)
            stats.skipped += [(f"{entry.name}/{name}", why) for name, why in skipped]
            files = [f"{entry.name}/{f.name}" for f in images]
            if files:
                yield _group(resolver, entry.name, files)
            else:
                stats.skipped.append((entry.name, "a folder with no images"))
        elif is_image_file(entry):
            yield _group(resolver, entry.name, [entry.name])
        elif is_video_file(entry):  # a video is a clip (video_source.py)
            yield video_group(resolver, entry.name, entry.name, video or VideoSpec())
        else:
            stats.skipped.append((entry.name, "not an image file (by its extension)"))


def _flat_groups(resolver: _PathResolver, pattern: re.Pattern, stats: SourceStats) -> Iterator[ImageGroup | BadGroup]:
    groups: dict[str, list[str]] = {}
    for path in resolver.root.rglob("*"):
        rel = path.relative_to(resolver.root).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts) or path.is_dir():
            continue
        if not is_image_file(path):
            stats.skipped.append((rel, "not an image file (by its extension)"))
            continue
        m = pattern.search(rel)
        if not m or m.group("key") is None:
            stats.skipped.append((rel, "does not match --group-by"))
            continue
        groups.setdefault(m.group("key"), []).append(rel)
    for key in sorted(groups, key=natural_key):
        yield _group(resolver, key, sorted(groups[key], key=natural_key))


# -- manifests ---------------------------------------------------------------------------------
def _prompt_from(spec: dict, where: str) -> tuple[int, VisualPrompt]:
    if not isinstance(spec, dict):
        raise InputError(where, "each entry of `prompts` must be an object")
    try:
        image = int(spec.get("image", 0))
        boxes = tuple(tuple(float(v) for v in b) for b in spec.get("boxes", []))
        points = tuple(tuple(float(v) for v in p) for p in spec.get("points", []))
        labels = tuple(int(v) for v in spec.get("point_labels", [1] * len(points)))
    except (TypeError, ValueError) as e:
        raise InputError(where, f"bad `prompts` entry: {e}") from None
    if any(len(b) != 4 for b in boxes) or any(len(p) != 2 for p in points) or len(labels) != len(points):
        raise InputError(where, "`prompts`: boxes need 4 numbers, points 2, and one point_label per point")
    return image, VisualPrompt(boxes, points, labels, spec.get("mask"), spec.get("label"))


def _jsonl_groups(path: Path, resolver: _PathResolver, video: VideoSpec | None = None) -> Iterator[ImageGroup | BadGroup]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            default_id = f"line-{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield BadGroup(default_id, where, f"not valid JSON: {e}")
                continue
            if not isinstance(row, dict):
                yield BadGroup(default_id, where, "a manifest line must be a JSON object")
                continue
            group_id = str(row.get("id", default_id))
            if isinstance(row.get("video"), str) and "images" not in row:  # a line naming a video: a clip
                yield video_group(resolver, group_id, row["video"], video or VideoSpec(), where=where,
                                  variables=row.get("variables") if isinstance(row.get("variables"), dict) else None)
                continue
            images = row.get("images")
            if not isinstance(images, list) or not all(isinstance(i, str) for i in images) or not images:
                yield BadGroup(group_id, where, "`images` must be a non-empty list of paths")
                continue
            variables = row.get("variables") or {}
            if not isinstance(variables, dict):
                yield BadGroup(group_id, where, "`variables` must be an object")
                continue
            try:
                prompts = dict(_prompt_from(p, where) for p in row.get("prompts") or [])
            except InputError as e:
                yield BadGroup(group_id, where, e.reason)
                continue
            if any(not 0 <= i < len(images) for i in prompts):
                yield BadGroup(group_id, where, "`prompts[].image` is not an index into `images`")
                continue
            yield _group(resolver, group_id, images, variables=variables, prompts=prompts)


def _csv_groups(path: Path, resolver: _PathResolver) -> Iterator[ImageGroup | BadGroup]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"group_id", "image"} - set(reader.fieldnames or [])
        if missing:
            raise AutolabelError(f"{path}: missing column(s) {', '.join(sorted(missing))} "
                                 f"(needs group_id,image[,label,box,var.NAME])")
        rows: dict[str, list[tuple[int, dict]]] = {}
        for lineno, row in enumerate(reader, 2):
            rows.setdefault(row["group_id"], []).append((lineno, row))
    for group_id, members in rows.items():
        variables = {k[4:]: v for _, r in members for k, v in r.items() if k and k.startswith("var.") and v}
        prompts: dict[int, VisualPrompt] = {}
        bad = None
        for i, (lineno, r) in enumerate(members):
            if r.get("box"):
                try:
                    box = tuple(float(v) for v in r["box"].replace(",", " ").split())
                    if len(box) != 4:
                        raise ValueError("needs 4 numbers")
                except ValueError as e:
                    bad = BadGroup(group_id, f"{path.name}:{lineno}", f"column box {r['box']!r}: {e}")
                    break
                prompts[i] = VisualPrompt(boxes=(box,), label=r.get("label") or None)
        yield bad or _group(resolver, group_id, [r["image"] for _, r in members], variables=variables,
                            prompts=prompts)


# -- COCO --------------------------------------------------------------------------------------
def _coco_groups(path: Path, resolver: _PathResolver, pattern: re.Pattern | None) -> Iterator[ImageGroup | BadGroup]:
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AutolabelError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise AutolabelError(f"{path}: a COCO file needs an `images` list")
    categories = {c.get("id"): c.get("name") for c in coco.get("categories", []) if isinstance(c, dict)}
    images: dict[int, dict] = {}
    for k, im in enumerate(coco["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise AutolabelError(f"{path}: images[{k}] needs `id` and `file_name`")
        images[im["id"]] = im
    prompts: dict[int, VisualPrompt] = {}
    for k, ann in enumerate(coco.get("annotations", [])):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise AutolabelError(f"{path}: annotations[{k}]: missing or unknown `image_id`")
        prompts[ann["image_id"]] = _merge_annotation(prompts.get(ann["image_id"]), ann, images[ann["image_id"]],
                                                     categories, f"{path}: annotations[{k}]")
    groups: dict[str, list[dict]] = {}
    for im in images.values():
        key = im.get("group", im.get("group_id"))
        if key is None and pattern is not None:
            m = pattern.search(im["file_name"])
            key = m.group("key") if m else None
        groups.setdefault(str(key if key is not None else im["file_name"]), []).append(im)
    for group_id in sorted(groups, key=natural_key):
        members = sorted(groups[group_id], key=lambda im: natural_key(im["file_name"]))
        yield _group(resolver, group_id, [im["file_name"] for im in members],
                     prompts={i: prompts[im["id"]] for i, im in enumerate(members) if im["id"] in prompts},
                     coco_ids=[im["id"] for im in members])


def _merge_annotation(prompt: VisualPrompt | None, ann: dict, image: dict, categories: dict, where: str) -> VisualPrompt:
    """Boxes of every annotation on the image; the first one's mask and category name label it."""
    boxes = list(prompt.boxes) if prompt else []
    bbox = ann.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise AutolabelError(f"{where}: `bbox` must be [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        boxes.append((x, y, x + w, y + h))
    mask = prompt.mask if prompt else None
    if mask is None and ann.get("segmentation"):
        mask = _segmentation_rle(ann["segmentation"], image, where)
    label = prompt.label if prompt and prompt.label else categories.get(ann.get("category_id"))
    return VisualPrompt(tuple(boxes), mask=mask, label=label)


def _segmentation_rle(segmentation, image: dict, where: str) -> dict:
    from autolabel.masks import polygons_to_rle

    h, w = image.get("height"), image.get("width")
    if isinstance(segmentation, dict):
        return segmentation
    if not (h and w):
        raise AutolabelError(f"{where}: polygon segmentation needs the image's `width` and `height`")
    try:
        return polygons_to_rle(segmentation, h, w)
    except ValueError as e:
        raise AutolabelError(f"{where}: {e}") from None
