"""What an evaluation found: the metrics per scope, counts, warnings, and what the report plots."""

from __future__ import annotations

from dataclasses import dataclass, field

Metrics = dict[str, float | None]


@dataclass
class EvalResult:
    overall: Metrics
    per_category: dict[str, Metrics]
    per_template: dict[str, Metrics]  # templates named by PRED; a COCO file without them has none
    per_reasoning_category: dict[str, Metrics]
    counts: dict[str, int]
    warnings: list[str]
    iou_threshold: float = 0.5
    # for the report, kept small (floats, not samples): every sample's IoU by category, and the
    # (sum of IoU, samples) of every labelling to find the worst groups
    ious_by_category: dict[str, list[float]] = field(default_factory=dict)
    labelling_scores: dict[str, tuple[float, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The `--json` document: metric values in 0-1, None (null) where a metric does not apply."""
        return {"overall": self.overall, "per_category": self.per_category, "per_template": self.per_template,
                "per_reasoning_category": self.per_reasoning_category, "counts": self.counts,
                "iou_threshold": self.iou_threshold, "warnings": self.warnings}

    def worst_labellings(self, n: int) -> list[tuple[str, float]]:
        """The n labellings (groups x templates) with the lowest mean IoU, worst first; among equal
        means, the one with more samples (more wrong) first."""
        ranked = sorted((total / count, -count, key) for key, (total, count) in self.labelling_scores.items() if count)
        return [(key, mean) for mean, _, key in ranked[:n]]
