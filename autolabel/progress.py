"""Progress and the end-of-run summary, rendered with rich on stderr."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress as _RichProgress, ProgressColumn, TextColumn, \
    TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

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
    """Groups labelled of total, groups/s, images/s, failures and ETA; silent with `--quiet`.

    Everything shown comes from finished work: a group counts when its last line is on disk, the
    rates are those groups (and their images) over the time since the start, the ETA is the groups
    left at that rate (`-` until one is done), failures count as their lines are written. Groups
    an earlier run finished start the bar without entering the rates."""

    def __init__(self, console: Console, enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.enabled = enabled
        self.clock = clock
        self._bar: _RichProgress | None = None
        self._task = None
        self._start = 0.0
        self._total: int | None = None
        self._finished = self._groups = self._images = self._failed = 0

    def note(self, lines: list[str]) -> None:
        """Before the bar: where each model loads from (a download is said before it starts)."""
        if self.enabled:
            for line in lines:
                self.console.print(f"[dim]model[/] {escape(line)}", highlight=False, soft_wrap=True)

    def start(self, total_groups: int | None, finished: int = 0) -> None:
        self._start = self.clock()
        self._total, self._finished = total_groups, finished
        self._groups = self._images = self._failed = 0
        if not self.enabled:
            return
        self._bar = _RichProgress(
            TextColumn("[bold]labelling"), BarColumn(), MofNCompleteColumn(),
            _Live(lambda: self.rates), _Live(lambda: f"[red]{self._failed} failed[/]" if self._failed else ""),
            TimeElapsedColumn(), _Live(lambda: f"eta {self.eta}"),
            console=self.console, transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("groups", total=total_groups, completed=finished)

    def advance(self, groups: int, images: int, failed: int) -> None:
        self._groups += groups
        self._images += images
        self._failed += failed
        if self._bar is not None:
            self._bar.update(self._task, advance=groups)

    @property
    def rates(self) -> str:
        elapsed = max(self.clock() - self._start, 1e-6)
        return f"{self._groups / elapsed:.2f} groups/s {self._images / elapsed:.1f} img/s"

    @property
    def eta(self) -> str:
        """The groups left at the rate of those labelled so far; `-` before the first one."""
        if not self._groups or self._total is None:
            return "-"
        left = max(self._total - self._finished - self._groups, 0)
        seconds = round(left * (self.clock() - self._start) / self._groups)
        return str(timedelta(seconds=seconds))

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class _Live(ProgressColumn):
    """A column whose text is computed when the bar redraws, so rates fall while nothing lands."""

    def __init__(self, text: Callable[[], str]):
        super().__init__()
        self._text = text

    def render(self, task) -> Text:
        return Text.from_markup(self._text())


def print_summary(console: Console, summary: RunSummary, out: Path, max_listed: int = 50) -> None:
    """The counts, then every failed group with its reason (capped, with the rest counted)."""
    console.print(
        f"groups {summary.groups}  images {summary.images}  labelled {summary.done}  "
        + (f"(redone {summary.redone}: done before with another template or variables)  " if summary.redone else "")
        + f"already done {summary.already_done}  failed {len(summary.failed)}  "
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
