"""The shared loading path: offline first, one clear message, weights-only `.pth` files."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from tiny_sam import tiny_mask_model

from autolabel.backends.mask_heads import load_mask_head
from autolabel.backends.mask_heads.base import PromptSet
from autolabel.errors import AutolabelError, ModelNotAvailable
from autolabel.loading import load_weights_only, pick_device, pick_dtype, resolve_pretrained


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of our own, offline unless a test says otherwise."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return cache


def put_in_cache(cache: Path, repo_id: str, source: Path, revision: str = "0123abcd" * 5) -> Path:
    """`source` laid out as `hf download` leaves it: models--org--name/{refs/main, snapshots/REV/}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = shutil.copytree(source, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def no_network(monkeypatch):
    """Fails the test if anything asks huggingface_hub for a download rather than the cache."""
    real = huggingface_hub.snapshot_download

    def cache_only(*args, local_files_only=False, **kwargs):
        assert local_files_only, "the network was asked although the model is in the cache"
        return real(*args, local_files_only=True, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_only)


def test_a_local_directory_is_used_as_is(tmp_path):
    assert resolve_pretrained(str(tmp_path), local_files_only=True) == str(tmp_path)


def test_a_missing_local_path_is_named(hf_cache):
    with pytest.raises(ModelNotAvailable) as e:
        resolve_pretrained("./no/such/model/dir")
    assert "./no/such/model/dir" in str(e.value) and str(Path("no/such/model/dir").resolve()) in str(e.value)


def test_a_missing_hub_model_offline_names_model_cache_and_how_to_get_it(hf_cache):
    with pytest.raises(ModelNotAvailable) as e:
        resolve_pretrained("facebook/sam-vit-base")
    message = str(e.value)
    for part in ("'facebook/sam-vit-base'", str(hf_cache), "HF_HUB_OFFLINE is set", "hf download facebook/sam-vit-base",
                 "huggingface-cli download facebook/sam-vit-base", "local directory",
                 str(Path("facebook/sam-vit-base").resolve())):
        assert part in message, part


def test_local_files_only_refuses_to_download_even_when_online(hf_cache, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotAvailable, match=r"local files only were asked for \(HF_HUB_OFFLINE is not set\)"):
        resolve_pretrained("facebook/sam-vit-base", local_files_only=True)


def test_a_failed_download_becomes_one_clear_message(hf_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(repo_id, *, local_files_only=False, **kwargs):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        raise ConnectionError("Name or service not known\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    expected = r"'org/model'.*HF_HUB_OFFLINE is not set and the download failed \(ConnectionError: Name or service not known\)"
    with pytest.raises(ModelNotAvailable, match=expected):
        resolve_pretrained("org/model")


def test_a_cached_model_is_found_offline_and_loads(hf_cache, tmp_path_factory, no_network):
    snapshot = put_in_cache(hf_cache, "tiny/sam", Path(tiny_mask_model("sam", tmp_path_factory)))
    assert resolve_pretrained("tiny/sam") == str(snapshot)
    head = load_mask_head("tiny/sam", device="cpu", dtype=torch.float32)
    assert head.model_id == "tiny/sam" and head.source == str(snapshot)
    (r,) = head.predict([PromptSet("k", np.zeros((20, 24, 3), np.uint8), boxes=np.array([[1, 1, 10, 10]], float))])
    assert r.masks.shape == (1, 20, 24)


def test_a_cached_model_never_touches_the_network_when_online(hf_cache, tmp_path_factory, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    snapshot = put_in_cache(hf_cache, "tiny/sam2", Path(tiny_mask_model("sam2", tmp_path_factory)))
    assert resolve_pretrained("tiny/sam2") == str(snapshot)


def test_an_incomplete_cache_entry_is_not_taken_for_the_model(hf_cache, tmp_path):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "preprocessor_config.json").write_text("{}")
    put_in_cache(hf_cache, "tiny/partial", tmp_path / "partial")
    with pytest.raises(ModelNotAvailable, match="'tiny/partial'"):
        resolve_pretrained("tiny/partial")


def test_a_pth_with_arbitrary_objects_is_refused_without_running_it(tmp_path):
    ran = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(ran),)

    for name in ("evil.pth", "sam_vit_b_evil.pth"):
        (tmp_path / name).write_bytes(pickle.dumps({"image_encoder.x": Payload()}, protocol=2))
    with pytest.raises(AutolabelError, match="refused to load.*not a plain weights file"):
        load_weights_only(tmp_path / "evil.pth")
    with pytest.raises(AutolabelError, match="sam_vit_b_evil.pth: refused to load"):
        load_mask_head(str(tmp_path / "sam_vit_b_evil.pth"), device="cpu", dtype=torch.float32)
    assert not ran.exists()


def test_a_plain_state_dict_loads(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pth")
    assert load_weights_only(tmp_path / "ok.pth")["w"].tolist() == [1.0, 1.0]


def test_dtype_defaults_and_names():
    assert pick_dtype(None, "cpu") == torch.float32 and pick_dtype("auto", "cuda:0") == torch.bfloat16
    assert [pick_dtype(n, "cpu") for n in ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32", "BF16")] == [
        torch.bfloat16, torch.bfloat16, torch.float16, torch.float16, torch.float32, torch.float32, torch.bfloat16]
    with pytest.raises(AutolabelError, match="--dtype 'int3'"):
        pick_dtype("int3", "cpu")


def test_device_defaults_to_what_the_machine_has(monkeypatch):
    assert pick_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu"
    with pytest.raises(AutolabelError, match="--device cuda"):
        pick_device("cuda")
