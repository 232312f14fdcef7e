"""Device and precision flags are honoured and recorded; progress bars move with the attack's forward passes."""

from __future__ import annotations

import json

import pytest
import torch
from attack_checks import assert_valid_result

from hf_sparse_attack import ClassifierObjective, SparsePGD
from hf_sparse_attack.evaluation import eval_classification
from hf_sparse_attack.evaluation.command.demo import write_dataset
from hf_sparse_attack.evaluation.embedded import model_path
from hf_sparse_attack.evaluation.harness.batch import load_objective
from hf_sparse_attack.evaluation.harness.device_flags import autocast
from hf_sparse_attack.evaluation.harness.entry import load_spec
from hf_sparse_attack.evaluation.harness.progress import AttackProgress, attack_length
from hf_sparse_attack.evaluation.harness.script_flags import build_parser

torch.set_num_threads(1)


class Bar:
    """What a tqdm bar is told: the position after every update."""

    def __init__(self) -> None:
        self.n, self.positions = 0, []

    def update(self, n: int = 1) -> None:
        self.n += n
        self.positions.append(self.n)


def test_the_bar_moves_with_each_forward_pass_and_ends_at_the_attack_length():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    x = torch.rand(4, 3, 8, 8)
    attack = SparsePGD(k=1, steps=12)
    for target, early in ((model(x).argmax(1), False), (1 - model(x).argmax(1), True)):
        bar = Bar()
        watched = AttackProgress(ClassifierObjective(model, "ce", targeted=early), bar)
        with watched.running(attack):
            result = attack(watched, x, target)
        assert_valid_result(result, x, attack.k)
        assert bar.n == attack_length(attack) == 13
        passes = 1 + int(result.iterations.max())
        assert bar.positions[:passes] == list(range(1, passes + 1))  # one step per forward pass, then the top-up


def test_weights_dtype_and_mixed_precision_are_honoured_and_recorded(tmp_path, capsys):
    write_dataset("classification", 4, tmp_path / "data")
    argv = ["--model_name_or_path", str(model_path("classifier")), "--dataset_name", str(tmp_path / "data"),
            "--k", "2", "--steps", "3", "--output_dir", str(tmp_path / "out"), "--torch_dtype", "bfloat16",
            "--mixed_precision", "bf16"]
    args = build_parser("classification").parse_args(argv)
    objective = load_objective(load_spec("classification"), args.model_name_or_path, args, torch.device("cpu"))
    assert next(objective.model.parameters()).dtype == torch.bfloat16
    with autocast("cpu", "bf16"):
        assert torch.nn.Linear(3, 2)(torch.rand(1, 3)).dtype == torch.bfloat16
    results = eval_classification.main(argv)
    assert (results["torch_dtype"], results["mixed_precision"], results["device"]) == ("bfloat16", "bf16", "cpu")
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["mixed_precision"] == "bf16"
    printed = capsys.readouterr().out  # the run ends with the table of its metric and where its files are
    metrics = results["results"][0]["metrics"]
    assert (f"2  accuracy  {metrics['clean_accuracy']:.3f}  {metrics['robust_accuracy']:.3f}" in printed
            and f"results in {tmp_path / 'out' / 'all_results.json'}" in printed), printed


@pytest.mark.parametrize(("flags", "message"), [
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--ddp_timeout", "0"], "--ddp_timeout must be a positive number"),
])
def test_bad_device_flags_are_usage_errors(tmp_path, capsys, flags, message):
    write_dataset("classification", 2, tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        eval_classification.main(["--model_name_or_path", str(model_path("classifier")), "--dataset_name",
                                  str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_progress_bar_shows_the_task_metric_of_the_records_so_far():
    from hf_sparse_attack.evaluation.harness.report import RunningMetric

    running = RunningMetric(load_spec("classification"), objective=None)
    records = [{"k": 2, "label": 0, "clean_prediction": 0, "adversarial_prediction": a, "l0": 1, "success": a != 0}
               for a in (0, 1, 1, 0)] + [{"id": 9, "skipped": "unreadable"}]
    running.add(records)
    assert running.postfix() == {"robust accuracy@k=2": "0.500"}
    running.add([{"k": 2, "label": 1, "clean_prediction": 0, "adversarial_prediction": 1, "l0": 0,
                  "success": True}])  # wrong on its clean image: never robust (AutoAttack)
    running.last = 0.0  # as if the refresh interval had passed
    assert running.postfix() == {"robust accuracy@k=2": "0.400"}
