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


def test_a_video_renders_with_its_keyframes_as_the_model_sees_them(tmp_path):
    """A clip's images are its keyframes, called 'Frame k (t=...s)' as in a run, not one image."""
    from tiny_video import write_clip

    clip = write_clip(tmp_path / "walk.avi", 12)
    result = CliRunner().invoke(app, ["prompts", "render", "multi-target", str(clip)])
    assert result.exit_code == 0, result.output
    listed = [line for line in result.output.splitlines() if line.startswith("Frame ")]
    assert [line.split(": ")[1] for line in listed] == ["walk.avi/000001", "walk.avi/000004", "walk.avi/000007",
                                                        "walk.avi/000010"]
    assert listed[0].startswith("Frame 1 (t=0.10s)") and "labelled Frame 1 (t=0.10s), Frame 2" in result.output

    chat = CliRunner().invoke(app, ["prompts", "render", "multi-target", str(clip), "--chat"])
    assert chat.exit_code == 0, chat.output
    assert chat.output.count("<image walk.avi/0000") == 4 and "Frame 4 (t=1.00s) (140x84 pixels):" in chat.output

    (tmp_path / "broken.avi").write_bytes(b"not a video")
    broken = CliRunner().invoke(app, ["prompts", "render", "multi-target", str(tmp_path / "broken.avi")])
    assert broken.exit_code != 0 and str(broken.exception).startswith("broken.avi:"), broken.output
