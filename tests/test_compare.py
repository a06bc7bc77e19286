"""lnmt-compare on synthetic run directories: rows, differing overrides, duplicates, files, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lightning_nmt.compare import main


def make_run(path: Path, overrides: list[str], metrics: dict | None) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def trained(val_bleus: list[float], test_bleu: float) -> dict:
    history = [{"step": 100 * (i + 1), "bleu": b, "chrf": 2 * b, "ppl": 10.0 - i} for i, b in enumerate(val_bleus)]
    return {"val": history[-1], "val_history": history, "test": {"bleu": test_bleu, "chrf": 50.0, "ppl": 3.25},
            "steps": 100 * len(val_bleus), "wall_seconds": 61.4, "train_tgt_tokens_per_sec": 1234.6}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    make_run(root / "0", ["model=basic", "model.attention=dot", "trainer.max_steps=300"], trained([5, 9, 7], 8.5))
    make_run(root / "1", ["model=basic", "model.attention=general", "trainer.max_steps=300"],
             {"duplicate_of": str(root / "0")})
    make_run(root / "2", ["model=attention", "model.attention=dot", "trainer.max_steps=300"], trained([20, 30], 29))
    make_run(root / "10", ["model=attention", "model.attention=general", "trainer.max_steps=300"], None)
    (root / ".dedup").mkdir()  # not a run
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_multirun_table_has_one_row_per_job_with_differing_overrides(sweep: Path, capsys) -> None:
    main([str(sweep)])
    rows = read_csv(sweep / "compare.csv")
    assert [r["run"] for r in rows] == ["sweep/0", "sweep/1", "sweep/2", "sweep/10"]  # numeric job order
    assert list(rows[0])[:3] == ["run", "model", "model.attention"]  # trainer.max_steps is the same everywhere
    first = rows[0]
    # validation of the best checkpoint (BLEU 9 at step 200), test, steps, time, throughput
    assert (first["val BLEU"], first["val chrF"], first["val ppl"]) == ("9.00", "18.00", "9.00")
    assert (first["test BLEU"], first["test ppl"], first["steps"], first["wall s"], first["train tok/s"]) == (
        "8.50", "3.25", "300", "61", "1235")
    assert rows[1]["test BLEU"] == "" and rows[1]["note"] == "duplicate of sweep/0"
    assert rows[2]["val BLEU"] == "30.00" and rows[2]["note"] == ""
    assert rows[3]["test BLEU"] == "" and "no metrics.json" in rows[3]["note"]
    out = capsys.readouterr().out
    assert out == (sweep / "compare.md").read_text()
    assert out.splitlines()[2].startswith("| sweep/0 | basic | dot | 9.00 | 8.50 |")
    assert (sweep / "val_bleu.png").read_bytes()[:4] == b"\x89PNG"


def test_several_directories_and_out(sweep: Path, tmp_path: Path) -> None:
    single = make_run(tmp_path / "runs" / "2026-01-01_10-00-00", ["model=transformer"], trained([40], 41))
    out = tmp_path / "report"
    main([str(single), str(sweep), "--out", str(out)])
    rows = read_csv(out / "compare.csv")
    assert [r["run"] for r in rows][:2] == ["2026-01-01_10-00-00", "sweep/0"]
    assert rows[0]["model"] == "transformer" and rows[0]["model.attention"] == ""
    assert "trainer.max_steps" in rows[0]  # set in the sweep, absent in the single run: it differs
    assert not (single / "compare.csv").exists()


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None])
def test_directory_without_runs_is_a_one_line_error(tmp_path: Path, make, capsys) -> None:
    target = tmp_path / "empty"
    make(target)
    with pytest.raises(SystemExit) as exc:
        main([str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(target) in err and len(err.strip().splitlines()) == 1
