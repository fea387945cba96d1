"""`autolabel prompts render`: show a template rendered for one group: a folder of images, or a
group of a manifest or COCO file with its exemplars."""

from __future__ import annotations

from pathlib import Path

from autolabel.errors import AutolabelError
from autolabel.images import IMAGE_EXTENSIONS
from autolabel.sources import natural_key
from autolabel.templates import load_template, render


def _group(path: Path, group_id: str | None, variables: dict[str, str]):
    """A folder of images as one group, or a group of a manifest or COCO file as `run` reads it
    (`group_id`, default the first), with the variables it renders with (its own and its exemplar's
    label over --var)."""
    from autolabel.groups import BadGroup, ImageGroup, ImageRef
    from autolabel.labeler import given_variables
    from autolabel.sources import open_source

    if not path.is_file():
        if not path.is_dir():
            raise AutolabelError(f"{path}: not a folder of images, a manifest or a COCO file")
        names = [p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not names:
            raise AutolabelError(f"{path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        names.sort(key=natural_key)
        return ImageGroup(path.name, path, tuple(ImageRef(n, path / n) for n in names)), variables
    found = next((g for g in open_source(path) if group_id is None or g.id == group_id), None)
    if found is None:
        raise AutolabelError(f"{path}: no group {group_id!r}" if group_id else f"{path}: no groups")
    if isinstance(found, BadGroup):
        raise AutolabelError(f"{path}: group {found.id!r} cannot be read: {found.error().message}")
    return found, given_variables(variables, found)


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
    from autolabel.labeler import exemplar_images

    group, variables = _group(group_dir, group_id, variables)
    names = [im.file for im in group.images]
    template = load_template(template_name)
    p = render(template, n_images=len(names), variables=variables, group_id=group.id, files=names,
               exemplars=exemplar_images(group))
    lines = [f"template: {p.name} (hash {p.hash}, category {p.category})"]
    if p.system:
        lines += ["", "[system]", p.system]
    for i, (name, image) in enumerate(zip(names, group.images), 1):
        lines.append(f"Image {i}: {name}{_exemplar(image)}")
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
