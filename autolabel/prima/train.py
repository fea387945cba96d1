"""`autolabel train prima`: the training loop, with accumulation, checkpoints, resume and validation.

Checkpoints (`OUT/checkpoints/step-N/`) hold the model with LoRA unmerged, the optimizer and the
loop's position, so `--resume` continues exactly where a killed run stopped. With `--val`, each
epoch ends with validation by the `validate` function the caller hands in (the prima backend's
path, which sits above this package: `autolabel/prima_validation.py`), scored by `autolabel
eval`'s metrics; the figures go to `OUT/metrics.jsonl`. The final model is saved in OUT with LoRA
merged.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autolabel.errors import AutolabelError
from autolabel.prefetch import read_ahead
from autolabel.prima.config import TrainOptions
from autolabel.prima.data import Record, load_records
from autolabel.prima.model import PrimaModel

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
LOADER_THREADS = 4  # batches decoded ahead of the one training (3 photos of 1024x768: ~26 ms a group here)


@dataclass
class TrainSummary:
    steps: int = 0
    epochs: int = 0
    examples: int = 0
    skipped: list[str] = field(default_factory=list)
    last_loss: dict[str, float] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    resumed_from: str | None = None


# scores a model on validation records: (model, records, max_new_tokens) -> metrics
Validate = Callable[[PrimaModel, list[Record], int], dict]


def train(options: TrainOptions, progress=None, validate: Validate | None = None) -> TrainSummary:
    """Train, validate per epoch (`options.val`, scored by `validate`), checkpoint; the finished
    model lands in `options.out`."""
    from autolabel.loading import pick_device

    if options.val is not None and validate is None:
        raise TypeError("train: options.val needs validate= (autolabel.prima_validation.validate)")
    device = pick_device(options.device)
    train_data = load_records(options.data, skip_bad=options.skip_bad)
    val_data = load_records(options.val, skip_bad=options.skip_bad) if options.val else None
    summary = TrainSummary(skipped=train_data.skipped + (val_data.skipped if val_data else []))
    options.out.mkdir(parents=True, exist_ok=True)
    latest = _latest_checkpoint(options.out) if options.resume else None
    model = _start_model(options, latest).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=0.0)
    state = {"step": 0, "epoch": 0, "batch": 0}
    if latest is not None:
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location=device, weights_only=True))
        state = json.loads((latest / STATE_FILE).read_text())
        summary.resumed_from = str(latest)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    batches_per_epoch = math.ceil(len(train_data.records) / options.batch_size)
    if progress:
        progress.start(options.epochs * batches_per_epoch, done=state["epoch"] * batches_per_epoch + state["batch"])
    try:
        _loop(model, optimizer, trainable, train_data.records, val_data, options, state, summary, autocast, progress,
              validate)
    finally:
        if progress:
            progress.stop()
    summary.steps = state["step"]
    model.save_pretrained(options.out, merge_lora=True)
    return summary


def _loop(model: PrimaModel, optimizer, trainable: list, records: list[Record], val_data, options: TrainOptions,
          state: dict, summary: TrainSummary, autocast, progress, validate: Validate | None) -> None:
    batches_per_epoch = math.ceil(len(records) / options.batch_size)
    for epoch in range(state["epoch"], options.epochs):
        order = list(range(len(records)))
        random.Random(options.seed + epoch).shuffle(order)
        model.train()
        first = state["batch"] if epoch == state["epoch"] else 0
        batches = ([records[i] for i in order[b * options.batch_size:(b + 1) * options.batch_size]]
                   for b in range(first, batches_per_epoch))
        # the next batches' images and masks decode in threads while this one trains
        with ThreadPoolExecutor(LOADER_THREADS, thread_name_prefix="load") as loaders:
            for b, examples in enumerate(read_ahead(batches, _examples, loaders, window=LOADER_THREADS), first):
                with autocast:
                    losses = model(examples)
                (losses["loss"] / options.grad_accum).backward()
                summary.examples += len(examples)
                summary.last_loss = {k: round(v.item(), 4) for k, v in losses.items()}
                if (b + 1) % options.grad_accum == 0 or b + 1 == batches_per_epoch:
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    state["step"] += 1
                    if state["step"] % options.save_every == 0:
                        _checkpoint(model, optimizer, options.out, {**state, "epoch": epoch, "batch": b + 1})
                if progress:
                    progress.advance(summary.last_loss)
        state["batch"] = 0
        summary.epochs = epoch + 1
        if val_data is not None:
            metrics = {"epoch": epoch + 1, "step": state["step"], **validate(model, val_data.records,
                                                                          options.max_new_tokens)}
            summary.metrics.append(metrics)
            with (options.out / METRICS_FILE).open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        _checkpoint(model, optimizer, options.out, {**state, "epoch": epoch + 1, "batch": 0})


def _examples(batch: list[Record]) -> list:
    return [record.example() for record in batch]


def _start_model(options: TrainOptions, latest: Path | None) -> PrimaModel:
    from autolabel.prima.build import build_from_parts
    from autolabel.prima.model import is_peft, wrap_lora

    torch.manual_seed(options.seed)
    if latest is not None:
        return PrimaModel.from_pretrained(latest / "model")
    if options.init:
        model = PrimaModel.from_pretrained(options.init)
        if not is_peft(model.llm):
            model.llm = wrap_lora(model.llm, model.config.model_copy(update={"lora": options.lora}), model.ids)
        return model
    return build_from_parts(options.vision, options.llm, options.sam, sam_spec=options.sam_spec,
                            square=options.square, lora=options.lora)


def _checkpoint(model: PrimaModel, optimizer, out: Path, state: dict) -> None:
    """Write step-N/ completely, then make it the latest; older checkpoints are removed."""
    root = out / CHECKPOINTS
    final = root / f"step-{state['step']}"
    partial = root / f".partial-step-{state['step']}"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial / "model", merge_lora=False)
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    (partial / STATE_FILE).write_text(json.dumps({**state, "saved_at": time.time()}))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(out: Path) -> Path | None:
    steps = sorted((int(p.name.split("-")[1]), p) for p in (out / CHECKPOINTS).glob("step-*")
                   if (p / STATE_FILE).is_file())
    if not steps:
        raise AutolabelError(f"--resume: no checkpoint in {out / CHECKPOINTS}")
    return steps[-1][1]
