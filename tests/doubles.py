"""Test doubles. They live under tests/ only and are never a backend users can pick."""

from __future__ import annotations

import os
import time

import numpy as np

from autolabel.backends.base import Answer, Backend, BackendOptions, Request, TargetMask, TurnAnswer
from autolabel.backends.mask_heads.base import MaskResult
from autolabel.prediction import Rejection


class BoxBackend(Backend):
    """Answers every turn with one deterministic box-shaped mask per image per ontology entry.

    A group whose id contains "boom" raises (failure isolation). Steered per run by backend
    options (`--backend-option`, BackendOptions.extra), which reach a subprocess or a Ray worker
    too: `hold_after` N answers N groups, then waits in the next batch until the process is killed
    or interrupted (kill-and-resume tests).
    """

    name = "test-box"
    default_model = "test/box-v1"

    def __init__(self, options: BackendOptions):
        super().__init__(options)
        self.calls: list[int] = []
        self.answered = 0

    def predict(self, requests: list[Request]) -> list[Answer]:
        self.calls.append(len(requests))
        if any("boom" in r.group.id for r in requests):
            raise RuntimeError("exploded on purpose")
        hold_after = self.options.extra.get("hold_after")
        while hold_after is not None and self.answered >= int(hold_after):
            time.sleep(0.05)  # until killed or interrupted: the test decides when the run stops
        self.answered += len(requests)
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Answer:
        ontology = request.prompt.ontology or {"thing": "thing"}
        turns = []
        for round_, turn in enumerate(request.prompt.turns):
            masks, rejected = [], []
            for k, (phrase, category) in enumerate(ontology.items()):
                if k == 2:  # every third entry is judged absent
                    rejected.append(Rejection(label=phrase, category=category, phrase=phrase,
                                              reason="not in any image", round=round_))
                    continue
                for i, px in enumerate(request.images):
                    h, w = px.shape[:2]
                    mask = np.zeros((h, w), bool)
                    mask[h // 4 + k: h // 2 + k, w // 4: w // 2 + round_] = True
                    masks.append(TargetMask(image=i, label=phrase, category=category, phrase=f"the {phrase}",
                                            mask=mask, score=0.9 - 0.1 * k, round=round_))
            turns.append(TurnAnswer(question=turn.text, answer=f"found {len(masks)} objects", masks=masks,
                                    rejected=rejected))
        return Answer(turns)


class OutOfMemoryBackend(BoxBackend):
    """Raises torch's real OutOfMemoryError for batches larger than `fits` (what CUDA raises)."""

    fits = 2

    def predict(self, requests: list[Request]) -> list[Answer]:
        if len(requests) > self.fits:
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(requests)} GiB")
        return super().predict(requests)


class DyingBackend(BoxBackend):
    """Kills its own process (as a crash or a lost node would) on the first group whose id contains
    "die"; the file named by backend option `die_marker` records that it happened once."""

    def predict(self, requests: list[Request]) -> list[Answer]:
        marker = self.options.extra["die_marker"]
        if any("die" in r.group.id for r in requests) and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return super().predict(requests)


class DoubtBackend(BoxBackend):
    """BoxBackend whose template `pets2` disagrees with the others on purpose: on group g001 its
    masks sit half their width to the right; on group g002 it rejects `dog` instead of finding it."""

    def _answer(self, request: Request) -> Answer:
        answer = super()._answer(request)
        if request.prompt.name != "pets2" or request.group.id not in ("g001", "g002"):
            return answer
        for turn in answer.turns:
            if request.group.id == "g001":
                for m in turn.masks:
                    width = int(m.mask.any(axis=0).sum())
                    m.mask = np.roll(m.mask, width // 2, axis=1)
            else:
                round_ = turn.masks[0].round if turn.masks else 0
                turn.masks = [m for m in turn.masks if m.category != "dog"]
                turn.rejected.append(Rejection(label="dog", category="dog", phrase="dog", reason="no dog here",
                                               round=round_))
        return answer


def recording(base: type[BoxBackend] = BoxBackend) -> type[BoxBackend]:
    """A fresh subclass of `base` whose `instances` lists every backend built from it: one per test
    (the `box_backend` fixture), so no test sees another's backends."""

    class Recorded(base):
        instances: list[BoxBackend] = []

        def __init__(self, options: BackendOptions):
            super().__init__(options)
            type(self).instances.append(self)

    return Recorded


class BoxMaskHead:
    """Test double of a MaskHead: each box becomes a filled mask; counts distinct encoded images."""

    model_id = source = "test/box-mask-head"

    def __init__(self):
        self.calls: list[list] = []
        self._seen: set = set()
        self.encoder_calls = 0

    def predict(self, prompt_sets):
        self.calls.append(prompt_sets)
        results = []
        for ps in prompt_sets:
            if ps.image_key not in self._seen:
                self._seen.add(ps.image_key)
                self.encoder_calls += 1
            h, w = ps.image.shape[:2]
            masks = np.zeros((len(ps.boxes), h, w), bool)
            for k, (x0, y0, x1, y1) in enumerate(ps.boxes):
                masks[k, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            results.append(MaskResult(masks=masks, scores=np.full(len(ps.boxes), 0.8)))
        return results
