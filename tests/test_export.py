"""Sharing a run the Hugging Face way (:mod:`hf_sparse_attack.evaluation.harness.sharing`): the adversarial examples
as a ``datasets`` dataset that the evaluation scripts read back, the results as a model card's ``model-index``, and
the Hub flags checked before any attack."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from script_runs import records, run_main

from hf_sparse_attack.evaluation import eval_classification, eval_detection, eval_segmentation
from hf_sparse_attack.evaluation.command.demo import write_dataset
from hf_sparse_attack.evaluation.embedded import model_path
from hf_sparse_attack.evaluation.harness.export import EXPORTS
from hf_sparse_attack.evaluation.harness.model_card import eval_results, model_card
from hf_sparse_attack.evaluation.testdata.shapes import TEST_SEED, shapes_batch
from hf_sparse_attack.tasks import load_task

torch.set_num_threads(1)
SCRIPTS = {"classification": eval_classification, "detection": eval_detection, "segmentation": eval_segmentation}
MODELS = {"classification": "classifier", "detection": "detector", "segmentation": "segmenter"}


def run(task, data, out, *flags, model=None):
    """Run the task's script in this process; the parsed ``all_results.json`` (``None`` if not written)."""
    argv = ["--model_name_or_path", model or model_path(MODELS[task]), "--dataset_name", data,
            "--per_device_eval_batch_size", "2", "--num_pictures", "2", *flags]
    return run_main(SCRIPTS[task].main, argv, out)


def pixels(image):
    return np.array(image.convert("RGB"))


def check_images(split, out, k):
    """Every row's adversarial image is the run's PNG byte for byte, its clean image the model-frame pixels, its
    mask the pixels that differ (as many as the record's L0)."""
    by_id = {r["id"]: r for r in records(out) if r.get("k") == k}
    assert sorted(split["id"]) == sorted(by_id) and set(split["k"]) == {k}
    raw = split.cast_column("adversarial", datasets.Image(decode=False))
    for row, stored in zip(split, raw["adversarial"]):
        png = Path(out) / "adversarial" / f"k{k}" / f"{row['id']}.png"
        assert stored["bytes"] == png.read_bytes()
        clean, adversarial = pixels(row["image"]), pixels(row["adversarial"])
        if row["id"] < 2:  # --num_pictures 2: the run saved its clean model-frame image
            assert np.array_equal(clean, pixels(Image.open(Path(out) / "examples" / f"{row['id']}.png")))
        mask = np.array(row["mask"])
        assert row["mask"].mode == "1" and np.array_equal(mask, (clean != adversarial).any(-1))
        assert int(mask.sum()) == row["l0"] == by_id[row["id"]]["l0"]
        assert row["success"] == by_id[row["id"]]["success"]


def test_classification_export_feeds_back_into_eval(tmp_path):
    write_dataset("classification", 5, tmp_path / "data")
    out, export = tmp_path / "out", tmp_path / "export"
    flags = ["--k", "2", "6", "--steps", "4"]
    # a run cut short with --save_adversarial, resumed with --export_dataset (a flag that changes no result)
    assert run("classification", tmp_path / "data", out, *flags, "--save_adversarial", "--stop_after_batches", "1") \
        is None
    results = run("classification", tmp_path / "data", out, *flags, "--export_dataset", export)
    assert results["resumed_batches"] == 1
    exported = datasets.load_from_disk(str(export))
    assert sorted(exported) == ["k2", "k6"]
    columns = ["id", "k", "image", "adversarial", "mask", "success", "l0", "label", "clean_prediction",
               "adversarial_prediction"]
    names = ["circle", "square", "triangle"]
    for entry in results["results"]:
        k, split = entry["k"], exported[f"k{entry['k']}"]
        assert split.column_names == columns and split.num_rows == 5
        assert split.features["label"].names == split.features["adversarial_prediction"].names == names
        check_images(split, out, k)
        by_id = {r["id"]: r for r in records(out) if r["k"] == k}
        for row in split:
            assert [row[key] for key in ("label", "clean_prediction", "adversarial_prediction")] == [
                by_id[row["id"]][key] for key in ("label", "clean_prediction", "adversarial_prediction")]
        # the exported dataset is an evaluation dataset: its adversarial images score the run's robust accuracy
        again = run("classification", export, tmp_path / f"again{k}", "--dataset_split", f"k{k}",
                    "--image_column_name", "adversarial", "--k", "1", "--steps", "1")
        assert again["results"][0]["metrics"]["clean_accuracy"] == entry["metrics"]["robust_accuracy"]
        predictions = [r["clean_prediction"] for r in records(tmp_path / f"again{k}")]
        assert predictions == [by_id[i]["adversarial_prediction"] for i in sorted(by_id)]
    card = ModelCard.load(out / "model_card.md")
    check_card(card, results)


def check_card(card, results):
    """The card's ``model-index`` holds the clean value once and each attack's adversarial value, as in
    ``all_results.json``, with the attack's config (its ``None`` values left out) and the task options as args."""
    task = {"classification": ("image-classification", ["accuracy"]),
            "detection": ("object-detection", ["mAP", "mAP@50"]),
            "segmentation": ("image-segmentation", ["mean_iou"])}[results["task"]]
    keys = {"accuracy": ("clean_accuracy", "robust_accuracy"), "mAP": ("map_clean", "map_adversarial"),
            "mAP@50": ("map50_clean", "map50_adversarial"), "mean_iou": ("miou_clean", "miou_adversarial")}
    found = card.data.eval_results
    assert card.data.model_name == results["model_name_or_path"]
    assert {(r.task_type, r.dataset_name, r.dataset_split) for r in found} == {
        (task[0], results["dataset"]["source"], results["dataset"]["split"])}
    expected = []
    for metric in task[1]:
        clean, adversarial = keys[metric]
        expected.append((metric, results["results"][0]["metrics"][clean], None))
        for entry in results["results"]:
            args = {key: value for key, value in entry["attack"].items() if value is not None}
            expected.append((metric, entry["metrics"][adversarial], {**args, "task_options": results["task_options"]}))
    assert [(r.metric_type, r.metric_value, r.metric_args) for r in found] == expected
    assert [(r.metric_type, r.metric_value) for r in eval_results(results)] == [e[:2] for e in expected]


def shapes_dataset(path, samples, size):
    """Generated detection shapes resized to ``size`` (height, width), boxes pixel xyxy (``--bbox_format xyxy``)."""
    images, annotations = shapes_batch(samples, seed=TEST_SEED)
    scale = np.array([size[1], size[0]] * 2) / 64
    images = [Image.fromarray(image).resize(size[::-1], Image.BILINEAR) for image in images]
    objects = [{"bbox": (a["boxes"] * scale).tolist(), "category": a["labels"].tolist()} for a in annotations]
    features = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
        "category": datasets.List(datasets.Value("int64"))}})
    split = datasets.Dataset.from_dict({"image": images, "objects": objects}, features=features)
    datasets.DatasetDict({"validation": split}).save_to_disk(str(path))
    return images, annotations, scale


def test_detection_export_is_in_the_model_frame_and_feeds_back_into_eval(tmp_path):
    images, annotations, scale = shapes_dataset(tmp_path / "data", 4, (80, 96))
    out, export = tmp_path / "out", tmp_path / "export"
    results = run("detection", tmp_path / "data", out, "--bbox_format", "xyxy", "--k", "20", "--steps", "3",
                  "--export_dataset", export)
    split = datasets.load_from_disk(str(export))["k20"]
    assert split.features["objects"]["bbox"] == datasets.List(datasets.List(datasets.Value("float64"), length=4))
    check_images(split, out, 20)
    objective = load_task(model_path("detector"))
    by_id = {r["id"]: r for r in records(out)}
    for row in split:
        original = annotations[row["id"]]
        x, targets = objective.prepare([images[row["id"]]], [{"boxes": original["boxes"] * scale,
                                                             "labels": original["labels"]}])
        height, width = (int(v) for v in targets[0]["size"])
        assert row["image"].size == (width, height) != (96, 80)  # the model frame, not the original image
        assert np.array_equal(pixels(row["image"]), x[0].mul(255).round().byte().permute(1, 2, 0).numpy())
        boxes = targets[0]["boxes"].numpy()  # the processor's boxes in the model frame, xyxy
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        np.testing.assert_allclose(row["objects"]["bbox"], xywh, rtol=1e-5, atol=1e-4)
        assert row["objects"]["category"] == original["labels"].tolist()
        assert row["objects"]["iscrowd"] == [0] * len(boxes)
        found = by_id[row["id"]]["adversarial_prediction"]
        frame = np.array([width / 96, height / 80] * 2)
        np.testing.assert_allclose(np.array(row["adversarial_prediction"]["bbox"]).reshape(-1, 4),
                                   np.array(found["boxes"]).reshape(-1, 4) * frame, rtol=1e-6)
        assert row["adversarial_prediction"]["score"] == found["scores"]
    check_card(ModelCard.load(out / "model_card.md"), results)
    # 53x64 is a fixed point of the detector's processor, and IoU does not change when both axes are scaled: the
    # adversarial images, evaluated in the model frame, score the run's adversarial mAP
    again = run("detection", export, tmp_path / "again", "--dataset_split", "k20", "--image_column_name",
                "adversarial", "--k", "1", "--steps", "1")
    metrics, replayed = results["results"][0]["metrics"], again["results"][0]["metrics"]
    for key in ("map", "map50", "map75"):
        assert replayed[f"{key}_clean"] == pytest.approx(metrics[f"{key}_adversarial"], abs=1e-9)


@pytest.mark.parametrize("reduce_labels", [False, True])
def test_segmentation_export_reproduces_the_adversarial_miou(tmp_path, reduce_labels):
    model = tmp_path / "segmenter"
    shutil.copytree(model_path("segmenter"), model)
    config = json.loads((model / "preprocessor_config.json").read_text())
    (model / "preprocessor_config.json").write_text(json.dumps({**config, "do_reduce_labels": reduce_labels}))
    write_dataset("segmentation", 3, tmp_path / "data")
    out, export = tmp_path / "out", tmp_path / "export"
    results = run("segmentation", tmp_path / "data", out, "--k", "30", "--steps", "3", "--export_dataset", export,
                  model=model)
    split = datasets.load_from_disk(str(export))["k30"]
    check_images(split, out, 30)
    truth = datasets.load_from_disk(str(tmp_path / "data"))["validation"]["label"]
    objective = load_task(model)
    for row in split:
        label = np.array(row["label"])  # the dataset's classes (64x64 images: the model frame is the original)
        assert row["label"].mode == "L" and np.array_equal(label, np.array(truth[row["id"]]))
        adversarial = torch.from_numpy(pixels(row["adversarial"])).permute(2, 0, 1)[None].float() / 255
        assert np.array_equal(np.array(row["adversarial_prediction"]), objective.predict(adversarial)[0].numpy())
    again = run("segmentation", export, tmp_path / "again", "--dataset_split", "k30", "--image_column_name",
                "adversarial", "--k", "1", "--steps", "1", model=model)
    metrics, replayed = results["results"][0]["metrics"], again["results"][0]["metrics"]
    assert replayed["miou_clean"] == pytest.approx(metrics["miou_adversarial"], abs=1e-12)
    assert replayed["pixel_accuracy_clean"] == pytest.approx(metrics["pixel_accuracy_adversarial"], abs=1e-12)
    check_card(ModelCard.load(out / "model_card.md"), results)


@pytest.fixture
def online(monkeypatch):
    """The Hub as seen by the checks: online, a token, and ``whoami`` / ``model_info`` answering."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self: {"name": "me"})
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id: {"id": repo_id})
    return monkeypatch


def usage_error(tmp_path, capsys, *flags):
    """The one-line error of a classification run with ``flags``, which must stop before the output dir exists."""
    if not (tmp_path / "data").exists():
        write_dataset("classification", 2, tmp_path / "data")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run("classification", tmp_path / "data", tmp_path / "out", "--k", "1", "--steps", "1", *flags)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    return err


def test_hub_flags_fail_before_the_attack(tmp_path, capsys, online):
    assert "pass --export_dataset DIR too" in usage_error(tmp_path, capsys, "--push_to_hub", "me/adversarial")
    push = ["--export_dataset", tmp_path / "export", "--push_to_hub"]
    assert "'bad repo' is not a Hub repository id" in usage_error(tmp_path, capsys, *push, "bad repo")
    online.setattr(huggingface_hub, "get_token", lambda: None)
    assert "no Hugging Face token" in usage_error(tmp_path, capsys, *push, "me/adversarial")
    online.setattr(huggingface_hub, "get_token", lambda: "hf_test")

    def unreachable(self):
        raise ConnectionError("Name or service not known")

    online.setattr(huggingface_hub.HfApi, "whoami", unreachable)
    err = usage_error(tmp_path, capsys, "--push_model_card", "me/model")
    assert "--push_model_card me/model: cannot use the Hugging Face Hub (ConnectionError" in err
    online.setenv("HF_HUB_OFFLINE", "1")
    err = usage_error(tmp_path, capsys, *push, "me/adversarial")
    assert "--push_to_hub me/adversarial: the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE)" in err


def test_export_dir_is_checked_before_the_attack(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    err = usage_error(tmp_path, capsys, "--export_dataset", tmp_path / "notes", "--overwrite")
    assert "is not empty and holds no exported dataset" in err and (tmp_path / "notes" / "todo.txt").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "dataset_dict.json").write_text("{}")
    assert "already holds a dataset; pass --overwrite" in usage_error(tmp_path, capsys, "--export_dataset",
                                                                       tmp_path / "old")
    err = usage_error(tmp_path, capsys, "--export_dataset", tmp_path / "out" / "adversarial")
    assert "holds the run's output dir or its outputs" in err


def test_pushes_go_to_the_hub_when_asked(tmp_path, online):
    pushed = {}
    online.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo_id: pushed.update(dataset=(repo_id, self)))

    def metadata_update(repo_id, metadata, **options):
        pushed["card"] = repo_id, metadata, options
        return "https://huggingface.co/me/model/discussions/1"

    online.setattr(huggingface_hub, "metadata_update", metadata_update)
    write_dataset("classification", 2, tmp_path / "data")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "dataset_dict.json").write_text("{}")  # an earlier export, replaced with --overwrite
    results = run("classification", tmp_path / "data", tmp_path / "out", "--k", "3", "--steps", "2", "--overwrite",
                  "--export_dataset", tmp_path / "export", "--push_to_hub", "me/adversarial",
                  "--push_model_card", "me/model")
    repo, dataset = pushed["dataset"]
    assert repo == "me/adversarial" and sorted(dataset) == ["k3"] and dataset["k3"].num_rows == 2
    assert sorted(datasets.load_from_disk(str(tmp_path / "export"))) == ["k3"]
    repo, metadata, options = pushed["card"]
    assert (repo, options["create_pr"]) == ("me/model", True)
    (index,) = metadata["model-index"]
    assert index["name"] == "me/model"
    values = [m["value"] for m in index["results"][0]["metrics"]]
    assert values == [results["results"][0]["metrics"][key] for key in ("clean_accuracy", "robust_accuracy")]


def test_class_ids_outside_the_model_are_kept_as_integers():
    config = SimpleNamespace(num_labels=2, id2label={0: "cat", 1: "dog"})
    objective = SimpleNamespace(model=SimpleNamespace(config=config))
    features = EXPORTS["classification"].features(objective, {"label": [0, 1]})
    assert features["label"] == features["clean_prediction"] == datasets.ClassLabel(names=["cat", "dog"])
    features = EXPORTS["classification"].features(objective, {"label": [0, 5]})  # no ClassLabel can hold 5
    assert features["label"] == datasets.Value("int64")


def test_model_card_leaves_out_undefined_values():
    results = {"task": "detection", "model_name_or_path": "m", "task_options": {},
               "dataset": {"source": "coco", "annotation_file": "ann.json", "image_dir": "images"},
               "samples": {"evaluated": 1, "skipped": 0},
               "results": [{"k": 5, "attack": {"attack": "SparseRS", "k": 5},
                            "metrics": {"map_clean": None, "map_adversarial": None, "map50_clean": 0.5,
                                        "map50_adversarial": float("nan")}}]}
    found = eval_results(results)
    assert [(r.dataset_type, r.dataset_name, r.metric_type, r.metric_value) for r in found] == [
        ("coco", "ann.json", "mAP@50", 0.5)]
    assert "| SparseRS | 5 | n/a | n/a | 0.5000 | n/a |" in str(model_card(results))
    with pytest.raises(ValueError, match="unknown task 'ocr'"):
        eval_results({**results, "task": "ocr"})
