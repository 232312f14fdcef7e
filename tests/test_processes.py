"""Several processes: one that sees another ``--output_dir`` stops them all with one line each; an error on one
rank names the rank, and the others say they stopped because of it (not a bug)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sparse_attack.evaluation.harness.command_line import report

ROOT = Path(__file__).resolve().parents[1]

DRIVER = """
import sys, tempfile
import torch.distributed as dist
from hf_sparse_attack.evaluation import eval_classification
from hf_sparse_attack.evaluation.harness import loop, processes

def elsewhere(accelerator, path):  # rank 1 looks at a directory of its own, as on a machine without shared storage
    return processes.check_shared_dir(accelerator, tempfile.mkdtemp() if dist.get_rank() == 1 else path)

loop.check_shared_dir = elsewhere
eval_classification.main(sys.argv[1:])
"""


def test_a_process_that_does_not_see_the_output_dir_stops_every_process(tmp_path):
    from hf_sparse_attack.evaluation.command.demo import write_dataset
    from hf_sparse_attack.evaluation.embedded import model_path

    write_dataset("classification", 4, tmp_path / "data")
    (tmp_path / "driver.py").write_text(DRIVER)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(tmp_path / "driver.py"),
               "--model_name_or_path", str(model_path("classifier")), "--dataset_name", str(tmp_path / "data"),
               "--k", "2", "--steps", "2", "--output_dir", str(tmp_path / "out"), "--ddp_timeout", "120"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "do not see the main process's --output_dir" in line]
    # every rank raises the same error; the first to exit makes the launcher end the other, which may not print
    prefixes = {line.split(":")[0] for line in lines}
    assert prefixes and prefixes <= {"driver.py [rank 0/2]", "driver.py [rank 1/2]"}, done.stderr[-3000:]
    assert all("process(es) [1]" in line for line in lines)
    assert not (tmp_path / "out" / "records").exists()  # stopped before any attack


@pytest.mark.parametrize(("error", "code", "expected"), [
    (ValueError("bad sample 7"), 2, "script [rank 1/4]: error: bad sample 7"),
    (RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:56452"), 1,
     "script [rank 1/4]: stopped: another process failed (its error is above)"),
    (KeyError("oops"), 1, "script [rank 1/4]: internal error (a bug"),
])
def test_errors_under_a_launcher_name_the_rank(monkeypatch, capsys, error, code, expected):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    assert report("script", error) == code
    assert capsys.readouterr().err.startswith(expected)
