"""Tiny random SAM 2 video checkpoints and test clips (a shape moving over a real photo), and the
keyframe answers and run settings the video tests steer the vlm-sam backend with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autolabel.backends.answer_schema import ParsedAnswer, ParsedTarget
from autolabel.backends.vlm_sam import VlmSamBackend, _Reasoned

IMG, H = 128, 128
PHOTO = Path(__file__).resolve().parents[1] / "examples" / "groups" / "animals"
LIMITS = {"explanation": 16, "label": 8, "phrase": 8, "reason": 8, "points": 2}


def build_tiny_sam2_video(directory: Path) -> Path:
    """transformers Sam2VideoModel + processor, random weights (see notes/recipes/sam2_video_hf.py
    for why these widths: memory channels 64, a prompt width a multiple of 64 larger than 64)."""
    import torch
    from transformers import (Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor,
                              Sam2VideoVideoProcessor)

    torch.manual_seed(0)
    s = IMG // 4
    cfg = Sam2VideoConfig(
        vision_config=dict(backbone_config=dict(model_type="sam2_hiera_det_model", image_size=[IMG, IMG],
                                                embed_dim_per_stage=[16, 32, 64, 128], blocks_per_stage=[1, 1, 2, 1],
                                                num_attention_heads_per_stage=[1, 1, 2, 2], global_attention_blocks=[3],
                                                hidden_size=16),
                           backbone_channel_list=[128, 64, 32, 16],
                           backbone_feature_sizes=[[s, s], [s // 2, s // 2], [s // 4, s // 4]], fpn_hidden_size=H),
        prompt_encoder_config=dict(hidden_size=H, image_size=IMG, patch_size=16),
        mask_decoder_config=dict(hidden_size=H, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=IMG, memory_attention_hidden_size=H, memory_attention_num_layers=1,
        memory_attention_num_attention_heads=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 4, s // 4], memory_encoder_hidden_size=H,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=H, memory_fuser_embed_dim=H,
        memory_fuser_intermediate_dim=64, initializer_range=0.02,
        num_maskmem=3, max_object_pointers_in_encoder=4)  # a short memory window: long-clip tests stay quick
    Sam2VideoModel(cfg).save_pretrained(directory)
    Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size={"height": IMG, "width": IMG}),
                       video_processor=Sam2VideoVideoProcessor(size={"height": IMG, "width": IMG}),
                       target_size=IMG).save_pretrained(directory)
    return directory


def build_tiny_sam3_tracker_video(directory: Path) -> Path:
    """transformers Sam3TrackerVideoModel + processor, random weights: SAM 3's ViT backbone with the
    same memory widths as the SAM 2 one (memory channels 64, prompt and decoder width 128)."""
    import torch
    from transformers import (Sam2ImageProcessor, Sam2VideoVideoProcessor, Sam3TrackerVideoConfig,
                              Sam3TrackerVideoModel, Sam3TrackerVideoProcessor)

    torch.manual_seed(0)
    img, patch = 112, 14
    g = img // patch
    cfg = Sam3TrackerVideoConfig(
        vision_config=dict(backbone_config=dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2, image_size=img,
                                                patch_size=patch, window_size=8, global_attn_indexes=[1],
                                                pretrain_image_size=img),
                           fpn_hidden_size=H, backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]]),
        prompt_encoder_config=dict(hidden_size=H, image_size=img, patch_size=patch),
        mask_decoder_config=dict(hidden_size=H, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=img, memory_attention_hidden_size=H, memory_attention_num_layers=1,
        memory_attention_num_attention_heads=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[g, g], memory_encoder_hidden_size=H, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=H, memory_fuser_embed_dim=H, memory_fuser_intermediate_dim=64,
        num_maskmem=3, max_object_pointers_in_encoder=4)
    Sam3TrackerVideoModel(cfg).save_pretrained(directory)
    Sam3TrackerVideoProcessor(image_processor=Sam2ImageProcessor(size={"height": img, "width": img}),
                              video_processor=Sam2VideoVideoProcessor(size={"height": img, "width": img}),
                              target_size=img).save_pretrained(directory)
    return directory


_built: dict[str, Path] = {}
VIDEO_BUILDERS = {"sam2": build_tiny_sam2_video, "sam3": build_tiny_sam3_tracker_video}


def tiny_video_model(tmp_path_factory, kind: str = "sam2") -> str:
    """The session's tiny video tracker checkpoint of `kind` (sam2, sam3), built on first use."""
    if kind not in _built:
        _built[kind] = VIDEO_BUILDERS[kind](tmp_path_factory.mktemp(f"tiny_{kind}_video"))
    return str(_built[kind])


def photo(h: int = 96, w: int = 128) -> np.ndarray:
    """A real photo (from examples/), resized, RGB."""
    import cv2

    first = sorted(p for p in PHOTO.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    bgr = cv2.imread(str(first))
    return cv2.cvtColor(cv2.resize(bgr, (w, h)), cv2.COLOR_BGR2RGB)


def shape_box(i: int, n: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Where the moving square is on frame i of n: left to right across the frame."""
    side = max(8, h // 4)
    x0 = int(round((w - side) * i / max(1, n - 1)))
    y0 = (h - side) // 2
    return x0, y0, x0 + side, y0 + side


def clip_frames(n: int, h: int = 96, w: int = 128) -> list[np.ndarray]:
    base = photo(h, w)
    frames = []
    for i in range(n):
        frame = base.copy()
        x0, y0, x1, y1 = shape_box(i, n, h, w)
        frame[y0:y1, x0:x1] = (230, 30, 30)
        frames.append(frame)
    return frames


def write_clip(path: Path, n: int = 12, fps: float = 10.0, h: int = 96, w: int = 128) -> Path:
    """An .avi (MJPG: every frame a keyframe, exact frame counts) or .mp4 (mp4v) clip."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
    assert writer.isOpened(), path
    for frame in clip_frames(n, h, w):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_frames(folder: Path, n: int = 8, h: int = 96, w: int = 128) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(clip_frames(n, h, w)):
        Image.fromarray(frame).save(folder / f"frame{i + 1}.png")
    return folder


# -- keyframe answers and run settings -----------------------------------------------------
def keyframe_answers(backend: VlmSamBackend, boxes_per_keyframe) -> list:
    """The real generate runs; its answer is replaced by given boxes on given keyframes.
    `boxes_per_keyframe(state)` -> [(keyframe number from 1, label, box in the model's frame)]."""
    reason = backend._reason
    chats = []

    def fixed(states, t):
        out = []
        for state, reasoned in zip(states, reason(states, t)):
            chats.append(backend.steps([state], t)[0].chat)
            targets = tuple(ParsedTarget(k, label, label, box) for k, label, box in boxes_per_keyframe(state))
            out.append(_Reasoned(ParsedAnswer("fixed", targets, ()), getattr(reasoned, "raw", "{}"),
                                 [1.0] * len(targets)))
        return out

    backend._reason = fixed
    return chats


def model_box(state, k: int, box) -> tuple:
    """`box` (original pixels) on keyframe k (from 1) in the model's coordinates."""
    return tuple(int(v) for v in state.frames[k - 1].box_from_original(np.asarray(box, np.float64)))


def video_config_dict(data, out, vlm, tracker) -> dict:
    """RunConfig fields of a two-keyframe multi-target run (plain values: a subprocess script builds it too)."""
    return dict(input=Path(data), out=Path(out), prompt=["multi-target"], var={"targets": "square, cat"},
                model=str(vlm), mask_model=str(tracker), device="cpu", max_new_tokens=400, quiet=True,
                backend_option={"answer_limits": LIMITS}, keyframes=2)
