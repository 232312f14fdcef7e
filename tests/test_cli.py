"""The ``hf-sparse-attack`` command: demo end to end (table = JSON, drops, index.html grids at their natural size in
Chromium, what adversarial and k mean), ``attack`` on a file and a folder (budget re-checked from the PNGs) with its
task options and its report in the task's terms (class change; per-object scores re-measured from the PNGs; the
fraction of pixels whose class changed; nothing to attack), one-line errors with exit code 2, ``--help`` of each
subcommand."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_sparse_attack import AuditError, SparsePGD
from hf_sparse_attack.evaluation.command import cli
from hf_sparse_attack.evaluation.embedded import model_path
from hf_sparse_attack.evaluation.harness.command_line import Parser, UsageError, run_script
from hf_sparse_attack.evaluation.harness.records import load_png
from hf_sparse_attack.evaluation.testdata.shapes import TEST_SEED, classification_sample, shapes_sample
from hf_sparse_attack.tasks import load_task

CHROMIUM = Path("/usr/bin/chromium")


class Images(HTMLParser):
    """The ``src`` of every ``<img>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A reduced demo run: its output folder and what it printed."""
    root = tmp_path_factory.mktemp("demo") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["demo", "--output_dir", str(root), "--samples", "6", "--num_threads", "1"]) == 0
    return root, printed.getvalue()


def test_demo_prints_its_json_numbers_and_attacks_lower_them(demo):
    root, printed = demo
    rows = json.loads((root / "demo_results.json").read_text())["rows"]
    assert [r["task"] for r in rows] == ["classification", "detection", "segmentation"]
    lines = {line.split()[0]: line.split() for line in printed.splitlines() if line.split()}
    for row in rows:
        cells = lines[row["task"]]
        assert cells[1:7] == [row["model"], str(row["samples"]), row["metric"], f"{row['clean']:.3f}",
                              f"{row['adversarial']:.3f}", str(row["k"])]
        assert row["samples"] == 6
        assert row["adversarial"] < row["clean"], row
        results = json.loads((root / row["run"] / "all_results.json").read_text())
        assert results["results"][0]["k"] == row["k"]


def test_demo_index_shows_the_grid_of_each_run(demo):
    root, _ = demo
    page = Images()
    page.feed((root / "index.html").read_text())
    rows = json.loads((root / "demo_results.json").read_text())["rows"]
    assert page.sources == [p for row in rows for p in row["pictures"]] == [
        f"runs/{task}/pictures/examples_k{k}.png" for task, k in (("classification", 10), ("detection", 40),
                                                                  ("segmentation", 40))]
    for source in page.sources:
        assert not Path(source).is_absolute()
        with Image.open(root / source) as image:
            image.load()  # decodes


def image_checks(root: Path, check: str, tmp_path: Path, *flags: str) -> str:
    """Open ``root/index.html`` in headless Chromium; ``"1"`` or ``"0"`` per ``<img>`` for the JavaScript condition
    ``check`` on the image ``i`` (written into the title, which ``--dump-dom`` shows)."""
    probe = root / "probe.html"
    probe.write_text((root / "index.html").read_text().replace(
        "</body>", "<script>window.onload=()=>{document.title=[...document.images].map("
                   f"i=>{check}?1:0).join('')}}</script></body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
             "--virtual-time-budget=5000", "--dump-dom", *flags]
    dom = subprocess.run([str(CHROMIUM), *flags, probe.as_uri()], capture_output=True, text=True, timeout=60).stdout
    return re.search(r"<title>([01]*)</title>", dom).group(1)


def test_demo_index_loads_in_chromium(demo, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium); the pictures are checked with PIL")
    root, _ = demo
    loaded = image_checks(root, "i.complete&&i.naturalWidth>0", tmp_path)  # each <img> decoded
    assert loaded and set(loaded) == {"1"}, loaded


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of two generated shapes images."""
    folder = tmp_path_factory.mktemp("images")
    for i in range(2):
        Image.fromarray(classification_sample(7, i).image).save(folder / f"shape{i}.png")
    return folder


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def check_budget(out: Path, name: str, k: int) -> None:
    clean, adversarial = pixels(out / name / "clean.png"), pixels(out / name / f"adversarial_k{k}.png")
    changed = (clean != adversarial).any(axis=2)
    assert 0 < changed.sum() <= k
    assert np.array_equal(pixels(out / name / f"perturbation_k{k}.png")[..., 0] > 0, changed)


def run_attack(argv: list[str], capsys) -> tuple[dict, dict[str, str]]:
    """Run ``hf-sparse-attack attack ARGV``: its summary.json and what it printed, one line per image file name."""
    capsys.readouterr()
    assert cli.main(["attack", *argv]) == 0
    lines = {Path(line.split(": ", 1)[0]).name: line for line in capsys.readouterr().out.splitlines()}
    return json.loads((Path(argv[argv.index("--output_dir") + 1]) / "summary.json").read_text()), lines


def test_attack_file_and_folder(images, tmp_path, capsys):
    model = str(model_path("classifier"))
    flags = ["--model_name_or_path", model, "--steps", "20", "--k", "4", "--loss", "margin"]
    run_attack([str(images / "shape0.png"), *flags, "--output_dir", str(tmp_path / "one")], capsys)
    check_budget(tmp_path / "one", "shape0.png", 4)
    summary, lines = run_attack([str(images), *flags, "--output_dir", str(tmp_path / "all")], capsys)
    assert summary["task"] == "classification" and len(summary["images"]) == 2
    assert summary["task_options"] == {"loss": "margin", "targeted": False}
    names = load_task(model).model.config.id2label
    for entry in summary["images"]:
        name = Path(entry["file"]).name
        check_budget(tmp_path / "all", name, 4)
        (result,) = entry["attacks"]
        assert result["l0"] <= 4
        clean, adversarial = entry["clean_prediction"], result["adversarial_prediction"]
        assert [clean["name"], adversarial["name"]] == [names[clean["class"]], names[adversarial["class"]]]
        assert result["success"] == (clean["class"] != adversarial["class"])
        fooled = "fooled" if result["success"] else "not fooled"
        assert result["report"] == f"{fooled}: {clean['name']} -> {adversarial['name']}"
        assert lines[name] == f"{entry['file']}: k=4, L0 {result['l0']}: {result['report']}"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A folder of a generated shapes scene (3 objects the embedded detector finds from 0.55) and a plain grey
    image (no detection from 0.05)."""
    folder = tmp_path_factory.mktemp("scenes")
    Image.fromarray(shapes_sample(TEST_SEED, 0).image).save(folder / "shapes.png")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "grey.png")
    return folder


def test_attack_detection_reports_each_object_and_nothing_to_attack(scenes, tmp_path, capsys):
    options = {"loss": "targets", "score_threshold": 0.2, "iou_threshold": 0.4, "target_threshold": 0.55}
    out = tmp_path / "out"
    summary, lines = run_attack([str(scenes), "--model_name_or_path", str(model_path("detector")), "--k", "30",
                                 "--steps", "10", *(f for key, value in options.items() for f in (f"--{key}",
                                 str(value))), "--output_dir", str(out)], capsys)
    assert summary["task"] == "detection" and summary["task_options"] == options
    grey, scene = summary["images"]  # name order
    assert grey["attacks"] == [] and "scoring >= 0.55" in grey["nothing_to_attack"]
    assert lines["grey.png"] == f"{grey['file']}: nothing to attack, {grey['nothing_to_attack']}"
    assert sorted(p.name for p in (out / "grey.png").iterdir()) == ["clean.png"]
    (result,) = scene["attacks"]
    check_budget(out, "shapes.png", 30)
    assert result["l0"] <= 30
    objects = result["objects"]
    assert len(objects) == len(scene["clean_prediction"]["labels"]) == 3  # the clean detections from 0.55
    assert min(scene["clean_prediction"]["scores"] + result["adversarial_prediction"]["scores"]) >= 0.55
    # each score is what the detector says of the saved PNGs: objective.found with the same options
    objective = load_task(model_path("detector"), **options)
    targets = [{"labels": torch.tensor([o["label"] for o in objects]), "size": torch.tensor([64, 64]),
                "boxes": torch.tensor([o["box"] for o in objects])}]
    for picture, key in (("clean.png", "clean_score"), ("adversarial_k30.png", "adversarial_score")):
        found = objective.found(load_png(out / "shapes.png" / picture)[None], targets)[0]
        assert found.tolist() == pytest.approx([o[key] for o in objects], abs=1e-4)
    assert all(o["clean_score"] >= 0.55 and o["name"] == objective.model.config.id2label[o["label"]]
               for o in objects)
    removed = [o["adversarial_score"] == 0 for o in objects]  # a detection scoring under 0.2 no longer counts
    assert all(o["removed"] or o["adversarial_score"] >= 0.2 for o in objects)
    assert [o["removed"] for o in objects] == removed and result["objects_removed"] == sum(removed) > 0
    assert result["success"] == all(removed)
    assert result["report"] == f"{sum(removed)} of 3 objects removed (" + ", ".join(
        f"{o['name']} {o['clean_score']:.2f} -> {o['adversarial_score']:.2f}" for o in objects) + ")"
    assert lines["shapes.png"] == f"{scene['file']}: k=30, L0 {result['l0']}: {result['report']}"


def test_attack_segmentation_reports_the_fraction_of_pixels_that_changed_class(scenes, tmp_path, capsys):
    model, out = str(model_path("segmenter")), tmp_path / "out"
    summary, lines = run_attack([str(scenes / "shapes.png"), "--model_name_or_path", model, "--k", "20", "--steps",
                                 "10", "--loss", "ce_correct", "--adv_threshold", "0.03", "--output_dir", str(out)],
                                capsys)
    assert summary["task"] == "segmentation"
    assert (summary["task_options"]["loss"], summary["task_options"]["adv_threshold"]) == ("ce_correct", 0.03)
    (image,) = summary["images"]
    (result,) = image["attacks"]
    check_budget(out, "shapes.png", 20)
    assert result["l0"] <= 20
    objective = load_task(model)
    clean, adversarial = (objective.predict(load_png(out / "shapes.png" / picture)[None])[0]
                          for picture in ("clean.png", "adversarial_k20.png"))
    fraction = (clean != adversarial).double().mean().item()  # the targets are the clean map: every pixel labelled
    assert fraction > 0 and result["pixels_changed_class"] == pytest.approx(fraction)
    assert result["success"] == (fraction >= 0.03)
    names = objective.model.config.id2label
    for prediction, label_map in ((image["clean_prediction"], clean), (result["adversarial_prediction"], adversarial)):
        assert prediction["names"] == [names[c] for c in label_map.unique().tolist()]
    assert f"{fraction:.1%} of labelled pixels changed class" in result["report"]
    assert result["report"].startswith("fooled: " if result["success"] else "not fooled: ")
    assert lines["shapes.png"] == f"{image['file']}: k=20, L0 {result['l0']}: {result['report']}"


def test_attack_output_dir_is_replaced_only_with_overwrite(images, tmp_path, capsys):
    flags = ["--model_name_or_path", str(model_path("classifier")), "--steps", "5", "--output_dir",
             str(tmp_path / "out")]
    assert cli.main(["attack", str(images), *flags, "--k", "4"]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["attack", str(images / "shape0.png"), *flags, "--k", "2"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "--overwrite" in err
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert cli.main(["attack", str(images / "shape0.png"), *flags, "--k", "2", "--overwrite"]) == 0
    # the earlier attack's outputs are gone (no stale k=4 image, no folder of the other image), the notes stay
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt", "shape0.png", "summary.json"]
    assert sorted(p.name for p in (tmp_path / "out" / "shape0.png").iterdir()) == [
        "adversarial_k2.png", "clean.png", "perturbation_k2.png"]
    check_budget(tmp_path / "out", "shape0.png", 2)


@pytest.mark.parametrize("argv, message", [
    (["bogus"], "unknown command 'bogus'"),
    (["attack", "IMAGES", "--model_name_or_path", "./no/such/model", "--output_dir", "OUT"], "does not exist"),
    (["attack", "IMAGES", "--model_name_or_path", "MODEL", "--k", "0", "--output_dir", "OUT"], "k must be"),
    (["attack", "IMAGES", "--model_name_or_path", "MODEL", "--k", "ten", "--output_dir", "OUT"], "invalid int"),
    (["attack", "IMAGES", "--model_name_or_path", "MODEL", "--score_threshold", "0.1", "--output_dir", "OUT"],
     "the classification task does not take the option(s) score_threshold"),
    (["attack", "IMAGES", "--model_name_or_path", "SEGMENTER", "--iou_threshold", "0.3", "--output_dir", "OUT"],
     "the segmentation task does not take the option(s) iou_threshold"),
    (["attack", "IMAGES", "--model_name_or_path", "DETECTOR", "--adv_threshold", "0.5", "--output_dir", "OUT"],
     "the detection task does not take the option(s) adv_threshold"),
    (["attack", "IMAGES", "--model_name_or_path", "DETECTOR", "--loss", "bogus", "--output_dir", "OUT"],
     "unknown detection loss 'bogus'"),
    (["attack", "IMAGES", "--model_name_or_path", "DETECTOR", "--target_threshold", "2", "--output_dir", "OUT"],
     "target_threshold"),
    (["eval", "--model_name_or_path", "./no/such/model"], "does not exist"),
    (["demo", "--samples", "0", "--output_dir", "OUT"], "--samples must be"),
    (["demo", "--samples", "1000000000", "--output_dir", "OUT"], "--samples must be an integer in [1, 1000]"),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, images, tmp_path, capsys):
    values = {"IMAGES": str(images), "MODEL": str(model_path("classifier")), "DETECTOR": str(model_path("detector")),
              "SEGMENTER": str(model_path("segmenter")), "OUT": str(tmp_path / "out")}
    with pytest.raises(SystemExit) as exit_info:
        cli.main([values.get(a, a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_debug_shows_the_exception():
    with pytest.raises(ValueError, match="unknown command"):
        cli.main(["--debug", "bogus"])
    with pytest.raises(SystemExit):  # --debug holds for its own call only
        cli.main(["bogus"])


def test_a_bug_is_one_line_with_exit_code_1_and_its_traceback_with_debug(images, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise AuditError("budget exceeded: 5 > k=4")  # what a broken attack would raise

    monkeypatch.setattr(SparsePGD, "__call__", broken)
    argv = ["attack", str(images), "--model_name_or_path", str(model_path("classifier")),
            "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 1
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
           if line.strip() and "Loading weights" not in line and not line.startswith("attacking")]  # progress
    assert len(err) == 1 and "a bug" in err[0] and "AuditError: budget exceeded" in err[0] and "--debug" in err[0]
    with pytest.raises(AuditError, match="budget exceeded"):
        cli.main(["--debug", *argv[:-1], str(tmp_path / "again")])


def test_scripts_share_the_exit_code_policy(capsys):
    parser = Parser(prog="script")
    parser.add_argument("--debug", action="store_true")
    for error, code in ((UsageError("bad flag"), 2), (ValueError("bad value"), 2), (KeyError("oops"), 1)):
        def body(args, error=error):
            raise error

        with pytest.raises(SystemExit) as exit_info:
            run_script(parser, body, [])
        assert exit_info.value.code == code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("a bug" in err) == (code == 1)
    with pytest.raises(KeyError):
        run_script(parser, body, ["--debug"])


@pytest.mark.parametrize("command, expected", [
    ([], "transfer"),
    (["attack"], "--kernel"),
    (["attack"], "--target_threshold"),
    (["eval"], "--model_name_or_path MODEL --help"),
    (["eval", "--model_name_or_path", str(model_path("detector"))], "--coco_annotation_file"),
    (["transfer"], "--target_models"),
    (["train"], "--num_train_epochs"),
    (["demo"], "--samples"),
])
def test_help_of_each_command(command, expected, capsys):
    try:
        code = cli.main([*command, "--help"])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 0
    assert expected in capsys.readouterr().out


def test_console_script_exit_code(tmp_path):
    script = shutil.which("hf-sparse-attack")
    if script is None:
        pytest.skip("the console script is not installed (pip install -e .)")
    done = subprocess.run([script, "attack", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "adversarial" in done.stdout
    done = subprocess.run([script, "nope"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_every_input_error_is_a_value_error_so_it_exits_2():
    from hf_sparse_attack.evaluation.harness.data import DataError
    from hf_sparse_attack.evaluation.harness.records import OutputDirError
    from hf_sparse_attack.tasks import TaskLoadError

    assert all(issubclass(error, ValueError) for error in (UsageError, DataError, OutputDirError, TaskLoadError))


def test_attack_batches_give_the_results_of_single_images_and_skip_unreadable_files(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(classification_sample(11, i).image).save(folder / f"shape{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    runs = {}
    for size in ("1", "2"):
        out = tmp_path / f"out{size}"
        cli.main(["attack", str(folder), "--model_name_or_path", str(model_path("classifier")), "--k", "3",
                  "--steps", "10", "--per_device_batch_size", size, "--output_dir", str(out)])
        runs[size] = json.loads((out / "summary.json").read_text())
        assert runs[size]["skipped"] == [{"file": str(folder / "broken.png"),
                                          "skipped": runs[size]["skipped"][0]["skipped"]}]
        assert "cannot read or prepare it" in runs[size]["skipped"][0]["skipped"]
        assert runs[size]["device"] == "cpu" and runs[size]["torch_dtype"] == "float32"
    assert [e["file"] for e in runs["1"]["images"]] == [str(folder / f"shape{i}.png") for i in range(3)]
    for one, two in zip(runs["1"]["images"], runs["2"]["images"]):  # a sample's attack does not depend on its batch
        for a, b in zip(one.pop("attacks"), two.pop("attacks")):  # (the loss up to the float rounding of a batch)
            assert a.pop("loss") == pytest.approx(b.pop("loss"), rel=1e-5)
            assert a.pop("score") == pytest.approx(b.pop("score"), rel=1e-5)
            assert a == b
        assert one == two
    for i in range(3):
        assert np.array_equal(pixels(tmp_path / "out1" / f"shape{i}.png" / "adversarial_k3.png"),
                              pixels(tmp_path / "out2" / f"shape{i}.png" / "adversarial_k3.png"))
    assert "broken.png: skipped" in capsys.readouterr().err


def test_attack_refuses_a_device_this_machine_lacks(tmp_path, images):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["attack", str(images), "--model_name_or_path", str(model_path("classifier")), "--device", "cuda",
                  "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("command", ["attack", "transfer", "train", "demo"])
def test_each_command_help_names_the_command_and_shows_the_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: hf-sparse-attack {command} ")
    assert "(default: the cores available, shared among this machine's processes)" in text
    expected = {"attack": ["(default: 100)", "(default: spgd)"], "transfer": ["(default: 100)", "(default: spgd)"],
                "train": ["(default: sat)", "(default: 20)"], "demo": ["(default: 32)"]}  # --steps, --attack, --loss
    assert all(default in text for default in expected[command])


def test_a_kernel_attack_reports_placements_and_the_pixels_they_changed(images, tmp_path, capsys):
    argv = [str(images / "shape0.png"), "--model_name_or_path", str(model_path("classifier")), "--steps", "10",
            "--k", "2", "--kernel", "square:3", "--stride", "3", "--output_dir", str(tmp_path / "out")]
    summary, lines = run_attack(argv, capsys)
    (result,) = summary["images"][0]["attacks"]
    clean, adversarial = (pixels(tmp_path / "out" / "shape0.png" / name) for name in ("clean.png",
                                                                                       "adversarial_k2.png"))
    changed = int((clean != adversarial).any(axis=-1).sum())
    assert result["pixels_changed"] == changed <= 9 * result["l0"] and result["l0"] <= 2
    assert f"k=2, {result['l0']} placements, {changed} pixels changed: " in lines["shape0.png"]


def test_demo_index_says_what_adversarial_and_k_mean_and_links_each_run(demo):
    root, _ = demo
    text = " ".join(re.sub(r"<[^>]+>", " ", (root / "index.html").read_text()).split())
    for row in json.loads((root / "demo_results.json").read_text())["rows"]:
        assert (f"Adversarial: the same image with at most k = {row['k']} of its pixels changed by the attack "
                f"({row['attack']}), out of the 64 x 64 = 4096 pixels of the model's input ({row['k'] / 4096:.1%})"
                in text)
        assert f'<a href="{row["run"]}/">' in (root / "index.html").read_text()
    assert "ground-truth boxes (dashed green)" in text and "the legend under the grid names the classes" in text


def test_demo_grids_are_shown_at_their_natural_size_in_chromium(demo, tmp_path):
    """Each grid is at most about 1300 pixels wide and shown unscaled in a 1400-pixel-wide window, so its text reads
    as drawn (a figure shrunk to fit would not)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    root, _ = demo
    assert image_checks(root, "i.naturalWidth>0&&i.width===i.naturalWidth", tmp_path, "--window-size=1400,3000") \
        == "111"
    for row in json.loads((root / "demo_results.json").read_text())["rows"]:
        with Image.open(root / row["pictures"][0]) as grid:
            assert 700 < grid.width <= 1340, (row["task"], grid.size)
