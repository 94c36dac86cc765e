"""Issue 21 (framework): predictions never overwrite (and merge per DDP rank), an undefined AUROC
is NaN/null/"undefined" (never 0), a full disk keeps the previous checkpoint, orphan temporary
checkpoints are found and removed, and a malformed stages.json is one clear line."""
import csv
import errno
import json
import logging
import math
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from framework.callbacks import PredictionWriter
from framework.callbacks.continual_eval import METRICS_JSON, ContinualEvaluation
from framework.callbacks.continual_report import format_report, restore_undefined
from framework.callbacks.prediction_writer import claim_output_folder
from framework.core.checkpoints import atomic_save, load_checkpoint, remove_orphan_temporaries
from framework.metrics.continual import format_matrix, summarize
from framework.metrics.evaluation import DefinedAUROC, defined_auroc, evaluate_head
from framework.model import MedCLModel
from framework.core.specs import TaskSpec


# ---------------------------------------------------------------------------- A. predictions
class Module:
    """The part of a paradigm the writer uses: ``model_for(task).head(task)``."""

    def __init__(self, model):
        self.model = model

    def model_for(self, task):
        return self.model


class StubStrategy:
    """DDP collectives as the writer sees them, for ranks whose hooks the test runs one after the
    other: the k-th ``broadcast`` of any rank returns what rank 0 passed to its k-th one (so a rank
    that skips a collective rank 0 makes gets the wrong value, as under real DDP it would hang)."""

    def __init__(self, shared, rank):
        self.shared, self.rank, self.calls = shared, rank, []

    def broadcast(self, obj, src=0):
        k = len(self.calls)
        self.calls.append("broadcast")
        if self.rank == src:
            self.shared.setdefault("sent", {})[k] = obj
            return obj
        return self.shared["sent"][k]

    def barrier(self, name=None):
        self.calls.append(f"barrier {name}")


class FakeTrainer:
    """What the writer reads of a Trainer without a logger; ``log_dir`` broadcasts from rank 0, as Lightning's does."""

    def __init__(self, root, rank, world, shared):
        self.default_root_dir, self.global_rank, self.world_size = str(root), rank, world
        self.is_global_zero = rank == 0
        self.strategy = StubStrategy(shared, rank)

    @property
    def log_dir(self):
        return self.strategy.broadcast(self.default_root_dir)


def fake_trainer(root, rank=0, world=1, shared=None):
    return FakeTrainer(root, rank, world, shared if shared is not None else {})


@pytest.fixture(scope="module")
def seg_model():
    model = MedCLModel({"model_name": "medcl-vit-tiny"}).eval()
    model.add_task(TaskSpec(name="seg", kind="segmentation", label_names=["polyp"]))
    model.add_task(TaskSpec(name="blood", kind="classification", class_names=["a", "b", "c"]))
    return model


def predicted(model, task, images, **extra):
    with torch.no_grad():
        return {task: {**model.head(task).predict(model(images, task)), **extra}}


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run_predict(root, model, batches, output_dir=None):
    """One single-process predict through the writer's hooks; ``batches`` = [(prediction, batch_indices)]."""
    writer = PredictionWriter(output_dir=output_dir)
    trainer = fake_trainer(root)
    writer.on_predict_start(trainer, None)
    for i, (prediction, indices) in enumerate(batches):
        writer.write_on_batch_end(trainer, Module(model), prediction, indices, None, i, 0)
    writer.on_predict_end(trainer, None)
    return writer.root


def test_a_second_predict_writes_a_new_folder_and_keeps_the_first(tmp_path, seg_model, caplog):
    torch.manual_seed(0)
    first = run_predict(tmp_path, seg_model, [(predicted(seg_model, "blood", torch.rand(3, 3, 28, 28)), None)])
    before = (first / "blood" / "predictions.csv").read_bytes()
    with caplog.at_level(logging.WARNING, logger="framework.callbacks.prediction_writer"):
        second = run_predict(tmp_path, seg_model, [(predicted(seg_model, "blood", torch.rand(5, 3, 28, 28)), None)])
    assert first == tmp_path / "predictions" and second == tmp_path / "predictions-1"
    assert (first / "blood" / "predictions.csv").read_bytes() == before  # the first predict's output is untouched
    assert len(read_rows(first / "blood" / "predictions.csv")) == 3 and len(read_rows(second / "blood" / "predictions.csv")) == 5
    assert f"{first} already holds the output of an earlier predict; writing to {second}" in caplog.text
    third = run_predict(tmp_path, seg_model, [(predicted(seg_model, "blood", torch.rand(1, 3, 28, 28)), None)])
    assert third == tmp_path / "predictions-2"


def test_concurrent_predicts_claim_distinct_folders(tmp_path):
    claimed, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        claimed.append(claim_output_folder(tmp_path / "predictions"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == 8 and all(path.is_dir() for path in claimed)
    assert {p.name for p in claimed} == {"predictions", *(f"predictions-{i}" for i in range(1, 8))}


def test_two_samples_with_the_same_id_are_refused_before_a_mask_is_overwritten(tmp_path, seg_model):
    images = torch.rand(2, 3, 28, 28)
    prediction = predicted(seg_model, "seg", images, id=["case1", "case1"])  # case1.png and case1.jpg
    writer = PredictionWriter()
    trainer = fake_trainer(tmp_path)
    writer.on_predict_start(trainer, None)
    with pytest.raises(ValueError, match=r"task 'seg': samples 0 and 1 have the same id 'case1', so their outputs would overwrite each other"):
        writer.write_on_batch_end(trainer, Module(seg_model), prediction, None, None, 0, 0)
    assert not (writer.root / "seg" / "masks" / "case1.png").exists()  # refused before anything was written


def test_ddp_ranks_write_their_own_part_and_rank_zero_merges_it_sorted_by_index(tmp_path, seg_model):
    from PIL import Image

    shared = {}
    ranks = [(PredictionWriter(), fake_trainer(tmp_path, rank=k, world=2, shared=shared)) for k in (0, 1)]
    for writer, trainer in ranks:
        writer.on_predict_start(trainer, None)
    assert ranks[0][0].root == ranks[1][0].root == tmp_path / "predictions"  # rank 0's folder, broadcast
    images = torch.rand(5, 3, 28, 28)
    ids = [f"case{i}" for i in range(5)]
    share = {0: [0, 2, 4], 1: [1, 3]}  # Lightning's UnrepeatedDistributedSampler: rank r takes r, r + 2, ...
    for (writer, trainer), k in zip(ranks, (0, 1)):
        index = share[k]
        prediction = predicted(seg_model, "seg", images[index], id=[ids[i] for i in index])
        writer.write_on_batch_end(trainer, Module(seg_model), prediction, index, None, 0, 0)
        assert (writer.root / "seg" / f"predictions.rank{k}.csv").is_file()  # its own part, not a shared file
    ranks[1][0].on_predict_end(ranks[1][1], None)
    ranks[0][0].on_predict_end(ranks[0][1], None)  # rank 0 merges after the barrier
    assert ranks[0][1].strategy.calls == ranks[1][1].strategy.calls  # the same collectives on every rank, in order
    assert ranks[0][1].strategy.calls[-1] == "barrier PredictionWriter.merge"
    out = tmp_path / "predictions" / "seg"
    rows = read_rows(out / "predictions.csv")
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3, 4] and [r["id"] for r in rows] == ids
    assert sorted(p.name for p in out.glob("*.csv")) == ["predictions.csv"]  # the parts are removed
    expected = seg_model(images, "seg").argmax(1).numpy().astype(np.uint8) * 255
    for i, name in enumerate(ids):
        assert np.array_equal(np.asarray(Image.open(out / "masks" / f"{name}.png")), expected[i])


def test_a_mask_file_is_never_overwritten_across_ranks(tmp_path, seg_model):
    shared = {}
    ranks = [(PredictionWriter(), fake_trainer(tmp_path, rank=k, world=2, shared=shared)) for k in (0, 1)]
    for writer, trainer in ranks:
        writer.on_predict_start(trainer, None)
    images = torch.rand(2, 3, 28, 28)
    writer, trainer = ranks[0]
    writer.write_on_batch_end(trainer, Module(seg_model), predicted(seg_model, "seg", images[:1], id=["case1"]), [0], None, 0, 0)
    mask = writer.root / "seg" / "masks" / "case1.png"
    before = mask.read_bytes()
    writer, trainer = ranks[1]  # a rank whose sample has the same id (the writer does not trust the data to be unique)
    with pytest.raises(FileExistsError, match=rf"PredictionWriter: {mask} already exists; predictions never overwrite a file \(do two inputs have the id 'case1'\?\)"):
        writer.write_on_batch_end(trainer, Module(seg_model), predicted(seg_model, "seg", images[1:], id=["case1"]), [1], None, 0, 0)
    assert mask.read_bytes() == before


# ---------------------------------------------------------------------------- B. undefined AUROC
def batches(task, images, targets, size=4):
    return [{task: {"image": images[i : i + size], "target": targets[i : i + size]}} for i in range(0, len(images), size)]


def test_auroc_of_a_test_split_with_one_class_is_undefined_not_zero(seg_model):
    torch.manual_seed(0)
    images = torch.rand(8, 3, 28, 28)
    values = evaluate_head(seg_model, seg_model.head("blood"), batches("blood", images, torch.zeros(8, dtype=torch.long)), "blood", torch.device("cpu"))
    assert math.isnan(values["auroc"]) and 0.0 <= values["acc"] <= 1.0
    # a class absent from the test set is skipped by the macro average, never counted as 0
    targets = torch.tensor([0, 1] * 4)
    values = evaluate_head(seg_model, seg_model.head("blood"), batches("blood", images, targets), "blood", torch.device("cpu"))
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        probabilities = seg_model(images, "blood").softmax(1).numpy()
    expected = np.mean([roc_auc_score(targets.numpy() == c, probabilities[:, c]) for c in (0, 1)])
    assert values["auroc"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("multilabel", [False, True])
def test_defined_auroc_equals_torchmetrics_when_every_class_is_defined(multilabel):
    from torchmetrics.classification import MulticlassAUROC, MultilabelAUROC

    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(40, 4, generator=generator)
    if multilabel:
        target = (torch.rand(40, 4, generator=generator) > 0.5).long()
        reference = MultilabelAUROC(num_labels=4)(scores, target)
    else:
        scores = scores.softmax(1)
        target = torch.arange(40) % 4
        reference = MulticlassAUROC(num_classes=4)(scores, target)
    metric = DefinedAUROC(4, multilabel=multilabel)
    metric.update(scores[:25], target[:25])
    metric.update(scores[25:], target[25:])
    assert float(metric.compute()) == pytest.approx(float(reference), abs=1e-6)
    assert defined_auroc(scores, target, multilabel) == (pytest.approx(float(reference), abs=1e-6), 4)


def _result_with_an_undefined_auroc():
    cb = ContinualEvaluation()
    cb.rows = {
        0: {"blood": {"acc": 0.75, "balanced_acc": 0.5, "auroc": float("nan"), "score": 0.75}},
        1: {"blood": {"acc": 0.5, "balanced_acc": 0.5, "auroc": float("nan"), "score": 0.5},
            "organ": {"acc": 0.9, "balanced_acc": 0.8, "auroc": 0.95, "score": 0.9}},
    }
    cb.experience_tasks = {0: ["blood"], 1: ["organ"]}
    specs = [TaskSpec(name="blood", kind="classification", class_names=["a", "b"]), TaskSpec(name="organ", kind="classification", class_names=["x", "y"])]
    return cb, cb.build_result(["blood", "organ"], SimpleNamespace(), specs)


def test_an_undefined_auroc_is_null_in_the_json_and_printed_as_undefined(tmp_path):
    cb, result = _result_with_an_undefined_auroc()
    cb._write(tmp_path, result)

    def refuse(constant):
        raise AssertionError(f"continual_metrics.json holds {constant}, which is not JSON")

    saved = json.loads((tmp_path / METRICS_JSON).read_text(), parse_constant=refuse)
    assert saved["details"]["1"]["blood"]["auroc"] is None and saved["secondary"]["auroc"] == [[None, None], [None, 0.95]]
    assert "/details/1/blood/auroc" in saved["undefined"] and "/secondary/auroc/1/0" in saved["undefined"]
    assert "/secondary/auroc/0/1" not in saved["undefined"]  # organ not evaluated after exp 0: null, but not undefined
    assert "not a value that was never evaluated" in saved["undefined_note"]
    report = format_report(result)
    (blood,) = [line for line in report.splitlines() if line.startswith("blood ")]
    assert "undefined" in blood and "0.0000" not in blood
    assert "undefined: the metric has no value on this test data" in report
    assert format_report(saved) == report  # re-run on the saved file: the same report
    assert math.isnan(restore_undefined(saved)["secondary"]["auroc"][1][0])
    assert (tmp_path / "continual_metrics.csv").read_text().splitlines()[1].count(",,") >= 1  # an empty CSV cell, not 0


def test_averages_skip_undefined_scores_and_say_so():
    nan = float("nan")
    summary = summarize([[0.8, None], [nan, 0.6]], ["seg", "os"])
    assert summary["average_accuracy"] == pytest.approx(0.6) and summary["average_accuracy_undefined"] == 1
    assert summary["average_accuracy_per_experience"] == [pytest.approx(0.8), pytest.approx(0.6)]
    text = format_matrix([[0.8, None], [nan, 0.6]], ["seg", "os"])
    assert text.splitlines()[2].split("|")[2].strip() == "-" and text.splitlines()[3].split("|")[1].strip() == "undefined"
    _, result = _result_with_an_undefined_auroc()
    result["accuracy_matrix"][1][0] = nan  # an undefined score of a learned task
    result.update(summarize(result["accuracy_matrix"], result["tasks"], result["experience_tasks"]))
    result["average_accuracy"] = result["average_accuracy_per_experience"][-1]
    line = next(line for line in format_report(result).splitlines() if line.startswith("average accuracy"))
    assert line.startswith("average accuracy: 0.9000 (skipping 1 undefined score(s))")


# ---------------------------------------------------------------------------- C. disk full
@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2560 vs 2458"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["torch-unexpected-pos", "enospc"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, error):
    target = tmp_path / "checkpoints" / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(3)}}, target)

    def write_then_fail(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 the part that fitted")
        raise error

    monkeypatch.setattr(torch, "save", write_then_fail)
    with pytest.raises(OSError, match=rf"^disk full while writing {target}; the previous checkpoint is kept \(.* MB free of .* GB\)") as info:
        atomic_save({"state_dict": {"w": torch.zeros(3)}}, target)
    assert info.value.errno == errno.ENOSPC and info.value.__cause__ is error
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(target)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_a_full_disk_before_any_checkpoint_says_none_was_written(tmp_path, monkeypatch):
    def fail(obj, fh, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", fail)
    target = tmp_path / "last.ckpt"
    with pytest.raises(OSError, match=rf"disk full while writing {target}; no checkpoint was written"):
        atomic_save({"w": torch.ones(1)}, target)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- D. orphan temporaries
def test_remove_orphan_temporaries_removes_every_checkpoints_temporaries_and_says_how_much(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    orphans = [folder / ".last.ckpt.k3j2x9.tmp", folder / ".experience=0-epoch=0.ckpt.a1b2c3.tmp"]
    for path in orphans:
        path.write_bytes(b"\0" * 300_000)
    kept = [folder / "last.ckpt", folder / ".notes.tmp", folder / "x.ckpt.tmp", tmp_path / ".last.ckpt.zzz.tmp"]
    for path in kept:
        path.write_bytes(b"keep")
    with caplog.at_level(logging.WARNING, logger="framework.core.checkpoints"):
        removed = remove_orphan_temporaries(folder)
    assert sorted(removed) == sorted(orphans) and not any(p.exists() for p in orphans)
    assert all(p.exists() for p in kept)
    assert f"removed 2 orphan temporary checkpoint file(s) (0.6 MB) from {folder}" in caplog.text
    assert remove_orphan_temporaries(folder) == [] and remove_orphan_temporaries(tmp_path / "missing") == []
    fresh = folder / ".last.ckpt.fresh1.tmp"  # a writer of another process, still writing
    fresh.write_bytes(b"x")
    assert remove_orphan_temporaries(folder, min_age_s=3600) == [] and fresh.exists()


def _replay_checkpoint(path):
    images = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8)
    buffer = {"policy": "reservoir", "tasks": {"blood": {"image": images, "target": torch.zeros(6, dtype=torch.long)}}}
    torch.save({"medcl": {"tasks": []}, "state_dict": {"w": torch.ones(3)},
                "callbacks": {"ReplayCallback": {"world_size": 1, "policy": "reservoir", "ranks": [buffer]}}}, path)
    return path


def test_medcl_share_names_orphan_temporaries_and_removes_them_only_when_asked(tmp_path, caplog, capsys):
    from framework.sharing import main as share_main

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    src = _replay_checkpoint(folder / "last.ckpt")
    orphan = folder / ".last.ckpt.k3j2x9.tmp"
    orphan.write_bytes(src.read_bytes())  # a killed write: a whole checkpoint, exemplars included
    with caplog.at_level(logging.WARNING, logger="framework.sharing"):
        share_main([str(src), str(tmp_path / "shared.ckpt")])
    assert f"{folder} holds 1 orphan temporary checkpoint file(s)" in caplog.text and str(orphan) in caplog.text
    assert "replay exemplars (patient images)" in caplog.text and "--remove-orphans" in caplog.text
    assert orphan.exists()  # only named: medcl-share reads the input's folder
    assert len(capsys.readouterr().out.strip().splitlines()) == 1  # stdout keeps its one summary line
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        share_main([str(src), str(tmp_path / "shared2.ckpt"), "--remove-orphans"])
    assert not orphan.exists() and "removed 1 orphan temporary checkpoint file(s)" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


# ---------------------------------------------------------------------------- E. medcl-stages --table-only
def _valid_stages():
    result = {"tasks": ["blood"], "metrics": {"blood": "acc"}, "accuracy_matrix": [[0.9]], "experience_tasks": [["blood"]],
              "trainable_parameters": {"0": {"total": 1234}}}
    return {"table": {}, "runs": [{"stage": "01_blood", "alternative": False, "result": result}]}


def _stages_main(tmp_path, monkeypatch, capsys):
    from framework.stages import main as stages_main

    monkeypatch.delenv("MEDCL_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as info:
        stages_main(["--table-only", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    return err.splitlines()


@pytest.mark.parametrize("damage, message", [
    (lambda d: "{\"runs\": [", "expected the JSON results file written by medcl-stages, found text that is not JSON (Expecting value"),
    (lambda d: {"table": {}}, "field 'runs' expected a list of stage runs, found no such field (fields: ['table'])"),
    (lambda d: {"runs": {}}, "field 'runs' expected a non-empty list of stage runs, found an object {}"),
    (lambda d: d["runs"][0].pop("result") and d, "field 'runs[0].result' expected an object (a continual_metrics result), found no such field"),
    (lambda d: d["runs"][0]["result"].pop("accuracy_matrix") and d, "field 'runs[0].result.accuracy_matrix' expected a non-empty list of rows, found no such field"),
    (lambda d: d["runs"][0]["result"].update(accuracy_matrix=[["0.9"]]) or d, "field 'runs[0].result.accuracy_matrix[0][0]' expected a number or null, found a string \"0.9\""),
    (lambda d: d["runs"][0]["result"].update(tasks="blood") or d, "field 'runs[0].result.tasks' expected a list of task names, found a string \"blood\""),
    (lambda d: d["runs"][0]["result"].update(trainable_parameters={"0": 5}) or d, "field 'runs[0].result.trainable_parameters.0' expected an object with an integer 'total', found int 5"),
], ids=["not-json", "no-runs", "runs-object", "no-result", "no-matrix", "score-string", "tasks-string", "params-int"])
def test_a_malformed_stages_json_is_one_line_naming_the_field(tmp_path, monkeypatch, capsys, damage, message):
    damaged = damage(_valid_stages())
    (tmp_path / "stages.json").write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    lines = _stages_main(tmp_path, monkeypatch, capsys)
    assert lines[0].startswith(f"medcl-stages: error: ValueError: {tmp_path / 'stages.json'}: {message}"), lines
    assert lines[1:] == ["(set MEDCL_TRACEBACK=1 for the full traceback)"]


def test_a_valid_stages_json_renders_its_table(tmp_path, capsys):
    from framework.stages import main as stages_main

    (tmp_path / "stages.json").write_text(json.dumps(_valid_stages()))
    stages_main(["--table-only", "--output", str(tmp_path)])
    assert "| 01_blood | 0.900 *" in capsys.readouterr().out
    json.loads((tmp_path / "stages.json").read_text(), parse_constant=lambda c: pytest.fail(c))
