"""Coordinates per VLM family, checked against what each processor really does to an image."""

from __future__ import annotations

import numpy as np
import pytest

from autolabel.backends.vlm_coords import (CoordinateFrame, ImageFrame, coordinate_frame, grid_input_sizes,
                                           model_input_size, processed_size)
from autolabel.errors import AutolabelError

SIZES = [(37, 91), (200, 120), (64, 64), (480, 640), (17, 400), (1080, 1920)]  # (height, width)


def _processors():
    """The tiny test processors and the released checkpoints' pixel budgets, for both families."""
    from transformers import Qwen2VLImageProcessor

    return {
        "qwen2.5-vl tiny": Qwen2VLImageProcessor(patch_size=14, merge_size=2, size={"shortest_edge": 1024,
                                                                                      "longest_edge": 16384}),
        "qwen2.5-vl release": Qwen2VLImageProcessor(patch_size=14, merge_size=2, size={
            "shortest_edge": 3136, "longest_edge": 12845056}),
        "qwen3-vl release": Qwen2VLImageProcessor(patch_size=16, merge_size=2, size={
            "shortest_edge": 65536, "longest_edge": 16777216}),
        "qwen3-vl small budget": Qwen2VLImageProcessor(patch_size=16, merge_size=2, size={
            "shortest_edge": 4096, "longest_edge": 65536}),
    }


@pytest.mark.parametrize("name", list(_processors()))
def test_model_input_size_is_what_the_processor_really_does(name):
    processor = _processors()[name]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in SIZES[:4]]
    if "small" in name or "tiny" in name:  # big images only where the pixel budget keeps it fast
        images += [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in SIZES[4:]]
    grid = processor(images=images, return_tensors="pt")["image_grid_thw"]
    real = grid_input_sizes(grid, processor.patch_size)
    predicted = [model_input_size(processor, *im.shape[:2]) for im in images]
    assert predicted == real
    factor = processor.patch_size * processor.merge_size
    assert all(h % factor == 0 and w % factor == 0 for h, w in real)


def test_families_and_override():
    assert coordinate_frame("qwen2_5_vl") is CoordinateFrame.PIXELS
    assert coordinate_frame("qwen3_vl") is CoordinateFrame.RELATIVE_1000
    assert coordinate_frame("qwen2_vl") is CoordinateFrame.RELATIVE_1000
    assert coordinate_frame("some_new_vlm") is CoordinateFrame.PIXELS  # documented default
    assert coordinate_frame("qwen2_5_vl", "relative-1000") is CoordinateFrame.RELATIVE_1000
    with pytest.raises(AutolabelError, match="coordinates='percent'"):
        coordinate_frame("qwen2_5_vl", "percent")


def test_pixel_frame_scales_from_the_resized_input():
    frame = ImageFrame(CoordinateFrame.PIXELS, original=(480, 640), model_input=(476, 644))
    assert frame.box_to_original([0, 0, 644, 476]).tolist() == [0, 0, 640, 480]
    np.testing.assert_allclose(frame.box_to_original([322, 238, 161, 119]), [160, 120, 320, 240])  # reordered
    assert frame.box_to_original([-5, 10, 900, 900]).tolist()[2:] == [640, 480]  # clipped
    assert frame.coord_max == 644
    assert frame.box_from_original([160, 120, 320, 240]) == [161, 119, 322, 238]


def test_relative_frame_is_per_mille_of_each_side():
    frame = ImageFrame(CoordinateFrame.RELATIVE_1000, original=(300, 200), model_input=(308, 196))
    np.testing.assert_allclose(frame.box_to_original([250, 500, 1000, 1000]), [50, 150, 200, 300])
    np.testing.assert_allclose(frame.to_original(np.array([[500, 100]])), [[100, 30]])
    assert frame.box_from_original([50, 150, 200, 300]) == [250, 500, 1000, 1000]
    assert frame.coord_max == 1000


@pytest.mark.parametrize("name", ["qwen2.5-vl tiny", "qwen3-vl small budget"])
def test_tiny_and_thin_images_get_the_processors_own_size(name):
    """Told the layout, the processor reads a 1-pixel-high image as one (left to guess, it takes a
    1 x W x 3 array for channels-first and resized a 1x1 image to 28x56)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    processor = _processors()[name]
    factor = processor.patch_size * processor.merge_size
    size = processor.size
    for h, w in [(1, 1), (1, 56), (3, 40), (2, 300), (300, 2), (3, 3)]:
        got = processed_size(processor, np.full((h, w, 3), 200, np.uint8))
        assert got == smart_resize(h, w, factor, size["shortest_edge"], size["longest_edge"]), (h, w)
    with pytest.raises(ValueError, match="aspect ratio"):
        processed_size(processor, np.zeros((1, 4000, 3), np.uint8))


def test_server_frames_name_an_image_the_resize_rule_refuses():
    from autolabel.backends.reasoning import ImageNotAccepted
    from autolabel.backends.server_reasoner import QWEN25_IMAGE_RULE, ResizeRule, ServerReasoner

    reasoner = object.__new__(ServerReasoner)  # frames() needs only the frame and the rule
    reasoner.frame, reasoner.rule = CoordinateFrame.PIXELS, ResizeRule(**QWEN25_IMAGE_RULE)
    assert [f.model_input for f in reasoner.frames([np.zeros((1, 1, 3), np.uint8)])] == [(56, 56)]
    with pytest.raises(ImageNotAccepted) as e:
        reasoner.frames([np.zeros((40, 40, 3), np.uint8), np.zeros((4000, 1, 3), np.uint8)])
    assert e.value.index == 1 and "1x4000 pixels" in e.value.reason and "aspect ratio" in e.value.reason
