"""The flags of the evaluation scripts (transformers' ``run_*_no_trainer.py`` names where they exist).

>>> args = build_parser(None).parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--k", "1", "4"])
>>> args.attack, args.k, args.dataset_split
('spgd', [1, 4], 'validation')
"""

from __future__ import annotations

import argparse

from .attack_flags import add_attack_arguments
from .command_line import THREADS_HELP, Parser, UsageError
from .data import BBOX_FORMATS
from .device_flags import add_device_arguments
from .labels import MAPPINGS
from .task_flags import TASK_OPTION_FLAGS, add_task_arguments

#: Flags that do not change any result: a run may be resumed with other values of them.
RUNTIME_FLAGS = ("output_dir", "overwrite", "num_threads", "stop_after_batches", "debug", "device", "ddp_timeout",
                 "export_dataset", "push_to_hub", "push_model_card")


def build_parser(task: str | None, description: str = "", transfer: bool = False) -> Parser:
    """The shared flags (transformers' ``run_*_no_trainer.py`` names where they exist) plus those of ``task``
    (every task's with ``None``)."""
    parser = Parser(description=description)
    model = parser.add_argument_group("model")
    if transfer:
        model.add_argument("--model_name_or_path", nargs="+", required=True,
                           help="source models: Hub names or local directories; each is attacked white-box")
        model.add_argument("--target_models", nargs="+", help="models the adversarial images are evaluated on "
                           "(default: the source models)")
    else:
        model.add_argument("--model_name_or_path", required=True, help="Hub name or local directory")
    model.add_argument("--trust_remote_code", action="store_true", help="allow model code from the repository")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub name, save_to_disk directory, or image folder with metadata.jsonl")
    data.add_argument("--dataset_config_name", help="the dataset's configuration (Hub datasets with several)")
    data.add_argument("--dataset_split", default="validation", help="the split evaluated (a dataset with one split: "
                      "that one)")
    data.add_argument("--image_column_name", default="image", help="the column of the images")
    if task != "detection":
        data.add_argument("--label_column_name", default="label",
                          help="class id (classification) or label-map image (segmentation) column")
    if task in (None, "classification"):
        data.add_argument("--label_mapping", default="auto", choices=MAPPINGS,
                          help="dataset class -> model label: by name (the dataset's ClassLabel names against "
                          "config.id2label, case and separators ignored), by id, or auto: by name when both have "
                          "names and their ids disagree")
    if task == "detection":
        data.add_argument("--objects_column_name", default="objects", help="the column of the boxes and classes")
        data.add_argument("--bbox_key", default="bbox", help="key of the boxes in the objects column")
        data.add_argument("--category_key", default="category", help="key of the class ids in the objects column")
        data.add_argument("--bbox_format", default="xywh", choices=BBOX_FORMATS, help="COCO xywh or xyxy pixels")
        data.add_argument("--coco_annotation_file", help="COCO json (instead of --dataset_name)")
        data.add_argument("--coco_image_dir", help="directory of the COCO json's file_name entries")
        data.add_argument("--category_mapping", default="auto", choices=MAPPINGS,
                          help="COCO category -> model label: by the category id itself, by name (config.id2label, "
                          "case and separators ignored), or auto: the ids when they fit the model's names, else by "
                          "name")
    data.add_argument("--max_eval_samples", type=int, help="evaluate the first N samples only")
    data.add_argument("--cache_dir", help="datasets cache directory")

    add_attack_arguments(parser.add_argument_group("attack"))
    add_task_arguments(parser.add_argument_group(f"{task} options" if task else "task options"),
                       (task,) if task else tuple(TASK_OPTION_FLAGS))

    run = parser.add_argument_group("run")
    run.add_argument("--per_device_eval_batch_size", type=int, default=8, help="images attacked together per process")
    run.add_argument("--output_dir", required=True, help="results, records and pictures (resumed if unfinished)")
    run.add_argument("--overwrite", action="store_true", help="replace the results of a finished or other run")
    run.add_argument("--save_adversarial", action="store_true",
                     help="save every adversarial image as a lossless PNG under output_dir/adversarial/")
    run.add_argument("--num_pictures", type=int, default=4, help="examples drawn in the pictures")
    run.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    run.add_argument("--num_threads", type=int, help=THREADS_HELP)
    run.add_argument("--stop_after_batches", type=int,
                     help="stop after N batches per process (a time-sliced job); rerun the command to continue")
    if not transfer:
        share = parser.add_argument_group("sharing (see hf_sparse_attack.evaluation.harness.sharing)")
        share.add_argument("--export_dataset", metavar="DIR", help="write the adversarial examples as a datasets "
                           "dataset (save_to_disk; one split k<K> per budget, model-frame images; implies "
                           "--save_adversarial); output_dir/model_card.md is written in any case")
        share.add_argument("--push_to_hub", metavar="REPO_ID", help="push the --export_dataset dataset to this Hub "
                           "dataset repository (checked before the attack: online, logged in)")
        share.add_argument("--push_model_card", metavar="REPO_ID", help="open a pull request on this Hub model "
                           "repository adding the results to its model card's model-index (never overwrites it)")
    add_device_arguments(parser.add_argument_group("device and precision"))
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Value checks argparse cannot express; :class:`UsageError` on the first problem."""
    for name in ("per_device_eval_batch_size", "max_eval_samples", "stop_after_batches", "num_threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value}")
    if args.num_pictures < 0:
        raise UsageError(f"--num_pictures must be >= 0, got {args.num_pictures}")
    coco = getattr(args, "coco_annotation_file", None), getattr(args, "coco_image_dir", None)
    if (coco[0] is None) != (coco[1] is None):
        raise UsageError("--coco_annotation_file and --coco_image_dir go together")
    if (args.dataset_name is None) == (coco[0] is None):
        raise UsageError("pass either --dataset_name or --coco_annotation_file with --coco_image_dir")


def settings(args: argparse.Namespace) -> dict:
    """The flags that decide the results (all but :data:`RUNTIME_FLAGS`): a run resumes only with equal settings."""
    return {key: value for key, value in sorted(vars(args).items()) if key not in RUNTIME_FLAGS}
