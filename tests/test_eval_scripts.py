"""The evaluation scripts end to end on tiny random-weight models and tiny datasets made here.

Single-process runs call each script's ``main`` in this process; one ``accelerate launch`` with two CPU processes
runs all four scripts again and must reproduce their results exactly. Also: resuming an interrupted run, mAP equal
to COCOeval on the written records, mIoU equal to a confusion matrix of the records, and the transferability
matrix whose diagonal equals the white-box runs.
"""

import contextlib
import errno
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from script_runs import records, run_main
from tiny_models import photo_crops, tiny_conditional_detr, tiny_resnet, tiny_segformer, tiny_vit

from hf_sparse_attack.evaluation import eval_classification, eval_detection, eval_segmentation, eval_transfer
from hf_sparse_attack.evaluation.harness.records import load_png
from hf_sparse_attack.tasks import load_task

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"classification": eval_classification, "detection": eval_detection,
           "segmentation": eval_segmentation, "transfer": eval_transfer}


def run(script, output_dir, args):
    """Run a script's ``main`` in this process; the parsed ``all_results.json`` (``None`` if not written)."""
    return run_main(SCRIPTS[script].main, args, output_dir)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluation")


@pytest.fixture(scope="module")
def models(root):
    builders = {"vit": tiny_vit, "resnet": tiny_resnet, "detr": tiny_conditional_detr, "segformer": tiny_segformer}
    return {name: build(root / "models") for name, build in builders.items()}


@pytest.fixture(scope="module")
def arguments(root, models):
    """The arguments of every run (all but --output_dir), with their datasets written to disk."""
    # classification: 6 photos labelled by the models (so there is something to fool), a corrupt image and an
    # unlabelled row (both skipped and reported)
    images = photo_crops(6, 40)
    vit, resnet = load_task(models["vit"]), load_task(models["resnet"])
    labels = vit.predict(vit.prepare(images[:4])[0]).tolist() + resnet.predict(resnet.prepare(images[4:])[0]).tolist()
    datasets.Dataset.from_dict(
        {"image": [*images, {"bytes": b"not an image", "path": None}, images[0]], "label": [*labels, 0, -1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    ).save_to_disk(root / "classification")

    # detection: COCO json + image dir; the ground truth is the detector's two best boxes, clipped to the image
    detector = load_task(models["detr"])
    photos = photo_crops(4, 64, 80, seed=1)
    x, targets = detector.prepare(photos)
    found = detector.to_original(detector.predict(x, [t["size"] for t in targets], score_threshold=0.0),
                                 [(64, 80)] * 4)
    (root / "coco").mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"object_{c}"} for c in range(3)]}
    for i, (photo, detections) in enumerate(zip(photos, found)):
        Image.fromarray(photo).save(root / "coco" / f"{i}.png")
        coco["images"].append({"id": 100 + i, "file_name": f"{i}.png", "height": 64, "width": 80})
        for box, label in zip(detections["boxes"][:2].tolist(), detections["labels"][:2].tolist()):
            x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], 80), min(box[3], 64)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": 100 + i, "iscrowd": 0,
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": label,
                                        "area": (x1 - x0) * (y1 - y0)})
    (root / "coco.json").write_text(json.dumps(coco))

    # segmentation: the segmenter's own maps at the original size, a band of unlabelled pixels (255)
    segmenter = load_task(models["segformer"])
    scenes = photo_crops(3, 64, 72, seed=2)
    maps = segmenter.predict(segmenter.prepare(scenes)[0], [(64, 72)] * 3)  # at the original size, as HF does
    label_maps = [m.numpy().astype(np.uint8) for m in maps]
    for m in label_maps:
        m[:6] = 255
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(
        {"image": scenes, "label": [Image.fromarray(m, mode="L") for m in label_maps]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()}),
    )}).save_to_disk(root / "segmentation")

    # one thread: the 2-process run gets one per process, and the records must match to the last bit
    attack = ["--k", "1", "2", "--steps", "8", "--per_device_eval_batch_size", "3", "--num_threads", "1"]
    return {
        "classification": ["--model_name_or_path", models["vit"], "--dataset_name", root / "classification", *attack,
                           "--num_pictures", "2", "--save_adversarial"],
        "detection": ["--model_name_or_path", models["detr"], "--coco_annotation_file", root / "coco.json",
                      "--coco_image_dir", root / "coco", "--k", "6", "--steps", "6", "--score_threshold", "0.4",
                      "--per_device_eval_batch_size", "4", "--num_pictures", "2", "--num_threads", "1"],  # one batch:
                      # a process idles
        "segmentation": ["--model_name_or_path", models["segformer"], "--dataset_name", root / "segmentation",
                         "--k", "4", "12", "--steps", "6", "--adv_threshold", "0.5", "--per_device_eval_batch_size", "2",
                         "--num_pictures", "2", "--num_threads", "1"],
        "transfer": ["--model_name_or_path", models["vit"], models["resnet"], "--dataset_name",
                     root / "classification", *attack],
    }


@pytest.fixture(scope="module")
def single(root, arguments):
    """Output dir and results of one single-process run of each script."""
    return {name: (root / f"single-{name}", run(name, root / f"single-{name}", args))
            for name, args in arguments.items()}


def test_classification(single, models):
    out, results = single["classification"]
    assert results["samples"] == {"total": 8, "evaluated": 6, "skipped": 2, "annotation_changed": 0}
    reasons = {s["id"]: s["reason"] for s in results["skipped_samples"]}
    assert "could not be read" in reasons[6] and "unlabelled" in reasons[7]
    assert [r["k"] for r in results["results"]] == [1, 2]
    assert results["results"][0]["attack"] == {**results["results"][0]["attack"], "attack": "SparsePGD", "k": 1,
                                               "steps": 8, "seed": 0}
    assert results["task_options"] == {"loss": "ce", "targeted": False}
    assert {"torch", "transformers", "hf-sparse-attack"} <= set(results["versions"])
    rows = records(out)
    assert [r["id"] for r in rows if "k" in r] == [i for i in range(6) for _ in (1, 2)]
    objective = load_task(models["vit"])
    x, _ = objective.prepare(photo_crops(6, 40))
    for result in results["results"]:
        mine = [r for r in rows if r.get("k") == result["k"]]
        clean_ok = [r["clean_prediction"] == r["label"] for r in mine]
        fooled = [ok and r["adversarial_prediction"] != r["label"] for ok, r in zip(clean_ok, mine)]
        metrics = result["metrics"]
        assert metrics["clean_accuracy"] == pytest.approx(sum(clean_ok) / 6)
        assert metrics["attack_success_rate"] == pytest.approx(sum(fooled) / sum(clean_ok))
        assert metrics["robust_accuracy"] == pytest.approx(sum(not r["success"] for r in mine) / 6)
        for r in mine:  # the lossless PNG holds the adversarial image: exactly l0 pixels differ from the clean one
            adversarial = load_png(out / "adversarial" / f"k{result['k']}" / f"{r['id']}.png")
            assert int((adversarial != x[r["id"]]).any(0).sum()) == r["l0"] <= result["k"]
    assert sum(r["success"] for r in rows if r.get("k") == 2) > 0, "the attack should fool the tiny ViT sometimes"
    for picture in ("examples_k1.png", "examples_k2.png", "robust_accuracy_vs_k.png"):
        assert (out / "pictures" / picture).stat().st_size > 0
    assert results["pictures"] == ["pictures/examples_k1.png", "pictures/examples_k2.png",
                                   "pictures/robust_accuracy_vs_k.png"]


def test_resume_after_interruption_gives_the_uninterrupted_results(root, arguments, single):
    out = root / "resumed"
    assert run("classification", out, [*arguments["classification"], "--stop_after_batches", "1"]) is None
    assert sorted(p.name for p in (out / "records").iterdir()) == ["b000000.jsonl"]
    (out / "records" / ".b000001.jsonl.cut.tmp").write_text('{"id": 3, "k"')  # what a kill mid-write leaves
    with pytest.raises(SystemExit):  # other settings: refused, nothing touched
        run("classification", out, [*arguments["classification"], "--steps", "9"])
    results = run("classification", out, arguments["classification"])
    reference_dir, reference = single["classification"]
    assert results["resumed_batches"] == 1
    assert results["results"] == reference["results"] and results["samples"] == reference["samples"]
    assert records(out) == records(reference_dir)
    with pytest.raises(SystemExit):  # finished: never overwritten without --overwrite
        run("classification", out, arguments["classification"])
    again = run("classification", out, [*arguments["classification"], "--max_eval_samples", "3", "--overwrite"])
    assert again["samples"]["total"] == 3 and again["resumed_batches"] == 0


KILLER = """
import os, signal, sys
from pathlib import Path
from hf_sparse_attack.evaluation import eval_classification
from hf_sparse_attack.evaluation.harness import records

write = records.atomic_write
def dying_write(path, data):  # SIGKILL this process halfway through writing the second batch's records
    if Path(path).name == "b000001.jsonl":
        Path(path).with_name(".b000001.jsonl.cut.tmp").write_text(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
records.atomic_write = dying_write
eval_classification.main(sys.argv[1:])
"""


def test_resume_after_sigkill(root, arguments, single):
    out = root / "killed"
    (root / "killer.py").write_text(KILLER)
    command = [sys.executable, str(root / "killer.py"), *map(str, arguments["classification"]), "--output_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in (out / "records").iterdir()) == [".b000001.jsonl.cut.tmp", "b000000.jsonl"]
    results = run("classification", out, arguments["classification"])
    assert results["resumed_batches"] == 1 and results["results"] == single["classification"][1]["results"]
    assert records(out) == records(single["classification"][0])


def test_disk_full_mid_run_is_one_line_and_the_rerun_resumes(root, arguments, single, monkeypatch, capsys):
    """The disk fills while the second batch's records are written: one error line (exit 2) saying that finished
    samples are kept; once there is space again, the same command resumes and ends with the same results."""
    out = root / "disk_full"
    mkstemp = tempfile.mkstemp

    def full_disk(*args, **kwargs):  # atomic_write's temporary file of the second batch
        if kwargs.get("prefix", "").startswith(".b000001.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run("classification", out, arguments["classification"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and "No space left on device" in err[-1] and "run the same command" in err[-1]
    assert not any("error" in line for line in err[:-1])
    assert sorted(p.name for p in (out / "records").iterdir()) == ["b000000.jsonl"]
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    results = run("classification", out, arguments["classification"])
    assert results["resumed_batches"] == 1 and results["results"] == single["classification"][1]["results"]
    assert records(out) == records(single["classification"][0])


def test_detection_map_equals_cocoeval_on_the_records(single, root):
    out, results = single["detection"]
    assert results["samples"]["evaluated"] == 4 and results["dataset"]["source"] == "coco"
    (result,) = results["results"]
    truth = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        truth.dataset = json.loads((root / "coco.json").read_text())
        truth.createIndex()
        for version in ("clean", "adversarial"):
            detections = [{"image_id": r["id"], "bbox": box, "score": score, "category_id": label}
                          for r in records(out) for box, score, label in zip(
                              *(r[f"{version}_prediction"][key] for key in ("boxes", "scores", "labels")))]
            evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            expected = [float(s) for s in evaluation.stats[:3]]
            assert [result["metrics"][f"{key}_{version}"] for key in ("map", "map50", "map75")] == expected
    assert result["metrics"]["map_clean"] > 0.1  # the truth is the detector's own best boxes (clipped)
    assert result["metrics"]["map_drop"] != 0.0
    assert (out / "pictures" / "examples_k6.png").exists()


def test_segmentation_miou_equals_a_confusion_matrix_of_the_records(single):
    out, results = single["segmentation"]
    assert results["samples"] == {"total": 3, "evaluated": 3, "skipped": 0, "annotation_changed": 0}
    for result in results["results"]:
        rows = [r for r in records(out) if r["k"] == result["k"]]
        for column, version in ((1, "clean"), (2, "adversarial")):
            matrix = np.zeros((4, 4))
            for r in rows:
                for row in r["counts"]:
                    matrix[row[0], row[column]] += row[3]
            tp = np.diag(matrix)
            union = matrix.sum(0) + matrix.sum(1) - tp
            miou = np.mean(tp[union > 0] / union[union > 0])
            assert result["metrics"][f"miou_{version}"] == pytest.approx(miou, abs=1e-6)
            assert result["metrics"][f"pixel_accuracy_{version}"] == pytest.approx(tp.sum() / matrix.sum(), abs=1e-6)
        assert result["metrics"]["miou_clean"] == pytest.approx(1.0)  # the truth is the model's own maps
    assert results["results"][1]["metrics"]["miou_adversarial"] < 1.0
    assert (out / "pictures" / "miou_adversarial_vs_k.png").exists()


def test_transfer_matrix_diagonal_is_the_white_box_run(single, root, arguments, models):
    _, results = single["transfer"]
    vit_results = single["classification"][1]
    resnet_results = run("classification", root / "white-box-resnet",
                         [*arguments["transfer"][:1], models["resnet"], *arguments["transfer"][3:]])
    assert results["sources"] == results["targets"] == [str(models["vit"]), str(models["resnet"])]
    assert "resized to the target's input resolution" in results["note"]
    for i, result in enumerate(results["results"]):
        matrix = result["matrix"]
        assert matrix[0][0] == vit_results["results"][i]["metrics"]["attack_success_rate"]
        assert matrix[1][1] == resnet_results["results"][i]["metrics"]["attack_success_rate"]
        assert all(value is None or 0.0 <= value <= 1.0 for row in matrix for value in row)
    assert (single["transfer"][0] / "pictures" / "transfer_matrix_k2.png").exists()


DRIVER = """
import json, sys
from hf_sparse_attack.evaluation import eval_classification, eval_detection, eval_segmentation, eval_transfer
scripts = {"classification": eval_classification, "detection": eval_detection, "segmentation": eval_segmentation,
           "transfer": eval_transfer}
for name, argv in json.loads(sys.argv[1]):  # one launch, one process group, four scripts
    scripts[name].main(argv)
"""


def test_two_processes_give_the_results_of_one(root, arguments, single):
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    runs = [(name, [*map(str, args), "--output_dir", str(root / f"double-{name}")]) for name, args in arguments.items()]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(driver), json.dumps(runs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in arguments:
        results = json.loads((root / f"double-{name}" / "all_results.json").read_text())
        assert results["num_processes"] == 2
        assert results["results"] == single[name][1]["results"], name
        assert results["samples"] == single[name][1]["samples"]
        assert records(root / f"double-{name}") == records(single[name][0])
