"""Greedy and beam outputs on Multi30k test2016 are those of the code before decoding became plug-ins: the fixture
checkpoints on the PyTorch backend (every model type) and the Transformer exported to CTranslate2, greedy and beam 5,
against digests the earlier code wrote (tests/fixtures/checkpoints/make_test2016_reference.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("ctranslate2", reason="the CTranslate2 backend needs ctranslate2")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"


@pytest.mark.slow
def test_greedy_and_beam_outputs_on_test2016_are_unchanged(multi30k_root):
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_test2016_reference import digests
    finally:
        sys.path.remove(str(FIXTURES))
    expected = json.loads((FIXTURES / "test2016.json").read_text())
    assert digests(multi30k_root / "test_2016_flickr.en.gz") == expected
