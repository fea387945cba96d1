"""Throughput of `autolabel run` with the real vlm-sam code on random checkpoints, CPU or GPU.

Prints, side by side from one run on the same machine:
- batched (--batch) vs a batch-1 loop (what LISA-style tools do), end to end, as a speed ratio;
- end-to-end wall vs the backend's own predict time: the engine's overhead (decoding,
  rendering, RLE encoding, writing) that overlapping is meant to hide; goal <= 10%;
- SAM encoder reuse: 4 templates over the same images with each image encoded once vs
  re-encoded for every template (the mask head alone, same prompts).

    .venv/bin/python benchmarks/pipeline.py                              # tiny models, CPU
    python benchmarks/pipeline.py --scale base --device cuda --groups 64  # real layer sizes, GPU

`--scale tiny` uses the test suite's tiny checkpoints (the model is cheap, so the overhead share
is a worst case). `--scale base` builds random checkpoints with real layer sizes (Qwen2.5-VL-3B's
vision tower, a 0.5B-class language model, SAM ViT-B at 1024 px) so GPU figures carry the cost of
real compute; the answers are random either way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import make_groups  # noqa: E402  (tests/ builders: tiny checkpoints, image folders)
from tiny_vlm import build_tiny_vlm  # noqa: E402

from autolabel.config import RunConfig  # noqa: E402
from autolabel.engine import Engine  # noqa: E402

LIMITS = {"explanation": 16, "label": 8, "phrase": 8, "reason": 8, "points": 2}


def build_sam(scale: str, directory: Path) -> str:
    if scale == "tiny":
        from tiny_sam import build_tiny_sam2_hf

        return str(build_tiny_sam2_hf(directory / "sam2"))
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = directory / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return f"vit_b:{path}"


def run(cfg: RunConfig):
    """(wall s, backend predict s, groups done, the run's mask head)."""
    engine = Engine(cfg)
    head = engine.backend.mask_head  # load outside the timed part: every setting pays the same load
    t0 = time.perf_counter()
    summary = engine.run()
    wall = time.perf_counter() - t0
    return wall, summary.predict_s, summary.done, head


def encoder_reuse(head, data: Path, templates: int = 4) -> None:
    """The mask head alone: `templates` passes of one box per image, cached vs re-encoded."""
    import numpy as np

    from autolabel.backends.mask_heads.base import PromptSet
    from autolabel.images import decode_image

    images = [decode_image(p, p.name) for p in sorted(data.glob("*/*.png"))]
    sets = [PromptSet(image_key=i, image=im, boxes=np.array([[2, 2, im.shape[1] - 2, im.shape[0] - 2]], float))
            for i, im in enumerate(images)]
    timings = {}
    for name, cache_size in (("re-encoded per template", 0), ("encoded once", len(images))):
        head._cache.clear()
        head._cache_size = cache_size
        head.encoder_calls = 0
        _sync()
        t0 = time.perf_counter()
        for _ in range(templates):
            head.predict(sets)
        _sync()
        timings[name] = time.perf_counter() - t0
        print(f"  masks for {len(images)} images x {templates} templates, {name}: {timings[name]:.2f}s "
              f"({head.encoder_calls} encoder passes)")
    print(f"encoder reuse across {templates} templates: "
          f"{timings['re-encoded per template'] / timings['encoded once']:.2f}x faster than re-encoding")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--scale", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        vlm = build_tiny_vlm("qwen2_5_vl", tmp / "vlm", scale=args.scale)
        sam = build_sam(args.scale, tmp)
        data = make_groups(tmp / "data", args.groups, per_group=2, side=32 if args.scale == "tiny" else 448)
        print(f"== {args.scale} random checkpoints on {args.device} "
              f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}); "
              f"{args.groups} groups x 2 images; built in {time.perf_counter() - t0:.0f}s")

        def config(out: str, batch: int) -> RunConfig:
            return RunConfig(input=data, out=tmp / out, prompt=["multi-target"], var={"targets": "cat, dog"},
                             model=str(vlm), mask_model=sam, device=args.device, batch_size=batch,
                             max_new_tokens=200, quiet=True, backend_option={"answer_limits": LIMITS})

        run(config("warmup", args.batch).model_copy(update={"limit": args.batch}))
        rows = {}
        for batch in (1, args.batch):
            wall, predict, done, head = run(config(f"b{batch}", batch))
            rows[batch] = wall
            print(f"batch {batch}: {done} groups in {wall:.2f}s = {done / wall:.2f} groups/s; backend predict "
                  f"{predict:.2f}s; engine overhead {(wall - predict) / wall * 100:.1f}% of wall")
        print(f"batch {args.batch} vs batch-1 loop: {rows[1] / rows[args.batch]:.2f}x faster end to end")
        encoder_reuse(head, data)


if __name__ == "__main__":
    main()
