"""run.json records every invocation into a run directory (start, end, how it ended, options) and
the directory's totals; `finished` is true only when the latest one ran to its end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from doubles import BoxBackend
from helpers import TESTS, make_groups

from autolabel.config import RunConfig
from autolabel.engine import Engine
from autolabel.errors import AutolabelError


def config(data: Path, out: Path, **kw) -> RunConfig:
    return RunConfig(input=data, out=out, prompt=["ontology"], backend="doubles:BoxBackend", quiet=True, **kw)


def info(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


class Interrupted(BoxBackend):
    """Ctrl-C lands while the model works on the second batch."""

    def predict(self, requests):
        if len(self.calls) == 1:
            raise KeyboardInterrupt
        return super().predict(requests)


class WillNotLoad(BoxBackend):
    def __init__(self, options):
        raise OSError("weights file is corrupt")


def test_every_invocation_is_recorded_with_how_it_ended(tmp_path):
    data = make_groups(tmp_path / "data", 6, per_group=1)
    out = tmp_path / "run"
    summary = Engine(config(data, out, limit=2)).run()
    first = info(out)
    assert first["finished"] is True and summary.done == 2
    (only,) = first["invocations"]
    assert only["outcome"] == "completed" and only["exit_code"] == 0 and only["run_id"] == first["run_id"]
    assert only["started"] <= only["ended"] and only["options"]["limit"] == 2 and only["counts"]["done"] == 2
    assert first["totals"] == {"keys": 2, "done": 2, "failed": 0}

    with pytest.raises(KeyboardInterrupt):
        Engine(config(data, out, batch_size=1), backend_factory=Interrupted).run()
    second = info(out)
    assert second["finished"] is False
    assert [i["outcome"] for i in second["invocations"]] == ["completed", "interrupted"]
    assert second["totals"]["done"] == 3  # the two of the first run and the batch written before Ctrl-C

    with pytest.raises(AutolabelError, match="could not load"):
        Engine(config(data, out), backend_factory=WillNotLoad).run()
    third = info(out)
    assert third["finished"] is False
    last = third["invocations"][-1]
    assert last["outcome"] == "error" and last["exit_code"] == 2 and "weights file is corrupt" in last["message"]

    Engine(config(data, out)).run()
    fourth = info(out)
    assert fourth["finished"] is True and len(fourth["invocations"]) == 4
    assert fourth["invocations"][-1]["counts"]["already_done"] == 3
    assert fourth["totals"] == {"keys": 6, "done": 6, "failed": 0}
    assert fourth["counts"]["done"] == 3  # the top level still describes the latest invocation


def test_a_run_json_of_an_earlier_version_becomes_the_first_invocation(tmp_path):
    data = make_groups(tmp_path / "data", 2, per_group=1)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "old", "finished": True, "parameters": {"limit": 1},
                                              "counts": {"done": 1}, "engine": {"name": "local"}}))
    Engine(config(data, out)).run()
    old, new = info(out)["invocations"]
    assert old["run_id"] == "old" and old["outcome"] == "completed" and old["options"] == {"limit": 1}
    assert new["outcome"] == "completed"


def test_ctrl_c_from_the_terminal_leaves_finished_false(tmp_path):
    data = make_groups(tmp_path / "data", 12, per_group=1)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "autolabel", "run", str(data), "--backend", "doubles:BoxBackend",
                             "--batch-size", "1", "--out", str(out), "-q", "--backend-option", "hold_after=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(TESTS)})
    pred = out / "predictions.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not pred.exists() or pred.read_text().count("\n") < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    record = info(out)
    assert record["finished"] is False and record["invocations"][-1]["outcome"] == "interrupted"
    assert 2 <= record["totals"]["done"] < 12
