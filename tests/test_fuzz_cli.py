"""Fuzzing of the `hf-sparse-attack` command lines (hypothesis, bounded): every argv either succeeds with outputs
within budget, or fails with exit code 2 and one error line on stderr (nothing else printed before it) — never a
traceback. Commands: attack, eval, transfer, train, demo; the flags mix good and bad values, models, datasets and
output directories."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hf_sparse_attack.evaluation.command import cli
from hf_sparse_attack.evaluation.command.demo import write_dataset
from hf_sparse_attack.evaluation.embedded import model_path
from hf_sparse_attack.evaluation.testdata.shapes import classification_sample

torch.set_num_threads(1)

NUMBERS = st.sampled_from(["0", "1", "2", "3", "-3", "ten", "1e9", "nan", "inf", "0.5", "", "999999999999"])
FLAGS = {
    "--k": NUMBERS,
    "--steps": NUMBERS,
    "--queries": NUMBERS,
    "--stride": NUMBERS,
    "--epsilon": NUMBERS,
    "--p_init": NUMBERS,
    "--seed": NUMBERS,
    "--num_threads": NUMBERS,
    "--attack": st.sampled_from(["spgd", "rs", "saa", "pgd", "", "SPGD"]),
    "--preset": st.sampled_from(["fast", "custom", "bogus"]),  # not "standard": 10000 steps per stage
    "--kernel": st.sampled_from(["square:2", "line:3:vertical", "cross:3", "heart:0", "letter:AB:5", "star",
                                 ":", "square:1000000000", "line:3:up:x", "/no/such/kernel.png"]),
    "--bogus_flag": st.sampled_from(["1"]),
}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "shape.png"
    Image.fromarray(classification_sample(3, 0).image).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB")).astype(np.int16)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), max_size=3), data=st.data())
def test_attack_command_line(image, capsys, chosen, data):
    flags = []
    for name in chosen:
        flags += [name, data.draw(FLAGS[name], label=name)]
    if "--steps" not in chosen:
        flags += ["--steps", "3"]
    if "--queries" not in chosen:
        flags += ["--queries", "20"]
    out = Path(tempfile.mkdtemp())
    argv = ["attack", str(image), "--model_name_or_path", str(model_path("classifier")),
            "--output_dir", str(out / "run"), *flags]
    try:
        try:
            code = cli.main(argv)
        except SystemExit as stop:
            code = stop.code
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        if code != 0:
            assert code == 2, (argv, err)
            assert len(err.splitlines()) == 1, (argv, err)
            return
        summary = json.loads((out / "run" / "summary.json").read_text())
        assert summary
        clean = pixels(out / "run" / "shape.png" / "clean.png")
        for adversarial in (out / "run" / "shape.png").glob("adversarial_k*.png"):
            k = int(adversarial.stem.split("_k")[1])
            changed = (pixels(adversarial) != clean).any(axis=2)
            if "--kernel" not in chosen:
                assert changed.sum() <= k, (argv, changed.sum())
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------------------- eval, transfer, train, demo
#: What may come before a late error line (one found after work started): progress bars and log lines.
PROGRESS = re.compile(r"^.*\d+%\|.*\| *\d+/\d+|^\d\d:\d\d:\d\d - (INFO|WARNING) - |^$")


def run_cli(argv, capsys):
    """``cli.main(argv)`` in this process: ``(exit code, stderr lines)``."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    finally:  # leave no accelerate state behind
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return code, capsys.readouterr().err.strip().splitlines()


def assert_clean_failure(argv, code, err):
    """Exit code 2 and one error line, the last; only progress bars and log lines of work done come before it."""
    assert code == 2, (argv, code, err)
    assert err and " error: " in err[-1] and "Traceback" not in "\n".join(err), (argv, err)
    assert all(PROGRESS.match(line) for line in err[:-1]), (argv, err)


def draw_flags(data, flags, chosen):
    argv = []
    for name in chosen:
        value = data.draw(flags[name], label=name)
        argv += [name] if value is None else [name, value]
    return argv


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Hub names fail at once (CI has no Hub; a blocked network must not be waited for)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Models (embedded, a copy, broken ones), datasets (good, bad) and output directories to draw from."""
    root = tmp_path_factory.mktemp("fuzz_places")
    write_dataset("classification", 3, root / "classification")
    write_dataset("segmentation", 2, root / "segmentation")
    shutil.copytree(model_path("classifier"), root / "classifier_copy")
    (root / "file.txt").write_text("not a model, not a dataset")
    (root / "empty").mkdir()
    no_weights = root / "no_weights"
    shutil.copytree(model_path("classifier"), no_weights)
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(
        {"image": [classification_sample(0, 0).image], "label": [9]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))}
    ).save_to_disk(root / "bad_labels")
    return root


def models(places):
    return st.sampled_from([str(model_path("classifier")), str(model_path("segmenter")), str(model_path("detector")),
                            str(places / "classifier_copy"), "./no/such/model", str(places / "file.txt"),
                            str(places / "empty"), str(places / "no_weights"), "org/not-cached"])


def eval_flags(places):
    return {
        "--dataset_name": st.sampled_from([str(places / "classification"), str(places / "segmentation"),
                                           str(places / "bad_labels"), str(places / "file.txt"),
                                           str(places / "empty"), "./no/such/data"]),
        "--k": st.sampled_from(["1", "2", "0", "-1", "x", "1e9", "nan"]),
        "--steps": st.sampled_from(["1", "0", "-2", "two"]),
        "--attack": st.sampled_from(["spgd", "rs", "pgd"]),
        "--queries": st.sampled_from(["5", "0"]),
        "--max_eval_samples": st.sampled_from(["1", "0", "-1"]),
        "--per_device_eval_batch_size": st.sampled_from(["2", "0", "-3"]),
        "--num_pictures": st.sampled_from(["0", "1", "-1"]),
        "--loss": st.sampled_from(["ce", "margin", "vanish", "bogus"]),
        "--label_column_name": st.sampled_from(["label", "image", "nope"]),
        "--dataset_split": st.sampled_from(["validation", "test"]),
        "--stride": st.sampled_from(["1", "0"]),
        "--seed": st.sampled_from(["0", "-1", "s"]),
        "--overwrite": st.none(),
        "--bogus_flag": st.sampled_from(["1"]),
    }


def assert_evaluation_outputs(out, argv):
    """A successful evaluation wrote its results, and every scored record is within its budget."""
    results = json.loads((out / "all_results.json").read_text())
    assert results["samples"]["evaluated"] >= 1, argv
    for line in (out / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert "skipped" in record or 0 <= record["l0"] <= record["k"], (argv, record)


def output_dir(data, tmp):
    """A fresh directory, a file, or a directory holding another run (other settings)."""
    kind = data.draw(st.sampled_from(["fresh", "fresh", "file", "other_run"]), label="output_dir")
    out = tmp / "run"
    if kind == "file":
        out.write_text("a file")
    elif kind == "other_run":
        out.mkdir()
        (out / "run.json").write_text(json.dumps({"settings": {"k": [99]}}))
    return out, kind


def fuzzing(examples):
    """Hypothesis settings of these tests: ``examples`` command lines, the same ones in every run."""
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@fuzzing(40)
@given(data=st.data())
def test_eval_command_line(places, capsys, data):
    flags = eval_flags(places)
    chosen = data.draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True), label="flags")
    model = data.draw(models(places), label="model")
    dataset = [] if "--dataset_name" in chosen else ["--dataset_name", str(places / "classification")]
    tmp = Path(tempfile.mkdtemp())
    try:
        out, kind = output_dir(data, tmp)
        argv = ["eval", "--model_name_or_path", model, "--output_dir", str(out), *dataset, "--steps", "2",
                "--queries", "10", "--k", "2", *draw_flags(data, flags, chosen)]
        code, err = run_cli(argv, capsys)
        if code == 0:
            assert err == [] or all(not line.startswith("hf-sparse-attack") for line in err), (argv, err)
            assert_evaluation_outputs(out, argv)
        else:
            assert_clean_failure(argv, code, err)
            if kind == "other_run" and "--overwrite" not in chosen:
                assert not (out / "records").exists(), argv
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@fuzzing(20)
@given(data=st.data())
def test_transfer_command_line(places, capsys, data):
    flags = eval_flags(places)
    chosen = data.draw(st.lists(st.sampled_from(sorted(flags)), max_size=3, unique=True), label="flags")
    sources = data.draw(st.lists(models(places), min_size=1, max_size=2), label="sources")
    targets = data.draw(st.one_of(st.just([]), st.lists(models(places), min_size=1, max_size=2)), label="targets")
    dataset = [] if "--dataset_name" in chosen else ["--dataset_name", str(places / "classification")]
    tmp = Path(tempfile.mkdtemp())
    try:
        out, _ = output_dir(data, tmp)
        argv = ["transfer", "--model_name_or_path", *sources, *(["--target_models", *targets] if targets else []),
                "--output_dir", str(out), *dataset, "--steps", "2", "--queries", "10", "--k", "2",
                *draw_flags(data, flags, chosen)]
        code, err = run_cli(argv, capsys)
        if code == 0:
            assert_evaluation_outputs(out, argv)
            results = json.loads((out / "all_results.json").read_text())
            assert len(results["results"][0]["matrix"]) == len(set(sources)), argv
        else:
            assert_clean_failure(argv, code, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@fuzzing(16)
@given(samples=st.sampled_from(["1", "0", "-4", "1001", "many", ""]),
       threads=st.sampled_from(["1", "0", "-1", "x"]), place=st.sampled_from(["fresh", "occupied", "unwritable"]),
       overwrite=st.booleans())
def test_demo_command_line(capsys, samples, threads, place, overwrite):
    tmp = Path(tempfile.mkdtemp())
    out = Path("/proc/hf-sparse-attack-demo") if place == "unwritable" else tmp / "demo"  # even root cannot write
    occupied = place == "occupied"
    if occupied:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    argv = ["demo", "--output_dir", str(out), "--samples", samples, "--num_threads", threads,
            *(["--overwrite"] if overwrite else [])]
    try:
        code, err = run_cli(argv, capsys)
        if code == 0:
            results = json.loads((out / "demo_results.json").read_text())
            assert [row["samples"] for row in results["rows"]] == [int(samples)] * 3, argv
        else:
            assert_clean_failure(argv, code, err)
        if occupied:
            assert (out / "notes.txt").read_text() == "mine", argv  # --overwrite replaces the demo's outputs only
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@fuzzing(25)
@given(data=st.data())
def test_train_command_line(places, capsys, data):
    flags = {
        "--dataset_name": st.sampled_from([str(places / "classification"), str(places / "bad_labels"),
                                           str(places / "segmentation"), "./no/such/data"]),
        "--dataset_split": st.sampled_from(["validation", "train"]),
        "--k": st.sampled_from(["1", "0", "-1", "x"]),
        "--steps": st.sampled_from(["1", "0"]),
        "--loss": st.sampled_from(["sat", "strades", "trades"]),
        "--beta": st.sampled_from(["1", "-1", "nan"]),
        "--gradient": st.sampled_from(["random", "projected", "sideways"]),
        "--learning_rate": st.sampled_from(["1e-3", "0", "-1", "nan", "inf"]),
        "--weight_decay": st.sampled_from(["0.01", "-0.1", "nan"]),
        "--max_train_steps": st.sampled_from(["1", "2", "0"]),
        "--num_train_epochs": st.sampled_from(["1", "-1"]),
        "--per_device_train_batch_size": st.sampled_from(["2", "0"]),
        "--checkpointing_steps": st.sampled_from(["1", "0"]),
        "--resume_from_checkpoint": st.sampled_from(["latest", "./no/such/checkpoint"]),
        "--lr_scheduler_type": st.sampled_from(["cosine", "bogus"]),
        "--num_warmup_steps": st.sampled_from(["0", "-1"]),
        "--label_column_name": st.sampled_from(["label", "image"]),
        "--overwrite": st.none(),
    }
    chosen = data.draw(st.lists(st.sampled_from(sorted(flags)), max_size=3, unique=True), label="flags")
    model = data.draw(models(places), label="model")
    defaults = {"--dataset_name": str(places / "classification"), "--dataset_split": "validation",
                "--max_train_steps": "1", "--steps": "1", "--k": "1"}
    tmp = Path(tempfile.mkdtemp())
    try:
        out, _ = output_dir(data, tmp)
        argv = ["train", "--model_name_or_path", model, "--output_dir", str(out),
                *(item for flag, value in defaults.items() if flag not in chosen for item in (flag, value)),
                *draw_flags(data, flags, chosen)]
        code, err = run_cli(argv, capsys)
        if code == 0:
            results = json.loads((out / "all_results.json").read_text())
            assert results["steps"] >= 1 and (out / "model.safetensors").is_file(), argv
        else:
            assert_clean_failure(argv, code, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
