"""Bad data through the evaluation scripts: a dataset that cannot be used is one error line (exit code 2) and
nothing written; a bad sample is skipped, counted and reported with its reason in ``all_results.json``; a box
reaching outside its image is clipped (or dropped) for the attack's targets and the change reported, while mAP
scores the dataset's boxes as given (as COCOeval would) — never a silent wrong number.

The models are the embedded ones (loaded by path, as a Hub name would be); the datasets are written here.
"""

import json
from pathlib import Path

import datasets
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

from hf_sparse_attack.evaluation import eval_classification, eval_detection, eval_segmentation
from hf_sparse_attack.evaluation.embedded import model_path
from hf_sparse_attack.evaluation.testdata.shapes import classification_sample, shapes_sample

torch.set_num_threads(1)

SCRIPTS = {"classification": (eval_classification, "classifier"), "detection": (eval_detection, "detector"),
           "segmentation": (eval_segmentation, "segmenter")}
IMAGE = datasets.Image()
INT = datasets.Value("int64")
OBJECTS = {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
           "category": datasets.Sequence(INT)}


def evaluate(task, data, out, capsys, *flags):
    """Run the task's script in this process: ``(exit code, stderr lines, all_results.json or None)``."""
    script, model = SCRIPTS[task]
    argv = ["--model_name_or_path", str(model_path(model)), "--output_dir", str(out), "--k", "3", "--steps", "2",
            "--per_device_eval_batch_size", "4", "--num_pictures", "0", *map(str, flags)]
    if "--coco_annotation_file" not in flags:
        argv += ["--dataset_name", str(data)]
    capsys.readouterr()
    try:
        script.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    err = capsys.readouterr().err
    results = out / "all_results.json"
    return code, err.strip().splitlines(), json.loads(results.read_text()) if results.exists() else None


def save(path, columns, features):
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(columns, features=datasets.Features(features))}
                         ).save_to_disk(str(path))
    return path


def records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def evaluated_with_skips(task, data, out, capsys, *flags):
    """A run that must succeed: ``(all_results.json, {skipped sample id: reason})``."""
    code, err, results = evaluate(task, data, out, capsys, *flags)
    assert code == 0, err
    return results, {entry["id"]: entry["reason"] for entry in results["skipped_samples"]}


def assert_scored_within_budget(out, results, evaluated):
    """Every evaluated sample has one record within the budget; the metrics count exactly those samples."""
    scored = [r for r in records(out) if "skipped" not in r]
    assert sorted(r["id"] for r in scored) == sorted(evaluated)
    assert all(r["l0"] <= r["k"] == 3 for r in scored)
    assert results["samples"]["evaluated"] == len(evaluated)


# ----------------------------------------------------------------------------------- unusable datasets
def test_unusable_datasets_are_one_error_line_and_nothing_is_written(tmp_path, capsys):
    image = classification_sample(0, 0).image
    empty = save(tmp_path / "empty", {"image": [], "label": []}, {"image": IMAGE, "label": INT})
    labelled = save(tmp_path / "labelled", {"image": [image] * 2, "label": [0, 1]}, {"image": IMAGE, "label": INT})
    (tmp_path / "file.txt").write_text("not a dataset")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "images").mkdir()
    cases = [
        ("classification", empty, (), ["could not load", "empty"]),
        ("classification", labelled, ("--label_column_name", "class"), ["'class'", "--label_column_name"]),
        ("classification", labelled, ("--image_column_name", "img"), ["'img'", "--image_column_name"]),
        ("classification", labelled, ("--dataset_split", "test"), ["split 'test'", "validation"]),
        ("classification", tmp_path / "file.txt", (), ["not a directory"]),
        ("classification", tmp_path / "missing", (), ["not a directory"]),
        ("segmentation", labelled, ("--label_column_name", "mask"), ["'mask'"]),
        ("segmentation", labelled, (), ["column 'label' holds Value(int64)", "label-map images"]),
        ("detection", labelled, (), ["'objects'", "--objects_column_name"]),
        ("detection", None, ("--coco_annotation_file", tmp_path / "bad.json", "--coco_image_dir", tmp_path / "images"),
         ["could not read the COCO annotation file"]),
        ("detection", None, ("--coco_annotation_file", tmp_path / "none.json", "--coco_image_dir", tmp_path),
         ["does not exist"]),
        ("classification", labelled, ("--max_eval_samples", "0"), ["--max_eval_samples must be a positive integer"]),
    ]
    for i, (task, data, flags, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, err, results = evaluate(task, data, out, capsys, *flags)
        assert code == 2 and len(err) == 1, (task, flags, err)
        assert all(word in err[0] for word in words), (words, err)
        assert results is None and not (out / "records").exists()


def test_every_sample_bad_is_an_error_not_a_metric(tmp_path, capsys):
    data = save(tmp_path / "data", {"image": [classification_sample(0, i).image for i in range(3)], "label": [7] * 3},
                {"image": IMAGE, "label": INT})
    code, err, results = evaluate("classification", data, tmp_path / "out", capsys)
    assert code == 2 and results is None
    assert not any("error" in line or "Traceback" in line for line in err[:-1])  # progress bars before
    assert err[-1].endswith("error: all 3 samples were skipped (first reason: labels must be class ids in [0, 3), "
                            "got [7])")


# -------------------------------------------------------------------------------------------- bad samples
def test_classification_bad_samples_are_skipped_and_reported(tmp_path, capsys):
    good = [classification_sample(0, i) for i in range(4)]
    grey = Image.fromarray(good[3].image).convert("L")  # converted to RGB, not skipped
    columns = {
        "image": [good[0].image, good[1].image, {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None},
                  good[2].image, good[0].image, grey],
        "label": [int(good[0].labels[0]), int(good[1].labels[0]), 0, 3, -1, int(good[3].labels[0])],
    }
    data = save(tmp_path / "data", columns, {"image": IMAGE, "label": INT})
    results, reasons = evaluated_with_skips("classification", data, tmp_path / "out", capsys)
    assert sorted(reasons) == [2, 3, 4]
    assert reasons[2] == "row 2 could not be read: OSError: Truncated File Read"
    assert reasons[3] == "labels must be class ids in [0, 3), got [3]"
    assert reasons[4] == "label -1 (unlabelled)"
    assert results["samples"] == {"total": 6, "evaluated": 3, "skipped": 3, "annotation_changed": 0}
    assert_scored_within_budget(tmp_path / "out", results, [0, 1, 5])
    (result,) = results["results"]
    assert result["metrics"]["samples"] == 3


def test_segmentation_bad_label_maps_are_skipped_and_reported(tmp_path, capsys):
    scenes = [shapes_sample(0, i) for i in range(3)]
    outside = scenes[1].label_map.copy()
    outside[:4, :4] = 9  # neither a class (4 labels) nor the ignore index 255
    unlabelled = scenes[2].label_map.copy()
    unlabelled[:8] = 255  # ignored pixels: fine
    columns = {
        "image": [scenes[0].image, scenes[1].image, scenes[2].image, scenes[0].image, scenes[0].image],
        "label": [Image.fromarray(scenes[0].label_map, mode="L"), Image.fromarray(outside, mode="L"),
                  Image.fromarray(unlabelled, mode="L"), Image.fromarray(scenes[0].label_map[:32], mode="L"),
                  Image.fromarray(scenes[0].image)],  # an RGB image is not a label map
    }
    data = save(tmp_path / "data", columns, {"image": IMAGE, "label": IMAGE})
    results, reasons = evaluated_with_skips("segmentation", data, tmp_path / "out", capsys)
    assert sorted(reasons) == [1, 3, 4]
    assert reasons[1] == "the label map holds [9], neither class ids in [0, 4) nor 255"
    assert "has size (32, 64) but its image has size (64, 64)" in reasons[3]
    assert "single-channel" in reasons[4] and "mode RGB" in reasons[4]
    assert_scored_within_budget(tmp_path / "out", results, [0, 2])


def test_detection_boxes_are_fitted_for_the_attack_scored_as_given_and_bad_samples_skipped(tmp_path, capsys):
    scenes = [shapes_sample(0, i) for i in range(8)]
    inside = [[10.0, 12.0, 20.0, 16.0]]
    rows = [
        (inside, [0]),                                          # 0: fine
        ([[50.0, -6.0, 30.0, 20.0]], [1]),                      # 1: reaches out right and top: clipped
        ([[70.0, 10.0, 8.0, 8.0], *inside], [2, 0]),            # 2: first box wholly outside: dropped
        ([[5.0, 5.0, 0.0, 9.0], *inside], [0, 1]),              # 3: zero width: dropped
        ([[5.0, 5.0, -3.0, 9.0]], [0]),                         # 4: negative width: sample skipped
        ([[5.0, float("nan"), 3.0, 9.0]], [0]),                 # 5: NaN: sample skipped
        (inside, [5]),                                          # 6: class 5 of a 3-class model: sample skipped
        ([], []),                                               # 7: no object: fine (scored with no truth)
    ]
    columns = {"image": [s.image for s in scenes], "objects": [{"bbox": b, "category": c} for b, c in rows]}
    data = save(tmp_path / "data", columns, {"image": IMAGE, "objects": OBJECTS})
    out = tmp_path / "out"
    results, reasons = evaluated_with_skips("detection", data, out, capsys, "--loss", "vanish")
    assert sorted(reasons) == [4, 5, 6]
    assert "negative width or height" in reasons[4]
    assert "NaN" in reasons[5]
    assert reasons[6] == "labels must be class ids in [0, 3), got [5]"
    changes = {entry["id"]: entry["changes"] for entry in results["annotation_changes"]}
    assert changes == {
        1: ["box 0 [50.0, -6.0, 30.0, 20.0] clipped to the 64x64 image: [50.0, 0.0, 14.0, 14.0]"],
        2: ["box 0 [70.0, 10.0, 8.0, 8.0] dropped: no area inside the 64x64 image"],
        3: ["box 0 [5.0, 5.0, 0.0, 9.0] dropped: zero width or height"],
    }
    assert results["samples"] == {"total": 8, "evaluated": 5, "skipped": 3, "annotation_changed": 3}
    assert_scored_within_budget(out, results, [0, 1, 2, 3, 7])
    truth = {r["id"]: r["ground_truth"] for r in records(out) if "skipped" not in r}  # what mAP scores: as given
    assert truth[1]["boxes"] == [[50.0, -6.0, 30.0, 20.0]] and truth[1]["area"] == [600.0]
    assert truth[2]["boxes"] == [[70.0, 10.0, 8.0, 8.0], *inside] and truth[2]["labels"] == [2, 0]
    assert truth[3]["boxes"] == [[5.0, 5.0, 0.0, 9.0], *inside] and truth[3]["labels"] == [0, 1]
    assert truth[0]["boxes"] == inside and truth[7]["boxes"] == []


def test_coco_bad_files_and_annotations_are_skipped_and_reported(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(shapes_sample(0, i).image).save(images / f"{i}.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    coco = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64} for i in range(3)]
        + [{"id": 4, "file_name": "corrupt.png", "height": 64, "width": 64},
           {"id": 5, "file_name": "missing.png", "height": 64, "width": 64},
           {"id": 6, "file_name": "0.png", "height": 48, "width": 64}],
        "categories": [{"id": c, "name": name} for c, name in enumerate(("circle", "square", "triangle"))],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [4, 4, 20, 20], "category_id": 0, "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 2, "bbox": [40, 40, 40, 40], "category_id": 1, "area": 1600, "iscrowd": 0},
            {"id": 3, "image_id": 3, "bbox": [4, 4, 20, 20], "category_id": 9, "area": 400, "iscrowd": 0},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    results, reasons = evaluated_with_skips("detection", None, out, capsys, "--coco_annotation_file",
                                            tmp_path / "coco.json", "--coco_image_dir", images,
                                            "--category_mapping", "name")
    assert sorted(reasons) == [3, 4, 5, 6]
    assert reasons[3] == "annotations use category ids [9] missing from the categories list"
    assert "corrupt.png" in reasons[4] and "could not be read" in reasons[4]
    assert "missing.png" in reasons[5]
    assert reasons[6] == "image '0.png' is 64x64 but the annotation file says 48x64"
    assert [entry["id"] for entry in results["annotation_changes"]] == [2]
    assert_scored_within_budget(out, results, [1, 2])
    truth = {r["id"]: r["ground_truth"]["boxes"] for r in records(out) if "skipped" not in r}
    assert truth[2] == [[40.0, 40.0, 40.0, 40.0]]  # scored as in the file; the attack aims at the clipped box
    assert results["annotation_changes"][0]["changes"] == [
        "box 0 [40.0, 40.0, 40.0, 40.0] clipped to the 64x64 image: [40.0, 40.0, 24.0, 24.0]"]


@pytest.mark.parametrize("bbox_format", ["xywh", "xyxy"])
def test_clipping_is_in_the_dataset_frame(tmp_path, capsys, bbox_format):
    """The same box in either format gives the same truth (as given) and the same clipping for the attack."""
    box = [60.0, 60.0, 10.0, 10.0] if bbox_format == "xywh" else [60.0, 60.0, 70.0, 70.0]
    data = save(tmp_path / "data", {"image": [shapes_sample(0, 0).image], "objects": [{"bbox": [box],
                                                                                       "category": [0]}]},
                {"image": IMAGE, "objects": OBJECTS})
    out = tmp_path / "out"
    results, _ = evaluated_with_skips("detection", data, out, capsys, "--bbox_format", bbox_format)
    assert records(out)[0]["ground_truth"]["boxes"] == [[60.0, 60.0, 10.0, 10.0]]
    assert Path(out / "all_results.json").exists() and results["samples"]["annotation_changed"] == 1
    assert results["annotation_changes"][0]["changes"] == [
        "box 0 [60.0, 60.0, 10.0, 10.0] clipped to the 64x64 image: [60.0, 60.0, 4.0, 4.0]"]
    assert records(out)[0]["ground_truth"]["area"] == [100.0]
