"""Scale figures of `autolabel run`, side by side in one run on this machine:

- a no-op rerun of a finished run of --noop-groups groups (default 10k): wall time against the
  CLI's bare start (`autolabel --help`), and whether torch got imported (it must not);
- the local engine vs `--engine ray` on the same machine and the same tiny vlm-sam checkpoints,
  end to end, model loading included (Ray's start and its actors' loads are what it costs here;
  its gain is more GPUs and machines, which one machine does not show).

    .venv/bin/python benchmarks/scale.py [--noop-groups 10000] [--ray-groups 32]
    python benchmarks/scale.py --noop-groups 0 --device cuda --scale base    # one GPU: Ray with 1 and 0.5 GPU per worker
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from helpers import make_groups, write_image  # noqa: E402

from autolabel.config import RunConfig  # noqa: E402
from autolabel.labeler import model_id_of  # noqa: E402
from autolabel.prediction import ImageInfo, Prediction, prediction_key  # noqa: E402
from autolabel.store import PredictionWriter  # noqa: E402

CLI = [sys.executable, "-m", "autolabel"]
LIMITS = {"explanation": 16, "label": 8, "phrase": 8, "reason": 8, "points": 2}


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t0, r


def noop_rerun(tmp: Path, n: int) -> None:
    data = tmp / "noop"
    for g in range(n):
        write_image(data / f"g{g:05d}" / "a.png", 8, 8, seed=g)
    cfg = RunConfig(input=data, out=tmp / "noop-run", prompt=["ontology"], var={"classes": "cat"})
    model = model_id_of(cfg)
    writer = PredictionWriter(cfg.out)
    for start in range(0, n, 1000):
        writer.write(Prediction(key=prediction_key(f"g{g:05d}", "ontology", model), group_id=f"g{g:05d}",
                                images=[ImageInfo("a.png", 8, 8)], template="ontology", template_hash="-",
                                model=model, backend=cfg.backend) for g in range(start, min(n, start + 1000)))
    writer.close()
    bare, _ = timed(CLI + ["--help"])
    probe = ("import sys, runpy; sys.argv = ['autolabel', 'run', {data!r}, '--prompt', 'ontology', '--var', "
             "'classes=cat', '--out', {out!r}, '-q']\ntry:\n    runpy.run_module('autolabel', run_name='__main__')\n"
             "except SystemExit as e:\n    print('exit', e.code, 'torch imported', 'torch' in sys.modules)")
    wall, r = timed([sys.executable, "-c", probe.format(data=str(data), out=str(cfg.out))])
    print(f"no-op rerun of a finished {n}-group run: {wall:.2f}s ({wall / bare:.1f}x `autolabel --help` at "
          f"{bare:.2f}s; {wall / n * 1e6:.0f} us per group); {r.stdout.strip()}")
    print(f"  {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")


def local_vs_ray(tmp: Path, groups: int, device: str, scale: str) -> None:
    from pipeline import build_sam
    from tiny_vlm import build_tiny_vlm

    from autolabel.engine import Engine
    from autolabel.ray_engine import RayEngine

    vlm, sam = build_tiny_vlm("qwen2_5_vl", tmp / "vlm", scale=scale), build_sam(scale, tmp)
    data = make_groups(tmp / "ray-data", groups, side=32 if scale == "tiny" else 448)
    base = RunConfig(input=data, out=tmp / "x", prompt=["multi-target"], var={"targets": "cat, dog"}, model=str(vlm),
                     mask_model=sam, device=device, batch_size=8, max_new_tokens=200, quiet=True,
                     backend_option={"answer_limits": LIMITS})
    gpu = device.startswith("cuda")
    rows = {}
    for name, engine, extra in (
            ("local", Engine, {}),
            ("ray, 1 worker", RayEngine, {"engine": "ray", "workers": 1, "gpus_per_worker": 1 if gpu else 0}),
            ("ray, 2 workers" + (" on 0.5 GPU each" if gpu else ""), RayEngine,
             {"engine": "ray", "workers": 2, "gpus_per_worker": 0.5 if gpu else 0})):
        cfg = base.model_copy(update={"out": tmp / f"run-{len(rows)}", **extra})
        t0 = time.perf_counter()
        summary = engine(cfg).run()
        rows[name] = time.perf_counter() - t0
        if engine is RayEngine:
            import ray

            ray.shutdown()  # the next setting starts its own local cluster, sized for its workers
        print(f"{name}: {summary.done} groups in {rows[name]:.2f}s = {summary.done / rows[name]:.2f} groups/s "
              f"(backend predict {summary.predict_s:.2f}s summed over workers)")
    for name in list(rows)[1:]:
        print(f"{name} vs local engine: {rows['local'] / rows[name]:.2f}x the local engine's speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noop-groups", type=int, default=10_000)
    parser.add_argument("--ray-groups", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", choices=("tiny", "base"), default="tiny", help="as in benchmarks/pipeline.py")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.noop_groups:
            noop_rerun(Path(tmp), args.noop_groups)
        local_vs_ray(Path(tmp), args.ray_groups, args.device, args.scale)


if __name__ == "__main__":
    main()
