"""Overlay export: one PNG per group x template to look at, masks drawn over the group's images.

The group's images stand side by side, scaled to a common height, each captioned "Image k: file"
as the model's questions name them. Every mask is filled in a translucent colour of its own
(`palette.py`), outlined, and tagged with its label and score; below the images a text panel
holds the group, template and model, the question(s) with the model's answers (the
explanation), every mask with its colour, and the targets judged absent with the reason. A
failed line gives the same picture without masks and with the error in red, so a reviewer sees
what the model was asked and why it has no answer.

Images are read from the run's input root (run.json `input_root`, or `image_root`); one that is
missing or unreadable becomes a grey tile saying so, with the masks still drawn on it.
Predictions are streamed and drawn one at a time: memory holds one group's images.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from autolabel.atomic_files import JsonItems, atomic_output, dumps
from autolabel.errors import AutolabelError, InputError
from autolabel.exporters.masks import write_png
from autolabel.exporters.palette import instance_colors
from autolabel.images import decode_image
from autolabel.masks import rle_to_area, rle_to_mask
from autolabel.prediction import ImageInfo, Prediction, Segment
from autolabel.store import image_roots, read_predictions

DEFAULT_HEIGHT = 480  # images are scaled to this common height ...
DEFAULT_MAX_WIDTH = 2400  # ... unless the row would be wider: then all shrink together
MIN_HEIGHT = 32
PAD = 12  # margin around everything, gap between images
CAPTION = 22  # strip above each image: "Image 1: a.jpg"
MIN_WIDTH = 720  # the text panel is at least this wide, however narrow the images
FILL_ALPHA = 0.45
OUTLINE = 2
MISSING_GREY = (200, 200, 200)
MAX_MASK_LINES = 40  # masks listed in the text panel (all are drawn)
MAX_ANSWER_LINES = 14  # wrapped lines per question or answer before it is cut with an ellipsis
INDEX = "overlays.json"

_TEXT = (20, 20, 20)
_MUTED = (90, 90, 90)
_ERROR = (200, 0, 0)
_WARN = (190, 100, 0)


@dataclass
class OverlayStats:
    overlays: int = 0
    failed_groups: int = 0  # drawn without masks, with their error
    masks: int = 0
    skipped_low_score: int = 0
    skipped_empty: int = 0
    images_missing: int = 0  # drawn as grey tiles (not found, unreadable, or another size)


@dataclass
class _Tile:
    """One image of the group as drawn: its pixels at their size (None: a grey tile) and why not."""

    file: str
    width: int
    height: int
    pixels: np.ndarray | None
    note: str = ""
    masks: list[tuple[Segment, tuple[int, int, int]]] = field(default_factory=list)


@dataclass
class _Line:
    text: str
    font: ImageFont.ImageFont
    fill: tuple[int, int, int] = _TEXT
    swatch: tuple[int, int, int] | None = None


def export_overlays(run_dirs: list[Path], out_dir: Path, *, image_root: Path | None = None,
                    min_score: float = 0.0, height: int = DEFAULT_HEIGHT,
                    max_width: int = DEFAULT_MAX_WIDTH) -> OverlayStats:
    """Write `out_dir/<group>__<template>.png` for every prediction line and `out_dir/overlays.json`."""
    run_dirs = [Path(r) for r in run_dirs]
    out_dir = Path(out_dir)
    if height < MIN_HEIGHT or max_width < 2 * MIN_HEIGHT:
        raise AutolabelError(f"--height must be >= {MIN_HEIGHT} and --max-width >= {2 * MIN_HEIGHT}")
    predictions = read_predictions(run_dirs)
    first = next(predictions, None)  # a bad run directory fails before the image roots are looked up
    predictions = itertools.chain([first] if first else [], predictions)
    roots = image_roots(run_dirs, image_root)
    stats = OverlayStats()
    names: set[str] = set()
    with atomic_output(out_dir / INDEX) as f:
        f.write('{"overlays":[')
        index = JsonItems(f)
        for pred in predictions:
            name = _file_name(pred, names)
            picture, drawn = render_overlay(pred, roots, stats, min_score=min_score, height=height,
                                            max_width=max_width)
            _write_png(out_dir / name, picture)
            stats.overlays += 1
            stats.failed_groups += pred.status != "ok"
            index.add(dumps({"png": name, "key": pred.key, "group_id": pred.group_id, "template": pred.template,
                             "model": pred.model, "status": pred.status, "masks": drawn}))
        f.write("]}\n")
    return stats


def render_overlay(pred: Prediction, roots: list[Path], stats: OverlayStats, *, min_score: float = 0.0,
                   height: int = DEFAULT_HEIGHT, max_width: int = DEFAULT_MAX_WIDTH) -> tuple[np.ndarray, int]:
    """One prediction line as an RGB picture, and how many masks it shows."""
    tiles = [_load_tile(info, roots, stats) for info in pred.images]
    colors = instance_colors(sum(len(t.segments) for t in pred.turns))
    listed: list[tuple[Segment, tuple[int, int, int]]] = []
    below = 0
    for segment in pred.segments():
        if segment.score < min_score:
            stats.skipped_low_score += 1
            below += 1
            continue
        if rle_to_area(segment.rle) == 0:  # nothing to draw; left out as every export does
            stats.skipped_empty += 1
            continue
        if not 0 <= segment.image < len(tiles):
            raise AutolabelError(f"prediction {pred.key}: segment image index {segment.image} out of range "
                                 f"({len(tiles)} images)")
        color = tuple(int(c) for c in colors[len(listed)])
        listed.append((segment, color))
        tiles[segment.image].masks.append((segment, color))
    sizes, row_height = _layout(tiles, height, max_width)
    width = max(MIN_WIDTH, 2 * PAD + sum(w for w, _ in sizes) + PAD * max(0, len(sizes) - 1))
    lines = _panel_lines(pred, tiles, listed, below, min_score, width - 2 * PAD)
    line_height = _font(14).size + 6
    top = PAD + (CAPTION + row_height + PAD if tiles else 0)
    canvas = np.full((top + len(lines) * line_height + PAD, width, 3), 255, np.uint8)
    labels = []  # (x, y, tile box, text, colour): drawn once the pixels are done
    x = PAD
    for tile, (tile_w, tile_h) in zip(tiles, sizes):
        y = PAD + CAPTION
        drawn_masks = _draw_tile(canvas, tile, x, y, tile_w, tile_h, stats)
        labels += [(x + bx, y + by, (x, y, x + tile_w, y + tile_h), text, color)
                   for bx, by, text, color in drawn_masks]
        x += tile_w + PAD
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    x = PAD
    for k, (tile, (tile_w, _)) in enumerate(zip(tiles, sizes)):
        draw.text((x, PAD + 2), _fit(f"Image {k + 1}: {tile.file}", _font(13), tile_w), font=_font(13), fill=_MUTED)
        x += tile_w + PAD
    _draw_labels(draw, labels)
    y = top
    for line in lines:
        x = PAD
        if line.swatch is not None:
            size = line.font.size
            draw.rectangle([x, y + 2, x + size, y + 2 + size], fill=line.swatch, outline=(0, 0, 0))
            x += size + 8
        draw.text((x, y), line.text, font=line.font, fill=line.fill)
        y += line_height
    return np.asarray(picture), len(listed)


# -- images -------------------------------------------------------------------------------------
def _load_tile(info: ImageInfo, roots: list[Path], stats: OverlayStats) -> _Tile:
    pixels, note = None, ""
    candidates = [root / info.file for root in roots]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        note = f"not found under {', '.join(str(r) for r in roots)}"
    else:
        try:
            pixels = decode_image(found, info.file)
        except InputError as e:
            note = e.reason
    if pixels is not None and info.width is not None and info.height is not None \
            and pixels.shape[:2] != (info.height, info.width):
        note = f"is {pixels.shape[1]}x{pixels.shape[0]} on disk but was labelled at {info.width}x{info.height}"
        pixels = None
    if pixels is None:
        stats.images_missing += 1
    width = info.width or (pixels.shape[1] if pixels is not None else None)
    height = info.height or (pixels.shape[0] if pixels is not None else None)
    return _Tile(info.file, width or 1, height or 1, pixels, note)


def _layout(tiles: list[_Tile], height: int, max_width: int) -> tuple[list[tuple[int, int]], int]:
    """Each tile's drawn (width, height): a common height, shrunk together to fit max_width."""
    if not tiles:
        return [], 0
    room = max_width - 2 * PAD - PAD * (len(tiles) - 1)
    natural = sum(t.width / t.height for t in tiles) * height
    row_height = max(MIN_HEIGHT, int(height * min(1.0, room / natural)))
    return [(max(1, round(t.width * row_height / t.height)), row_height) for t in tiles], row_height


def _draw_tile(canvas: np.ndarray, tile: _Tile, x: int, y: int, w: int, h: int,
               stats: OverlayStats) -> list[tuple[int, int, str, tuple[int, int, int]]]:
    """Pixels (or grey), then every mask filled and outlined; returns where each label goes."""
    import cv2

    if tile.pixels is not None:
        shrink = w < tile.pixels.shape[1]
        pixels = cv2.resize(tile.pixels, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    else:
        pixels = np.full((h, w, 3), MISSING_GREY, np.uint8)
    pixels = np.ascontiguousarray(pixels)
    resized = []
    for segment, color in tile.masks:
        mask = rle_to_mask(segment.rle).astype(np.uint8)
        if w < mask.shape[1]:  # shrinking: keep pixels at least half covered, thin parts survive better
            small = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
        else:
            small = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) > 0
        if not small.any():  # smaller than a drawn pixel: show where it is
            ys, xs = np.nonzero(mask)
            small[min(h - 1, int(ys.mean() * h / mask.shape[0])), min(w - 1, int(xs.mean() * w / mask.shape[1]))] = True
        stats.masks += 1
        pixels[small] = (pixels[small] * (1 - FILL_ALPHA) + np.array(color) * FILL_ALPHA).astype(np.uint8)
        resized.append((segment, color, small))
    labels = []
    for segment, color, small in resized:
        contours, _ = cv2.findContours(small.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(pixels, contours, -1, color, OUTLINE)
        ys, xs = np.nonzero(small)
        labels.append((int(xs.min()), int(ys.min()), f"{segment.label} {segment.score:.2f}", color))
    canvas[y:y + h, x:x + w] = pixels
    return labels


def _draw_labels(draw: ImageDraw.ImageDraw, labels: list) -> None:
    """Each mask's "label score" in a box of its colour at the mask's top-left, above the mask when
    there is room, kept inside its image; boxes that would cover each other are pushed down."""
    font = _font(12)
    box_h = font.size + 6
    placed: list[tuple[int, int, int, int]] = []
    for x, y, (tile_left, tile_top, tile_right, tile_bottom), text, color in labels:
        text = _fit(text, font, tile_right - tile_left - 6)
        box_w = int(font.getlength(text)) + 6
        left = max(tile_left, min(x, tile_right - box_w))
        top = y - box_h if y - box_h >= tile_top else y
        while any(left < r and left + box_w > lx and top < b and top + box_h > ty for lx, ty, r, b in placed) \
                and top + 2 * box_h <= tile_bottom:
            top += box_h
        top = max(tile_top, min(top, tile_bottom - box_h))
        placed.append((left, top, left + box_w, top + box_h))
        draw.rectangle([left, top, left + box_w, top + box_h], fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((left + 3, top + 2), text, font=font, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))


# -- text -------------------------------------------------------------------------------------
def _panel_lines(pred: Prediction, tiles: list[_Tile], listed: list, below: int, min_score: float,
                 width: int) -> list[_Line]:
    body, bold, small = _font(14), _font(14, bold=True), _font(13)
    lines: list[_Line] = []

    def add(text: str, font=body, fill=_TEXT, swatch=None, limit: int | None = None) -> None:
        indent = font.size + 8 if swatch is not None else 0
        wrapped = _wrap(text, font, width - indent)
        if limit is not None and len(wrapped) > limit:
            wrapped = wrapped[:limit - 1] + [_fit(wrapped[limit - 1] + " …", font, width - indent)]
        for k, part in enumerate(wrapped):
            lines.append(_Line(part, font, fill, swatch if k == 0 else None))

    add(f"{pred.group_id}  ·  {pred.template}  ·  {pred.model}", _font(16, bold=True))
    if pred.status != "ok":
        error = pred.error or {}
        add(f"FAILED ({error.get('stage', 'error')}): {error.get('message', 'no message')}", bold, _ERROR)
    numbered = len(pred.turns) > 1
    for k, turn in enumerate(pred.turns, 1):
        add(f"Q{k if numbered else ''}: {turn.question}", bold, limit=MAX_ANSWER_LINES)
        if turn.answer:
            add(f"A{k if numbered else ''}: {turn.answer}", body, limit=MAX_ANSWER_LINES)
    if listed:
        add(f"Masks ({len(listed)}):", bold)
        for segment, color in listed[:MAX_MASK_LINES]:
            name = segment.label if segment.category in ("", segment.label) else f"{segment.label} ({segment.category})"
            add(f"{name}  {segment.score:.2f}  on Image {segment.image + 1}", small, swatch=color)
        if len(listed) > MAX_MASK_LINES:
            add(f"… and {len(listed) - MAX_MASK_LINES} more", small, _MUTED)
    elif pred.status == "ok":
        add("Masks: none", bold)
    if below:
        add(f"{below} mask{'s' if below > 1 else ''} below --min-score {min_score:g} not drawn", small, _MUTED)
    rejected = [r for t in pred.turns for r in t.rejected]
    if rejected:
        add("Rejected (judged absent):", bold)
        for r in rejected:
            where = f" (Image {r.image + 1})" if r.image is not None else ""
            add(f"{r.label}{where}: {r.reason or 'no reason given'}", small)
    for k, tile in enumerate(tiles, 1):
        if tile.note:
            add(f"Image {k} ({tile.file}): {tile.note}", small, _WARN)
    return lines


def _wrap(text: str, font, width: int) -> list[str]:
    """Word-wrapped lines no wider than `width` pixels; a word longer than a line is split."""
    out: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                out.append(line)
            while font.getlength(word) > width and len(word) > 1:
                cut = max(1, _fitting_chars(word, font, width))
                out.append(word[:cut])
                word = word[cut:]
            line = word
        out.append(line)
    return out


def _fitting_chars(text: str, font, width: int) -> int:
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid]) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fit(text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis where it would be wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    return text[:max(0, _fitting_chars(text, font, width - font.getlength("…")))] + "…"


@functools.lru_cache(maxsize=None)
def _font(size: int, bold: bool = False):
    """DejaVu Sans (matplotlib's copy: wide Unicode coverage) at `size` px, else PIL's own font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    spec = importlib.util.find_spec("matplotlib")  # finds the package without importing it
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "mpl-data" / "fonts" / "ttf" / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


# -- files ------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-.") or "x"


def _file_name(pred: Prediction, taken: set[str]) -> str:
    """`<group>__<template>.png`; the model's name is added when two models labelled the same pair."""
    base = f"{_slug(pred.group_id)}__{_slug(pred.template)}"
    candidates = [base, f"{base}__{_slug(pred.model)}"]
    candidates += [f"{candidates[-1]}-{k}" for k in range(2, len(taken) + 3)]
    name = next(c for c in candidates if c.lower() not in taken)
    taken.add(name.lower())
    return name + ".png"


def _write_png(path: Path, rgb: np.ndarray) -> None:
    write_png(path, np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR
