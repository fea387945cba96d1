"""`autolabel run` with the real vlm-sam code on tiny random checkpoints, then `export coco`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import make_groups
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tiny_sam import tiny_mask_model
from tiny_vlm import tiny_vlm

from autolabel.backends.answer_schema import ParsedAnswer, ParsedTarget
from autolabel.backends.base import BackendOptions
from autolabel.backends.vlm_sam import VlmSamBackend, _Reasoned
from autolabel.config import RunConfig
from autolabel.engine import Engine
from autolabel.store import read_predictions

LIMITS = "answer_limits={explanation: 16, label: 8, phrase: 8, reason: 8, points: 2}"


def test_cli_run_and_export_with_tiny_qwen_and_tiny_sam(tmp_path, tmp_path_factory):
    data = make_groups(tmp_path / "data", 3)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "autolabel", "run", str(data), "--prompt", "multi-target", "--var", "targets=cat, dog",
            "--model", str(tiny_vlm("qwen2_5_vl", tmp_path_factory)),
            "--mask-model", tiny_mask_model("sam2", tmp_path_factory), "--batch-size", "2", "--device", "cpu",
            "--max-new-tokens", "400", "--backend-option", LIMITS, "--out", str(out), "-q"]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr
    # -q: no progress bars at all, the model libraries' included (transformers' "Loading weights")
    assert "Loading weights" not in r.stderr and "it/s]" not in r.stderr and "%|" not in r.stderr, r.stderr
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok"] * 3
    info = json.loads((out / "run.json").read_text())
    assert info["model_info"]["model_type"] == "qwen2_5_vl"
    coco_file = tmp_path / "coco.json"
    r = subprocess.run([sys.executable, "-m", "autolabel", "export", "coco", str(out), "-o", str(coco_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    coco = COCO(str(coco_file))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    anns = coco.loadAnns(coco.getAnnIds())
    segments = sum(len(t["segments"]) for x in lines for t in x["turns"])
    assert len(anns) == sum(1 for x in lines for t in x["turns"] for s in t["segments"] if s["rle"]["counts"] != "")
    assert segments >= len(anns)
    if anns:  # random weights may ground nothing; when they do, the export evaluates as exact
        ev = COCOeval(coco, coco.loadRes(anns), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] > 0.99


def fixed_answers(backend: VlmSamBackend) -> None:
    """The real generate runs; its random answer is replaced by one box per image, first label."""
    reason = backend._reason

    def one_box_per_image(states, t):
        out = []
        for state, reasoned in zip(states, reason(states, t)):
            label = next(iter(state.request.prompt.ontology))
            targets = tuple(ParsedTarget(i + 1, label, label, (1, 1, 12, 12)) for i in range(len(state.frames)))
            raw = getattr(reasoned, "raw", "{}")
            out.append(_Reasoned(ParsedAnswer("fixed", targets, ()), raw, [1.0] * len(targets)))
        return out

    backend._reason = one_box_per_image


def test_templates_over_the_same_group_reuse_image_embeddings(tmp_path, tmp_path_factory):
    """Two templates over 2 groups x 2 images: each image is encoded once, not once per template."""
    data = make_groups(tmp_path / "data", 2)
    heads = []

    asked: list = []  # image keys of every prompt set sent to the mask head

    def backend(options: BackendOptions) -> VlmSamBackend:
        b = VlmSamBackend(options)
        heads.append(b.mask_head)
        predict = b.mask_head.predict
        b.mask_head.predict = lambda sets: (asked.extend(ps.image_key for ps in sets if ps.count), predict(sets))[1]
        fixed_answers(b)
        return b

    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=["multi-target", "ontology"],
                    model=str(tiny_vlm("qwen2_5_vl", tmp_path_factory)),
                    mask_model=tiny_mask_model("sam", tmp_path_factory), device="cpu", batch_size=4,
                    max_new_tokens=400, quiet=True, var={"targets": "cat, dog", "classes": "cat, dog"},
                    backend_option={"answer_limits": {"explanation": 16, "label": 8, "phrase": 8, "reason": 8,
                                                      "points": 2}})
    summary = Engine(cfg, backend_factory=backend).run()
    assert summary.exit_code == 0 and summary.done == 4
    assert len(asked) == 8, "2 templates x 2 groups x 2 images were prompted"
    assert heads[0].encoder_calls == len(set(asked)) == 4, "each image is encoded once for both templates"


def test_sam3_segments_every_instance_of_the_labels_the_vlm_found(tmp_path, tmp_path_factory):
    data = make_groups(tmp_path / "data", 1)
    heads = []

    def backend(options: BackendOptions) -> VlmSamBackend:
        b = VlmSamBackend(options)
        b.mask_head.threshold = 0.0  # random weights: keep every query
        heads.append(b.mask_head)
        fixed_answers(b)
        return b

    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=["ontology"], var={"classes": "cup=mug, plate"},
                    model=str(tiny_vlm("qwen2_5_vl", tmp_path_factory)),
                    mask_model=tiny_mask_model("sam3", tmp_path_factory), device="cpu", max_new_tokens=400,
                    quiet=True, backend_option={"answer_limits": {"explanation": 16, "label": 8, "phrase": 8,
                                                                   "reason": 8, "points": 2}})
    assert Engine(cfg, backend_factory=backend).run().exit_code == 0
    (pred,) = read_predictions([cfg.out])
    segments = pred.turns[0].segments
    assert segments and {s.image for s in segments} == {0, 1}, "every instance SAM 3 found, on both images"
    assert {(s.label, s.category) for s in segments} == {("cup", "mug")}
    assert heads[0].encoder_calls == 2
