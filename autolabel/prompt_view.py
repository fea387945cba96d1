"""`autolabel prompts render`: show a template rendered for one group: a folder of images, a
group of a manifest or COCO file with its exemplars, or a video file (its keyframes, as `run`
picks them with the default sampling, are the images the model sees).

By default the template's own text (system prompt, turns, ontology, answer rules); with `--chat`
the exact chat the `vlm-sam` backend sends its model: labelled images, the answer rules it adds,
the turns, and the token budget of the answer.
"""

from __future__ import annotations

from pathlib import Path

from autolabel.errors import AutolabelError
from autolabel.images import IMAGE_EXTENSIONS
from autolabel.sources import folder_images
from autolabel.templates import load_template
from autolabel.video import keyframe_names


def _image_names(group_dir: Path) -> list[str]:
    if not group_dir.is_dir():
        raise AutolabelError(f"{group_dir}: not a folder of images")
    names = [p.name for p in folder_images(group_dir)[0]]  # as `run` lists a group folder
    if not names:
        raise AutolabelError(f"{group_dir}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return names


def _group(path: Path, group_id: str | None):
    """A folder of images as one group, or a group of a manifest or COCO file or a video as `run`
    reads it (`group_id`, default the first), and a clip's keyframes decoded (None for images:
    read when needed)."""
    from autolabel.groups import BadGroup, ImageGroup, ImageRef
    from autolabel.sources import open_source

    if not path.is_file():
        names = _image_names(path)
        return ImageGroup(path.name, path, tuple(ImageRef(n, path / n) for n in names)), None
    found = next((g for g in open_source(path) if group_id is None or g.id == group_id), None)
    if found is None:
        raise AutolabelError(f"{path}: no group {group_id!r}" if group_id else f"{path}: no groups")
    if isinstance(found, BadGroup):
        raise AutolabelError(f"{path}: group {found.id!r} cannot be read: {found.error().message}")
    keyframes = None
    if found.video is not None:
        from autolabel.errors import InputError
        from autolabel.images import DEFAULT_MAX_PIXELS
        from autolabel.video_source import decode_clip_group

        try:
            found, keyframes = decode_clip_group(found, DEFAULT_MAX_PIXELS)
        except InputError as e:
            raise AutolabelError(e.message) from None
    return found, keyframes


def _exemplar(image) -> str:
    vp = image.prompt
    if vp is None:
        return ""
    marks = [f"box {[round(v, 1) for v in b]}" for b in vp.boxes] + [f"point {list(p)}" for p in vp.points]
    marks += ["mask"] if vp.mask is not None else []
    return f"  (exemplar{' ' + repr(vp.label) if vp.label else ''}: {', '.join(marks) or 'marked'})"


def render_for_group(template_name: str, group_dir: Path, variables: dict[str, str], group_id: str | None = None) -> str:
    """The system prompt, each turn, the ontology and answer rules, as plain text. `group_dir` may
    also be a manifest or COCO file: its group `group_id` is shown, exemplars marked."""
    from autolabel.labeler import render_group

    group, _ = _group(group_dir, group_id)
    p = render_group(load_template(template_name), group, variables)
    lines = [f"template: {p.name} (hash {p.hash}, category {p.category})"]
    if p.system:
        lines += ["", "[system]", p.system]
    called = keyframe_names(group.video) or [f"Image {i}" for i in range(1, len(group.images) + 1)]
    for name, image in zip(called, group.images):
        lines.append(f"{name}: {image.file}{_exemplar(image)}")
    for i, turn in enumerate(p.turns, 1):
        lines += ["", f"[user, round {i}]" + (" (earlier masks drawn on the images)" if turn.draw_previous else ""),
                  turn.text]
    if p.ontology:
        lines += ["", "ontology: " + ", ".join(f"{k} -> {v}" if k != v else k for k, v in p.ontology.items())]
    rules = p.rules
    lines.append(f"answer: several targets {'yes' if rules.multiple_targets else 'no'}, rejection "
                 f"{'allowed' if rules.allow_rejection else 'not allowed'}, images {list(p.allowed_images)}, "
                 f"at most {rules.max_targets} targets")
    return "\n".join(lines)


def chat_for_group(template_name: str, group_dir: Path, variables: dict[str, str], model: str | None = None,
                   group_id: str | None = None) -> str:
    """The chat the `vlm-sam` backend sends for this group, message by message, as plain text.

    Pixel coordinates need each image's size after the model's processor: with `model` (a local
    directory or a cached hub id) its own processor is run on the images; without, the default
    model's published resize (Qwen2.5-VL) is assumed, and the output says which."""
    from autolabel.backends.answer_schema import AnswerLimits, answer_schema, answer_token_budget
    from autolabel.backends.chat import EXEMPLAR_COLOR_NAME, ROUND_COLORS, build_chat
    from autolabel.images import decode_image
    from autolabel.labeler import render_group

    group, keyframes = _group(group_dir, group_id)
    names = [im.file for im in group.images]
    p = render_group(load_template(template_name), group, variables)
    images = keyframes if keyframes is not None else [decode_image(im.path, im.file) for im in group.images]
    frames, sizes = _frames(names, images, model)
    chat = build_chat(p, group, frames, frames[0].frame, [])
    schema = answer_schema(p, coord_max=max(f.coord_max for f in frames), limits=AnswerLimits())
    lines = [f"template: {p.name} (hash {p.hash}, category {p.category})",
             f"the chat the vlm-sam backend sends for group {group.id}, round 1"
             + (f" of {len(p.turns)}" if len(p.turns) > 1 else ""),
             f"image sizes: {sizes}",
             f"coordinates: {frames[0].frame.value}"]
    shown = iter(zip(names, images, frames, group.images))
    for message in chat:
        lines += ["", f"[{message['role']}]"]
        for item in message["content"]:
            if item["type"] == "image":
                name, image, frame, ref = next(shown)
                (h, w), (mh, mw) = image.shape[:2], frame.model_input
                seen = f", {mw}x{mh} as the model sees it" if (mh, mw) != (h, w) else ""
                marked = f", its exemplar drawn in {EXEMPLAR_COLOR_NAME}" if ref.prompt is not None else ""
                lines.append(f"<image {name}: {w}x{h} pixels{seen}{marked}>")
            else:
                lines.append(item["text"])
    for k, turn in enumerate(p.turns[1:], 1):
        color = ROUND_COLORS[(k - 1) % len(ROUND_COLORS)][1]
        drawn = f" Its segments are outlined in {color}." if turn.draw_previous else ""
        lines += ["", f"[assistant]  (round {k}'s answer, replayed)", f"<round {k}'s JSON answer>",
                  "", f"[user]  (round {k + 1}" + (f"; the images above are sent with round {k}'s masks "
                                                   f"outlined in {color})" if turn.draw_previous else ")"),
                  f"Round {k} found: <each segment of round {k}: label in Image N at [x0, y0, x1, y1]>.{drawn}",
                  turn.text]
    lines += ["", f"answer: one JSON object constrained by the template's schema (explanation, targets"
                  f"{', absent' if p.rules.allow_rejection else ''}), at most {answer_token_budget(schema)} new "
                  "tokens for round 1 (auto: the longest answer the schema allows; --max-new-tokens sets another cap)"]
    return "\n".join(lines)


def _frames(names: list[str], images: list, model: str | None) -> tuple[list, str]:
    """Each image's frame, and a line saying where the sizes come from."""
    from autolabel.backends.vlm_coords import CoordinateFrame, ImageFrame, coordinate_frame, processed_size
    from autolabel.backends.vlm_sam import VlmSamBackend

    if model is None:
        from autolabel.backends.server_reasoner import QWEN25_IMAGE_RULE, ResizeRule

        rule = ResizeRule(**QWEN25_IMAGE_RULE)
        frames = [ImageFrame(CoordinateFrame.PIXELS, im.shape[:2], _fixed_point(rule, n, im))
                  for n, im in zip(names, images)]
        return frames, (f"assumed: the default model {VlmSamBackend.default_model}'s resize (sides multiples of "
                        f"{rule.factor}, {rule.min_pixels}..{rule.max_pixels} pixels), not read from a processor; "
                        "give --model DIR for the sizes a model's own processor gives")
    from transformers import AutoImageProcessor

    from autolabel.backends.server_reasoner import local_model_config

    model_type, _, folder = local_model_config(model, None)
    if folder is None:
        raise AutolabelError(f"--model {model}: no model here with a config.json (a local directory, or a hub id "
                             "in the Hugging Face cache); leave --model out to assume the default model's resize")
    frame = coordinate_frame(model_type or "")
    processor = AutoImageProcessor.from_pretrained(folder)
    frames = []
    for name, im in zip(names, images):
        try:
            size = processed_size(processor, im)
        except Exception as e:  # noqa: BLE001 - one line naming the image
            h, w = im.shape[:2]
            raise AutolabelError(f"{name} ({w}x{h} pixels): {model}'s image processor does not take it: {e}") from None
        frames.append(ImageFrame(frame, im.shape[:2], size))
    where = "" if Path(model).expanduser().resolve() == Path(folder).resolve() else f" ({folder})"
    return frames, f"read from {model}'s own image processor{where}"


def _fixed_point(rule, name: str, image) -> tuple[int, int]:
    try:
        return rule.fixed_point(*image.shape[:2])
    except ValueError as e:
        h, w = image.shape[:2]
        raise AutolabelError(f"{name} ({w}x{h} pixels): the default model's resize does not take it: {e}") from None
