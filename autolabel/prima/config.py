"""PrimaConfig: everything needed to rebuild a PRIMA model empty, saved as the checkpoint's config.json.

The vision tower and the LLM are described by their own transformers config dicts, so any
CLIP / SigLIP / DINOv2 tower and any causal LM fit; SAM is described by its sizes (presets for the
official vit_b / vit_l / vit_h), so a checkpoint never depends on a registry entry being present.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autolabel.errors import AutolabelError

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
