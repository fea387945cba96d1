"""`autolabel prompts render`: show a template rendered for one folder of images."""

from __future__ import annotations

from pathlib import Path

from autolabel.errors import AutolabelError
from autolabel.images import IMAGE_EXTENSIONS
from autolabel.sources import natural_key
from autolabel.templates import load_template, render


def render_for_group(template_name: str, group_dir: Path, variables: dict[str, str]) -> str:
    """The system prompt, each turn, the ontology and answer rules, as plain text."""
    if not group_dir.is_dir():
        raise AutolabelError(f"{group_dir}: not a folder of images")
    names = [p.name for p in group_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not names:
        raise AutolabelError(f"{group_dir}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    names.sort(key=natural_key)
    template = load_template(template_name)
    p = render(template, n_images=len(names), variables=variables, group_id=group_dir.name, files=names)
    lines = [f"template: {p.name} (hash {p.hash}, category {p.category})"]
    if p.system:
        lines += ["", "[system]", p.system]
    for i, name in enumerate(names, 1):
        lines.append(f"Image {i}: {name}")
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
