"""Process-wide performance settings: oneDNN's primitive cache is kept small unless the user set it."""

import os

import pytest

from lightning_nmt.perf import tune_memory


@pytest.mark.parametrize(("preset", "expected"), [(None, "8"), ("256", "256")])
def test_onednn_cache_is_limited_unless_set(monkeypatch, preset, expected):
    if preset is None:
        monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", preset)
    tune_memory()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == expected
