"""`lnmt-compare DIR... [--out DIR]`: a table of runs (the offline twin of the wandb dashboard).

Each DIR is a run directory (it holds `.hydra/overrides.yaml`, and `metrics.json` once finished) or a
multirun directory of numbered job directories. One row per run: the overrides that differ between the
runs, validation and test BLEU, chrF, perplexity, steps, wall time and training tokens per second. Writes
`compare.md`, `compare.csv` and `val_bleu.png` (validation BLEU against steps) into the first DIR or --out.
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

from lightning_nmt.data.atomic import atomic_write_text
from lightning_nmt.errors import UserError

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
        return "no metrics.json (failed or still running)"
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


def plot_val_bleu(runs: Sequence[Run], path: Path) -> Path:
    from lightning_nmt.plotting import plot_curves

    curves = {}
    for run in runs:
        history = (run.metrics or {}).get("val_history") or []
        if history:
            curves[run.label] = ([v["step"] for v in history], [v.get("bleu", float("nan")) for v in history])
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lnmt-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run or multirun directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write the table and plot (default: first DIR)")
    args = parser.parse_args(argv)
    try:
        markdown = compare(args.dirs, args.out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(markdown, end="")
    print(f"wrote compare.md, compare.csv, val_bleu.png in {args.out or args.dirs[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
