"""Engine + store: streaming, batching, failure isolation, resume, shards, locks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_groups, write_image
from doubles import BoxBackend, OutOfMemoryBackend
from PIL import Image
from rich.console import Console

from autolabel.config import RunConfig
from autolabel.engine import Engine, RunSummary, shard_of
from autolabel.progress import print_summary
from autolabel.ray_engine import LabelWorker, RayEngine, _decode_row
from autolabel.sources import open_source
from autolabel.errors import AutolabelError
from autolabel.store import PredictionWriter, read_predictions, scan_status

def run(input: Path, out: Path, template: str, **kw) -> tuple[Engine, object]:
    cfg = RunConfig(input=input, out=out, prompt=[template], quiet=True, **{"backend": "doubles:BoxBackend", **kw})
    engine = Engine(cfg)
    return engine, engine.run()


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for p in sorted(out.glob("predictions*.jsonl")) for x in p.read_text().splitlines()]


def test_run_writes_one_prediction_per_group_and_template(groups_dir, tmp_path, template, box_backend):
    out = tmp_path / "run"
    engine, summary = run(groups_dir, out, template, batch_size=4, backend=box_backend.target)
    assert summary.exit_code == 0 and summary.done == 6 and summary.groups == 6 and summary.images == 12
    preds = list(read_predictions([out]))
    assert [p.group_id for p in preds] == [f"g{g:03d}" for g in range(6)]
    p = preds[0]
    assert p.key == "g000|pets|test/box-v1" and p.status == "ok" and p.template == "pets"
    assert [(i.file, i.width, i.height) for i in p.images] == [("g000/img1.png", 40, 32), ("g000/img2.png", 48, 32)]
    assert len(p.turns) == 2 and p.turns[0].question == "Segment cat, dog, bird in the 2 images."
    seg = p.turns[0].segments[0]
    assert seg.rle["size"] == [32, 40] and isinstance(seg.rle["counts"], str)
    assert seg.bbox == [10.0, 8.0, 10.0, 8.0] and seg.mask().sum() == 80
    assert [r.label for r in p.turns[0].rejected] == ["bird"]
    assert p.turns[1].segments[0].round == 1
    # batches of 4 then 2: the backend really batched
    assert box_backend.instances[-1].calls == [4, 2]
    info = json.loads((out / "run.json").read_text())
    assert info["finished"] and info["counts"]["done"] == 6
    assert info["templates"]["pets"]["categories"] == ["cat", "dog", "bird"]
    assert info["model"] == "test/box-v1" and "transformers" in info["versions"]


def test_rerun_skips_done_keys_without_loading_the_model(groups_dir, tmp_path, template, box_backend):
    out = tmp_path / "run"
    run(groups_dir, out, template, backend=box_backend.target)
    before = len(box_backend.instances)
    engine, summary = run(groups_dir, out, template, backend=box_backend.target)
    assert len(box_backend.instances) == before, "the model must not load when nothing is left"
    assert summary.done == 0 and summary.already_done == 6 and summary.exit_code == 0
    assert len(lines(out)) == 6
    _, summary = run(groups_dir, out, template, overwrite=True)
    assert summary.done == 6 and len(lines(out)) == 12
    assert len(list(read_predictions([out]))) == 6  # last line wins


def test_failing_group_fails_alone_and_is_retried_on_rerun(tmp_path, template, box_backend):
    data = make_groups(tmp_path / "data", 4)
    (data / "g001").rename(data / "boom")
    out = tmp_path / "run"
    _, summary = run(data, out, template, batch_size=4, backend=box_backend.target)
    assert summary.exit_code == 1
    assert [k for k, _ in summary.failed] == ["boom|pets|test/box-v1"]
    assert "exploded on purpose" in summary.failed[0][1]
    status = scan_status([out])
    assert status == {"boom|pets|test/box-v1": "error", **{f"g{g:03d}|pets|test/box-v1": "ok" for g in (0, 2, 3)}}
    err = next(p for p in read_predictions([out]) if p.status == "error")
    assert err.error["stage"] == "predict" and err.images[0].width is not None
    # batch of 4 failed, then each request alone
    assert box_backend.instances[-1].calls == [4, 1, 1, 1, 1]
    (data / "boom").rename(data / "fixed")
    _, summary = run(data, out, template)
    assert summary.done == 1 and summary.already_done == 3


def test_bad_images_become_error_records_and_the_run_goes_on(tmp_path, template):
    data = make_groups(tmp_path / "data", 3)
    (data / "g001" / "img2.png").write_bytes(b"")  # zero bytes
    (data / "g002" / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    _, summary = run(data, out, template)
    assert summary.exit_code == 1 and summary.done == 2
    (key, reason), = summary.failed
    assert key.startswith("g001|") and "g001/img2.png" in reason
    bad = next(p for p in read_predictions([out]) if p.status == "error")
    assert bad.error["stage"] == "decode" and bad.error["file"] == "g001/img2.png"
    assert any("notes.txt" in f for f, _ in summary.skipped_files)



def bad_files(folder: Path) -> list[str]:
    """Every kind of bad file in one group folder, next to a good image; returns their names."""
    (folder / "a-link.jpg").symlink_to(folder / "deleted.jpg")  # a broken symlink
    (folder / "b-empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "c-truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "d-text.jpg").write_text("just some text, named like a picture")
    Image.new("1", (15000, 15000)).save(folder / "e-bomb.png")  # 225 Mpx over the default limit, 27 KB
    return [f"{folder.name}/{n}" for n in ("a-link.jpg", "b-empty.jpg", "c-truncated.jpg", "d-text.jpg", "e-bomb.png")]


def test_every_bad_file_of_a_group_is_named_in_one_error_record(tmp_path, template):
    data = make_groups(tmp_path / "data", 3)
    names = bad_files(data / "g001")
    for n in names[1:]:  # the same files in a group without the broken symlink: they fail decoding
        (data / "g002" / Path(n).name).write_bytes((data / n).read_bytes())
    out = tmp_path / "run"
    _, summary = run(data, out, template)
    assert summary.exit_code == 1 and summary.done == 1
    errors = {p.group_id: p.error for p in read_predictions([out]) if p.status == "error"}
    g1 = errors["g001"]
    assert g1["stage"] == "source" and g1["file"] == "g001/a-link.jpg"  # the first bad file, as before
    assert [f["file"] for f in g1["files"]] == names
    reasons = [f["reason"] for f in g1["files"]]
    assert reasons[0].startswith("broken symlink") and reasons[1] == "empty file (0 bytes)"
    assert reasons[2].startswith("corrupt or truncated") and reasons[3].startswith("not an image")
    assert "over the pixel limit" in reasons[4] and "bomb" in reasons[4]
    assert g1["message"].startswith("5 unusable files: g001/a-link.jpg: broken symlink")
    assert "\n" not in g1["message"] and all(n in g1["message"] for n in names)
    g2 = errors["g002"]
    g2_names = [n.replace("g001", "g002") for n in names[1:]]
    assert g2["stage"] == "decode" and g2["file"] == "g002/b-empty.jpg"
    assert [f["file"] for f in g2["files"]] == g2_names
    # the end-of-run summary names them all too
    console = Console(file=io.StringIO(), width=100)
    print_summary(console, summary, out)
    shown = [line.strip() for line in console.file.getvalue().splitlines()]
    assert "g001|pets|test/box-v1: 5 unusable files:" in shown
    assert all(any(line.startswith(f"{n}: ") for line in shown) for n in names + g2_names)  # one line each


def test_a_manifest_line_with_missing_outside_and_corrupt_images_names_them_all(tmp_path, template):
    root = tmp_path / "root"
    write_image(tmp_path / "outside.png")
    write_image(root / "ok.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    m = root / "m.jsonl"
    m.write_text(json.dumps({"id": "g", "images": ["ok.png", "gone.png", "../outside.png", "corrupt.png"]}) + "\n"
                 + json.dumps({"id": "fine", "images": ["ok.png"]}) + "\n")
    out = tmp_path / "run"
    _, summary = run(m, out, template)
    assert summary.done == 1 and [k for k, _ in summary.failed] == ["g|pets|test/box-v1"]
    (bad,) = [p for p in read_predictions([out]) if p.status == "error"]
    assert bad.error["file"] == "gone.png"
    assert [f["file"] for f in bad.error["files"]] == ["gone.png", "../outside.png", "corrupt.png"]
    assert "not found" in summary.failed[0][1] and "--allow-outside-root" in summary.failed[0][1]
    assert "corrupt.png" in summary.failed[0][1]



def test_ray_workers_name_every_bad_file_too(tmp_path, template):
    """The Ray engine's decode task and worker, called in-process: the list survives its JSON rows,
    and the driver names every bad file of a group the source refused."""
    data = make_groups(tmp_path / "data", 2)
    names = bad_files(data / "g001")
    (data / "g001" / "a-link.jpg").unlink()  # only decode failures left in g001
    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=[template], backend="doubles:BoxBackend", quiet=True)
    (g0, g1) = list(open_source(data))
    rows = [_decode_row({"text": json.dumps({"group": g.to_json(), "skip": []})}, cfg.max_pixels) for g in (g0, g1)]
    worker = LabelWorker(cfg.model_dump(mode="json"))
    try:
        (report,) = worker({k: [r[k] for r in rows] for k in rows[0]})["report"]
    finally:
        worker.writer.close()
    assert json.loads(report)["done"] == 1
    (bad,) = [p for p in read_predictions([cfg.out]) if p.status == "error"]
    assert bad.error["stage"] == "decode" and [f["file"] for f in bad.error["files"]] == names[1:]
    (data / "g001" / "a-link.jpg").symlink_to(data / "g001" / "deleted.jpg")
    engine = RayEngine(cfg.model_copy(update={"out": tmp_path / "driver"}))
    writer = PredictionWriter(tmp_path / "driver")
    try:
        assert engine._plan(open_source(data), writer, set(), RunSummary(), tmp_path / "todo.jsonl") == 1
    finally:
        writer.close()
    (bad,) = [p for p in read_predictions([tmp_path / "driver"]) if p.status == "error"]
    assert bad.error["stage"] == "source" and [f["file"] for f in bad.error["files"]] == names


def test_shards_partition_the_groups_and_merge(tmp_path, template):
    data = make_groups(tmp_path / "data", 10, per_group=1)
    out = tmp_path / "run"
    for i in range(3):
        _, s = run(data, out, template, shard=f"{i}/3")
        assert s.exit_code == 0
    files = sorted(p.name for p in out.glob("predictions*.jsonl"))
    assert files == [f"predictions.shard-{i}-of-3.jsonl" for i in range(3)]
    per_shard = [[json.loads(x)["group_id"] for x in (out / f).read_text().splitlines()] for f in files]
    assert sorted(sum(per_shard, [])) == [f"g{g:03d}" for g in range(10)]
    for i, ids in enumerate(per_shard):
        assert all(shard_of(g, 3) == i for g in ids)
    # an unsharded rerun over the same dir finds everything done
    _, s = run(data, out, template)
    assert s.done == 0 and s.already_done == 10


def test_limit_and_bad_shard(groups_dir, tmp_path, template):
    _, s = run(groups_dir, tmp_path / "run", template, limit=2)
    assert s.done == 2
    with pytest.raises(Exception, match="0 <= I < N"):
        RunConfig(input=groups_dir, shard="3/3")


def test_torn_last_line_is_repaired_on_resume(groups_dir, tmp_path, template):
    out = tmp_path / "run"
    run(groups_dir, out, template)
    path = out / "predictions.jsonl"
    data = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(data[:4]) + data[4][:50])  # a crash mid-write of line 5
    assert len(scan_status([out])) == 4
    _, s = run(groups_dir, out, template)
    assert s.done == 2 and s.already_done == 4
    assert sorted(x["group_id"] for x in lines(out)) == [f"g{g:03d}" for g in range(6)]


def test_second_writer_on_the_same_run_dir_is_refused(tmp_path):
    w = PredictionWriter(tmp_path / "run")
    try:
        with pytest.raises(AutolabelError, match="another autolabel run"):
            PredictionWriter(tmp_path / "run")
        PredictionWriter(tmp_path / "run", "shard-1-of-2").close()  # a shard has its own lock
    finally:
        w.close()


def test_a_required_variable_nobody_gives_is_a_usage_error_before_anything_loads(tmp_path, box_backend):
    """Without --var and with no group to give it, every group would fail alone: refused up front
    (nothing loaded, nothing written); in a manifest where some groups give it, only the others fail."""
    data = make_groups(tmp_path / "data", 2)
    tpl = tmp_path / "q.yaml"
    tpl.write_text("name: q\nturns: ['{{ question }}']\n")
    before = len(box_backend.instances)
    with pytest.raises(AutolabelError, match=r"template 'q' needs variable 'question'.*--var question="):
        run(data, tmp_path / "run", str(tpl), backend=box_backend.target)
    assert len(box_backend.instances) == before and not (tmp_path / "run").exists()
    with pytest.raises(AutolabelError, match="'question'"):  # the built-in that has no default
        run(data, tmp_path / "run", "open-ended")
    _, s = run(data, tmp_path / "run2", str(tpl), var={"question": "what?"})
    assert s.exit_code == 0
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "asks", "images": ["data/g000/img1.png"], "variables": {"question": "why?"}})
                        + "\n" + json.dumps({"id": "silent", "images": ["data/g001/img1.png"]}) + "\n")
    _, s = run(manifest, tmp_path / "run3", str(tpl))
    assert s.done == 1 and [k for k, _ in s.failed] == ["silent|q|test/box-v1"] and "question" in s.failed[0][1]


def test_memory_window_is_bounded(tmp_path, template, monkeypatch):
    """Decoding runs ahead by a bounded window, not over the whole dataset."""
    import autolabel.engine as engine_module

    data = make_groups(tmp_path / "data", 40, per_group=1)
    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=[template], backend="doubles:BoxBackend",
                    quiet=True, batch_size=2, decode_workers=2)
    decoded, predicted = [], []
    original_decode = engine_module.decode_group
    monkeypatch.setattr(engine_module, "decode_group",
                        lambda g, max_pixels: (decoded.append(g.id), original_decode(g, max_pixels))[1])

    class CountingBackend(BoxBackend):
        def predict(self, requests):
            predicted.append(len(decoded))
            return super().predict(requests)

    Engine(cfg, backend_factory=CountingBackend).run()
    window = max(2 * cfg.batch_size, cfg.decode_workers * 2)
    assert len(predicted) == 20 and all(n <= 2 * (i + 1) + window for i, n in enumerate(predicted))

def test_out_of_memory_halves_the_batch_and_records_it(tmp_path, template):
    data = make_groups(tmp_path / "data", 10, per_group=1)
    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=[template], backend="doubles:OutOfMemoryBackend",
                    quiet=True, batch_size=8)
    summary = Engine(cfg).run()
    assert summary.exit_code == 0 and summary.done == 10 and summary.batch_size == 2
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [(e["batch"], e["retried_as"]) for e in info["oom_retries"]] == [(8, 4), (4, 2)]
    assert "CUDA out of memory" in info["oom_retries"][0]["message"]
    assert info["engine"] == {"name": "local", "batch_size": 2}
    assert {line["timings"]["batch"] for line in lines(tmp_path / "run")} == {2}


def test_a_single_request_out_of_memory_fails_alone(tmp_path, template):
    data = make_groups(tmp_path / "data", 3, per_group=1)
    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=[template], backend="doubles:OutOfMemoryBackend",
                    quiet=True, batch_size=1)
    OutOfMemoryBackend.fits = 0
    try:
        summary = Engine(cfg).run()
    finally:
        OutOfMemoryBackend.fits = 2
    assert summary.exit_code == 1 and len(summary.failed) == 3
    assert all("OutOfMemoryError" in reason for _, reason in summary.failed)


def test_batch_size_auto_finds_the_largest_batch_that_fits(tmp_path, template, monkeypatch):
    """On CUDA `auto` starts at AUTO_BATCH_START and halves until a batch fits; without CUDA it is
    AUTO_BATCH_CPU. CUDA is stood in for by saying the backend is on it."""
    from autolabel.labeler import AUTO_BATCH_CPU, Labeler

    data = make_groups(tmp_path / "data", 70, per_group=1)
    cfg = RunConfig(input=data, out=tmp_path / "cpu", prompt=[template], backend="doubles:BoxBackend",
                    quiet=True, batch_size="auto")
    assert Engine(cfg).run().batch_size == AUTO_BATCH_CPU
    monkeypatch.setattr(Labeler, "_on_cuda", lambda self: True)
    OutOfMemoryBackend.fits = 5
    try:
        summary = Engine(cfg.model_copy(update={"out": tmp_path / "gpu",
                                                "backend": "doubles:OutOfMemoryBackend"})).run()
    finally:
        OutOfMemoryBackend.fits = 2
    assert summary.exit_code == 0 and summary.done == 70 and summary.batch_size == 4
    assert [e.batch for e in summary.oom] == [64, 32, 16, 8]
