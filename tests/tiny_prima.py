"""Tiny random parts for PRIMA, saved the way real ones are: a CLIP vision tower with its image
processor, a Qwen2 causal LM with an offline tokenizer, and a segment-anything `.pth`."""

from __future__ import annotations

from pathlib import Path

from tiny_vlm import qwen_tokenizer

from autolabel.prima.config import SamSpec

TINY_SAM = SamSpec(img_size=128, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                   encoder_global_attn_indexes=[1], window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64,
                   decoder_num_heads=2, iou_head_hidden_dim=32)


# The synthetic task's words, one token each as in a real vocabulary: with bytes only, copying a
# name from the question takes a dozen exact steps and a tiny random LM misspells them.
TASK_WORDS = ("Image", "In", "There", "is", "no", "the", "Segment", "shape", "that", "appears", "every", "image",
              "Question", "Answer", "red", "green", "blue", "yellow", "circle", "square")


def build_tiny_parts(directory: Path, seed: int = 0) -> dict[str, str]:
    """Directories (vision, llm) and a SAM file, as `build_from_parts` takes them."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, Qwen2Config,
                              Qwen2ForCausalLM)

    from autolabel.prima.sam_decoder import build_sam

    torch.manual_seed(seed)
    vision = directory / "vision"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(vision)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(vision)

    llm = directory / "llm"
    tokenizer = qwen_tokenizer(TASK_WORDS)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                 tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                                 # with the default 0.02 the frozen tied embeddings cap every logit near 1:
                                 # a random tiny LM could never become confident, whatever LoRA learns
                                 initializer_range=0.3,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(llm)
    tokenizer.save_pretrained(llm)

    sam = directory / "sam_tiny.pth"
    torch.save(build_sam(TINY_SAM).state_dict(), sam)
    return {"vision": str(vision), "llm": str(llm), "sam": str(sam)}
