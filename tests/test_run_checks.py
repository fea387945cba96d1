"""What `autolabel run` refuses in one line (exit 2) before it loads or writes anything: missing
models (all of them at once), a bad --dtype or --device, an input with nothing to label, a
contradiction between INPUT and --manifest; and the forms the README promises do work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli, imported_heavy, make_groups, write_image

from autolabel.config import load_run_config

DEFAULTS = ("Qwen/Qwen2.5-VL-3B-Instruct", "facebook/sam2.1-hiera-base-plus")


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_every_missing_default_model_is_named_in_one_message_before_torch_loads(tmp_path, empty_hf_cache):
    data = make_groups(tmp_path / "data", 2)
    out = tmp_path / "run"
    r = cli("run", str(data), "--out", str(out))
    assert_one_line_error(r, "2 models are not available", *DEFAULTS, "(the default)", str(empty_hf_cache),
                          "HF_HUB_OFFLINE is set", f"hf download {DEFAULTS[0]}", f"hf download {DEFAULTS[1]}")
    assert "labelling" not in r.stderr and not out.exists()  # no bar, nothing written
    assert imported_heavy("run", str(data), "--out", str(out)) == []  # torch never imported


def test_with_a_server_only_the_mask_model_is_looked_for_here(tmp_path, empty_hf_cache):
    data = make_groups(tmp_path / "data", 1)
    r = cli("run", str(data), "--server", "http://127.0.0.1:9/v1", "--model", "served-name",
            "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "--mask-model facebook/sam2.1-hiera-base-plus (the default)")
    assert "served-name" not in r.stderr and "Qwen" not in r.stderr


def test_a_missing_local_model_directory_and_a_missing_pth_are_named(tmp_path, empty_hf_cache):
    data = make_groups(tmp_path / "data", 1)
    r = cli("run", str(data), "--model", str(tmp_path / "no-vlm"), "--mask-model", f"vit_b:{tmp_path / 'sam.pth'}",
            "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "2 models are not available", f"no such directory {tmp_path / 'no-vlm'}",
                          f"no such file {tmp_path / 'sam.pth'}")
    assert "hf download" not in r.stderr


def test_prima_needs_a_model_directory(tmp_path, empty_hf_cache):
    r = cli("run", str(make_groups(tmp_path / "data", 1)), "--backend", "prima", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "--backend prima needs --model DIR")


def test_a_bad_dtype_and_a_device_that_is_not_there_are_refused_first(tmp_path):
    data = make_groups(tmp_path / "data", 1)
    r = cli("run", str(data), "--backend", "doubles:BoxBackend", "--dtype", "fp8", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "--dtype fp8", "bf16, fp16 or fp32")
    assert imported_heavy("run", str(data), "--backend", "doubles:BoxBackend", "--dtype", "fp8",
                          "--out", str(tmp_path / "run")) == []
    r = cli("run", str(data), "--backend", "doubles:BoxBackend", "--device", "cuda:99", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "--device cuda:99")  # no GPU here, or fewer than 100
    assert not (tmp_path / "run").exists()


def test_a_rerun_with_nothing_left_checks_no_model(tmp_path, empty_hf_cache):
    data = make_groups(tmp_path / "data", 1)
    out = tmp_path / "run"
    assert cli("run", str(data), "--backend", "doubles:BoxBackend", "--out", str(out), "-q").returncode == 0
    r = cli("run", str(data), "--backend", "doubles:BoxBackend", "--dtype", "fp8", "--out", str(out), "-q")
    assert r.returncode == 0 and "already done 1" in r.stderr


def test_an_input_with_nothing_to_label_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    r = cli("run", str(empty), "--backend", "doubles:BoxBackend", "--out", str(out))
    assert_one_line_error(r, str(empty), "nothing to label")
    assert not out.exists()
    (empty / "notes.txt").write_text("not an image")
    r = cli("run", str(empty), "--backend", "doubles:BoxBackend", "--out", str(out))
    assert_one_line_error(r, "nothing to label", "1 files skipped", "notes.txt: not an image file")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n")
    assert_one_line_error(cli("run", "--manifest", str(manifest), "--backend", "doubles:BoxBackend",
                              "--out", str(out)), "nothing to label")
    # a shard or limit that leaves nothing of a real input is not an error
    data = make_groups(tmp_path / "data", 1)
    r = cli("run", str(data), "--backend", "doubles:BoxBackend", "--shard", "1/50", "--out", str(out), "-q")
    assert r.returncode == 0 or "nothing to label" not in r.stderr


def test_the_manifest_forms_of_the_readme(tmp_path):
    write_image(tmp_path / "k7" / "a.jpg")
    manifest = tmp_path / "groups.jsonl"
    manifest.write_text(json.dumps({"id": "kitchen-7", "images": ["k7/a.jpg"]}) + "\n")
    out = tmp_path / "run"
    r = cli("run", "--manifest", str(manifest), "--backend", "doubles:BoxBackend", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "predictions.jsonl").read_text().splitlines()[0])["group_id"] == "kitchen-7"
    r = cli("run", str(manifest), "--manifest", str(manifest), "--backend", "doubles:BoxBackend", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr  # the same file twice agrees with itself
    r = cli("run", str(tmp_path / "k7"), "--manifest", str(manifest), "--backend", "doubles:BoxBackend",
            "--out", str(tmp_path / "other"))
    assert_one_line_error(r, "INPUT", "--manifest", "two inputs")
    r = cli("run", str(manifest), "--group-by", "(?P<key>k\\d+)", "--backend", "doubles:BoxBackend",
            "--out", str(tmp_path / "other"))
    assert_one_line_error(r, "--group-by", "lists its groups itself")
    assert not (tmp_path / "other").exists()


def test_group_by_errors_show_the_regex_as_typed(tmp_path):
    r = cli("run", str(make_groups(tmp_path / "data", 1)), "--group-by", r"shop_\d+", "--backend", "doubles:BoxBackend")
    assert_one_line_error(r, r"--group-by 'shop_\d+'", r"'(?P<key>scene_\d+)_'")
    assert r"\\d" not in r.stderr


def test_paths_in_a_run_file_are_relative_to_it(tmp_path, monkeypatch):
    """One rule: input, out, manifest, a model or mask model that names a path, a template file."""
    conf = tmp_path / "conf"
    (conf / "models" / "vlm").mkdir(parents=True)
    (conf / "sam.pth").write_bytes(b"")
    (conf / "mine.yaml").write_text("name: mine\nturns: [hi]\n")
    run_file = conf / "run.yaml"
    run_file.write_text("input: data\nout: runs/x\nmodel: models/vlm\nmask_model: vit_b:sam.pth\n"
                        "prompt: [mine.yaml, ontology]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_run_config(run_file, {})
    assert cfg.input == conf / "data" and cfg.out == conf / "runs" / "x"
    assert cfg.model == str(conf / "models" / "vlm") and cfg.mask_model == f"vit_b:{conf / 'sam.pth'}"
    assert cfg.prompt == [str(conf / "mine.yaml"), "ontology"]
    run_file.write_text("input: data\nmodel: Qwen/Qwen2.5-VL-7B-Instruct\n")  # a hub id stays one
    assert load_run_config(run_file, {}).model == "Qwen/Qwen2.5-VL-7B-Instruct"
    # flags are relative to the working directory, as always
    assert load_run_config(run_file, {"model": "models/vlm"}).model == "models/vlm"


def test_the_run_says_where_each_model_comes_from_before_loading(tmp_path, empty_hf_cache, monkeypatch):
    """A local directory, a cached hub id: one line each, printed before the bar starts."""
    from huggingface_hub import constants

    from autolabel.preflight import check_run

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty_hf_cache))  # read at import, maybe by an earlier test

    local = tmp_path / "my-vlm"
    local.mkdir()
    (local / "config.json").write_text("{}")
    snapshot = empty_hf_cache / "models--facebook--sam-vit-base" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (empty_hf_cache / "models--facebook--sam-vit-base" / "refs").mkdir()
    (empty_hf_cache / "models--facebook--sam-vit-base" / "refs" / "main").write_text("abc123")
    config = load_run_config(None, {"input": str(make_groups(tmp_path / "data", 1)), "model": str(local),
                                    "mask_model": "facebook/sam-vit-base", "out": str(tmp_path / "run")})
    lines = check_run(config)
    assert lines == [f"--model {local}: local {local.resolve()}",
                     f"--mask-model facebook/sam-vit-base: cached ({snapshot})"]
    server = config.model_copy(update={"server": "http://gpu-box:8000/v1", "model": "served-name"})
    assert check_run(server) == lines[1:]  # the reasoning model is the server's


def test_rich_progress_prints_the_model_lines_unless_quiet():
    import io

    from rich.console import Console

    from autolabel.progress import RichProgress

    out = io.StringIO()
    RichProgress(Console(file=out, width=200)).note(["--model a/b: cached (/x)"])
    RichProgress(Console(file=out, width=200), enabled=False).note(["--model c/d: local /y"])
    assert out.getvalue() == "model --model a/b: cached (/x)\n"
