"""Sparse adversarial training: the API on plain PyTorch classifiers, and the Hugging Face training script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attack_checks import assert_valid_result
from PIL import Image
from safetensors.torch import load_file
from tiny_models import photo_crops, tiny_vit
from torch import nn

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.evaluation.testdata.digits import digits_split
from hf_sparse_attack.training import SparseAdversarialTraining, frozen, perturb, sat_loss, strades_loss

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


@pytest.mark.parametrize("bad", [{"k": 0}, {"k": 2, "loss": "trades"}, {"k": 2, "gradient": "alter"},
                                 {"k": 2, "beta": -1.0}, {"k": 2, "patience": 0}])
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
    from hf_sparse_attack import tasks
    from hf_sparse_attack.evaluation.train_sparse_adversarial import main

    tmp, model = setup
    full = tmp / "full"
    # 3 steps per epoch: the run crosses an epoch boundary, the resumed one starts mid-epoch
    results = main(arguments(model, tmp / "data", full, "--max_train_steps", "5", "--checkpointing_steps", "2",
                             "--loss", "strades", "--lr_scheduler_type", "cosine", "--num_warmup_steps", "1"))
    assert results["steps"] == 5 and results["train_images"] == 12 and results["num_processes"] == 1
    assert {"step_2", "step_4", "all_results.json", "training_curves.png", "trainer_state.json"} <= {
        p.name for p in full.iterdir()}
    assert not [p for p in full.rglob(".*")]  # no temporary file or checkpoint directory is left
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


KILLER = """
import os, signal, sys
from hf_sparse_attack.evaluation import train_sparse_adversarial

replace = os.replace
def dying_replace(source, target):  # SIGKILL this process as the complete step_4 checkpoint is renamed into place
    if os.path.basename(source) == ".step_4.tmp":
        os.kill(os.getpid(), signal.SIGKILL)
    replace(source, target)
os.replace = dying_replace  # the module os, as the training run sees it
train_sparse_adversarial.main(sys.argv[1:])
"""


def test_a_training_killed_by_sigkill_resumes_to_the_weights_of_an_uninterrupted_one(setup, tmp_path):
    from hf_sparse_attack.evaluation.train_sparse_adversarial import main

    tmp, model = setup
    flags = ["--max_train_steps", "5", "--checkpointing_steps", "2"]
    (tmp_path / "killer.py").write_text(KILLER)
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), *map(str, arguments(
        model, tmp / "data", out, *flags))], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [".step_4.tmp", "step_2"]  # no results, no step_4
    resumed = main(arguments(model, tmp / "data", out, *flags, "--resume_from_checkpoint", "latest"))
    assert resumed["resumed_from"] == str(out / "step_2") and resumed["steps"] == 5
    main(arguments(model, tmp / "data", tmp_path / "uninterrupted", *flags))
    expected, got = weights(tmp_path / "uninterrupted"), weights(out)
    assert expected.keys() == got.keys() and all(torch.equal(expected[name], got[name]) for name in expected)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # the cut checkpoint is replaced


def test_two_process_accelerate_launch_on_cpu_completes_and_the_model_loads(setup):
    from hf_sparse_attack import tasks
    tmp, model = setup
    out = tmp / "two_processes"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
               *arguments(model, tmp / "data", out, "--per_device_train_batch_size", "3", "--num_train_epochs", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    # each process trains on its own half: 12 images / (2 processes x 3) = 2 steps per epoch
    assert results["num_processes"] == 2 and results["steps"] == 4
    trained = tasks.load_task(str(out))
    assert not torch.equal(weights(out)["classifier.weight"], weights(model)["classifier.weight"])
    x, _ = trained.prepare(photo_crops(2, 40))
    assert trained.predict(x).shape == (2,)


@pytest.mark.parametrize(("extra", "message"), [
    (["--k", "0"], "k must be"), (["--loss", "trades"], "--loss"), (["--checkpointing_steps", "0"], "--checkpointing"),
    (["--resume_from_checkpoint", "latest"], "no checkpoint"),
    (["--overwrite", "--resume_from_checkpoint", "latest"], "not allowed with"),
])
def test_script_usage_errors_exit_with_code_2(setup, tmp_path, extra, message, capsys):
    from hf_sparse_attack.evaluation.train_sparse_adversarial import main

    with pytest.raises(SystemExit) as exit_info:
        main(arguments(setup[1], tmp_path / "no_data", tmp_path / "out", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and message in err


# The script's output directory: never overwritten without --overwrite, checked before the model loads, and
# checkpoints that appear only when complete.

FINISHED = ("--max_train_steps", "2", "--checkpointing_steps", "1")


@pytest.fixture(scope="module")
def finished(setup):
    """The output directory of a finished 2-step training with the checkpoint ``step_1`` (copy it to change it)."""
    from hf_sparse_attack.evaluation.train_sparse_adversarial import main

    tmp, model = setup
    main(arguments(model, tmp / "data", tmp / "finished", *FINISHED))
    return tmp / "finished"


def temporary(directory):
    """The hidden (temporary) files and directories anywhere under ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob(".*"))


def exit_line(capsys, argv):
    """The one stderr line of ``main(argv)`` exiting with code 2."""
    from hf_sparse_attack.evaluation.train_sparse_adversarial import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_finished_output_dir_is_kept_without_overwrite_and_overwrite_keeps_other_files(setup, finished,
                                                                                          tmp_path, capsys):
    from hf_sparse_attack.evaluation.train_sparse_adversarial import main

    tmp, model = setup
    assert {"step_1", "all_results.json", "trainer_state.json"} <= {p.name for p in finished.iterdir()}
    assert temporary(finished) == []
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    results = out / "all_results.json"
    before = results.read_bytes(), results.stat().st_mtime_ns, sorted(p.name for p in out.rglob("*"))

    err = exit_line(capsys, arguments(model, tmp / "data", out, *FINISHED))
    assert "--overwrite" in err and "--resume_from_checkpoint latest" in err and str(out) in err
    assert (results.read_bytes(), results.stat().st_mtime_ns, sorted(p.name for p in out.rglob("*"))) == before

    (out / "notes.txt").write_text("keep me")
    again = main(arguments(model, tmp / "data", out, "--max_train_steps", "1", "--overwrite"))
    assert again["steps"] == 1 and json.loads(results.read_text())["steps"] == 1
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / "step_1").exists()  # the previous training's checkpoint is removed, not mixed with this one
    assert [h["step"] for h in json.loads((out / "trainer_state.json").read_text())["history"]] == [1]


@pytest.fixture
def unreadable_weights(setup, tmp_path):
    """A copy of the tiny model whose weights file is garbage: an error about it means the weights were read."""
    model = shutil.copytree(setup[1], tmp_path / "unreadable_weights")
    (model / "model.safetensors").write_bytes(b"garbage")
    return model


@pytest.mark.parametrize("case", ["file", "inside_a_file", "read_only_parent", "no_space"])
def test_an_unusable_output_dir_is_one_line_before_the_dataset_and_the_weights_load(tmp_path, case, capsys,
                                                                                    monkeypatch, unreadable_weights):
    out = tmp_path / "out"
    if case == "file":
        out.write_text("not a directory")
    elif case == "inside_a_file":
        (tmp_path / "file").write_text("not a directory")
        out = tmp_path / "file" / "out"
    elif case == "read_only_parent":
        parent = tmp_path / "read_only"
        parent.mkdir(mode=0o500)
        if os.geteuid() == 0:  # root ignores permissions; nobody may create a directory in /proc
            parent = Path("/proc")
        out = parent / "out"
    else:
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 0))
    # the dataset does not exist and the weights are garbage: an error about them would mean they were read first
    err = exit_line(capsys, arguments(unreadable_weights, tmp_path / "no_data", out))
    assert "output dir" in err and str(out) in err
    assert ("free" in err) == (case == "no_space")


def test_a_bad_model_then_a_bad_dataset_are_reported_before_the_weights_load(tmp_path, capsys, unreadable_weights):
    err = exit_line(capsys, arguments(tmp_path / "no_model", tmp_path / "no_data", tmp_path / "file"))
    assert "no_model" in err and "no_data" not in err
    err = exit_line(capsys, arguments(unreadable_weights, tmp_path / "no_data", tmp_path / "out"))
    assert "no_data" in err and "unreadable_weights" not in err


def test_overwrite_removes_nothing_when_a_check_fails(finished, tmp_path, capsys, unreadable_weights):
    out = shutil.copytree(finished, tmp_path / "finished")
    before = sorted(p.name for p in out.rglob("*"))
    err = exit_line(capsys, arguments(unreadable_weights, tmp_path / "no_data", out, "--overwrite"))
    assert "no_data" in err and sorted(p.name for p in out.rglob("*")) == before


def test_the_output_dir_cannot_be_the_model_directory(setup, tmp_path, capsys):
    tmp, _ = setup
    model = shutil.copytree(setup[1], tmp_path / "model")
    err = exit_line(capsys, arguments(model, tmp / "data", model, "--overwrite"))
    assert "--model_name_or_path" in err
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()


def test_resume_ignores_and_replaces_checkpoints_cut_short(setup, finished, tmp_path):
    from hf_sparse_attack.evaluation.harness.adversarial_training import STATE_DIR
    from hf_sparse_attack.evaluation.train_sparse_adversarial import main

    tmp, model = setup
    out = tmp_path / "killed"
    shutil.copytree(finished / "step_1", out / "step_1")
    partial = shutil.copytree(finished / "step_1", out / ".step_2.tmp")  # killed while saving step 2
    (partial / "half_written.bin").write_bytes(b"\0" * 16)
    stale = out / "step_2"  # a checkpoint of an earlier run, cut short before its training state
    stale.mkdir()
    (stale / "stale.txt").write_text("from an earlier run")
    results = main(arguments(model, tmp / "data", out, "--max_train_steps", "3", "--checkpointing_steps", "2",
                             "--resume_from_checkpoint", "latest"))
    assert results["resumed_from"] == str(out / "step_1") and results["steps"] == 3
    assert temporary(out) == []
    assert sorted(p.name for p in (out / "step_2").iterdir()) == sorted(
        p.name for p in (finished / "step_1").iterdir())  # written anew: nothing of the partial or stale ones
    assert (out / "step_2" / STATE_DIR).is_dir()
    assert json.loads((out / "step_2" / "trainer_state.json").read_text())["step"] == 2


def test_a_run_killed_during_the_final_save_leaves_no_results(setup, finished, tmp_path, monkeypatch):
    import hf_sparse_attack.evaluation.train_sparse_adversarial as script

    tmp, model = setup
    out = shutil.copytree(finished, tmp_path / "out")  # a resumed run: the earlier all_results.json must go too

    def killed(history, path):
        raise KeyboardInterrupt

    from hf_sparse_attack.evaluation.harness import adversarial_training

    monkeypatch.setattr(adversarial_training, "plot_curves", killed)
    with pytest.raises(KeyboardInterrupt):
        script.main(arguments(model, tmp / "data", out, "--max_train_steps", "3", "--resume_from_checkpoint",
                              "latest"))
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 3  # the final save had begun
    assert not (out / "all_results.json").exists()
    assert temporary(out) == []
