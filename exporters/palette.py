"""Instance colours shared by the exporters that draw: colour PNGs of the masks and overlays.

Colour k (0-based) is fixed, so instance 3 of a mask PNG and the third mask of an overlay have
the same colour everywhere. The first colours are a hand-picked set of saturated, easily told
apart hues (after Sasha Trubetskoy's list, minus the pale ones that vanish on photos); after
them hues step by the golden ratio, so any number of instances gets colours.
"""

from __future__ import annotations

import colorsys

import numpy as np

BASE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0),
    (128, 128, 0), (0, 0, 128),
)
_GOLDEN = 0.618033988749895


def instance_colors(n: int) -> np.ndarray:
    """n RGB colours as an (n, 3) uint8 array: BASE first, then golden-ratio hue steps."""
    colors = [BASE[k] for k in range(min(n, len(BASE)))]
    for k in range(len(BASE), n):
        hue = (k * _GOLDEN) % 1.0
        saturation = 0.65 + 0.35 * ((k * 7) % 3) / 2
        value = 0.75 + 0.25 * ((k * 5) % 2)
        colors.append(tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    return np.array(colors, np.uint8).reshape(-1, 3)


def index_lut(instances: int) -> np.ndarray:
    """Lookup table value -> RGB for an instance-indexed PNG: 0 (background) black, k colour k-1."""
    return np.vstack([np.zeros((1, 3), np.uint8), instance_colors(instances)])
