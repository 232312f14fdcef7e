"""Sparse adversarial training (sAT or sTRADES with Sparse-PGD) of a Hugging Face image classifier.

    python evaluation/train_sparse_adversarial.py --model_name_or_path MODEL --dataset_name DATA \\
        --output_dir OUT --loss sat --k 10 --steps 20 --num_train_epochs 3
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        evaluation/train_sparse_adversarial.py ...        # several processes (on CPU too, with gloo)

The model comes from :func:`tasks.load_task` and trains in the pixel space of the evaluation: batches are pixels
in ``[0, 1]`` at model resolution (the processor's resize/crop), the normalisation runs inside the forward pass,
and the attack (see :mod:`hf_sparse_attack.training`) perturbs the real pixels with the model in eval mode and its
parameters frozen. Under ``accelerate launch`` each process trains on its own batches and attacks them on the
unwrapped model (no collective inside the attack); gradients are synchronised in the backward pass. Sample ids
are dataset row indices, so a sample's attack does not depend on the number of processes.

Layout of ``output_dir``::

    step_N/                 checkpoint every ``--checkpointing_steps`` steps: the model and processor
                            (``save_pretrained``: it loads by path like a Hub model), ``trainer_state.json`` (the
                            step reached and the per-step history) and ``training_state/`` (optimizer, scheduler
                            and RNG states)
    config.json  model.safetensors  preprocessor_config.json  trainer_state.json  training_state/
                            the trained model and processor, saved as a checkpoint is
    training_curves.png     loss and clean / adversarial training accuracy per step
    all_results.json        the configuration and final numbers; written last, it marks the training as finished

A checkpoint is written into ``.step_N.tmp`` and renamed to ``step_N`` once complete, and the JSON files are
written atomically (:func:`evaluation.harness.records.write_json`), so a run killed at any moment leaves no partial
checkpoint and, killed during the final save, no ``all_results.json``. ``--resume_from_checkpoint OUT/step_N``
(or ``latest``, the highest ``step_N`` in ``output_dir``) continues as if never interrupted, given the same flags
and number of processes. An ``output_dir`` that holds outputs of a previous training is refused unless
``--resume_from_checkpoint`` or ``--overwrite`` is given; ``--overwrite`` removes those outputs (the names above,
nothing else in the directory). A bad model (its config is read first), an output directory that cannot be
written or lacks free space, and a bad dataset are reported, in that order, as one error line before the weights
load and before ``--overwrite`` removes anything.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hf_sparse_attack.evaluation.harness.command_line import THREADS_HELP, Parser, run_script
from hf_sparse_attack.evaluation.harness.device_flags import add_device_arguments
from hf_sparse_attack.vocabulary import TRAINING_GRADIENTS, TRAINING_LOSSES


def build_parser() -> Parser:
    """The flags: transformers' ``run_image_classification_no_trainer.py`` names, data flags as the eval scripts."""
    parser = Parser(description=__doc__)
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", required=True, help="Hub name or directory of an image classifier")
    model.add_argument("--trust_remote_code", action="store_true", help="allow model code from the repository")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", required=True,
                      help="Hub name, save_to_disk directory, or image folder with metadata.jsonl")
    data.add_argument("--dataset_config_name", help="the dataset's configuration (Hub datasets with several)")
    data.add_argument("--dataset_split", default="train", help="the split trained on")
    data.add_argument("--image_column_name", default="image", help="the column of the images")
    data.add_argument("--label_column_name", default="label", help="class id column")
    data.add_argument("--max_train_samples", type=int, help="train on the first N samples only")
    data.add_argument("--cache_dir", help="datasets cache directory")
    attack = parser.add_argument_group("sparse adversarial training")
    attack.add_argument("--loss", choices=TRAINING_LOSSES, default="sat", help="sat: sparse adversarial training; "
                        "strades: sparse TRADES")
    attack.add_argument("--beta", type=float, default=6.0, help="TRADES weight of the KL term (--loss strades)")
    attack.add_argument("--k", type=int, default=10, help="pixel budget of the training attack")
    attack.add_argument("--steps", type=int, default=20, help="sPGD iterations per batch")
    attack.add_argument("--patience", type=int, default=10, help="sPGD mask restart patience")
    attack.add_argument("--gradient", choices=TRAINING_GRADIENTS, default="random",
                        help="per-batch choice between the unprojected and projected sPGD gradients")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--per_device_train_batch_size", type=int, default=8, help="images per step per process")
    optim.add_argument("--learning_rate", type=float, default=5e-5, help="AdamW learning rate")
    optim.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    optim.add_argument("--num_train_epochs", type=int, default=3, help="passes over the data")
    optim.add_argument("--max_train_steps", type=int, help="overrides --num_train_epochs")
    optim.add_argument("--lr_scheduler_type", default="linear",
                       help="a transformers SchedulerType: linear (default), cosine, constant, ...")
    optim.add_argument("--num_warmup_steps", type=int, default=0, help="learning-rate warm-up steps")
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", required=True, help="checkpoints, the trained model and all_results.json")
    run.add_argument("--checkpointing_steps", type=int, help="save a checkpoint every N steps")
    previous = run.add_mutually_exclusive_group()
    previous.add_argument("--resume_from_checkpoint", help="a checkpoint directory, or 'latest' (in --output_dir)")
    previous.add_argument("--overwrite", action="store_true",
                          help="remove the outputs of a previous training from --output_dir (other files stay)")
    run.add_argument("--seed", type=int, default=0, help="seed of the data order, dropout and attacks")
    run.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    run.add_argument("--num_threads", type=int, help=THREADS_HELP)
    add_device_arguments(parser.add_argument_group("device and precision"))
    return parser


def train(args: argparse.Namespace) -> dict:
    """Run the training of the parsed flags ``args`` (:func:`.harness.adversarial_training.train`)."""
    from hf_sparse_attack.evaluation.harness.adversarial_training import train as run_training

    return run_training(args)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the training; a usage, data or model problem is one line on stderr and exit code 2."""
    return run_script(build_parser(), train, argv)


if __name__ == "__main__":
    main()
