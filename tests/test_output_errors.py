"""Output paths of the wrong kind or unwritable are one line on stderr and exit 2, never a traceback,
and nothing is written or changed."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli, make_groups, sample_predictions, write_run

EXPORTS_TO_FOLDERS = [["export", "masks"], ["export", "overlays"], ["export", "yolo", "--images", "none"]]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", sample_predictions())


def test_run_out_is_an_existing_file(tmp_path: Path):
    data = make_groups(tmp_path / "data", 1)
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    r = cli("run", str(data), "--backend", "doubles:BoxBackend", "--out", str(target), "-q")
    assert_one_line_error(r, "--out", "notes.txt", "not a folder")
    r = cli("run", str(data), "--backend", "doubles:BoxBackend", "--out", str(target / "run"), "-q")
    assert_one_line_error(r, "--out", "is a file")
    assert target.read_text() == "keep me"


def test_export_coco_output_is_a_folder_or_under_a_file(tmp_path: Path, run_dir: Path):
    folder = tmp_path / "exports"
    folder.mkdir()
    assert_one_line_error(cli("export", "coco", str(run_dir), "-o", str(folder)), "--output", "is a folder")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert_one_line_error(cli("export", "coco", str(run_dir), "-o", str(blocker / "coco.json")), "is a file")
    assert list(folder.iterdir()) == [] and blocker.read_text() == "x"


@pytest.mark.parametrize("command", EXPORTS_TO_FOLDERS, ids=lambda c: c[1])
def test_folder_exports_to_an_existing_file(tmp_path: Path, run_dir: Path, command: list[str]):
    target = tmp_path / "out.png"
    target.write_text("keep me")
    assert_one_line_error(cli(*command, str(run_dir), "-o", str(target)), "--output", "not a folder")
    assert_one_line_error(cli(*command, str(run_dir), "-o", str(target / "sub")), "is a file")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", [["export", "coco"], *EXPORTS_TO_FOLDERS], ids=lambda c: c[1])
def test_unwritable_output_folder(tmp_path: Path, run_dir: Path, command: list[str], monkeypatch, capsys):
    """Each export refuses a folder it cannot write, in one line, before writing anything. Run in
    process with the folder made read-only where the check asks (os.access), so it holds as root,
    whom permission bits do not stop."""
    from autolabel import cli as cli_module
    from autolabel import store

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(store.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    out = locked / ("coco.json" if command[1] == "coco" else "out")
    monkeypatch.setattr(sys, "argv", ["autolabel", *command, str(run_dir), "-o", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not writable" in err and str(locked) in err
    assert list(locked.iterdir()) == []


def test_a_failing_write_during_an_export_is_one_line(tmp_path: Path, run_dir: Path, monkeypatch, capsys):
    """A disk that fills up (or any OSError) half-way through an export: one line, exit 2."""
    from autolabel import cli as cli_module
    from autolabel.exporters import coco

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "coco.json"))

    monkeypatch.setattr(coco, "export_coco", disk_full)
    monkeypatch.setattr(sys, "argv", ["autolabel", "export", "coco", str(run_dir), "-o", str(tmp_path / "coco.json")])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err


def test_unwritable_folders_are_refused_before_anything_is_written(tmp_path: Path, monkeypatch):
    """The same check as above, runnable as root: os.access says the folder is read-only."""
    from autolabel import store
    from autolabel.errors import AutolabelError

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(store.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    with pytest.raises(AutolabelError, match="not writable"):
        store.check_output_file(locked / "coco.json", "--output")
    with pytest.raises(AutolabelError, match="not writable"):
        store.check_output_dir(locked / "new" / "deeper", "--output")  # the nearest folder that exists
    with pytest.raises(AutolabelError, match="not writable"):
        store.check_output_dir(locked, "--out")
    store.check_output_dir(tmp_path / "fine", "--out")
    assert not (tmp_path / "fine").exists() and list(locked.iterdir()) == []
