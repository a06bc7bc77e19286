"""Reading a lightning-nmt checkpoint: `torch.load(weights_only=True)` with one-line errors, and the constructor
arguments of the module that wrote it."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from lightning_nmt.errors import CheckpointError

RETIRED_HPARAMS = ("num_heatmaps",)
"""Hyperparameters a checkpoint may store that the module does not take (heatmaps are the callback's:
`callbacks.num_heatmaps`): a checkpoint with them loads, they are ignored."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)`, memory-mapped (tensors are read when touched), with clear errors for a
    missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the very end
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: not a complete "
                              "torch archive)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, pickle garbage, disallowed globals...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {first_line[:200]}"
        ) from None
    missing = [key for key in ("hyper_parameters", "state_dict", "tokenizer") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a lightning-nmt checkpoint (missing {', '.join(missing)})")
    return checkpoint


def module_arguments(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The `TranslationModule` arguments stored in `checkpoint` (`RETIRED_HPARAMS` left out)."""
    return {key: value for key, value in checkpoint["hyper_parameters"].items() if key not in RETIRED_HPARAMS}
