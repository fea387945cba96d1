"""The multi-image chat a VLM reads: labelled images, answer instructions, mask memory, overlays.

All images of a group come first, in one user message, each after a text item "Image N"; the
template's instructions and question follow them. Everything a group's templates share (its
images) is thus a common prefix, which a serving engine's prefix cache reuses across templates,
and the same chat serves in-process generation and the server. Later turns
replay the earlier questions and JSON answers and add SegLLM-style mask memory: the previous
round's segments as labelled boxes in text and, when the turn asks for it, their outlines drawn
on the images. Drawn images replace the originals for that step (image tokens do not grow with
rounds). Visual prompts (UniPixel-style exemplars) appear as coordinates and as drawn marks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autolabel.backends.base import TurnAnswer
from autolabel.backends.vlm_coords import CoordinateFrame, ImageFrame
from autolabel.errors import InputError
from autolabel.groups import ImageGroup, VisualPrompt
from autolabel.masks import rle_to_mask
from autolabel.templates import RenderedPrompt
from autolabel.video import keyframe_names

EXEMPLAR_COLOR = (255, 0, 0)  # RGB
EXEMPLAR_COLOR_NAME = "red"
ROUND_COLORS = [((0, 200, 255), "cyan"), ((255, 220, 0), "yellow"), ((255, 0, 255), "magenta"),
                ((0, 255, 0), "green")]


@dataclass
class PastTurn:
    """An answered turn: what the model wrote (raw JSON, replayed verbatim) and its segments."""

    answer: TurnAnswer
    raw: str


def coordinate_instructions(frame: CoordinateFrame) -> str:
    if frame is CoordinateFrame.RELATIVE_1000:
        return ("Coordinates are integers relative to each image: x and y run from 0 (left/top) "
                "to 1000 (right/bottom).")
    return "Coordinates are absolute integer pixels of each image at the size given after its label."


def system_text(prompt: RenderedPrompt, frame: CoordinateFrame, noun: str = "Image") -> str:
    """The template's system prompt followed by how to answer (placed after the images). `noun` is
    what the images are called: "Frame" for a video clip's keyframes."""
    rules = prompt.rules
    images = ", ".join(f"{noun} {i}" for i in prompt.allowed_images)
    lines = [
        "Answer with one JSON object. \"explanation\": your reasoning in a few sentences. "
        f"\"targets\": every object you name, each with \"image\" (the number of the {noun.lower()} it is in), "
        "\"label\", \"phrase\" (a short referring expression), \"box\" [x0, y0, x1, y1] and optionally "
        "\"points\" [[x, y], ...] on the object.",
        f"Targets may be in: {images}." + ("" if rules.multiple_targets else " Name exactly one target."),
        coordinate_instructions(frame),
    ]
    if prompt.ontology:
        lines.append("Use these labels: " + ", ".join(prompt.ontology) + ".")
    if rules.allow_rejection:
        lines.append("\"absent\": targets asked for that are in none of the images, each with "
                     "\"label\" and \"reason\".")
    return "\n".join([prompt.system, *lines] if prompt.system else lines)


def image_label(index: int, frame: ImageFrame, name: str | None = None) -> str:
    """'Image N' (or `name`, e.g. a keyframe's 'Frame 2 (t=1.50s)') and, in the pixel frame, the
    size the model's coordinates refer to."""
    name = name or f"Image {index + 1}"
    if frame.frame is CoordinateFrame.PIXELS:
        h, w = frame.model_input
        return f"{name} ({w}x{h} pixels):"
    return f"{name}:"


def visual_prompt_text(group: ImageGroup, frames: list[ImageFrame]) -> str:
    """Exemplars of the group in the model's coordinates, one line per prompted image."""
    lines = []
    for i, (ref, frame) in enumerate(zip(group.images, frames)):
        vp = ref.prompt
        if vp is None:
            continue
        what = f" ({vp.label})" if vp.label else ""
        parts = [f"box {frame.box_from_original(b)}" for b in vp.boxes]
        if vp.mask is not None:
            box = mask_box(exemplar_mask(group, i, frame.original))
            if box is not None:
                parts.append(f"region outlined inside {frame.box_from_original(box)}")
        for (x, y), positive in zip(vp.points, vp.point_labels or [1] * len(vp.points)):
            kind = "point on" if positive else "point off"
            parts.append(f"{kind} it at {frame.from_original(np.array([x, y])).tolist()}")
        lines.append(f"Image {i + 1} has a marked exemplar{what}, drawn in {EXEMPLAR_COLOR_NAME}: "
                     + "; ".join(parts) + ".")
    return "\n".join(lines)


def shown_masks(past: PastTurn, group: ImageGroup) -> list[tuple[int, str, np.ndarray]]:
    """(image shown to the model, label, mask) of each segment an earlier round found. A video
    track has a mask on every sampled frame; the model sees the keyframes, so those are its masks."""
    clip = group.video
    if keyframe_names(clip) is None:
        return [(m.image, m.label, m.mask) for m in past.answer.masks if m.mask is not None]
    shown = {position: k for k, position in enumerate(clip.keyframes)}
    return [(shown[m.image], m.label, rle_to_mask(m.rle)) for m in past.answer.masks
            if m.rle is not None and m.image in shown]


def memory_text(round_index: int, past: PastTurn, group: ImageGroup, frames: list[ImageFrame], drawn: bool) -> str:
    """What round `round_index` (0-based) found, as labelled boxes in the model's coordinates."""
    found = []
    noun = "Frame" if keyframe_names(group.video) else "Image"
    for i, label, mask in shown_masks(past, group):
        box = mask_box(mask)
        where = f" at {frames[i].box_from_original(box)}" if box is not None else " (empty mask)"
        found.append(f"{label} in {noun} {i + 1}{where}")
    text = f"Round {round_index + 1} found: " + ("; ".join(found) if found else "nothing") + "."
    if past.answer.rejected:
        text += f" Round {round_index + 1} judged absent: " + "; ".join(r.label for r in past.answer.rejected) + "."
    if drawn and found:
        text += f" Its segments are outlined in {ROUND_COLORS[round_index % len(ROUND_COLORS)][1]}."
    return text


def build_chat(prompt: RenderedPrompt, group: ImageGroup, frames: list[ImageFrame], frame: CoordinateFrame,
               past: list[PastTurn]) -> list[dict]:
    """The chat for the turn after `past`: labelled images, instructions + first turn, replayed rounds."""
    intro: list[dict] = []
    names = keyframe_names(group.video)
    for i, f in enumerate(frames):
        intro += [{"type": "text", "text": image_label(i, f, names[i] if names else None)}, {"type": "image"}]
    exemplars = visual_prompt_text(group, frames)
    first = "\n".join(t for t in (system_text(prompt, frame, "Frame" if names else "Image"), exemplars,
                                  prompt.turns[0].text) if t)
    messages = [{"role": "user", "content": [*intro, {"type": "text", "text": first}]}]
    for k, done in enumerate(past):
        turn = prompt.turns[k + 1]
        memory = memory_text(k, done, group, frames, drawn=turn.draw_previous)
        messages += [{"role": "assistant", "content": [{"type": "text", "text": done.raw}]},
                     {"role": "user", "content": [{"type": "text", "text": f"{memory}\n{turn.text}"}]}]
    return messages


def draw_images(images: list[np.ndarray], group: ImageGroup, past: list[PastTurn], *,
                draw_previous: bool) -> list[np.ndarray]:
    """The images the model sees at this step: exemplars marked, earlier segments outlined if asked."""
    import cv2

    earlier: dict[int, list[tuple[int, np.ndarray]]] = {}  # image -> (round, mask) to outline
    for r, done in enumerate(past if draw_previous else []):
        for i, _, mask in shown_masks(done, group):
            earlier.setdefault(i, []).append((r, mask))
    out = []
    for i, (image, ref) in enumerate(zip(images, group.images)):
        previous = earlier.get(i, [])
        if ref.prompt is None and not previous:
            out.append(image)
            continue
        canvas = np.ascontiguousarray(image.copy())
        width = max(1, round(max(image.shape[:2]) / 250))
        if ref.prompt is not None:
            _draw_exemplar(cv2, canvas, ref.prompt, group, i, width)
        for r, mask in previous:
            _outline(cv2, canvas, mask, ROUND_COLORS[r % len(ROUND_COLORS)][0], width)
        out.append(canvas)
    return out


def _draw_exemplar(cv2, canvas: np.ndarray, vp: VisualPrompt, group: ImageGroup, i: int, width: int) -> None:
    for x0, y0, x1, y1 in vp.boxes:
        cv2.rectangle(canvas, (round(x0), round(y0)), (round(x1), round(y1)), EXEMPLAR_COLOR, width)
    for (x, y), positive in zip(vp.points, vp.point_labels or [1] * len(vp.points)):
        cv2.circle(canvas, (round(x), round(y)), 2 * width + 1, EXEMPLAR_COLOR, -1 if positive else width)
    if vp.mask is not None:
        _outline(cv2, canvas, exemplar_mask(group, i, canvas.shape[:2]), EXEMPLAR_COLOR, width)


def _outline(cv2, canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], width: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color, width)


def exemplar_mask(group: ImageGroup, i: int, shape: tuple[int, int]) -> np.ndarray:
    """The visual prompt's mask of image `i` (a file under the input root, or a COCO RLE)."""
    ref = group.images[i]
    spec = ref.prompt.mask if ref.prompt else None
    if isinstance(spec, dict):
        mask = rle_to_mask(spec)
    else:
        from PIL import Image

        path = Path(group.root) / str(spec)
        try:
            with Image.open(path) as im:
                mask = np.asarray(im.convert("L")) > 0
        except OSError as e:
            raise InputError(str(spec), f"visual prompt mask of {ref.file} cannot be read: {e}") from None
    if mask.shape != tuple(shape):
        raise InputError(str(spec) if not isinstance(spec, dict) else ref.file,
                         f"visual prompt mask is {mask.shape[1]}x{mask.shape[0]}, the image "
                         f"{ref.file} is {shape[1]}x{shape[0]}")
    return mask


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight [x0, y0, x1, y1] of a boolean mask in pixel-edge coordinates, None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
