"""SAM and SAM 2 through transformers (`SamModel` / `Sam2Model` and their processors).

Prompts are mapped into the model's input frame the way the processor maps them (SAM: the
longest side resized to 1024, as reported by the processor for each image; SAM 2: the
processor's square `target_size`); the frame is recorded when the image is encoded, so decoding
never re-runs image preprocessing.
"""

from __future__ import annotations

import numpy as np

from autolabel.backends.mask_heads.base import BoxPromptedHead, EncodedImage, Prompts, image_slice

# model type -> (model class, processor class); named explicitly so no remote code is ever run
CLASSES = {"sam": ("SamModel", "SamProcessor"), "sam2": ("Sam2Model", "Sam2Processor"),
           "sam2_video": ("Sam2Model", "Sam2Processor")}  # a SAM 2 video checkpoint holds the image model


class TransformersSam(BoxPromptedHead):
    def __init__(self, model_id: str, path: str, model_type: str, *, device: str, dtype, cache_size: int):
        super().__init__(model_id, path, cache_size)
        import transformers

        model_class, processor_class = (getattr(transformers, name) for name in CLASSES[model_type])
        self.device, self.dtype = device, dtype
        self.model = model_class.from_pretrained(path, dtype=dtype).to(device).eval()
        self.processor = processor_class.from_pretrained(path)
        self.padded = model_type == "sam"  # SAM pads after resizing; its masks are cropped back

    def _encode(self, images: list[np.ndarray]) -> list[EncodedImage]:
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        features = self.model.get_image_embeddings(pixels)
        # the frame the processor maps prompts into: SAM the resized (unpadded) image, SAM 2 a square
        side = self.processor.target_size
        resized = inputs["reshaped_input_sizes"].tolist() if self.padded else [(side, side)] * len(images)
        return [EncodedImage(image_slice(features, i), tuple(map(int, inputs["original_sizes"][i])),
                        tuple(map(int, resized[i]))) for i in range(len(images))]

    def _decode(self, embedding: EncodedImage, prompts: Prompts) -> tuple[np.ndarray, np.ndarray]:
        import torch

        (h, w), (ih, iw) = embedding.original_size, embedding.input_size
        scale = np.array([iw / w, ih / h], np.float32)

        def tensor(a: np.ndarray, dtype=None) -> torch.Tensor:
            return torch.as_tensor(a[None], device=self.device, dtype=dtype)

        kwargs: dict[str, torch.Tensor] = {}
        if prompts.boxes is not None:
            kwargs["input_boxes"] = tensor(prompts.boxes * np.tile(scale, 2), self.dtype)       # (1, K, 4)
        if prompts.points is not None:
            kwargs["input_points"] = tensor(prompts.points * scale, self.dtype)                 # (1, K, P, 2)
            kwargs["input_labels"] = tensor(prompts.labels)                                     # (1, K, P)
        out = self.model(image_embeddings=embedding.features, multimask_output=False, **kwargs)
        sizes = [[h, w]], [[ih, iw]]
        masks = self.processor.post_process_masks(out.pred_masks.float(), *(sizes if self.padded else sizes[:1]))[0]
        return masks[:, 0].cpu().numpy(), out.iou_scores.float().cpu().numpy().reshape(-1)
