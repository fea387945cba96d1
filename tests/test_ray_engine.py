"""`--engine ray` on a local Ray cluster (CPU): the same predictions as the local engine, workers
that die are replaced and their groups redone, and resume works across engines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_groups
from tiny_sam import tiny_mask_model
from tiny_vlm import tiny_vlm

from autolabel.config import RunConfig
from autolabel.engine import Engine
from autolabel.errors import AutolabelError
from autolabel.ray_engine import RayEngine
from autolabel.store import prediction_files, read_predictions

TESTS = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("ray_cluster")  # one private local cluster for the session (conftest)


def comparable(run_dir: Path) -> dict[str, dict]:
    """Every key's line without what differs between runs (timings)."""
    out = {}
    for p in read_predictions([run_dir]):
        d = json.loads(p.to_json())
        d.pop("timings", None)
        out[d["key"]] = d
    return out


def keys_per_file(run_dir: Path) -> list[str]:
    return [json.loads(x)["key"] for p in prediction_files(run_dir) for x in p.read_text().splitlines()]


def test_ray_gives_the_same_predictions_as_the_local_engine(tmp_path, tmp_path_factory):
    import torch

    data = make_groups(tmp_path / "data", 5)
    cfg = RunConfig(input=data, out=tmp_path / "local", prompt=["multi-target"], var={"targets": "cat, dog"},
                    model=str(tiny_vlm("qwen2_5_vl", tmp_path_factory)),
                    # one group per generate call on both sides: which groups Ray hands a worker together
                    # varies run to run, and a group padded beside another gets other float rounding
                    mask_model=tiny_mask_model("sam", tmp_path_factory), device="cpu", batch_size=1,
                    max_new_tokens=300, quiet=True,
                    backend_option={"answer_limits": {"explanation": 16, "label": 8, "phrase": 8, "reason": 8,
                                                      "points": 2}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers: the same float reductions on both sides
    try:
        local = Engine(cfg).run()
    finally:
        torch.set_num_threads(threads)
    distributed = RayEngine(cfg.model_copy(update={"out": tmp_path / "ray", "engine": "ray", "workers": 2})).run()
    assert local.exit_code == distributed.exit_code == 0 and local.done == distributed.done == 5
    assert comparable(tmp_path / "ray") == comparable(tmp_path / "local")
    assert any(p.name.startswith("predictions.ray-") for p in prediction_files(tmp_path / "ray"))
    info = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert info["engine"]["name"] == "ray" and info["engine"]["workers"] == 2 and info["counts"]["done"] == 5
    assert not list((tmp_path / "ray").glob(".todo-*")), "the todo file is removed at the end"


def test_a_killed_worker_is_replaced_and_its_groups_redone(tmp_path, template):
    data = make_groups(tmp_path / "data", 9, per_group=1)
    (data / "g004").rename(data / "g004-die")
    marker = tmp_path / "died"
    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=[template], backend="doubles:DyingBackend",
                    engine="ray", workers=2, batch_size=2, quiet=True, backend_option={"die_marker": str(marker)})
    summary = RayEngine(cfg).run()
    assert marker.exists(), "a worker died"
    assert summary.exit_code == 0 and summary.done == 9 and summary.groups == 9
    keys = keys_per_file(cfg.out)
    assert len(keys) == len(set(keys)) == 9, "no group lost, none written twice"
    assert "g004-die|pets|test/box-v1" in keys


def test_resume_works_across_engines(tmp_path, template):
    data = make_groups(tmp_path / "data", 8, per_group=1)
    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=[template], backend="doubles:BoxBackend", quiet=True,
                    batch_size=3)
    assert Engine(cfg.model_copy(update={"limit": 3})).run().done == 3
    ray_summary = RayEngine(cfg.model_copy(update={"engine": "ray"})).run()
    assert ray_summary.already_done == 3 and ray_summary.done == 5 and ray_summary.groups == 5
    again = Engine(cfg).run()
    assert again.done == 0 and again.already_done == 8
    keys = keys_per_file(cfg.out)
    assert len(keys) == len(set(keys)) == 8


def test_without_ray_the_cli_says_how_to_install_it(tmp_path, template):
    data = make_groups(tmp_path / "data", 1)
    code = ("import sys; sys.modules['ray'] = None; from autolabel.cli import main; sys.argv = "
            f"['autolabel', 'run', {str(data)!r}, '--prompt', {template!r}, '--engine', 'ray', "
            f"'--backend', 'doubles:BoxBackend', '--out', {str(tmp_path / 'run')!r}]; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert "pip install 'autolabel[ray]'" in r.stderr


def test_a_model_that_will_not_load_in_a_worker_is_one_clear_error(tmp_path):
    data = make_groups(tmp_path / "data", 2)
    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=["ontology"], var={"classes": "cat"}, engine="ray",
                    model=str(tmp_path / "no-such-model"), quiet=True)
    with pytest.raises(AutolabelError, match="no-such-model.*no such directory"):
        RayEngine(cfg).run()
