"""The report's PNGs: IoU histograms and images with true and predicted masks drawn over them.

matplotlib's object API (Figure, no pyplot) keeps this free of GUI backends and global state.
Masks are decoded here one image at a time, never for the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from autolabel.masks import rle_to_mask

TRUE_ONLY = (40, 200, 40)  # green: GT the prediction missed
PRED_ONLY = (230, 40, 40)  # red: predicted where GT has nothing
BOTH = (250, 210, 0)  # yellow: agreement
_MAX_SIDE = 512  # drawn images are shrunk to this: the PNGs stay small on large photos


@dataclass
class Panel:
    """One image of a group as drawn: its pixels (None when not found), masks and a caption."""

    title: str
    height: int
    width: int
    truth: list[dict]  # RLEs
    predicted: list[dict]
    pixels: np.ndarray | None = None


def iou_histogram(ious: list[float], title: str, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.hist(ious, bins=np.linspace(0.0, 1.0, 11), color="#4477aa", edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU per sample (image x category)")
    ax.set_ylabel("samples")
    ax.set_title(f"{title}: {len(ious)} samples, gIoU {np.mean(ious):.3f}" if ious else title, fontsize=9)
    fig.savefig(out)


def draw_panels(panels: list[Panel], title: str, out: Path) -> None:
    """A row of images, GT-only pixels green, predicted-only red, both yellow."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(3.2 * len(panels), 3.6), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        ax.imshow(_overlay(panel))
        ax.set_title(panel.title, fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.legend(handles=[Patch(color=np.array(c) / 255, label=label) for c, label in
                        ((TRUE_ONLY, "GT only"), (PRED_ONLY, "predicted only"), (BOTH, "both"))],
               loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.savefig(out)


def _overlay(panel: Panel) -> np.ndarray:
    truth, predicted = _union(panel.truth, panel), _union(panel.predicted, panel)
    base = (panel.pixels if panel.pixels is not None
            else np.full((panel.height, panel.width, 3), 96, np.uint8)).astype(np.float32)
    for mask, colour in ((truth & ~predicted, TRUE_ONLY), (predicted & ~truth, PRED_ONLY), (truth & predicted, BOTH)):
        base[mask] = 0.45 * base[mask] + 0.55 * np.array(colour, np.float32)
    image = base.astype(np.uint8)
    scale = _MAX_SIDE / max(panel.height, panel.width)
    if scale < 1:
        image = cv2.resize(image, (max(1, round(panel.width * scale)), max(1, round(panel.height * scale))),
                           interpolation=cv2.INTER_AREA)
    return image


def _union(rles: list[dict], panel: Panel) -> np.ndarray:
    mask = np.zeros((panel.height, panel.width), bool)
    for rle in rles:
        mask |= rle_to_mask(rle)
    return mask
