"""The frozen vision tower: any transformers CLIP / SigLIP / DINOv2 vision model, patch features out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class VisionTower(nn.Module):
    """Images -> (N, patches, hidden) features; never trained (PRIMA freezes it)."""

    def __init__(self, vision_config: dict, image_mean: list[float], image_std: list[float]):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.for_model(**vision_config)
        self.model = AutoModel.from_config(config)
        self.image_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        self.hidden_size = int(config.hidden_size)
        self.register_buffer("mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @property
    def grid(self) -> int:
        """Patches per side: features are the last grid*grid tokens (after CLS / register tokens)."""
        return self.image_size // self.patch_size

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        device = self.mean.device
        side = (self.image_size, self.image_size)
        batch = torch.cat([  # one by one: the images of a group differ in size
            nn.functional.interpolate(torch.as_tensor(image, device=device).permute(2, 0, 1)[None].float() / 255,
                                      size=side, mode="bilinear", align_corners=False, antialias=True)
            for image in images])
        return (batch - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: list[np.ndarray]) -> torch.Tensor:
        self.model.eval()
        pixels = self.preprocess(images).to(next(self.model.parameters()).dtype)
        hidden = self.model(pixel_values=pixels).last_hidden_state
        return hidden[:, -self.grid * self.grid:]
