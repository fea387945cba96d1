"""Tables are never cut: off a terminal (CI logs, pipes) they take the width they need; on a narrow
terminal numbers keep their digits and only long text wraps."""

from __future__ import annotations

import io

from helpers import cli, make_groups
from rich.console import Console

from autolabel.evaluation import evaluate, render_table
from autolabel.evaluation.metrics import metric_names
from autolabel.terminal import print_table

NARROW = {"COLUMNS": "80"}  # what CI runners often set: ignored off a terminal


def test_eval_in_a_pipe_prints_every_number_whole(tmp_path):
    data = make_groups(tmp_path / "data", 2)
    run_dir = tmp_path / "run"
    assert cli("run", str(data), "--backend", "doubles:BoxBackend", "--prompt", "ontology", "--prompt", "multi-target",
               "--var", "classes=cat, dog, bird", "--out", str(run_dir), "-q").returncode == 0
    gt = tmp_path / "gt.json"
    assert cli("export", "coco", str(run_dir), "-o", str(gt)).returncode == 0
    r = cli("eval", str(run_dir), "--gt", str(gt), env=NARROW)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout, r.stdout
    header = next(line for line in r.stdout.splitlines() if "scope" in line)
    assert all(name in header for name in metric_names()), header
    overall = next(line for line in r.stdout.splitlines() if "overall" in line)
    assert overall.count("1.000") == len(metric_names()), overall


def test_other_tables_in_a_pipe_are_not_cut():
    for args in (["prompts", "list"], ["models"]):
        r = cli(*args, env=NARROW)
        assert r.returncode == 0 and "…" not in r.stdout, (args, r.stdout)
    assert "spatial reasoning: compare where things are" in cli("prompts", "list", env=NARROW).stdout


def test_a_narrow_terminal_wraps_text_but_keeps_numbers(tmp_path):
    data = make_groups(tmp_path / "data", 1)
    run_dir = tmp_path / "run"
    assert cli("run", str(data), "--backend", "doubles:BoxBackend", "--var", "classes=cat, dog, bird",
               "--out", str(run_dir), "-q").returncode == 0
    gt = tmp_path / "gt.json"
    assert cli("export", "coco", str(run_dir), "-o", str(gt)).returncode == 0
    console = Console(file=io.StringIO(), width=60, force_terminal=True, color_system=None)
    print_table(console, render_table(evaluate(run_dir, gt)))
    text = console.file.getvalue()
    assert "…" not in text, text
    overall = next(line for line in text.splitlines() if "overall" in line)
    assert overall.count("1.000") == len(metric_names()), overall  # whole; the terminal wraps the long line
