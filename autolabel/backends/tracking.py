"""Video: each target the VLM finds on a keyframe starts a SAM 2 (or SAM 3) track through the clip.

The `vlm-sam` backend reasons on a clip's keyframes like on any image group; then, instead of the
image mask head, `VideoTracker` (transformers' `Sam2VideoModel`, or `Sam3TrackerVideoModel` for a
SAM 3 checkpoint: the same API) takes each keyframe's boxes as prompts and propagates them forward to the clip's last sampled frame and backward to its first.
Frames are streamed from disk (video.py) into the session one at a time, and after each frame the
session forgets what the model can no longer read (the frame's pixels, memories older than its
memory window), so memory stays flat however long the clip is. Masks are RLE-encoded as they come.

Keyframes are tracked one session each; a target named on two keyframes (the same label, masks
overlapping at mask IoU >= MERGE_IOU on the frames where both tracks have a mask) is one track,
each frame taken from the track whose keyframe is nearer. Track ids count from 1 per clip and
answer turn, in keyframe order.

The tracker model is `--backend-option tracker=ID_OR_DIR`, else the `--mask-model` (SAM 2.1 and
SAM 3 checkpoints on the hub hold both the image and the video model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autolabel.masks import mask_to_rle

MERGE_IOU = 0.5
# config.json model_type -> (model class, processor class) of the tracker; any other type is read as SAM 2
SAM3_TRACKER = ("Sam3TrackerVideoModel", "Sam3TrackerVideoProcessor")
TRACKERS = {"sam3_video": SAM3_TRACKER, "sam3_tracker_video": SAM3_TRACKER}
SAM2_TRACKER = ("Sam2VideoModel", "Sam2VideoProcessor")


@dataclass
class Track:
    """One object through a clip: per sampled position, its RLE and the tracker's score (0..1)."""

    label: str
    keyframe: int  # the sampled position it was started on
    target: int  # index of its target in the answer
    frames: dict[int, tuple[dict, float]] = field(default_factory=dict)
    also: list[int] = field(default_factory=list)  # other targets merged into it


class VideoTracker:
    """SAM 2 / SAM 3 video propagation over a streamed clip, with flat memory (see module doc)."""

    def __init__(self, model_id: str, path: str, *, device: str, dtype):
        import transformers

        from autolabel.loading import config_model_type

        self.model_id, self.source = model_id, path
        self.device, self.dtype = device, dtype
        model_type = config_model_type(path)
        if model_type == "sam3":
            raise ValueError(f"{model_id} is a SAM 3 image checkpoint (model type sam3), which holds no tracker: "
                             "track with facebook/sam3 (sam3_video) or a SAM 2.1 checkpoint "
                             "(--backend-option tracker=...)")
        model_class, processor_class = (getattr(transformers, n) for n in TRACKERS.get(model_type, SAM2_TRACKER))
        self.model = model_class.from_pretrained(path, dtype=dtype).to(device).eval()
        self.processor = processor_class.from_pretrained(path)
        cfg = self.model.config
        # what a frame's inference reads: the last num_maskmem memories, max_object_pointers pointers
        self.window = max(int(cfg.num_maskmem), int(cfg.max_object_pointers_in_encoder)) + 1
        self.frames_tracked = 0
        self.peak_state_bytes = 0  # the most the session held at once (frames + memories), measured

    # -- one keyframe's targets through the clip ---------------------------------------------
    def track(self, clip, keyframe: int, boxes: np.ndarray) -> list[dict[int, tuple[dict, float]]]:
        """For each box (xyxy, original pixels) on sampled position `keyframe`: {position: (RLE, score)}
        over every sampled frame of the clip."""
        import torch

        from autolabel.video import iter_clip

        n = len(clip.frames)
        size = [clip.height, clip.width]
        obj_ids = list(range(1, len(boxes) + 1))
        out: list[dict[int, tuple[dict, float]]] = [{} for _ in obj_ids]
        session = self.processor.init_video_session(inference_device=self.device, dtype=self.dtype)
        session.video_height, session.video_width = clip.height, clip.width
        with torch.inference_mode():
            for reverse, (start, stop) in ((False, (keyframe, n - 1)), (True, (keyframe, 0))):
                if reverse:
                    _forget_tracked(session)
                for position, image in iter_clip(clip, start, stop, reverse=reverse):
                    pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
                    if position == keyframe and not reverse:
                        self.processor.add_inputs_to_inference_session(
                            inference_session=session, frame_idx=position, obj_ids=list(obj_ids),  # it empties the list
                            input_boxes=[[[float(v) for v in b] for b in boxes]], original_size=size)
                    if position == keyframe and reverse:
                        continue  # its masks came with the forward pass
                    result = self.model(inference_session=session, frame_idx=position,
                                        frame=pixels.to(self.device, self.dtype), reverse=reverse)
                    masks = self.processor.post_process_masks([result.pred_masks.float()], original_sizes=[size],
                                                              binarize=True)[0]
                    scores = torch.sigmoid(result.object_score_logits.float().reshape(-1)).cpu().numpy()
                    for j in range(len(obj_ids)):
                        out[j][position] = (mask_to_rle(masks[j, 0].cpu().numpy()), float(scores[j]))
                    self.frames_tracked += 1
                    self.peak_state_bytes = max(self.peak_state_bytes, _forget(session, position, self.window, reverse))
        return out


def _forget(session, position: int, window: int, reverse: bool) -> int:
    """Drop what frames after `position` cannot read; return the bytes the session still holds."""
    session.processed_frames.pop(position, None)
    held = 0
    for obj_idx, outputs in session.output_dict_per_obj.items():
        old = outputs["non_cond_frame_outputs"]
        for f in [f for f in old if (f < position - window if not reverse else f > position + window)]:
            del old[f]
        tracked = session.frames_tracked_per_obj.get(obj_idx, {})
        for f in [f for f in tracked if abs(f - position) > window]:
            del tracked[f]
        for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for entry in outputs[kind].values():
                held += _tensor_bytes(entry)
    held += sum(_tensor_bytes(v) for v in (session.processed_frames or {}).values())
    held += sum(_tensor_bytes(v) for v in session.cache._vision_features.values())
    return held


def _forget_tracked(session) -> None:
    """Before walking back from the keyframe: forget the forward pass's memories (not the keyframe's)."""
    for obj_idx, outputs in session.output_dict_per_obj.items():
        outputs["non_cond_frame_outputs"].clear()
        session.frames_tracked_per_obj.get(obj_idx, {}).clear()


def _tensor_bytes(value: Any) -> int:
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


# -- tracks from an answer ---------------------------------------------------------------------
def merge_tracks(tracks: list[Track], threshold: float = MERGE_IOU) -> list[Track]:
    """One track per object: a track with the label of an earlier one whose masks overlap it (mean
    mask IoU over the frames where both have a mask >= threshold) joins it; each frame is then taken
    from the track whose keyframe is nearer."""
    from pycocotools import mask as mask_utils

    kept: list[Track] = []
    for track in tracks:
        for other in kept:
            if other.label != track.label:
                continue
            ious = []
            for p, (rle, _) in track.frames.items():
                mine = other.frames.get(p)
                if mine is None:
                    continue
                a, b = _coco(mine[0]), _coco(rle)
                if mask_utils.area(a) and mask_utils.area(b):
                    ious.append(float(mask_utils.iou([a], [b], [0])[0][0]))
            if ious and float(np.mean(ious)) >= threshold:
                for p, value in track.frames.items():
                    if p not in other.frames or abs(p - track.keyframe) < abs(p - other.keyframe):
                        other.frames[p] = value
                other.also.append(track.target)
                break
        else:
            kept.append(track)
    return kept


def _coco(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def segment_with_clips(backend, states: list, answers: list, t: int, exemplar_box) -> list[list]:
    """The vlm-sam backend's masks for a batch holding video clips: image groups through its mask
    head as usual, each clip's targets tracked through the clip (`exemplar_box`: the backend's rule
    for preferring a user's exemplar box)."""
    out: list[list | None] = [None] * len(states)
    images = [k for k, s in enumerate(states) if getattr(s.request.group, "video", None) is None]
    if images:
        for k, masks in zip(images, backend._segment([states[k] for k in images], [answers[k] for k in images], t)):
            out[k] = masks
    for k, (state, answer) in enumerate(zip(states, answers)):
        if out[k] is None:
            out[k] = backend.masks.call(_track_answer, video_tracker(backend), state, answer, t, exemplar_box)
    return out


def video_tracker(backend) -> VideoTracker:
    """The backend's tracker, loaded on the first clip."""
    tracker = getattr(backend, "_video_tracker", None)
    if tracker is None:
        from autolabel.loading import resolve_pretrained

        model = backend.options.extra.get("tracker") or backend.mask_model
        if str(model).endswith(".pth"):
            raise ValueError(f"video needs a transformers SAM 2 or SAM 3 checkpoint to track with; {model} is a "
                             "segment-anything file: give --backend-option tracker=facebook/sam2.1-hiera-tiny")
        tracker = VideoTracker(str(model), resolve_pretrained(str(model)), device=backend.device, dtype=backend.dtype)
        backend._video_tracker = tracker
        backend._mask_info["tracker"] = str(model)
    return tracker


def _track_answer(tracker: VideoTracker, state, answer, t: int, exemplar_box) -> list:
    from autolabel.backends.base import TargetMask

    clip = state.request.group.video
    prompt = state.request.prompt
    parsed, confidence = answer.parsed, answer.confidence
    by_keyframe: dict[int, list[tuple[int, np.ndarray]]] = {}
    for k, target in enumerate(parsed.targets):
        i = target.image - 1
        box = exemplar_box(state.frames[i].box_to_original(target.box), state.request.group.images[i].prompt)
        box = np.clip(np.asarray(box, np.float64), 0, [clip.width, clip.height, clip.width, clip.height])
        by_keyframe.setdefault(i, []).append((k, box))
    tracks: list[Track] = []
    for i in sorted(by_keyframe):
        items = by_keyframe[i]
        position = clip.keyframes[i]
        found = tracker.track(clip, position, np.stack([b for _, b in items]))
        tracks += [Track(parsed.targets[k].label, position, k, frames) for (k, _), frames in zip(items, found)]
    tracks = merge_tracks(sorted(tracks, key=lambda tr: (tr.keyframe, tr.target)))
    masks = []
    for track_id, track in enumerate(tracks, 1):
        target = parsed.targets[track.target]
        conf = max(confidence[k] for k in [track.target, *track.also])
        for p in sorted(track.frames):
            rle, score = track.frames[p]
            masks.append(TargetMask(image=p, label=target.label, category=prompt.ontology.get(target.label, target.label),
                                    phrase=target.phrase or target.label, mask=None, score=score * conf, round=t,
                                    rle=rle, frame=clip.frames[p], timestamp=clip.timestamps[p], track_id=track_id))
    return masks
