"""Prompt templates: YAML validated by pydantic, rendered with sandboxed Jinja2.

A template says what to ask about a group (one or more turns), which phrases map to which COCO
categories (the ontology), and what an answer may contain (several targets, rejection of absent
ones, which images). Its content hash goes into every prediction so a changed prompt is visible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autolabel.errors import AutolabelError
from autolabel.yaml_io import read_yaml_mapping

BUILTIN_DIR = Path(__file__).resolve().parent / "prompts"
if not BUILTIN_DIR.is_dir():  # running from a source checkout: prompts/ sits beside the package
    BUILTIN_DIR = Path(__file__).resolve().parent.parent / "prompts"

REASONING_CATEGORIES = ("functional", "spatial", "numerical", "open-ended", "multi-target",
                        "multi-round", "visual-prompt", "ontology")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Variable(_Strict):
    default: str | None = None
    description: str = ""


class TurnSpec(_Strict):
    text: str
    draw_previous: bool = Field(False, description="draw earlier rounds' masks on the images")


class AnswerRules(_Strict):
    multiple_targets: bool = True
    allow_rejection: bool = True
    images: Literal["all", "first", "others"] | list[int] = "all"
    max_targets: int = Field(16, ge=1)

    def allowed_images(self, n_images: int, exemplars: tuple[int, ...] = ()) -> list[int]:
        """1-based image numbers that may hold targets in a group of `n_images`. `others` means every
        image without an exemplar (`exemplars`, 1-based; the first image when none is marked), and
        every image when all of them are marked."""
        if self.images == "all":
            return list(range(1, n_images + 1))
        if self.images == "first":
            return [1]
        if self.images == "others":
            marked = set(exemplars) or {1}
            return [i for i in range(1, n_images + 1) if i not in marked] or list(range(1, n_images + 1))
        return [i for i in self.images if 1 <= i <= n_images]


class Template(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: int | str = 1
    description: str = ""
    category: str = "open-ended"
    system: str = ""
    turns: list[TurnSpec] = Field(min_length=1)
    variables: dict[str, Variable] = {}
    ontology: dict[str, str] | list[str] | str | None = None
    answer: AnswerRules = AnswerRules()
    visual_prompt: bool = Field(False, description="the group carries exemplar boxes/points/masks")

    @field_validator("turns", mode="before")
    @classmethod
    def _plain_turns(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        return [{"text": t} if isinstance(t, str) else t for t in v] if isinstance(v, list) else v

    @field_validator("variables", mode="before")
    @classmethod
    def _plain_variables(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: x if isinstance(x, dict) else {"default": None if x is None else str(x)}
                    for k, x in v.items()}
        return v

    @property
    def content_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RenderedTurn:
    text: str
    draw_previous: bool = False


@dataclass(frozen=True)
class RenderedPrompt:
    """A template rendered for one group: exactly what a backend receives."""

    name: str
    hash: str
    category: str
    system: str
    turns: tuple[RenderedTurn, ...]
    ontology: dict[str, str]  # phrase or label -> COCO category name, in category order
    rules: AnswerRules
    allowed_images: tuple[int, ...]  # 1-based
    visual_prompt: bool
    # the variables the template uses, as rendered (given, else the template's default): what the
    # model was asked, stored on the prediction line so a rerun can tell when that changed
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(self.ontology.values()))


def load_template(name_or_file: str) -> Template:
    """A built-in template by name, or a YAML file by path; errors name the file and field."""
    path = Path(name_or_file)
    if not path.suffix and not path.exists():
        path = BUILTIN_DIR / f"{name_or_file}.yaml"
        if not path.exists():
            known = ", ".join(t.name for t in builtin_templates())
            raise AutolabelError(f"unknown prompt template {name_or_file!r}; built-ins: {known}")
    return _load_file(path.resolve())


def _load_file(path: Path) -> Template:
    """Cached by modification time, so a template edited while the process runs is reread."""
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise AutolabelError(f"{path}: prompt template file not found") from None
    return _load_cached(path, mtime)


@lru_cache(maxsize=64)
def _load_cached(path: Path, mtime: int) -> Template:
    data = read_yaml_mapping(path, "prompt template")
    try:
        return Template.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(_field_path(err["loc"])) or "(top level)"
        raise AutolabelError(f"{path}: field {field!r}: {err['msg']}") from None


def _field_path(loc: tuple) -> list[str]:
    """The YAML path of a validation error, without pydantic's union-member names."""
    return [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "bool", "float", "none"}))]


def builtin_templates() -> list[Template]:
    return [_load_file(p.resolve()) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]


@lru_cache(maxsize=1)
def _jinja():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                         keep_trailing_newline=False)


# names every render provides itself; a template's own variables are the other names it uses
CONTEXT_NAMES = frozenset({"num_images", "group_id", "images", "files", "exemplar_images"})


def used_variable_names(template: Template) -> frozenset[str]:
    """The variables a template's text and ontology refer to (context names excluded)."""
    key = template.content_hash
    if key not in _USED_NAMES:
        from jinja2 import TemplateSyntaxError, meta

        texts = [template.system, *(t.text for t in template.turns)]
        spec = template.ontology
        texts += (list(spec) + list(spec.values()) if isinstance(spec, dict) else
                  list(spec) if isinstance(spec, list) else [spec] if spec else [])
        names: set[str] = set()
        for text in texts:
            try:
                names |= meta.find_undeclared_variables(_jinja().parse(text))
            except TemplateSyntaxError:
                continue  # render names the error
        _USED_NAMES[key] = frozenset(names - CONTEXT_NAMES)
    return _USED_NAMES[key]


_USED_NAMES: dict[str, frozenset[str]] = {}


def used_variables(template: Template, given: dict[str, str] | None) -> dict[str, str]:
    """The values a render uses: each variable the template refers to, given or else its default."""
    given = given or {}
    out = {}
    for name in sorted(used_variable_names(template)):
        spec = template.variables.get(name)
        if name in given:
            out[name] = str(given[name])
        elif spec is not None and spec.default is not None:
            out[name] = spec.default
    return out


def missing_variables(template: Template, given: dict[str, str] | None) -> list[str]:
    """Variables the template needs that are neither given nor defaulted (a render would fail on
    them); one guarded by `is defined` in every branch is not needed."""
    values = used_variables(template, given)
    unset = sorted(used_variable_names(template) - values.keys())
    if not unset:
        return []
    needed = set()
    for n_images in (1, 2, 3):
        try:
            render(template, n_images=n_images, variables=given)
        except AutolabelError as e:
            needed |= {name for name in unset if f"'{name}' is undefined" in str(e)}
    return [name for name in unset if name in needed]


def render(template: Template, *, n_images: int, variables: dict[str, str] | None = None,
           group_id: str = "", files: list[str] | None = None, exemplars: tuple[int, ...] = (),
           image_names: list[str] | None = None) -> RenderedPrompt:
    """Render every turn and the ontology for one group; a missing variable names itself.

    `exemplars` are the 1-based numbers of the images that carry a visual prompt; templates see
    them as `exemplar_images` ("Image 2", ...; "Image 1" when none is marked). `image_names` are
    what templates call the images (`images`), when not "Image N": a video clip's keyframes are
    "Frame k (t=...s)"."""
    from jinja2 import TemplateError, UndefinedError

    values = {k: v.default for k, v in template.variables.items() if v.default is not None}
    values.update(variables or {})
    marked = tuple(sorted(set(exemplars))) or (1,)
    context = {**values, "num_images": n_images, "group_id": group_id,
               "images": list(image_names or [f"Image {i}" for i in range(1, n_images + 1)]), "files": files or [],
               "exemplar_images": [(image_names or [])[i - 1] if i <= len(image_names or []) else f"Image {i}"
                                   for i in marked]}
    env = _jinja()

    def _render(text: str, where: str) -> str:
        try:
            return env.from_string(text).render(context).strip()
        except UndefinedError as e:
            raise AutolabelError(f"template {template.name!r}, {where}: variable {e.message}; "
                                 f"give it with --var KEY=VALUE or in the manifest") from None
        except TemplateError as e:
            raise AutolabelError(f"template {template.name!r}, {where}: {e}") from None

    turns = tuple(RenderedTurn(_render(t.text, f"turns[{i}]"), t.draw_previous)
                  for i, t in enumerate(template.turns))
    system = _render(template.system, "system") if template.system else ""
    ontology = _render_ontology(template.ontology, lambda s: _render(s, "ontology"))
    allowed = tuple(template.answer.allowed_images(n_images, tuple(exemplars)))
    return RenderedPrompt(template.name, template.content_hash, template.category, system, turns,
                          ontology, template.answer, allowed, template.visual_prompt,
                          used_variables(template, variables))


def _render_ontology(spec, render_str) -> dict[str, str]:
    """Ontology as {phrase: category}; a string form is rendered then read as `a, b=c` entries."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return {render_str(k): render_str(v) for k, v in spec.items()}
    items = spec if isinstance(spec, list) else render_str(spec).split(",")
    out: dict[str, str] = {}
    for item in items:
        item = render_str(item) if isinstance(spec, list) else item
        phrase, _, category = item.partition("=")
        if phrase.strip():
            out[phrase.strip()] = (category or phrase).strip()
    return out
