"""Mask heads with tiny random checkpoints loaded through the real loading code."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_sam import build_tiny_segment_anything, save_tiny_segment_anything, tiny_mask_model

from autolabel.backends.mask_heads import load_mask_head
from autolabel.backends.mask_heads.base import BoxPromptedHead, PromptSet, TextPromptedHead
from autolabel.errors import AutolabelError, ModelNotAvailable

BOX_HEADS = ["sam", "sam2", "pth"]


@pytest.fixture(scope="module", params=BOX_HEADS)
def model(request, tmp_path_factory) -> str:
    return tiny_mask_model(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def head(model):
    return load_mask_head(model, device="cpu", dtype=torch.float32)


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def boxes(*rows):
    return np.array(rows, float).reshape(-1, 4)


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.masks.shape == y.masks.shape and (x.masks == y.masks).all()
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)


def test_masks_at_original_size_with_ragged_boxes_and_empty_sets(head):
    sizes = [(90, 160), (200, 100), (128, 128), (30, 41)]
    sets = [PromptSet(("ragged", 0), image(*sizes[0]), boxes=boxes([10, 10, 80, 60], [0, 0, 500, 500], [70, 50, 5, 3])),
            PromptSet(("ragged", 1), image(*sizes[1], 1), boxes=boxes([5, 5, 50, 150])),
            PromptSet(("ragged", 2), image(*sizes[2], 2), boxes=np.zeros((0, 4))),
            PromptSet(("ragged", 3), image(*sizes[3], 3))]
    results = head.predict(sets)
    assert [r.masks.shape for r in results] == [(3, 90, 160), (1, 200, 100), (0, 128, 128), (0, 30, 41)]
    for r in results:
        assert r.masks.dtype == bool and r.scores.shape == r.masks.shape[:1] and r.scores.dtype == np.float32
        assert ((r.scores >= 0) & (r.scores <= 1)).all()
    assert head.predict([]) == []


def test_boxes_are_clipped_to_the_image(head):
    img = image(70, 50, 4)
    outside, inside = head.predict([PromptSet(("clip", 0), img, boxes=boxes([-40, -30, 400, 300], [30, 60, 5, 2])),
                                    PromptSet(("clip", 0), img, boxes=boxes([0, 0, 50, 70], [5, 2, 30, 60]))])
    same([outside], [inside])


def test_each_image_is_encoded_once_across_calls(head):
    img, key = image(64, 96, 3), ("g", "x.png")
    before = head.encoder_calls
    first = head.predict([PromptSet(key, img, boxes=boxes([4, 4, 60, 40]))])
    assert head.encoder_calls == before + 1
    for _ in range(3):  # e.g. several templates over the same group, one after the other
        again = head.predict([PromptSet(key, img, boxes=boxes([4, 4, 60, 40])),
                              PromptSet(key, img, boxes=boxes([1, 1, 20, 20], [3, 3, 9, 9]))])
    assert head.encoder_calls == before + 1, "a cached image must not be encoded again"
    same(first, again[:1])


def test_results_are_the_same_without_the_cache(head, model):
    uncached = load_mask_head(model, device="cpu", dtype=torch.float32, cache_size=0)
    sets = [PromptSet(("nocache", i), image(40 + 7 * i, 60, 20 + i), boxes=boxes([2, 3, 30, 30 + i])) for i in range(2)]
    expected = head.predict(sets)
    same(uncached.predict(sets), expected)
    same(uncached.predict(sets), expected)
    assert uncached.encoder_calls == 4, "with no cache every call encodes"


def test_more_images_in_one_call_than_the_cache_holds(model):
    small = load_mask_head(model, device="cpu", dtype=torch.float32, cache_size=1)
    sets = [PromptSet(i, image(32, 48, i), boxes=boxes([1, 1, 20, 20])) for i in range(3)]
    assert [r.masks.shape for r in small.predict(sets)] == [(1, 32, 48)] * 3
    assert small.encoder_calls == 3
    small.predict(sets[2:])  # the most recent image stays cached
    assert small.encoder_calls == 3
    small.predict(sets[:1])  # the oldest was evicted
    assert small.encoder_calls == 4


def test_a_batch_gives_the_same_masks_as_one_by_one(head):
    imgs = [image(50 + 10 * i, 70 - 5 * i, 10 + i) for i in range(3)]
    prompts = [boxes([2, 2, 40, 30 + i], [10, 5, 60, 45])[: 1 + i % 2] for i in range(3)]
    before = head.encoder_calls
    head.max_encode_batch = 2  # 3 images: one batch of 2, one of 1
    try:
        batched = head.predict([PromptSet(("batch", i), im, boxes=b) for i, (im, b) in enumerate(zip(imgs, prompts))])
    finally:
        head.max_encode_batch = type(head).max_encode_batch
    assert head.encoder_calls == before + 3
    single = [head.predict([PromptSet(("single", i), im, boxes=b)])[0] for i, (im, b) in enumerate(zip(imgs, prompts))]
    same(batched, single)


def reference_masks(head, img, box_rows, point_rows):
    """The library's own end-to-end path (processor + model, or SamPredictor) for one image."""
    if hasattr(head, "sam"):  # segment-anything
        from segment_anything import SamPredictor

        predictor = SamPredictor(head.sam)
        predictor.set_image(img)
        masks, _, _ = predictor.predict_torch(
            torch.as_tensor(predictor.transform.apply_coords(np.array(point_rows, float), img.shape[:2])).float(),
            torch.ones(len(point_rows), len(point_rows[0]), dtype=torch.long),
            torch.as_tensor(predictor.transform.apply_boxes(np.array(box_rows, float), img.shape[:2])).float(),
            multimask_output=False)
        return masks[:, 0].numpy()
    inputs = head.processor(images=[img], input_boxes=[box_rows], input_points=[point_rows],
                            input_labels=[[[1] * len(point_rows[0])] * len(point_rows)], return_tensors="pt")
    out = head.model(**{k: v for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")},
                     multimask_output=False)
    sizes = [inputs[k] for k in ("original_sizes", "reshaped_input_sizes") if k in inputs]
    return head.processor.post_process_masks(out.pred_masks, *sizes)[0][:, 0].numpy()


def test_prompts_map_to_the_image_like_the_library_does(head):
    """Our prompt mapping (recorded resize, no re-preprocessing) equals the library's own path."""
    img = image(75, 130, 8)
    box_rows, point_rows = [[10, 5, 90, 60], [60, 30, 125, 70]], [[[40, 30]], [[100, 50]]]
    with torch.inference_mode():
        expected = reference_masks(head, img, box_rows, point_rows)
    (r,) = head.predict([PromptSet(("ref", 0), img, boxes=np.array(box_rows, float), points=np.array(point_rows, float))])
    assert r.masks.shape == expected.shape and (r.masks == expected).all()


def test_points_alone_and_with_boxes(head):
    img = image(64, 80, 6)
    with_box, alone = head.predict([
        PromptSet(("pts", 0), img, boxes=boxes([5, 5, 50, 50], [10, 10, 70, 60]),
                  points=np.array([[[20, 20], [30, 30]], [[40, 40], [12, 50]]], float),
                  point_labels=np.array([[1, 0], [1, 1]])),
        PromptSet(("pts", 0), img, points=np.array([[[20, 20]]], float))])
    assert with_box.masks.shape == (2, 64, 80) and alone.masks.shape == (1, 64, 80)


def test_malformed_prompts_are_refused_with_the_image_key(head):
    img = image(20, 20)
    with pytest.raises(ValueError, match="'bad'.*boxes"):
        head.predict([PromptSet("bad", img, boxes=np.zeros((2, 3)))])
    with pytest.raises(ValueError, match="2 boxes but 1 point sets"):
        head.predict([PromptSet("bad", img, boxes=boxes([1, 1, 5, 5], [2, 2, 6, 6]), points=np.zeros((1, 1, 2)))])


def test_half_precision_runs(model):
    """bf16 is the CUDA default; its dtype plumbing is checked here on CPU."""
    half = load_mask_head(model, device="cpu", dtype=torch.bfloat16)
    (r,) = half.predict([PromptSet("k", image(40, 56), boxes=boxes([3, 3, 30, 30]))])
    assert r.masks.shape == (1, 40, 56) and ((r.scores >= 0) & (r.scores <= 1)).all()


# -- choosing and loading a head ------------------------------------------------------------------
def test_pth_variant_from_the_file_name(tmp_path, monkeypatch):
    from segment_anything import sam_model_registry

    monkeypatch.setitem(sam_model_registry, "vit_b", build_tiny_segment_anything)  # the tiny model stands in
    pth = save_tiny_segment_anything(tmp_path / "sam_vit_b_01ec64.pth")
    head = load_mask_head(str(pth), device="cpu", dtype=torch.float32)
    assert head.source == str(pth)
    assert head.predict([PromptSet("k", image(30, 20), boxes=boxes([1, 1, 10, 10]))])[0].masks.shape == (1, 30, 20)


def test_pth_errors_name_the_problem(tmp_path, monkeypatch):
    from segment_anything import sam_model_registry

    pth = save_tiny_segment_anything(tmp_path / "model.pth")
    with pytest.raises(AutolabelError, match="cannot tell the SAM variant"):
        load_mask_head(str(pth), device="cpu", dtype=torch.float32)
    with pytest.raises(AutolabelError, match="unknown SAM variant 'vit_zz'"):
        load_mask_head(f"vit_zz:{pth}", device="cpu", dtype=torch.float32)
    monkeypatch.setitem(sam_model_registry, "vit_wide", lambda checkpoint=None: build_tiny_segment_anything(width=48))
    with pytest.raises(AutolabelError, match="does not fit the vit_wide architecture"):
        load_mask_head(f"vit_wide:{pth}", device="cpu", dtype=torch.float32)
    with pytest.raises(ModelNotAvailable, match="not found"):
        load_mask_head(str(tmp_path / "missing_vit_b.pth"), device="cpu", dtype=torch.float32)


def test_unsupported_or_incomplete_directories(tmp_path, tmp_path_factory):
    with pytest.raises(ModelNotAvailable, match="no config.json"):
        load_mask_head(str(tmp_path), device="cpu", dtype=torch.float32)
    other = shutil.copytree(tiny_mask_model("sam", tmp_path_factory), tmp_path / "clip")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "clip"}))
    with pytest.raises(AutolabelError, match="model type 'clip' is not a supported mask head"):
        load_mask_head(str(other), device="cpu", dtype=torch.float32)


# -- SAM 3: text prompts --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sam3(tmp_path_factory):
    head = load_mask_head(tiny_mask_model("sam3", tmp_path_factory), device="cpu", dtype=torch.float32)
    head.threshold = 0.0  # random weights score low; keep every query so the masks can be checked
    return head


def test_sam3_segments_each_phrase_at_the_original_size(sam3):
    img = image(60, 90, 5)
    results = sam3.segment_text(("g", "a.png"), img, ["cat", "red dog", "mug"])
    assert len(results) == 3
    for r in results:
        assert r.masks.shape[1:] == (60, 90) and r.masks.dtype == bool and len(r.masks) == len(r.scores) > 0
        assert ((r.scores >= 0) & (r.scores <= 1)).all()
    assert sam3.segment_text(("g", "a.png"), img, []) == []


def test_sam3_encodes_once_and_phrases_batch_like_single_calls(sam3):
    img = image(50, 40, 7)
    before = sam3.encoder_calls
    together = sam3.segment_text(("g", "b.png"), img, ["cat", "a red dog"])
    apart = [sam3.segment_text(("g", "b.png"), img, [p])[0] for p in ["cat", "a red dog"]]
    assert sam3.encoder_calls == before + 1
    same(together, apart)


def test_box_heads_and_the_text_head_are_different_kinds(head, sam3):
    """The backend chooses the path by type: a box head has no phrase call, SAM 3 no box call."""
    assert isinstance(head, BoxPromptedHead) and not isinstance(head, TextPromptedHead)
    assert not hasattr(head, "segment_text")
    assert isinstance(sam3, TextPromptedHead) and not isinstance(sam3, BoxPromptedHead)
    assert not hasattr(sam3, "predict")
