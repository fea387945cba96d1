"""SAM from an original segment-anything `.pth` checkpoint (vit_b / vit_l / vit_h).

The model is built empty from `segment_anything.sam_model_registry` and the state dict loaded
with `torch.load(weights_only=True)`, so a checkpoint can never run code. Encoding and decoding
follow `SamPredictor` (ResizeLongestSide, normalise and pad, `postprocess_masks`) but batch the
image encoder over all images of a call and keep no per-image state in the model.

segment-anything's prompt encoder mixes float32 and weight dtypes, so the weights stay float32
and half precision runs under autocast, as in the official demos.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from autolabel.backends.mask_heads.base import BoxPromptedHead, EncodedImage, Prompts
from autolabel.errors import AutolabelError, ModelNotAvailable

_VARIANT_IN_NAME = re.compile(r"vit_[bhl]")


class SegmentAnythingSam(BoxPromptedHead):
    def __init__(self, model_id: str, file: str, variant: str | None, *, device: str, dtype, cache_size: int):
        path = Path(file).expanduser()
        super().__init__(model_id, str(path), cache_size)
        import torch
        from segment_anything import sam_model_registry
        from segment_anything.utils.transforms import ResizeLongestSide

        from autolabel.loading import load_weights_only

        if not path.is_file():
            raise ModelNotAvailable(f"mask model {model_id!r}: file {path.resolve()} not found")
        variant = variant or _variant_from_name(model_id, path)
        if variant not in sam_model_registry:
            raise AutolabelError(f"--mask-model {model_id}: unknown SAM variant {variant!r}; "
                                 f"one of {', '.join(sorted(sam_model_registry))}")
        state = load_weights_only(path)  # first: a refused file fails before building a large model
        sam = sam_model_registry[variant](checkpoint=None)
        try:
            sam.load_state_dict(state)
        except RuntimeError as e:  # missing/unexpected keys or shape mismatch: a different variant
            raise AutolabelError(f"--mask-model {model_id}: {path} does not fit the {variant} architecture "
                                 f"({str(e).splitlines()[0]}); name the variant as vit_b:/vit_l:/vit_h:FILE") from None
        self.device = device
        self.autocast = dtype if dtype != torch.float32 else None
        self.sam = sam.to(device).eval()
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    def _encode(self, images: list[np.ndarray]) -> list[EncodedImage]:
        import torch

        resized = [self.transform.apply_image(image) for image in images]
        batch = torch.cat([self.sam.preprocess(torch.as_tensor(r, device=self.device).permute(2, 0, 1)[None].float())
                           for r in resized])
        with self._precision():
            features = self.sam.image_encoder(batch)
        return [EncodedImage(features[i:i + 1], image.shape[:2], r.shape[:2])
                for i, (image, r) in enumerate(zip(images, resized))]

    def _decode(self, embedding: EncodedImage, prompts: Prompts) -> tuple[np.ndarray, np.ndarray]:
        import torch

        size = embedding.original_size
        boxes = points = None
        if prompts.boxes is not None:
            boxes = torch.as_tensor(self.transform.apply_boxes(prompts.boxes, size), dtype=torch.float32,
                                    device=self.device)
        if prompts.points is not None:
            points = (torch.as_tensor(self.transform.apply_coords(prompts.points, size), dtype=torch.float32,
                                      device=self.device),
                      torch.as_tensor(prompts.labels, device=self.device))
        with self._precision():
            sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=embedding.features, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        masks = self.sam.postprocess_masks(low_res.float(), embedding.input_size, size) > self.sam.mask_threshold
        return masks[:, 0].cpu().numpy(), iou[:, 0].float().cpu().numpy()

    def _precision(self):
        import contextlib

        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.autocast)


def _variant_from_name(model_id: str, path: Path) -> str:
    found = _VARIANT_IN_NAME.search(path.name)
    if not found:
        raise AutolabelError(f"--mask-model {model_id}: cannot tell the SAM variant from the file name; "
                             f"write it as vit_b:{path} (or vit_l / vit_h)")
    return found.group(0)
