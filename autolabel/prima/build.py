"""A new PRIMA from pretrained parts: a vision tower, a causal LM with its tokenizer, a SAM `.pth`.

Every part is loaded by its real loader (`from_pretrained` on a hub id or directory, offline
first; the SAM file with `weights_only=True`), so what `autolabel train prima` starts from is
exactly what a user names.
"""

from __future__ import annotations

import re
from pathlib import Path

from autolabel.errors import AutolabelError
from autolabel.prima.config import SPECIAL_TOKENS, LoraSpec, PrimaConfig, SamSpec, SquareSpec
from autolabel.prima.model import PrimaModel, wrap_lora
from autolabel.prima.sam_decoder import SamMaskDecoder
from autolabel.prima.vision import VisionTower

# Vision-only classes to take from a full checkpoint (a CLIP or SigLIP repo holds a text tower too).
_VISION_ONLY = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


def build_from_parts(vision: str, llm: str, sam: str, *, sam_spec: SamSpec | None = None,
                     square: SquareSpec | None = None, lora: LoraSpec | None = None,
                     max_images: int = 8) -> PrimaModel:
    """Load the three parts, add PRIMA's tokens to the LLM, wrap it with LoRA; SQuARE and heads start fresh."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from autolabel.loading import load_weights_only, resolve_pretrained

    vision_dir = resolve_pretrained(vision)
    kind = AutoConfig.from_pretrained(vision_dir).model_type
    tower_class = getattr(transformers, _VISION_ONLY[kind]) if kind in _VISION_ONLY else AutoModel
    tower_model = tower_class.from_pretrained(vision_dir)
    processor = AutoImageProcessor.from_pretrained(vision_dir)

    llm_dir = resolve_pretrained(llm)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    language_model = AutoModelForCausalLM.from_pretrained(llm_dir)
    tokenizer.add_tokens(list(SPECIAL_TOKENS), special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    language_model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)

    variant, sam_file = _sam_source(sam)
    if sam_spec is None and variant is None:
        raise AutolabelError(f"--sam {sam}: the file name does not say vit_b, vit_l or vit_h; "
                             "name it as vit_b:FILE (or vit_l:, vit_h:)")
    spec = sam_spec or SamSpec.preset(variant)
    sam_decoder = SamMaskDecoder(spec)
    state = load_weights_only(sam_file)
    try:
        sam_decoder.sam.load_state_dict(state)
    except RuntimeError as e:
        raise AutolabelError(f"--sam {sam}: does not fit the {variant or 'given'} SAM sizes "
                             f"({str(e).splitlines()[0]})") from None

    vision_config = tower_model.config.to_dict()
    config = PrimaConfig(vision=vision_config, image_mean=list(processor.image_mean), image_std=list(processor.image_std),
                         llm=language_model.config.to_dict(), sam=spec, square=square or SquareSpec(),
                         lora=lora or LoraSpec(), max_images=max_images,
                         sources={"vision": vision, "llm": llm, "sam": sam})
    tower = VisionTower(config.vision, config.image_mean, config.image_std)
    tower.model.load_state_dict(tower_model.state_dict())
    model = PrimaModel(config, tokenizer, llm=language_model, vision=tower, sam=sam_decoder)
    model.llm = wrap_lora(model.llm, config, model.ids)
    return model


def _sam_source(sam: str) -> tuple[str | None, Path]:
    """`vit_b:/path.pth`, or a path whose name says vit_b / vit_l / vit_h."""
    variant, _, rest = sam.partition(":")
    if rest and re.fullmatch(r"vit_[bhl]", variant):
        path = Path(rest).expanduser()
    else:
        path = Path(sam).expanduser()
        found = re.search(r"vit_[bhl]", path.name)
        variant = found.group(0) if found else None
    if not path.is_file():
        raise AutolabelError(f"--sam {sam}: file {path.resolve()} not found (an original segment-anything .pth)")
    return variant, path
