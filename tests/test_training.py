"""Sparse adversarial training: the API on plain PyTorch classifiers, and the Hugging Face training script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from attack_checks import assert_valid_result
from evaluation.digits import digits_split
from hf_sparse_attack import SparsePGD
from hf_sparse_attack.training import SparseAdversarialTraining, frozen, perturb, sat_loss, strades_loss
from tiny_models import photo_crops, tiny_vit

torch.set_num_threads(1)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))


def adversarial_loss(model, x, y, k=2):
    """Mean cross-entropy of ``model`` on a fixed sPGD attack (eval mode), with the result audited."""
    result = perturb(model, x, y, SparsePGD(k=k, steps=20, seed=1))
    assert_valid_result(result, x, k)
    with torch.no_grad():
        return nn.functional.cross_entropy(model.eval()(result.adversarial), y).item()


@pytest.mark.parametrize("loss", ["sat", "strades"])
def test_a_few_steps_decrease_the_adversarial_loss(loss):
    (x, y), _ = digits_split()
    x, y = x[:256], y[:256]
    model = mlp()
    before = adversarial_loss(model, x[:64], y[:64])
    training = SparseAdversarialTraining(k=2, steps=10, loss=loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        batch = torch.arange(step * 32, step * 32 + 32) % len(y)
        model.train()
        out = training(model, x[batch], y[batch], step, ids=batch.tolist())
        assert_valid_result(out.result, x[batch], 2)
        assert model.training and all(p.requires_grad for p in model.parameters())  # restored after the attack
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = adversarial_loss(model, x[:64], y[:64])
    assert after < 0.8 * before, (before, after)


def test_frozen_restores_modes_and_flags_and_the_attack_leaves_no_parameter_gradient():
    model = mlp()
    model.train()
    model[1].weight.requires_grad_(False)
    model[3].eval()
    with frozen(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
    assert [m.training for m in model.modules()] == [True, True, True, True, False, True]
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    assert_valid_result(perturb(model, x, y, SparsePGD(k=2, steps=5)), x, 2)
    assert all(p.grad is None for p in model.parameters())


class Counting(nn.Module):
    """Stands for a distributed wrapper: counts its forward passes."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


@pytest.mark.parametrize("loss_fn", [sat_loss, strades_loss])
def test_the_attack_runs_on_attack_model_and_the_wrapper_sees_one_forward_per_step(loss_fn):
    net = mlp()
    wrapper = Counting(net)
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    out = loss_fn(wrapper, x, y, SparsePGD(k=2, steps=5), attack_model=net)
    assert_valid_result(out.result, x, 2)
    assert wrapper.calls == 1
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_gradient_choice_per_step():
    unprojected = {g: [SparseAdversarialTraining(k=1, gradient=g).attack(t).unprojected for t in range(40)]
                   for g in ("alternate", "random", "unprojected", "projected")}
    assert unprojected["alternate"] == [t % 2 == 0 for t in range(40)]
    assert 10 < sum(unprojected["random"]) < 30
    assert unprojected["random"] == [SparseAdversarialTraining(k=1).attack(t).unprojected for t in range(40)]
    assert all(unprojected["unprojected"]) and not any(unprojected["projected"])
    attack = SparseAdversarialTraining(k=3, steps=7).attack(5)
    assert (attack.k, attack.steps, attack.patience) == (3, 7, 10)
    assert attack.seed != SparseAdversarialTraining(k=3, steps=7).attack(6).seed


@pytest.mark.parametrize("bad", [dict(k=0), dict(k=2, loss="trades"), dict(k=2, gradient="alter"),
                                 dict(k=2, beta=-1.0), dict(k=2, patience=0)])
def test_invalid_configurations_raise(bad):
    with pytest.raises(ValueError):
        SparseAdversarialTraining(**bad)


# The training script on a tiny Hugging Face classifier and a tiny dataset made here.

SCRIPT = Path(__file__).resolve().parents[1] / "evaluation" / "train_sparse_adversarial.py"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny ViT (32x32, with dropout so that resuming must restore the RNG) and 12 labelled photo crops."""
    import datasets
    from transformers import ViTForImageClassification

    tmp = tmp_path_factory.mktemp("training")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = datasets.Dataset.from_dict({"image": photo_crops(12, 40), "label": [i % 10 for i in range(12)]},
                                      features=features)
    rows.save_to_disk(str(tmp / "data"))
    path = tiny_vit(tmp)
    ViTForImageClassification.from_pretrained(path, hidden_dropout_prob=0.1).save_pretrained(path)
    return tmp, path


def arguments(model, data, output_dir, *extra):
    return ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(output_dir),
            "--k", "2", "--steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
            "--seed", "3", *extra]


def weights(directory):
    return load_file(str(Path(directory) / "model.safetensors"))


def test_script_trains_checkpoints_and_resumes_to_the_same_weights(setup):
    import tasks
    from evaluation.train_sparse_adversarial import main

    tmp, model = setup
    full = tmp / "full"
    # 3 steps per epoch: the run crosses an epoch boundary, the resumed one starts mid-epoch
    results = main(arguments(model, tmp / "data", full, "--max_train_steps", "5", "--checkpointing_steps", "2",
                             "--loss", "strades", "--lr_scheduler_type", "cosine", "--num_warmup_steps", "1"))
    assert results["steps"] == 5 and results["train_images"] == 12 and results["num_processes"] == 1
    assert {"step_2", "step_4", "all_results.json", "training_curves.png", "trainer_state.json"} <= {
        p.name for p in full.iterdir()}
    history = json.loads((full / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5]
    trained = tasks.load_task(str(full))  # loads by path like a Hub model
    assert trained.task == "classification"
    assert not torch.equal(weights(full)["classifier.weight"], weights(model)["classifier.weight"])
    assert Image.open(full / "training_curves.png").size[0] > 0
    x, y = trained.prepare(photo_crops(4, 40, seed=1), [0, 1, 2, 3])
    result = SparsePGD(k=2, steps=5)(trained, x, y)
    assert_valid_result(result, x, 2)

    resumed = tmp / "resumed"
    shutil.copytree(full / "step_2", resumed / "step_2")  # as if the run had been killed after step 2
    again = main(arguments(model, tmp / "data", resumed, "--max_train_steps", "5", "--checkpointing_steps", "2",
                           "--loss", "strades", "--lr_scheduler_type", "cosine", "--num_warmup_steps", "1",
                           "--resume_from_checkpoint", "latest"))
    assert again["resumed_from"] == str(resumed / "step_2")
    expected, got = weights(full), weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert json.loads((resumed / "trainer_state.json").read_text())["history"] == history


def test_two_process_accelerate_launch_on_cpu_completes_and_the_model_loads(setup):
    import tasks

    tmp, model = setup
    out = tmp / "two_processes"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
               *arguments(model, tmp / "data", out, "--per_device_train_batch_size", "3", "--num_train_epochs", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    # each process trains on its own half: 12 images / (2 processes x 3) = 2 steps per epoch
    assert results["num_processes"] == 2 and results["steps"] == 4
    trained = tasks.load_task(str(out))
    assert not torch.equal(weights(out)["classifier.weight"], weights(model)["classifier.weight"])
    x, _ = trained.prepare(photo_crops(2, 40))
    assert trained.predict(x).shape == (2,)


@pytest.mark.parametrize("extra", [["--k", "0"], ["--loss", "trades"], ["--checkpointing_steps", "0"],
                                   ["--resume_from_checkpoint", "latest"]])
def test_script_usage_errors_exit_with_code_2(tmp_path, extra, capsys):
    from evaluation.train_sparse_adversarial import main

    with pytest.raises(SystemExit) as exit_info:
        main(arguments(tmp_path / "no_model", tmp_path / "no_data", tmp_path / "out", *extra))
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
