"""Profile training steps of the benchmark's reference model outside Lightning (see benchmarks/README.md).

    python benchmarks/profile_step.py [--steps 40] [--input-feeding] [--precision 32|bf16-mixed] [--profile ROWS]
                                      [--speedups auto|off]

Uses the same data, calibrated batches and model as `run.py`, runs forward + backward + Adam in a plain
loop (so the difference to `run.py`'s figure is the Trainer's own overhead), prints target tokens/s and
torch.profiler's table of the most expensive operators (self CPU time).
"""

from __future__ import annotations

import argparse
import itertools
import time

import lightning as L
import torch
from run import REFERENCE_MODEL, peak_rss_mb, reference_data
from torch.profiler import ProfilerActivity, profile

from lightning_nmt.kernels.cpu import tune_process
from lightning_nmt.module import TranslationModule
from lightning_nmt.optim import make_optimizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--input-feeding", action="store_true")
    p.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    p.add_argument("--data", default="../shared/data/multi30k")
    p.add_argument("--attention", default="general")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="profile --steps more steps and print the ROWS most expensive operators")
    p.add_argument("--speedups", choices=["auto", "off"], default="auto", help="the CPU kernels (kernels/cpu.py)")
    args = p.parse_args()
    tune_process(args.speedups, "cpu")
    L.seed_everything(42, verbose=False)
    dm, _, _ = reference_data(args.data, ".cache/lightning_nmt", 1800)
    batches = list(itertools.islice(iter(dm.train_dataloader()), 20 + (2 if args.profile else 1) * args.steps))
    model = {**REFERENCE_MODEL, "type": "attention", "attention": args.attention, "input_feeding": args.input_feeding}
    module = TranslationModule(model=model, src_vocab_size=dm.tokenizer.src_vocab_size,
                               tgt_vocab_size=dm.tokenizer.tgt_vocab_size, optim={}, scheduler={}, decoding={},
                               label_smoothing=0.0, speedups=args.speedups)
    module.train()
    opt = make_optimizer(module.parameters(), {"name": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0})
    bf16 = args.precision == "bf16-mixed"

    def step(batch: dict[str, torch.Tensor]) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss, n = module.token_loss(batch)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batch in batches[:20]:
        step(batch)
    timed = batches[20:20 + args.steps]
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    seconds = time.perf_counter() - start
    tokens = sum(int(b["tgt_out"].ne(0).sum()) for b in timed)
    print(f"plain loop: {tokens / seconds:.0f} tgt tok/s ({seconds / len(timed) * 1000:.0f} ms/step, "
          f"{tokens / len(timed):.0f} tok/step), peak RSS {peak_rss_mb():.0f} MB")
    if not args.profile:
        return
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[20 + args.steps:]:
            step(batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


if __name__ == "__main__":
    main()
