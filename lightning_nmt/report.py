"""`compare.html`: `lnmt-compare`'s tables, tests and plots in one file that opens offline (the plots are
embedded as data: URLs; no script, no network)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_nmt.atomic import atomic_write_text

if TYPE_CHECKING:
    from lightning_nmt.compare import Report

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
li.spread { color: #8a5a00; }
p.warning { color: #a00; }
img { max-width: 100%; }
"""


def _table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_html(report: Report, path: Path, val_plot: Path, test_plot: Path) -> Path:
    """Write the report: configurations, tests against the baseline, runs, warnings and both plots."""
    from lightning_nmt.compare import config_table, table

    parts = [f"<h1>lnmt-compare</h1><p>{len(report.runs)} runs, {len(report.configs)} configurations; written "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"]
    parts += [f'<p class="warning">warning: {html.escape(note)}</p>' for note in report.warnings]
    parts.append("<h2>Configurations</h2><p>Mean ± standard deviation over seeds, and the 95% t-interval of the "
                 "mean.</p>" + _table(*config_table(report.configs), "configurations"))
    if report.baseline is not None:
        items = "".join(f'<li class="{"spread" if c.within_spread else ""}">{html.escape(c.sentence())}</li>'
                        for c in report.comparisons)
        parts.append(f"<h2>Against the baseline {html.escape(report.baseline.label)}</h2><ul id=\"tests\">{items}"
                     "</ul><p>p: approximate randomization stratified by seed (sacreBLEU's paired AR and bootstrap "
                     "with one seed a side). <em>within seed spread</em>: the difference is smaller than a "
                     "configuration's standard deviation over seeds.</p>")
    parts.append("<h2>Plots</h2>" + _image(val_plot, "validation BLEU against steps, mean and band over seeds")
                 + _image(test_plot, "test BLEU per configuration with 95% confidence intervals"))
    parts.append("<h2>Runs</h2>" + _table(*table(report.runs), "runs"))
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lnmt-compare</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    atomic_write_text(path, page)
    return path
