"""`run --min-score`: masks scored below it never reach the prediction lines."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import cli, make_groups

from autolabel.config import RunConfig
from autolabel.engine import Engine
from autolabel.store import read_predictions


def test_masks_below_min_score_are_not_written(tmp_path: Path, template: str):
    data = make_groups(tmp_path / "data", 2)
    out = tmp_path / "run"
    # the test double scores cat 0.9 and dog 0.8 and rejects bird
    config = RunConfig(input=data, out=out, prompt=[template], backend="doubles:BoxBackend", quiet=True,
                       min_score=0.85)
    assert Engine(config).run().exit_code == 0
    preds = list(read_predictions([out]))
    assert len(preds) == 2
    for pred in preds:
        assert {s.category for s in pred.segments()} == {"cat"}
        assert all(s.score >= 0.85 for s in pred.segments())
        assert len(list(pred.segments())) == 2 * 2  # 2 turns x 2 images, cat only
        assert [r.label for r in pred.turns[0].rejected] == ["bird"]  # rejections are kept
    assert json.loads((out / "run.json").read_text())["parameters"]["min_score"] == 0.85


def test_default_keeps_every_mask(tmp_path: Path, template: str):
    data = make_groups(tmp_path / "data", 1)
    out = tmp_path / "run"
    Engine(RunConfig(input=data, out=out, prompt=[template], backend="doubles:BoxBackend", quiet=True)).run()
    (pred,) = read_predictions([out])
    assert {s.category for s in pred.segments()} == {"cat", "dog"}


def test_cli_flag_and_config_key(tmp_path: Path, template: str):
    data = make_groups(tmp_path / "data", 1)
    r = cli("run", str(data), "--prompt", template, "--backend", "doubles:BoxBackend", "--out", str(tmp_path / "a"),
            "-q", "--min-score", "0.85")
    assert r.returncode == 0, r.stderr
    assert {s.category for p in read_predictions([tmp_path / "a"]) for s in p.segments()} == {"cat"}
    config = tmp_path / "run.yaml"
    config.write_text(f"input: {data}\nprompt: [{template}]\nbackend: doubles:BoxBackend\nmin_score: 0.95\n")
    r = cli("run", "--config", str(config), "--out", str(tmp_path / "b"), "-q")
    assert r.returncode == 0, r.stderr
    assert [s for p in read_predictions([tmp_path / "b"]) for s in p.segments()] == []
    r = cli("run", str(data), "--min-score", "lots", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
