"""Data pipeline at scale: preprocessing speed and memory at 1M and 4M pairs, a cached restart, sentencepiece's own
encoding rate (the ceiling), and training memory on the 4M-pair cache beside Multi30k. Prints one JSON object.

    python benchmarks/preprocess.py [--pairs 1000000 4000000] [--workers all 1] [--repeat 3] [--steps 10]
                                    [--threads 1] [--workdir /tmp/lnmt-preprocess-bench]

The corpus is generated under --workdir (never in the repository): pairs of two Multi30k training sentences
joined (about 24 words a line; ``MULTI30K_ROOT``, default ../shared/data/multi30k), or of two sentences of the
embedded synthetic generator when Multi30k is absent. Every measurement runs in a fresh process, with the
preprocessing settings of ``data=files`` (joint BPE 8,000, max_len 100, default input_sentence_size and workers).
Memory: the process's own peak RSS (``ru_maxrss``), and the peak total PSS of the process and its worker processes
(sampled every 0.2 s from /proc; PSS counts pages shared after fork once). Training memory: the attention model
(general score, embeddings 256, biGRU 256, GRU decoder 512) composed and built as ``lnmt-train`` does, peak
``RssAnon`` of /proc/self/status over the training steps (anonymous memory: the memory-mapped corpus is
file-backed and shows in ``RssFile``, reclaimable page cache).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = Path(os.environ.get("MULTI30K_ROOT", ROOT.parent / "shared" / "data" / "multi30k"))
DATA = {"corpus": "files", "src_lang": "en", "tgt_lang": "de", "max_len": 100, "max_tokens": 4096,
        "tokenizer": {"type": "bpe", "vocab_size": 8000, "joint": True, "character_coverage": 1.0}}
MODEL = ["model=attention", "model.attention=general", "model.embedding_dim=256", "model.encoder_hidden=256",
         "model.decoder_hidden=512", "model.dropout=0.2", "label_smoothing=0.1", "optim.lr=0.001"]
CEILING_PAIRS = 200_000


# ---------------------------------------------------------------------------------------------- corpus

def _sentences() -> tuple[dict[str, list[str]], str]:
    """Source sentences per language and split, and where they come from."""
    if (MULTI30K / "train.en.gz").is_file():
        read = {name: {lang: gzip.open(MULTI30K / f"{file}.{lang}.gz", "rt", encoding="utf-8").read().splitlines()
                       for lang in ("en", "de")} for name, file in (("train", "train"), ("val", "val"),
                                                                    ("test", "test_2016_flickr"))}
        return read, f"Multi30k en-de train sentences ({MULTI30K}), two per line"
    from lightning_nmt.data.sample import generate_pairs

    pairs = {name: generate_pairs(n, seed) for name, n, seed in (("train", 29000, 1), ("val", 1000, 2),
                                                                  ("test", 1000, 3))}
    read = {name: {"en": [p[0] for p in ps], "de": [p[1] for p in ps]} for name, ps in pairs.items()}
    return read, "the embedded synthetic English->French generator (French written as .de), two sentences per line"


def make_corpus(directory: Path, pairs: int) -> dict[str, str]:
    """``train`` (``pairs`` joined pairs), ``val``, ``test`` prefixes under ``directory``; (re)used if present."""
    prefixes = {name: str(directory / name) for name in ("train", "val", "test")}
    if (directory / "DONE").is_file():
        return prefixes
    directory.mkdir(parents=True, exist_ok=True)
    sentences, _ = _sentences()
    train, rng = sentences["train"], random.Random(pairs)
    with open(directory / "train.en", "w") as en, open(directory / "train.de", "w") as de:
        for start in range(0, pairs, 100_000):
            picks = [(rng.randrange(len(train["en"])), rng.randrange(len(train["en"])))
                     for _ in range(min(100_000, pairs - start))]
            en.write("".join(f"{train['en'][a]} {train['en'][b]}\n" for a, b in picks))
            de.write("".join(f"{train['de'][a]} {train['de'][b]}\n" for a, b in picks))
    for name in ("val", "test"):
        for lang in ("en", "de"):
            (directory / f"{name}.{lang}").write_text("".join(line + "\n" for line in sentences[name][lang]))
    (directory / "DONE").touch()
    return prefixes


# ---------------------------------------------------------------------------------------------- measuring

def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _pss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _busy_jiffies() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6]


def run_child(*args: str) -> dict[str, Any]:
    """Run ``--child ...`` in a fresh process: its JSON line, plus peak tree PSS, wall time and the CPU others
    used meanwhile (in cores)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, start = _busy_jiffies(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _pss_mb(_tree(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{err[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * os.sysconf("SC_CLK_TCK")
    others = max(0.0, (_busy_jiffies() - busy0 - ours) / os.sysconf("SC_CLK_TCK") / wall)
    return {**json.loads(out.strip().splitlines()[-1]), "peak_tree_pss_mb": round(peak[0]),
            "child_wall_s": round(wall, 2), "other_processes_cores_busy": round(others, 2)}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _datamodule(train: str, cache: str, **extra: Any):
    from lightning_nmt.data import ParallelDataModule

    if train == "multi30k":
        return ParallelDataModule(**{**DATA, "corpus": "multi30k", "root": str(MULTI30K)}, cache_dir=cache, **extra)
    return ParallelDataModule(**DATA, train=train, val=str(Path(train).with_name("val")), cache_dir=cache, **extra)


# ---------------------------------------------------------------------------------------------- children

def child_preprocess(train: str, cache: str, workers: str) -> dict[str, Any]:
    """Set up the DataModule (build or open the cache) and report time and memory; ``workers``: a number of
    encoding processes, or "all" (the default, every available core)."""
    import lightning  # noqa: F401 - imported before timing, as lnmt-train has it

    start = time.perf_counter()
    dm = _datamodule(train, cache, preprocess_workers=None if workers == "all" else int(workers))
    dm.prepare_data()
    dm._load()  # what setup("fit") does before creating the train sampler: build or open the cache
    build_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dm.setup("fit")
    seconds = time.perf_counter() - start
    meta = dm._entry.meta
    return {"built": dm.built_cache, "seconds": round(seconds, 2), "pairs": meta["pairs"],
            "pairs_per_sec": round(meta["pairs"] / seconds) if dm.built_cache else None,
            "phases_s": {k: round(v, 2) for k, v in meta["seconds"].items()} if dm.built_cache else None,
            "encode_workers": meta["workers"], "peak_rss_before_sampler_mb": round(build_rss / 1024),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "workers_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "cache_mb": round(sum(p.stat().st_size for p in dm._entry.path.iterdir()) / 2**20)}


def child_ceiling(train: str, cache: str) -> dict[str, Any]:
    """Sentencepiece's own encoding rate on the first CEILING_PAIRS pairs (all cores), beside the bulk encoder."""
    from lightning_nmt.data.binarize import available_cores

    dm = _datamodule(train, cache)
    dm.setup("fit")
    tokenizer, cores = dm.tokenizer, available_cores()
    lines = {lang: Path(f"{train}.{lang}").read_text().splitlines()[:CEILING_PAIRS] for lang in ("en", "de")}
    pairs = len(lines["en"])
    start = time.perf_counter()
    tokenizer.encode_src(lines["en"])  # sentencepiece's batch encoding on every core (num_threads=-1)
    tokenizer.encode_tgt(lines["de"])
    spm_seconds = time.perf_counter() - start
    encoder, _ = tokenizer.bulk_encoders(num_threads=cores)
    start = time.perf_counter()
    for lang in ("en", "de"):
        for i in range(0, pairs, 20_000):
            encoder(lines[lang][i:i + 20_000])
    bulk_seconds = time.perf_counter() - start
    return {"pairs": pairs, "cores": cores, "sentencepiece_encode_pairs_per_sec": round(pairs / spm_seconds),
            "bulk_encoder": type(encoder).__name__,
            "bulk_encoder_pairs_per_sec_one_process": round(pairs / bulk_seconds)}


def child_train(train: str, cache: str, steps: str, threads: str) -> dict[str, Any]:
    """Peak RssAnon over ``steps`` training steps (0: only build the cache) of the reference model, composed and
    built as ``lnmt-train`` does (process settings of ``cli.run_cli`` included), on ``threads`` torch threads."""
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir

    from lightning_nmt import app, cli
    from lightning_nmt.config import CONF_DIR, register_configs

    if train == "multi30k":
        data = ["data=multi30k", f"data.root={MULTI30K}"]
    else:
        data = ["data=files", f"data.train={train}", f"data.val={Path(train).with_name('val')}", "data.src_lang=en",
                "data.tgt_lang=de"]
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*data, *MODEL, f"data.max_tokens={DATA['max_tokens']}",
                                          f"paths.root_dir={cache}", f"paths.output_dir={cache}",
                                          f"paths.cache_dir={cache}"])

    def run(cfg: Any) -> dict[str, Any]:
        torch.set_num_threads(int(threads))
        L.seed_everything(42, verbose=False)
        dm = app.build_datamodule(cfg.data, cfg.seed)
        dm.prepare_data()
        dm.setup("fit")
        if int(steps) == 0:
            return {"built": dm.built_cache}
        if dm.built_cache:
            raise SystemExit("the cache was built in the measured process: run the preprocessing first")
        after_setup = _status_kb("RssAnon")

        class RssAnonPeak(L.Callback):
            peak = 0

            def on_train_batch_end(self, *args: Any) -> None:
                self.peak = max(self.peak, _status_kb("RssAnon"))

        module, peak = app.build_module(cfg, dm), RssAnonPeak()
        trainer = L.Trainer(accelerator="cpu", max_steps=int(steps), limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[peak], use_distributed_sampler=False)
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        return {"train_examples": len(dm.dataset("train")), "steps": int(steps),
                "fit_s": round(time.perf_counter() - start, 1),
                "rss_anon_after_setup_mb": round(after_setup / 1024), "peak_rss_anon_mb": round(peak.peak / 1024),
                "rss_file_end_mb": round(_status_kb("RssFile") / 1024),
                "vm_hwm_mb": round(_status_kb("VmHWM") / 1024),
                "vocab": [dm.tokenizer.src_vocab_size, dm.tokenizer.tgt_vocab_size]}

    return cli.run_cli(run, cfg)


# ---------------------------------------------------------------------------------------------- driver

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lnmt-preprocess-bench"))
    p.add_argument("--steps", type=int, default=10, help="training steps of the memory comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training steps")
    p.add_argument("--workers", nargs="+", default=["all", "1"],
                   help="data.preprocess_workers of the builds: all (the default: every available core) or a number")
    p.add_argument("--repeat", type=int, default=3,
                   help="builds per corpus size and workers, training runs per corpus (medians reported)")
    p.add_argument("--parts", nargs="+", choices=["preprocess", "ceiling", "training"],
                   default=["preprocess", "ceiling", "training"], help="what to measure (the caches are reused)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        fn = {"preprocess": child_preprocess, "ceiling": child_ceiling, "train": child_train}[kind]
        print(json.dumps(fn(*rest)))
        return
    results: dict[str, Any] = {"corpus": _sentences()[1], "cpu_cores": os.cpu_count()}
    smallest, largest = min(args.pairs), max(args.pairs)
    for pairs in args.pairs:
        train = make_corpus(args.workdir / f"corpus-{pairs}", pairs)["train"]
        cache = args.workdir / f"cache-{pairs}"
        if "preprocess" not in args.parts:
            continue
        runs = results.setdefault("preprocess", {})[str(pairs)] = {}
        for workers in args.workers:
            builds = []
            for _ in range(args.repeat):
                shutil.rmtree(cache, ignore_errors=True)
                builds.append(run_child("preprocess", train, str(cache), workers))
            builds.sort(key=lambda run: run["seconds"])
            runs[f"first_start_workers_{workers}"] = {
                "median": builds[len(builds) // 2], "seconds_all": [run["seconds"] for run in builds],
                "max_peak_rss_mb": max(run["peak_rss_mb"] for run in builds),
                "max_peak_tree_pss_mb": max(run["peak_tree_pss_mb"] for run in builds)}
        runs["cached_start"] = run_child("preprocess", train, str(cache), args.workers[-1])
    if "ceiling" in args.parts:
        results["ceiling"] = run_child("ceiling", str(args.workdir / f"corpus-{smallest}" / "train"),
                                       str(args.workdir / f"cache-{smallest}"))
    if "training" in args.parts:
        corpora = {f"{largest}_pairs": (str(args.workdir / f"corpus-{largest}" / "train"),
                                        str(args.workdir / f"cache-{largest}")),
                   "multi30k": ("multi30k", str(args.workdir / "cache-multi30k"))}
        run_child("train", *corpora["multi30k"], "0", str(args.threads))  # builds the Multi30k cache, unmeasured
        runs = {name: [] for name in corpora}
        for _ in range(args.repeat):  # interleaved
            for name, (train, cache) in corpora.items():
                runs[name].append(run_child("train", train, cache, str(args.steps), str(args.threads)))
        memory = results["training_memory"] = {}
        for name, measured in runs.items():
            measured.sort(key=lambda run: run["peak_rss_anon_mb"])
            memory[name] = {"median": measured[len(measured) // 2],
                            "peak_rss_anon_mb_all": [run["peak_rss_anon_mb"] for run in measured]}
        big, small = (memory[name]["median"]["peak_rss_anon_mb"] for name in corpora)
        memory["peak_rss_anon_ratio"] = round(big / small, 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
