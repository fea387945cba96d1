"""Pipeline efficiency of `autolabel run` with the vlm-sam backend on tiny random checkpoints.

Prints, in one run on the same machine:
- end-to-end wall time vs the backend's own predict time (the engine's overhead: decoding,
  rendering, RLE encoding, writing); goal <= 10%;
- batch 8 vs a batch-1 loop (what LISA-style tools do), as a speed ratio.

Tiny models make the model cheap, so the overhead share here is a worst case; with real
checkpoints the model dominates further. Usage: python benchmarks/pipeline.py [--groups 48]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import make_groups  # noqa: E402  (tests/ builders: tiny checkpoints, image folders)
from tiny_sam import build_tiny_sam2_hf  # noqa: E402
from tiny_vlm import build_tiny_vlm  # noqa: E402

from autolabel.config import RunConfig  # noqa: E402
from autolabel.engine import Engine  # noqa: E402

LIMITS = {"explanation": 16, "label": 8, "phrase": 8, "reason": 8, "points": 2}


def run(data: Path, out: Path, vlm: Path, sam: Path, batch: int) -> tuple[float, float, int]:
    cfg = RunConfig(input=data, out=out, prompt=["multi-target"], var={"targets": "cat, dog"}, model=str(vlm),
                    mask_model=str(sam), device="cpu", batch_size=batch, max_new_tokens=200, quiet=True,
                    backend_option={"answer_limits": LIMITS})
    engine = Engine(cfg)
    engine.backend  # load outside the timed part: both settings pay the same load
    t0 = time.perf_counter()
    summary = engine.run()
    wall = time.perf_counter() - t0
    return wall, summary.predict_s, summary.done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=48)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vlm = build_tiny_vlm("qwen2_5_vl", tmp / "vlm")
        sam = build_tiny_sam2_hf(tmp / "sam2")
        data = make_groups(tmp / "data", args.groups, per_group=2)
        run(data, tmp / "warmup", vlm, sam, 8)
        rows = []
        for batch in (1, 8):
            wall, predict, done = run(data, tmp / f"b{batch}", vlm, sam, batch)
            rows.append((batch, wall, predict, done))
            print(f"batch {batch}: {done} groups in {wall:.2f}s = {done / wall:.2f} groups/s; backend predict "
                  f"{predict:.2f}s; overhead {(wall - predict) / wall * 100:.1f}% of wall")
        (_, w1, _, _), (_, w8, _, _) = rows
        print(f"batch 8 vs batch-1 loop: {w1 / w8:.2f}x faster end to end")


if __name__ == "__main__":
    main()
