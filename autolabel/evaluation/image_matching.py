"""Which GT image a predicted file is: the same normalised path, else one path ending with the other.

A run stores paths relative to its input root and a GT file relative to its own folder, so the
same image is often `g1/a.jpg` on one side and `images/g1/a.jpg` (or an absolute path) on the
other: paths that differ only by a leading prefix match. Equal normalised paths match first; then
a GT path that ends with the whole predicted path, if exactly one does (`a.jpg` never matches
when two GT images are called `a.jpg`); then the longest GT path the predicted path ends with.
`g2/a.jpg` never matches `g1/a.jpg`. Every match made by prefix is counted in the warnings.
"""

from __future__ import annotations

import posixpath

from autolabel.errors import AutolabelError
from autolabel.evaluation.counted import CountedWarnings
from autolabel.evaluation.ground_truth import GtImage


def path_parts(file: str) -> tuple[str, ...]:
    """A path's components, with `\\` read as `/` and `.`/`..` resolved as far as they can be."""
    return tuple(p for p in posixpath.normpath(file.replace("\\", "/")).split("/") if p not in ("", "."))


class ImageMatcher:
    def __init__(self, images: dict[int, GtImage], warnings: CountedWarnings):
        self._warnings = warnings
        self._exact: dict[tuple[str, ...], int] = {}
        self._by_tail: dict[tuple[str, ...], list[int]] = {}
        self._memo: dict[str, int | None] = {}
        for image in images.values():
            parts = path_parts(image.file_name)
            if parts in self._exact:
                raise AutolabelError(f"GT images {self._exact[parts]} and {image.id} have the same "
                                     f"file_name {image.file_name!r}")
            self._exact[parts] = image.id
            for k in range(1, len(parts) + 1):
                self._by_tail.setdefault(parts[-k:], []).append(image.id)

    def match(self, file: str) -> int | None:
        """The GT image id of `file`, or None when no GT image (or more than one) fits."""
        if file not in self._memo:
            self._memo[file] = self._match(file)
        return self._memo[file]

    def _match(self, file: str) -> int | None:
        parts = path_parts(file)
        if parts in self._exact:
            return self._exact[parts]
        longer = self._by_tail.get(parts, [])
        if len(longer) > 1:
            self._warnings.add("predicted images whose path ends several GT paths, left unmatched", repr(file))
            return None
        if longer:
            self._warnings.add("images matched to GT by a path prefix difference", repr(file))
            return longer[0]
        for k in range(len(parts) - 1, 0, -1):
            if parts[-k:] in self._exact:
                self._warnings.add("images matched to GT by a path prefix difference", repr(file))
                return self._exact[parts[-k:]]
        return None
