"""Robustness of a semantic segmentation model (SegFormer family) to sparse attacks: mIoU and pixel accuracy on
clean and adversarial images and the drop, per budget k.

    python evaluation/eval_segmentation.py --model_name_or_path nvidia/segformer-b0-finetuned-ade-512-512 \\
        --dataset_name ./ade20k-val --dataset_split validation --label_column_name label --max_eval_samples 100 \\
        --attack spgd --k 200 --steps 100 --adv_threshold 0.9 --output_dir runs/segformer
    accelerate launch evaluation/eval_segmentation.py ...same flags...

Metrics are computed on the original image size (the logits resized bilinearly to it, then the argmax: what
``post_process_semantic_segmentation(target_sizes=...)`` gives) against the dataset's label maps, with the processor's label reduction (``do_reduce_labels``) applied and 255 ignored. Records:
``id``, ``k``, ``success``, ``l0``, ``iterations``, ``loss``, per-image ``pixel_accuracy_clean`` and
``pixel_accuracy_adversarial``, and ``counts``: ``[label, clean prediction, adversarial prediction, pixels]``
rows, the joint confusion counts from which every metric is computed.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_sparse_attack.evaluation.harness.entry import evaluation_main


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the evaluation; returns the results on the main process (see :func:`~.harness.loop.run_evaluation`)."""
    return evaluation_main("segmentation", __doc__, argv)


if __name__ == "__main__":
    main()
