"""`autolabel prompts render --chat`: the exact chat the vlm-sam model receives for a group."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from autolabel.cli import app


def _group(tmp_path):
    rng = np.random.default_rng(0)
    for name, (h, w) in {"1.png": (480, 640), "2.png": (1, 1), "10.png": (50, 30)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    return tmp_path


def _chat_texts(chat) -> list[str]:
    return [c["text"] for m in chat for c in m["content"] if c["type"] == "text"]


def test_chat_is_what_the_backend_sends_with_the_models_processor(tmp_path, tmp_path_factory):
    import torch

    from autolabel.backends.base import BackendOptions
    from autolabel.backends.chat import build_chat
    from autolabel.backends.local_reasoner import TransformersReasoner
    from autolabel.groups import ImageGroup, ImageRef
    from autolabel.images import decode_image
    from autolabel.templates import load_template, render
    from tests.tiny_vlm import tiny_vlm

    group_dir = tmp_path / "g"
    group_dir.mkdir()
    _group(group_dir)
    model = str(tiny_vlm("qwen2_5_vl", tmp_path_factory))
    result = CliRunner().invoke(app, ["prompts", "render", "multi-target", str(group_dir), "--chat", "--model", model,
                                      "--var", "targets=cup=mug, plate"])
    assert result.exit_code == 0, result.output
    out = result.output

    names = ["1.png", "2.png", "10.png"]  # natural order, as a run reads the folder
    reasoner = TransformersReasoner(model, BackendOptions(device="cpu"), "cpu", torch.float32)
    images = [decode_image(group_dir / n, n) for n in names]
    frames = reasoner.frames(images)
    prompt = render(load_template("multi-target"), n_images=3, variables={"targets": "cup=mug, plate"},
                    group_id="g", files=names)
    group = ImageGroup("g", group_dir, tuple(ImageRef(n, group_dir / n) for n in names))
    texts = _chat_texts(build_chat(prompt, group, frames, reasoner.frame, []))
    positions = [out.index(t) for t in texts]  # every text the model reads, in its order
    assert positions == sorted(positions)
    h, w = frames[1].model_input
    assert f"Image 2 ({w}x{h} pixels):\n<image 2.png: 1x1 pixels, {w}x{h} as the model sees it>" in out
    assert "Answer with one JSON object" in out and "Use these labels: cup, plate." in out  # the rules it adds
    assert f"image sizes: read from {model}'s own image processor" in out
    assert "new tokens for round 1 (auto" in out


def test_chat_without_a_model_says_which_sizes_it_assumed(tmp_path):
    result = CliRunner().invoke(app, ["prompts", "render", "multi-round", str(_group(tmp_path)), "--chat"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "image sizes: assumed: the default model Qwen/Qwen2.5-VL-3B-Instruct's resize" in out
    assert "Image 1 (644x476 pixels):\n<image 1.png: 640x480 pixels, 644x476 as the model sees it>" in out
    assert "Image 2 (56x56 pixels):" in out and "Image 3 (" in out and out.index("Image 2 (") < out.index("Image 3 (")
    assert "[assistant]  (round 1's answer, replayed)" in out and "Round 1 found: <" in out  # the later round


def test_model_needs_chat(tmp_path):
    from autolabel.errors import AutolabelError

    result = CliRunner().invoke(app, ["prompts", "render", "multi-target", str(_group(tmp_path)), "--model", "x"])
    assert isinstance(result.exception, AutolabelError) and "only with --chat" in str(result.exception)
