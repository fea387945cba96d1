"""The progress bar counts work done: a group when its last line is on disk, rates and ETA from
those groups, failures as their lines are written."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import make_groups
from rich.console import Console

from autolabel.config import RunConfig
from autolabel.engine import Engine, Progress
from autolabel.progress import RichProgress


class Recorder(Progress):
    """Checks, at every advance, that what it is told is already on disk."""

    def __init__(self, out: Path, templates: int):
        self.out, self.templates = out, templates
        self.started: tuple | None = None
        self.groups = self.images = self.failed = 0
        self.calls: list[tuple[int, int, int]] = []

    def start(self, total_groups, finished=0):
        self.started = (total_groups, finished)

    def advance(self, groups, images, failed):
        self.groups += groups
        self.images += images
        self.failed += failed
        self.calls.append((groups, images, failed))
        written = [line for p in self.out.glob("predictions*.jsonl") for line in p.read_text().splitlines()]
        assert self.groups * self.templates <= len(written), "a group was counted before its lines were written"
        assert self.failed <= sum('"status":"error"' in line for line in written)


@pytest.mark.parametrize("server_like", [False, True], ids=["batched", "streaming"])
def test_groups_advance_when_their_lines_are_written(tmp_path, template, server_like):
    data = make_groups(tmp_path / "data", 7, per_group=2)
    (data / "g003").rename(data / "boom")  # fails in the model: counted when its line lands
    out = tmp_path / "run"
    cfg = RunConfig(input=data, out=out, prompt=[template, "functional"], backend="doubles:BoxBackend", quiet=True,
                    batch_size=4)
    if server_like:  # the engine's --server path (each request in flight on its own), with the double
        cfg = cfg.model_copy(update={"server": "http://localhost:1/v1", "concurrency": 3})
    recorder = Recorder(out, templates=2)
    summary = Engine(cfg, recorder).run()
    assert recorder.started == (7, 0)
    assert recorder.groups == 7 and recorder.images == 14 and recorder.failed == 2 == len(summary.failed)
    # the rerun starts the bar at the groups already finished; only the failed one is left to do
    (data / "boom").rename(data / "fixed")
    rerun = Recorder(out, templates=2)
    Engine(cfg, rerun).run()
    assert rerun.started == (7, 6) and rerun.groups == 1 and rerun.failed == 0


def test_rates_and_eta_come_from_finished_groups():
    """The issue's case: 100 s into a 300-group run with nothing written shows no rate and no ETA
    (it showed 104.88 groups/s, eta 0:00:02 from groups merely queued)."""
    now = [0.0]
    progress = RichProgress(Console(file=io.StringIO(), width=200), clock=lambda: now[0])
    progress.start(300, finished=0)
    try:
        now[0] = 100.0
        assert progress.rates == "0.00 groups/s 0.0 img/s" and progress.eta == "-"
        progress.advance(7, 21, 1)
        assert progress.rates == "0.07 groups/s 0.2 img/s"
        assert progress.eta == "1:09:46"  # 293 groups left at 7 per 100 s
        now[0] = 200.0  # nothing lands for 100 s: the rate falls, the ETA grows
        assert progress.rates == "0.04 groups/s 0.1 img/s" and progress.eta == "2:19:31"
        assert progress._bar.tasks[0].completed == 7 and progress._failed == 1
    finally:
        progress.stop()


def test_groups_finished_earlier_start_the_bar_but_not_the_rate():
    now = [0.0]
    progress = RichProgress(Console(file=io.StringIO()), enabled=False, clock=lambda: now[0])
    progress.start(100, finished=90)
    now[0] = 10.0
    progress.advance(5, 5, 0)
    assert progress.rates == "0.50 groups/s 0.5 img/s" and progress.eta == "0:00:10"
