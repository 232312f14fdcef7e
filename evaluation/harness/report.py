"""What a run tells the user as it goes and when it ends: the task's metric on the progress bar, and a table of the
metric on clean and adversarial images per budget k, with where the files are.

>>> print(metric_table("classification", {10: {"clean_accuracy": 0.9375, "robust_accuracy": 0.125}}))
k   metric    clean  adversarial  drop
10  accuracy  0.938  0.125        0.812
"""

from __future__ import annotations

import time
from typing import Any

#: Seconds between two computations of the running metric for the progress bar (COCOeval is not free).
REFRESH_SECONDS = 10.0


#: Per task, the rows of the end-of-run table: ``(metric name, clean key, adversarial key)``.
TABLES = {
    "classification": (("accuracy", "clean_accuracy", "robust_accuracy"),),
    "detection": (("mAP", "map_clean", "map_adversarial"), ("mAP@50", "map50_clean", "map50_adversarial")),
    "segmentation": (("mIoU", "miou_clean", "miou_adversarial"),
                     ("pixel accuracy", "pixel_accuracy_clean", "pixel_accuracy_adversarial")),
}


def metric_table(task: str, computed: dict[int, dict]) -> str:
    """An aligned text table of :data:`TABLES` for ``task``: per k and metric the clean and adversarial values and
    the drop."""
    rows = [["k", "metric", "clean", "adversarial", "drop"]]
    for k, metrics in sorted(computed.items()):
        for name, clean, adversarial in TABLES[task]:
            before, after = metrics.get(clean), metrics.get(adversarial)
            drop = before - after if before is not None and after is not None else None
            rows.append([str(k), name, *(_number(v) for v in (before, after, drop))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def matrix_table(sources: list[str], targets: list[str], matrix: list[list[float | None]]) -> str:
    """A transferability matrix as an aligned text table: one row per source model, one column per target.

    >>> print(matrix_table(["vit", "resnet"], ["vit", "resnet"], [[0.9, 0.2], [None, 0.8]]))
    source \\ target  vit    resnet
    vit              0.900  0.200
    resnet           n/a    0.800
    """
    rows = [["source \\ target", *targets], *([source, *map(_number, row)] for source, row in zip(sources, matrix))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class RunningMetric:
    """The task's adversarial metric per k over the records seen so far on this process (no collective: each
    process shows its own share), for the progress bar's postfix; recomputed at most every
    :data:`REFRESH_SECONDS`.

    ``spec`` and ``objective`` make the metric (:meth:`~.task_spec.TaskSpec.new_metric`); ``only`` keeps the records
    it accepts (a transfer run shows its diagonal: each source on itself).
    """

    def __init__(self, spec: Any, objective: Any, only=lambda record: True) -> None:
        self.spec, self.objective, self.only = spec, objective, only
        self.metrics: dict[int, Any] = {}
        self.shown: dict[str, str] = {}
        self.last = 0.0

    def add(self, records: list[dict]) -> None:
        by_k: dict[int, list[dict]] = {}
        for record in records:
            if "k" in record and self.only(record):
                by_k.setdefault(record["k"], []).append(record)
        for k, kept in by_k.items():
            if k not in self.metrics:
                self.metrics[k] = self.spec.new_metric(self.objective, sync_on_compute=False)
            self.spec.update(self.metrics[k], kept)

    def postfix(self) -> dict[str, str]:
        """``{"<adversarial metric>@k=K": value}`` (e.g. ``adversarial mAP@k=10``), as of the last refresh."""
        if self.metrics and time.monotonic() - self.last >= REFRESH_SECONDS:
            self.last = time.monotonic()
            key, name = self.spec.curve[1]
            self.shown = {f"{name}@k={k}": f"{metric.compute()[key]:.3f}" for k, metric in sorted(self.metrics.items())}
        return self.shown
