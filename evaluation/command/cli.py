"""``hf-sparse-attack``: sparse (L0) adversarial attacks on Hugging Face vision models, from the command line.

commands:
  attack    attack one image file or a folder of images: adversarial PNGs, perturbation maps, a JSON summary
  eval      evaluate robustness on a dataset with the evaluation script of the model's task
  transfer  transferability matrix between models (evaluation/eval_transfer.py)
  train     sparse adversarial training of a classifier (evaluation/train_sparse_adversarial.py)
  demo      the three tasks on the embedded models and generated data, offline, in about a minute on 2 CPU cores

Run ``hf-sparse-attack COMMAND --help`` for a command's flags. Errors are one line on stderr with exit code 2;
``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hf_sparse_attack.evaluation.harness.attack_flags import add_attack_arguments
from hf_sparse_attack.evaluation.harness.command_line import (
    THREADS_HELP,
    Parser,
    UsageError,
    debug_mode,
    debugging,
    default_threads,
    report,
)
from hf_sparse_attack.evaluation.harness.device_flags import add_device_arguments
from hf_sparse_attack.evaluation.harness.task_flags import add_task_arguments, task_options

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SUMMARY = "summary.json"


class CliError(UsageError):
    """A problem of the command line tool itself (unknown command, no images)."""


# ------------------------------------------------------------------------------------------------------ attack
def attack_parser() -> Parser:
    """``attack``'s flags; the attack flags are the evaluation scripts' own (one vocabulary)."""
    parser = Parser(prog="hf-sparse-attack attack",
                    description="Attack one image file or every image of a folder. The target of each image is the "
                    "model's clean prediction (class, detections or label map): the attack tries to change it.\n\n"
                    "Writes into --output_dir, per image file NAME: NAME/clean.png (the pixels the model sees, at its "
                    "resolution), NAME/adversarial_kK.png (lossless) and NAME/perturbation_kK.png (perturbed pixels "
                    "in white), and summary.json (per image and k: success, L0, iterations, loss, predictions, and "
                    "what changed in the task's terms: the class; each object's score before and after; the "
                    "fraction of pixels whose class changed). An image where the detector finds nothing to remove "
                    "is reported as such and not attacked.\n\n"
                    "example:\n  hf-sparse-attack attack photo.jpg --model_name_or_path microsoft/resnet-50 "
                    "--k 20 --output_dir adv")
    parser.add_argument("inputs", help="an image file or a folder of images (png, jpg, bmp, webp, tif)")
    parser.add_argument("--model_name_or_path", required=True, help="Hub name or local directory of the model")
    parser.add_argument("--output_dir", required=True, help="where the PNGs and summary.json are written")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow model code from the repository")
    parser.add_argument("--num_threads", type=int, help=THREADS_HELP)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir, replacing "
                        "an earlier attack's outputs there (other files stay)")
    add_attack_arguments(parser.add_argument_group("attack"))  # shared with the evaluation scripts
    add_task_arguments(parser.add_argument_group("task options (each applies to the tasks it names only; "
                                                 "default: the task's own)"))
    run = parser.add_argument_group("device and precision")
    run.add_argument("--per_device_batch_size", type=int, default=8, help="images attacked together")
    add_device_arguments(run, processes=False)
    return parser


def previous_outputs(out: Path, files: list[Path]) -> list[Path]:
    """What an earlier ``attack`` wrote in ``out`` and this one would mix with: its ``summary.json``, the folders
    of the images it lists, and the folders of ``files``."""
    names = {file.name for file in files}
    try:
        names |= {Path(entry["file"]).name for entry in json.loads((out / SUMMARY).read_text())["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no summary, or an unreadable one: only the folders of this run's files
    return [out / SUMMARY, *(out / name for name in sorted(names) if (out / name).is_dir())]


def open_output_dir(out: Path, files: list[Path], overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then remove an earlier attack's outputs; probe writing."""
    from hf_sparse_attack.evaluation.harness.records import RunDirectory, guard_output_dir, remove_outputs

    if guard_output_dir(out, lambda p: list(p.iterdir()), overwrite, lambda found: "is not empty; choose another "
                        "--output_dir or pass --overwrite (it replaces an earlier attack's outputs, nothing else)"):
        remove_outputs(previous_outputs(out, files))
    RunDirectory(out, {}).probe()


def image_files(inputs: str) -> list[Path]:
    """The image file ``inputs``, or the images of the folder ``inputs`` in name order."""
    path = Path(inputs)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CliError(f"{inputs!r} is neither an image file nor a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CliError(f"folder {inputs!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def label_name(objective, label: int) -> str:
    """The name of class ``label`` (the config's ``id2label``; the number when it has none)."""
    return objective.model.config.id2label.get(label, str(label))


def prediction(objective, x, targets) -> object:
    """A JSON summary of the model's prediction on ``x`` (one image): the class, the detections from
    ``target_threshold``, or the classes present."""
    if objective.task == "classification":
        label = int(objective.predict(x)[0])
        return {"class": label, "name": label_name(objective, label)}
    if objective.task == "detection":
        threshold = objective.options.target_threshold
        (found,) = objective.predict(x, [t["size"] for t in targets], score_threshold=threshold)
        return {"boxes": found["boxes"].tolist(), "labels": found["labels"].tolist(),
                "scores": found["scores"].tolist()}
    present = objective.predict(x)[0].unique().tolist()
    return {"classes_present": present, "names": [label_name(objective, c) for c in present]}


def nothing_to_attack(objective, targets) -> str | None:
    """Why the image has nothing to attack (the detector finds no object to remove), else ``None``."""
    if objective.task == "detection" and len(targets[0]["labels"]) == 0:
        return (f"the detector finds no object scoring >= {objective.options.target_threshold} on the clean image "
                "(--target_threshold)")
    return None


def detection_objects(objective, x, adversarial, targets) -> list[dict]:
    """Per target (a clean detection): label, name, box (pixel xyxy in clean.png), and the highest score of a
    detection that still finds it (``objective.found``: its label, IoU >= ``iou_threshold``, score >=
    ``score_threshold``; 0 for none) on the clean and the adversarial image; ``removed`` when none finds it any more."""
    clean, attacked = (objective.found(v, targets)[0].tolist() for v in (x, adversarial))
    return [{"label": label, "name": label_name(objective, label), "box": box, "clean_score": before,
             "adversarial_score": after, "removed": after == 0}
            for label, box, before, after in zip(targets[0]["labels"].tolist(), targets[0]["boxes"].tolist(),
                                                 clean, attacked)]


def change(objective, x, adversarial, success: bool, targets, clean: dict, attacked: dict) -> dict:
    """What the attack changed in the task's terms (fields of the attack's summary entry) for one image ``x``
    ``(1, C, H, W)``; ``report`` says it in words, as the console line does. ``clean`` and ``attacked`` are the
    :func:`prediction` of either image."""
    fooled = "fooled" if success else "not fooled"
    if objective.task == "classification":
        return {"report": f"{fooled}: {clean['name']} -> {attacked['name']}"}
    if objective.task == "detection":
        objects = detection_objects(objective, x, adversarial, targets)
        removed = sum(o["removed"] for o in objects)
        scores = ", ".join(f"{o['name']} {o['clean_score']:.2f} -> {o['adversarial_score']:.2f}" for o in objects)
        return {"objects": objects, "objects_removed": removed,
                "report": f"{removed} of {len(objects)} objects removed ({scores})"}
    labelled = targets[0] != objective.options.ignore_index
    moved = (objective.predict(x)[0] != objective.predict(adversarial)[0]) & labelled
    fraction = moved.sum().item() / max(labelled.sum().item(), 1)
    return {"pixels_changed_class": fraction, "report": f"{fooled}: {fraction:.1%} of labelled pixels changed "
            f"class (classes {', '.join(clean['names'])} -> {', '.join(attacked['names'])})"}


def read_images(objective, files: list[Path]) -> tuple[list, list[dict]]:
    """``[(file, x (1, C, H, W), targets)]`` for the files the model's processor takes, and a skipped entry (with
    the reason) for each other one."""
    from PIL import Image

    prepared, skipped = [], []
    for file in files:
        try:
            with Image.open(file) as image:
                prepared.append((file, *objective.prepare([image.convert("RGB")])))
        except (OSError, ValueError) as err:
            skipped.append({"file": str(file), "skipped": f"cannot read or prepare it: {err}"})
    return prepared, skipped


def image_batches(prepared: list, size: int) -> list[list]:
    """Consecutive groups of at most ``size`` prepared images of one shape (a detection batch of several shapes
    would be padded, and the attack could spend budget on the padding)."""
    groups: list[list] = []
    for item in prepared:
        if groups and len(groups[-1]) < size and groups[-1][-1][1].shape == item[1].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def stack(items: list) -> tuple:
    """One batch ``(x, targets)`` from prepared single images."""
    import torch

    x = torch.cat([item[1] for item in items])
    parts = [item[2] for item in items]
    return x, torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [t for part in parts for t in part]


def budget_used(entry: dict, attacks: list) -> str:
    """``L0 5``, or with a kernel ``3 placements, 27 pixels changed``, for the console line."""
    if next(a for a in attacks if a.k == entry["k"]).kernel is None:
        return f"L0 {entry['l0']}"
    return f"{entry['l0']} placements, {entry['pixels_changed']} pixels changed"


def attack_images(objective, attacks: list, prepared: list, files: list[Path], args: argparse.Namespace, out: Path,
                  bar) -> list[dict]:
    """Attack the prepared images in batches of ``--per_device_batch_size``; their summary entries. An image's
    attack is seeded by its position among ``files`` (the same whatever the batch size or the files skipped)."""
    from hf_sparse_attack.evaluation.harness.batch import attack_fields
    from hf_sparse_attack.evaluation.harness.device_flags import autocast
    from hf_sparse_attack.evaluation.harness.pictures import perturbed_pixels
    from hf_sparse_attack.evaluation.harness.progress import AttackProgress, attack_length
    from hf_sparse_attack.evaluation.harness.records import save_png
    from hf_sparse_attack.objective import select

    entries, watched = [], AttackProgress(objective, bar)
    position = {file: i for i, file in enumerate(files)}
    for group in image_batches(prepared, args.per_device_batch_size):
        x, targets = stack(group)
        ids = [position[item[0]] for item in group]
        todo = []
        for i, (file, *_) in enumerate(group):
            mine = select(targets, [i])
            save_png(out / file.name / "clean.png", x[i])
            entry = {"file": str(file), "clean_prediction": prediction(objective, x[i : i + 1], mine), "attacks": []}
            entries.append(entry)
            if reason := nothing_to_attack(objective, mine):
                entry["nothing_to_attack"] = reason
                bar.write(f"{file}: nothing to attack, {reason}")
                bar.update(sum(attack_length(a) for a in attacks))
            else:
                todo.append(i)
        if not todo:
            continue
        x, targets, ids = x[todo], select(targets, todo), [ids[i] for i in todo]
        for attack in attacks:
            with autocast(objective.device, args.mixed_precision), watched.running(attack):
                result = attack(watched, x, targets, ids=ids)
            for j, i in enumerate(todo):
                entry, name = entries[len(entries) - len(group) + i], group[i][0].name
                mine, adversarial = select(targets, [j]), result.adversarial[j : j + 1]
                save_png(out / name / f"adversarial_k{attack.k}.png", adversarial[0])
                mask = perturbed_pixels(x[j], adversarial[0]).to(dtype=bool).cpu().numpy().astype("uint8") * 255
                save_png(out / name / f"perturbation_k{attack.k}.png", mask)
                attacked = prediction(objective, adversarial, mine)
                entry["attacks"].append({
                    "k": attack.k, **attack_fields(result, j), "adversarial_prediction": attacked,
                    **change(objective, x[j : j + 1], adversarial, bool(result.success[j]), mine,
                             entry["clean_prediction"], attacked),
                    "adversarial": f"{name}/adversarial_k{attack.k}.png",
                    "perturbation": f"{name}/perturbation_k{attack.k}.png",
                })
        for i in todo:
            entry = entries[len(entries) - len(group) + i]
            bar.write(f"{entry['file']}: " + "; ".join(f"k={a['k']}, {budget_used(a, attacks)}: {a['report']}"
                                                       for a in entry["attacks"]))
    return entries


def run_attack(args: argparse.Namespace) -> dict:
    """Attack every image of ``args.inputs`` with each config; write the PNGs and the summary; return it."""
    import dataclasses

    import torch
    from tqdm.auto import tqdm

    from hf_sparse_attack import tasks
    from hf_sparse_attack.config import to_dict
    from hf_sparse_attack.evaluation.harness.attack_configs import attack_configs
    from hf_sparse_attack.evaluation.harness.batch import check_budgets
    from hf_sparse_attack.evaluation.harness.device_flags import torch_dtype
    from hf_sparse_attack.evaluation.harness.progress import attack_length
    from hf_sparse_attack.evaluation.harness.records import write_json

    args.num_threads = args.num_threads or default_threads()
    for name in ("num_threads", "per_device_batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    attacks = attack_configs(args)
    files = image_files(args.inputs)
    device = attack_device(args.device)
    args.mixed_precision = args.mixed_precision or "no"
    options = task_options(args)  # an option the model's task does not take is a TaskLoadError naming both
    check_budgets(attacks, tasks.check_model(args.model_name_or_path, trust_remote_code=args.trust_remote_code,
                                             **options))
    out = Path(args.output_dir)
    open_output_dir(out, files, args.overwrite)
    torch.set_num_threads(args.num_threads)
    objective = tasks.load_task(args.model_name_or_path, device=device, dtype=torch_dtype(args),
                                trust_remote_code=args.trust_remote_code, **options)
    prepared, skipped = read_images(objective, files)
    for entry in skipped:
        print(f"{entry['file']}: skipped, {entry['skipped']}", file=sys.stderr)
    if not prepared:
        raise CliError(f"none of the {len(files)} images could be read ({skipped[0]['skipped']})")
    print(f"{args.model_name_or_path} ({objective.task}) on {device}, weights {args.torch_dtype}, mixed precision "
          f"{args.mixed_precision}: {len(prepared)} images, batches of {args.per_device_batch_size}")
    passes = sum(attack_length(a) for a in attacks)
    with tqdm(total=len(prepared) * passes, desc="attacking", unit="pass") as bar:
        images = attack_images(objective, attacks, prepared, files, args, out, bar)
    summary = {"model_name_or_path": args.model_name_or_path, "task": objective.task,
               "task_options": dataclasses.asdict(objective.options), "attacks": [to_dict(a) for a in attacks],
               "device": str(device), "torch_dtype": args.torch_dtype, "mixed_precision": args.mixed_precision,
               "images": images, "skipped": skipped}
    write_json(out / SUMMARY, summary)
    return summary


def attack_device(name: str):
    """``--device`` of ``attack``: auto (CUDA when available), cpu, cuda or cuda:N; :class:`CliError` otherwise."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def attack_command(argv: Sequence[str]) -> dict:
    """``hf-sparse-attack attack``."""
    from hf_sparse_attack.evaluation.harness.command_line import run_script

    return run_script(attack_parser(), run_attack, argv)


# ------------------------------------------------------------------------------------------------ dispatchers
def eval_command(argv: Sequence[str]) -> object:
    """``hf-sparse-attack eval``: the evaluation script of the model's task, with all the arguments."""
    parser = Parser(prog="hf-sparse-attack eval",
                    description="Evaluate a model's robustness on a dataset: reads the model's config, then runs "
                    "the evaluation script of its task (evaluation/eval_classification.py, eval_detection.py or "
                    "eval_segmentation.py) with every argument given here.\n\nFor the full list of the task's "
                    "flags: hf-sparse-attack eval --model_name_or_path MODEL --help\n\nexample:\n  hf-sparse-attack "
                    "eval --model_name_or_path microsoft/resnet-50 --dataset_name ./val --k 10 20 --output_dir runs/r50")
    parser.add_argument("--model_name_or_path", required=True, help="Hub name or local directory of the model")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow model code from the repository")
    model = Parser(add_help=False)
    model.add_argument("--model_name_or_path")
    model.add_argument("--trust_remote_code", action="store_true")
    known = model.parse_known_args(argv)[0]
    if known.model_name_or_path is None:
        parser.parse_args(argv)  # the help, or the error that the model is missing
    from hf_sparse_attack.tasks import infer_task

    task = infer_task(known.model_name_or_path, known.trust_remote_code)
    return script_command(f"hf_sparse_attack.evaluation.eval_{task}", "eval")(argv)


def script_command(module: str, name: str) -> Callable[[Sequence[str]], object]:
    """The command ``name``: hands every argument to ``module``'s ``main``, whose usage lines then say
    ``hf-sparse-attack NAME`` (argparse takes the program name from ``sys.argv[0]``)."""

    def command(argv: Sequence[str]) -> object:
        import importlib

        program, sys.argv[0] = sys.argv[0], f"hf-sparse-attack {name}"
        try:
            return importlib.import_module(module).main(argv)
        finally:
            sys.argv[0] = program

    return command


COMMANDS: dict[str, Callable[[Sequence[str]], object]] = {
    "attack": attack_command,
    "eval": eval_command,
    "transfer": script_command("hf_sparse_attack.evaluation.eval_transfer", "transfer"),
    "train": script_command("hf_sparse_attack.evaluation.train_sparse_adversarial", "train"),
    "demo": script_command("hf_sparse_attack.evaluation.command.demo", "demo"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-sparse-attack`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code 0, or raises
    ``SystemExit`` after one line on stderr: 2 for bad input, 1 for a bug (``--debug``: the traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: hf-sparse-attack [--debug] {{{','.join(COMMANDS)}}} ...\n\n{__doc__.strip()}",
              file=sys.stdout if argv else sys.stderr)
        if not argv:
            raise SystemExit(2)
        return 0
    command, rest = argv[0], argv[1:]
    with debug_mode(debug):
        try:
            if command not in COMMANDS:
                raise CliError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)} (see --help)")
            COMMANDS[command](rest)
            return 0
        except Exception as err:
            if debugging():
                raise
            raise SystemExit(report("hf-sparse-attack", err)) from None
