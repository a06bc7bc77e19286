"""`lnmt-compare DIR... [--out DIR]`: a table of runs (the offline twin of the wandb dashboard).

Each DIR is a run directory (it holds `.hydra/overrides.yaml`, and `metrics.json` once finished) or a
multirun directory of numbered job directories. One row per run: the overrides that differ between the
runs, validation and test BLEU, chrF, perplexity, steps, wall time and training tokens per second. Writes
`compare.md`, `compare.csv` and `val_bleu.png` (validation BLEU against steps, each line labelled by the
overrides that differ) into the first DIR or --out.

`lnmt-compare --by-length EVAL_JSON... [--out DIR]`: BLEU by source length (the `by_source_length` buckets
of `lnmt-eval`) of several checkpoints as a grouped bar chart, `bleu_by_length.png`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lightning_nmt.atomic import atomic_path, atomic_write_text
from lightning_nmt.errors import UserError
from lightning_nmt.sweeps import FAILED

METRIC_COLUMNS: list[tuple[str, str, str, str]] = [
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


METRIC_NAMES = {"bleu": "BLEU", "bleu_tok_lc": "BLEU (Moses-tokenised, lowercased)"}
"""The `by_source_length` scores `--by-length` plots, and their axis names."""


@dataclass
class Run:
    path: Path
    label: str
    overrides: dict[str, str]
    metrics: dict[str, Any] | None

    def best_val(self) -> dict[str, float]:
        """The validation whose checkpoint was tested (best BLEU), else the last one."""
        metrics = self.metrics or {}
        history = metrics.get("val_history") or []
        return max(history, key=lambda v: v.get("bleu", float("-inf"))) if history else metrics.get("val", {})


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file()


def find_runs(path: Path) -> list[Path]:
    """The run directory itself, or the job directories of a multirun directory (in job order)."""
    if not path.is_dir():
        raise UserError(f"{path} is not a directory")
    if is_run_dir(path):
        return [path]
    jobs = [p for p in path.iterdir() if p.is_dir() and is_run_dir(p)]
    if not jobs:
        raise UserError(f"no runs in {path}: expected a run directory (with .hydra/overrides.yaml) "
                        "or a multirun directory of job directories")
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def load_run(path: Path, label: str) -> Run:
    overrides = {}
    for item in OmegaConf.load(path / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return Run(path.resolve(), label, overrides, metrics)


def load_runs(dirs: Sequence[Path]) -> list[Run]:
    runs = []
    for d in dirs:
        for path in find_runs(d):
            runs.append(load_run(path, path.name if path == d else f"{d.name}/{path.name}"))
    return runs


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value is not the same in every run (a key missing in a run counts as a value)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and not k.startswith("hydra.")]
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def _cell(run: Run, split: str, key: str, fmt: str) -> str:
    source = run.metrics or {}
    if split == "val":
        source = run.best_val()
    elif split:
        source = source.get(split, {})
    value = source.get(key)
    return "" if value is None else fmt.format(int(value) if fmt == "{:d}" else value)


def _note(run: Run, labels: dict[Path, str]) -> str:
    if run.metrics is None:
        return "no metrics.json (interrupted or still running)"
    if run.metrics.get("status") == FAILED:
        return f"failed at step {run.metrics.get('step', 0)}: {run.metrics.get('error', '')}"
    if "duplicate_of" in run.metrics:
        original = Path(run.metrics["duplicate_of"]).resolve()
        return f"duplicate of {labels.get(original, str(original))}"
    return ""


def table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: run, differing overrides, metrics, note. A duplicate job's metrics are left empty."""
    keys = differing_keys(runs)
    labels = {run.path: run.label for run in runs}
    header = ["run", *keys, *(c[0] for c in METRIC_COLUMNS), "note"]
    rows = []
    for run in runs:
        note = _note(run, labels)
        trained = bool(run.metrics) and not note
        metrics = [_cell(run, *c[1:]) if trained else "" for c in METRIC_COLUMNS]
        rows.append([run.label, *(run.overrides.get(k, "") for k in keys), *metrics, note])
    return header, rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue()


def legend_labels(runs: Sequence[Run]) -> list[str]:
    """What tells each run apart from the others: its overrides that differ (`variant=attention_concat`), as in
    the table; the run's name where it has none of them, or added where two runs would read the same."""
    keys = differing_keys(runs)
    labels = [", ".join(f"{k}={run.overrides[k]}" for k in keys if k in run.overrides) for run in runs]
    return [run.label if not label else f"{label} ({run.label})" if labels.count(label) > 1 else label
            for run, label in zip(runs, labels)]


def plot_val_bleu(runs: Sequence[Run], path: Path) -> Path:
    """Validation BLEU against steps, one line per run with a validation history, labelled by `legend_labels`."""
    from lightning_nmt.plotting import plot_curves

    curves = {}
    for run, label in zip(runs, legend_labels(runs)):
        history = (run.metrics or {}).get("val_history") or []
        if history:
            curves[label] = ([v["step"] for v in history], [v.get("bleu", float("nan")) for v in history])
    return plot_curves(curves, path)


def compare(dirs: Sequence[Path], out: Path | None = None) -> str:
    """Write compare.md, compare.csv and val_bleu.png; returns the Markdown table."""
    runs = load_runs(dirs)
    header, rows = table(runs)
    out = out or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(header, rows)
    atomic_write_text(out / "compare.md", markdown)
    atomic_write_text(out / "compare.csv", to_csv(header, rows))
    plot_val_bleu(runs, out / "val_bleu.png")
    return markdown


def load_eval(path: Path, test_set: str) -> Run:
    """An `lnmt-eval` output as a Run: `metrics` holds the results of `test_set`, `overrides` those of the run
    the checkpoint came from (when its directory is there) and the beam size, so that `legend_labels` tells
    the files apart; the label is `<run>/<checkpoint file>`, or the file's path."""
    try:
        data = json.loads(path.read_text())
        results, ckpt = data["results"], Path(data["ckpt_path"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not an lnmt-eval output ({type(err).__name__}: {err})") from None
    if test_set not in results:
        raise UserError(f"{path} has no test set {test_set!r} (it has {', '.join(results) or 'none'})")
    run_dir = ckpt.parent.parent
    run = load_run(run_dir, f"{run_dir.name}/{ckpt.name}") if is_run_dir(run_dir) else Run(path, str(path), {}, None)
    overrides = {**run.overrides, "beam_size": str(results[test_set].get("beam_size"))}
    return Run(path, run.label, overrides, results[test_set])


def by_length_table(evals: Sequence[Run], metric: str) -> tuple[list[str], dict[str, list[float]]]:
    """The length buckets (`4-10 words`) and, per eval file (its `legend_labels` label), `metric` in each.
    The files must have the same buckets (the same test set and `length_buckets`)."""
    def buckets(run: Run) -> list[tuple[int, int]]:
        return [(b["min_words"], b["max_words"]) for b in run.metrics.get("by_source_length", [])]

    first = buckets(evals[0])
    for run in evals:
        if not buckets(run) or any(metric not in b for b in run.metrics["by_source_length"]):
            raise UserError(f"{run.path} has no {metric} by source length (written by an older lnmt-eval?)")
        if buckets(run) != first:
            raise UserError(f"{run.path}: length buckets {buckets(run)} vs {first} of {evals[0].path}; compare "
                            "evaluations of the same test set with the same length_buckets")
    series = {label: [b[metric] for b in run.metrics["by_source_length"]]
              for run, label in zip(evals, legend_labels(evals))}
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
                        help="run or multirun directories; with --by-length, lnmt-eval output files (eval.json)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the table and plots (default: the first PATH, or its directory)")
    parser.add_argument("--by-length", action="store_true", help="plot BLEU by source length of eval.json files")
    parser.add_argument("--test-set", default="test", help="with --by-length: the test set (default: test)")
    parser.add_argument("--metric", default="bleu", choices=list(METRIC_NAMES), help="with --by-length (default: bleu)")
    args = parser.parse_args(argv)
    try:
        if args.by_length:
            markdown = compare_by_length(args.paths, args.out, args.test_set, args.metric)
            written = f"bleu_by_length.png in {args.out or args.paths[0].parent}"
        else:
            markdown = compare(args.paths, args.out)
            written = f"compare.md, compare.csv, val_bleu.png in {args.out or args.paths[0]}"
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(markdown, end="")
    print(f"wrote {written}", file=sys.stderr)


if __name__ == "__main__":
    main()
