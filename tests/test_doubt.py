"""Doubt, by hand: each part on masks small enough to count, then how they combine and order."""

from __future__ import annotations

import numpy as np
import pytest

from autolabel.review.doubt import (ImageAnswers, Label, Mask, combine, conflict_part, disagreement_part, label_parts,
                                    mask_iou, rejection_conflict, sample_doubt, shape_part)


def square(x: int, y: int, side: int, size: int = 100) -> Mask:
    full = np.zeros((size, size), bool)
    full[y:y + side, x:x + side] = True
    return Mask.of(full)


def test_mask_iou_counts_pixels():
    a, b = square(0, 0, 2), square(1, 1, 2)  # 4 + 4 pixels, 1 shared
    assert mask_iou(a, b) == pytest.approx(1 / 7)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, square(50, 50, 2)) == 0.0
    assert mask_iou(square(0, 0, 10), square(0, 5, 10)) == pytest.approx(50 / 150)


def test_shape_tiny_huge_and_fragmented():
    image = 100 * 100  # 0.1% of it is 10 pixels
    assert shape_part(square(10, 10, 20), image) == 0.0  # 400 px, one piece: nothing odd
    line = np.zeros((100, 100), bool)
    line[5, 10:15] = True  # 5 px: half of the 10 px "tiny" mark
    assert shape_part(Mask.of(line), image) == pytest.approx(0.5)
    assert shape_part(Mask(0, 0, np.zeros((0, 0), bool)), image) == 1.0  # no pixel at all
    huge = np.ones((100, 100), bool)
    huge[:10] = False  # 9,000 px = 90% of the image: halfway from 80% to 100%
    assert shape_part(Mask.of(huge), image) == pytest.approx(0.5)
    pieces = np.zeros((100, 100), bool)
    pieces[0:5, 0:6] = True  # 30 px
    pieces[50:52, 50:55] = True  # 10 px, apart: the largest piece is 30 of 40
    assert shape_part(Mask.of(pieces), image) == pytest.approx(0.25)


def test_disagreement_is_the_mean_over_the_answers_of_one_minus_the_best_iou():
    """This answer counts as one that agrees with itself: two answers that differ share the blame."""
    mine = square(0, 0, 10)
    a = [square(0, 5, 10), square(60, 60, 10)]  # best IoU 1/3 (the other mask misses)
    b = [square(0, 0, 10)]  # the same mask: IoU 1
    assert disagreement_part(mine, [a]) == pytest.approx((2 / 3) / 2)
    assert disagreement_part(mine, [a, b]) == pytest.approx((2 / 3 + 0) / 3)
    assert disagreement_part(mine, [[], []]) == 0.0  # nobody else found the category


def test_conflict_and_combine():
    # the share of the answers (this one included) that say otherwise
    assert conflict_part(1, 1) == pytest.approx(1 / 3) and conflict_part(0, 3) == 0.0
    assert conflict_part(2, 0) == pytest.approx(2 / 3) and conflict_part(1, 0) == 0.5 and conflict_part(0, 0) == 0.0
    # 1 - 0.9 x (1 - 0.5) x 1 x 1
    assert combine({"score": 0.1, "disagreement": 0.5}) == pytest.approx(0.55)
    assert combine({"score": 0.1, "disagreement": 0.0, "conflict": 0.0, "shape": 0.0}) == pytest.approx(0.1)
    assert combine({"score": 0.0, "conflict": 1.0}) == 1.0


def test_parts_of_labels_from_three_templates_and_the_order_they_give():
    """Three answers about one 100x100 image: A and B agree on a cat, C's cat is off by half;
    C found a dog that A rejected; B rejected the bird A found."""
    image = ImageAnswers(area=100 * 100)
    cat_a = Label("A", "cat", square(0, 0, 10), 0.9)
    cat_b = Label("B", "cat", square(0, 0, 10), 0.8)
    cat_c = Label("C", "cat", square(0, 5, 10), 0.95)
    dog_c = Label("C", "dog", square(40, 40, 10), 0.9)
    bird_a = Label("A", "bird", square(70, 70, 10), 0.6)
    image.labels = [cat_a, cat_b, cat_c, dog_c, bird_a]
    image.rejected = {"A": {"dog"}, "B": {"bird"}}

    parts = label_parts(cat_a, image)  # B agrees (IoU 1), C overlaps 1/3: (0 + 2/3) / 3
    assert parts == pytest.approx({"score": 0.1, "disagreement": 2 / 9, "conflict": 0.0, "shape": 0.0})
    assert combine(parts) == pytest.approx(1 - 0.9 * 7 / 9)  # 0.3
    assert label_parts(cat_b, image)["disagreement"] == pytest.approx(2 / 9)
    assert label_parts(cat_c, image)["disagreement"] == pytest.approx(4 / 9)  # off from both A and B
    assert combine(label_parts(cat_c, image)) == pytest.approx(1 - 0.95 * 5 / 9)  # 0.4722
    dog = label_parts(dog_c, image)  # A rejected it, nobody else found it: 1 of 2 answers against
    assert dog == pytest.approx({"score": 0.1, "disagreement": 0.0, "conflict": 0.5, "shape": 0.0})
    assert combine(dog) == pytest.approx(0.55)
    bird = label_parts(bird_a, image)  # B rejected it
    assert bird["conflict"] == 0.5 and combine(bird) == pytest.approx(1 - 0.6 * 0.5)

    # the rejecting side: A rejected the dog C found; B rejected the bird A found
    assert rejection_conflict("A", "dog", image) == 0.5
    assert rejection_conflict("B", "bird", image) == 0.5
    assert rejection_conflict("B", "fish", image) == 0.0

    a = sample_doubt([cat_a, bird_a], {"dog"}, "A", image)
    b = sample_doubt([cat_b], {"bird"}, "B", image)
    c = sample_doubt([cat_c, dog_c], set(), "C", image)
    assert [round(d, 4) for d, _ in a.labels] == [0.3, 0.7]
    assert a.doubt == pytest.approx(0.7) and a.parts["conflict"] == 0.5 and a.parts["score"] == pytest.approx(0.4)
    assert b.labels[0][0] == pytest.approx(1 - 0.8 * 7 / 9)  # its cat: 0.3778
    assert b.doubt == 0.5  # its rejection of the bird is contradicted by A
    assert c.doubt == pytest.approx(0.55)  # the dog
    assert [name for name, _ in sorted([("A", a.doubt), ("B", b.doubt), ("C", c.doubt)], key=lambda x: -x[1])] == \
        ["A", "C", "B"]
    # the cats alone: C's (off from both) first, then B's (less sure than A)
    cats = [("A", a.labels[0][0]), ("B", b.labels[0][0]), ("C", c.labels[0][0])]
    assert [name for name, _ in sorted(cats, key=lambda x: -x[1])] == ["C", "B", "A"]
    assert sample_doubt([], set(), "D", image).doubt == 0.0
    assert sample_doubt([], set(), "D", image, failed=True).doubt == 1.0
