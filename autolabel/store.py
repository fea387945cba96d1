"""The run directory: predictions.jsonl (append-only, the single source of truth) and run.json.

Lines are flushed per batch; a torn last line after a crash is cut off on resume. A key can
appear more than once (a retried failure, `--overwrite`): the last line wins for every reader.
Shards (`--shard I/N`) and Ray workers write their own `predictions.<name>.jsonl` beside it so
several writers can share one directory; readers take all of them.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from autolabel.atomic_files import atomic_output
from autolabel.errors import AutolabelError
from autolabel.prediction import Prediction

PREDICTIONS = "predictions.jsonl"
RUN_INFO = "run.json"


def prediction_files(run_dir: Path) -> list[Path]:
    """All prediction files of a run dir, the unsharded one first, then shards by name."""
    main = run_dir / PREDICTIONS
    shards = sorted(p for p in run_dir.glob("predictions.*.jsonl") if p != main)
    return ([main] if main.exists() else []) + shards


def _iter_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw)
            except json.JSONDecodeError:
                if not raw.endswith(b"\n"):
                    return  # a torn last line: the writer died mid-write; resume repairs it
                raise AutolabelError(f"{path}:{lineno}: not a valid prediction line") from None


def scan_status(run_dirs: Iterable[Path]) -> dict[str, str]:
    """key -> status of its last line, reading only what resume and reports need."""
    return {key: line[0] for key, line in scan_lines(run_dirs).items()}


def scan_lines(run_dirs: Iterable[Path]) -> dict[str, tuple[str, str, dict[str, str]]]:
    """key -> (status, template hash, variables) of its last line: what resume compares with what a
    rerun would ask. Equal variable mappings share one object, so memory stays one entry per key."""
    lines: dict[str, tuple[str, str, dict[str, str]]] = {}
    shared: dict[tuple, dict[str, str]] = {}
    for run_dir in run_dirs:
        for path in prediction_files(Path(run_dir)):
            for _, d in _iter_lines(path):
                variables = d.get("variables") or {}
                variables = shared.setdefault(tuple(sorted(variables.items())), variables)
                lines[d["key"]] = (d.get("status", "ok"), d.get("template_hash", ""), variables)
    return lines


def read_predictions(run_dirs: Iterable[Path]) -> Iterator[Prediction]:
    """Every key's last prediction, streamed in file order (memory: one int per key)."""
    run_dirs = [Path(r) for r in run_dirs]
    for r in run_dirs:
        if not r.is_dir():
            raise AutolabelError(f"{r}: not a run directory")
        if not prediction_files(r):
            raise AutolabelError(f"{r}: no {PREDICTIONS} in this run directory")
    last: dict[str, tuple[int, int]] = {}
    files = [p for r in run_dirs for p in prediction_files(r)]
    for fi, path in enumerate(files):
        for lineno, d in _iter_lines(path):
            last[d["key"]] = (fi, lineno)
    for fi, path in enumerate(files):
        for lineno, d in _iter_lines(path):
            if last.get(d["key"]) == (fi, lineno):
                try:
                    yield Prediction.from_dict(d)
                except (KeyError, TypeError) as e:
                    raise AutolabelError(f"{path}:{lineno}: prediction line missing or bad field: {e}") from None


def read_run_info(run_dir: Path) -> dict:
    """run.json merged over every writer of the directory (shards write run.<name>.json)."""
    info: dict = {}
    for path in [run_dir / RUN_INFO, *sorted(run_dir.glob("run.*.json"))]:
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise AutolabelError(f"{path}: not valid JSON: {e}") from None
            for k, v in data.items():
                if isinstance(v, dict) and isinstance(info.get(k), dict):
                    info[k] = {**info[k], **v}
                else:
                    info.setdefault(k, v)
    return info


def image_roots(run_dirs: Iterable[Path], override: Path | None = None) -> list[Path]:
    """Folders the runs' image files are relative to: `override`, else each run.json's input_root
    that is a folder here. None at all is a configuration error naming where the images were."""
    if override is not None:
        if not Path(override).is_dir():
            raise AutolabelError(f"--image-root {override}: not a folder")
        return [Path(override)]
    roots: list[Path] = []
    recorded: list[str] = []
    for run_dir in run_dirs:
        root = read_run_info(Path(run_dir)).get("input_root")
        if not root:
            continue
        recorded.append(str(root))
        if Path(root).is_dir() and Path(root) not in roots:
            roots.append(Path(root))
    if not roots:
        where = (f"images were read from {', '.join(dict.fromkeys(recorded))}, which is not a folder here"
                 if recorded else "run.json names no input_root")
        raise AutolabelError(f"{where}; pass --image-root DIR where the images are now")
    return roots


def check_output_dir(path: Path, flag: str) -> None:
    """Fail early, in one line, when folder `path` cannot be created or written (nothing is created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AutolabelError(f"{flag} {path}: exists and is not a folder; give a folder (new or existing)")
    _check_writable_ancestor(path, flag)


def check_output_file(path: Path, flag: str) -> None:
    """Fail early, in one line, when file `path` cannot be written (nothing is created)."""
    path = Path(path)
    if path.is_dir():
        raise AutolabelError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'out.json'}")
    if path.exists() and not path.is_file():
        raise AutolabelError(f"{flag} {path}: exists and is not a regular file")
    _check_writable_ancestor(path.parent, flag, target=path)


def _check_writable_ancestor(folder: Path, flag: str, target: Path | None = None) -> None:
    """The folder, or the nearest part of it that exists, must be a writable folder."""
    target = target or folder
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise AutolabelError(f"{flag} {target}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise AutolabelError(f"{flag} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AutolabelError(f"{flag} {target}: folder {existing} is not writable")


class PredictionWriter:
    """Appends prediction lines to one file under an exclusive lock; one writer per file."""

    def __init__(self, run_dir: Path, name: str | None = None):
        self.run_dir = run_dir
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise AutolabelError(f"{run_dir}: exists and is not a folder; give a run directory") from None
        except OSError as e:
            raise AutolabelError(f"{run_dir}: cannot create the run directory: {e.strerror}") from None
        suffix = f".{name}" if name else ""
        self.path = run_dir / f"predictions{suffix}.jsonl"
        self.info_path = run_dir / f"run{suffix}.json"
        self._lock = open(run_dir / f".lock{suffix}", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise AutolabelError(f"{run_dir}: another autolabel run is writing here "
                                 f"(lock {self._lock.name}); wait for it or use another --out") from None
        self._repair_torn_tail()
        self._file = self.path.open("a", encoding="utf-8")

    def _repair_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            # cut back to the last complete line
            pos = size
            while pos > 0:
                step = min(65536, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    f.truncate(pos - step + nl + 1)
                    return
                pos -= step
            f.truncate(0)

    def write(self, predictions: Iterable[Prediction]) -> None:
        """Append and flush to disk: a batch survives a crash right after this returns."""
        self._file.write("".join(p.to_json() + "\n" for p in predictions))
        self._file.flush()
        os.fsync(self._file.fileno())

    def write_info(self, info: dict) -> None:
        with atomic_output(self.info_path) as f:
            f.write(json.dumps(info, indent=2, ensure_ascii=False))

    def close(self) -> None:
        self._file.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
