"""One thread owns the mask head; whatever prompt sets callers have waiting go through it together.

With a serving engine, many requests are in flight at once, each in its own thread, and their
answers arrive one by one. Calling the head from each thread would run it one image at a time
(and it is not thread-safe); here every call queues its prompt sets and the owner thread takes
all that are waiting as one batch, so the head stays batched while the server streams answers.
In-process batches go through the same path as one call.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from autolabel.backends.mask_heads.base import MaskHead, MaskResult, PromptSet

MAX_SETS_PER_CALL = 256  # prompt sets (images) per head call when many requests are waiting


class MaskBatcher:
    def __init__(self, head: MaskHead):
        self.head = head
        self.busy_s = 0.0  # time the head spent working; the rest of a run it waited for answers
        self.calls = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="mask-head", daemon=True)
        self._thread.start()

    def predict(self, sets: list[PromptSet]) -> list[MaskResult]:
        """The head's `predict`, batched with whatever other threads are asking for right now."""
        if not sets:
            return []
        future: Future = Future()
        self._queue.put((sets, future))
        return future.result()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the head's thread (for head methods that do not batch, e.g. text prompts)."""
        future: Future = Future()
        self._queue.put((fn, args, future))
        return future.result()

    def close(self) -> None:
        """Stop the thread and let go of the head (its memory can be freed); counters stay."""
        self._queue.put(None)
        self._thread.join()
        self.head = None

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if len(item) == 3:
                fn, args, future = item
                self._run(future, fn, *args)
                continue
            waiting = [item]
            size = len(item[0])
            while size < MAX_SETS_PER_CALL:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None or len(more) == 3:
                    self._queue.put(more)  # handled after this batch, in order
                    break
                waiting.append(more)
                size += len(more[0])
            self._predict(waiting)

    def _predict(self, waiting: list[tuple[list[PromptSet], Future]]) -> None:
        if len(waiting) == 1:
            sets, future = waiting[0]
            self._run(future, self.head.predict, sets)
            return
        combined = [s for sets, _ in waiting for s in sets]
        t0 = time.perf_counter()
        try:
            results = self.head.predict(combined)
        except Exception:  # noqa: BLE001 - one caller's bad prompts must not fail the others: retry each alone
            self.busy_s += time.perf_counter() - t0
            for sets, future in waiting:
                self._run(future, self.head.predict, sets)
            return
        self.busy_s += time.perf_counter() - t0
        self.calls += 1
        start = 0
        for sets, future in waiting:
            future.set_result(results[start:start + len(sets)])
            start += len(sets)

    def _run(self, future: Future, fn: Callable[..., Any], *args: Any) -> None:
        t0 = time.perf_counter()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
            future.set_exception(e)
        finally:
            self.busy_s += time.perf_counter() - t0
            self.calls += 1
