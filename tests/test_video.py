"""Video: clips as groups of frames, keyframe reasoning, SAM 2 tracking, exports, J&F.

Clips are made here (a red square moving over a real photo, written with OpenCV); the tracker is
a tiny random transformers SAM 2 video model saved and loaded through the real code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_video import (LIMITS, keyframe_answers, model_box, shape_box, tiny_video_model, video_config_dict,
                        write_clip, write_frames)
from tiny_vlm import tiny_vlm

from autolabel.backends.base import BackendOptions
from autolabel.backends.vlm_sam import VlmSamBackend
from autolabel.config import RunConfig
from autolabel.engine import Engine, decode_group
from autolabel.errors import InputError
from autolabel.sources import open_source
from autolabel.store import read_predictions, read_run_info
from autolabel.video import VideoSpec, iter_clip, open_clip, spread_keyframes

# -- input and decoding ------------------------------------------------------------------------
def test_a_video_file_folder_of_videos_frames_folder_and_manifest_line_are_clips(tmp_path):
    data = tmp_path / "data"
    write_clip(data / "a.mp4", 6)
    write_clip(data / "b.avi", 5)
    (data / "notes.txt").write_text("x")
    groups = list(open_source(data, video=VideoSpec(keyframes=2)))
    assert [g.id for g in groups] == ["a.mp4", "b.avi"]
    assert all(g.video == VideoSpec(keyframes=2) and len(g.images) == 1 for g in groups)
    (one,) = open_source(data / "a.mp4")
    assert one.id == "a.mp4" and one.video is not None
    frames = write_frames(tmp_path / "frames" / "clip1", 5)
    (clip,) = open_source(frames, frames=True)
    assert clip.id == "clip1" and len(clip.video.frame_files) == 5
    assert [g.id for g in open_source(tmp_path / "frames", frames=True)] == ["clip1"]
    manifest = data / "m.jsonl"
    manifest.write_text(json.dumps({"id": "walk", "video": "a.mp4", "variables": {"x": "1"}}) + "\n"
                        + json.dumps({"id": "gone", "video": "missing.mp4"}) + "\n")
    walk, gone = open_source(manifest)
    assert walk.id == "walk" and walk.video is not None and walk.variables == {"x": "1"}
    assert gone.reason == "video file not found"


def test_decoding_samples_by_fps_and_max_frames_and_keeps_timestamps(tmp_path):
    path = write_clip(tmp_path / "c.mp4", 20, fps=10)
    clip, keyframes = open_clip("c.mp4", path, VideoSpec(), max_pixels=10**9)
    assert clip.frames == tuple(range(20)) and clip.timestamps[:3] == (0.0, 0.1, 0.2)
    assert clip.keyframes == spread_keyframes(20, 4) == (2, 7, 12, 17) and len(keyframes) == 4
    assert keyframes[0].shape == (96, 128, 3) and keyframes[0].dtype == np.uint8
    clip, _ = open_clip("c.mp4", path, VideoSpec(fps=2.5), max_pixels=10**9)
    assert clip.frames == (0, 4, 8, 12, 16) and clip.timestamps == (0.0, 0.4, 0.8, 1.2, 1.6)
    clip, keyframes = open_clip("c.mp4", path, VideoSpec(fps=5, max_frames=3, keyframes=8), max_pixels=10**9)
    assert clip.frames == (0, 2, 4) and clip.keyframes == (0, 1, 2) and len(keyframes) == 3
    assert clip.frame_file(1) == "c.mp4/000002"
    # the keyframe decoded is the frame read when streaming forward or backward
    forward = dict(iter_clip(clip, 0, 2))
    backward = list(iter_clip(clip, 2, 0, reverse=True))
    assert [p for p, _ in backward] == [2, 1, 0]
    assert all((forward[p] == image).all() for p, image in backward)
    assert (forward[0] == keyframes[0]).all()


def test_a_corrupt_or_oversized_video_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    with pytest.raises(InputError, match="bad.mp4"):
        open_clip("bad.mp4", bad, VideoSpec(), max_pixels=10**9)
    good = write_clip(tmp_path / "good.mp4", 3)
    with pytest.raises(InputError, match="max-pixels"):
        open_clip("good.mp4", good, VideoSpec(), max_pixels=100)
    (group,) = open_source(bad)
    decoded = decode_group(group, 10**9)
    assert decoded.images is None and "bad.mp4" in decoded.error.message


def test_decoded_clip_group_has_keyframes_as_images(tmp_path):
    write_clip(tmp_path / "data" / "c.avi", 10)
    (group,) = open_source(tmp_path / "data", video=VideoSpec(keyframes=3))
    decoded = decode_group(group, 10**9)
    assert decoded.error is None and len(decoded.images) == 3
    assert [im.file for im in decoded.group.images] == ["c.avi/000001", "c.avi/000005", "c.avi/000008"]
    assert decoded.group.video.frames == tuple(range(10))
    again = type(group).from_json(json.loads(json.dumps(decoded.group.to_json())))
    assert again == decoded.group
    assert type(group).from_json(json.loads(json.dumps(group.to_json()))) == group, "a Ray worker rebuilds the clip"


# -- reasoning on keyframes, tracking through the clip ------------------------------------------
def video_config(tmp_path, tmp_path_factory, data, **kw) -> RunConfig:
    return RunConfig(input=data, out=tmp_path / "run", prompt=["multi-target"], var={"targets": "square, cat"},
                     model=str(tiny_vlm("qwen2_5_vl", tmp_path_factory)), mask_model=tiny_video_model(tmp_path_factory),
                     device="cpu", max_new_tokens=400, quiet=True, backend_option={"answer_limits": LIMITS}, **kw)


def square_on_keyframes(keyframes=(1, 2)):
    """The moving square named on the given keyframes (the same object: one track)."""
    def boxes(state):
        clip = state.request.group.video
        n = len(clip.frames)
        out = []
        for k in keyframes:
            if k <= len(clip.keyframes):
                p = clip.keyframes[k - 1]
                x0, y0, x1, y1 = shape_box(clip.frames[p], n, clip.height, clip.width)
                out.append((k, "square", model_box(state, k, (x0, y0, x1, y1))))
        del n
        return out
    return boxes


@pytest.mark.parametrize("tracker", ["sam2", "sam3"])
def test_keyframe_targets_become_one_track_per_target_over_every_sampled_frame(tmp_path, tmp_path_factory, tracker):
    """SAM 2 tracks with Sam2VideoModel, a SAM 3 checkpoint with Sam3TrackerVideoModel (same API)."""
    data = tmp_path / "data"
    write_clip(data / "walk.mp4", 12)
    chats = []

    def backend(options: BackendOptions) -> VlmSamBackend:
        b = VlmSamBackend(options)
        chats.extend([])
        chats.append(keyframe_answers(b, lambda s: [(1, "square", model_box(s, 1, (8, 36, 32, 60))),
                                                    (3, "cat", model_box(s, 3, (60, 10, 100, 40)))]))
        return b

    cfg = video_config(tmp_path, tmp_path_factory, data, keyframes=3)
    tracker_model = tiny_video_model(tmp_path_factory, tracker)
    cfg = cfg.model_copy(update={"backend_option": {**cfg.backend_option, "tracker": tracker_model}})
    summary = Engine(cfg, backend_factory=backend).run()
    assert summary.exit_code == 0, summary.failed
    assert read_run_info(cfg.out)["model_info"]["tracker"] == tracker_model
    (pred,) = read_predictions([cfg.out])
    assert len(pred.images) == 12 and [im.frame for im in pred.images] == list(range(12))
    assert pred.images[3].timestamp == pytest.approx(0.3) and pred.images[3].video == "walk.mp4"
    segments = pred.turns[0].segments
    tracks = {}
    for s in segments:
        tracks.setdefault(s.track_id, []).append(s)
    assert sorted(tracks) == [1, 2], "one track per target"
    for track in tracks.values():
        assert [s.image for s in track] == list(range(12)), "every sampled frame, once"
        assert [s.frame for s in track] == list(range(12))
        assert len({s.label for s in track}) == 1, "ids stable across frames"
        assert all(0.0 <= s.score <= 1.0 and s.rle["size"] == [96, 128] for s in track)
    chat = chats[0][0]
    texts = [c["text"] for c in chat[0]["content"] if c["type"] == "text"]
    assert texts[0].startswith("Frame 1 (t=0.20s)") and texts[2].startswith("Frame 3 (t=1.00s)")
    assert "Frame 1, Frame 2, Frame 3" in texts[-1]
    # templates name the keyframes too ("labelled {{ images | join }}" in multi-target's system text)
    assert "labelled Frame 1 (t=0.20s), Frame 2 (t=0.60s), Frame 3 (t=1.00s)" in texts[-1]


def test_the_same_object_on_two_keyframes_is_one_track(tmp_path, tmp_path_factory):
    from autolabel.backends.tracking import Track, merge_tracks
    from autolabel.masks import mask_to_rle

    def rle(x0):
        m = np.zeros((20, 20), bool)
        m[5:10, x0:x0 + 5] = True
        return mask_to_rle(m)

    a = Track("square", 0, 0, {0: (rle(0), 0.9), 1: (rle(2), 0.8), 2: (rle(4), 0.7)})
    b = Track("square", 2, 1, {0: (rle(1), 0.5), 1: (rle(2), 0.6), 2: (rle(4), 0.95)})
    other = Track("square", 1, 2, {0: (rle(14), 0.5), 1: (rle(14), 0.5), 2: (rle(14), 0.5)})
    cat = Track("cat", 1, 3, {0: (rle(0), 0.5), 1: (rle(2), 0.5), 2: (rle(4), 0.5)})
    merged = merge_tracks([a, b, other, cat])
    assert [t.target for t in merged] == [0, 2, 3], "b joins a; a far square and a cat stay apart"
    assert merged[0].frames[0][1] == 0.9 and merged[0].frames[2][1] == 0.95, "nearer keyframe wins per frame"
    assert merged[0].also == [1]


def test_rerun_skips_finished_clips_a_corrupt_video_fails_alone_and_fps_max_frames_hold(tmp_path, tmp_path_factory):
    data = tmp_path / "data"
    write_clip(data / "a.mp4", 10, fps=10)
    write_clip(data / "b.avi", 8, fps=10)
    (data / "c.mp4").write_bytes(b"not a video at all" * 50)
    loads = []

    def backend(options: BackendOptions) -> VlmSamBackend:
        b = VlmSamBackend(options)
        loads.append(b)
        keyframe_answers(b, lambda s: [(1, "square", model_box(s, 1, (8, 36, 32, 60)))])
        return b

    cfg = video_config(tmp_path, tmp_path_factory, data, fps=5, max_frames=4, keyframes=2)
    summary = Engine(cfg, backend_factory=backend).run()
    assert summary.exit_code == 1 and len(summary.failed) == 1 and "c.mp4" in summary.failed[0][1]
    lines = {p.group_id: p for p in read_predictions([cfg.out])}
    assert lines["c.mp4"].status == "error" and lines["c.mp4"].error["file"] == "c.mp4"
    a, b = lines["a.mp4"], lines["b.avi"]
    assert [im.frame for im in a.images] == [0, 2, 4, 6], "--fps 5 of a 10 fps clip, --max-frames 4"
    assert [im.timestamp for im in b.images] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert {s.image for s in a.turns[0].segments} == {0, 1, 2, 3}
    assert all(s.frame in (0, 2, 4, 6) for s in a.turns[0].segments)
    # a rerun skips the finished clips (no model load when only the broken one is left? it retries it)
    again = Engine(cfg, backend_factory=backend).run()
    assert again.already_done == 2 and again.done == 0 and len(again.failed) == 1


def test_a_clip_killed_mid_run_resumes(tmp_path, tmp_path_factory):
    """A run killed (SIGKILL) while tracking the second clip: the rerun labels only what is left."""
    data = tmp_path / "data"
    for name in ("a.avi", "b.avi", "c.avi"):
        write_clip(data / name, 6)
    out = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(f"""
import os, sys, signal
sys.path[:0] = {[str(Path(__file__).parent)]!r}
import autolabel.backends.tracking as tracking
from tiny_video import keyframe_answers, model_box, video_config_dict
from autolabel.backends.vlm_sam import VlmSamBackend
from autolabel.config import RunConfig
from autolabel.engine import Engine
track = tracking.VideoTracker.track
calls = []
def dying(self, clip, keyframe, boxes):
    calls.append(clip.file)
    if clip.file == "b.avi":
        os.kill(os.getpid(), signal.SIGKILL)
    return track(self, clip, keyframe, boxes)
tracking.VideoTracker.track = dying
def backend(options):
    b = VlmSamBackend(options)
    keyframe_answers(b, lambda s: [(1, "square", model_box(s, 1, (8, 36, 32, 60)))])
    return b
cfg = RunConfig(**video_config_dict({str(data)!r}, {str(out)!r}, {str(tiny_vlm("qwen2_5_vl", tmp_path_factory))!r},
                                    {tiny_video_model(tmp_path_factory)!r}), batch_size=1)
Engine(cfg, backend_factory=backend).run()
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == -9, r.stderr[-2000:]
    done = [p.group_id for p in read_predictions([out])]
    assert done == ["a.avi"], "the first clip was written before the kill"
    seen = []

    def backend(options):
        b = VlmSamBackend(options)
        keyframe_answers(b, lambda s: (seen.append(s.request.group.id),
                                       [(1, "square", model_box(s, 1, (8, 36, 32, 60)))])[1])
        return b

    cfg = RunConfig(**video_config_dict(data, out, tiny_vlm("qwen2_5_vl", tmp_path_factory),
                                        tiny_video_model(tmp_path_factory)))
    summary = Engine(cfg, backend_factory=backend).run()
    assert summary.exit_code == 0 and summary.already_done == 1 and summary.done == 2
    assert sorted(seen) == ["b.avi", "c.avi"]
    assert sorted(p.group_id for p in read_predictions([out])) == ["a.avi", "b.avi", "c.avi"]


def test_tracking_memory_stays_flat_at_ten_times_the_clip_length(tmp_path, tmp_path_factory, monkeypatch):
    """What the tracking session holds at its peak (frames + memories, measured on its tensors),
    and the Python/numpy working memory traced while tracking (peak less the result it returns,
    its RLE masks), for a clip and one 10x as long. The tiny
    model reads 5 frames back and frames are read back in chunks of 4, so 12 frames is steady state."""
    import tracemalloc

    import torch

    import autolabel.video
    from autolabel.backends.tracking import VideoTracker

    monkeypatch.setattr(autolabel.video, "SEEK_CHUNK", 4)
    tracker = VideoTracker("tiny", tiny_video_model(tmp_path_factory), device="cpu", dtype=torch.float32)
    assert tracker.window == 5
    peaks = {}
    for n in (12, 120):
        path = write_clip(tmp_path / f"c{n}.avi", n, h=240, w=320)
        clip, _ = open_clip(path.name, path, VideoSpec(keyframes=1), max_pixels=10**9)
        tracker.peak_state_bytes = 0
        tracemalloc.start()
        tracks = tracker.track(clip, clip.keyframes[0], np.array([[8, 90, 68, 150]], float))
        kept, peak = tracemalloc.get_traced_memory()  # kept at the end: the masks (RLE), the result
        tracemalloc.stop()
        assert sorted(tracks[0]) == list(range(n))
        peaks[n] = (tracker.peak_state_bytes, peak - kept)
    (state_1, traced_1), (state_10, traced_10) = peaks[12], peaks[120]
    assert state_10 <= 1.2 * state_1, peaks
    assert traced_10 <= 1.2 * traced_1, peaks


# -- exports -----------------------------------------------------------------------------------
_runs: dict[str, Path] = {}


def labelled_clip(tmp_path_factory, *, frames: bool = False) -> Path:
    """One run over a clip (2 keyframes): the square tracked, a second box on keyframe 2. The clip is
    walk.avi (8 frames, all labelled) or, with `frames`, the folder clip1/ of 12 frame images
    (frame1.png ...) labelled at --fps 15, every second frame (a frames folder is read at 30 fps)."""
    key = "frames" if frames else "run"
    if key not in _runs:
        base = tmp_path_factory.mktemp("video_run")
        if frames:
            write_frames(base / "data" / "clip1", 12)
        else:
            write_clip(base / "data" / "walk.avi", 8)

        def backend(options: BackendOptions) -> VlmSamBackend:
            b = VlmSamBackend(options)
            keyframe_answers(b, lambda s: [(1, "square", model_box(s, 1, (8, 36, 32, 60))),
                                           (2, "cat", model_box(s, 2, (60, 10, 100, 40)))])
            return b

        cfg = video_config(base, tmp_path_factory, base / "data", keyframes=2,
                           **(dict(frames=True, fps=15.0) if frames else {}))
        assert Engine(cfg, backend_factory=backend).run().exit_code == 0
        _runs[key] = cfg.out
    return _runs[key]


def test_export_coco_makes_every_sampled_frame_an_image_with_its_clip_and_time(tmp_path, tmp_path_factory):
    from pycocotools.coco import COCO

    from autolabel.exporters.coco import export_coco
    from autolabel.masks import rle_to_mask

    run = labelled_clip(tmp_path_factory)
    out = tmp_path / "coco.json"
    export_coco([run], out)
    coco = COCO(str(out))
    images = sorted(coco.dataset["images"], key=lambda im: im["frame_index"])
    assert [im["file_name"] for im in images] == [f"walk.avi/{i:06d}" for i in range(8)]
    assert {im["video_id"] for im in images} == {1} and images[2]["timestamp"] == pytest.approx(0.2)
    assert coco.dataset["videos"] == [{"id": 1, "file_name": "walk.avi"}]
    (pred,) = read_predictions([run])
    by_frame = {(s.frame, s.track_id): s for s in pred.turns[0].segments}
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and {a["attributes"]["track_id"] for a in anns} <= {1, 2}
    frame_of = {im["id"]: im["frame_index"] for im in images}
    for a in anns:
        s = by_frame[(frame_of[a["image_id"]], a["attributes"]["track_id"])]
        assert (coco.annToMask(a).astype(bool) == rle_to_mask(s.rle)).all()


def test_export_ytvis_round_trips_every_frame_mask_exactly(tmp_path, tmp_path_factory):
    from autolabel.exporters.ytvis import export_ytvis
    from autolabel.masks import rle_to_mask

    run = labelled_clip(tmp_path_factory)
    out = tmp_path / "ytvis.json"
    stats = export_ytvis([run], out)
    data = json.loads(out.read_text())
    (video,) = data["videos"]
    assert video["file_name"] == "walk.avi" and video["length"] == 8 and video["frames"] == list(range(8))
    assert len(video["file_names"]) == 8 and video["width"] == 128 and video["height"] == 96
    assert [c["name"] for c in data["categories"]] == ["square", "cat"]
    (pred,) = read_predictions([run])
    assert stats.annotations == len(data["annotations"]) == 2
    for ann in data["annotations"]:
        assert len(ann["segmentations"]) == 8
        for p, seg in enumerate(ann["segmentations"]):
            (s,) = [s for s in pred.turns[0].segments if s.track_id == ann["track_id"] and s.image == p]
            if seg is None:
                assert not rle_to_mask(s.rle).any()
            else:
                assert (rle_to_mask(seg) == rle_to_mask(s.rle)).all() and ann["areas"][p] == int(rle_to_mask(seg).sum())


def test_export_masks_writes_a_png_per_frame(tmp_path, tmp_path_factory):
    from autolabel.exporters.masks import export_masks

    run = labelled_clip(tmp_path_factory)
    export_masks([run], tmp_path / "masks")
    assert sorted(p.name for p in (tmp_path / "masks" / "walk.avi").glob("0*[0-9].png")) == \
        [f"{i:06d}.png" for i in range(8)]


def test_cli_export_ytvis(tmp_path, tmp_path_factory):
    run = labelled_clip(tmp_path_factory)
    r = subprocess.run([sys.executable, "-m", "autolabel", "export", "ytvis", str(run), "-o", str(tmp_path / "y.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "y.json").read_text())["videos"][0]["length"] == 8


# -- J & F -------------------------------------------------------------------------------------
def square(h, w, y0, x0, side):
    m = np.zeros((h, w), bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def test_region_j_and_boundary_f_hand_computed():
    from autolabel.evaluation.video_metrics import boundary, boundary_f, region_j

    a = square(100, 100, 10, 10, 10)
    assert region_j(None, None) == region_j(np.zeros((4, 4), bool), None) == 1.0, "both empty: perfect"
    assert region_j(a, None) == region_j(None, a) == 0.0
    assert boundary_f(None, np.zeros((4, 4), bool)) == 1.0 and boundary_f(a, None) == 0.0
    wide = np.zeros((100, 100), bool)
    wide[10:20, 10:30] = True
    assert region_j(a, wide) == pytest.approx(100 / 200)
    assert boundary(a).sum() == 36, "a 10x10 square's outline"
    assert boundary_f(a, a) == 1.0
    # tolerance: ceil(0.008 * diagonal 141.4) = 2 px, so a 1-px shift is still a perfect boundary
    assert boundary_f(square(100, 100, 11, 10, 10), a) == 1.0
    assert boundary_f(square(100, 100, 60, 60, 10), a) == 0.0
    # pred = the square and a far copy: precision 36/72, recall 36/36 -> F = 2 * 0.5 * 1 / 1.5
    both = a | square(100, 100, 60, 60, 10)
    assert boundary_f(both, a) == pytest.approx(2 / 3)


def test_track_j_and_f_count_empty_frames_and_unmatched_tracks():
    from autolabel.evaluation.video_metrics import VideoTrack, evaluate_tracks
    from autolabel.masks import mask_to_rle

    a = square(40, 40, 5, 5, 10)
    gt = VideoTrack("clip", 7, "cat", {0: mask_to_rle(a), 1: None, 2: mask_to_rle(a)})
    gt2 = VideoTrack("clip", 8, "dog", {0: mask_to_rle(square(40, 40, 25, 25, 8))})
    pred = VideoTrack("clip", 1, "cat", {0: mask_to_rle(a), 1: None, 2: mask_to_rle(np.zeros((40, 40), bool))})
    stray = VideoTrack("clip", 2, "cat", {1: mask_to_rle(a)})
    result = evaluate_tracks([pred, stray], [gt, gt2], {"clip": ([0, 1, 2], (40, 40))})
    first, second = result.tracks
    assert (first.gt_track, first.pred_track) == (7, 1)
    assert first.J == pytest.approx(2 / 3) and first.F == pytest.approx(2 / 3), "frames: hit, both empty, missed"
    # the dog track has no prediction: a mask on frame 0 missed, frames 1-2 empty on both sides
    assert second.pred_track is None and second.J == pytest.approx(2 / 3)
    assert result.false_tracks == 1
    assert result.overall["J&F"] == pytest.approx(2 / 3)


def test_eval_a_run_against_video_ground_truth_with_fail_under(tmp_path, tmp_path_factory):
    from autolabel.exporters.coco import export_coco
    from autolabel.exporters.ytvis import export_ytvis

    run = labelled_clip(tmp_path_factory)
    gt = tmp_path / "gt.json"
    export_ytvis([run], gt)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "autolabel", "eval", str(run), *args],
                              capture_output=True, text=True, timeout=300)

    r = cli("--gt", str(gt), "--fail-under", "J&F=0.6", "--json", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr + r.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())["video"]
    nonempty = [a for a in json.loads(gt.read_text())["annotations"] if any(a["segmentations"])]
    assert metrics["gt_tracks"] == len(nonempty) or metrics["gt_tracks"] == 2
    assert metrics["overall"]["J&F"] == pytest.approx(1.0), "a run scored against its own export"
    assert "J&F" in r.stdout
    # ground truth the run does not match: the gate fails with exit 1
    data = json.loads(gt.read_text())
    for ann in data["annotations"]:
        ann["segmentations"] = [{"size": [96, 128], "counts": _rle_of(square(96, 128, 0, 100, 20))}] * 8
    gt.write_text(json.dumps(data))
    r = cli("--gt", str(gt), "--fail-under", "J&F=0.6")
    assert r.returncode == 1 and "below threshold" in r.stderr, r.stderr
    # per-frame COCO ground truth: J&F and the image metrics
    coco = tmp_path / "frames.json"
    export_coco([run], coco)
    r = cli("--gt", str(coco), "--fail-under", "J=0.99", "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr + r.stdout
    both = json.loads((tmp_path / "c.json").read_text())
    assert both["video"]["overall"]["J"] == pytest.approx(1.0) and "frames" in both


def _rle_of(mask):
    from autolabel.masks import mask_to_rle

    return mask_to_rle(mask)["counts"]


# -- FiftyOne ----------------------------------------------------------------------------------
def test_push_makes_a_fiftyone_video_dataset_with_tracks_as_indexes(fo_db, tmp_path_factory):
    from autolabel.review.push_video import is_video_run, push_video

    run = labelled_clip(tmp_path_factory)
    assert is_video_run([run])
    stats = push_video([run], "video_push_test")
    dataset = fo_db.load_dataset("video_push_test")
    assert dataset.media_type == "video" and len(dataset) == 1 and stats.clips == 1
    sample = dataset.first()
    assert sample.filepath.endswith("walk.avi") and sample["autolabel_group"] == "walk.avi"
    (pred,) = read_predictions([run])
    expected = {(s.frame + 1, s.track_id) for s in pred.turns[0].segments if s.bbox[2] > 0}
    got = {(number, d.index) for number, frame in sample.frames.items()
           for d in (frame["predictions_multi_target"].detections if frame["predictions_multi_target"] else [])}
    assert got == expected and stats.masks == len(expected)
    again = push_video([run], "video_push_test")
    assert len(fo_db.load_dataset("video_push_test")) == 1 and again.masks == stats.masks, "a second push replaces"


def test_pull_reads_reviewed_frames_back_as_per_frame_coco(fo_db, tmp_path, tmp_path_factory):
    from pycocotools.coco import COCO

    from autolabel.masks import rle_to_mask
    from autolabel.review.push_video import pull_video, push_video

    run = labelled_clip(tmp_path_factory)
    push_video([run], "video_pull_test")
    sample = fo_db.load_dataset("video_pull_test").first()
    frame = next(f for _, f in sample.frames.items() if f["predictions_multi_target"]
                 and f["predictions_multi_target"].detections)
    removed = frame["predictions_multi_target"].detections.pop(0)  # a reviewer deletes one mask
    sample.save()
    stats = pull_video("video_pull_test", tmp_path / "pulled.json")
    coco = COCO(str(tmp_path / "pulled.json"))
    (pred,) = read_predictions([run])
    pushed = {(s.frame, s.track_id): s for s in pred.turns[0].segments if s.bbox[2] > 0}
    anns = coco.loadAnns(coco.getAnnIds())
    assert stats.clips == 1 and len(anns) == len(pushed) - 1
    frame_of = {im["id"]: im["frame_index"] for im in coco.dataset["images"]}
    assert all(im["video_id"] == 1 for im in coco.dataset["images"]) and len(coco.dataset["images"]) == 8
    for a in anns:
        s = pushed[(frame_of[a["image_id"]], a["attributes"]["track_id"])]
        assert (coco.annToMask(a).astype(bool) == rle_to_mask(s.rle)).all(), "untouched masks come back exactly"
    assert removed.index in {a["attributes"]["track_id"] for a in anns} or len(pushed) == 1


def test_a_frames_folder_clip_is_pushed_as_a_review_video_and_pulled_with_its_frame_names(
        fo_db, tmp_path, tmp_path_factory):
    import shutil

    import cv2
    from pycocotools.coco import COCO

    from autolabel.evaluation.video_metrics import evaluate_video
    from autolabel.masks import rle_to_mask
    from autolabel.review.push_video import pull_video, push_video

    run = labelled_clip(tmp_path_factory, frames=True)
    (pred,) = read_predictions([run])
    data = Path(json.loads((run / "run.json").read_text())["input_root"])
    names = [f"clip1/frame{i + 1}.png" for i in range(12)]  # natural order: frame10 after frame9
    assert [im.file for im in pred.images] == names[::2] and [im.frame for im in pred.images] == list(range(0, 12, 2))
    stats = push_video([run], "frames_push_test")
    assert stats.clips == 1 and stats.review_videos == 1 and not stats.not_pushed, str(stats)
    dataset = fo_db.load_dataset("frames_push_test")
    assert dataset.media_type == "video" and len(dataset) == 1
    sample = dataset.first()
    video = run / "review-videos" / "clip1.webm"
    assert sample.filepath == str(video.resolve()) and sample["autolabel_group"] == "clip1"
    assert (sample.metadata.total_frame_count, sample.metadata.frame_rate) == (12, 30.0)
    assert (sample.metadata.frame_width, sample.metadata.frame_height) == (128, 96)
    # every frame of the folder in order: video frame i + 1 is the folder's frame i
    cap = cv2.VideoCapture(str(video))
    assert cap.get(cv2.CAP_PROP_FPS) == 30.0  # the metadata push set is what the file says
    decoded = []
    while (frame := cap.read())[0]:
        decoded.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB).astype(float))
    cap.release()
    originals = [np.asarray(cv2.cvtColor(cv2.imread(str(data / n)), cv2.COLOR_BGR2RGB), float) for n in names]
    assert len(decoded) == 12
    for i, frame in enumerate(decoded):
        errors = [np.abs(frame - o).mean() for o in originals]
        assert int(np.argmin(errors)) == i and errors[i] < 4, (i, errors)
    expected = {(s.frame + 1, s.track_id) for s in pred.turns[0].segments if s.bbox[2] > 0}
    got = {(number, d.index) for number, frame in sample.frames.items()
           for d in (frame["predictions_multi_target"].detections if frame["predictions_multi_target"] else [])}
    assert got == expected and {n for n, _ in got} <= {1, 3, 5, 7, 9, 11} and stats.masks == len(expected)
    # a second push reuses the video
    before = video.stat()
    again = push_video([run], "frames_push_test")
    assert again.review_videos == 0 and again.masks == stats.masks and len(fo_db.load_dataset("frames_push_test")) == 1
    assert (video.stat().st_mtime_ns, video.stat().st_ino) == (before.st_mtime_ns, before.st_ino)
    # pull: the folder's own frame names, the masks pixel for pixel
    pulled = pull_video("frames_push_test", tmp_path / "pulled.json")
    coco = COCO(str(tmp_path / "pulled.json"))
    file_of = {im["id"]: im["file_name"] for im in coco.dataset["images"]}
    assert sorted(file_of.values(), key=names.index) == names[::2] and pulled.clips == 1
    frame_of = {im["id"]: im["frame_index"] for im in coco.dataset["images"]}
    pushed = {(s.frame, s.track_id): s for s in pred.turns[0].segments if s.bbox[2] > 0}
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(pushed)
    for a in anns:
        s = pushed[(frame_of[a["image_id"]], a["attributes"]["track_id"])]
        assert file_of[a["image_id"]] == pred.images[s.image].file
        assert (coco.annToMask(a).astype(bool) == rle_to_mask(s.rle)).all()
    unchanged = evaluate_video(run, tmp_path / "pulled.json")
    assert not unchanged.warnings and unchanged.overall["J&F"] == pytest.approx(1.0), "the run pairs with its review"
    # a frame written again rewrites the video; an unreadable one keeps the clip out, naming the file
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / names[3]).write_bytes((copy / names[3]).read_bytes())
    assert push_video([run], "frames_push_copy", image_root=copy).review_videos == 1
    (copy / names[3]).write_bytes(b"not a png")
    broken = push_video([run], "frames_push_copy", image_root=copy)
    assert broken.clips == 0 and len(broken.not_pushed) == 1 and names[3] in str(broken)
    assert sorted(p.name for p in video.parent.iterdir()) == ["clip1.webm", "clip1.webm.frames"], "no temp file left"


def test_a_two_round_template_on_a_clip_tracks_each_round(tmp_path, tmp_path_factory):
    data = tmp_path / "data"
    write_clip(data / "walk.avi", 6)
    chats = []

    steps = []

    def backend(options: BackendOptions) -> VlmSamBackend:
        b = VlmSamBackend(options)
        make_steps = b.steps
        b.steps = lambda states, t: (made := make_steps(states, t), steps.append((t, made)))[0]
        chats.append(keyframe_answers(b, lambda s: [(1, "person", model_box(s, 1, (8, 36, 32, 60)))]))
        return b

    cfg = video_config(tmp_path, tmp_path_factory, data, keyframes=2).model_copy(update={"prompt": ["multi-round"]})
    summary = Engine(cfg, backend_factory=backend).run()
    assert summary.exit_code == 0, summary.failed
    (pred,) = read_predictions([cfg.out])
    assert [len(t.segments) for t in pred.turns] == [6, 6], "each round's target tracked over the 6 frames"
    assert {s.round for s in pred.turns[1].segments} == {1}
    second = chats[0][1]
    assert any("Frame 1 (t=" in c.get("text", "") for c in second[0]["content"])
    # round 2 sees round 1's track where the model sees the clip, on its keyframes: listed in the
    # text and outlined on exactly the keyframes where the track's mask is not empty
    memory = second[-1]["content"][0]["text"]
    assert memory.startswith("Round 1 found: person in Frame 1") and "person in Frame 2" in memory
    first_images = next(made[0].images for t, made in steps if t == 0)
    second_images = next(made[0].images for t, made in steps if t == 1)
    outlined = [not np.array_equal(a, b) for a, b in zip(first_images, second_images)]
    assert outlined == [f"person in Frame {k} at [" in memory for k in (1, 2)] and any(outlined)


def test_a_missing_tracker_model_is_a_usage_error_before_anything_loads(tmp_path, tmp_path_factory):
    from autolabel.errors import AutolabelError

    write_clip(tmp_path / "data" / "a.avi", 4)
    cfg = video_config(tmp_path, tmp_path_factory, tmp_path / "data")
    cfg = cfg.model_copy(update={"backend_option": {**cfg.backend_option, "tracker": str(tmp_path / "no-such-model")}})
    with pytest.raises(AutolabelError, match="tracker"):
        Engine(cfg).run()
    assert not (cfg.out / "predictions.jsonl").exists()


def test_a_sam3_image_checkpoint_is_refused_as_a_tracker(tmp_path_factory):
    """A SAM 3 image model (model type sam3) has no tracker weights: refused, not tracked at random."""
    import torch
    from tiny_sam import tiny_mask_model

    from autolabel.backends.tracking import VideoTracker

    with pytest.raises(ValueError, match="holds no tracker.*facebook/sam3"):
        VideoTracker("tiny-sam3", tiny_mask_model("sam3", tmp_path_factory), device="cpu", dtype=torch.float32)
