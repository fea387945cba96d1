"""PrimaConfig: everything needed to rebuild a PRIMA model empty, saved as the checkpoint's config.json.

The vision tower and the LLM are described by their own transformers config dicts, so any
CLIP / SigLIP / DINOv2 tower and any causal LM fit; SAM is described by its sizes (presets for the
official vit_b / vit_l / vit_h), so a checkpoint never depends on a registry entry being present.

TrainOptions is `autolabel train prima`'s options, and the one place their defaults live: the
command's flags default to None (not given) and its --help reads the defaults here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autolabel.errors import AutolabelError, flag_error

CONFIG_FILE = "config.json"
SEG, REJ, IMAGE, MEMORY, REFER = "[SEG]", "[REJ]", "<image>", "<mem>", "<ref>"
SPECIAL_TOKENS = (SEG, REJ, IMAGE, MEMORY, REFER)


class SamSpec(BaseModel):
    """The sizes of a segment-anything SAM (image encoder, prompt encoder, mask decoder)."""

    model_config = ConfigDict(extra="forbid")

    img_size: int = 1024
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: list[int] = Field(default_factory=lambda: [2, 5, 8, 11])
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256

    @classmethod
    def preset(cls, variant: str) -> SamSpec:
        presets = {
            "vit_b": cls(),
            "vit_l": cls(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                         encoder_global_attn_indexes=[5, 11, 17, 23]),
            "vit_h": cls(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                         encoder_global_attn_indexes=[7, 15, 23, 31]),
        }
        if variant not in presets:
            raise AutolabelError(f"unknown SAM variant {variant!r}; one of {', '.join(presets)}")
        return presets[variant]


class SquareSpec(BaseModel):
    """SQuARE's sizes: relational queries over the whole group, per-image queries, depth."""

    model_config = ConfigDict(extra="forbid")

    num_relational_queries: int = 32
    num_image_queries: int = 32
    num_layers: int = 2
    num_heads: int = 8
    use_relational_queries: bool = True  # False builds the ablation without cross-image context


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    merged: bool = True  # the saved weights have the LoRA update folded in


class PrimaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vision: dict[str, Any]  # a transformers vision config (clip_vision_model, siglip_vision_model, dinov2)
    image_mean: list[float]
    image_std: list[float]
    llm: dict[str, Any]  # a transformers causal-LM config, vocabulary already including SPECIAL_TOKENS
    sam: SamSpec = Field(default_factory=SamSpec)
    square: SquareSpec = Field(default_factory=SquareSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    max_images: int = 8
    sources: dict[str, str] = Field(default_factory=dict)  # where the parts came from, for provenance

    def save(self, directory: Path) -> None:
        (directory / CONFIG_FILE).write_text(json.dumps({"model_type": "prima", **self.model_dump(mode="json")},
                                                        indent=2))

    @classmethod
    def load(cls, directory: Path) -> PrimaConfig:
        path = directory / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise AutolabelError(f"{directory}: not a PRIMA checkpoint (no {CONFIG_FILE})") from None
        except json.JSONDecodeError as e:
            raise AutolabelError(f"{path}: not valid JSON: {e}") from None
        if data.pop("model_type", None) != "prima":
            raise AutolabelError(f"{path}: model_type is not 'prima'")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            raise AutolabelError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


class TrainOptions(BaseModel):
    """Everything `autolabel train prima` needs; field names match the long flags (dashes ->
    underscores), except the SQuARE and LoRA sizes, which the flags in NESTED_TRAIN_FLAGS set."""

    model_config = ConfigDict(extra="forbid")

    data: Path
    out: Path
    val: Path | None = None
    init: str | None = None  # an existing PRIMA checkpoint to continue from, instead of parts
    vision: str = "openai/clip-vit-large-patch14"
    llm: str = "Qwen/Qwen2.5-0.5B-Instruct"
    sam: str = "sam_vit_b_01ec64.pth"
    sam_spec: SamSpec | None = None
    square: SquareSpec = Field(default_factory=SquareSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    save_every: int = Field(500, ge=1)  # optimizer steps between checkpoints
    resume: bool = False
    skip_bad: bool = False
    seed: int = 0
    device: str | None = None
    max_new_tokens: int = Field(128, ge=1)


# the `train prima` flags that set a size inside `square` or `lora`: flag -> (option, spec, field)
NESTED_TRAIN_FLAGS: dict[str, tuple[str, type[BaseModel], str]] = {
    "relational_queries": ("square", SquareSpec, "num_relational_queries"),
    "image_queries": ("square", SquareSpec, "num_image_queries"),
    "lora_r": ("lora", LoraSpec, "r"),
}


def train_flag_defaults() -> dict[str, Any]:
    """Each `train prima` flag's default as the models above set it (what --help shows)."""
    defaults = {name: field.get_default(call_default_factory=True)
                for name, field in TrainOptions.model_fields.items() if not field.is_required()}
    for flag, (_, spec, name) in NESTED_TRAIN_FLAGS.items():
        defaults[flag] = spec.model_fields[name].get_default(call_default_factory=True)
    return defaults


def train_options(flags: dict[str, Any]) -> TrainOptions:
    """TrainOptions from `train prima`'s flags (None: not given, the default above holds).
    --relational-queries 0 builds the ablation without them; LoRA's alpha is twice --lora-r."""
    given = {k: v for k, v in flags.items() if v is not None}
    nested: dict[str, dict[str, Any]] = {"square": {}, "lora": {}}
    for flag, (option, _, name) in NESTED_TRAIN_FLAGS.items():
        if flag in given:
            nested[option][name] = given.pop(flag)
    square, lora = nested["square"], nested["lora"]
    if "num_relational_queries" in square:
        square["use_relational_queries"] = square["num_relational_queries"] > 0
        square["num_relational_queries"] = max(square["num_relational_queries"], 1)
    if "r" in lora:
        lora["alpha"] = 2 * lora["r"]
    try:
        return TrainOptions(**given, square=SquareSpec(**square), lora=LoraSpec(**lora))
    except ValidationError as e:
        raise flag_error(e, "options") from None
