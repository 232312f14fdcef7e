"""Running an evaluation script's ``main`` in the test process, and reading back what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState


def run_main(main, argv: list, output_dir) -> dict | None:
    """``main(argv + --output_dir)`` in this process; the parsed ``all_results.json`` (``None`` if not written)."""
    try:
        main([*map(str, argv), "--output_dir", str(output_dir)])
    finally:  # leave no accelerate state behind for other tests
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    path = Path(output_dir) / "all_results.json"
    return json.loads(path.read_text()) if path.exists() else None


def records(output_dir) -> list[dict]:
    """The run's ``records.jsonl``."""
    return [json.loads(line) for line in (Path(output_dir) / "records.jsonl").read_text().splitlines()]
