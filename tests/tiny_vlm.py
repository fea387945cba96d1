"""Tiny random Qwen2.5-VL / Qwen3-VL checkpoints, built offline and saved like hub checkpoints.

Tests load them through the backend's real `from_pretrained` path. Sizes: ~0.2M parameters,
~1 MB on disk; an image of ~50x60 pixels becomes a handful of vision tokens.
"""

from __future__ import annotations

from pathlib import Path

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                 "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# The Qwen-VL chat layout, reduced to what the backend uses (system/user/assistant, list content).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
_built: dict[str, Path] = {}


def qwen_tokenizer(words: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with Qwen's special tokens, built from an in-memory vocab.

    Each of `words` becomes one token (merged letter by letter, with and without a leading space),
    as a real vocabulary would have it.
    """
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(sorted(bytes_to_unicode().values(), key=ord))}
    # the words' merges first (after a space, then alone): a merge ranked earlier would split them
    spellings = [prefix + word for prefix in ("Ġ", "") for word in words]
    pairs = [(spelled[:k], spelled[k]) for spelled in spellings for k in range(1, len(spelled))]
    pairs += [("t", "h"), ("th", "e"), ("Ġ", "th"), ("Ġth", "e"), ("i", "n"), ("Ġ", "a")]
    merges = []
    for a, b in dict.fromkeys(pairs):
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_vlm(family: str, directory: Path, seed: int = 0, scale: str = "tiny") -> Path:
    """Save a random tiny `family` model + processor (with its video processor) to `directory`.

    `scale="base"` (qwen2_5_vl only) gives the layer sizes of Qwen2.5-VL-3B's vision tower and a
    0.5B-class language model, still random, saved in bf16: for GPU benchmarks, where compute and
    memory should look like a real checkpoint's. `scale="served"` (qwen2_5_vl only) is the tiny model
    with head_dim 32, the smallest vLLM's CPU attention accepts, and images up to 448x448 pixels (256
    visual tokens), for the serving-engine tests and benchmark."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3VLConfig,
                              Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor)

    torch.manual_seed(seed)
    tok = qwen_tokenizer()
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in {
        "image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}.items()}
    text = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64 * 4}  # few patches per image
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    if scale == "base":
        text.update(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2)
        size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}  # up to 256 visual tokens per image
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=896)
    sections = [2, 3, 3]  # mrope sections sum to head_dim / 2
    if scale == "served":
        text.update(num_attention_heads=2, num_key_value_heads=1)
        sections = [4, 6, 6]
        size = {"shortest_edge": 32 * 32, "longest_edge": 448 * 448}  # up to 256 visual tokens per image
    if family == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6,
                                   "mrope_section": [8, 12, 12] if scale == "base" else sections}
        config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(
            vision, fullatt_block_indexes=[7, 15, 23, 31] if scale == "base" else [1], window_size=112 if scale == "base"
            else 56, patch_size=14), **ids)
        model = Qwen2_5_VLForConditionalGeneration(config)
        processor = Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, size=size),
            tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    elif family == "qwen3_vl":
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5e5,
                                                  "mrope_section": [4, 2, 2], "mrope_interleaved": True})
        config = Qwen3VLConfig(text_config=text, vision_config=dict(
            vision, patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[0]), **ids)
        model = Qwen3VLForConditionalGeneration(config)
        processor = Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size,
                                                  image_mean=[0.5] * 3, image_std=[0.5] * 3),
            tokenizer=tok, video_processor=Qwen3VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    else:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    if scale == "base":
        model = model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def tiny_vlm(family: str, tmp_path_factory) -> Path:
    """The session's checkpoint of `family`, built on first use."""
    if family not in _built:
        _built[family] = build_tiny_vlm(family, tmp_path_factory.mktemp(f"tiny_{family}"))
    return _built[family]
