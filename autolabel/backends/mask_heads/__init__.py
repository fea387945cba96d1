"""Mask heads: the model that turns the VLM's boxes, points or phrases into pixel masks.

`MASK_HEADS` is the one table of heads, next to the builders (model type -> head class):
- a hub id or directory whose config.json says `sam` or `sam2`: transformers `SamModel` /
  `Sam2Model` (`transformers_sam.py`), box- and point-prompted;
- `sam3` / `sam3_video`: transformers `Sam3Model` (`sam3_text.py`), prompted by phrase;
- `PTH_HEAD`: an original segment-anything `.pth` checkpoint, optionally `vit_b:/path.pth`
  (`segment_anything.py`); no config.json says this, the file name does.

The heads import torch and their model libraries only when built, so this stays cheap to import.
"""

from __future__ import annotations

import re

from autolabel.backends.mask_heads.base import MaskHead
from autolabel.backends.mask_heads.sam3_text import Sam3TextHead
from autolabel.backends.mask_heads.segment_anything import SegmentAnythingSam
from autolabel.backends.mask_heads.transformers_sam import TransformersSam
from autolabel.errors import AutolabelError, ModelNotAvailable

PTH_HEAD = ".pth"
MASK_HEADS: dict[str, type[MaskHead]] = {
    "sam": TransformersSam,
    "sam2": TransformersSam,
    "sam2_video": TransformersSam,  # its image model (video tracking: backends/tracking.py)
    "sam3": Sam3TextHead,
    "sam3_video": Sam3TextHead,     # facebook/sam3 ships this config
    PTH_HEAD: SegmentAnythingSam,
}

_PTH = re.compile(r"^(?:(?P<variant>\w+):)?(?P<file>.+\.pth)$")


def pth_checkpoint(model: str) -> tuple[str | None, str] | None:
    """(variant, file) when `model` names a segment-anything `.pth` file (`[vit_b:]path.pth`), else None."""
    found = _PTH.match(model)
    return (found["variant"], found["file"]) if found else None


def load_mask_head(model: str, *, device: str, dtype, cache_size: int = 64,
                   local_files_only: bool | None = None) -> MaskHead:
    """The mask head for a hub id, a directory, or a segment-anything `.pth` file."""
    pth = pth_checkpoint(model)
    if pth:
        variant, file = pth
        return MASK_HEADS[PTH_HEAD](model, file, variant, device=device, dtype=dtype, cache_size=cache_size)
    from autolabel.loading import config_model_type, resolve_pretrained

    path = resolve_pretrained(model, local_files_only=local_files_only)
    model_type = config_model_type(path)
    if model_type is None:
        raise ModelNotAvailable(f"mask model {model!r}: {path} has no config.json (not a transformers checkpoint)")
    if model_type == PTH_HEAD or model_type not in MASK_HEADS:
        raise AutolabelError(f"--mask-model {model}: model type {model_type!r} is not a supported mask head; "
                             f"supported: {', '.join(t for t in MASK_HEADS if t != PTH_HEAD)} via transformers, "
                             "or a segment-anything .pth file")
    return MASK_HEADS[model_type](model, path, model_type, device=device, dtype=dtype, cache_size=cache_size)
