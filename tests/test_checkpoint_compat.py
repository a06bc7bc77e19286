"""Checkpoints written before a refactor translate exactly as they did: tests/fixtures/checkpoints holds a tiny basic,
attention (LSTM, input feeding) and Transformer model trained on the embedded sample with commit b191a10, and the
translations that commit gave (made by tests/fixtures/checkpoints/make_reference.py, run in a checkout of it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_nmt.data.batching import collate
from lightning_nmt.data.dataset import Example
from lightning_nmt.translate import Translator

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
REFERENCE = json.loads((FIXTURES / "translations.json").read_text())


@pytest.mark.parametrize("speedups", ["off", "auto"])
@pytest.mark.parametrize("model", sorted(REFERENCE["models"]))
def test_old_checkpoint_translates_as_before(model: str, speedups: str) -> None:
    expected, lines = REFERENCE["models"][model][speedups], REFERENCE["lines"]
    beam = Translator.from_checkpoint(FIXTURES / f"{model}.ckpt", speedups=speedups, beam_size=3)
    nbest = beam.translate_nbest(lines, nbest=2)
    assert [[hyp for hyp, _ in hyps] for hyps in nbest] == [[hyp for hyp, _ in hyps] for hyps in expected["nbest"]]
    for got, want in zip(nbest, expected["nbest"], strict=True):
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)
    greedy = Translator.from_checkpoint(FIXTURES / f"{model}.ckpt", speedups=speedups, beam_size=1)
    assert greedy.translate(lines) == expected["greedy"]
    if expected["attention"] is None:
        return
    model = beam.backend.model
    encoded = model.tokenizer.encode_src(lines[:4])
    batch = collate([Example(i, ids, None) for i, ids in enumerate(encoded)])
    with torch.inference_mode():
        found = model.translate_ids(batch["src"], batch["src_lengths"], beam.decoding)
    for row, weights in enumerate(expected["attention"]):
        torch.testing.assert_close(found.attention[row][0].float(), torch.tensor(weights), atol=1e-5, rtol=0)
