"""lnmt-translate under real-world input: a very long line, an interactive pipe, and a very large file.

    python benchmarks/translate_bounds.py --ckpt RUN/checkpoints/last.ckpt [--data DIR] [--big-lines 1000000]

Every figure comes from `lnmt-translate` run as a user runs it, in a fresh process (`os.wait4` gives its
peak RSS). Sentences are Multi30k test2016 sources (`--data`, default ../shared/data/multi30k).
- long line: 1,000 sentences alone, then the same with one line of `--long-words` words (sentences joined)
  in the middle: wall time and peak RSS of both, and their ratios;
- interactive: a line is written to the stdin of a running `lnmt-translate input=- output=-` after the model
  has loaded (`--load-wait` seconds), and the time until its translation is read back;
- big file: `--big-lines` short lines against 1,000 of the same lines: peak RSS and time (greedy).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def translate(ckpt: Path, src: Path, *args: str) -> dict[str, float]:
    """Run lnmt-translate on `src`; its wall time (s) and peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "lightning_nmt.translate", f"ckpt_path={ckpt}",
                                 f"input={src}", f"output={tmp}/out.txt", *args], stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"lnmt-translate failed: {proc.stderr.read().decode()[-2000:]}")
        lines = sum(1 for _ in open(f"{tmp}/out.txt", encoding="utf-8"))
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "output_lines": lines}


def interactive_latency(ckpt: Path, line: str, load_wait: float) -> float:
    """Seconds from writing `line` into a running session (model loaded) to reading its translation."""
    proc = subprocess.Popen([sys.executable, "-m", "lightning_nmt.translate", f"ckpt_path={ckpt}", "input=-",
                             "output=-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        time.sleep(load_wait)
        started = time.perf_counter()
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
        if not select.select([proc.stdout], [], [], 120)[0]:
            raise SystemExit("no answer within 120 s")
        proc.stdout.readline()
        return round(time.perf_counter() - started, 3)
    finally:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--big-ckpt", type=Path, help="checkpoint for the big-file run (default: --ckpt)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MULTI30K_ROOT",
                                                                         ROOT.parent / "shared/data/multi30k")))
    parser.add_argument("--src-lang", default="en")
    parser.add_argument("--long-words", type=int, default=10_000)
    parser.add_argument("--big-lines", type=int, default=1_000_000)
    parser.add_argument("--load-wait", type=float, default=20.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["long", "interactive", "big"])
    args = parser.parse_args()
    with gzip.open(args.data / f"test_2016_flickr.{args.src_lang}.gz", "rt", encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f][:1000]
    result: dict[str, object] = {"ckpt": str(args.ckpt), "threads": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        if "long" not in args.skip:
            words: list[str] = []
            while len(words) < args.long_words:
                words += sentences[len(words) % len(sentences)].split()
            normal, with_long = tmp_dir / "normal.txt", tmp_dir / "with_long.txt"
            normal.write_text("\n".join(sentences) + "\n")
            with_long.write_text("\n".join([*sentences[:500], " ".join(words[: args.long_words]),
                                            *sentences[500:]]) + "\n")
            alone, mixed = translate(args.ckpt, normal), translate(args.ckpt, with_long)
            result["long_line"] = {"words": args.long_words, "normal_1000": alone, "with_long_line": mixed,
                                   "time_ratio": round(mixed["seconds"] / alone["seconds"], 2),
                                   "extra_peak_rss_mb": round(mixed["peak_rss_mb"] - alone["peak_rss_mb"], 1)}
        if "interactive" not in args.skip:
            result["interactive_first_line_seconds"] = interactive_latency(args.ckpt, sentences[0], args.load_wait)
        if "big" not in args.skip:
            ckpt = args.big_ckpt or args.ckpt
            short = [" ".join(s.split()[:4]) for s in sentences]
            small, big = tmp_dir / "small.txt", tmp_dir / "big.txt"
            small.write_text("\n".join(short) + "\n")
            with open(big, "w", encoding="utf-8") as f:
                for i in range(args.big_lines):
                    f.write(short[i % len(short)] + "\n")
            one_k = translate(ckpt, small, "beam_size=1")
            many = translate(ckpt, big, "beam_size=1")
            result["big_file"] = {"ckpt": str(ckpt), "lines_1000": one_k, f"lines_{args.big_lines}": many,
                                  "peak_rss_ratio": round(many["peak_rss_mb"] / one_k["peak_rss_mb"], 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
