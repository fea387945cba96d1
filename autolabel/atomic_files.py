"""Output files that appear whole or not at all, and compact JSON streamed into them.

Every file autolabel writes for others to read (exports, legends, `run.json`) is written to a
temp file beside it and renamed into place when complete, so a crash or a full disk never leaves
half a file where a reader expects a whole one. Large JSON outputs are streamed item by item
(`JsonItems`), so memory does not grow with the dataset.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A text file that appears at `path` only once fully written (temp file + fsync + rename)."""
    with _temp_beside(path) as (fd, tmp):
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` at `path`, all of it or none (temp file + rename). No fsync: cheap enough for a file
    per image, as PNG exports write, where a rerun rewrites whatever a power loss took."""
    with _temp_beside(path) as (fd, tmp):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside `path`, with its extension (for writers that pick a format by it, such as
    OpenCV's VideoWriter), renamed to `path` once the block ends without an error."""
    with _temp_beside(path, suffix=path.suffix) as (fd, tmp):
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)


@contextmanager
def _temp_beside(path: Path, suffix: str = ".tmp") -> Iterator[tuple[int, str]]:
    """A hidden temp file in `path`'s folder (created if need be), removed if writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        yield fd, tmp
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JsonItems:
    """Writes the elements of a JSON array or object one at a time, commas in between."""

    def __init__(self, f: IO[str]):
        self._f = f
        self._separator = ""

    def add(self, text: str) -> None:
        self._f.write(self._separator + text)
        self._separator = ","


def dumps(obj: object) -> str:
    """Compact JSON, non-ASCII kept as is: the form of every streamed JSON output."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
