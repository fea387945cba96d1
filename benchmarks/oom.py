"""`--batch-size auto` and out-of-memory recovery on a real GPU, made small on purpose.

    python benchmarks/oom.py --memory-fraction 0.06 --groups 96

Caps this process's share of GPU memory (torch.cuda.set_per_process_memory_fraction) so the
`--scale base` random checkpoints of benchmarks/pipeline.py run out of memory at large batches,
then runs the local engine with `--batch-size auto`: it starts at 64 requests per call, halves
on each CUDA out-of-memory error, retries the same requests, and keeps the size that fit.
Prints the size it settled on, the retries run.json records, and that no group was lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from helpers import make_groups  # noqa: E402
from pipeline import LIMITS, build_sam  # noqa: E402
from tiny_vlm import build_tiny_vlm  # noqa: E402

from autolabel.config import RunConfig  # noqa: E402
from autolabel.engine import Engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-fraction", type=float, default=0.06)
    parser.add_argument("--groups", type=int, default=96)
    args = parser.parse_args()
    import torch

    torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
    total = torch.cuda.get_device_properties(0).total_memory * args.memory_fraction / 2**30
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vlm, sam = build_tiny_vlm("qwen2_5_vl", tmp / "vlm", scale="base"), build_sam("base", tmp)
        data = make_groups(tmp / "data", args.groups, per_group=2, side=448)
        cfg = RunConfig(input=data, out=tmp / "run", prompt=["multi-target"], var={"targets": "cat, dog"},
                        model=str(vlm), mask_model=sam, device="cuda", batch_size="auto", max_new_tokens=200,
                        quiet=True, backend_option={"answer_limits": LIMITS})
        t0 = time.perf_counter()
        summary = Engine(cfg).run()
        wall = time.perf_counter() - t0
        info = json.loads((cfg.out / "run.json").read_text())
        print(f"GPU memory capped at {total:.1f} GiB: --batch-size auto settled on {summary.batch_size}; "
              f"{summary.done} of {args.groups} groups done, {len(summary.failed)} failed, in {wall:.1f}s "
              f"(peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)")
        for event in info["oom_retries"]:
            print(f"  out of memory at batch {event['batch']} -> retried as {event['retried_as']}: "
                  f"{event['message'][:90]}")


if __name__ == "__main__":
    main()
