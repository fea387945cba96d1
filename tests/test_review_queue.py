"""Review that scales to a team, on a real MongoDB: doubt and the doubt-first queue, `review --no-app`,
`review status`, two writers at once, and a FiftyOne dataset or saved view as the input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import PETS_TEMPLATE, TESTS, annotations_by_mask, cli, labelled_run, make_groups

from autolabel.config import RunConfig
from autolabel.engine import Engine
from autolabel.exporters import export_coco
from autolabel.review.app import prepare_review, queue
from autolabel.review.database import free_port, load_dataset
from autolabel.review.layout import RunFields, all_samples
from autolabel.review.lock import dataset_lock
from autolabel.review.pull import pull
from autolabel.review.push import push
from autolabel.store import read_predictions

PETS2_TEMPLATE = PETS_TEMPLATE.replace("name: pets", "name: pets2").replace("cat, dog, bird", "cat, dog, fish")


def templates(tmp_path: Path) -> list[str]:
    out = []
    for name, text in (("pets", PETS_TEMPLATE), ("pets2", PETS2_TEMPLATE)):
        (tmp_path / f"{name}.yaml").write_text(text)
        out.append(str(tmp_path / f"{name}.yaml"))
    return out


def two_template_run(tmp_path: Path) -> Path:
    """4 groups of 2 images and a broken one, labelled by `pets` and `pets2`; DoubtBackend makes pets2
    move its masks on g001 (IoU 1/3 with pets') and reject the dog pets found on g002."""
    data = tmp_path / "data"
    make_groups(data, 4)
    (data / "broken").mkdir()
    (data / "broken" / "a.png").write_bytes(b"not a png")
    cfg = RunConfig(input=data, out=tmp_path / "run", prompt=templates(tmp_path), backend="doubles:DoubtBackend",
                    quiet=True)
    Engine(cfg).run()
    return tmp_path / "run"


def order_of(view) -> list[tuple[str, str]]:
    return list(zip(*view.values(["group_id", "template"])))


def test_doubt_per_label_and_sample_and_the_queue_orders(fo_db, tmp_path, dataset_name):
    push([two_template_run(tmp_path)], dataset_name)
    ds = load_dataset(dataset_name)

    def sample(group: str, template: str, index: int = 0):
        return all_samples(ds).match({"group_id": group, "template": template, "image_index": index}).first()

    # where the templates agree only the score speaks: cats 0.9, dogs 0.8
    agreed = sample("g000", "pets")
    assert [(d.label, d.doubt, d.doubt_score, d.doubt_disagreement, d.doubt_conflict, d.doubt_shape)
            for d in agreed.predictions.detections] == [("cat", 0.1, 0.1, 0, 0, 0), ("dog", 0.2, 0.2, 0, 0, 0)] * 2
    assert (agreed.predictions_doubt, agreed.predictions_doubt_score, agreed.predictions_doubt_disagreement,
            agreed.predictions_group_doubt, agreed.predictions_group_score) == (0.2, 0.2, 0, 0.2, 0.8)
    # g001: pets2's masks sit half a mask to the right. Image 1 is 40 px wide: pets' turn-1 cat is
    # columns 10-19, pets2's are 15-24 (turn 1) and 15-25 (turn 2): best IoU 5/15, disagreement
    # (1 - 1/3) / 2 (two answers, nothing says which is wrong), doubt 1 - 0.9 x 2/3 = 0.4; pets'
    # turn-2 cat (10-20) meets 15-24 at 6/15: disagreement 0.3, doubt 1 - 0.9 x 0.7 = 0.37.
    moved = sample("g001", "pets")
    assert [d.doubt_disagreement for d in moved.predictions.detections] == [0.3333, 0.3333, 0.3, 0.3]
    assert [d.doubt for d in moved.predictions.detections] == [0.4, round(1 - 0.8 * 2 / 3, 4), 0.37, 0.44]
    assert moved.predictions_doubt == round(1 - 0.8 * 2 / 3, 4) == moved.predictions_group_doubt
    # g002: pets found a dog that pets2 rejected: one answer of two against, conflict 1/2 on both sides
    found = sample("g002", "pets")
    assert [d.doubt_conflict for d in found.predictions.detections] == [0, 0.5, 0, 0.5]
    assert found.predictions_doubt == 1 - 0.8 * 0.5 and found.predictions_doubt_conflict == 0.5
    rejecting = sample("g002", "pets2")
    assert [d.label for d in rejecting.predictions.detections] == ["cat", "cat"]
    assert rejecting.predictions_doubt == 0.5 and rejecting.predictions_doubt_conflict == 0.5
    assert sample("broken", "pets").predictions_doubt == 1.0  # a failed group: nothing to trust

    setup = prepare_review(ds)
    assert setup.view == "by-doubt" and setup.queued == 10
    assert ds.list_saved_views() == ["by-doubt"]
    assert order_of(ds.load_saved_view("by-doubt")) == [
        ("broken", "pets"), ("broken", "pets2"),  # failed: doubt 1
        ("g002", "pets"), ("g002", "pets2"),  # 0.6, 0.5
        ("g001", "pets"), ("g001", "pets2"),  # 0.4667, 0.4526 (image 2)
        ("g000", "pets"), ("g000", "pets2"), ("g003", "pets"), ("g003", "pets2")]  # 0.2
    fields = RunFields.of("predictions")
    assert order_of(queue(ds, fields, "score")) == [  # the least sure first; no label (failed) last
        ("g000", "pets"), ("g000", "pets2"), ("g001", "pets"), ("g001", "pets2"), ("g002", "pets"),
        ("g003", "pets"), ("g003", "pets2"), ("g002", "pets2"), ("broken", "pets"), ("broken", "pets2")]
    assert order_of(queue(ds, fields, "file"))[:3] == [("broken", "pets"), ("broken", "pets2"), ("g000", "pets")]
    assert sorted(order_of(queue(ds, fields, "random"))) == sorted(order_of(queue(ds, fields, "file")))
    assert order_of(queue(ds, fields, "doubt", min_doubt=0.4)) == order_of(ds.load_saved_view("by-doubt"))[:6]
    # a queue of groups: every image of a question comes with it
    assert len(ds.load_saved_view("by-doubt").select_group_slices()) == 2 * 10 - 2  # broken has one image


def test_review_no_app_prepares_everything_and_exits(fo_db, tmp_path, dataset_name):
    push([two_template_run(tmp_path)], dataset_name)
    port = free_port()
    t0 = time.monotonic()
    r = cli("review", dataset_name, "--no-app", "--order", "score", "--min-doubt", "0.4", "--port", str(port))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 90
    assert f"App: http://localhost:{port}/datasets/{dataset_name}?view=by-score-over-0-4" in r.stdout
    assert "saved view by-score-over-0.4, 6 groups" in r.stderr.replace("\n", " ")
    with pytest.raises(OSError):  # nothing serves the App
        socket.create_connection(("127.0.0.1", port), 1).close()
    ds = load_dataset(dataset_name)
    ds.reload()  # changed by another process
    assert sorted(ds.list_saved_views()) == ["by-doubt", "by-score-over-0.4"]
    assert ds.active_label_schemas == ["reviewed"]
    assert len(all_samples(ds).exists("reviewed")) == 18
    assert len(ds.load_saved_view("by-score-over-0.4")) == 6
    # scripts go on from there
    r = cli("pull", dataset_name, "-o", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    r = cli("review", dataset_name, "--no-app", "--order", "sideways")
    assert r.returncode == 2 and "--order 'sideways'" in r.stderr
    r = cli("review", "status", "no_such_dataset")
    assert r.returncode == 2 and "no FiftyOne dataset named 'no_such_dataset'" in r.stderr


def test_review_status_counts_after_scripted_edits(fo_db, tmp_path, dataset_name):
    push([labelled_run(tmp_path)], dataset_name)
    ds = load_dataset(dataset_name)
    r = cli("review", "status", dataset_name)
    assert r.returncode == 2 and f"autolabel review {dataset_name}" in r.stderr
    prepare_review(ds)
    fo = fo_db
    sample = all_samples(ds).match({"group_id": "g002", "image_index": 0}).first()
    detections = sample.reviewed.detections
    assert [d.label for d in detections] == ["cat", "dog", "cat", "dog"]
    edited = detections[0].mask.copy()
    edited[0] = False  # the top row erased
    detections[0].mask = edited
    del detections[2]  # a cat deleted
    detections.append(fo.Detection(label="bird", bounding_box=[0.1, 0.1, 0.3, 0.3], mask=None))  # added
    sample.save()
    looked = all_samples(ds).match({"group_id": "g000", "image_index": 0}).first()
    looked.tags.append("reviewed")  # looked at, left as it was
    looked.save()

    r = cli("review", "status", dataset_name, "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert (status["source_field"], status["reviewed_field"]) == ("predictions", "reviewed")
    # 12 images with 2 cats and 2 dogs each (2 turns) and a failed one
    cat, dog, bird = (status["per_category"][c] for c in ("cat", "dog", "bird"))
    assert cat["labels"] == {"pushed": 24, "untouched": 22, "edited": 1, "added": 0, "deleted": 1}
    # g002 image 1 kept none of its two cats untouched
    assert cat["samples"] == {"pushed": 12, "reviewed": 2, "untouched": 11, "edited": 1, "added": 0, "deleted": 1}
    assert dog["labels"] == {"pushed": 24, "untouched": 24, "edited": 0, "added": 0, "deleted": 0}
    assert dog["samples"]["reviewed"] == 2
    assert bird["labels"] == {"pushed": 0, "untouched": 0, "edited": 0, "added": 1, "deleted": 0}
    assert bird["samples"] == {"pushed": 0, "reviewed": 1, "untouched": 0, "edited": 0, "added": 1, "deleted": 0}
    assert (cat["mean_score"], cat["mean_doubt"], dog["mean_score"], dog["mean_doubt"]) == (0.9, 0.1, 0.8, 0.2)
    assert bird["mean_score"] is None
    totals = status["totals"]
    assert totals["samples"]["pushed"] == 13 and totals["samples"]["reviewed"] == 2
    assert totals["labels"] == {"pushed": 48, "untouched": 46, "edited": 1, "added": 1, "deleted": 1}
    assert totals["mean_score"] == 0.85 and totals["mean_doubt"] == 0.15

    r = cli("review", "status", dataset_name)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    cat_row = "cat │ 12 │ 2 │ 24 │ 22 │ 1 │ 0 │ 1 │ 0.900 │ 0.100"
    for words in ("mean doubt", "untouched", cat_row, "all │ 13 │ 2 │ 48"):
        assert words in text, (words, r.stdout)


def _lines(proc: subprocess.Popen, into: list[str]) -> threading.Thread:
    def read() -> None:
        for line in proc.stderr:
            into.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def autolabel(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autolabel", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(TESTS)})


def test_a_push_waits_for_the_dataset_lock(fo_db, tmp_path, dataset_name):
    run = labelled_run(tmp_path)
    with dataset_lock(dataset_name, "a test holding it", on_wait=None):
        proc = autolabel("push", str(run), "--dataset", dataset_name)
        said: list[str] = []
        reader = _lines(proc, said)
        deadline = time.monotonic() + 90
        while not any("waiting for" in line for line in said):
            assert proc.poll() is None, "".join(said)
            assert time.monotonic() < deadline, "the push never waited"
            time.sleep(0.2)
        assert "a test holding it" in "".join(said)
        time.sleep(1)
        assert proc.poll() is None and not fo_db.dataset_exists(dataset_name)
    assert proc.wait(timeout=120) == 0, "".join(said)
    reader.join(5)
    assert len(all_samples(load_dataset(dataset_name))) == 13


def test_two_pushes_and_two_reviews_at_once_leave_a_consistent_dataset(fo_db, tmp_path, dataset_name):
    first = labelled_run(tmp_path)
    second = labelled_run(tmp_path, "run2", model="test/box-v2")
    procs = [autolabel("push", str(run), "--dataset", dataset_name) for run in (first, first, second)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    ds = load_dataset(dataset_name)
    samples = all_samples(ds)
    identities = list(zip(*samples.values(["group_id", "template", "image_index"])))
    assert len(identities) == len(set(identities)) == 13
    assert len(samples.distinct("group.id")) == 7
    runs = ds.info["autolabel"]["runs"]  # whichever model came first holds `predictions`
    other = next(f for f in runs if f != "predictions")
    assert other in ("predictions_test_box_v1", "predictions_test_box_v2") and len(runs) == 2
    assert runs["predictions"]["models"] != runs[other]["models"]
    for field in ("predictions", other):
        assert len(samples.exists(f"{field}_digest")) == 13 and len(samples.exists(f"{field}_doubt")) == 13

    procs = [autolabel("review", dataset_name, "--no-app", *extra) for extra in
             ([], ["--field", other, "--reviewed-field", "reviewed_2"])]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    ds.reload()
    assert set(ds.info["autolabel"]["reviews"]) == {"reviewed", "reviewed_2"}
    assert sorted(ds.active_label_schemas) == ["reviewed", "reviewed_2"]
    assert sorted(ds.list_saved_views()) == ["by-doubt", "reviewed_2-by-doubt"]
    assert len(samples.exists("reviewed")) == len(samples.exists("reviewed_2")) == 13


def user_dataset(fo, name: str, root: Path, grouped: bool = True):
    """A FiftyOne dataset of someone's own: 5 groups of a left and a right image (or 5 flat samples),
    odd groups in split `train`, with a saved view of them."""
    make_groups(root, 5)
    dataset = fo.Dataset(name, persistent=True)
    samples = []
    if grouped:
        dataset.add_group_field("group", default="left")
    for g in range(5):
        group = fo.Group()
        for i, slice_name in enumerate(("left", "right") if grouped else ("left",)):
            extra = {"group": group.element(slice_name)} if grouped else {}
            samples.append(fo.Sample(filepath=str(root / f"g{g:03d}" / f"img{i + 1}.png"),
                                     split="train" if g % 2 else "val", **extra))
    dataset.add_samples(samples, progress=False)
    from fiftyone import ViewField as F

    dataset.save_view("train", dataset.match(F("split") == "train"))
    return dataset


def test_a_run_from_a_saved_view_labels_exactly_it_and_pushes_back_onto_its_samples(fo_db, tmp_path, dataset_name):
    dataset = user_dataset(fo_db, dataset_name, tmp_path / "photos")
    view = dataset.load_saved_view("train")
    expected = {}  # group id -> [left id, right id]
    for group_id, sample_id, slice_name in zip(*view.select_group_slices().values(["group.id", "id", "group.name"])):
        expected.setdefault(group_id, {})[slice_name] = sample_id
    expected = {g: [s["left"], s["right"]] for g, s in expected.items()}
    assert len(expected) == 2
    pets = templates(tmp_path)[0]
    args = ["run", "--from-fiftyone", dataset_name, "--view", "train", "--prompt", pets,
            "--backend", "doubles:BoxBackend", "--out", str(tmp_path / "run"), "-q"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    lines = list(read_predictions([tmp_path / "run"]))
    assert {line.group_id: [im.sample_id for im in line.images] for line in lines} == expected
    assert {im.file for line in lines for im in line.images} == {f"g{g:03d}/img{i}.png" for g in (1, 3) for i in (1, 2)}
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["input_root"] == str(tmp_path / "photos") and info["source_kind"] == "fiftyone"
    assert info["parameters"]["from_fiftyone"] == dataset_name and info["parameters"]["view"] == "train"
    r = cli(*args)  # resume: nothing left to do
    assert r.returncode == 0, r.stderr
    assert len(list(read_predictions([tmp_path / "run"]))) == 2

    stats = push([tmp_path / "run"], dataset_name)
    assert (stats.field, stats.samples_added, stats.samples_updated) == ("predictions", 0, 4)
    dataset.reload()
    samples = all_samples(dataset)
    assert len(samples) == 10  # no sample added
    labelled = samples.exists("predictions")
    assert sorted(labelled.values("id")) == sorted(s for ids in expected.values() for s in ids)
    assert all(len(d.detections) == 4 for d in labelled.values("predictions"))
    assert len(labelled.exists("predictions_doubt")) == 4
    again = push([tmp_path / "run"], dataset_name)
    assert again.samples_unchanged == 4 and again.samples_updated == 0

    setup = prepare_review(dataset)
    assert setup.queued == 2 and setup.samples_added == 4
    report = pull(dataset_name, tmp_path / "corrected.json")
    assert report.totals()["untouched"] == 16 and report.groups == 2
    export_coco([tmp_path / "run"], tmp_path / "exported.json")
    ours, theirs = annotations_by_mask(tmp_path / "corrected.json"), annotations_by_mask(tmp_path / "exported.json")
    assert ours.keys() == theirs.keys() and len(ours) == 16
    assert all(ours[k]["segmentation"] == theirs[k]["segmentation"] for k in ours)

    r = cli("run", "--from-fiftyone", dataset_name, "--view", "nope", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--view 'nope'" in r.stderr and "train" in r.stderr
    r = cli("run", str(tmp_path / "photos"), "--from-fiftyone", dataset_name, "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "drop INPUT" in r.stderr
    r = cli("push", str(tmp_path / "run"), "--dataset", dataset_name + "_copy")  # another dataset: our own layout
    assert r.returncode == 0, r.stderr
    assert len(all_samples(load_dataset(dataset_name + "_copy"))) == 4


def test_a_flat_dataset_in_shards_with_two_templates(fo_db, tmp_path, dataset_name):
    dataset = user_dataset(fo_db, dataset_name, tmp_path / "photos", grouped=False)
    ids = dataset.values("id")
    for shard in ("0/2", "1/2"):
        r = cli("run", "--from-fiftyone", dataset_name, "--prompt", templates(tmp_path)[0], "--prompt",
                templates(tmp_path)[1], "--backend", "doubles:BoxBackend", "--shard", shard,
                "--out", str(tmp_path / "run"), "-q")
        assert r.returncode == 0, r.stderr
    lines = list(read_predictions([tmp_path / "run"]))
    assert len(lines) == 10 and {line.group_id for line in lines} == set(ids)
    assert all([im.sample_id for im in line.images] == [line.group_id] for line in lines)

    stats = push([tmp_path / "run"], dataset_name)
    assert stats.field == "predictions_pets, predictions_pets2" and stats.samples_added == 0
    dataset.reload()
    assert len(dataset) == 5
    assert len(dataset.exists("predictions_pets")) == len(dataset.exists("predictions_pets2")) == 5
    # the two templates agree everywhere: only the score speaks
    assert set(dataset.values("predictions_pets_doubt")) == {0.2}
    assert dataset.values("predictions_pets.detections.doubt_disagreement")[0] == [0, 0, 0, 0]
    setup = prepare_review(dataset, "predictions_pets2", "reviewed_pets2")
    assert setup.view == "reviewed_pets2-by-doubt" and setup.queued == 5
    report = pull(dataset_name, tmp_path / "c.json", reviewed="reviewed_pets2")
    assert report.groups == 5 and report.totals()["untouched"] == 20
    coco = json.loads((tmp_path / "c.json").read_text())
    assert len(coco["images"]) == 5 and {g["template"] for g in coco["groups"]} == {"pets2"}


def test_a_grouped_dataset_through_the_ray_engine_gives_the_local_engines_lines(fo_db, tmp_path, dataset_name,
                                                                                 ray_cluster):
    from autolabel.ray_engine import RayEngine

    user_dataset(fo_db, dataset_name, tmp_path / "photos")
    cfg = RunConfig(from_fiftyone=dataset_name, out=tmp_path / "local", prompt=templates(tmp_path)[:1],
                    backend="doubles:BoxBackend", quiet=True, batch_size=2)
    assert Engine(cfg.model_copy(update={"limit": 2})).run().done == 2
    # resume across engines: Ray labels the 3 groups the local engine left
    summary = RayEngine(cfg.model_copy(update={"engine": "ray"})).run()
    assert summary.exit_code == 0 and summary.already_done == 2 and summary.done == 3
    lines = {line.group_id: line for line in read_predictions([tmp_path / "local"])}
    ds = fo_db.load_dataset(dataset_name)
    by_group: dict[str, dict] = {}
    for group_id, sample_id, slice_name in zip(*all_samples(ds).values(["group.id", "id", "group.name"])):
        by_group.setdefault(group_id, {})[slice_name] = sample_id
    assert {g: [im.sample_id for im in line.images] for g, line in lines.items()} == \
        {g: [s["left"], s["right"]] for g, s in by_group.items()}
    assert push([tmp_path / "local"], dataset_name).samples_updated == 10
