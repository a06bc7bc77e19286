"""`lnmt-compare PATH... [--baseline KEY=VALUE] [--runs] [--out DIR]`: which configuration is better, and is it
the seed? (The offline twin of the wandb dashboard, with the statistics it lacks.)

Each PATH is a training run directory (`.hydra/`, and `metrics.json` once finished), an `lnmt-eval` output
directory (`eval.json` and its hypotheses), or a directory of either (a multirun). Runs whose effective
configurations (`.hydra/config.yaml`, read as `lightning_nmt.sweeps` compares jobs) differ only in `seed` are one
configuration; its row gives the number of seeds and of failed jobs, and the mean ± standard deviation over seeds
of val BLEU, test BLEU and test chrF with a 95% t-interval of the mean. `--baseline KEY=VALUE` selects one
configuration by a key of the effective configuration and tests every other against it on the runs' kept test
translations and references (`lightning_nmt.significance`). Writes `compare.md`, `compare.csv` (configurations),
`compare_runs.csv` (runs), `compare_tests.csv` (tests), `val_bleu.png`, `test_bleu.png` and a self-contained
`compare.html` into the first PATH or `--out`.

`lnmt-compare --by-length EVAL_JSON... [--out DIR]`: BLEU by source length (the `by_source_length` buckets
of `lnmt-eval`) of several checkpoints as a grouped bar chart, `bleu_by_length.png`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_nmt import record, significance
from lightning_nmt.atomic import atomic_path, atomic_write_text
from lightning_nmt.errors import UserError
from lightning_nmt.record import FAILED, FINISHED, RunRecord
from lightning_nmt.sweeps import effective_config

EVAL_FILE = "eval.json"
RUN_COLUMNS: list[tuple[str, str, str, str]] = [
    # header, split, key, format
    ("val BLEU", "val", "bleu", "{:.2f}"),
    ("test BLEU", "test", "bleu", "{:.2f}"),
    ("val chrF", "val", "chrf", "{:.2f}"),
    ("test chrF", "test", "chrf", "{:.2f}"),
    ("val ppl", "val", "ppl", "{:.2f}"),
    ("test ppl", "test", "ppl", "{:.2f}"),
    ("steps", "", "steps", "{:d}"),
    ("wall s", "", "wall_seconds", "{:.0f}"),
    ("train tok/s", "", "train_tgt_tokens_per_sec", "{:.0f}"),
]
SEED_COLUMNS = [("val BLEU", "val", "bleu"), ("test BLEU", "test", "bleu"), ("test chrF", "test", "chrf")]
"""What a configuration's row summarises over its seeds."""
SPEED_COLUMNS = ("wall s", "train tok/s")
METRIC_NAMES = {"bleu": "BLEU", "bleu_tok_lc": "BLEU (Moses-tokenised, lowercased)"}
"""The `by_source_length` scores `--by-length` plots, and their axis names."""


@dataclass
class Run:
    """One training run or `lnmt-eval` output. `config`: its flat effective configuration without the seed
    (dotted keys), what tells configurations apart; `test_files`: its kept test translations and references."""

    path: Path
    label: str
    overrides: dict[str, str]
    record: RunRecord | None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    test_files: tuple[Path, Path] | None = None
    lowercase: bool = False
    checkpoint: Path | None = None  # the checkpoint an lnmt-eval output scored (an ensemble's first member)
    members: int = 1  # the checkpoints it scored: more than one for an ensemble

    @property
    def finished(self) -> bool:
        return self.record is not None and self.record.finished


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file()


def is_eval_dir(path: Path) -> bool:
    return (path / EVAL_FILE).is_file()


def find_runs(path: Path) -> list[Path]:
    """The run or eval directory itself, or the ones a multirun directory holds (in job order)."""
    if not path.is_dir():
        raise UserError(f"{path} is not a directory")
    if is_eval_dir(path) or is_run_dir(path):
        return [path]
    jobs = [p for p in path.iterdir() if p.is_dir() and (is_run_dir(p) or is_eval_dir(p))]
    if not jobs:
        raise UserError(f"no runs in {path}: expected a run directory (with .hydra/overrides.yaml), an lnmt-eval "
                        f"output directory (with {EVAL_FILE}), or a directory of them")
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'type': 'attention'}} -> {'model.type': 'attention'} (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The flat effective configuration of a run (`sweeps.effective_config` of `.hydra/config.yaml`), with its
    seed; None for a run directory without the file. Paths are locations, not what a run trains: they are
    replaced before resolving (they point into Hydra's runtime, which is gone)."""
    file = run_dir / ".hydra" / "config.yaml"
    if not file.is_file():
        return None
    try:
        cfg = OmegaConf.load(file)
        if "paths" in cfg:
            cfg.paths = {key: f"<paths.{key}>" for key in cfg.paths}
        return flatten(effective_config(cfg))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise UserError(f"{file} cannot be read as a run's configuration ({type(err).__name__}: "
                        f"{' '.join(str(err).split())[:200]})") from None


def _overrides(run_dir: Path) -> dict[str, str]:
    overrides = {}
    for item in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def _identity(run_dir: Path, overrides: dict[str, str]) -> tuple[dict[str, Any], int | None, bool]:
    """A run's configuration without its seed, its seed and whether it writes lowercase; from the saved
    configuration, or (a run directory without one) from its overrides."""
    config = saved_config(run_dir)
    if config is None:
        config = {k: v for k, v in overrides.items() if not k.startswith("hydra.")}
        seed = config.pop("seed", None)
        return config, int(seed) if seed is not None and seed.lstrip("-").isdigit() else None, False
    seed = config.pop("seed", None)
    return config, seed, bool(config.get("data.tokenizer.lowercase"))


def _kept(hypotheses: Path, references: Path) -> tuple[Path, Path] | None:
    return (hypotheses, references) if hypotheses.is_file() and references.is_file() else None


def load_run(path: Path, label: str) -> Run:
    """A training run directory."""
    overrides = _overrides(path)
    try:
        rec = record.read(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{record.path(path)} cannot be read ({type(err).__name__}: {err})") from None
    config, seed, lowercase = _identity(path, overrides)
    if rec is not None and rec.seed is not None:
        seed = rec.seed
    if rec is not None and "lowercase" in rec.scoring:
        lowercase = bool(rec.scoring["lowercase"])
    files = _kept(path / "test.hyp.txt", path / "test.ref.txt")
    return Run(path.resolve(), label, overrides, rec, config, seed, files, lowercase)


def checkpoint_kind(ckpt: Path) -> str:
    """What a checkpoint is, the same for every seed: `best` (best-step...), `averaged`, `last`, else its name."""
    if ckpt.name.startswith("best-"):
        return "best"
    return ckpt.stem if ckpt.stem in ("averaged", "last") else ckpt.name


def load_eval_dir(path: Path, label: str, test_set: str = "test") -> Run:
    """An `lnmt-eval` output directory: its `test_set` results, the configuration and seed of the training run its
    checkpoint came from (when that directory is there) plus what was evaluated (checkpoint kind, beam size,
    length penalty, `eval.ensemble`: how many checkpoints). An ensemble's configuration is its first member's run's,
    without a seed."""
    run = load_eval(path / EVAL_FILE, test_set)
    results, ckpt = run.record.results["test"], run.checkpoint
    run_dir = ckpt.parent.parent
    if is_run_dir(run_dir):
        config, seed, _ = _identity(run_dir, _overrides(run_dir))
    else:
        config, seed = {"eval.ckpt_path": str(ckpt)}, None
    if run.members > 1:
        seed = None
    config.update({"eval.checkpoint": checkpoint_kind(ckpt), "eval.beam_size": results.get("beam_size"),
                   "eval.length_penalty": results.get("length_penalty"), "eval.ensemble": run.members})
    hyp, ref = results.get("hypotheses"), results.get("references")
    files = _kept(Path(hyp), Path(ref)) if hyp and ref else None
    lowercase = "case:lc" in str(results.get("signature", ""))
    return Run(path.resolve(), label, run.overrides, run.record, config, seed, files, lowercase, ckpt, run.members)


def load_runs(dirs: Sequence[Path]) -> list[Run]:
    runs = []
    for d in dirs:
        for path in find_runs(d):
            label = path.name if path == d else f"{d.name}/{path.name}"
            runs.append(load_eval_dir(path, label) if is_eval_dir(path) else load_run(path, label))
    return runs


# ---- one row per run ---------------------------------------------------------------------------------------------
def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value is not the same in every run (a key missing in a run counts as a value)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and not k.startswith("hydra.")]
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def _cell(run: Run, split: str, key: str, fmt: str) -> str:
    rec = run.record
    source = (rec.split(split) if split else {**rec.results, "wall_seconds": rec.wall_seconds}) if rec else {}
    value = source.get(key)
    return "" if value is None else fmt.format(int(value) if fmt == "{:d}" else value)


def _note(run: Run, labels: dict[Path, str]) -> str:
    rec = run.record
    if rec is None:
        return "no metrics.json (interrupted or still running)"
    if rec.status == FAILED:
        return f"failed at step {rec.step or 0}: {rec.error or ''}"
    if rec.duplicate_of is not None:
        original = Path(rec.duplicate_of).resolve()
        return f"duplicate of {labels.get(original, str(original))}"
    return ""


def table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: run, differing overrides, metrics, note. A duplicate job's metrics are left empty."""
    keys = [k for k in differing_keys(runs) if k != "seed"]
    labels = {run.path: run.label for run in runs}
    header = ["run", *keys, "seed", *(c[0] for c in RUN_COLUMNS), "note"]
    rows = []
    for run in runs:
        note = _note(run, labels)
        shown = run.finished and not note
        metrics = [_cell(run, *c[1:]) if shown else "" for c in RUN_COLUMNS]
        seed = "" if run.seed is None else str(run.seed)
        rows.append([run.label, *(run.overrides.get(k, "") for k in keys), seed, *metrics, note])
    return header, rows


# ---- one row per configuration -----------------------------------------------------------------------------------
@dataclass
class Configuration:
    """The runs of one effective configuration, one per seed. `failed`: failed jobs (counted, never averaged);
    `left_out`: runs that are not a seed of their own (a second run of a seed, a duplicate job, an unfinished one)."""

    config: dict[str, Any]
    seeds: list[Run] = field(default_factory=list)
    failed: list[Run] = field(default_factory=list)
    left_out: list[tuple[Run, str]] = field(default_factory=list)
    label: str = ""
    short: str = ""
    keys: list[str] = field(default_factory=list)  # the keys that label the configurations compared

    def values(self, split: str, key: str) -> list[float]:
        return [v for run in self.seeds if (v := run.record.split(split).get(key)) is not None]

    def summary(self, split: str, key: str) -> significance.SeedSummary | None:
        return significance.seed_summary(self.values(split, key))


def group(runs: Sequence[Run]) -> list[Configuration]:
    """Runs grouped by configuration, in order of first appearance; each finished seed counted once. A duplicate
    job of a sweep joins the configuration of the job it points at, as a run left out."""
    configs: dict[str, Configuration] = {}
    labels = {run.path: run.label for run in runs}
    config_of = {}
    for run in runs:
        duplicate = run.record is not None and run.record.duplicate_of is not None
        if not duplicate:
            key = json.dumps(run.config, sort_keys=True, default=str)
            config_of[run.path] = configs.setdefault(key, Configuration(run.config))
    for run in runs:
        note = _note(run, labels)
        if run.path not in config_of:  # a duplicate
            original = Path(run.record.duplicate_of).resolve()
            key = json.dumps(run.config, sort_keys=True, default=str)
            config = config_of.get(original) or configs.setdefault(key, Configuration(run.config))
            config.left_out.append((run, note))
            continue
        config = config_of[run.path]
        if run.record is not None and run.record.status == FAILED:
            config.failed.append(run)
        elif not run.finished:
            config.left_out.append((run, note or "not finished"))
        elif run.seed is not None and (same := next((r for r in config.seeds if r.seed == run.seed), None)):
            config.left_out.append((run, f"seed {run.seed} counted once (as {same.label})"))
        else:
            config.seeds.append(run)
    result = list(configs.values())
    name_configurations(result)
    return result


def name_configurations(configs: Sequence[Configuration]) -> None:
    """Label each configuration by the keys that tell them apart (`model.attention=dot`); `short` is the values
    alone (`attention, dot`). A key counts where the configurations that have it disagree on it (`model.attention`
    among the attention models; not `model.input_feeding`, which only the basic model lacks), or where the labels
    would otherwise be equal."""
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c.config if k not in keys]

    def values(k: str, present_only: bool) -> set[str]:
        return {json.dumps(c.config.get(k), default=str) for c in configs if not present_only or k in c.config}

    differing = [k for k in keys if len(values(k, True)) > 1]
    labels = [tuple((k, c.config[k]) for k in differing if k in c.config) for c in configs]
    if len(set(labels)) < len(labels):
        differing = [k for k in keys if len(values(k, False)) > 1]
    for i, c in enumerate(configs):
        c.keys = differing
        shown = [k for k in differing if k in c.config]
        c.label = ", ".join(f"{k}={c.config[k]}" for k in shown) or f"configuration {i + 1}"
        c.short = ", ".join(str(c.config[k]) for k in shown) or c.label


def pair_name(config: Configuration, baseline: Configuration) -> tuple[str, str]:
    """The two sides of a comparison named by the values of the labelling keys on which they differ
    (`general vs dot`; `attention, dot vs basic`)."""
    keys = [k for k in config.keys if config.config.get(k) != baseline.config.get(k)]

    def name(c: Configuration) -> str:
        return ", ".join(str(c.config[k]) for k in keys if k in c.config) or c.short

    return name(config), name(baseline)


def _summary_cell(summary: significance.SeedSummary | None) -> str:
    if summary is None:
        return ""
    std = "–" if summary.std is None else f"{summary.std:.2f}"
    ci = "" if summary.ci is None else f" ({summary.ci[0]:.2f}..{summary.ci[1]:.2f})"
    return f"{summary.mean:.2f} ± {std}{ci}"


def _config_note(config: Configuration) -> str:
    notes = []
    if len(config.seeds) == 1:
        notes.append("1 seed: no spread (std –)")
    notes += [f"{run.label}: {why}" for run, why in config.left_out]
    notes += [f"{run.label} failed: {run.record.error}" for run in config.failed]
    return "; ".join(notes)


def config_table(configs: Sequence[Configuration]) -> tuple[list[str], list[list[str]]]:
    """Markdown rows: configuration, seeds, failed, mean ± std (95% t-interval) of each `SEED_COLUMNS`, note."""
    header = ["configuration", "seeds", "failed", *(f"{c[0]} mean ± std (95% CI)" for c in SEED_COLUMNS), "note"]
    rows = [[c.label, str(len(c.seeds)), str(len(c.failed)),
             *(_summary_cell(c.summary(split, key)) for _, split, key in SEED_COLUMNS), _config_note(c)]
            for c in configs]
    return header, rows


def config_csv_rows(configs: Sequence[Configuration]) -> tuple[list[str], list[list[Any]]]:
    """The same as numbers: mean, std, ci_low, ci_high per column (empty where unknown)."""
    header = ["configuration", "seeds", "failed"]
    for name, _, _ in SEED_COLUMNS:
        header += [f"{name} {part}" for part in ("mean", "std", "ci_low", "ci_high")]
    rows: list[list[Any]] = []
    for c in configs:
        row: list[Any] = [c.label, len(c.seeds), len(c.failed)]
        for _, split, key in SEED_COLUMNS:
            s = c.summary(split, key)
            row += ["", "", "", ""] if s is None else [
                f"{s.mean:.4f}", "" if s.std is None else f"{s.std:.4f}",
                *(("", "") if s.ci is None else (f"{s.ci[0]:.4f}", f"{s.ci[1]:.4f}"))]
        rows.append(row)
    return header + ["note"], [row + [_config_note(c)] for row, c in zip(rows, configs)]


# ---- tests against a baseline ------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """One configuration against the baseline on one metric. `diff`: difference of the seed means over the paired
    seeds; `ci`: its 95% interval (t over paired seeds, or paired bootstrap with one pair: `ci_method`); `p`:
    stratified approximate randomization (sacreBLEU's paired AR with one pair), `p_bootstrap` sacreBLEU's paired
    bootstrap (one pair only); `reason`: why there is no p-value."""

    config: Configuration
    baseline: Configuration
    metric: str
    diff: float | None = None
    ci: tuple[float, float] | None = None
    ci_method: str = ""
    p: float | None = None
    p_bootstrap: float | None = None
    pairs: int = 0
    unpaired: int = 0
    without_files: list[str] = field(default_factory=list)
    within_spread: bool = False
    reason: str = ""

    def sentence(self) -> str:
        """`general vs dot: +0.7 BLEU (95% CI +0.1..+1.3), p = 0.02, 3 seeds`, and its flags."""
        name, base = pair_name(self.config, self.baseline)
        head = f"{name} vs {base}"
        unit = {"bleu": "BLEU", "chrf": "chrF"}[self.metric]
        if self.p is None:
            return f"{head}: no {unit} p-value: {self.reason}"
        ci = "" if self.ci is None else f" (95% CI {self.ci[0]:+.1f}..{self.ci[1]:+.1f})"
        p = f"p = {self.p:.2g}"
        if self.p_bootstrap is not None:
            p += f" (AR; paired bootstrap {self.p_bootstrap:.2g})"
        text = f"{head}: {self.diff:+.1f} {unit}{ci}, {p}, {self.pairs} seed{'s' if self.pairs > 1 else ''}"
        if self.unpaired:
            text += f" ({self.unpaired} unpaired seed{'s' if self.unpaired > 1 else ''} left out)"
        if self.without_files:
            text += f" (left out, no kept test translations: {', '.join(self.without_files)})"
        if self.within_spread:
            text += ", within seed spread"
        return text


class StatsCache:
    """Each run's kept test files (read once) and sentence statistics per metric (computed once)."""

    def __init__(self) -> None:
        self._stats: dict[tuple[Path, str], Any] = {}
        self._lines: dict[Path, list[str]] = {}
        logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # the runs were scored as they are: no advice

    def lines(self, file: Path) -> list[str]:
        if file not in self._lines:
            self._lines[file] = file.read_text(encoding="utf-8").splitlines()
        return self._lines[file]

    def hypotheses(self, run: Run) -> list[str]:
        return self.lines(run.test_files[0])

    def references(self, run: Run) -> list[str]:
        return self.lines(run.test_files[1])

    def __call__(self, run: Run, metric: str) -> Any:
        key = (run.path, metric)
        if key not in self._stats:
            scorer = significance.metric(metric, run.lowercase)
            self._stats[key] = significance.sentence_stats(scorer, self.hypotheses(run), self.references(run))
        return self._stats[key]


def _testable(config: Configuration) -> tuple[list[Run], list[Run]]:
    """The seeds with kept test translations and references, and those without."""
    return [r for r in config.seeds if r.test_files], [r for r in config.seeds if not r.test_files]


def against_baseline(config: Configuration, baseline: Configuration, metric: str, stats: StatsCache,
                 trials: int = significance.AR_TRIALS) -> Comparison:
    """`config` against `baseline` on `metric` (see `Comparison`)."""
    result = Comparison(config, baseline, metric)
    sides = [_testable(config), _testable(baseline)]
    result.without_files = [run.label for _, without in sides for run in without]
    (runs, _), (base_runs, _) = sides
    if not runs or not base_runs:
        result.reason = f"no kept test translations and references ({', '.join(result.without_files)})"
        return result
    first = base_runs[0]
    other_refs = next((r for r in runs + base_runs if stats.references(r) != stats.references(first)), None)
    if other_refs is not None:
        result.reason = (f"{other_refs.label} and {first.label} were tested on different test sets (their "
                         "references differ)")
        return result
    if len({r.lowercase for r in runs + base_runs}) > 1:
        result.reason = "the runs were scored with different case settings (a lowercased model against a cased one)"
        return result
    pairs = _pairs(base_runs, runs)
    result.pairs, result.unpaired = len(pairs), len(runs) + len(base_runs) - 2 * len(pairs)
    scorer = significance.metric(metric, first.lowercase)
    base_stats = [stats(b, metric) for b, _ in pairs]
    other_stats = [stats(o, metric) for _, o in pairs]
    base_scores = [significance.corpus_score(scorer, s.sum(0)) for s in base_stats]
    other_scores = [significance.corpus_score(scorer, s.sum(0)) for s in other_stats]
    diffs = [o - b for o, b in zip(other_scores, base_scores)]
    result.diff = sum(diffs) / len(diffs)
    if len(pairs) == 1:
        (b, o), = pairs
        sacre = significance.sacrebleu_paired(metric, first.lowercase, stats.hypotheses(b), stats.hypotheses(o),
                                              stats.references(b))
        result.p, result.p_bootstrap = sacre.ar_p, sacre.bootstrap_p
        result.ci = significance.bootstrap_diff_ci(scorer, base_stats[0], other_stats[0])
        result.ci_method = "paired bootstrap over sentences"
    else:
        result.p = significance.stratified_ar(scorer, np.stack(base_stats), np.stack(other_stats), trials)
        result.ci = significance.t_interval(diffs)
        result.ci_method = f"t over {len(pairs)} seed pairs"
    spreads = [s.std for c in (config, baseline) if (s := c.summary("test", metric)) and s.std is not None]
    result.within_spread = bool(spreads) and abs(result.diff) < max(spreads)
    return result


def _pairs(base: list[Run], other: list[Run]) -> list[tuple[Run, Run]]:
    """Seed pairs (`significance.pair_seeds`: by value, else by rank); runs without a known seed by their order."""
    if any(r.seed is None for r in base + other):
        return list(zip(base, other))
    by_seed = [{r.seed: r for r in side} for side in (base, other)]
    pairs, _ = significance.pair_seeds(list(by_seed[0]), list(by_seed[1]))
    return [(by_seed[0][a], by_seed[1][b]) for a, b in pairs]


def select_baseline(configs: Sequence[Configuration], spec: str) -> Configuration:
    """The one configuration whose effective configuration has KEY=VALUE (the value as YAML: `dot`, `0.1`,
    `true`); otherwise a `UserError` listing the configurations."""
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise UserError(f"--baseline {spec!r}: expected KEY=VALUE, e.g. --baseline model.attention=dot")
    wanted = yaml.safe_load(value) if value else None
    chosen = [c for c in configs if key in c.config and (c.config[key] == wanted or str(c.config[key]) == value)]
    if len(chosen) != 1:
        listing = "; ".join(f"{c.label}" + (f" ({key}={c.config[key]})" if key in c.config else f" (no {key})")
                            for c in configs)
        found = "selects no configuration" if not chosen else f"selects {len(chosen)} configurations"
        raise UserError(f"--baseline {spec} {found}; the configurations are: {listing}")
    return chosen[0]


# ---- warnings ----------------------------------------------------------------------------------------------------
def warnings(runs: Sequence[Run]) -> list[str]:
    """Runs that read different data, and speed columns measured on different hardware."""
    finished = [r for r in runs if r.finished and r.record.duplicate_of is None]
    out = []
    data = {}
    for run in finished:
        if run.record.data:
            data.setdefault(json.dumps(run.record.data.get("splits"), sort_keys=True), []).append(run.label)
    if len(data) > 1:
        out.append("the runs read different data (their data fingerprints differ): "
                   + " vs ".join(", ".join(labels) for labels in data.values()))
    hardware: dict[str, list[str]] = {}
    for run in finished:
        if record.hardware(run.record):
            hardware.setdefault(record.hardware(run.record), []).append(run.label)
    if len(hardware) > 1:
        out.append(f"the speed columns ({', '.join(SPEED_COLUMNS)}) compare runs on different hardware: "
                   + "; ".join(f"{name} ({', '.join(labels)})" for name, labels in hardware.items()))
    return out


# ---- output ------------------------------------------------------------------------------------------------------
def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue()


def legend_labels(runs: Sequence[Run]) -> list[str]:
    """What tells each run apart from the others: its overrides that differ (`variant=attention_dot`), as in
    the table; the run's name where it has none of them, or added where two runs would read the same."""
    keys = differing_keys(runs)
    labels = [", ".join(f"{k}={run.overrides[k]}" for k in keys if k in run.overrides) for run in runs]
    return [run.label if not label else f"{label} ({run.label})" if labels.count(label) > 1 else label
            for run, label in zip(runs, labels)]


def val_bands(configs: Sequence[Configuration]) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Per configuration with a validation history: the steps and the mean and standard deviation of val BLEU
    over the seeds that reached each step."""
    bands = {}
    for c in configs:
        by_step: dict[int, list[float]] = {}
        for run in c.seeds:
            for v in run.record.val_history:
                if v.get("bleu") is not None:
                    by_step.setdefault(int(v["step"]), []).append(float(v["bleu"]))
        if by_step:
            steps = sorted(by_step)
            bands[c.label] = (steps, [float(np.mean(by_step[s])) for s in steps],
                              [float(np.std(by_step[s], ddof=1)) if len(by_step[s]) > 1 else 0.0 for s in steps])
    return bands


def seed_points(configs: Sequence[Configuration]) -> dict[str, tuple[list[float], tuple[float, float] | None]]:
    return {c.label: (values, significance.t_interval(values))
            for c in configs if (values := c.values("test", "bleu"))}


@dataclass
class Report:
    """What `compare` found and wrote."""

    configs: list[Configuration]
    runs: list[Run]
    comparisons: list[Comparison]
    baseline: Configuration | None
    warnings: list[str]
    markdown: str


def compare(dirs: Sequence[Path], out: Path | None = None, baseline: str | None = None, show_runs: bool = False,
            trials: int = significance.AR_TRIALS) -> Report:
    """Group, summarise and test the runs of `dirs`; write the tables, plots and `compare.html`."""
    from lightning_nmt.plotting import plot_bands, plot_intervals
    from lightning_nmt.report import write_html

    runs = load_runs(dirs)
    configs = group(runs)
    base = select_baseline(configs, baseline) if baseline else None
    comparisons: list[Comparison] = []
    if base is not None:
        stats = StatsCache()
        comparisons = [against_baseline(c, base, metric, stats, trials)
                       for c in configs if c is not base and c.seeds for metric in significance.METRICS]
    notes = warnings(runs)
    out = out or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    config_header, config_rows = config_table(configs)
    run_header, run_rows = table(runs)
    markdown = "## Configurations (over seeds)\n\n" + to_markdown(config_header, config_rows)
    if base is not None:
        markdown += f"\n## Against the baseline {base.label}\n\n" + "".join(
            f"- {c.sentence()}\n" for c in comparisons)
    if show_runs:
        markdown += "\n## Runs\n\n" + to_markdown(run_header, run_rows)
    if notes:
        markdown += "\n" + "".join(f"warning: {n}\n" for n in notes)
    atomic_write_text(out / "compare.md", markdown)
    atomic_write_text(out / "compare.csv", to_csv(*config_csv_rows(configs)))
    atomic_write_text(out / "compare_runs.csv", to_csv(run_header, run_rows))
    atomic_write_text(out / "compare_tests.csv", to_csv(*tests_csv_rows(comparisons)))
    plot_bands(val_bands(configs), out / "val_bleu.png")
    plot_intervals(seed_points(configs), out / "test_bleu.png")
    report = Report(configs, runs, comparisons, base, notes, markdown)
    write_html(report, out / "compare.html", out / "val_bleu.png", out / "test_bleu.png")
    return report


def tests_csv_rows(comparisons: Sequence[Comparison]) -> tuple[list[str], list[list[Any]]]:
    header = ["configuration", "baseline", "metric", "diff", "ci_low", "ci_high", "ci_method", "p", "p_bootstrap",
              "seed_pairs", "unpaired", "within_seed_spread", "no_p_value_because"]

    def num(x: float | None) -> str:
        return "" if x is None else f"{x:.6g}"

    rows = [[c.config.label, c.baseline.label, c.metric, num(c.diff), *(num(v) for v in (c.ci or (None, None))),
             c.ci_method, num(c.p), num(c.p_bootstrap), c.pairs, c.unpaired, c.within_spread,
             c.reason or "; ".join(f"{label}: no kept test translations" for label in c.without_files)]
            for c in comparisons]
    return header, rows


# ---- BLEU by source length ---------------------------------------------------------------------------------------
def load_eval(path: Path, test_set: str) -> Run:
    """An `lnmt-eval` output as a Run: its record holds the results of `test_set` as `test`, `overrides` those of
    the run the checkpoint came from (when its directory is there) and the beam size, so that `legend_labels` tells
    the files apart; the label is `<run>/<checkpoint file>`, or the file's path."""
    try:
        data = json.loads(path.read_text())
        results, ckpts = data["results"], data["ckpt_path"]
        ckpts = [Path(c) for c in ckpts] if isinstance(ckpts, list) else [Path(ckpts)]
        ckpt = ckpts[0]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not an lnmt-eval output ({type(err).__name__}: {err})") from None
    if test_set not in results:
        raise UserError(f"{path} has no test set {test_set!r} (it has {', '.join(results) or 'none'})")
    run_dir = ckpt.parent.parent
    overrides = _overrides(run_dir) if is_run_dir(run_dir) else {}
    label = f"{run_dir.name}/{ckpt.name}" if is_run_dir(run_dir) else str(path)
    if len(ckpts) > 1:
        label = "ensemble of " + ", ".join(f"{c.parent.parent.name}/{c.name}" for c in ckpts)
        overrides["ensemble"] = str(len(ckpts))
    overrides["beam_size"] = str(results[test_set].get("beam_size"))
    return Run(path, label, overrides, RunRecord(status=FINISHED, results={"test": results[test_set]}), checkpoint=ckpt,
               members=len(ckpts))


def by_length_table(evals: Sequence[Run], metric: str) -> tuple[list[str], dict[str, list[float]]]:
    """The length buckets (`4-10 words`) and, per eval file (its `legend_labels` label), `metric` in each.
    The files must have the same buckets (the same test set and `length_buckets`)."""
    def buckets(run: Run) -> list[dict[str, Any]]:
        return run.record.results["test"].get("by_source_length", [])

    def edges(run: Run) -> list[tuple[int, int]]:
        return [(b["min_words"], b["max_words"]) for b in buckets(run)]

    first = edges(evals[0])
    for run in evals:
        if not buckets(run) or any(metric not in b for b in buckets(run)):
            raise UserError(f"{run.path} has no {metric} by source length (written by an older lnmt-eval?)")
        if edges(run) != first:
            raise UserError(f"{run.path}: length buckets {edges(run)} vs {first} of {evals[0].path}; compare "
                            "evaluations of the same test set with the same length_buckets")
    series = {label: [b[metric] for b in buckets(run)] for run, label in zip(evals, legend_labels(evals))}
    return [f"{lo}-{hi} words" for lo, hi in first], series


def plot_bleu_by_length(groups: list[str], series: dict[str, list[float]], path: Path, metric: str) -> Path:
    """Grouped bar chart: one group per length bucket, one bar (and legend entry, below the axes) per series."""
    from lightning_nmt.plotting import plt  # pyplot with the Agg backend

    fig, ax = plt.subplots(figsize=(min(12.0, 6.0 + 0.3 * len(groups) * len(series)), 4.5))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))], values, width, label=label)
    ax.set_xticks(range(len(groups)), labels=groups)
    ax.set_xlabel("source length")
    ax.set_ylabel(f"test {METRIC_NAMES[metric]}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2 if len(series) > 3 else 1)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def compare_by_length(files: Sequence[Path], out: Path | None = None, test_set: str = "test",
                      metric: str = "bleu") -> str:
    """Write bleu_by_length.png for the `lnmt-eval` outputs `files`; returns the same numbers as Markdown."""
    groups, series = by_length_table([load_eval(f, test_set) for f in files], metric)
    out = out or files[0].parent
    out.mkdir(parents=True, exist_ok=True)
    plot_bleu_by_length(groups, series, out / "bleu_by_length.png", metric)
    return to_markdown(["eval", *groups], [[label, *(f"{v:.2f}" for v in values)] for label, values in series.items()])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lnmt-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="run, multirun or lnmt-eval output directories; with --by-length, eval.json files")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the tables and plots (default: the first PATH, or its directory)")
    parser.add_argument("--baseline", metavar="KEY=VALUE", default=None,
                        help="test every configuration against the one whose effective configuration has KEY=VALUE "
                             "(e.g. model.attention=dot)")
    parser.add_argument("--runs", action="store_true", help="also print one row per run")
    parser.add_argument("--trials", type=int, default=significance.AR_TRIALS,
                        help="approximate randomization trials with several seeds (default: %(default)s)")
    parser.add_argument("--by-length", action="store_true", help="plot BLEU by source length of eval.json files")
    parser.add_argument("--test-set", default="test", help="with --by-length: the test set (default: test)")
    parser.add_argument("--metric", default="bleu", choices=list(METRIC_NAMES), help="with --by-length (default: bleu)")
    args = parser.parse_args(argv)
    try:
        if args.by_length:
            markdown = compare_by_length(args.paths, args.out, args.test_set, args.metric)
            written = f"bleu_by_length.png in {args.out or args.paths[0].parent}"
        else:
            if args.trials < 1:
                raise UserError(f"--trials must be at least 1, got {args.trials}")
            report = compare(args.paths, args.out, args.baseline, args.runs, args.trials)
            markdown = report.markdown
            for note in report.warnings:
                print(f"warning: {note}", file=sys.stderr)
            written = (f"compare.md, compare.csv, compare_runs.csv, compare_tests.csv, compare.html, val_bleu.png, "
                       f"test_bleu.png in {args.out or args.paths[0]}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(markdown, end="")
    print(f"wrote {written}", file=sys.stderr)


if __name__ == "__main__":
    main()
