"""PRIMA validation: the model being trained answers held-out training records, scored by `autolabel eval`.

The answers take the path of `autolabel run --backend prima`: the `prima` backend files what the
model names under the records' categories and `Labeler` writes the prediction lines, so validation
scores exactly what a run would write. Only the questions differ: each record's own, with its
`<ref>` boxes, rather than a template's. The records' masks become the COCO ground truth
(`prima/scoring.py`).

This sits above both `prima` and the backends; the training loop (`prima/train.py`) is handed
`validate` by its caller.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from autolabel.backends.base import Answer, BackendOptions, Request
from autolabel.backends.prima import PrimaBackend
from autolabel.config import RunConfig
from autolabel.groups import ImageGroup, ImageRef
from autolabel.labeler import Labeler
from autolabel.prediction import prediction_key
from autolabel.prima.data import Record
from autolabel.prima.scoring import record_categories, write_ground_truth
from autolabel.store import PredictionWriter
from autolabel.templates import AnswerRules, RenderedPrompt, RenderedTurn

VALIDATION_TEMPLATE = "prima-validation"
VALIDATION_BATCH = 16  # groups per generate call


def validate(model, records: list[Record], max_new_tokens: int) -> dict[str, float | None]:
    """Generate on the records and score with `autolabel eval` (gIoU, cIoU, N-acc, T-acc, ...)."""
    from autolabel.evaluation import evaluate

    was_training = model.training
    model.eval()
    with tempfile.TemporaryDirectory(prefix="autolabel-prima-val-") as tmp:
        gt = write_ground_truth(records, Path(tmp) / "gt.json")
        write_predictions(model, records, Path(tmp) / "run", max_new_tokens)
        result = evaluate(Path(tmp) / "run", gt)
    model.train(was_training)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.overall.items()}


def write_predictions(model, records: list[Record], run_dir: Path, max_new_tokens: int,
                      batch_size: int = VALIDATION_BATCH) -> Path:
    """A run directory `autolabel eval` reads: the model's answers to every record, `batch_size`
    groups per generate call, as lines of the `prima` backend."""
    categories = record_categories(records)
    labeler = Labeler(RunConfig(backend=PrimaBackend.name, batch_size=batch_size, max_new_tokens=max_new_tokens),
                      backend_factory=lambda options: _RecordQuestions(options, model))
    writer = PredictionWriter(run_dir)
    try:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            examples = [record.questions() for record in batch]
            requests = [_request(record, example, categories, labeler.model_id)
                        for record, example in zip(batch, examples)]
            labeler.backend.asked = {id(request): example for request, example in zip(requests, examples)}
            writer.write(labeler.lines(labeler.predict(requests)))
        writer.write_info({"templates": {VALIDATION_TEMPLATE: {"categories": categories}}})
    finally:
        writer.close()
    return run_dir


class _RecordQuestions(PrimaBackend):
    """The `prima` backend on a model in memory, asking each request its record's own questions."""

    def __init__(self, options: BackendOptions, model):
        super().__init__(options, model)
        self.asked: dict[int, object] = {}  # id(request) -> its record's PRIMA Example (images, questions, refs)

    def predict(self, requests: list[Request]) -> list[Answer]:
        return self.answer(requests, [self.asked[id(r)] for r in requests])


def _request(record: Record, example, categories: list[str], model_id: str) -> Request:
    """A record as the request a run would make: every category named as itself, any image allowed."""
    files = record.data["images"]
    group = ImageGroup(record.id, record.root, tuple(ImageRef(file, record.root / file) for file in files))
    prompt = RenderedPrompt(name=VALIDATION_TEMPLATE, hash="", category="prima", system="",
                            turns=tuple(RenderedTurn(turn.question) for turn in example.turns),
                            ontology={c: c for c in categories}, rules=AnswerRules(),
                            allowed_images=tuple(range(1, len(files) + 1)), visual_prompt=False)
    return Request(prediction_key(record.id, VALIDATION_TEMPLATE, model_id), group, example.images, prompt)
