"""``--help`` and usage errors answer without importing torch or transformers (they take seconds to import)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "accelerate", "torchmetrics")
PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print("IMPORTED", *sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr))
sys.argv = {argv!r}
{run}
"""
CLI = "from hf_sparse_attack.evaluation.command.cli import main; sys.exit(main(sys.argv[1:]))"
SCRIPTS = ["eval_classification.py", "eval_detection.py", "eval_segmentation.py", "eval_transfer.py",
           "train_sparse_adversarial.py"]
CASES = [
    *(("cli", ["hf-sparse-attack", *argv]) for argv in (
        ["--help"], ["attack", "--help"], ["eval", "--help"], ["transfer", "--help"], ["train", "--help"],
        ["demo", "--help"], ["attack", "image.png"], ["eval", "--bad_flag"], ["transfer", "--task", "nope"],
        ["unknown"])),
    *(("script", [str(ROOT / "evaluation" / name), "--help"]) for name in SCRIPTS),
    ("script", [str(ROOT / "evaluation" / "eval_detection.py"), "--k", "x"]),
]


@pytest.mark.parametrize(("kind", "argv"), CASES, ids=[" ".join(Path(a).name for a in c[1]) for c in CASES])
def test_help_and_usage_errors_import_no_model_code(kind, argv):
    run = CLI if kind == "cli" else f"runpy.run_path({argv[0]!r}, run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, argv=argv, run=run)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode in (0, 2), done.stderr
    out = done.stdout if done.returncode == 0 else done.stderr
    assert "usage:" in out or "error" in out, out
    imported = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED")]
    assert imported == ["IMPORTED"], imported
