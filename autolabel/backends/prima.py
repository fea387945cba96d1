"""The `prima` backend: a PRIMA checkpoint (trained with `autolabel train prima`) served by the engine.

Greedy answers turn by turn; each `[SEG]` is a mask on the image the pointer head picks, each
`[REJ]` a rejected target. The phrase before a marker is filed under the ontology entry it names.
A group's visual prompts (exemplar boxes) enter the first question as `<ref>` tokens. The groups
of a batch are generated together.
"""

from __future__ import annotations

from autolabel.backends.base import Answer, Backend, BackendOptions, Request, TargetMask, TurnAnswer
from autolabel.prediction import Rejection

PRIMA_MAX_NEW_TOKENS = 512  # per turn, when --max-new-tokens is not given


class PrimaBackend(Backend):
    name = "prima"
    default_model = None  # no public PRIMA weights: train one (`autolabel train prima`) and pass --model DIR

    def __init__(self, options: BackendOptions, model=None):
        """Loads the checkpoint `options.model`, or serves `model`, a PrimaModel already in memory
        (validation during training)."""
        super().__init__(options)
        if model is None:
            from autolabel.errors import AutolabelError
            from autolabel.loading import pick_device, pick_dtype, resolve_pretrained
            from autolabel.prima.model import PrimaModel

            if not options.model:
                raise AutolabelError("--backend prima needs --model DIR: a checkpoint written by "
                                     "`autolabel train prima`")
            device = pick_device(options.device)
            model = PrimaModel.from_pretrained(resolve_pretrained(options.model), device=device,
                                               dtype=pick_dtype(options.dtype, device))
        self.model = model
        self.sources = model.config.sources

    def model_info(self) -> dict:
        return {"model": self.model_id, "sources": self.sources}

    def predict(self, requests: list[Request]) -> list[Answer]:
        return self.answer(requests, [_example(r) for r in requests])

    def answer(self, requests: list[Request], examples: list) -> list[Answer]:
        """Each request answered by generating on its PRIMA Example; the batch's groups are generated
        together (left-padded), turn by turn."""
        generated = self.model.generate_batch(examples,
                                              max_new_tokens=self.options.max_new_tokens or PRIMA_MAX_NEW_TOKENS)
        return [self._answer(request, turns) for request, turns in zip(requests, generated)]

    def _answer(self, request: Request, generated: list) -> Answer:
        from autolabel.prima.scoring import match_category

        names = {**{c: c for c in request.prompt.categories}, **request.prompt.ontology}
        answers = []
        for round_, (turn, g) in enumerate(zip(request.prompt.turns, generated)):
            masks, rejected = [], []
            for item in g.grounded:
                label = match_category(item.phrase, list(names))
                category = names.get(label, label)
                if item.mask is None:
                    rejected.append(Rejection(label=label, category=category, phrase=item.phrase, round=round_))
                else:
                    masks.append(TargetMask(image=item.image, label=label, category=category, phrase=item.phrase,
                                            mask=item.mask, score=item.score, round=round_))
            answers.append(TurnAnswer(question=turn.text, answer=g.answer, masks=masks, rejected=rejected))
        return Answer(answers)

    def close(self) -> None:
        del self.model


def _example(request: Request):
    """The request as a PRIMA Example; exemplar boxes become <ref> tokens of the first question."""
    from autolabel.prima.config import REFER
    from autolabel.prima.model import Example, Turn

    refs = [(k, box) for k, image in enumerate(request.group.images) if image.prompt for box in image.prompt.boxes]
    turns = [Turn(t.text) for t in request.prompt.turns]
    if refs:
        turns[0].question += " Exemplars: " + ", ".join(f"Image {k + 1} {REFER}" for k, _ in refs) + "."
        turns[0].refs = refs
    return Example(request.images, turns)
