"""Decoding speed through `lightning_nmt.translate.Translator`: sentences/s and output pieces/s per setting, the
median of `--repeat` timed calls after one warm-up call, in one torch thread by default.

    python benchmarks/decoding_bench.py --ckpt A.ckpt [--ckpt2 B.ckpt] [--lines 1000] [--source FILE(.gz)]
        [--settings greedy,beam5,...] [--repeat 3] [--threads 1] [--json OUT.jsonl]

It runs on the code before the decoding rewrite as well as after it, for the settings both have (`greedy`,
`beam5`: `Translator.from_checkpoint(ckpt, beam_size=k).translate(lines)`), so the two can be timed in alternating
processes:

    PYTHONPATH=/path/to/old/checkout python benchmarks/decoding_bench.py --ckpt A.ckpt --settings greedy,beam5
    python benchmarks/decoding_bench.py --ckpt A.ckpt --settings greedy,beam5

(run as a script, `benchmarks/` is first on sys.path, so PYTHONPATH decides which `lightning_nmt` is imported; the
path is printed). Settings only the new code has (it has `lightning_nmt.search`):

- `sampling`, `sampling_topk50_topp09`: `translator.hypotheses(lines, strategy="sampling", seed=1[, top_k=50,
  top_p=0.9])` with a beam_size=1 translator, printed with its time per output piece over greedy's (greedy is
  timed too if not asked for): sampled outputs differ in length from greedy ones, so compare per piece;
- `ensemble2`: greedy and beam 5 of `Translator.from_checkpoint([ckpt, ckpt2])`, printed with the ratio of its time
  to the single model's (the single model is timed too if `greedy`/`beam5` were not asked for);
- `penalties`: beam 5 with `no_repeat_ngram_size=3, repetition_penalty=1.2`, with its ratio to plain beam 5.

All settings of one run are timed in rounds, one call of each per round after one warm-up call of each, and a
ratio is the median of the rounds' ratios, so that a slow minute of the machine (its 2 cores are shared) weighs on
both sides. The source is `--lines` lines of `--source`, or by default the English side of
`lightning_nmt.data.sample.generate_pairs(lines, seed=123)` (the embedded en->fr sample corpus). The machine's CPU
model and load average are printed at the start, and the load average at each round; `--json`
appends one JSON object per setting to OUT. The warning for a line longer than the model's `max_input_len` is
silenced (it would come with every call); the number of such lines is printed once.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lightning_nmt
from lightning_nmt.data.sample import generate_pairs
from lightning_nmt.translate import Translator

PACKAGE = Path(lightning_nmt.__file__).resolve().parent
# The decoding rewrite added `lightning_nmt.search`. Looked up in the imported package's own directory: with an
# editable install of another checkout in the environment, `import lightning_nmt.search` would find that one's.
NEW_CODE = (PACKAGE / "search" / "__init__.py").is_file()

COMMON = ["greedy", "beam5"]
NEW_ONLY = ["sampling", "sampling_topk50_topp09", "ensemble2", "penalties"]
SAMPLING = {"sampling": {}, "sampling_topk50_topp09": {"top_k": 50, "top_p": 0.9}}
PENALTIES = {"no_repeat_ngram_size": 3, "repetition_penalty": 1.2}


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.strip().lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def code_version() -> dict[str, Any]:
    root = PACKAGE.parent
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"code": "new" if NEW_CODE else "old", "path": str(root), "commit": commit or None, "dirty": bool(dirty)}


def read_source(path: str | None, n: int) -> list[str]:
    if path is None:
        return [en for en, _ in generate_pairs(n, seed=123)]
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for _, line in zip(range(n), handle, strict=False)]
    if len(lines) < n:
        print(f"note: {path} has {len(lines)} lines, fewer than --lines {n}", file=sys.stderr)
    return lines


def pieces_of(found: list[list[Any]]) -> int:
    """Output pieces of the best hypothesis of each line (`</s>` not counted)."""
    return sum(len(hyps[0].tgt_pieces) for hyps in found)


def digest(texts: list[str]) -> str:
    return hashlib.sha1("\n".join(texts).encode()).hexdigest()[:10]


class Job:
    """One setting: `warmup` gives the hypotheses whose output pieces are counted; `timed` the translations of one
    timed call (a deterministic setting must give the warm-up's every time)."""

    def __init__(self, name: str, warmup: Callable[[], list[list[Any]]], timed: Callable[[], list[str]]) -> None:
        self.name, self.warmup, self.timed = name, warmup, timed
        self.texts: list[str] = []
        self.pieces = 0
        self.times: list[float] = []
        self.same = True


def deterministic(name: str, translator: Translator, lines: list[str]) -> Job:
    return Job(name, lambda: translator.hypotheses(lines), lambda: translator.translate(lines))


def sampled(name: str, translator: Translator, lines: list[str], **keys: Any) -> Job:
    def run() -> list[list[Any]]:
        return translator.hypotheses(lines, strategy="sampling", seed=1, **keys)

    return Job(name, run, lambda: [hyps[0].tgt for hyps in run()])


def measure(jobs: list[Job], lines: list[str], repeat: int) -> dict[str, dict[str, Any]]:
    """One warm-up call of each job, then `repeat` rounds of one timed call of each (so that the settings share the
    machine's slow and fast minutes); a row per job."""
    for job in jobs:
        found = job.warmup()
        job.texts, job.pieces = [hyps[0].tgt for hyps in found], pieces_of(found)
    loads = [loadavg()]
    for _ in range(repeat):
        for job in jobs:
            start = time.perf_counter()
            out = job.timed()
            job.times.append(time.perf_counter() - start)
            job.same &= out == job.texts
        loads.append(loadavg())
    rows = {}
    for job in jobs:
        times, median = job.times, statistics.median(job.times)
        rows[job.name] = {
            "setting": job.name, "lines": len(lines), "pieces": job.pieces,
            "pieces_per_line": round(job.pieces / len(lines), 2), "times_s": [round(t, 4) for t in times],
            "median_s": round(median, 4), "sentences_per_s": round(len(lines) / median, 1),
            "pieces_per_s": round(job.pieces / median, 1),
            "us_per_piece": round(1e6 * median / job.pieces, 2) if job.pieces else None,
            "spread": round((max(times) - min(times)) / median, 3), "same_output_each_call": job.same,
            "output_sha1": digest(job.texts), "load_1min_each_round": [load[0] for load in loads]}
    return rows


def ratio(rows: dict[str, dict[str, Any]], a: str, b: str) -> tuple[float, float]:
    """Median over rounds of time(a)/time(b) in the same round, and the same per output piece."""
    time_ratio = statistics.median(x / y for x, y in zip(rows[a]["times_s"], rows[b]["times_s"], strict=True))
    return round(time_ratio, 3), round(time_ratio * rows[b]["pieces"] / rows[a]["pieces"], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--ckpt2", help="the second member of `ensemble2`")
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--source", help="a text file (.gz ok); default: the sample corpus's English side")
    parser.add_argument("--settings", default=None,
                        help=f"comma list of {', '.join(COMMON + NEW_ONLY)}; default: all this code has")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", help="append one JSON object per setting to this file")
    args = parser.parse_args()

    available = COMMON + (NEW_ONLY if NEW_CODE else [])
    settings = args.settings.split(",") if args.settings else available
    unknown = [s for s in settings if s not in COMMON + NEW_ONLY]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; known: {COMMON + NEW_ONLY}")
    missing = [s for s in settings if s not in available]
    if missing:
        parser.error(f"{missing} need the decoding rewrite (lightning_nmt.search); this code is {code_version()}")
    if "ensemble2" in settings and not args.ckpt2:
        parser.error("ensemble2 needs --ckpt2")

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning_nmt").setLevel(logging.ERROR)  # a long line's warning, once per call: see below
    version = code_version()
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"load average: {' '.join(map(str, loadavg()))}")
    print(f"code: {version['code']} ({version['path']}, commit {version['commit']}"
          f"{', modified' if version['dirty'] else ''})")
    lines = read_source(args.source, args.lines)
    print(f"ckpt: {args.ckpt}; {len(lines)} lines, {sum(len(x.split()) for x in lines) / len(lines):.2f} words a line; "
          f"median of {args.repeat} after one warm-up", flush=True)
    backend = Translator.from_checkpoint(args.ckpt).backend
    limit = backend.max_input_len
    long = sum(backend.count_pieces(line) > limit for line in lines) if limit else 0
    if long:
        print(f"note: {long} line(s) longer than max_input_len={limit} pieces, translated in segments")

    singles: dict[int, Translator] = {}

    def single(beam: int) -> Translator:
        if beam not in singles:
            singles[beam] = Translator.from_checkpoint(args.ckpt, beam_size=beam)
        return singles[beam]

    needs = {"sampling": ["greedy"], "sampling_topk50_topp09": ["greedy"], "ensemble2": ["greedy", "beam5"],
             "penalties": ["beam5"]}
    wanted = [name for setting in settings for name in [*needs.get(setting, []), setting]]
    jobs: list[Job] = []
    for name in dict.fromkeys(wanted):  # in order, once each
        if name in COMMON:
            jobs.append(deterministic(name, single(1 if name == "greedy" else 5), lines))
        elif name in SAMPLING:
            jobs.append(sampled(name, single(1), lines, **SAMPLING[name]))
        elif name == "ensemble2":
            for beam, base in ((1, "greedy"), (5, "beam5")):
                translator = Translator.from_checkpoint([args.ckpt, args.ckpt2], beam_size=beam)
                jobs.append(deterministic(f"ensemble2_{base}", translator, lines))
        elif name == "penalties":
            jobs.append(deterministic(name, Translator.from_checkpoint(args.ckpt, beam_size=5, **PENALTIES), lines))
    print(f"timing {', '.join(job.name for job in jobs)}: one warm-up call each, then {args.repeat} rounds of one "
          "call each", flush=True)
    rows = measure(jobs, lines, args.repeat)
    loads = next(iter(rows.values()))["load_1min_each_round"]
    print(f"load average (1 min) at the start of each round and at the end: {' '.join(f'{x:.2f}' for x in loads)}"
          f"{'  NOTE: above 1.5' if max(loads) > 1.5 else ''}")
    for name, row in rows.items():
        print(f"{name:24s} {row['sentences_per_s']:9.1f} sent/s {row['pieces_per_s']:10.1f} pieces/s "
              f"{row['us_per_piece']:8.1f} us/piece  {row['pieces_per_line']:5.2f} pieces/line  "
              f"spread {100 * row['spread']:4.1f}%{'' if row['same_output_each_call'] else '  OUTPUT DIFFERED'}")
    comparisons = [(name, "greedy") for name in SAMPLING] + [("ensemble2_greedy", "greedy"),
                                                             ("ensemble2_beam5", "beam5"), ("penalties", "beam5")]
    for a, b in comparisons:
        if a in rows:
            by_time, by_piece = ratio(rows, a, b)
            rows[a][f"ratio_time_vs_{b}"], rows[a][f"ratio_time_per_piece_vs_{b}"] = by_time, by_piece
            print(f"  time({a}) / time({b}): {by_time:.3f}x; per output piece {by_piece:.3f}x "
                  f"(median of the rounds' ratios; pieces/line {rows[a]['pieces_per_line']:.2f} vs "
                  f"{rows[b]['pieces_per_line']:.2f})")

    foreign = sorted(name for name, module in list(sys.modules.items())
                     if name.startswith("lightning_nmt.") and getattr(module, "__file__", None)
                     and not Path(module.__file__).resolve().is_relative_to(PACKAGE))
    if foreign:  # a module the imported checkout lacks, found in another one (an editable install's finder)
        print(f"WARNING: modules imported from outside {PACKAGE}: {', '.join(foreign)}")
    if args.json:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(args.json, "a", encoding="utf-8") as out:
            for row in rows.values():
                out.write(json.dumps({"time": stamp, **version, "ckpt": args.ckpt, "ckpt2": args.ckpt2,
                                      "source": args.source or "generate_pairs(seed=123)", "threads": args.threads,
                                      "repeat": args.repeat, **row}) + "\n")


if __name__ == "__main__":
    main()
