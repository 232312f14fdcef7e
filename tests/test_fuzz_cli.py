"""Fuzzing of the `hf-sparse-attack attack` command line (hypothesis, bounded): every argv either succeeds with
outputs within budget, or fails with exit code 2 and one error line — never a traceback."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from evaluation import cli
from evaluation.embedded import model_path
from evaluation.shapes import classification_sample

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
