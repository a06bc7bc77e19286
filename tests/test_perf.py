"""Process-wide performance settings: oneDNN's and ideep's caches are kept small unless the user set them."""

import os

import pytest

from lightning_nmt.perf import tune_memory


@pytest.mark.parametrize(("name", "default"), [("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8"), ("LRU_CACHE_CAPACITY", "32")])
@pytest.mark.parametrize("preset", [None, "256"])
def test_matmul_caches_are_limited_unless_set(monkeypatch, name, default, preset):
    if preset is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, preset)
    tune_memory()
    assert os.environ[name] == (preset or default)
