"""`--fail-under METRIC=VALUE`: quality gates for CI on the overall metrics.

A gated metric that is None (it does not apply: no absent targets for N-acc, no GT instances
for mIoU...) fails its gate: a CI job that asks for a number it cannot get should say so rather
than pass without checking.
"""

from __future__ import annotations

from autolabel.config import key_values
from autolabel.errors import AutolabelError
from autolabel.evaluation.metrics import metric_names
from autolabel.evaluation.result import EvalResult


def parse_fail_under(items: list[str], iou_threshold: float = 0.5) -> dict[str, float]:
    """`["gIoU=0.5", "AP50=0.3"]` -> {"gIoU": 0.5, "AP50": 0.3}; names are matched ignoring case."""
    valid = {name.lower(): name for name in metric_names(iou_threshold)}
    try:
        given = key_values(items, str)
    except ValueError as e:
        raise AutolabelError(f"--fail-under {e} (METRIC=VALUE, e.g. gIoU=0.5)") from None
    thresholds: dict[str, float] = {}
    for key, text in given.items():
        name = valid.get(key.lower())
        if name is None:
            raise AutolabelError(f"--fail-under {key}={text}: unknown metric {key!r}; "
                                 f"valid: {', '.join(metric_names(iou_threshold))}")
        thresholds[name] = gate_value(f"{key}={text}", text)
    return thresholds


def gate_value(item: str, text: str) -> float:
    """The VALUE of a `--fail-under` item (`item` as the user wrote it, for the message): a number in 0-1."""
    try:
        value = float(text)
    except ValueError:
        raise AutolabelError(f"--fail-under {item}: the value must be a number in 0-1") from None
    if not 0.0 <= value <= 1.0:
        raise AutolabelError(f"--fail-under {item}: metrics are in 0-1, not percent")
    return value


def failures(result: EvalResult, thresholds: dict[str, float]) -> list[str]:
    """One line per overall metric below its threshold, or None where a value was required."""
    lines = []
    for name, minimum in thresholds.items():
        value = result.overall.get(name)
        if value is None:
            lines.append(f"{name} is null (does not apply to this data), required >= {minimum:g}")
        elif value < minimum:
            lines.append(f"{name} = {value:.4f} is below {minimum:g}")
    return lines
