"""The CLI as users and CI run it: subprocesses, exit codes, fast start, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TESTS, cli, imported_heavy, make_groups
from pycocotools.coco import COCO

def test_version_and_help():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("autolabel ")
    for cmd in (["--help"], ["run", "--help"], ["export", "coco", "--help"], ["export", "masks", "--help"],
                ["prompts", "render", "--help"], ["doctor", "--help"], ["models", "--help"], ["push", "--help"],
                ["review", "--help"], ["pull", "--help"]):
        r = cli(*cmd)
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


@pytest.mark.parametrize("argv", [["--help"], ["prompts", "list"], ["run", "--help"], ["push", "--help"],
                                  ["pull", "--help"]])
def test_light_commands_do_not_import_heavy_libraries(argv):
    assert imported_heavy(*argv) == []


def test_usage_and_configuration_errors_exit_2(tmp_path):
    assert cli("run", str(tmp_path), "--bogus").returncode == 2
    r = cli("run", str(tmp_path / "missing"), "--backend", "doubles:BoxBackend")
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", str(tmp_path), "--shard", "4/4")
    assert r.returncode == 2 and "--shard" in r.stderr
    r = cli("run", str(tmp_path), "--prompt", "no-such-template")
    assert r.returncode == 2 and "no-such-template" in r.stderr
    r = cli("run", str(tmp_path), "--backend", "no-such-backend")
    assert r.returncode == 2 and "no-such-backend" in r.stderr
    bad = tmp_path / "run.yaml"
    bad.write_text("input: .\nbatch_size: lots\n")
    r = cli("run", "--config", str(bad))
    assert r.returncode == 2 and "batch-size" in r.stderr and str(bad) in r.stderr


def test_run_then_export_coco_end_to_end(tmp_path):
    data = make_groups(tmp_path / "data", 3)
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"input: {data}\nbackend: doubles:BoxBackend\nprompt: [ontology]\n"
                   f"var: {{classes: 'cat, dog'}}\nbatch_size: 1\n")
    r = cli("run", "--config", str(cfg), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "labelled 3" in r.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["parameters"]["batch_size"] == 1 and info["parameters"]["var"] == {"classes": "cat, dog"}
    coco_file = tmp_path / "coco.json"
    r = cli("export", "coco", str(out), "-o", str(coco_file))
    assert r.returncode == 0, r.stderr
    coco = COCO(str(coco_file))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) == 12
    # a rerun with nothing left to do: exit 0 and no heavy imports
    assert imported_heavy("run", "--config", str(cfg), "--out", str(out), "--quiet") == []


def test_failed_groups_exit_1_and_are_listed(tmp_path):
    data = make_groups(tmp_path / "data", 2)
    (data / "g001" / "img1.png").write_text("not a png")
    r = cli("run", str(data), "--backend", "doubles:BoxBackend", "--out", str(tmp_path / "run"), "-q")
    assert r.returncode == 1
    assert "1 failed" in r.stderr and "g001/img1.png" in r.stderr


def test_kill_and_resume_gives_the_same_keys_without_duplicates(tmp_path):
    data = make_groups(tmp_path / "data", 12, per_group=1)
    out = tmp_path / "run"
    args = ["run", str(data), "--backend", "doubles:BoxBackend", "--batch-size", "2", "--out", str(out), "-q"]
    # the double answers 4 groups, then waits in its next batch: the kill lands mid-run, every time
    proc = subprocess.Popen([sys.executable, "-m", "autolabel", *args, "--backend-option", "hold_after=4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(TESTS)})
    pred = out / "predictions.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not pred.exists() or pred.read_text().count("\n") < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = pred.read_text().count("\n")
    assert 4 <= written < 12, "the kill must land mid-run"
    r = cli("run", *args[1:])
    assert r.returncode == 0, r.stderr
    keys = [json.loads(x)["key"] for x in pred.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 12
    reference = tmp_path / "reference"
    assert cli("run", str(data), "--backend", "doubles:BoxBackend", "--out", str(reference), "-q").returncode == 0
    ref_keys = [json.loads(x)["key"] for x in (reference / "predictions.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(ref_keys)


def test_second_run_on_the_same_dir_is_refused_while_the_first_runs(tmp_path):
    data = make_groups(tmp_path / "data", 6, per_group=1)
    out = tmp_path / "run"
    args = ["-m", "autolabel", "run", str(data), "--backend", "doubles:BoxBackend", "--batch-size", "1",
            "--out", str(out), "-q"]
    first = subprocess.Popen([sys.executable, *args, "--backend-option", "hold_after=1"],  # runs until killed
                             env={**os.environ, "PYTHONPATH": str(TESTS)})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "predictions.jsonl").exists():
            time.sleep(0.05)
        r = cli(*args[2:])
        assert r.returncode == 2 and "another autolabel run" in r.stderr
    finally:
        first.kill()
        first.wait()


def test_eval_a_run_against_its_own_export_and_fail_under(tmp_path):
    data = make_groups(tmp_path / "data", 2)
    out = tmp_path / "run"
    assert cli("run", str(data), "--backend", "doubles:BoxBackend", "--var", "classes=cat, dog, bird",
               "--out", str(out), "-q").returncode == 0
    gt = tmp_path / "gt.json"
    assert cli("export", "coco", str(out), "-o", str(gt)).returncode == 0
    metrics = tmp_path / "m.json"
    r = cli("eval", str(out), "--gt", str(gt), "--json", str(metrics), "--fail-under", "gIoU=0.99")
    assert r.returncode == 0, r.stderr
    overall = json.loads(metrics.read_text())["overall"]
    assert overall["gIoU"] == overall["cIoU"] == overall["mIoU"] == overall["AP"] == 1.0
    assert overall["N-acc"] == 1.0  # "bird" was rejected and is absent from GT
    r = cli("eval", str(out), "--gt", str(gt), "--fail-under", "T-acc=1.01")
    assert r.returncode == 2 and "T-acc" in r.stderr
    r = cli("eval", str(out), "--gt", str(gt), "--fail-under", "nonsense=0.5")
    assert r.returncode == 2 and "gIoU" in r.stderr
