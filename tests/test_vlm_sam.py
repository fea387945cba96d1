"""The vlm-sam backend with tiny random Qwen2.5-VL / Qwen3-VL checkpoints loaded from disk.

The reasoning stage runs for real (processor, generate, xgrammar); the mask head is a test double
that fills each box, so these tests see exactly which prompts reached it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from doubles import BoxMaskHead

from autolabel.backends import mask_heads
from autolabel.backends.answer_schema import target_spans
from autolabel.backends.base import BackendOptions, Request
from autolabel.backends.chat import PastTurn, draw_images, mask_box
from autolabel.backends.local_reasoner import snapshot_revision
from autolabel.backends.vlm_sam import VlmSamBackend, _exemplar_box
from autolabel.groups import ImageGroup, ImageRef, VisualPrompt
from autolabel.templates import AnswerRules, Template, TurnSpec, render
from tests.tiny_vlm import FAMILIES, tiny_vlm

SMALL = {"explanation": 16, "label": 8, "phrase": 8, "reason": 8, "points": 2}


@pytest.fixture
def make_backend(tmp_path_factory, monkeypatch):
    heads: list[BoxMaskHead] = []

    def load(model, **kwargs):
        heads.append(BoxMaskHead())
        return heads[-1]

    monkeypatch.setattr(mask_heads, "load_mask_head", load)

    def make(family="qwen2_5_vl", max_new_tokens=400, limits=SMALL, **extra) -> VlmSamBackend:
        """limits=None, max_new_tokens=None: the defaults a user gets."""
        options = BackendOptions(model=str(tiny_vlm(family, tmp_path_factory)), device="cpu",
                                 max_new_tokens=max_new_tokens,
                                 extra={**({"answer_limits": limits} if limits else {}), **extra})
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


def test_out_of_tokens_keeps_the_completed_targets(make_backend, tmp_path, monkeypatch):
    """A budget lowered below an answer: the targets completed before the cut are kept, the turn is
    marked truncated, and neither that group nor its batch fails."""
    backend = make_backend(max_new_tokens=400)
    one = Template(name="one", turns=["Find it."], ontology=["mug"],
                   answer=AnswerRules(multiple_targets=False, allow_rejection=False))
    requests = [_request(tmp_path, "s", [(40, 40)], one), _request(tmp_path, "l", [(40, 40), (40, 60)], MUG, seed=4)]
    generated = []  # each answer alone, uncut (greedy, so the same on every run)
    reason = backend.reasoner.reason
    monkeypatch.setattr(backend.reasoner, "reason", lambda steps: generated.extend(out := reason(steps)) or out)
    full = [backend.predict([request])[0] for request in requests]
    lengths = [len(g.token_ends) for g in generated]
    short, long = sorted(range(2), key=lambda i: lengths[i])
    spans = target_spans(generated[long].text)
    assert spans and len(full[long].turns[0].masks) == len(spans)  # the long answer names targets
    # a budget that ends after the first target's object closes, before the answer does
    first_end = next(k for k, end in enumerate(generated[long].token_ends) if end >= spans[0][1]) + 1
    budget = max(first_end, lengths[short]) + 1
    assert budget < lengths[long]
    backend.options.max_new_tokens = budget
    generated.clear()
    answers = backend.predict(requests)
    cut = generated[long].text
    assert generated[long].truncated and generated[long].text == generated[long].text[:len(cut)]
    assert not answers[short].turns[0].truncated and answers[short].turns[0].answer == full[short].turns[0].answer
    kept = answers[long].turns[0]
    assert kept.truncated and len(kept.masks) == len(target_spans(cut)) >= 1
    assert [(m.image, m.label, m.phrase) for m in kept.masks] == \
        [(m.image, m.label, m.phrase) for m in full[long].turns[0].masks][:len(kept.masks)]
    assert all((a.mask == b.mask).all() for a, b in zip(kept.masks, full[long].turns[0].masks))


def test_a_cut_round_is_replayed_as_closed_json(make_backend, tmp_path, monkeypatch):
    backend = make_backend(max_new_tokens=12)
    template = Template(name="two", turns=["Find the mug.", "Now the plate."], ontology=["mug", "plate"])
    seen: list[str] = []
    apply = backend.reasoner.processor.apply_chat_template
    monkeypatch.setattr(backend.reasoner.processor, "apply_chat_template",
                        lambda chat, **k: seen.append(chat) or apply(chat, **k))
    answer = backend.predict([_request(tmp_path, "t", [(40, 40)], template)])[0]
    assert [t.truncated for t in answer.turns] == [True, True]
    replayed = seen[1][1]["content"][0]["text"]  # round 1's answer, as round 2 reads it
    assert json.loads(replayed)["targets"] == [] and "explanation" in json.loads(replayed)


def _longest_answers(backend, monkeypatch):
    """Push the random model to the longest answer: "a" in every string until the grammar closes
    it, and "," wherever an array or the optional points may go on."""
    tokenizer = backend.reasoner.processor.tokenizer
    favoured = [tokenizer.convert_tokens_to_ids(t) for t in ("a", ",")]

    class Longest:
        def __call__(self, input_ids, scores):
            scores[:, favoured] += 1000.0
            return scores

    generate = backend.reasoner.model.generate
    monkeypatch.setattr(backend.reasoner.model, "generate",
                        lambda **kw: generate(**{**kw, "logits_processor": [Longest(), *kw["logits_processor"]]}))


@pytest.mark.parametrize("family", FAMILIES)
def test_default_options_give_parseable_answers(make_backend, tmp_path, family):
    backend = make_backend(family, max_new_tokens=None, limits=None)  # what a user gets
    answers = backend.predict([_request(tmp_path, "g", [(40, 60), (56, 30)], MUG)])
    assert not isinstance(answers[0], Exception) and not answers[0].turns[0].truncated


def test_the_longest_answer_closes_within_the_default_budget(make_backend, tmp_path, monkeypatch):
    """Default limits and the default (auto) budget: a random byte-level model pushed to the
    longest answer the schema allows still closes it; 512 tokens (the old default) would cut it."""
    backend = make_backend(max_new_tokens=None, limits=None)
    one = Template(name="one", turns=["Find the mug."], ontology=["mug"],
                   answer=AnswerRules(multiple_targets=False, allow_rejection=False))
    _longest_answers(backend, monkeypatch)
    generated = []
    reason = backend.reasoner.reason
    monkeypatch.setattr(backend.reasoner, "reason", lambda steps: generated.extend(out := reason(steps)) or out)
    (answer,) = backend.predict([_request(tmp_path, "l", [(32, 32)], one, seed=5)])
    assert not generated[0].truncated and not answer.turns[0].truncated
    explanation = answer.turns[0].answer
    assert len(explanation) == 600 and set(explanation) <= {"a", ","}  # at its longest, and still closed
    assert len(generated[0].token_ends) > 512 and len(answer.turns[0].masks) == 1


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
    from helpers import make_groups

    template = tmp_path / "pets.yaml"
    template.write_text("name: pets\nturns: ['Segment the {{ targets }}.']\nontology: '{{ targets }}'\n"
                        "variables: {targets: 'cat, dog'}\nanswer: {max_targets: 2}\n")
    model = str(tiny_vlm("qwen2_5_vl", tmp_path_factory))
    config = RunConfig(input=make_groups(tmp_path / "data", 3), out=tmp_path / "run", prompt=[str(template)],
                       model=model, mask_model=str(tmp_path), batch_size=2, quiet=True,  # the head is a double
                       max_new_tokens=400)
    summary = Engine(config, backend_factory=lambda o: VlmSamBackend(
        replace(o, device="cpu", extra={"answer_limits": SMALL}))).run()
    assert summary.exit_code == 0 and summary.done == 3
    preds = list(read_predictions([config.out]))
    assert [p.status for p in preds] == ["ok"] * 3 and all(p.model == model for p in preds)
    for p in preds:
        for s in p.turns[0].segments:
            assert s.category in ("cat", "dog") and s.rle["size"] == [p.images[s.image].height, p.images[s.image].width]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_huge_and_extreme_aspect_images(make_backend, tmp_path, family):
    """Every image gets the size its processor really gives it (1x1 and 1-pixel-high images
    included); an image no processor takes (over 200:1) fails its group alone, naming the file."""
    from autolabel.errors import InputError

    backend = make_backend(family)
    requests = [_request(tmp_path, "small", [(1, 1), (1, 56), (3, 40), (2, 300), (1500, 2200)], MUG),
                _request(tmp_path, "wide", [(40, 40), (1, 4000)], MUG),
                _request(tmp_path, "tall", [(4000, 1)], MUG)]
    answers = backend.predict(requests)
    for request, answer in zip(requests, answers):
        if request.group.id in ("wide", "tall"):
            assert isinstance(answer, InputError) and "aspect ratio" in str(answer)
        else:
            assert not isinstance(answer, Exception), answer
            _check_answer(answer, request)
    assert answers[1].file == "wide/img1.png" and "4000x1 pixels" in str(answers[1])
    assert answers[2].file == "tall/img0.png" and "1x4000 pixels" in str(answers[2])
    ip = backend.reasoner.processor.image_processor
    for image, frame in zip(requests[0].images, backend.frames(requests[0].images)):
        grid = ip(images=[image], input_data_format="channels_last", return_tensors="pt")["image_grid_thw"]
        assert frame.model_input == (int(grid[0, 1]) * ip.patch_size, int(grid[0, 2]) * ip.patch_size)
        h, w = frame.original  # the whole model frame is the whole image
        span = (1000, 1000) if family == "qwen3_vl" else frame.model_input[::-1]
        np.testing.assert_allclose(frame.box_to_original([0, 0, *span]), [0, 0, w, h])


def test_a_processor_whose_sizes_cannot_be_read_stops_the_run_once(tmp_path, tmp_path_factory, monkeypatch):
    """Pixel coordinates with an image processor that reports no image_grid_thw: every group would
    fail, so the run stops at load with one configuration error (exit 2), and writes no line."""
    import transformers

    from dataclasses import replace

    from autolabel.config import RunConfig
    from autolabel.engine import Engine
    from autolabel.errors import AutolabelError
    from helpers import make_groups

    class NoGrid:  # an image processor that returns pixels only
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            return {"pixel_values": self.inner(*args, **kwargs)["pixel_values"]}

    load = transformers.AutoProcessor.from_pretrained

    def without_grid(*args, **kwargs):
        processor = load(*args, **kwargs)
        processor.image_processor = NoGrid(processor.image_processor)
        return processor

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", without_grid)
    monkeypatch.setattr(mask_heads, "load_mask_head", lambda model, **kw: BoxMaskHead())
    config = RunConfig(input=make_groups(tmp_path / "data", 3), out=tmp_path / "run", model=str(
        tiny_vlm("qwen2_5_vl", tmp_path_factory)), mask_model=str(tmp_path), quiet=True)  # the head is a double
    with pytest.raises(AutolabelError, match="image processor .*image_grid_thw.*coordinates=relative-1000"):
        Engine(config, backend_factory=lambda o: VlmSamBackend(replace(o, device="cpu"))).run()
    assert not (tmp_path / "run" / "predictions.jsonl").exists() or \
        not (tmp_path / "run" / "predictions.jsonl").read_text().strip()


def test_cut_answers_are_marked_truncated_on_their_lines(make_backend, tmp_path, tmp_path_factory):
    from dataclasses import replace

    from autolabel.config import RunConfig
    from autolabel.engine import Engine
    from autolabel.store import read_predictions
    from helpers import make_groups

    config = RunConfig(input=make_groups(tmp_path / "data", 2), out=tmp_path / "run", prompt=["multi-target"],
                       model=str(tiny_vlm("qwen2_5_vl", tmp_path_factory)), mask_model=str(tmp_path), quiet=True,
                       max_new_tokens=24)
    summary = Engine(config, backend_factory=lambda o: VlmSamBackend(replace(o, device="cpu"))).run()
    assert summary.exit_code == 0 and summary.done == 2  # cut answers do not fail their groups
    lines = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [line["truncated"] for line in lines] == [True, True] and {line["status"] for line in lines} == {"ok"}
    assert all(p.truncated for p in read_predictions([config.out]))


def test_a_server_gets_the_same_budget_and_sizes_rule(tmp_path, monkeypatch):
    """--server shares the rules: max_tokens is the schema's longest answer unless --max-new-tokens
    is given, a 1x1 image is sent at the size the resize keeps, and an image over 200:1 fails its
    group alone, named."""
    from autolabel.backends.answer_schema import answer_token_budget
    from autolabel.errors import InputError
    from tests.openai_double import GeometryServer

    monkeypatch.setattr(mask_heads, "load_mask_head", lambda *a, **k: BoxMaskHead())
    geometry = GeometryServer()
    bodies: list[dict] = []
    complete = geometry.complete
    geometry.complete = lambda body: bodies.append(body) or complete(body)
    try:
        requests = [_request(tmp_path, "a", [(1, 1), (40, 60)], MUG), _request(tmp_path, "b", [(1, 4000)], MUG)]
        for max_new_tokens in (None, 77):
            backend = VlmSamBackend(BackendOptions(model="double", device="cpu", server=geometry.url,
                                                   max_new_tokens=max_new_tokens))
            bodies.clear()
            answers = backend.predict(requests)
            assert not isinstance(answers[0], Exception), answers[0]
            assert isinstance(answers[1], InputError) and answers[1].file == "b/img0.png"
            (body,) = bodies
            schema = body["response_format"]["json_schema"]["schema"]
            assert body["max_tokens"] == (max_new_tokens or answer_token_budget(schema))
            assert geometry.received_sizes[-2] == (56, 56)
            backend.close()
    finally:
        geometry.stop()
