"""Tiny random SAM-family checkpoints, saved the way the real ones are and loaded by real code."""

from __future__ import annotations

from functools import partial
from pathlib import Path

IMG = 128  # SAM / SAM 2 input side: real models use 1024


def build_tiny_sam_hf(directory: Path) -> Path:
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    h = 32
    cfg = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=h, num_hidden_layers=2, num_attention_heads=2, image_size=IMG,
                           patch_size=16, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=h // 2,
                           initializer_range=0.02),  # SamVisionConfig's default (1e-10) makes masks image-blind
        prompt_encoder_config=dict(hidden_size=h, image_size=IMG, patch_size=16),
        mask_decoder_config=dict(hidden_size=h, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32))
    SamModel(cfg).save_pretrained(directory)
    image_processor = SamImageProcessor(size={"longest_edge": IMG}, pad_size={"height": IMG, "width": IMG})
    SamProcessor(image_processor).save_pretrained(directory)
    return directory


def build_tiny_sam2_hf(directory: Path) -> Path:
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(0)
    h, s = 32, IMG // 4
    cfg = Sam2Config(
        vision_config=dict(backbone_config=dict(model_type="sam2_hiera_det_model", image_size=[IMG, IMG],
                                                embed_dim_per_stage=[16, 32, 64, 128], blocks_per_stage=[1, 1, 2, 1],
                                                num_attention_heads_per_stage=[1, 1, 2, 2], global_attention_blocks=[3],
                                                hidden_size=16),
                           backbone_channel_list=[128, 64, 32, 16],
                           backbone_feature_sizes=[[s, s], [s // 2, s // 2], [s // 4, s // 4]], fpn_hidden_size=h),
        prompt_encoder_config=dict(hidden_size=h, image_size=IMG, patch_size=16),
        mask_decoder_config=dict(hidden_size=h, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32))
    Sam2Model(cfg).save_pretrained(directory)
    Sam2Processor(Sam2ImageProcessor(size={"height": IMG, "width": IMG})).save_pretrained(directory)
    return directory


def build_tiny_segment_anything(checkpoint: Path | None = None, width: int = 32):
    """A tiny `Sam` in the official key layout; registered as `vit_tiny` in sam_model_registry.

    Same signature as the registry's builders (`checkpoint=None` builds it empty); `width` gives
    an architecture whose weights do not fit the default one.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    enc, pdim = width, width
    sam = Sam(image_encoder=ImageEncoderViT(img_size=IMG, patch_size=16, embed_dim=enc, depth=2, num_heads=2, mlp_ratio=4,
                                            out_chans=pdim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                            use_rel_pos=True, window_size=4, global_attn_indexes=[1]),
              prompt_encoder=PromptEncoder(embed_dim=pdim, image_embedding_size=(IMG // 16, IMG // 16),
                                           input_image_size=(IMG, IMG), mask_in_chans=4),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
                  depth=2, embedding_dim=pdim, mlp_dim=64, num_heads=2), transformer_dim=pdim, iou_head_depth=3,
                  iou_head_hidden_dim=32),
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam


def save_tiny_segment_anything(path: Path) -> Path:
    """A tiny official-layout state dict at `path`; registers its builder as `vit_tiny`."""
    import torch
    from segment_anything import sam_model_registry

    sam_model_registry["vit_tiny"] = build_tiny_segment_anything
    torch.save(build_tiny_segment_anything().state_dict(), path)
    return path


def build_tiny_sam3_hf(directory: Path) -> Path:
    """Tiny Sam3Model + processor with an offline byte-level CLIP tokenizer."""
    import torch
    from transformers import CLIPTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    chars = sorted(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    img, h = 112, 32
    g = img // 14
    cfg = Sam3Config(
        vision_config=dict(backbone_config=dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2, image_size=img, patch_size=14,
                                                window_size=8, global_attn_indexes=[1], pretrain_image_size=112),
                           fpn_hidden_size=h, backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]]),
        text_config=dict(model_type="clip_text_model", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         projection_dim=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        geometry_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=h, num_layers=1, num_queries=20, num_attention_heads=2, intermediate_size=64),
        mask_decoder_config=dict(hidden_size=h, num_attention_heads=2))
    Sam3Model(cfg).save_pretrained(directory)
    Sam3Processor(Sam3ImageProcessor(size={"height": img, "width": img}, mask_size={"height": 4 * g, "width": 4 * g}),
                  tok).save_pretrained(directory)
    return directory


BUILDERS = {"sam": build_tiny_sam_hf, "sam2": build_tiny_sam2_hf, "sam3": build_tiny_sam3_hf,
            "pth": lambda d: save_tiny_segment_anything(d / "sam_tiny.pth")}
_built: dict[str, Path] = {}


def tiny_mask_model(kind: str, tmp_path_factory) -> str:
    """The session's tiny checkpoint of `kind` (sam, sam2, sam3, pth), built on first use.

    `.pth` comes back as `vit_tiny:FILE`, the explicit-variant form users write.
    """
    if kind not in _built:
        _built[kind] = BUILDERS[kind](tmp_path_factory.mktemp(f"tiny_{kind}"))
    path = _built[kind]
    return f"vit_tiny:{path}" if kind == "pth" else str(path)
