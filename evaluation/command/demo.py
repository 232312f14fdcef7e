"""The whole product in one command, offline and on CPU: the three tasks on the embedded models and generated shapes.

    hf-sparse-attack demo                          # about a minute on 2 CPU cores (46 s measured)
    hf-sparse-attack demo --output_dir /tmp/demo --samples 8 --overwrite

For classification, detection and segmentation in turn, the demo writes a small held-out dataset of generated
shapes (:mod:`evaluation.testdata.shapes`, the seed the embedded models never trained on) as a Hugging Face
``save_to_disk`` folder, runs the task's evaluation script on the embedded model (:mod:`evaluation.embedded`)
with Sparse-PGD at the task's default budget k, and reads the numbers back from the run's ``all_results.json``.
It prints a table of clean against adversarial accuracy / mAP@50 / mIoU and writes into the output folder:

    demo_results.json   the table's numbers
    index.html          the example grids of the runs, with captions (open it in a browser)
    data/<task>/        the generated datasets
    runs/<task>/        each evaluation's output folder (all_results.json, records, pictures, examples)
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from hf_sparse_attack.evaluation import eval_classification, eval_detection, eval_segmentation
from hf_sparse_attack.evaluation.embedded import model_path
from hf_sparse_attack.evaluation.harness.command_line import (
    THREADS_HELP,
    Parser,
    UsageError,
    default_threads,
    run_script,
)
from hf_sparse_attack.evaluation.harness.device_flags import add_device_arguments

RESULTS = "demo_results.json"
INDEX = "index.html"


@dataclass(frozen=True)
class DemoTask:
    """One task of the demo: its embedded model, script, budget, metric and extra script flags."""

    task: str
    model: str
    script: ModuleType
    k: int
    steps: int
    metric: str  # the metric's name in the table
    clean_key: str  # keys of all_results.json's metrics
    adversarial_key: str
    flags: tuple[str, ...] = ()


#: The demo's runs; k is chosen so that the drop is clear at 64x64 within the time budget.
TASKS = (
    DemoTask("classification", "classifier", eval_classification, k=10, steps=50, metric="accuracy",
             clean_key="clean_accuracy", adversarial_key="robust_accuracy"),
    DemoTask("detection", "detector", eval_detection, k=40, steps=30, metric="mAP@50",
             clean_key="map50_clean", adversarial_key="map50_adversarial",
             flags=("--bbox_format", "xyxy")),
    DemoTask("segmentation", "segmenter", eval_segmentation, k=40, steps=30, metric="mIoU",
             clean_key="miou_clean", adversarial_key="miou_adversarial"),
)


#: The most generated images per task the demo accepts (a few minutes of CPU).
MAX_SAMPLES = 1000


def write_dataset(task: str, samples: int, path: Path) -> None:
    """``samples`` generated held-out images of ``task`` as a ``save_to_disk`` dataset (split ``validation``)."""
    import datasets
    from PIL import Image

    from hf_sparse_attack.evaluation.testdata.shapes import TEST_SEED, classification_batch, shapes_batch

    if task == "classification":
        images, labels = classification_batch(samples, seed=TEST_SEED)
        columns = {"image": images, "label": labels.tolist()}
        features = {"image": datasets.Image(), "label": datasets.Value("int64")}
    else:
        images, annotations = shapes_batch(samples, seed=TEST_SEED)
        if task == "detection":
            columns = {"image": images, "objects": [{"bbox": a["boxes"].tolist(), "category": a["labels"].tolist()}
                                                    for a in annotations]}
            features = {"image": datasets.Image(), "objects": {
                "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                "category": datasets.Sequence(datasets.Value("int64"))}}
        else:
            columns = {"image": images, "label": [Image.fromarray(a["label_map"], mode="L") for a in annotations]}
            features = {"image": datasets.Image(), "label": datasets.Image()}
    split = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    datasets.DatasetDict({"validation": split}).save_to_disk(str(path))


def run_task(demo: DemoTask, args: argparse.Namespace, root: Path) -> dict:
    """Write the task's data, run its evaluation script in-process; its table row from ``all_results.json``."""
    from hf_sparse_attack.evaluation.harness.records import RESULTS_FILE

    data, output = root / "data" / demo.task, root / "runs" / demo.task
    if data.exists():
        shutil.rmtree(data)
    write_dataset(demo.task, args.samples, data)
    precision = ["--device", args.device, "--torch_dtype", args.torch_dtype, "--ddp_timeout", str(args.ddp_timeout)]
    if args.mixed_precision:
        precision += ["--mixed_precision", args.mixed_precision]
    argv = ["--model_name_or_path", str(model_path(demo.model)), "--dataset_name", str(data), "--attack", "spgd",
            "--k", str(demo.k), "--steps", str(demo.steps), "--per_device_eval_batch_size", "16",
            "--num_threads", str(args.num_threads), "--output_dir", str(output), *precision, *demo.flags]
    demo.script.main(argv + ["--overwrite"] if args.overwrite else argv)
    results = json.loads((output / RESULTS_FILE).read_text())
    (entry,) = results["results"]
    return {
        "task": demo.task,
        "model": demo.model,
        "samples": results["samples"]["evaluated"],
        "metric": demo.metric,
        "clean": entry["metrics"][demo.clean_key],
        "adversarial": entry["metrics"][demo.adversarial_key],
        "k": entry["k"],
        "attack": f"sPGD, {demo.steps} steps",
        "time_seconds": round(results["time_seconds"], 1),
        "run": f"runs/{demo.task}",
        "pictures": [f"runs/{demo.task}/{p}" for p in results["pictures"]],
    }


def format_table(rows: Sequence[dict]) -> str:
    """The rows as an aligned text table (numbers with 3 decimals, as stored rounded in ``demo_results.json``).

    >>> print(format_table([{"task": "classification", "model": "classifier", "samples": 2, "metric": "accuracy",
    ...                      "clean": 1.0, "adversarial": 0.5, "k": 10, "time_seconds": 3.2}]))
    task            model       samples  metric    clean  adversarial  k   time (s)
    classification  classifier  2        accuracy  1.000  0.500        10  3.2
    """
    header = ("task", "model", "samples", "metric", "clean", "adversarial", "k", "time (s)")
    lines = [header] + [(r["task"], r["model"], str(r["samples"]), r["metric"], f"{r['clean']:.3f}",
                         f"{r['adversarial']:.3f}", str(r["k"]), f"{r['time_seconds']:.1f}") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


#: What the columns of each task's example grid show.
GRID_COLUMNS = {
    "classification": "the clean image with the class the model predicts (and the true label), the adversarial "
                      "image with the class it predicts now, and the perturbed pixels (black)",
    "detection": "the clean image with its ground-truth boxes (dashed green) and the model's detections from the "
                 "score in the title (red), the adversarial image likewise with the verdict, and the perturbed pixels "
                 "(black). The verdict counts an object as still detected the way mAP does: a detection of its class "
                 "overlapping it enough, at any score mAP ranks, however low that score is to draw",
    "segmentation": "the clean image, its ground-truth map, the clean prediction, the adversarial image, its "
                    "prediction (with the share of the labelled pixels whose class changed) and the perturbed pixels "
                    "(black); the legend under the grid names the classes of the colours",
}


def caption(path: Path, task: str) -> str:
    """What a run's grid of examples ``pictures/examples_k<k>.png`` of ``task`` shows.

    >>> caption(Path("runs/classification/pictures/examples_k10.png"), "classification")[:49]
    'Examples at k=10, one per row: the clean image wi'
    """
    return f"Examples at k={path.stem.rsplit('_k', 1)[1]}, one per row: {GRID_COLUMNS[task]}."


def input_size(run: Path) -> tuple[int, int]:
    """``(height, width)`` of the model's input: that of the run's first clean example (``examples/<id>.png``)."""
    from PIL import Image

    first = min((p for p in (run / "examples").glob("*.png") if "_k" not in p.stem), key=lambda p: int(p.stem))
    with Image.open(first) as image:
        return image.height, image.width


def section(root: Path, row: dict) -> str:
    """A task's part of ``index.html``: what adversarial and k mean here, its grids, and a link to its run."""
    height, width = input_size(root / row["run"])
    pixels = height * width
    words = (f"Adversarial: the same image with at most k = {row['k']} of its pixels changed by the attack "
             f"({html.escape(row['attack'])}), out of the {height} x {width} = {pixels} pixels of the model's input "
             f"({row['k'] / pixels:.1%}); a changed pixel may change in every colour channel, by any amount. Clean "
             f"{row['metric']} {row['clean']:.3f}, adversarial {row['metric']} {row['adversarial']:.3f}, over "
             f"{row['samples']} images.")
    figures = "".join(
        f'<figure><img src="{html.escape(p)}" alt="{html.escape(caption(Path(p), row["task"]))}">'
        f"<figcaption>{html.escape(caption(Path(p), row['task']))}</figcaption></figure>" for p in row["pictures"])
    link = html.escape(row["run"] + "/")
    return (f"<h2>{row['task']}: {row['model']}, {html.escape(row['attack'])}, k={row['k']}</h2><p>{words}</p>"
            f'{figures}<p>Every file of the run (results, records, each example\'s clean and adversarial PNG at the '
            f'model\'s resolution in <code>examples/</code>): <a href="{link}">{link}</a></p>')


def write_index(root: Path, rows: Sequence[dict]) -> None:
    """``index.html``: the table, then per task a sentence on its budget, its example grids (each shown at its
    natural size, so that its text reads as drawn) with captions, and a link to the run's folder (relative paths)."""
    from hf_sparse_attack.evaluation.harness.records import atomic_write

    cells = "".join(
        f"<tr><td>{r['task']}</td><td>{r['model']}</td><td>{r['samples']}</td><td>{r['metric']}</td>"
        f"<td>{r['clean']:.3f}</td><td>{r['adversarial']:.3f}</td><td>{r['k']}</td><td>{r['time_seconds']}</td></tr>"
        for r in rows)
    page = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>hf-sparse-attack demo</title><style>"
        "body{font-family:sans-serif;margin:1.5em;line-height:1.4}p,figcaption{max-width:60em}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:4px 8px}figure{margin:1em 0}"
        "figure img{display:block;max-width:100%;height:auto}figcaption{margin-top:.4em}</style></head><body>"
        "<h1>hf-sparse-attack demo</h1><p>The embedded models (small, trained on generated shapes) on generated "
        "held-out images. Clean: the image as the model's processor prepares it. Adversarial: the same image after "
        "Sparse-PGD changed at most k of its pixels, to make the model fail; the metric is measured on both.</p>"
        "<table><tr><th>task</th><th>model</th><th>samples</th><th>metric</th><th>clean</th><th>adversarial</th>"
        f"<th>k</th><th>time (s)</th></tr>{cells}</table>{''.join(section(root, row) for row in rows)}</body></html>\n")
    atomic_write(root / INDEX, page)


def run_demo(args: argparse.Namespace) -> dict:
    """Run every task, print the table, write ``demo_results.json`` and ``index.html``; returns the results."""
    from hf_sparse_attack.evaluation.harness.records import OutputDirError, RunDirectory, write_json

    if not 1 <= args.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be an integer in [1, {MAX_SAMPLES}], got {args.samples} (the demo is a "
                         "showcase; evaluate larger sets with hf-sparse-attack eval)")
    args.num_threads = args.num_threads or default_threads()
    if args.num_threads < 1:
        raise UsageError(f"--num_threads must be a positive integer, got {args.num_threads}")
    root = Path(args.output_dir)
    if root.exists() and not root.is_dir():
        raise OutputDirError(f"output dir {str(root)!r} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not args.overwrite:
        raise OutputDirError(f"output dir {str(root)!r} is not empty; choose another --output_dir or pass --overwrite")
    RunDirectory(root, {}).probe()  # writable, with free space, before any data is generated
    started = time.time()
    rows = [run_task(demo, args, root) for demo in TASKS]
    for row in rows:
        row["clean"], row["adversarial"] = round(row["clean"], 3), round(row["adversarial"], 3)
    results = {"rows": rows, "total_seconds": round(time.time() - started, 1)}
    write_json(root / RESULTS, results)
    write_index(root, rows)
    print(f"\n{format_table(rows)}\n\ntotal {results['total_seconds']:.1f} s; results in {root / RESULTS}, "
          f"pictures in {root / INDEX}")
    return results


def build_parser() -> Parser:
    """The demo's flags."""
    parser = Parser(prog="hf-sparse-attack demo", description=__doc__)
    parser.add_argument("--output_dir", default="./hf-sparse-attack-demo", help="where everything is written "
                        "(default ./hf-sparse-attack-demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    parser.add_argument("--samples", type=int, default=32,
                        help=f"generated images per task, 1 to {MAX_SAMPLES}")
    parser.add_argument("--num_threads", type=int, help=THREADS_HELP)
    add_device_arguments(parser.add_argument_group("device and precision (passed to each evaluation)"))
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the demo; returns ``demo_results.json``'s content."""
    return run_script(build_parser(), run_demo, argv)


if __name__ == "__main__":
    main()
