"""The output directory of an evaluation run: per-sample records written atomically, resumable, and the results.

Layout of ``output_dir``::

    run.json               the run's settings, written before any attack; a later run with the same settings resumes
    records/<unit>.jsonl   the per-sample records of one unit of work (a batch), written when the unit is finished
    records.jsonl          every record, sorted by sample id (written at the end)
    all_results.json       metrics, attack config, models, versions, sample counts, time, skipped samples
    pictures/  examples/  adversarial/   PNG files

Every file is written to a temporary name, flushed to disk and renamed (:func:`atomic_write`), so a run killed at
any moment, even by SIGKILL, leaves only whole files: a unit's file exists exactly when all its samples are done.
Restarting with the same settings skips those units; as sample results do not depend on the run they come from,
the final results equal those of an uninterrupted run.

>>> import tempfile
>>> run = RunDirectory(tempfile.mkdtemp() + "/out", {"k": [1]})
>>> run.check(overwrite=False), run.probe(), run.start(resume=False)
(False, None, None)
>>> run.write_unit("b000000", [{"id": 0, "success": True}])
>>> run.finished(), run.read_unit("b000000")
({'b000000'}, [{'id': 0, 'success': True}])
>>> RunDirectory(run.path, {"k": [1]}).check(overwrite=False)  # same settings: resume
True
>>> try:
...     RunDirectory(run.path, {"k": [2]}).check(overwrite=False)
... except OutputDirError as err:
...     print(str(err).split("; ")[0].split("' ")[1])
holds an unfinished run with other settings (k: [1] -> [2])
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

RUN_FILE = "run.json"
RESULTS_FILE = "all_results.json"
RECORDS_FILE = "records.jsonl"
UNITS_DIR = "records"
#: Everything a run writes: what ``--overwrite`` replaces (nothing else in the directory is touched).
OUTPUTS = (RUN_FILE, RESULTS_FILE, RECORDS_FILE, UNITS_DIR, "pictures", "examples", "adversarial", "model_card.md")
MIN_FREE_BYTES = 16 * 2**20


class OutputDirError(ValueError):
    """The output directory cannot be used or written; the message says what to do."""


def to_json(value: Any) -> Any:
    """``value`` with tensors, numpy values and tuples as JSON types, and NaN/Inf as ``None`` (strict JSON).

    >>> import torch
    >>> to_json({"a": torch.tensor([1.5, float("nan")]), "b": (np.int64(2),)})
    {'a': [1.5, None], 'b': [2]}
    """
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(key): to_json(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync'ed, then renamed.

    An ``OSError`` (disk full, permissions) becomes :class:`OutputDirError`; no partial file is left behind.
    """
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise OutputDirError(f"could not write {str(path)!r}: {err}; finished samples are kept, run the same "
                             "command again to resume") from err


def remove(path: Path) -> None:
    """Remove the file or directory ``path`` if it exists (a link to a directory: the link only)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def guard_output_dir(path: Path, blocking: Callable[[Path], list[Path]], allowed: bool,
                     refusal: Callable[[list[Path]], str]) -> list[Path]:
    """The output-directory rule every command follows: ``path`` is a directory or does not exist yet; what
    ``blocking(path)`` finds there (an earlier run's outputs) is refused with ``refusal(found)`` unless ``allowed``
    (``--overwrite``, or resuming). Returns what was found; :class:`OutputDirError` when the directory cannot be used.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> (out / "summary.json").write_text("{}")
    2
    >>> guard_output_dir(out, lambda p: sorted(p.iterdir()), True, str)[0].name
    'summary.json'
    """
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output dir {str(path)!r} exists and is not a directory")
    try:
        found = blocking(path) if path.is_dir() else []
    except OSError as err:
        raise OutputDirError(f"cannot read output dir {str(path)!r}: {err}") from err
    if found and not allowed:
        raise OutputDirError(f"output dir {str(path)!r} {refusal(found)}")
    return found


def remove_outputs(paths: list[Path], flag: str = "--overwrite") -> None:
    """Remove an earlier run's outputs (after every check has passed); :class:`OutputDirError` if one cannot be."""
    for path in paths:
        try:
            remove(path)
        except OSError as err:
            raise OutputDirError(f"{flag}: cannot remove {str(path)!r}: {err}") from err


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Atomically write ``value`` (see :func:`to_json`) as indented strict JSON."""
    atomic_write(path, json.dumps(to_json(value), indent=2, allow_nan=False) + "\n")


def save_png(path: str | os.PathLike, image: Any) -> None:
    """Atomically save an image losslessly as PNG: a ``(C, H, W)`` float tensor in ``[0, 1]`` (8-bit grid, as
    attacks quantize by default), an ``(H, W, 3)`` or ``(H, W)`` uint8 array, or a PIL image."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().mul(255).round().clamp(0, 255).to(torch.uint8)
        image = array.permute(1, 2, 0).squeeze(-1).numpy() if array.dim() == 3 else array.numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def load_png(path: str | os.PathLike) -> torch.Tensor:
    """A PNG written by :func:`save_png` from a tensor, back as a ``(C, H, W)`` float tensor in ``[0, 1]``."""
    with Image.open(path) as image:
        array = np.array(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(255)


class RunDirectory:
    """One run's output directory, with the ``settings`` that decide whether an existing run can be resumed.

    Multi-process protocol: every process calls :meth:`check` (read-only) then :meth:`probe`; after a barrier the
    main process calls :meth:`start`; after another barrier every process reads :meth:`finished`.
    """

    def __init__(self, path: str | os.PathLike, settings: dict) -> None:
        self.path = Path(path)
        self.settings = to_json(settings)

    def check(self, overwrite: bool) -> bool:
        """Whether the run resumes an unfinished one; :class:`OutputDirError` if the directory cannot be used."""
        path = self.path
        if not guard_output_dir(path, lambda p: self._entries(), True, str) or overwrite:
            return False
        advice = "choose another --output_dir or pass --overwrite"
        if not (path / RUN_FILE).is_file():
            raise OutputDirError(f"output dir {str(path)!r} is not empty and holds no evaluation run ({RUN_FILE}); "
                                 f"{advice}")
        if (path / RESULTS_FILE).exists():
            raise OutputDirError(f"output dir {str(path)!r} already holds finished results ({RESULTS_FILE}); {advice}")
        try:
            previous = json.loads((path / RUN_FILE).read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise OutputDirError(f"cannot read {str(path / RUN_FILE)!r} ({err}); {advice}") from err
        if previous != self.settings:
            changed = sorted(set(previous) | set(self.settings))
            changed = [f"{k}: {previous.get(k)!r} -> {self.settings.get(k)!r}"
                       for k in changed if previous.get(k) != self.settings.get(k)]
            raise OutputDirError(
                f"output dir {str(path)!r} holds an unfinished run with other settings ({'; '.join(changed)}); "
                f"run with the same arguments to resume it, or {advice}"
            )
        return True

    def _entries(self) -> list[Path]:
        """The directory's entries, without temporary files (of a probe, or of a write cut short by a kill)."""
        return [p for p in self.path.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]

    def probe(self, min_free_bytes: int = MIN_FREE_BYTES) -> None:
        """Create the directory and check that it is writable and has ``min_free_bytes`` free, before any attack."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".probe-", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(b"probe")
                f.flush()
                os.fsync(f.fileno())
            os.unlink(tmp)
            free = shutil.disk_usage(self.path).free
        except OSError as err:
            raise OutputDirError(f"output dir {str(self.path)!r} is not writable: {err}") from err
        if free < min_free_bytes:
            raise OutputDirError(f"output dir {str(self.path)!r} has only {free / 2**20:.1f} MiB free; "
                                 f"at least {min_free_bytes / 2**20:.0f} MiB are needed")

    def start(self, resume: bool) -> None:
        """Main process only: remove a previous run's outputs unless resuming (see :meth:`check`), record settings."""
        if not resume:
            for name in OUTPUTS:
                remove(self.path / name)
        write_json(self.path / RUN_FILE, {"settings": self.settings})

    def finished(self) -> set[str]:
        """Names of the units whose records are written."""
        units = self.path / UNITS_DIR
        return {p.stem for p in units.glob("*.jsonl")} if units.is_dir() else set()

    def write_unit(self, name: str, records: list[dict]) -> None:
        """Atomically write the records of a finished unit (the unit then counts as done)."""
        atomic_write(self.path / UNITS_DIR / f"{name}.jsonl",
                     "".join(json.dumps(to_json(r), allow_nan=False) + "\n" for r in records))

    def read_unit(self, name: str) -> list[dict]:
        """The records of a finished unit."""
        with open(self.path / UNITS_DIR / f"{name}.jsonl") as f:
            return [json.loads(line) for line in f]

    def write_records(self, records: list[dict]) -> None:
        """All records in one ``records.jsonl``, in the order given."""
        atomic_write(self.path / RECORDS_FILE, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))

    def write_results(self, results: dict) -> None:
        """``all_results.json``: written last, it marks the run as finished."""
        write_json(self.path / RESULTS_FILE, results)
