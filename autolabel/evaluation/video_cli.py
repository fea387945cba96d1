"""`autolabel eval` on video ground truth: the J / F / J&F table, JSON, and `--fail-under J&F=0.6`.

Per-frame COCO ground truth is also scored with the image metrics eval already has (each frame
an image), shown after the video table and gated the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from autolabel.config import key_values
from autolabel.errors import AutolabelError
from autolabel.evaluation.thresholds import gate_value
from autolabel.evaluation.video_metrics import VIDEO_METRICS, VideoEvalResult, evaluate_video


def split_fail_under(items: list[str]) -> tuple[dict[str, float], list[str]]:
    """The video gates (J, F, J&F, any case) and the other items, left for the image metrics."""
    video, rest = {}, []
    names = {m.lower(): m for m in VIDEO_METRICS}
    for item in items:
        try:
            ((key, text),) = key_values([item], str).items()
        except ValueError as e:
            raise AutolabelError(f"--fail-under {e} (METRIC=VALUE, e.g. J&F=0.6)") from None
        if key.lower() not in names:
            rest.append(item)
            continue
        video[names[key.lower()]] = gate_value(item, text)
    return video, rest


def video_failures(result: VideoEvalResult, gates: dict[str, float]) -> list[str]:
    lines = []
    for name, minimum in gates.items():
        value = result.overall[name]
        if value is None:
            lines.append(f"{name} is null (no ground-truth tracks), required >= {minimum:g}")
        elif value < minimum:
            lines.append(f"{name} = {value:.4f} is below {minimum:g}")
    return lines


def video_table(result: VideoEvalResult):
    from rich.table import Table

    table = Table(title=f"video: {result.videos} clip(s), {len(result.tracks)} ground-truth track(s), "
                        f"{result.false_tracks} false track(s)")
    for column in ("clip", "gt track", "category", "pred track", "J", "F", "J&F", "frames"):
        table.add_column(column, justify="right" if column in ("J", "F", "J&F", "frames") else "left")
    for t in result.tracks:
        table.add_row(t.video, str(t.gt_track), t.category, "-" if t.pred_track is None else str(t.pred_track),
                      f"{t.J:.4f}", f"{t.F:.4f}", f"{t.JF:.4f}", str(t.frames))
    o = result.overall
    table.add_row("overall", "", "", "", *("-" if o[m] is None else f"{o[m]:.4f}" for m in VIDEO_METRICS), "")
    return table


def run_video_eval(pred: Path, gt: Path, fail_under: list[str], json_out: Path | None, console, err) -> int:
    """Print the video metrics (and, for per-frame COCO ground truth, the image metrics); exit code."""
    from autolabel.terminal import print_table

    gates, rest = split_fail_under(fail_under)
    result = evaluate_video(pred, gt)
    print_table(console, video_table(result))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    out = {"video": result.to_json()}
    failed = video_failures(result, gates)
    data = json.loads(Path(gt).read_text(encoding="utf-8"))
    if "images" in data and "annotations" in data and Path(pred).is_dir():  # per-frame COCO: the image metrics too
        from autolabel.evaluation import evaluate, failures, parse_fail_under, render_table

        image_result = evaluate(pred, gt)
        print_table(console, render_table(image_result))
        out["frames"] = image_result.to_json()
        failed += failures(image_result, parse_fail_under(rest))
    elif rest:
        raise AutolabelError(f"--fail-under {', '.join(rest)}: YouTube-VIS ground truth is scored with "
                             f"{', '.join(VIDEO_METRICS)} only")
    if json_out:
        json_out.write_text(json.dumps(out, indent=2) + "\n")
    for line in failed:
        err.print(f"[bold red]below threshold:[/] {line}")
    return 1 if failed else 0
