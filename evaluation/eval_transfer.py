"""Transferability matrix: adversarial examples crafted white-box on each source model, evaluated on every target.

    python evaluation/eval_transfer.py --task classification \\
        --model_name_or_path google/vit-base-patch16-224 microsoft/resnet-50 \\
        --dataset_name ./imagenet-val-1k --max_eval_samples 200 --attack spgd --k 20 --steps 300 \\
        --output_dir runs/transfer
    accelerate launch evaluation/eval_transfer.py ...same flags...

Rows are the source models (``--model_name_or_path``, each attacked), columns the target models
(``--target_models``, default the sources). A cell holds the attack success rate on the target among the samples
the target classifies correctly (classification), the mAP drop (detection) or the mIoU drop (segmentation); the
diagonal is the white-box result. Off the diagonal, images are resized to the target's input resolution by its
image processor (see :mod:`evaluation.harness.transfer`; ``all_results.json`` says so in ``note``). The task's flags are
those of its evaluation script.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_sparse_attack.evaluation.harness.entry import transfer_main


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the transfer evaluation; returns the results on the main process (see :mod:`.harness.transfer`)."""
    return transfer_main(__doc__, argv)


if __name__ == "__main__":
    main()
