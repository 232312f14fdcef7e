"""The evaluation scripts' shared pieces: kernel and attack flags, settings, output-dir records, one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_sparse_attack import SparseAutoAttack, SparsePGD, SparseRS, kernels
from hf_sparse_attack.evaluation import eval_classification
from hf_sparse_attack.evaluation.harness.attack_configs import attack_configs, parse_kernel
from hf_sparse_attack.evaluation.harness.command_line import UsageError
from hf_sparse_attack.evaluation.harness.records import OutputDirError, RunDirectory
from hf_sparse_attack.evaluation.harness.script_flags import build_parser, settings

REQUIRED = ["--model_name_or_path", "m", "--output_dir", "o", "--dataset_name", "d"]


def parse(*flags):
    return build_parser("classification").parse_args([*REQUIRED, *flags])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("square:3", kernels.square(3)),
        ("line:5:vertical", kernels.line(5, "vertical")),
        ("line:4", kernels.line(4)),
        ("cross:5", kernels.shape("cross", 5)),
        ("heart:7", kernels.shape("heart", 7)),
        ("letter:A:12", kernels.letter("A", 12)),
    ],
)
def test_kernel_specs(spec, expected):
    assert torch.equal(parse_kernel(spec), expected)


def test_kernel_from_image_and_bad_specs(tmp_path):
    drawing = np.zeros((6, 6), np.uint8)
    drawing[1:4, 2] = 255
    Image.fromarray(drawing).save(tmp_path / "bar.png")
    assert parse_kernel(str(tmp_path / "bar.png")).tolist() == [[1.0], [1.0], [1.0]]
    for bad, message in [("blob:3", "unknown kernel"), ("square:x", "not an integer"), ("line:3:sideways", "orientation"),
                         ("square", "bad kernel")]:
        with pytest.raises(UsageError, match=message):
            parse_kernel(bad)


def test_attack_flags():
    pgd = attack_configs(parse("--k", "2", "5", "--steps", "7", "--projected", "--kernel", "square:2", "--seed", "3"))
    assert pgd == [SparsePGD(k=k, steps=7, unprojected=False, kernel=kernels.square(2), seed=3) for k in (2, 5)]
    assert attack_configs(parse("--attack", "rs", "--queries", "50")) == [SparseRS(k=10, queries=50)]
    (preset,) = attack_configs(parse("--attack", "saa", "--preset", "fast", "--k", "4"))
    assert preset == SparseAutoAttack(k=4, version="fast")
    (custom,) = attack_configs(parse("--attack", "saa", "--preset", "custom", "--steps", "5", "--queries", "9"))
    assert [type(a).__name__ for a in custom.attacks] == ["SparsePGD", "SparsePGD", "SparseRS"]
    assert [a.unprojected for a in custom.attacks[:2]] == [True, False] and custom.attacks[2].queries == 9
    with pytest.raises(UsageError, match="twice"):
        attack_configs(parse("--k", "2", "2"))
    with pytest.raises(UsageError, match="steps"):
        attack_configs(parse("--steps", "0"))


def test_settings_leave_out_runtime_flags():
    a = settings(parse("--num_threads", "2", "--stop_after_batches", "1", "--overwrite"))
    assert a == settings(parse()) and "output_dir" not in a and a["k"] == [10]


def test_run_directory_rules(tmp_path):
    RunDirectory(tmp_path / "fresh", {}).probe()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="holds no evaluation run"):
        RunDirectory(tmp_path / "other", {}).check(overwrite=False)
    run = RunDirectory(tmp_path / "other", {"k": 1})
    assert run.check(overwrite=True) is False
    run.start(resume=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"  # --overwrite replaces only a run's files
    (tmp_path / "other" / "records").mkdir()
    (tmp_path / "other" / "records" / ".b000000.jsonl.x.tmp").write_text('{"id": 0')  # a write cut short
    assert run.check(overwrite=False) is True and run.finished() == set()
    (tmp_path / "other" / "all_results.json").write_text(json.dumps({}))
    with pytest.raises(OutputDirError, match="already holds finished results"):
        run.check(overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="not writable"):
        RunDirectory(tmp_path / "file" / "out", {}).probe()
    with pytest.raises(OutputDirError, match="MiB free"):
        RunDirectory(tmp_path / "fresh", {}).probe(min_free_bytes=2**62)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--attack", "pgd"], "invalid choice: 'pgd'"),
        (["--kernel", "blob:3"], "unknown kernel"),
        (["--k", "1", "1"], "twice"),
        (["--per_device_eval_batch_size", "0"], "positive integer"),
    ],
)
def test_cli_errors_are_one_line_exit_2(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        eval_classification.main(["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir",
                                  str(tmp_path / "o"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written: the problem is found before anything runs


def test_a_model_of_another_task_names_the_script_or_command_for_it(tmp_path, capsys):
    from hf_sparse_attack.evaluation import train_sparse_adversarial
    from hf_sparse_attack.evaluation.embedded import model_path

    detector = str(model_path("detector"))
    for main, argv, expected in (
        (eval_classification.main, ["--dataset_name", "d"], "is an object detector (ConditionalDetrForObjectDetection), "
         "not an image classifier: evaluate it with evaluation/eval_detection.py, or with hf-sparse-attack eval"),
        (train_sparse_adversarial.main, ["--dataset_name", "d"], "sparse adversarial training takes image "
         "classifiers; "),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["--model_name_or_path", detector, "--output_dir", str(tmp_path / "out"), *argv])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--k", "5000"], "--k 5000 is more than the 4096 pixels of the model's 64x64 input"),
    (["--k", "300", "--kernel", "square:4", "--stride", "4"], "--k 300 is more than the 256 kernel placements"),
])
def test_a_budget_larger_than_the_input_is_refused_before_the_data_loads(tmp_path, capsys, flags, message):
    from hf_sparse_attack.evaluation.embedded import model_path

    with pytest.raises(SystemExit) as exit_info:  # the dataset does not exist: it is never opened
        eval_classification.main(["--model_name_or_path", str(model_path("classifier")), "--dataset_name",
                                  str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_dataset_classes_are_matched_to_the_model_labels_by_name(tmp_path, capsys):
    import datasets

    from hf_sparse_attack.evaluation.embedded import model_path
    from hf_sparse_attack.evaluation.testdata.shapes import CLASSES, classification_batch

    images, labels = classification_batch(6, seed=3)
    model = str(model_path("classifier"))
    reordered = list(reversed(CLASSES))  # the same classes, other ids
    for names, folder in ((list(CLASSES), "same"), (reordered, "reordered"), (["arrow", "ball", "box"], "other")):
        ids = [names.index(CLASSES[label]) if folder != "other" else int(label) for label in labels]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"image": images, "label": ids},
                                                                        features=features)}).save_to_disk(
            tmp_path / folder)
    argv = ["--model_name_or_path", model, "--k", "1", "--steps", "2"]
    same = eval_classification.main([*argv, "--dataset_name", str(tmp_path / "same"), "--output_dir",
                                     str(tmp_path / "out-same")])
    reordered = eval_classification.main([*argv, "--dataset_name", str(tmp_path / "reordered"), "--output_dir",
                                          str(tmp_path / "out-reordered")])
    assert same["results"] == reordered["results"]  # mapped by name: the same scores
    with pytest.raises(SystemExit) as exit_info:
        eval_classification.main([*argv, "--dataset_name", str(tmp_path / "other"), "--output_dir",
                                  str(tmp_path / "out-other")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "the dataset's classes ['arrow', 'ball', 'box'] are not the model's labels" in error
    assert "pass --label_mapping id" in error
