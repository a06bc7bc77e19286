"""Layers point one way: the models do not import the data pipeline (sentencepiece), the schema does not import
the LightningModule, and inference (`lnmt-translate`, `lnmt-eval`, `lnmt-serve`) does not import the training root
or wandb (the server loads the LightningModule, or CTranslate2, only for the model it serves)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("module", "not_loaded"), [
    ("lightning_nmt.models", ["sentencepiece", "lightning_nmt.data.tokenizer", "lightning"]),
    ("lightning_nmt.config", ["lightning_nmt.module"]),
    ("lightning_nmt.translate", ["wandb", "lightning_nmt.app", "lightning_nmt.sweeps", "lightning_nmt.loggers"]),
    ("lightning_nmt.eval", ["wandb", "lightning_nmt.app", "lightning_nmt.sweeps", "lightning_nmt.loggers"]),
    ("lightning_nmt.serve", ["wandb", "lightning_nmt.app", "lightning_nmt.sweeps", "lightning_nmt.loggers",
                             "lightning_nmt.module", "ctranslate2"]),
])
def test_importing_a_layer_leaves_the_ones_above_unloaded(module: str, not_loaded: list[str]) -> None:
    code = f"import sys, {module}; print(' '.join(m for m in {not_loaded!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == [], f"import {module} loaded {done.stdout.split()}"
