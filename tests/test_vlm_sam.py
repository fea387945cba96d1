"""The vlm-sam backend with tiny random Qwen2.5-VL / Qwen3-VL checkpoints loaded from disk.

The reasoning stage runs for real (processor, generate, xgrammar); the mask head is a test double
that fills each box, so these tests see exactly which prompts reached it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autolabel.backends import mask_heads
from autolabel.backends.answer_schema import InvalidAnswer
from autolabel.backends.base import BackendOptions, Request
from autolabel.backends.chat import PastTurn, draw_images, mask_box
from autolabel.backends.local_reasoner import snapshot_revision
from autolabel.backends.vlm_sam import VlmSamBackend, _exemplar_box
from autolabel.groups import ImageGroup, ImageRef, VisualPrompt
from autolabel.templates import AnswerRules, Template, TurnSpec, render
from tests.tiny_vlm import FAMILIES, tiny_vlm

SMALL = {"explanation": 16, "label": 8, "phrase": 8, "reason": 8, "points": 2}


class BoxMaskHead:
    """Test double of a MaskHead: each box becomes a filled mask; counts distinct encoded images."""

    model_id = source = "test/box-mask-head"

    def __init__(self):
        self.calls: list[list] = []
        self._seen: set = set()
        self.encoder_calls = 0

    def predict(self, prompt_sets):
        self.calls.append(prompt_sets)
        results = []
        for ps in prompt_sets:
            if ps.image_key not in self._seen:
                self._seen.add(ps.image_key)
                self.encoder_calls += 1
            h, w = ps.image.shape[:2]
            masks = np.zeros((len(ps.boxes), h, w), bool)
            for k, (x0, y0, x1, y1) in enumerate(ps.boxes):
                masks[k, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            results.append(mask_heads.MaskResult(masks=masks, scores=np.full(len(ps.boxes), 0.8)))
        return results


@pytest.fixture
def make_backend(tmp_path_factory, monkeypatch):
    heads: list[BoxMaskHead] = []

    def load(model, **kwargs):
        heads.append(BoxMaskHead())
        return heads[-1]

    monkeypatch.setattr(mask_heads, "load_mask_head", load)

    def make(family="qwen2_5_vl", max_new_tokens=400, **extra) -> VlmSamBackend:
        options = BackendOptions(model=str(tiny_vlm(family, tmp_path_factory)), device="cpu",
                                 max_new_tokens=max_new_tokens, extra={"answer_limits": SMALL, **extra})
        return VlmSamBackend(options)

    return make


def _request(tmp_path: Path, gid: str, sizes, template: Template, seed=0, prompts=None) -> Request:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    refs = tuple(ImageRef(f"{gid}/img{i}.png", tmp_path / f"img{i}.png", prompt=(prompts or {}).get(i))
                 for i in range(len(sizes)))
    group = ImageGroup(gid, tmp_path, refs)
    return Request(f"{gid}|{template.name}|m", group, images,
                   render(template, n_images=len(sizes), group_id=gid))


MUG = Template(name="mug", turns=["Which image shows the mug?"], ontology=["mug", "cup=mug", "plate"],
               answer=AnswerRules(max_targets=2))


def _check_answer(answer, request):
    for turn in answer.turns:
        for m in turn.masks:
            assert m.image + 1 in request.prompt.allowed_images
            assert m.label in request.prompt.ontology and m.category == request.prompt.ontology[m.label]
            assert m.mask.shape == request.images[m.image].shape[:2] and m.mask.dtype == bool
            assert 0.0 <= m.score <= 0.8 + 1e-6
        assert all(r.label in request.prompt.ontology for r in turn.rejected)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampled_answers_parse_for_many_seeds(make_backend, tmp_path, family):
    backend = make_backend(family, generate={"do_sample": True, "temperature": 1.5})
    requests = [_request(tmp_path, "g1", [(40, 60), (56, 30)], MUG),
                _request(tmp_path, "g2", [(32, 32), (64, 48), (30, 70)],
                         MUG.model_copy(update={"answer": AnswerRules(images="others", max_targets=2)}))]
    n_targets = 0
    for seed in range(6):
        torch.manual_seed(seed)
        answers = backend.predict(requests)
        for answer, request in zip(answers, requests):
            _check_answer(answer, request)
            n_targets += len(answer.turns[0].masks)
            # SAM's 0.8 times the random model's low token probabilities
            assert all(0 < m.score < 0.4 for m in answer.turns[0].masks)
    assert n_targets > 0  # the random model did name targets, so boxes went through the mask head
    assert backend.mask_head.encoder_calls <= 5  # each (group, file) encoded once across seeds


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_one_by_one(make_backend, tmp_path, family):
    backend = make_backend(family)
    requests = [_request(tmp_path, "a", [(40, 60)], MUG, seed=1),
                _request(tmp_path, "b", [(56, 30), (33, 47)], MUG, seed=2),
                _request(tmp_path, "c", [(64, 64), (30, 80), (45, 45)], MUG, seed=3)]
    batched = backend.predict(requests)
    for request, answer in zip(requests, batched):
        alone = backend.predict([request])[0]
        got, want = answer.turns[0], alone.turns[0]
        assert got.answer == want.answer
        assert [(m.image, m.label, m.phrase) for m in got.masks] == [(m.image, m.label, m.phrase) for m in want.masks]
        assert all((a.mask == b.mask).all() for a, b in zip(got.masks, want.masks))
        np.testing.assert_allclose([m.score for m in got.masks], [m.score for m in want.masks], atol=1e-3)


def test_out_of_tokens_fails_that_request_only(make_backend, tmp_path, monkeypatch):
    backend = make_backend(max_new_tokens=400)
    one = Template(name="one", turns=["Find it."], ontology=["mug"],
                   answer=AnswerRules(multiple_targets=False, allow_rejection=False))
    requests = [_request(tmp_path, "s", [(40, 40)], one), _request(tmp_path, "l", [(40, 40), (40, 60)], MUG)]
    lengths = []  # tokens each answer takes alone (greedy, so the same on every run)
    generate = backend.reasoner.model.generate
    monkeypatch.setattr(backend.reasoner.model, "generate",
                        lambda **kw: lengths.append((out := generate(**kw)).shape[1] - kw["input_ids"].shape[1]) or out)
    for request in requests:
        backend.predict([request])
    short, long = sorted(range(2), key=lambda i: lengths[i])
    assert lengths[long] > lengths[short] + 1
    backend.options.max_new_tokens = lengths[short] + 1
    answers = backend.predict(requests)  # the batch goes on: only the cut answer fails, in its place
    assert answers[short].turns[0].answer is not None
    assert isinstance(answers[long], InvalidAnswer)
    assert f"max_new_tokens={lengths[short] + 1}" in str(answers[long]) and "did not complete" in str(answers[long])
    assert answers[long].raw and answers[long].raw[:20] in str(answers[long])  # the error line shows what it wrote


def test_multi_round_sees_earlier_boxes_and_visual_prompts(make_backend, tmp_path, monkeypatch):
    backend = make_backend()
    template = Template(name="rounds", turns=["Find the mug.", TurnSpec(text="Now the plate.", draw_previous=True)],
                        ontology=["mug", "plate"], answer=AnswerRules(multiple_targets=False, allow_rejection=False),
                        visual_prompt=True)
    exemplar = VisualPrompt(boxes=((10.0, 5.0, 40.0, 30.0),), points=((20.0, 15.0),), point_labels=(1,), label="mug")
    request = _request(tmp_path, "r", [(48, 64), (60, 40)], template, prompts={0: exemplar})
    seen: list[str] = []
    apply = backend.reasoner.processor.apply_chat_template
    monkeypatch.setattr(backend.reasoner.processor, "apply_chat_template",
                        lambda *a, **k: seen.append(apply(*a, **k)) or seen[-1])
    answer = backend.predict([request])[0]

    assert len(answer.turns) == 2 and [len(t.masks) for t in answer.turns] == [1, 1]
    assert [t.masks[0].round for t in answer.turns] == [0, 1]
    frame = backend.frames(request.images)[0]
    exemplar_text = f"Image 1 has a marked exemplar (mug), drawn in red: box {frame.box_from_original(exemplar.boxes[0])}"
    assert exemplar_text in seen[0] and exemplar_text in seen[1]
    assert "Round 1" not in seen[0]
    h, w = frame.model_input  # each image follows its label, which gives the size coordinates refer to
    assert seen[0].index(f"Image 1 ({w}x{h} pixels):<|vision_start|>") < seen[0].index("Image 2 (")
    first = answer.turns[0].masks[0]
    box = backend.frames(request.images)[first.image].box_from_original(mask_box(first.mask))
    assert f"Round 1 found: {first.label} in Image {first.image + 1} at {box}" in seen[1]
    assert seen[1].index("Find the mug.") < seen[1].index('{"explanation": ') < seen[1].index("Round 1 found")


def test_drawn_overlays_mark_exemplars_and_earlier_segments(make_backend, tmp_path):
    template = Template(name="d", turns=["a", TurnSpec(text="b", draw_previous=True)])
    exemplar = VisualPrompt(boxes=((10.0, 5.0, 40.0, 30.0),))
    request = _request(tmp_path, "d", [(48, 64), (60, 40)], template, prompts={0: exemplar})
    from autolabel.backends.base import TargetMask, TurnAnswer

    mask = np.zeros((60, 40), bool)
    mask[10:30, 5:25] = True
    past = [PastTurn(TurnAnswer("a", "x", [TargetMask(1, "thing", "thing", "t", mask, 0.9)]), "{}")]
    plain = draw_images(request.images, request.group, past, draw_previous=False)
    drawn = draw_images(request.images, request.group, past, draw_previous=True)
    assert (plain[0][5, 10:41] == [255, 0, 0]).all()  # the exemplar box's top edge, in red
    assert plain[1] is request.images[1]  # nothing to draw: the original goes to the model
    assert not np.array_equal(drawn[1], request.images[1]) and (drawn[1][10, 5:25] == [0, 200, 255]).all()


def test_exemplar_box_replaces_a_matching_model_box():
    vp = VisualPrompt(boxes=((10.0, 10.0, 50.0, 50.0),))
    np.testing.assert_allclose(_exemplar_box(np.array([12.0, 9.0, 49.0, 52.0]), vp), [10, 10, 50, 50])
    np.testing.assert_allclose(_exemplar_box(np.array([60.0, 60.0, 90.0, 90.0]), vp), [60, 60, 90, 90])
    np.testing.assert_allclose(_exemplar_box(np.array([1.0, 2.0, 3.0, 4.0]), None), [1, 2, 3, 4])


def test_model_info_and_relative_frame_for_qwen3(make_backend):
    backend = make_backend("qwen3_vl")
    info = backend.model_info()
    assert info["model_type"] == "qwen3_vl" and info["coordinates"] == "relative-1000"
    assert info["mask_model"] == BoxMaskHead.model_id and info["revision"] is None
    backend.close()
    assert backend.model_info() == info
    assert snapshot_revision("/c/hub/models--Qwen--X/snapshots/0123abcd") == "0123abcd"


def test_missing_model_offline_is_one_clear_message(monkeypatch, tmp_path):
    from autolabel.errors import ModelNotAvailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailable, match="nobody/no-such-vlm"):
        VlmSamBackend(BackendOptions(model="nobody/no-such-vlm", device="cpu"))


def test_engine_run_with_the_tiny_vlm(make_backend, tmp_path, tmp_path_factory):
    """`autolabel run`'s engine: every group gets a record; one that runs out of tokens fails alone."""
    from dataclasses import replace

    from autolabel.config import RunConfig
    from autolabel.engine import Engine
    from autolabel.store import read_predictions
    from tests.conftest import make_groups

    template = tmp_path / "pets.yaml"
    template.write_text("name: pets\nturns: ['Segment the {{ targets }}.']\nontology: '{{ targets }}'\n"
                        "variables: {targets: 'cat, dog'}\nanswer: {max_targets: 2}\n")
    model = str(tiny_vlm("qwen2_5_vl", tmp_path_factory))
    config = RunConfig(input=make_groups(tmp_path / "data", 3), out=tmp_path / "run", prompt=[str(template)],
                       model=model, batch_size=2, quiet=True, max_new_tokens=400)
    summary = Engine(config, backend_factory=lambda o: VlmSamBackend(
        replace(o, device="cpu", extra={"answer_limits": SMALL}))).run()
    assert summary.exit_code == 0 and summary.done == 3
    preds = list(read_predictions([config.out]))
    assert [p.status for p in preds] == ["ok"] * 3 and all(p.model == model for p in preds)
    for p in preds:
        for s in p.turns[0].segments:
            assert s.category in ("cat", "dog") and s.rle["size"] == [p.images[s.image].height, p.images[s.image].width]
