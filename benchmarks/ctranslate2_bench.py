"""Offline CTranslate2 benchmark: a Transformer checkpoint translated with beam search by our PyTorch path
(`Translator.from_checkpoint(ckpt, beam_size=B).translate_nbest`) and by its `lnmt-export` directories, float32 and
int8 (`lightning_nmt.ct2.CTranslate2Model`, ranked with our GNMT length penalty), plus CTranslate2 called plainly on
the float32 export with its own length penalty (`native`: score / len ** a), at each thread count. Prints one table:
sentences/s, cased sacreBLEU, peak RSS, and how many outputs differ from ours and why.

    python benchmarks/ctranslate2_bench.py CKPT [--src FILE(.gz) --ref FILE(.gz)] [--limit N] [--beam 5]
                                            [--threads 1 2] [--repeat 3] [--configs torch ct2-float32 ct2-int8 native]
                                            [--workdir DIR] [--json OUT]

Test set: --src/--ref, else Multi30k test_2016_flickr.<src_lang>/<tgt_lang>.gz of the checkpoint's languages under
``MULTI30K_ROOT`` (default ../shared/data/multi30k) when present, else pairs of the embedded synthetic generator (for
checkpoints trained on the sample corpus). Every configuration runs in a fresh process (`--worker`), so its peak RSS
(`ru_maxrss`) is its own: model loading plus translation. Each worker translates the first 8 lines once to warm up,
then times `--repeat` passes over the whole set and reports the median (the slowest and fastest pass too).

Differences from ours are classified per line:
- `ct2-*` (our search rules and length penalty): `tie` when both outputs score within 1e-4 under our scoring,
  `ct2 better` / `ours better` when one search found a hypothesis the other did not (see lightning_nmt/ct2.py for
  when that can happen; int8 also changes the model);
- `native`: `segments` when the source is longer than max_input_len (ours translates it in segments, native
  CTranslate2 whole); `length limit` when the native output is longer than our limit (ceil(src_len *
  max_len_ratio) + max_len_offset, EOS included); `length penalty` when our GNMT penalty ranks ours first and
  CTranslate2's score / len ** a (len counting EOS) ranks its own first; `search` otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = Path(os.environ.get("MULTI30K_ROOT", ROOT.parent / "shared" / "data" / "multi30k"))
CONFIGS = ("torch", "ct2-float32", "ct2-int8", "native")
WARMUP_LINES = 8


def _read(path: Path) -> list[str]:
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
        return [line.rstrip("\r\n") for line in f]


def test_set(args: argparse.Namespace, data: dict[str, Any]) -> tuple[list[str], list[str], str]:
    """(sources, references, description) for the checkpoint's language pair."""
    if args.src or args.ref:
        if not (args.src and args.ref):
            sys.exit("error: --src and --ref go together")
        src, ref, name = _read(Path(args.src)), _read(Path(args.ref)), f"{args.src} -> {args.ref}"
    else:
        src_lang, tgt_lang = data.get("src_lang", "en"), data.get("tgt_lang", "de")
        files = [MULTI30K / f"test_2016_flickr.{lang}.gz" for lang in (src_lang, tgt_lang)]
        if data.get("corpus") != "sample" and all(f.is_file() for f in files):
            src, ref, name = _read(files[0]), _read(files[1]), f"Multi30k test_2016_flickr {src_lang}-{tgt_lang}"
        else:
            from lightning_nmt.data.sample import generate_pairs

            pairs = generate_pairs(args.limit or 500, seed=4321)
            src, ref = [p[0] for p in pairs], [p[1] for p in pairs]
            name = "synthetic sample pairs (generate_pairs seed 4321; the checkpoint's data.corpus is sample)"
    if len(src) != len(ref):
        sys.exit(f"error: {len(src)} sources but {len(ref)} references")
    if args.limit:
        src, ref = src[: args.limit], ref[: args.limit]
    return src, ref, name


# ---------------------------------------------------------------------------------------------- workers

def worker(args: argparse.Namespace) -> None:
    """One configuration in this process: writes a JSON result to --out."""
    threads = args.threads[0]
    lines = json.loads(Path(args.lines).read_text(encoding="utf-8"))
    started = time.perf_counter()
    out: dict[str, Any] = {"config": args.worker, "threads": threads}
    run: Any  # lines -> (hyps, scores, output pieces or None) of the best translation of each line
    if args.worker == "torch":
        import torch

        from lightning_nmt.translate import Translator

        torch.set_num_threads(threads)
        translator = Translator.from_checkpoint(args.ckpt, beam_size=args.beam)

        def run(batch: list[str]) -> tuple[list, list, None]:
            found = translator.translate_nbest(batch)
            return [h[0][0] for h in found], [h[0][1] for h in found], None
    elif args.worker.startswith("ct2-"):
        from lightning_nmt.ct2 import CTranslate2Model

        model = CTranslate2Model(Path(args.workdir) / args.worker.removeprefix("ct2-"), threads=threads)

        def run(batch: list[str]) -> tuple[list, list, list]:
            found = model.translate_batch(batch, beam_size=args.beam)
            return [h[0].tgt for h in found], [h[0].score for h in found], [len(h[0].tgt_pieces) for h in found]
    else:  # native: CTranslate2 as one would call it, with its own length penalty, on the float32 export
        import ctranslate2

        from lightning_nmt.data.tokenizer import Tokenizer

        directory = Path(args.workdir) / "float32"
        meta = json.loads((directory / "lightning_nmt.json").read_text(encoding="utf-8"))
        tokenizer = Tokenizer.load(directory)
        native = ctranslate2.Translator(str(directory), device="cpu", intra_threads=threads)

        def run(batch: list[str]) -> tuple[list, list, list]:
            todo = [i for i, line in enumerate(batch) if line.strip()]
            pieces = [[*tokenizer.src_pieces_from_ids(ids), *meta["source_suffix"]]
                      for ids in tokenizer.encode_src([batch[i] for i in todo])]
            results = native.translate_batch(pieces, beam_size=args.beam, return_scores=True,
                                             length_penalty=meta["decoding"]["length_penalty"],
                                             max_input_length=0, max_decoding_length=256,
                                             max_batch_size=8192, batch_type="tokens")
            texts: list[Any] = [("", 0.0, 0)] * len(batch)
            ids = [[tokenizer._tgt.piece_to_id(p) for p in r.hypotheses[0]] for r in results]
            for i, r, text in zip(todo, results, tokenizer.decode_tgt(ids), strict=True):
                texts[i] = (text, r.scores[0], len(r.hypotheses[0]))
            return [t[0] for t in texts], [t[1] for t in texts], [t[2] for t in texts]
    loaded = time.perf_counter()
    run(lines[:WARMUP_LINES])
    passes = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        hyps, scores, pieces = run(lines)
        passes.append(time.perf_counter() - start)
    out.update(hyps=hyps, scores=scores, pieces=pieces, seconds=statistics.median(passes), passes=passes,
               load_seconds=loaded - started, maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    Path(args.out).write_text(json.dumps(out), encoding="utf-8")


def run_worker(args: argparse.Namespace, config: str, threads: int, lines_file: Path) -> dict[str, Any]:
    out = Path(args.workdir) / f"{config}-{threads}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(Path(__file__).resolve()), args.ckpt, "--worker", config, "--threads",
               str(threads), "--beam", str(args.beam), "--repeat", str(args.repeat), "--workdir", str(args.workdir),
               "--lines", str(lines_file), "--out", str(out)]
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- analysis

def _gnmt(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


def differences(ours: dict[str, Any], other: dict[str, Any], reference: dict[str, Any] | None,
                src_lengths: list[int], limits: list[int], max_input_len: int | None, alpha: float) -> dict[str, int]:
    """Count the lines whose best output differs from ours, by reason (see the module docstring). `reference`: the
    ct2-float32 result (our search rules), which gives the output lengths of ours (equal texts)."""
    reasons: dict[str, int] = {}
    for i, (mine, theirs) in enumerate(zip(ours["hyps"], other["hyps"], strict=True)):
        if mine == theirs:
            continue
        if other["config"] != "native":
            delta = other["scores"][i] - ours["scores"][i]
            reason = "tie" if abs(delta) <= 1e-4 else "ct2 better" if delta > 0 else "ours better"
        else:
            n = other["pieces"][i]  # native output pieces (without EOS); its score: raw / (n + 1) ** alpha
            native_raw = other["scores"][i] * (n + 1) ** alpha
            if max_input_len and src_lengths[i] > max_input_len:
                reason = "segments"
            elif n + 1 > limits[i]:
                reason = "length limit"
            elif reference is not None and reference["hyps"][i] == mine:
                m = reference["pieces"][i]
                ours_raw = ours["scores"][i] * _gnmt(m + 1, alpha)
                ours_prefers = ours["scores"][i] >= native_raw / _gnmt(n + 1, alpha)
                native_prefers = native_raw / (n + 1) ** alpha >= ours_raw / (m + 1) ** alpha
                reason = "length penalty" if ours_prefers and native_prefers else "search"
            else:
                reason = "search"
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt")
    parser.add_argument("--src")
    parser.add_argument("--ref")
    parser.add_argument("--limit", type=int, default=None, help="the first N sentences")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the set; the median is reported")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--workdir", default=None, help="exports and worker outputs (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--lines", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    import torch

    from lightning_nmt import metrics
    from lightning_nmt.export import export
    from lightning_nmt.module import read_checkpoint

    hparams = read_checkpoint(args.ckpt)["hyper_parameters"]
    sources, references, name = test_set(args, hparams.get("data") or {})
    decoding = hparams["decoding"]
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="lnmt-ct2-bench-")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for quantization in ("float32", "int8"):
        if any(c.endswith(quantization) or (c == "native" and quantization == "float32") for c in args.configs):
            export(args.ckpt, workdir / quantization, quantization, force=True)
    lines_file = workdir / "lines.json"
    lines_file.write_text(json.dumps(sources), encoding="utf-8")
    from lightning_nmt.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(workdir / "float32") if (workdir / "float32").is_dir() else None
    limits, src_lengths, max_input_len = [], [], None
    if tokenizer is not None:  # source lengths and our length limit per line (EOS included), for `native`
        src_lengths = [len(ids) + 1 for ids in tokenizer.encode_src(sources)]
        lengths = torch.tensor(src_lengths).float()
        limits = (torch.ceil(lengths * decoding["max_len_ratio"]).long() + decoding["max_len_offset"]).tolist()
        max_input_len = json.loads((workdir / "float32" / "lightning_nmt.json").read_text())["max_input_len"]

    results = []
    for threads in args.threads:
        for config in args.configs:
            result = run_worker(args, config, threads, lines_file)
            result["bleu"] = metrics.bleu(result["hyps"], references, lowercase=False).score
            result["sents_per_s"] = len(sources) / result["seconds"]
            results.append(result)

    print(f"# {args.ckpt}: {len(sources)} sentences of {name}, beam {args.beam}, length_penalty "
          f"{decoding['length_penalty']}")
    print(f"{'config':<12} {'threads':>7} {'sent/s':>8} {'range':>13} {'BLEU':>6} {'peak RSS MB':>11} {'load s':>6}  "
          "outputs differing from ours (threads alike)")
    for r in results:
        ours = next((o for o in results if o["config"] == "torch" and o["threads"] == r["threads"]), None)
        reference = next((o for o in results if o["config"] == "ct2-float32" and o["threads"] == r["threads"]), None)
        diff = "" if ours is None or r is ours else differences(
            ours, r, reference, src_lengths, limits, max_input_len, decoding["length_penalty"])
        if diff != "":
            diff = f"{sum(diff.values())}/{len(sources)} " + (str(diff) if diff else "")
        spread = f"{len(sources) / max(r['passes']):.0f}-{len(sources) / min(r['passes']):.0f}"
        print(f"{r['config']:<12} {r['threads']:>7} {r['sents_per_s']:>8.1f} {spread:>13} {r['bleu']:>6.2f} "
              f"{r['maxrss_mb']:>11.0f} {r['load_seconds']:>6.1f}  {diff}")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.ckpt, "test_set": name, "beam": args.beam,
                                               "results": [{k: v for k, v in r.items() if k not in ("hyps", "scores",
                                                                                                   "pieces")}
                                                           for r in results]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
