"""Speed benchmark of lightning_nmt on Multi30k En->De, beside Joey NMT (see benchmarks/README.md).

    python benchmarks/run.py --steps 300 [--model attention|basic|transformer] [--input-feeding] [--rnn-type gru|lstm]
                             [--precision 32|bf16-mixed] [--decode-precision 32|bf16-mixed] [--joey]

Trains the reference model (Joey's reference: joint BPE 8k, emb 256, biGRU 256/dir, GRU 512, Luong
`general` attention, dropout 0.2, Adam 1e-3) for a fixed number of steps through the real Trainer and
TranslationModule, computes the validation loss, then decodes test2016 greedy and with beam 5 in batches of
64 sentences (also with every hypothesis forced to the length limit, and beam 5 with hypotheses as long as
Joey's or `--beam-words` on average). Prints one JSON line (the last line); `--joey` runs
../shared/bench/peers/joey_rnn.sh with the same steps right after and adds its figures and the ratios.

FLOPs are counted by torch.utils.flop_counter (matmuls, including those inside the GRU, forward and
backward) on the measured batches' real shapes; the roofline fraction divides achieved FLOP/s by this
machine's own measured dense matmul peak (2048x2048, same threads and dtype, the faster of torch.mm and oneDNN).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import sacrebleu
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_nmt.data import ParallelDataModule
from lightning_nmt.data.batching import collate
from lightning_nmt.kernels.cpu import packable_dtypes, tune_process
from lightning_nmt.module import TranslationModule
from lightning_nmt.search.beam import BeamStop

ROOT = Path(__file__).resolve().parents[1]
JOEY = ROOT.parent / "shared" / "bench" / "peers" / "joey_rnn.sh"
# Joey's decoding settings: beam alpha 1.0, at most 1.5 x source length. "Forced" decoding raises min_len_ratio to
# max_len_ratio, so every hypothesis runs to the length limit (Joey's undertrained outputs run long)
DECODING = {"beam_size": 5, "val_beam_size": 1, "length_penalty": 1.0, "max_len_ratio": 1.5,
            "max_len_offset": 0, "min_len_ratio": 0.0}
WARMUP = 20  # steps excluded from throughput, as in Joey's figures (steps 21..N)
REFERENCE_MODEL = {
    "attention": "general", "rnn_type": "gru", "embedding_dim": 256, "encoder_hidden": 256,
    "bidirectional": True, "encoder_layers": 1, "decoder_hidden": 512, "decoder_layers": 1, "dropout": 0.2,
    "tie_embeddings": False, "d_model": 256, "nhead": 4, "ffn_dim": 1024, "transformer_layers": 3,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--model", choices=["attention", "basic", "transformer"], default="attention")
    p.add_argument("--input-feeding", action="store_true", help="Luong input feeding (step-by-step path)")
    p.add_argument("--rnn-type", choices=["gru", "lstm"], default="gru", help="the recurrent layers (model.rnn_type)")
    p.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    p.add_argument("--joey", action="store_true", help="run Joey NMT's script with the same steps afterwards")
    p.add_argument("--tgt-tokens", type=int, default=1800, help="real target tokens per step (Joey: ~1,800)")
    p.add_argument("--data", default=os.environ.get("MULTI30K_ROOT", str(ROOT.parent / "shared/data/multi30k")))
    p.add_argument("--cache-dir", default=str(ROOT / ".cache" / "lightning_nmt"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--decode-batch", type=int, default=64, help="sentences per decoding batch (Joey: 64)")
    p.add_argument("--decode-precision", choices=["32", "bf16-mixed"], default=None,
                   help="precision of the timed decoding (default: --precision)")
    p.add_argument("--beam-words", type=float, default=None,
                   help="also time beam 5 with hypotheses of this mean length in words (default with --joey: Joey's)")
    return p.parse_args(argv)


def busy_jiffies() -> tuple[int, int]:
    """Machine-wide busy CPU jiffies and total jiffies (to report other processes' load)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6], sum(fields)


def own_jiffies() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int((usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK"))


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> dict[str, float]:
    """Best dense (n x n) @ (n x n) FLOP/s of this machine for `dtype`, per library: `torch.mm` (MKL in fp32,
    oneDNN in bf16) and oneDNN with the weight packed once (`torch.ops.mkldnn`; fp32 oneDNN ran 15-20% faster
    than MKL here). The roofline fraction divides by the larger."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    kernels = {"torch.mm": lambda: torch.mm(a, b)}
    if dtype in packable_dtypes():
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
        kernels["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    peaks = {}
    for name, kernel in kernels.items():
        kernel()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                kernel()
            best = min(best, (time.perf_counter() - start) / reps)
        peaks[name] = 2 * n**3 / best
    return peaks


def calibrate_max_tokens(datamodule: ParallelDataModule, target: int) -> tuple[int, float]:
    """The `max_tokens` whose batches hold `target` real target tokens on average (binary search)."""
    train = datamodule.dataset("train")
    tgt_real = train.tgt_lengths() + 1  # + EOS
    lo, hi = target, 4 * target
    from lightning_nmt.data.batching import TokenBatchSampler

    def mean_real(max_tokens: int) -> float:
        sampler = TokenBatchSampler(train.src_lengths(), train.tgt_lengths(), max_tokens, seed=0)
        return float(np.mean([tgt_real[b].sum() for b in sampler.batches()]))

    while hi - lo > 8:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if mean_real(mid) < target else (lo, mid)
    return hi, mean_real(hi)


class StepTimer(L.Callback):
    """Wall time and real target tokens of each training step; the batches' shapes for FLOP counting."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.samples: list[dict[str, torch.Tensor]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self._start)
        self.tokens.append(int(batch["tgt_out"].ne(0).sum()))
        if len(self.samples) < 12 and batch_idx % 7 == 3:
            self.samples.append({k: v.clone() for k, v in batch.items()})


def _packed_linear_flops(x_shape: Any, *args: Any, out_shape: Any, **kwargs: Any) -> int:
    """oneDNN's packed matmul (`models.base.Linear`): x (..., in) -> out (..., out), 2 FLOPs a multiply-add."""
    return 2 * math.prod(x_shape) * out_shape[-1]


def count_flops(module: TranslationModule, batch: dict[str, torch.Tensor], precision: str) -> int:
    """FLOPs of one training step's forward + backward on `batch` (optimizer step excluded)."""
    packed = {torch.ops.mkldnn._linear_pointwise: _packed_linear_flops}
    with FlopCounterMode(display=False, custom_mapping=packed) as counter, torch.autocast(
            "cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
        loss, n = module.token_loss(batch)
        (loss / n).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def decode_speed(module: TranslationModule, datamodule: ParallelDataModule, beam: int, batch_size: int,
                 precision: str, min_len_ratio: float = 0.0, beam_stop: str = "k_finished") -> dict[str, float]:
    """Sentences/s decoding test2016 in batches of `batch_size` sentences (sorted by length) with `min_len_ratio`
    and `beam_stop` (see `models.search`); `min_len_ratio` = the maximum length ratio runs every hypothesis to the
    length limit."""
    module.decoding = replace(module.decoding, min_len_ratio=min_len_ratio, beam_stop=BeamStop(beam_stop))
    test = datamodule.dataset("test")
    order = np.argsort(test.src_lengths(), kind="stable")
    batches = [collate([test[int(i)] for i in order[k:k + batch_size]]) for k in range(0, len(order), batch_size)]
    hyps: dict[int, str] = {}
    module.eval()
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
        for batch in batches:
            found = module.translate(batch["src"], batch["src_lengths"], beam_size=beam)
            texts = module.tokenizer.decode_tgt([nbest[0] for nbest in found.tokens])
            hyps.update(zip(batch["ids"].tolist(), texts))
    seconds = time.perf_counter() - start
    ordered = [hyps[i] for i in range(len(test))]
    bleu = sacrebleu.corpus_bleu(ordered, [datamodule.references("test")]).score
    return {"sent_per_sec": len(test) / seconds, "seconds": seconds, "bleu": bleu,
            "hyp_words": float(np.mean([len(h.split()) for h in ordered]))}


def decode_matched(module: TranslationModule, datamodule: ParallelDataModule, beam: int, batch_size: int,
                   precision: str, words: float, beam_stop: str, tries: int = 6) -> dict[str, float]:
    """`decode_speed` at the `min_len_ratio` whose hypotheses average `words` words (within 2%, bisected in at
    most `tries` timed decodes; the closest is returned): speed at the same output length as a peer's."""
    lo, hi, best = 0.0, DECODING["max_len_ratio"], None
    for _ in range(tries):
        ratio = (lo + hi) / 2
        found = decode_speed(module, datamodule, beam, batch_size, precision, ratio, beam_stop)
        found["min_len_ratio"] = ratio
        if best is None or abs(found["hyp_words"] - words) < abs(best["hyp_words"] - words):
            best = found
        if abs(found["hyp_words"] - words) <= 0.02 * words:
            break
        lo, hi = (ratio, hi) if found["hyp_words"] < words else (lo, ratio)
    return best


def validation_loss(module: TranslationModule, datamodule: ParallelDataModule, precision: str) -> float:
    """Mean cross-entropy per real target token on the validation set (dropout off, same precision)."""
    module.eval()
    nll, tokens = 0.0, 0
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
        for batch in datamodule.make_eval_loader(datamodule.dataset("val")):
            loss, n = module.token_loss(batch)
            nll, tokens = nll + float(loss), tokens + int(n)
    return nll / tokens


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_data(root: str, cache_dir: str, tgt_tokens: int) -> tuple[ParallelDataModule, dict[str, Any], float]:
    """Multi30k en->de with joint BPE 8k, set up for fitting with `max_tokens` calibrated to `tgt_tokens` real
    target tokens per batch: (datamodule, its config, the calibrated mean of real target tokens per batch)."""
    data = dict(corpus="multi30k", root=root, src_lang="en", tgt_lang="de", max_len=100,
                tokenizer={"type": "bpe", "vocab_size": 8000, "joint": True, "character_coverage": 1.0},
                cache_dir=cache_dir, eval_max_tokens=8192, seed=42)
    datamodule = ParallelDataModule(**data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    max_tokens, mean_tokens = calibrate_max_tokens(datamodule, tgt_tokens)
    data["max_tokens"] = max_tokens
    datamodule = ParallelDataModule(**data)
    datamodule.setup("fit")
    return datamodule, data, mean_tokens


def run_ours(args: argparse.Namespace) -> tuple[dict[str, Any], TranslationModule, ParallelDataModule]:
    """Train and decode; the JSON fields, and the trained module and its data (for `add_matched_decode`)."""
    torch.set_num_threads(args.threads)
    L.seed_everything(42, verbose=False)
    datamodule, data, mean_tokens = reference_data(args.data, args.cache_dir, args.tgt_tokens)
    max_tokens = data["max_tokens"]

    loader_start = time.perf_counter()
    n_batches = sum(1 for _ in datamodule.train_dataloader())
    loader_rate = n_batches / (time.perf_counter() - loader_start)

    model = {**REFERENCE_MODEL, "type": args.model, "input_feeding": args.input_feeding, "rnn_type": args.rnn_type}
    module = TranslationModule(
        model=model, src_vocab_size=datamodule.tokenizer.src_vocab_size,
        tgt_vocab_size=datamodule.tokenizer.tgt_vocab_size,
        optim={"name": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0},
        scheduler={"name": "none"},
        decoding=dict(DECODING),  # decode_speed replaces min_len_ratio and beam_stop in module.decoding
        label_smoothing=0.0, data=data, tokenizer=datamodule.tokenizer,
    )
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=args.precision, max_steps=args.steps,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], use_distributed_sampler=False)
    busy0, total0 = busy_jiffies()
    own0 = own_jiffies()
    trainer.fit(module, datamodule=datamodule)
    busy1, total1 = busy_jiffies()
    other_cores = max(0, (busy1 - busy0) - (own_jiffies() - own0)) / max(1, total1 - total0) * os.cpu_count()
    train_peak_rss = peak_rss_mb()  # as Joey's: the training process

    times, tokens = np.array(timer.times[WARMUP:]), np.array(timer.tokens[WARMUP:])
    tok_per_sec = tokens.sum() / times.sum()
    flops = np.mean([count_flops(module, b, args.precision) for b in timer.samples])
    sample_tokens = np.mean([int(b["tgt_out"].ne(0).sum()) for b in timer.samples])
    flops_per_sec = flops / sample_tokens * tok_per_sec
    peaks = matmul_peak(torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32)
    peak = max(peaks.values())
    val_loss = validation_loss(module, datamodule, args.precision)
    decode = {}
    for name, beam in (("greedy", 1), ("beam5", 5)):
        found = decode_speed(module, datamodule, beam, args.decode_batch, args.decode_precision)
        forced = decode_speed(module, datamodule, beam, args.decode_batch, args.decode_precision,
                              min_len_ratio=DECODING["max_len_ratio"])
        decode |= {f"{name}_sent_per_sec": found["sent_per_sec"], f"{name}_bleu": found["bleu"],
                   f"{name}_hyp_words": found["hyp_words"], f"{name}_forced_sent_per_sec": forced["sent_per_sec"],
                   f"{name}_forced_hyp_words": forced["hyp_words"]}
    if args.decode_precision != args.precision:  # the same model decoded at its training precision, for BLEU
        same = decode_speed(module, datamodule, 1, args.decode_batch, args.precision)
        decode |= {"greedy_bleu_at_train_precision": same["bleu"],
                   "greedy_sent_per_sec_at_train_precision": same["sent_per_sec"]}
    return {
        "tool": "lightning_nmt", "model": args.model, "input_feeding": args.input_feeding, "rnn_type": args.rnn_type,
        "precision": args.precision, "steps": args.steps, "max_tokens": max_tokens,
        "tgt_tokens_per_step": float(tokens.mean()), "calibrated_tgt_tokens_per_step": mean_tokens,
        "train_tgt_tokens_per_sec": float(tok_per_sec), "train_seconds": float(np.sum(timer.times)),
        "padding_fraction": datamodule.padding_fraction, "dataloader_batches_per_sec": loader_rate,
        "train_flops_per_sec": float(flops_per_sec), "matmul_peak_flops_per_sec": peak,
        "matmul_peak_flops_per_sec_by_kernel": peaks,
        "roofline_fraction": float(flops_per_sec / peak),
        "peak_rss_mb": train_peak_rss, "process_peak_rss_mb": peak_rss_mb(),
        "val_loss": val_loss, "decode_precision": args.decode_precision, **decode,
        "other_cores_busy": other_cores, "threads": args.threads,
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()},
    }, module, datamodule


def add_matched_decode(result: dict[str, Any], args: argparse.Namespace, module: TranslationModule,
                       datamodule: ParallelDataModule, words: float) -> None:
    """Beam-5 speed with hypotheses as long as `words` on average (`decode_matched`), into `result`: with our
    default stopping rule (a sentence ends when 5 hypotheses have) and with `beam_stop="best_finished"` (when its
    best candidate has, OpenNMT-py's rule). Joey's rule lies between: ended hypotheses keep their beam slots, so
    its live beam shrinks, and a sentence ends when all 5 slots have ended."""
    result["beam5_matched_target_words"] = words
    for beam_stop, name in (("k_finished", "beam5_matched"), ("best_finished", "beam5_matched_best_stop")):
        found = decode_matched(module, datamodule, 5, args.decode_batch, args.decode_precision, words, beam_stop)
        result |= {f"{name}_sent_per_sec": found["sent_per_sec"], f"{name}_hyp_words": found["hyp_words"],
                   f"{name}_min_len_ratio": found["min_len_ratio"]}


def run_joey(steps: int) -> dict[str, Any]:
    proc = subprocess.run(["bash", str(JOEY), "--steps", str(steps), "--tag", f"lnmt{int(time.time())}"],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tune_process("auto", "cpu")
    if not Path(args.data, "train.en.gz").is_file():
        sys.exit(f"error: Multi30k not found in {args.data} (pass --data DIR or set MULTI30K_ROOT)")
    args.decode_precision = args.decode_precision or args.precision
    result, module, datamodule = run_ours(args)
    if args.beam_words is not None:
        add_matched_decode(result, args, module, datamodule, args.beam_words)
    print(json.dumps(result), flush=True)  # ours alone first; with --joey the combined line comes last
    if args.joey:
        joey = run_joey(args.steps)
        result["joey"] = joey
        if args.beam_words is None and joey.get("beam5_hyp_words"):  # after Joey's run: its length is known now
            add_matched_decode(result, args, module, datamodule, joey["beam5_hyp_words"])
        ratios = {}
        for ours, theirs in (("train_tgt_tokens_per_sec", "train_tgt_tokens_per_s"),
                             ("greedy_sent_per_sec", "greedy_sent_per_s"),
                             ("beam5_sent_per_sec", "beam5_sent_per_s"),
                             ("greedy_forced_sent_per_sec", "greedy_sent_per_s"),
                             ("beam5_forced_sent_per_sec", "beam5_sent_per_s"),
                             ("beam5_matched_sent_per_sec", "beam5_sent_per_s"),
                             ("beam5_matched_best_stop_sent_per_sec", "beam5_sent_per_s")):
            if result.get(ours) and joey.get(theirs):
                ratios[ours] = result[ours] / joey[theirs]
        if joey.get("peak_rss_mb"):
            ratios["peak_rss_mb"] = result["peak_rss_mb"] / joey["peak_rss_mb"]
        result["ratio_vs_joey"] = ratios
        print(json.dumps(result))


if __name__ == "__main__":
    main()
