"""Mask heads with tiny random checkpoints loaded through the real loading code."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from tiny_sam import save_tiny_segment_anything, tiny_mask_model

from autolabel.backends.loading import pick_dtype, resolve_pretrained
from autolabel.backends.mask_heads import PromptSet, load_mask_head
from autolabel.errors import AutolabelError, ModelNotAvailable

KINDS = ["sam", "sam2", "pth"]


@pytest.fixture(scope="module", params=KINDS)
def head(request, tmp_path_factory):
    return load_mask_head(tiny_mask_model(request.param, tmp_path_factory), device="cpu", dtype=torch.float32)


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_masks_at_original_size_ragged_boxes_and_empty(head):
    a, b = image(90, 160), image(200, 100, 1)
    sets = [PromptSet("a", a, boxes=np.array([[10, 10, 80, 60], [0, 0, 500, 500]], float)),
            PromptSet("b", b, boxes=np.array([[5, 5, 50, 150]], float)),
            PromptSet("c", image(30, 40), boxes=np.zeros((0, 4)))]
    ra, rb, rc = head.predict(sets)
    assert ra.masks.shape == (2, 90, 160) and ra.masks.dtype == bool and rb.masks.shape == (1, 200, 100)
    assert rc.masks.shape == (0, 30, 40) and rc.scores.shape == (0,)
    assert ((ra.scores >= 0) & (ra.scores <= 1)).all()


def test_each_image_is_encoded_once_and_cached_results_match(head):
    img = image(64, 96, 3)
    box = np.array([[4, 4, 60, 40]], float)
    first = head.predict([PromptSet(("g", "x.png"), img, boxes=box)])[0]
    calls = head.encoder_calls
    again = head.predict([PromptSet(("g", "x.png"), img, boxes=box),
                          PromptSet(("g", "x.png"), img, boxes=np.array([[1, 1, 20, 20]], float))])
    assert head.encoder_calls == calls, "a cached image must not be encoded again"
    assert (again[0].masks == first.masks).all() and np.allclose(again[0].scores, first.scores)


def test_batch_equals_one_by_one(head):
    imgs = [image(50 + 10 * i, 70, 10 + i) for i in range(3)]
    boxes = [np.array([[2, 2, 40, 30 + i]], float) for i in range(3)]
    batched = head.predict([PromptSet(("batch", i), im, boxes=b) for i, (im, b) in enumerate(zip(imgs, boxes))])
    single = [head.predict([PromptSet(("single", i), im, boxes=b)])[0] for i, (im, b) in enumerate(zip(imgs, boxes))]
    for x, y in zip(batched, single):
        assert (x.masks == y.masks).all()


def test_points_with_boxes(head):
    r = head.predict([PromptSet("p", image(64, 64), boxes=np.array([[5, 5, 50, 50]], float),
                                points=np.array([[[20, 20], [30, 30]]], float), point_labels=np.array([[1, 0]]))])[0]
    assert r.masks.shape == (1, 64, 64)


def test_text_prompts_need_a_text_model(head):
    with pytest.raises(NotImplementedError, match="not text"):
        head.segment_text("k", image(8, 8), ["cat"])


def test_pth_loading_is_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "sam_vit_b_evil.pth"
    bad.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(pickle.UnpicklingError):
        load_mask_head(str(bad), device="cpu", dtype=torch.float32)
    good = save_tiny_segment_anything(tmp_path / "model.pth")
    with pytest.raises(AutolabelError, match="cannot tell the SAM variant"):
        load_mask_head(str(good), device="cpu", dtype=torch.float32)
    with pytest.raises(ModelNotAvailable, match="not found"):
        load_mask_head(str(tmp_path / "missing_vit_b.pth"), device="cpu", dtype=torch.float32)


def test_missing_hub_model_offline_names_model_and_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotAvailable) as e:
        resolve_pretrained("facebook/sam-vit-base")
    assert "facebook/sam-vit-base" in str(e.value) and str(tmp_path / "cache") in str(e.value)
    assert "hf download" in str(e.value)
    with pytest.raises(ModelNotAvailable, match="no such directory"):
        resolve_pretrained("./not/a/dir/here")


def test_cached_hub_model_is_found_offline(tmp_path, monkeypatch, tmp_path_factory):
    """A model in the HF cache layout (models--org--name/snapshots/REV) loads with no network."""
    import shutil

    import huggingface_hub.constants as c

    cache = tmp_path / "cache"
    snap = cache / "models--tiny--sam" / "snapshots" / "abc123"
    shutil.copytree(tiny_mask_model("sam", tmp_path_factory), snap)
    (cache / "models--tiny--sam" / "refs").mkdir()
    (cache / "models--tiny--sam" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    assert resolve_pretrained("tiny/sam") == str(snap)
    head = load_mask_head("tiny/sam", device="cpu", dtype=torch.float32)
    assert head.predict([PromptSet("k", image(20, 20), boxes=np.array([[1, 1, 10, 10]], float))])[0].masks.shape == (1, 20, 20)


def test_dtype_choice():
    assert pick_dtype(None, "cpu") == torch.float32 and pick_dtype(None, "cuda") == torch.bfloat16
    assert pick_dtype("fp16", "cpu") == torch.float16
    with pytest.raises(AutolabelError, match="--dtype"):
        pick_dtype("int3", "cpu")


def test_sam3_segments_every_instance_of_a_phrase_with_cached_vision(tmp_path_factory):
    head = load_mask_head(tiny_mask_model("sam3", tmp_path_factory), device="cpu", dtype=torch.float32)
    head.threshold = 0.0  # random weights score low; keep every query so the masks can be checked
    img = image(60, 90, 5)
    cat, dog = head.segment_text(("g", "a.png"), img, ["cat", "dog"])
    assert cat.masks.shape[1:] == (60, 90) and cat.masks.dtype == bool and len(cat.masks) == len(cat.scores) > 0
    assert ((cat.scores >= 0) & (cat.scores <= 1)).all()
    head.segment_text(("g", "a.png"), img, ["mug"])
    assert head.encoder_calls == 1
    with pytest.raises(NotImplementedError, match="prompted by text"):
        head.predict([PromptSet("x", img, boxes=np.array([[1, 1, 5, 5]], float))])
