"""`autolabel eval`: label quality against ground truth with the papers' metrics.

Metric definitions are in `metrics.py`; how PRED and GT are read and matched in `predictions.py`
and `image_matching.py`; AP in `coco_ap.py`.
"""

from autolabel.evaluation.evaluator import evaluate
from autolabel.evaluation.metrics import metric_names
from autolabel.evaluation.report import render_table, write_report
from autolabel.evaluation.result import EvalResult
from autolabel.evaluation.thresholds import failures, parse_fail_under

__all__ = ["EvalResult", "evaluate", "failures", "metric_names", "parse_fail_under", "render_table", "write_report"]
