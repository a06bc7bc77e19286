"""lnmt-compare on synthetic run directories: per-run rows (compare_runs.csv), differing overrides, duplicates,
files, errors. Grouping by seed and the tests against a baseline: tests/test_compare_seeds.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lightning_nmt.compare import legend_labels, load_runs, main


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
    make_run(root / "11", ["model=attention", "model.attention=concat", "trainer.max_steps=300"],
             {"status": "failed", "error": "training diverged: the loss was NaN/inf", "step": 42})
    (root / ".dedup").mkdir()  # not a run
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_multirun_table_has_one_row_per_job_with_differing_overrides(sweep: Path, capsys) -> None:
    main([str(sweep), "--runs"])
    rows = read_csv(sweep / "compare_runs.csv")
    assert [r["run"] for r in rows] == ["sweep/0", "sweep/1", "sweep/2", "sweep/10", "sweep/11"]  # numeric order
    assert list(rows[0])[:3] == ["run", "model", "model.attention"]  # trainer.max_steps is the same everywhere
    first = rows[0]
    # validation of the best checkpoint (BLEU 9 at step 200), test, steps, time, throughput
    assert (first["val BLEU"], first["val chrF"], first["val ppl"]) == ("9.00", "18.00", "9.00")
    assert (first["test BLEU"], first["test ppl"], first["steps"], first["wall s"], first["train tok/s"]) == (
        "8.50", "3.25", "300", "61", "1235")
    assert rows[1]["test BLEU"] == "" and rows[1]["note"] == "duplicate of sweep/0"
    assert rows[2]["val BLEU"] == "30.00" and rows[2]["note"] == ""
    assert rows[3]["test BLEU"] == "" and "no metrics.json" in rows[3]["note"]
    assert rows[4]["val BLEU"] == "" and rows[4]["note"] == "failed at step 42: training diverged: the loss was NaN/inf"
    out = capsys.readouterr().out
    assert out == (sweep / "compare.md").read_text()
    runs = out.split("## Runs\n\n")[1].splitlines()
    assert runs[2].startswith("| sweep/0 | basic | dot |  | 9.00 | 8.50 |")  # no seed in these runs
    assert (sweep / "val_bleu.png").read_bytes()[:4] == b"\x89PNG"
    # the duplicate joins the configuration of the job it points at; unfinished and failed jobs are counted
    configs = read_csv(sweep / "compare.csv")
    assert [(c["configuration"], c["seeds"], c["failed"]) for c in configs] == [
        ("model=basic, model.attention=dot", "1", "0"), ("model=attention, model.attention=dot", "1", "0"),
        ("model=attention, model.attention=general", "0", "0"), ("model=attention, model.attention=concat", "0", "1")]
    assert configs[0]["test BLEU mean"] == "8.5000" and "sweep/1: duplicate of sweep/0" in configs[0]["note"]


def test_several_directories_and_out(sweep: Path, tmp_path: Path) -> None:
    single = make_run(tmp_path / "runs" / "2026-01-01_10-00-00", ["model=transformer"], trained([40], 41))
    out = tmp_path / "report"
    main([str(single), str(sweep), "--out", str(out)])
    rows = read_csv(out / "compare_runs.csv")
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


@pytest.fixture
def legends(monkeypatch) -> list[list[str]]:
    """The legend texts of every figure saved during the test, read from the matplotlib figures."""
    from matplotlib.figure import Figure

    saved: list[list[str]] = []
    savefig = Figure.savefig

    def spy(fig: Figure, *args, **kwargs) -> None:
        legend = fig.axes[0].get_legend()
        saved.append([text.get_text() for text in legend.get_texts()] if legend else [])
        savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved


def test_val_bleu_lines_are_labelled_by_differing_overrides(sweep: Path, legends: list[list[str]]) -> None:
    main([str(sweep)])
    # only the trained configurations have curves; trainer.max_steps is the same everywhere, so it is not in the
    # labels; the test BLEU figure has no legend (its configurations are its x axis)
    assert legends == [["model=basic, model.attention=dot", "model=attention, model.attention=dot"], []]


def test_legend_labels_name_variants_and_tell_equal_runs_apart(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for job, variant in enumerate(["basic", "attention_concat", "attention_concat"]):
        make_run(root / str(job), [f"+variant={variant}", "trainer.max_steps=1500"], trained([1, 2], 3))
    alone = make_run(tmp_path / "defaults", ["trainer.max_steps=1500"], trained([1], 2))
    runs = load_runs([root, alone])
    assert legend_labels(runs) == ["variant=basic", "variant=attention_concat (sweep/1)",
                                   "variant=attention_concat (sweep/2)", "defaults"]


def write_eval(path: Path, ckpt: Path, bleus: list[float], beam_size: int = 5,
               buckets: tuple[tuple[int, int], ...] = ((1, 5), (6, 10), (11, 30))) -> Path:
    """An lnmt-eval output whose test set has `bleus` (and bleu_tok_lc = bleu + 1) by source length."""
    groups = [{"min_words": lo, "max_words": hi, "sentences": 10, "bleu": b, "bleu_tok_lc": b + 1}
              for (lo, hi), b in zip(buckets, bleus, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ckpt_path": str(ckpt), "results": {
        "test": {"bleu": 20.0, "beam_size": beam_size, "by_source_length": groups}}}))
    return path


def test_bleu_by_length_bars(tmp_path: Path, legends: list[list[str]], capsys) -> None:
    root = tmp_path / "sweep"
    for job, variant in enumerate(["basic", "attention_concat"]):
        make_run(root / str(job), [f"+variant={variant}"], trained([1], 2))
    files = [
        write_eval(tmp_path / "e0.json", root / "0" / "checkpoints" / "best-step000800-bleu21.70.ckpt", [65, 25, 8]),
        write_eval(tmp_path / "e1.json", root / "1" / "checkpoints" / "best-step000800-bleu96.20.ckpt", [98, 98, 94]),
        write_eval(tmp_path / "e2.json", root / "1" / "checkpoints" / "averaged.ckpt", [99, 98, 95]),
        write_eval(tmp_path / "e3.json", tmp_path / "gone" / "checkpoints" / "last.ckpt", [1, 2, 3], beam_size=1),
    ]
    main(["--by-length", *map(str, files), "--out", str(tmp_path / "report")])
    assert (tmp_path / "report" / "bleu_by_length.png").read_bytes()[:4] == b"\x89PNG"
    labels = ["variant=basic, beam_size=5", "variant=attention_concat, beam_size=5 (1/best-step000800-bleu96.20.ckpt)",
              "variant=attention_concat, beam_size=5 (1/averaged.ckpt)", "beam_size=1"]
    assert legends == [labels]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| eval | 1-5 words | 6-10 words | 11-30 words |"
    assert lines[2] == "| variant=basic, beam_size=5 | 65.00 | 25.00 | 8.00 |"
    assert lines[5] == "| beam_size=1 | 1.00 | 2.00 | 3.00 |"
    main(["--by-length", str(files[0]), "--metric", "bleu_tok_lc"])  # default --out: the first file's directory
    assert (tmp_path / "bleu_by_length.png").is_file() and "| 66.00 | 26.00 | 9.00 |" in capsys.readouterr().out


@pytest.mark.parametrize("second, message", [
    (lambda p: write_eval(p, p, [1, 2], buckets=((1, 7), (8, 30))), "length buckets"),
    (lambda p: p.write_text("{}"), "is not an lnmt-eval output"),
])
def test_bleu_by_length_bad_input_is_one_line(tmp_path: Path, second, message: str, capsys) -> None:
    first = write_eval(tmp_path / "a.json", tmp_path / "a.ckpt", [1, 2, 3])
    second(tmp_path / "b.json")
    with pytest.raises(SystemExit) as exc:
        main(["--by-length", str(first), str(tmp_path / "b.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bleu_by_length.png").exists()
