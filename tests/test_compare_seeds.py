"""lnmt-compare over seeds: runs grouped by effective configuration, mean ± std and t-intervals, tests against a
baseline (equal to sacreBLEU's with one seed a side), eval directories, bad input, and the HTML report."""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from lightning_nmt import record, significance
from lightning_nmt.compare import compare, main
from lightning_nmt.data.sample import generate_pairs
from lightning_nmt.record import RunRecord
from tests.conftest import compose_many

VARIANTS = {"attention_dot": 0.30, "attention_general": 0.27, "attention_concat": 0.05}
"""Variant -> fraction of words a synthetic run gets wrong (concat is far better, general close to dot)."""
REFS = [tgt for _, tgt in generate_pairs(400, seed=7)]


def hypotheses(error: float, seed: int, refs: list[str] = REFS) -> list[str]:
    """The references with a fraction `error` of their words replaced (the seed decides which)."""
    rng = random.Random(seed)
    return [" ".join(w if rng.random() > error else "xx" for w in ref.split()) for ref in refs]


def configs_for(variants: list[str], seeds: list[int], tmp_path: Path):
    overrides = [[f"+variant={v}", f"seed={s}"] for v in variants for s in seeds]
    return zip(overrides, compose_many("train", overrides, tmp_path))


def make_run(path: Path, overrides: list[str], cfg, hyps: list[str] | None, refs: list[str] = REFS,
             status: str = "finished", **fields) -> Path:
    """A run directory as lnmt-train leaves it: .hydra/, metrics.json, test.hyp.txt and test.ref.txt."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    saved = OmegaConf.to_container(cfg)
    saved.pop("hydra", None)
    (path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    if status == "failed":
        record.write(path, RunRecord(status="failed", error="training diverged", step=10, seed=cfg.seed))
        return path
    bleu = BLEU().corpus_score(hyps, [refs]).score if hyps else 0.0
    chrf = CHRF().corpus_score(hyps, [refs]).score if hyps else 0.0
    history = [{"step": 100, "bleu": bleu / 2}, {"step": 200, "bleu": bleu}]
    record.write(path, RunRecord(status="finished", seed=cfg.seed, val_history=history, wall_seconds=10.0,
                                 results={"test": {"bleu": bleu, "chrf": chrf}, "steps": 200}, **fields))
    if hyps is not None:
        (path / "test.hyp.txt").write_text("".join(h + "\n" for h in hyps))
        (path / "test.ref.txt").write_text("".join(r + "\n" for r in refs))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Three variants x seeds 1, 2, 3 (job numbers as Hydra gives them), plus a failed job of concat."""
    root = tmp_path_factory.mktemp("sweep")
    for job, (overrides, cfg) in enumerate(configs_for(list(VARIANTS), [1, 2, 3], root / "cfg")):
        variant = overrides[0].split("=")[1]
        make_run(root / str(job), overrides, cfg, hypotheses(VARIANTS[variant], 100 * job))
    (overrides, cfg), = configs_for(["attention_concat"], [4], root / "cfg")
    make_run(root / "9", overrides, cfg, None, status="failed")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_seeds_of_a_configuration_are_one_row_with_mean_std_and_t_interval(sweep: Path, tmp_path: Path) -> None:
    report = compare([sweep], tmp_path)
    rows = {r["configuration"]: r for r in read_csv(tmp_path / "compare.csv")}
    assert list(rows) == ["model.attention=dot", "model.attention=general", "model.attention=concat"]
    dot = rows["model.attention=dot"]
    bleus = [BLEU().corpus_score(hypotheses(0.30, 100 * job), [REFS]).score for job in range(3)]
    mean, std = np.mean(bleus), np.std(bleus, ddof=1)
    half = 4.302652729911275 * std / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert dot["seeds"] == "3" and dot["failed"] == "0"
    assert float(dot["test BLEU mean"]) == pytest.approx(mean, abs=1e-4)
    assert float(dot["test BLEU std"]) == pytest.approx(std, abs=1e-4)
    assert float(dot["test BLEU ci_low"]) == pytest.approx(mean - half, abs=1e-3)
    assert float(dot["test BLEU ci_high"]) == pytest.approx(mean + half, abs=1e-3)
    concat = rows["model.attention=concat"]
    assert concat["seeds"] == "3" and concat["failed"] == "1" and "9 failed: training diverged" in concat["note"]
    assert [c.short for c in report.configs] == ["dot", "general", "concat"]


def test_baseline_tests_every_other_configuration_stratified_by_seed(sweep: Path, tmp_path: Path, capsys) -> None:
    main([str(sweep), "--baseline", "model.attention=dot", "--out", str(tmp_path), "--trials", "2000"])
    out = capsys.readouterr().out
    lines = [line[2:] for line in out.splitlines() if line.startswith("- ")]
    concat = next(line for line in lines if line.startswith("concat vs dot:") and "BLEU" in line)
    general = next(line for line in lines if line.startswith("general vs dot:") and "BLEU" in line)
    assert "3 seeds" in concat and "p = 0.0005" in concat and "within seed spread" not in concat  # 1 / 2001
    tests = {(t["configuration"], t["metric"]): t for t in read_csv(tmp_path / "compare_tests.csv")}
    row = tests[("model.attention=concat", "bleu")]
    assert row["seed_pairs"] == "3" and row["unpaired"] == "0" and row["ci_method"] == "t over 3 seed pairs"
    dot = [BLEU().corpus_score(hypotheses(0.30, 100 * job), [REFS]).score for job in range(3)]
    cat = [BLEU().corpus_score(hypotheses(0.05, 100 * job), [REFS]).score for job in range(6, 9)]
    assert float(row["diff"]) == pytest.approx(np.mean(cat) - np.mean(dot), abs=1e-4)
    assert float(row["ci_low"]) < float(row["diff"]) < float(row["ci_high"])
    # general is 3 points of word error better than dot: is that more than the seeds' spread?
    general_row = tests[("model.attention=general", "bleu")]
    spread = max(np.std([BLEU().corpus_score(hypotheses(e, 100 * j), [REFS]).score for j in jobs], ddof=1)
                 for e, jobs in ((0.30, range(3)), (0.27, range(3, 6))))
    assert (general_row["within_seed_spread"] == "True") == (abs(float(general_row["diff"])) < spread)
    assert ("within seed spread" in general) == (abs(float(general_row["diff"])) < spread)
    for name in ("compare.md", "compare.csv", "compare_runs.csv", "compare_tests.csv", "compare.html"):
        assert (tmp_path / name).is_file()
    for name in ("val_bleu.png", "test_bleu.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_baseline_key_is_of_the_effective_configuration_not_the_override(sweep: Path, tmp_path: Path) -> None:
    # the jobs were selected with +variant=attention_dot: model.attention=dot is what that made of the model
    report = compare([sweep], tmp_path, baseline="model.attention=dot", trials=100)
    assert report.baseline.label == "model.attention=dot"
    assert [o for o in report.configs[0].seeds[0].overrides] == ["variant", "seed"]


@pytest.fixture
def one_seed(tmp_path: Path) -> Path:
    """dot and general with one seed each (near each other, so that p is neither 0 nor 1)."""
    root = tmp_path / "one"
    for job, (overrides, cfg) in enumerate(configs_for(["attention_dot", "attention_general"], [1], tmp_path)):
        make_run(root / str(job), overrides, cfg, hypotheses(0.30 - 0.02 * job, job))
    return root


def test_one_seed_a_side_gives_sacrebleus_own_p_values(one_seed: Path, tmp_path: Path) -> None:
    report = compare([one_seed], tmp_path / "out", baseline="model.attention=dot")
    base, other = hypotheses(0.30, 0), hypotheses(0.28, 1)
    for comparison in report.comparisons:
        metric = {"bleu": BLEU(), "chrf": CHRF()}[comparison.metric]
        expected = {}
        for kind in ("ar", "bs"):
            _, scores = PairedTest([("dot", base), ("general", other)], {"m": metric}, [REFS], test_type=kind)()
            expected[kind] = next(v for k, v in scores.items() if k != "System")[1].p_value
        assert (comparison.p, comparison.p_bootstrap) == (expected["ar"], expected["bs"])
        assert 0.001 < comparison.p < 0.9 and comparison.pairs == 1 and comparison.ci_method.startswith("paired")
        # our stratified test with one stratum, under another seed: within Monte Carlo error of sacreBLEU's
        scorer = significance.metric(comparison.metric)
        stats = [significance.sentence_stats(scorer, h, REFS)[None] for h in (base, other)]
        ours = significance.stratified_ar(scorer, *stats, seed=1)
        assert abs(ours - expected["ar"]) < 4 * math.sqrt(expected["ar"] * (1 - expected["ar"]) / 10_000) * 1.5
    assert "std –" in (tmp_path / "out" / "compare.md").read_text()  # one seed: no spread, and it says so


def test_stratified_ar_with_one_stratum_is_sacrebleus_draw_for_draw() -> None:
    base, other = hypotheses(0.30, 0), hypotheses(0.29, 1)
    scorer = significance.metric("bleu")
    stats = [significance.sentence_stats(scorer, h, REFS)[None] for h in (base, other)]
    _, scores = PairedTest([("a", base), ("b", other)], {"m": BLEU()}, [REFS], test_type="ar")()
    assert significance.stratified_ar(scorer, *stats) == next(v for k, v in scores.items() if k != "System")[1].p_value


def test_equal_systems_get_p_1() -> None:
    scorer = significance.metric("bleu")
    stats = significance.sentence_stats(scorer, hypotheses(0.3, 0), REFS)[None]
    assert significance.stratified_ar(scorer, stats, stats.copy(), trials=100) == 1.0


def test_seeds_pair_by_value_else_by_rank() -> None:
    assert significance.pair_seeds([1, 2, 3], [2, 3, 4]) == ([(2, 2), (3, 3)], 2)
    assert significance.pair_seeds([5, 1, 3], [6, 2, 4]) == ([(1, 2), (3, 4), (5, 6)], 0)
    assert significance.pair_seeds([1, 2, 3], [7, 8]) == ([(1, 7), (2, 8)], 1)


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_different_test_sets_get_no_p_value_and_the_table_still_prints(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    other_refs = [tgt for _, tgt in generate_pairs(400, seed=8)]
    for job, (overrides, cfg) in enumerate(configs_for(["attention_dot", "attention_general"], [1], tmp_path)):
        refs = REFS if job == 0 else other_refs
        make_run(root / str(job), overrides, cfg, hypotheses(0.3, job, refs), refs)
    main([str(root), "--baseline", "model.attention=dot"])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("- general vs dot: no BLEU p-value"))
    assert "tested on different test sets (their references differ)" in line
    assert "| model.attention=general | 1 | 0 |" in out


def test_run_without_kept_hypotheses_gets_its_row_a_note_and_no_p_value(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    for job, (overrides, cfg) in enumerate(configs_for(["attention_dot", "attention_general"], [1], tmp_path)):
        make_run(root / str(job), overrides, cfg, hypotheses(0.3, job))
    (root / "1" / "test.ref.txt").unlink()  # a run from before references were kept
    main([str(root), "--baseline", "model.attention=dot"])
    out = capsys.readouterr().out
    assert "- general vs dot: no BLEU p-value: no kept test translations and references (sweep/1)" in out
    assert "| model.attention=general | 1 | 0 |" in out


@pytest.mark.parametrize("baseline, message", [
    ("model.attention=luong", "selects no configuration"),
    ("model.type=attention", "selects 3 configurations"),
    ("model.attention", "expected KEY=VALUE"),
])
def test_a_baseline_selecting_none_or_several_is_an_error_listing_them(sweep: Path, tmp_path: Path, baseline: str,
                                                                      message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), "--baseline", baseline, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    if "KEY=VALUE" not in message:
        assert "the configurations are: model.attention=dot (" in err and "; model.attention=concat (" in err


def test_failed_jobs_are_counted_never_averaged(sweep: Path, tmp_path: Path) -> None:
    report = compare([sweep], tmp_path)
    concat = report.configs[2]
    assert len(concat.failed) == 1 and len(concat.values("test", "bleu")) == 3


def test_a_seed_run_twice_counts_once(sweep: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    (overrides, cfg), = configs_for(["attention_dot"], [2], tmp_path)
    make_run(again / "0", overrides, cfg, hypotheses(0.9, 5))
    report = compare([sweep, again], tmp_path / "out")
    dot = report.configs[0]
    assert [r.seed for r in dot.seeds] == [1, 2, 3] and "seed 2 counted once (as sweep" in dot.left_out[0][1]


def test_different_data_and_hardware_are_warned(sweep: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "sweep"
    for job in (0, 1):
        shutil.copytree(sweep / str(job), copy / str(job))
    other = tmp_path / "other"
    (overrides, cfg), = configs_for(["attention_dot"], [7], tmp_path)
    make_run(other / "0", overrides, cfg, hypotheses(0.3, 7), data={"splits": {"test": [{"sha256": "x"}]}},
             provenance={"cpu": "Other CPU"})
    for job in (0, 1):
        path = copy / str(job)
        rec = record.read(path)
        rec.data, rec.provenance = {"splits": {"test": [{"sha256": "y"}]}}, {"cpu": "AMD EPYC"}
        record.write(path, rec)
    main([str(copy / "0"), str(copy / "1"), str(other), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "warning: the runs read different data (their data fingerprints differ): 0, 1 vs other/0" in err
    assert "compare runs on different hardware: AMD EPYC (0, 1); Other CPU (other/0)" in err


# ---- lnmt-eval outputs -------------------------------------------------------------------------------------------
def make_eval(path: Path, ckpt: Path, hyps: list[str], beam_size: int = 5) -> Path:
    """An lnmt-eval output directory: eval.json, its hypotheses and references."""
    path.mkdir(parents=True)
    (path / "eval.test.hyp.txt").write_text("".join(h + "\n" for h in hyps))
    (path / "eval.test.ref.txt").write_text("".join(r + "\n" for r in REFS))
    results = {"test": {"bleu": BLEU().corpus_score(hyps, [REFS]).score, "beam_size": beam_size,
                        "length_penalty": 1.0, "signature": "nrefs:1|case:mixed",
                        "hypotheses": str(path / "eval.test.hyp.txt"), "references": str(path / "eval.test.ref.txt")}}
    (path / "eval.json").write_text(json.dumps({"ckpt_path": str(ckpt), "results": results}))
    return path


def test_eval_outputs_compare_checkpoints_with_the_same_test(sweep: Path, tmp_path: Path) -> None:
    evals = tmp_path / "evals"
    for job in range(3):  # the dot seeds: their best checkpoint and their average
        ckpt_dir = sweep / str(job) / "checkpoints"
        make_eval(evals / f"best{job}", ckpt_dir / f"best-step00020{job}-bleu1.00.ckpt", hypotheses(0.3, job))
        make_eval(evals / f"avg{job}", ckpt_dir / "averaged.ckpt", hypotheses(0.25, job))
    report = compare([evals], tmp_path / "out", baseline="eval.checkpoint=best", trials=500)
    # directories in name order: avg0..2, best0..2
    assert [(c.config["eval.checkpoint"], len(c.seeds)) for c in report.configs] == [("averaged", 3), ("best", 3)]
    assert [r.seed for r in report.configs[1].seeds] == [1, 2, 3]
    bleu = next(c for c in report.comparisons if c.metric == "bleu")
    assert bleu.pairs == 3 and bleu.diff > 0 and bleu.sentence().startswith("averaged vs best: +")


def test_older_metrics_json_reads(tmp_path: Path) -> None:
    """metrics.json as lnmt-train wrote it before the record had a version (schema 1)."""
    finished = {"status": "finished", "val": {"bleu": 5.0}, "steps": 300, "val_history": [{"step": 300, "bleu": 5.0}],
                "test": {"bleu": 4.0}, "wall_seconds": 12.5, "config_hash": "abc", "model": "basic"}
    older = {k: v for k, v in finished.items() if k not in ("status", "config_hash")}  # before status existed
    failed = {"status": "failed", "error": "diverged", "error_type": "TrainingDiverged", "step": 42, "config_hash": "x"}
    for data, status in ((finished, "finished"), (older, "finished"), (failed, "failed"),
                         ({"duplicate_of": "/x/0"}, "duplicate")):
        (tmp_path / "metrics.json").write_text(json.dumps(data))
        rec = record.read(tmp_path)
        assert rec.schema_version == 1 and rec.status == status
        assert {k: v for k, v in rec.to_dict().items() if k not in ("schema_version", "status")} == {
            k: v for k, v in data.items() if k != "status"}
    rec = RunRecord.from_dict(finished)
    assert rec.split("test") == {"bleu": 4.0} and rec.best_val()["bleu"] == 5.0 and rec.wall_seconds == 12.5


# ---- the HTML report, in a headless browser ----------------------------------------------------------------------
@pytest.mark.slow
def test_the_html_report_opens_offline_with_its_tables_and_plots(sweep: Path, tmp_path: Path) -> None:
    from tests.browser import chromium_binary, headless_page

    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary found (apt-get install -y chromium)")
    pytest.importorskip("websockets", reason="the browser test drives chromium over websockets: pip install websockets")
    out = tmp_path / "report"
    compare([sweep], out, baseline="model.attention=dot", trials=200)
    page = (out / "compare.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing to fetch or run
    with headless_page(binary, tmp_path / "profile") as devtools:
        devtools("Page.navigate", url=(out / "compare.html").as_uri())
        devtools.wait_for("document.readyState === 'complete'")
        rows = devtools.js("Array.from(document.querySelectorAll('#configurations tbody tr'))"
                           ".map(r => Array.from(r.cells).map(c => c.textContent))")
        assert [r[:3] for r in rows] == [["model.attention=dot", "3", "0"], ["model.attention=general", "3", "0"],
                                         ["model.attention=concat", "3", "1"]]
        tests = devtools.js("Array.from(document.querySelectorAll('#tests li')).map(li => li.textContent)")
        assert len(tests) == 4 and tests[2].startswith("concat vs dot: +") and "3 seeds" in tests[2]
        images = devtools.js("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) == 2 and all(done and w > 300 and h > 200 for done, w, h in images)  # both plots decoded
        assert devtools.js("document.querySelectorAll('#runs tbody tr').length") == 10
