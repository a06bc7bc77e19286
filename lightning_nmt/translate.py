"""`lnmt-translate ckpt_path=PATH input=FILE|- output=FILE|- [beam_size=N] [nbest=N] [attention_dir=DIR]`,
and `Translator`, the same as a Python API.

The input is read and translated in chunks (`chunk_lines` lines or `chunk_tokens` words, whichever comes first,
and, from a pipe or a terminal, whatever has arrived when the input pauses): each chunk is batched by length,
translated, and written in input order, then flushed. So an interactive session answers each line as it is
typed, and a file of any size is translated in the memory of one chunk.
"""

from __future__ import annotations

import gzip
import logging
import os
import select
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from lightning_nmt.atomic import atomic_path
from lightning_nmt.cli import decoding_overrides, inference_device, run_cli
from lightning_nmt.config import CONF_DIR, register_configs
from lightning_nmt.data.batching import collate
from lightning_nmt.data.dataset import Example
from lightning_nmt.data.errors import DataError
from lightning_nmt.errors import ConfigError
from lightning_nmt.kernels import cpu as cpu_kernels
from lightning_nmt.module import TranslationModule
from lightning_nmt.plotting import plot_attention

register_configs()
log = logging.getLogger("lightning_nmt")

Hypotheses = list[tuple[str, float]]
"""The n best translations of one line, best first: (translation, score)."""


@torch.inference_mode()
def translate_lines(
    module: TranslationModule, lines: Sequence[str], beam_size: int | None = None, nbest: int = 1,
    max_tokens: int = 8192, attention_dir: str | Path | None = None, first_line: int = 1,
) -> list[Hypotheses]:
    """Translate raw sentences, batched by length: [line][nbest] (translation, score).

    Empty (or whitespace-only) lines give an empty translation without running the model. A line longer than
    the module's `max_input_len` pieces is translated in segments, with a warning naming its line number
    (`first_line` is the number of `lines[0]`). With `attention_dir`, one heatmap per translated line is written
    there (`<line number>.png`).
    """
    tokenizer = module.tokenizer
    todo = [i for i, line in enumerate(lines) if line.strip()]
    results: list[Hypotheses] = [[("", 0.0)] for _ in lines]
    if not todo:
        return results
    encoded = tokenizer.encode_src([lines[i] for i in todo])
    _warn_long(encoded, todo, first_line, module.max_input_len)
    for batch in _batches(encoded, max_tokens):
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
                    Path(attention_dir) / f"{first_line + todo[example]:05d}.png", title=hyps[0][:80],
                )
    return results


def _batches(encoded: list[list[int]], max_tokens: int) -> Iterator[dict[str, torch.Tensor]]:
    """Length-sorted batches of at most `max_tokens` padded source positions (one sentence at least);
    `batch["ids"]` indexes `encoded`."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * (len(encoded[i]) + 1) > max_tokens:
            yield collate([Example(j, encoded[j], None) for j in batch])
            batch = []
        batch.append(i)
    if batch:
        yield collate([Example(j, encoded[j], None) for j in batch])


def _warn_long(encoded: list[list[int]], todo: list[int], first_line: int, limit: int | None) -> None:
    long = [(first_line + todo[i], len(ids) + 1) for i, ids in enumerate(encoded) if limit and len(ids) + 1 > limit]
    if long:
        named = ", ".join(f"{line} ({n} pieces)" for line, n in long[:20]) + (" ..." if len(long) > 20 else "")
        log.warning("warning: line(s) %s longer than max_input_len=%d pieces: each translated in segments, "
                    "joined into one output line", named, limit)


def format_results(results: list[Hypotheses], nbest: int, first_index: int = 0) -> str:
    """One translation per line; with nbest > 1 Moses n-best lines `index ||| translation ||| score` (index
    0-based over the whole input: `first_index` is that of `results[0]`)."""
    if nbest == 1:
        return "".join(hyps[0][0] + "\n" for hyps in results)
    return "".join(f"{first_index + i} ||| {hyp} ||| {score:.4f}\n"
                   for i, hyps in enumerate(results) for hyp, score in hyps)


class Translator:
    """A trained checkpoint as a translator:

        translator = Translator.from_checkpoint("run/checkpoints/last.ckpt", beam_size=5)
        translator.translate(["A man is riding a bike."])          # -> ["Ein Mann fährt Fahrrad."]
        translator.translate_nbest(lines, nbest=3)                 # -> [[(translation, score), ...], ...]
        for line in translator.stream(open("big.txt")): ...        # constant memory, input order
    """

    def __init__(self, module: TranslationModule, max_tokens: int = 8192, **decoding: Any) -> None:
        """`decoding`: `DecodingConfig` fields replacing the checkpoint's (e.g. `beam_size=5`), None: keep."""
        self.module, self.max_tokens = module.eval(), max_tokens
        module.decoding = decoding_overrides(module.decoding, **decoding)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", speedups: str | None = None,
                        **settings: Any) -> Translator:
        """Load `path` (`TranslationModule.load`) onto `device` (`cpu`, `gpu`/`cuda`, `auto`); `speedups`
        (`auto`/`off`) replaces the checkpoint's; `settings` are the constructor's keywords."""
        target = inference_device(device)
        module = TranslationModule.load(path, map_location=target)
        if speedups is not None:
            cpu_kernels.apply(module.model, speedups)
        return cls(module, **settings)

    def translate(self, lines: Sequence[str]) -> list[str]:
        """The best translation of each line."""
        return [hyps[0][0] for hyps in self.translate_nbest(lines)]

    def translate_nbest(self, lines: Sequence[str], nbest: int = 1, attention_dir: str | Path | None = None,
                        first_line: int = 1) -> list[Hypotheses]:
        """The `nbest` best translations of each line, with their scores (see `translate_lines`)."""
        return translate_lines(self.module, lines, None, nbest, self.max_tokens, attention_dir, first_line)

    def stream(self, lines: Iterable[str], chunk_lines: int = 1000) -> Iterator[str]:
        """The best translation of each line of `lines`, in order, `chunk_lines` lines translated at a time."""
        chunk: list[str] = []
        for line in lines:
            chunk.append(line.rstrip("\r\n"))
            if len(chunk) == chunk_lines:
                yield from self.translate(chunk)
                chunk = []
        if chunk:
            yield from self.translate(chunk)


# ---- reading the input in chunks ------------------------------------------------------------------------

def read_chunks(lines: Iterable[tuple[bytes, bool]], name: str, chunk_lines: int,
                chunk_tokens: int) -> Iterator[list[str]]:
    """(line, more input ready) pairs -> chunks of decoded lines: a chunk ends at `chunk_lines` lines, at
    `chunk_tokens` whitespace-separated words, or when no more input is ready (an interactive user waits)."""
    chunk: list[str] = []
    words = 0
    for number, (raw, more_ready) in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise DataError(f"invalid UTF-8 in {name} at line {number}") from None
        chunk.append(line)
        words += len(line.split())
        if len(chunk) >= chunk_lines or words >= chunk_tokens or not more_ready:
            yield chunk
            chunk, words = [], 0
    if chunk:
        yield chunk


def stdin_lines(fd: int) -> Iterator[tuple[bytes, bool]]:
    """The lines of a pipe or terminal as they arrive: (line without `\\n`, whether more input is ready)."""
    pending = b""
    while data := os.read(fd, 1 << 16):
        pending += data
        *complete, pending = pending.split(b"\n")
        for i, line in enumerate(complete):
            yield line, i < len(complete) - 1 or bool(select.select([fd], [], [], 0)[0])
    if pending:
        yield pending, False


def file_lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """The lines of a plain or `.gz` file (always more ready until the end)."""
    try:
        handle = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    with handle:
        try:
            for line in handle:
                yield line.rstrip(b"\n"), True
        except (OSError, EOFError) as err:
            raise DataError(f"cannot read {path}: {err}") from None


@contextmanager
def _open_output(path: str) -> Iterator[IO[str]]:
    """stdout, or a file written atomically: complete when the translation ends, absent if it fails."""
    if path == "-":
        yield sys.stdout
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        yield handle


def translate(cfg: DictConfig) -> None:
    translator = Translator.from_checkpoint(cfg.ckpt_path, cfg.accelerator, speedups=cfg.speedups,
                                            max_tokens=cfg.batch_max_tokens, beam_size=cfg.beam_size,
                                            length_penalty=cfg.length_penalty, max_input_len=cfg.max_input_len)
    beam_size = translator.module.decoding.beam_size
    if not 1 <= cfg.nbest <= beam_size:
        raise ConfigError(f"nbest={cfg.nbest} needs 1 <= nbest <= beam_size (beam_size={beam_size}; set beam_size=N)")
    if cfg.input == "-":
        lines, name = stdin_lines(sys.stdin.fileno()), "standard input"
    else:
        lines, name = file_lines(Path(cfg.input)), cfg.input
    done = 0
    with _open_output(cfg.output) as out, tqdm(unit=" lines", disable=True if cfg.output == "-" else None,
                                               file=sys.stderr) as progress:
        for chunk in read_chunks(lines, name, cfg.chunk_lines, cfg.chunk_tokens):
            results = translator.translate_nbest(chunk, cfg.nbest, cfg.attention_dir, first_line=done + 1)
            out.write(format_results(results, cfg.nbest, first_index=done))
            out.flush()
            done += len(chunk)
            progress.update(len(chunk))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="translate")
def main(cfg: DictConfig) -> Any:
    run_cli(translate, cfg)


if __name__ == "__main__":
    main()
