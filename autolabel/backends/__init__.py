"""The backend registry: a plain dict of names to lazy builders, open to plugins.

Entries are import strings so that `autolabel --help` never imports torch. Third-party packages
add backends through the `autolabel.backends` entry-point group, pointing at a Backend subclass.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from autolabel.errors import AutolabelError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    target: str  # "module:Class"
    description: str
    default_model: str | None = None
    default_mask_model: str | None = None


BUILTIN_BACKENDS: dict[str, BackendSpec] = {}

DEFAULT_BACKEND = "vlm-sam"
DEFAULT_CONCURRENCY = 32  # --server: requests in flight
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"  # --server: the variable holding the API key (never stored)


def register(spec: BackendSpec) -> None:
    BUILTIN_BACKENDS[spec.name] = spec


def available_backends() -> dict[str, BackendSpec]:
    """Built-ins plus every installed plugin's backends (plugins cannot shadow built-ins)."""
    found = dict(BUILTIN_BACKENDS)
    for ep in entry_points(group="autolabel.backends"):
        found.setdefault(ep.name, BackendSpec(ep.name, ep.value, f"plugin from {ep.dist.name if ep.dist else '?'}"))
    return found


def backend_class(name: str):
    """The Backend class for a registered name, or for an import string `package.module:Class`."""
    specs = available_backends()
    if name in specs:
        target = specs[name].target
    elif ":" in name:
        target = name
    else:
        raise AutolabelError(f"unknown backend {name!r}; available: {', '.join(sorted(specs)) or 'none'}")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise AutolabelError(f"backend {name!r} cannot be imported from {target!r}: {e}") from None


register(BackendSpec(
    "vlm-sam", "autolabel.backends.vlm_sam:VlmSamBackend",
    "a transformers chat VLM (Qwen2.5-VL / Qwen3-VL) answers schema-constrained JSON over the whole group; "
    "a SAM-family head turns its boxes into masks",
    default_model="Qwen/Qwen2.5-VL-3B-Instruct", default_mask_model="facebook/sam2.1-hiera-base-plus",
))
register(BackendSpec(
    "prima", "autolabel.backends.prima:PrimaBackend",
    "PRIMA (SQuARE cross-image queries + LLM emitting [SEG]/[REJ] + SAM decoder), a checkpoint trained with "
    "`autolabel train prima`; pass --model DIR",
))
