"""Atomic writes leave the usual permissions (not mkstemp's 0600) and no temp file behind."""

from __future__ import annotations

import os
import stat

import pytest

from lightning_nmt.atomic import atomic_path, atomic_write_text


def test_atomic_file_gets_umask_permissions(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_previous_file(tmp_path) -> None:
    target = tmp_path / "last.ckpt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-save")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
