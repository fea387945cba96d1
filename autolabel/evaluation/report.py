"""Showing a result: the terminal table, and `--report DIR` (Markdown with PNG plots).

The report re-reads PRED and GT for its few worst groups only (their masks are not kept in the
result), and looks their images up under the run's input root, then the GT file's folder. An
image that cannot be found or read is said so in the report and drawn on grey, never a crash.
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.table import Table

from autolabel.errors import InputError
from autolabel.evaluation.counted import CountedWarnings
from autolabel.evaluation.ground_truth import GroundTruth, load_ground_truth
from autolabel.evaluation.metrics import Sample, metric_names, score_labelling
from autolabel.evaluation.plots import Panel, draw_panels, iou_histogram
from autolabel.evaluation.predictions import Labelling, PredictionSet, load_predictions
from autolabel.evaluation.result import EvalResult, Metrics
from autolabel.images import decode_image

WORST_GROUPS = 5
MAX_PANELS = 6  # images drawn per group
REPORT = "report.md"


def _scopes(result: EvalResult) -> list[tuple[str, list[tuple[str, Metrics]]]]:
    return [("overall", [("overall", result.overall)]),
            ("category", sorted(result.per_category.items())),
            ("template", sorted(result.per_template.items())),
            ("reasoning category", sorted(result.per_reasoning_category.items()))]


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_table(result: EvalResult) -> Table:
    """Every scope's metrics in one table, `-` where a metric does not apply."""
    names = metric_names(result.iou_threshold)
    c = result.counts
    table = Table("scope", "name", *names, title="autolabel eval",
                  caption=f"{c['images']} images, {c['labellings']} labellings, {c['samples']} samples, "
                          f"{c['gt_instances']} GT instances, {c['predicted_masks']} predicted masks"
                          + (f"; {len(result.warnings)} warnings" if result.warnings else ""))
    for kind, rows in _scopes(result):
        for name, metrics in rows:
            table.add_row(kind, name, *(_value(metrics.get(m)) for m in names))
        if rows:
            table.add_section()
    return table


def write_report(result: EvalResult, out_dir: Path, pred: Path, gt: Path) -> Path:
    """Write DIR/report.md with per-category IoU histograms and the worst groups drawn; return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = metric_names(result.iou_threshold)
    lines = ["# autolabel eval", "", f"- PRED: `{pred}`", f"- GT: `{gt}`"]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in result.counts.items()]
    lines += ["", "Metrics are in 0-1; `-` means the metric does not apply (nothing to average over).", ""]
    for kind, rows in _scopes(result):
        if rows:
            lines += [f"## {kind.capitalize()}" if kind == "overall" else f"## Per {kind}", "",
                      "| name | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            lines += [f"| {_md(name)} | " + " | ".join(_value(m.get(n)) for n in names) + " |" for name, m in rows]
            lines.append("")
    lines += ["## Warnings", ""] + ([f"- {_md(w)}" for w in result.warnings] or ["none"]) + [""]
    lines += ["## IoU per sample, by category", ""]
    for k, (name, ious) in enumerate(sorted(result.ious_by_category.items()), 1):
        png = f"iou-{k:03d}-{_slug(name)}.png"
        iou_histogram(ious, name, out_dir / png)
        lines.append(f"![IoU histogram of {_md(name)}]({png})")
    lines += ["", "## Worst groups", "", "Green: GT only; red: predicted only; yellow: both.", ""]
    lines += _worst_groups(result, out_dir, Path(pred), Path(gt))
    path = out_dir / REPORT
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _worst_groups(result: EvalResult, out_dir: Path, pred: Path, gt: Path) -> list[str]:
    worst = result.worst_labellings(WORST_GROUPS)
    if not worst:
        return ["No samples."]
    warnings = CountedWarnings()  # already reported by evaluate
    truth = load_ground_truth(gt, warnings)
    predictions = load_predictions(pred, truth, warnings, only={key for key, _ in worst})
    by_key = {lab.key: lab for lab in predictions.labellings}
    lines: list[str] = []
    for rank, (key, mean_iou) in enumerate(worst, 1):
        lab = by_key.get(key)
        if lab is None:  # PRED changed since `evaluate` read it
            lines += [f"### {rank}. {_md(key)}: no longer in {pred}", ""]
            continue
        samples = list(score_labelling(lab, truth))
        panels, missing = _panels(lab, truth, predictions, samples)
        png = f"worst-{rank}.png"
        title = f"group {lab.group_id or '(whole file)'}" + (f", template {lab.template}" if lab.template else "")
        draw_panels(panels, f"{title}: mean IoU {mean_iou:.3f}", out_dir / png)
        lines += [f"### {rank}. {_md(title)}: mean IoU {mean_iou:.3f}", "", f"![{_md(title)}]({png})", ""]
        lines += [f"- image not drawn: {_md(m)}" for m in missing]
        lines += ["", "| image | category | outcome | IoU | GT px | predicted px |", "|---|---|---|---|---|---|"]
        lines += [f"| {_md(truth.images[s.image_id].file_name)} | {_md(s.category)} | {s.outcome} | {s.iou:.3f} "
                  f"| {s.gt_area} | {s.pred_area} |" for s in samples]
        lines.append("")
    return lines


def _panels(lab: Labelling, truth: GroundTruth, predictions: PredictionSet,
            samples: list[Sample]) -> tuple[list[Panel], list[str]]:
    """The labelling's images (its worst MAX_PANELS when it has more) with the masks of its samples'
    categories, and why any is not drawn."""
    def mean_iou(image_id: int) -> float:
        ious = [s.iou for s in samples if s.image_id == image_id]
        return sum(ious) / len(ious) if ious else 1.0

    shown = set(sorted(lab.images, key=mean_iou)[:MAX_PANELS])
    panels = []
    missing = [f"{len(lab.images) - len(shown)} more images of this group (the best scored)"] \
        if len(lab.images) > len(shown) else []
    for image_id, pred_file in lab.images.items():
        if image_id not in shown:
            continue
        image = truth.images[image_id]
        categories = {s.category for s in samples if s.image_id == image_id}
        ious = ", ".join(f"{s.category} {s.iou:.2f}" for s in samples if s.image_id == image_id)
        panel = Panel(f"{image.file_name}\n{ious}", image.height, image.width,
                      [t.rle for c in categories
                       for t in truth.truth_for(lab.group_id, lab.template, image_id).get(c, [])],
                      [m.rle for c in categories for m in lab.masks.get(image_id, {}).get(c, [])])
        candidates = list(dict.fromkeys(
            ([predictions.image_root / pred_file] if predictions.image_root and pred_file else [])
            + [truth.path.parent / image.file_name]))
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            missing.append(f"{image.file_name} not found (looked at {', '.join(str(p) for p in candidates)})")
        else:
            try:
                pixels = decode_image(found, str(found))
            except InputError as e:
                missing.append(str(e))
            else:
                if pixels.shape[:2] == (image.height, image.width):
                    panel.pixels = pixels
                else:
                    missing.append(f"{found} is {pixels.shape[1]}x{pixels.shape[0]} but GT says "
                                   f"{image.width}x{image.height}")
        panels.append(panel)
    return panels, missing


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "category"


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell or heading."""
    return str(text).replace("|", "\\|").replace("\n", " ")
