"""Share a run's results the Hugging Face way at its end (:func:`share_results`): the model card always, the
adversarial examples with ``--export_dataset``, pushes when asked.

The Hub flags are checked before the attack runs (:func:`check_sharing`): offline mode (``HF_HUB_OFFLINE``), no
token, a bad token or an unreachable Hub is one error line then, not after hours of attacks.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from accelerate.logging import get_logger

from .export import ExportError, check_replaceable, export_dataset
from .model_card import MODEL_CARD_FILE, model_card
from .records import OUTPUTS, RESULTS_FILE, OutputDirError, RunDirectory, atomic_write

logger = get_logger(__name__)


def _offline() -> bool:
    from huggingface_hub import is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _check_hub(flag: str, repo_id: str, repo_type: str) -> None:
    """The Hub can take a push to ``repo_id`` now: a valid id, online, a valid token (and, for a model card, the
    model repository exists); :class:`ExportError` naming ``flag`` otherwise."""
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ExportError(f"{flag} {repo_id!r} is not a Hub repository id ('name' or 'owner/name'): {err}") from None
    if _offline():
        raise ExportError(f"{flag} {repo_id}: the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE); unset it to "
                          "push, or drop the flag (the results are written to the output dir either way)")
    if not huggingface_hub.get_token():
        raise ExportError(f"{flag} {repo_id}: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")
    api = huggingface_hub.HfApi()
    try:
        api.whoami()
        if repo_type == "model":
            api.model_info(repo_id)
    except Exception as err:  # noqa: BLE001 - network errors, HTTP errors and bad tokens alike stop the run here
        raise ExportError(f"{flag} {repo_id}: cannot use the Hugging Face Hub ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); check the network, your token and the "
                          "repository, or drop the flag") from None


def check_sharing(args: argparse.Namespace) -> None:
    """Check the sharing flags before anything heavy and turn on ``--save_adversarial`` for ``--export_dataset``;
    :class:`ExportError` (or :class:`~.records.OutputDirError`) on the first problem.

    >>> check_sharing(argparse.Namespace(export_dataset=None, push_to_hub="me/adv", push_model_card=None))
    Traceback (most recent call last):
    ...
    hf_sparse_attack.evaluation.harness.export.ExportError: --push_to_hub pushes the dataset of ...
    """
    export, push, card = (getattr(args, name, None) for name in ("export_dataset", "push_to_hub", "push_model_card"))
    if push is not None and export is None:
        raise ExportError("--push_to_hub pushes the dataset of --export_dataset: pass --export_dataset DIR too")
    if export is not None:
        _check_export_dir(Path(export).expanduser(), Path(args.output_dir).expanduser(), args.overwrite)
        args.save_adversarial = True
    if push is not None:
        _check_hub("--push_to_hub", push, "dataset")
    if card is not None:
        _check_hub("--push_model_card", card, "model")


def _check_export_dir(path: Path, output_dir: Path, overwrite: bool) -> None:
    """``path`` can take the exported dataset: not the run's output dir, above it or inside its outputs; empty, new,
    or an earlier export with ``overwrite``; its parent writable."""
    resolved, out = path.resolve(), output_dir.resolve()
    if out.is_relative_to(resolved) or (resolved.is_relative_to(out) and resolved.relative_to(out).parts[0] in OUTPUTS):
        raise ExportError(f"--export_dataset {str(path)!r} is or holds the run's output dir or its outputs; choose "
                          "another directory")
    check_replaceable(path, "--export_dataset", overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise OutputDirError(f"--export_dataset {str(path)!r}: its directory is not writable: {err}") from err


def share_results(spec: Any, objective: Any, dataset: Any, run: RunDirectory, args: argparse.Namespace) -> None:
    """Main process, after ``all_results.json``: write ``model_card.md``; with ``--export_dataset`` export the
    adversarial examples (:func:`.export.export_dataset`); push them (``--push_to_hub``) and the results
    (``--push_model_card``) when asked. A failed push says how to push what was written."""
    import huggingface_hub

    results = json.loads((run.path / RESULTS_FILE).read_text())
    atomic_write(run.path / MODEL_CARD_FILE, str(model_card(results)))
    logger.info("model card (model-index) in %s", run.path / MODEL_CARD_FILE)
    export = getattr(args, "export_dataset", None)
    if export is not None:
        exported = export_dataset(spec, objective, dataset, run.path, Path(export).expanduser())
        logger.info("adversarial examples exported to %s: %s", export,
                    {split: len(rows) for split, rows in exported.items()})
        if args.push_to_hub is not None:
            try:
                exported.push_to_hub(args.push_to_hub)
            except Exception as err:  # noqa: BLE001 - any failure of the upload: the dataset is on disk
                raise ExportError(f"--push_to_hub {args.push_to_hub}: the upload failed ({type(err).__name__}: {err}); "
                                  f"the dataset is in {export}: push it with datasets.load_from_disk({export!r})."
                                  f"push_to_hub({args.push_to_hub!r})") from None
            logger.info("dataset pushed to https://huggingface.co/datasets/%s", args.push_to_hub)
    card = getattr(args, "push_model_card", None)
    if card is not None:
        metadata = model_card(results, model_name=card).data.to_dict()
        try:
            url = huggingface_hub.metadata_update(card, {"model-index": metadata["model-index"]}, create_pr=True,
                                                  commit_message="Add sparse adversarial robustness results")
        except Exception as err:  # noqa: BLE001 - any failure of the upload: the card is on disk
            raise ExportError(f"--push_model_card {card}: the pull request failed ({type(err).__name__}: {err}); "
                              f"the card is in {run.path / MODEL_CARD_FILE}") from None
        logger.info("pull request with the results on %s: %s", card, url)
