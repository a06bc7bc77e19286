"""`lnmt-translate ckpt_path=PATH input=FILE|- output=FILE|- [beam_size=N] [nbest=N] [attention_dir=DIR]`."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import hydra
import torch
from omegaconf import DictConfig

from lightning_nmt.app import run_cli
from lightning_nmt.config import CONF_DIR, register_configs
from lightning_nmt.data.batching import make_eval_loader
from lightning_nmt.data.corpus import read_bytes, split_lines
from lightning_nmt.data.dataset import EncodedDataset
from lightning_nmt.module import TranslationModule
from lightning_nmt.plotting import plot_attention

register_configs()


@torch.inference_mode()
def translate_lines(
    module: TranslationModule, lines: Sequence[str], beam_size: int | None = None, nbest: int = 1,
    max_tokens: int = 8192, attention_dir: str | Path | None = None,
) -> list[list[tuple[str, float]]]:
    """Translate raw sentences, batched by length: [line][nbest] (translation, score).

    Empty (or whitespace-only) lines give an empty translation without running the model.
    With `attention_dir`, one heatmap per translated line is written there (`<line number>.png`).
    """
    tokenizer = module.tokenizer
    todo = [i for i, line in enumerate(lines) if line.strip()]
    results: list[list[tuple[str, float]]] = [[("", 0.0)] for _ in lines]
    if not todo:
        return results
    dataset = EncodedDataset.from_lists(tokenizer.encode_src([lines[i] for i in todo]), None)
    for batch in make_eval_loader(dataset, max_tokens):
        src, src_lengths = batch["src"].to(module.device), batch["src_lengths"].to(module.device)
        found = module.translate(src, src_lengths, beam_size=beam_size, nbest=nbest)
        for row, example in enumerate(batch["ids"].tolist()):
            hyps = tokenizer.decode_tgt(found.tokens[row])
            results[todo[example]] = list(zip(hyps, found.scores[row].tolist(), strict=False))
            if attention_dir is not None and found.attention is not None:
                src_ids = src[row, : int(src_lengths[row])].tolist()
                plot_attention(
                    found.attention[row][0], tokenizer.src_pieces_from_ids(src_ids),
                    [*tokenizer.tgt_pieces_from_ids(found.tokens[row][0]), "</s>"],
                    Path(attention_dir) / f"{todo[example] + 1:05d}.png", title=hyps[0][:80],
                )
    return results


def format_results(results: list[list[tuple[str, float]]], nbest: int) -> str:
    """One translation per line; with nbest > 1 Moses n-best lines `index ||| translation ||| score`."""
    if nbest == 1:
        return "".join(hyps[0][0] + "\n" for hyps in results)
    return "".join(f"{i} ||| {hyp} ||| {score:.4f}\n" for i, hyps in enumerate(results) for hyp, score in hyps)


@contextmanager
def _open_output(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        yield handle


def _read_input(path: str) -> list[str]:
    if path == "-":
        return [line.rstrip("\r\n") for line in sys.stdin]
    return split_lines(read_bytes(Path(path)), Path(path))


def translate(cfg: DictConfig) -> None:
    module = TranslationModule.load(cfg.ckpt_path, map_location=_device(cfg.accelerator))
    lines = _read_input(cfg.input)
    results = translate_lines(module, lines, cfg.beam_size, cfg.nbest, cfg.batch_max_tokens, cfg.attention_dir)
    with _open_output(cfg.output) as out:
        out.write(format_results(results, cfg.nbest))


def _device(accelerator: str) -> str:
    return "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) \
        else "cpu"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="translate")
def main(cfg: DictConfig) -> Any:
    run_cli(translate, cfg)


if __name__ == "__main__":
    main()
