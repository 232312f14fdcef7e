"""Robustness of an image classifier to sparse attacks on a dataset: clean and robust accuracy, attack success rate,
mean and median L0 of the successful examples, per budget k.

    python evaluation/eval_classification.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name ./imagenet-val-1k --dataset_split validation --max_eval_samples 500 \\
        --attack spgd --k 10 20 --steps 300 --per_device_eval_batch_size 16 --output_dir runs/vit-spgd
    accelerate launch evaluation/eval_classification.py ...same flags...

Records (``records.jsonl``): ``id``, ``k``, ``success``, ``l0``, ``iterations``, ``loss``, ``label``,
``clean_prediction``, ``adversarial_prediction``. The flags: :mod:`.harness.script_flags`; the run:
:mod:`.harness.loop`.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_sparse_attack.evaluation.harness.entry import evaluation_main


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the evaluation; returns the results on the main process (see :func:`~.harness.loop.run_evaluation`)."""
    return evaluation_main("classification", __doc__, argv)


if __name__ == "__main__":
    main()
