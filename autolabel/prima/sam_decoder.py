"""SAM for PRIMA: the segment-anything modules, image encoder frozen, prompt encoder and decoder trained.

A `[SEG]` state, projected to SAM's prompt width, is one sparse prompt token; each image is
encoded once per group and every `[SEG]` that points at it is decoded against that embedding.
Training compares the decoder's low-resolution logits with the true mask mapped into the same
frame (resized longest side, padded, 4x smaller), so no full-resolution upsampling is needed.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from autolabel.prima.config import SamSpec


def build_sam(spec: SamSpec):
    """An empty segment-anything `Sam` with the official key layout (image_encoder.*, ...)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = spec.img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=spec.img_size, patch_size=16, embed_dim=spec.encoder_embed_dim, depth=spec.encoder_depth,
            num_heads=spec.encoder_num_heads, mlp_ratio=4, out_chans=spec.prompt_embed_dim, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=spec.window_size,
            global_attn_indexes=spec.encoder_global_attn_indexes),
        prompt_encoder=PromptEncoder(embed_dim=spec.prompt_embed_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(spec.img_size, spec.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=spec.prompt_embed_dim, mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_num_heads),
            transformer_dim=spec.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=spec.iou_head_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


class SamMaskDecoder(nn.Module):
    def __init__(self, spec: SamSpec):
        super().__init__()
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = build_sam(spec)
        self.sam.image_encoder.requires_grad_(False)
        self.transform = ResizeLongestSide(spec.img_size)
        self.prompt_dim = spec.prompt_embed_dim

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(N, C, h, w) embeddings and each image's resized (h, w) inside SAM's square input."""
        self.sam.image_encoder.eval()
        device = self.sam.pixel_mean.device
        resized = [self.transform.apply_image(image) for image in images]
        batch = torch.cat([self.sam.preprocess(torch.as_tensor(r, device=device).permute(2, 0, 1)[None].float())
                           for r in resized])
        return self.sam.image_encoder(batch), [r.shape[:2] for r in resized]

    def decode(self, embedding: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's embedding (1, C, h, w), K prompt tokens (K, C) -> logits (K, 4h, 4w), IoU (K,)."""
        sparse = prompts.reshape(-1, 1, self.prompt_dim)
        _, dense = self.sam.prompt_encoder(points=None, boxes=None, masks=None)
        low_res, iou = self.sam.mask_decoder(image_embeddings=embedding, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=False)
        return low_res[:, 0], iou[:, 0]

    def box_tokens(self, boxes: np.ndarray, original_size: tuple[int, int]) -> torch.Tensor:
        """Boxes (K, 4) xyxy in image pixels -> SAM's two corner tokens each, flattened: (K, 2C)."""
        device = self.sam.pixel_mean.device
        coords = torch.as_tensor(self.transform.apply_boxes(boxes, original_size), dtype=torch.float32, device=device)
        sparse, _ = self.sam.prompt_encoder(points=None, boxes=coords, masks=None)
        return sparse.reshape(len(boxes), -1)

    def to_image(self, logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits (K, 4h, 4w) -> (K, H, W) logits at the original image size."""
        return self.sam.postprocess_masks(logits[:, None], input_size, original_size)[:, 0]

    def target(self, mask: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
        """A full-size boolean mask in the decoder's low-res frame (fraction of each cell covered)."""
        device = self.sam.pixel_mean.device
        side = self.sam.image_encoder.img_size
        m = torch.as_tensor(mask, dtype=torch.float32, device=device)[None, None]
        m = nn.functional.interpolate(m, size=input_size, mode="bilinear", align_corners=False)
        m = nn.functional.pad(m, (0, side - input_size[1], 0, side - input_size[0]))
        return nn.functional.avg_pool2d(m, 4)[0, 0]
