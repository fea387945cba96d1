"""The run directory contract: lines, last-line-wins, shards, torn tails, run.json merging."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autolabel.errors import AutolabelError
from autolabel.prediction import ImageInfo, Prediction, Segment, Turn, prediction_key
from autolabel.store import PredictionWriter, read_predictions, read_run_info, scan_status


def pred(group: str, status: str = "ok", answer: str = "a") -> Prediction:
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    seg = Segment.from_mask(mask, image=0, label="cat", category="cat", phrase="the cat", score=0.5)
    return Prediction(key=prediction_key(group, "t", "m"), group_id=group, images=[ImageInfo("x.png", 7, 5)],
                      template="t", template_hash="h", model="m", backend="b",
                      turns=[Turn("q?", answer, [seg])], status=status)


def test_line_round_trip_keeps_every_field(tmp_path):
    w = PredictionWriter(tmp_path)
    w.write([pred("g1")])
    w.close()
    line = json.loads((tmp_path / "predictions.jsonl").read_text())
    assert set(line) == {"key", "group_id", "images", "template", "template_hash", "model", "backend", "turns",
                         "status", "error", "timings", "variables", "category"}
    seg = line["turns"][0]["segments"][0]
    assert set(seg) == {"image", "label", "category", "phrase", "rle", "bbox", "score", "round"}
    assert seg["bbox"] == [2.0, 1.0, 4.0, 2.0]
    back = next(read_predictions([tmp_path]))
    assert back == pred("g1")
    assert back.turns[0].segments[0].mask().sum() == 8


def test_last_line_of_a_key_wins_across_files(tmp_path):
    w = PredictionWriter(tmp_path)
    w.write([pred("g1", "error"), pred("g2")])
    w.write([pred("g1", "ok", answer="second")])
    w.close()
    s = PredictionWriter(tmp_path, "shard-0-of-2")
    s.write([pred("g3")])
    s.close()
    got = {p.group_id: p for p in read_predictions([tmp_path])}
    assert sorted(got) == ["g1", "g2", "g3"] and got["g1"].turns[0].answer == "second"
    assert scan_status([tmp_path]) == {k: "ok" for k in (pred("g1").key, pred("g2").key, pred("g3").key)}


def test_a_broken_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "predictions.jsonl").write_text(pred("g1").to_json() + "\n{oops\n" + pred("g2").to_json() + "\n")
    with pytest.raises(AutolabelError, match=r"predictions.jsonl:2"):
        list(read_predictions([tmp_path]))


def test_missing_run_dir_or_predictions(tmp_path):
    with pytest.raises(AutolabelError, match="not a run directory"):
        list(read_predictions([tmp_path / "nope"]))
    with pytest.raises(AutolabelError, match="no predictions.jsonl"):
        list(read_predictions([tmp_path]))


def test_run_info_merges_shards(tmp_path):
    for name, t in ((None, "a"), ("shard-1-of-2", "b")):
        w = PredictionWriter(tmp_path, name)
        w.write_info({"templates": {t: {"hash": t}}, "model": "m"})
        w.close()
    info = read_run_info(tmp_path)
    assert info["templates"] == {"a": {"hash": "a"}, "b": {"hash": "b"}} and info["model"] == "m"
