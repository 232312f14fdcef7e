"""Robustness of a DETR-family detector to sparse attacks: the twelve COCO statistics (mAP, mAP@50, mAP@75, by
size, and the recalls) on clean and adversarial images and the drop, per budget k (pycocotools COCOeval on the
dataset's own annotations: exactly COCO's numbers; boxes reaching outside the image are fitted to it only as the
attack's targets).

    python evaluation/eval_detection.py --model_name_or_path facebook/detr-resnet-50 \\
        --coco_annotation_file annotations/instances_val2017.json --coco_image_dir val2017 \\
        --max_eval_samples 200 --attack spgd --k 50 --steps 100 --output_dir runs/detr
    accelerate launch evaluation/eval_detection.py ...same flags...
    python evaluation/eval_detection.py --model_name_or_path ./my-detr --dataset_name ./cppe5 \\
        --dataset_split test --objects_column_name objects --bbox_key bbox --category_key category ...

The attack aims to make every ground-truth object undetected: no detection of its label at IoU >=
``--iou_threshold`` with a score from ``--score_threshold`` (default 0.001, the floor of what mAP counts, so a sample
stops early only when mAP can no longer see its objects); crowd boxes are kept for mAP only. mAP uses every
detection (score threshold 0, at most 100 per image) in the original image's pixels. Records: ``id``, ``k``,
``success``, ``l0``, ``iterations``, ``loss``, ``ground_truth``, ``clean_prediction``, ``adversarial_prediction``
(boxes COCO xywh, ``scores``, ``labels``).
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_sparse_attack.evaluation.harness.entry import evaluation_main


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the evaluation; returns the results on the main process (see :func:`~.harness.loop.run_evaluation`)."""
    return evaluation_main("detection", __doc__, argv)


if __name__ == "__main__":
    main()
