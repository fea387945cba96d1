"""Video: frames/s of SAM 2 tracking and of the whole pipeline, and memory vs clip length.

    .venv/bin/python benchmarks/video.py                                   # tiny models, CPU
    python benchmarks/video.py --scale base --device cuda --frames 300     # real-size random SAM 2, GPU

Prints:
- tracking: frames/s of `VideoTracker.track` (2 objects started on the middle keyframe, propagated
  forward and backward through every frame), streaming frames from an .mp4 on disk;
- pipeline: frames/s of `autolabel run` on one clip end to end (decode, the VLM on 4 keyframes, the
  tracker, RLE, the prediction line), with the real generate and its answer replaced by two boxes
  (random weights ground nothing useful);
- memory vs clip length: for clips of L and 10 L frames, in a fresh process each, peak RSS, the
  tracking session's peak tensor bytes (frames + memories, measured on its tensors) and the
  traced Python/numpy working memory; the ratio 10 L / L should stay near 1 (goal <= 1.2).

`--scale tiny` uses the tests' tiny random SAM 2 video model (128 px input); `--scale base` builds a
random `Sam2VideoConfig()` (SAM 2.1 Hiera at 1024 px, real layer sizes), so GPU figures carry the
cost of real compute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny_video import build_tiny_sam2_video, write_clip  # noqa: E402


def build_tracker_model(scale: str, directory: Path) -> str:
    if scale == "tiny":
        return str(build_tiny_sam2_video(directory / "sam2_video"))
    import torch
    from transformers import (Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor,
                              Sam2VideoVideoProcessor)

    torch.manual_seed(0)
    out = directory / "sam2_video_base"
    Sam2VideoModel(Sam2VideoConfig()).save_pretrained(out)
    Sam2VideoProcessor(image_processor=Sam2ImageProcessor(), video_processor=Sam2VideoVideoProcessor(),
                       target_size=1024).save_pretrained(out)
    return str(out)


def track_fps(model: str, clip_path: Path, device: str) -> tuple[float, int]:
    import numpy as np
    import torch

    from autolabel.backends.tracking import VideoTracker
    from autolabel.video import VideoSpec, open_clip

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tracker = VideoTracker("bench", model, device=device, dtype=dtype)
    clip, _ = open_clip(clip_path.name, clip_path, VideoSpec(keyframes=1), max_pixels=10**9)
    sx, sy = clip.width / 128, clip.height / 96
    boxes = np.array([[8, 36, 40, 68], [60, 10, 100, 40]], float) * np.array([sx, sy, sx, sy])
    warm, _ = open_clip(clip_path.name, clip_path, VideoSpec(keyframes=1, max_frames=2), max_pixels=10**9)
    tracker.track(warm, 0, boxes)  # first calls pay torch's one-time set-up
    t0 = time.perf_counter()
    tracker.track(clip, clip.keyframes[0], boxes)
    return len(clip.frames) / (time.perf_counter() - t0), len(clip.frames)


def pipeline_fps(model: str, clip_dir: Path, out: Path, device: str, frames: int) -> float:
    from test_video import LIMITS, keyframe_answers, model_box
    from tiny_vlm import build_tiny_vlm

    from autolabel.backends.vlm_sam import VlmSamBackend
    from autolabel.config import RunConfig
    from autolabel.engine import Engine

    vlm = build_tiny_vlm("qwen2_5_vl", out.parent / "vlm")

    def backend(options):
        b = VlmSamBackend(options)
        keyframe_answers(b, lambda s: [(1, "square", model_box(s, 1, (8, 36, 40, 68))),
                                       (3, "cat", model_box(s, 3, (60, 10, 100, 40)))])
        return b

    cfg = RunConfig(input=clip_dir, out=out, prompt=["multi-target"], var={"targets": "square, cat"}, model=str(vlm),
                    mask_model=model, device=device, max_new_tokens=400, quiet=True, keyframes=4,
                    backend_option={"answer_limits": LIMITS})
    t0 = time.perf_counter()
    summary = Engine(cfg, backend_factory=backend).run()
    assert summary.exit_code == 0, summary.failed
    return frames / (time.perf_counter() - t0)


def memory_child(model: str, clip_path: str, device: str) -> None:
    """In a fresh process: track one clip, print peak RSS, session peak bytes and traced working memory."""
    import resource
    import tracemalloc

    import numpy as np
    import torch

    from autolabel.backends.tracking import VideoTracker
    from autolabel.video import VideoSpec, open_clip

    tracker = VideoTracker("bench", model, device=device, dtype=torch.float32)
    clip, _ = open_clip(Path(clip_path).name, Path(clip_path), VideoSpec(keyframes=1), max_pixels=10**9)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    tracker.track(clip, clip.keyframes[0], np.array([[8, 36, 40, 68]], float))
    kept, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"frames": len(clip.frames), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
                      "session_peak_mb": tracker.peak_state_bytes / 2**20, "traced_working_mb": (peak - kept) / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=60, help="frames of the tracking / pipeline clip")
    parser.add_argument("--length", type=int, default=30, help="memory: clips of L and 10 L frames")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "CLIP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, args.device)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tracker_model(args.scale, tmp)
        clip = write_clip(tmp / "clips" / "walk.mp4", args.frames, h=240, w=320)
        fps, n = track_fps(model, clip, args.device)
        print(f"tracking: {n} frames x 2 objects: {fps:.2f} frames/s ({args.scale}, {args.device})")
        fps = pipeline_fps(model, clip.parent, tmp / "run", args.device, n)
        print(f"pipeline: {n} frames, 4 keyframes, 2 tracks, end to end: {fps:.2f} frames/s")
        rows = []
        for length in (args.length, 10 * args.length):
            path = write_clip(tmp / f"mem{length}.mp4", length, h=240, w=320)
            r = subprocess.run([sys.executable, __file__, "--device", args.device, "--memory-child", model, str(path)],
                               capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{'frames':>7} {'peak RSS MB':>12} {'RSS growth MB':>14} {'session peak MB':>16} {'traced MB':>10}")
        for row in rows:
            print(f"{row['frames']:>7} {row['rss_mb']:>12.1f} {row['rss_growth_mb']:>14.1f} "
                  f"{row['session_peak_mb']:>16.2f} {row['traced_working_mb']:>10.2f}")
        a, b = rows
        print(f"10x the clip: peak RSS x{b['rss_mb'] / a['rss_mb']:.3f}, session x{b['session_peak_mb'] / a['session_peak_mb']:.3f}, "
              f"traced x{b['traced_working_mb'] / max(a['traced_working_mb'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
