"""Ordered read-ahead: load the next items in threads while the caller works on the current one.

Image decoding (PIL/libjpeg) and RLE decoding release the GIL, so threads overlap them with the
model. The window bounds how many loaded items wait, which bounds memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def read_ahead(items: Iterable[Item], load: Callable[[Item], Loaded], pool: ThreadPoolExecutor,
               window: int) -> Iterator[Loaded]:
    """`load(item)` for every item, yielded in order, at most `window` loads ahead of the consumer."""
    queue: deque[Future] = deque()
    for item in items:
        queue.append(pool.submit(load, item))
        if len(queue) >= window:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()
