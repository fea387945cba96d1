"""Counted warnings: what eval left out or assumed, said once per kind with a count and an example."""

from __future__ import annotations


class CountedWarnings:
    """Collects `what` happened how often; a run of 100k groups gives one line per kind, not 100k."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._examples: dict[str, str] = {}

    def add(self, what: str, example: str = "", n: int = 1) -> None:
        self._counts[what] = self._counts.get(what, 0) + n
        if example:
            self._examples.setdefault(what, example)

    def lines(self) -> list[str]:
        return [f"{what}: {n}" + (f" (e.g. {self._examples[what]})" if what in self._examples else "")
                for what, n in self._counts.items()]
