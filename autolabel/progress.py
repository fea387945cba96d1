"""Progress and the end-of-run summary, rendered with rich on stderr."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as _RichProgress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from autolabel.engine import Progress, RunSummary

_SEVERAL_FILES = re.compile(r"^(.*?\b\d+ unusable files): (.*)$")  # as errors.describe_files writes them


def silence_library_progress() -> None:
    """`--quiet`: no progress bars from the model libraries either (transformers' "Loading weights",
    hub downloads), so CI logs hold only our summary. The environment variable is read when
    huggingface_hub and transformers are imported, here and in processes started later (Ray
    workers); libraries already imported are told directly."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].disable_progress_bar()


class RichProgress(Progress):
    """Groups done of total, groups/s, images/s, failures and ETA; silent with `--quiet`."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self._bar: _RichProgress | None = None
        self._task = None
        self._images = 0
        self._failed = 0

    def start(self, total_groups: int | None) -> None:
        if not self.enabled:
            return
        self._bar = _RichProgress(
            TextColumn("[bold]labelling"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rates]}"), TextColumn("[red]{task.fields[failed]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("groups", total=total_groups, rates="", failed="")

    def advance(self, groups: int, images: int, failed: int) -> None:
        if self._bar is None:
            return
        self._images += images
        self._failed += failed
        task = self._bar.tasks[0]
        elapsed = max(task.elapsed or 0.0, 1e-6)
        done = task.completed + groups
        self._bar.update(self._task, advance=groups,
                         rates=f"{done / elapsed:.2f} groups/s {self._images / elapsed:.1f} img/s",
                         failed=f"{self._failed} failed" if self._failed else "")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def print_summary(console: Console, summary: RunSummary, out: Path, max_listed: int = 50) -> None:
    """The counts, then every failed group with its reason (capped, with the rest counted)."""
    console.print(
        f"groups {summary.groups}  images {summary.images}  labelled {summary.done}  "
        f"already done {summary.already_done}  failed {len(summary.failed)}  "
        f"skipped files {len(summary.skipped_files)}  in {summary.wall_s:.1f}s -> {out}",
        highlight=False,
    )
    for file, reason in summary.skipped_files[:max_listed]:
        console.print(f"  skipped {file}: {reason}", highlight=False, markup=False)
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} failed:[/]")
        for key, reason in summary.failed[:max_listed]:
            several = _SEVERAL_FILES.match(reason)  # a group with several bad files: one line each
            console.print(f"  {key}: {several.group(1) + ':' if several else reason}", highlight=False, markup=False)
            for part in several.group(2).split("; ") if several else ():
                console.print(f"      {part}", highlight=False, markup=False)
        if len(summary.failed) > max_listed:
            console.print(f"  ... and {len(summary.failed) - max_listed} more (status \"error\" in predictions*.jsonl)")


class TrainProgress:
    """Batches done of total, the latest losses and ETA, for `autolabel train`."""

    def __init__(self, console: Console):
        self.console = console
        self._bar: _RichProgress | None = None

    def start(self, total_batches: int, done: int = 0) -> None:
        self._bar = _RichProgress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TextColumn("eta"),
                                  TimeRemainingColumn(), console=self.console)
        self._bar.start()
        self._bar.add_task("batches", total=total_batches, completed=done, losses="")

    def advance(self, losses: dict[str, float]) -> None:
        if self._bar is not None:
            shown = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "loss")
            self._bar.update(self._bar.task_ids[0], advance=1, losses=shown)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
