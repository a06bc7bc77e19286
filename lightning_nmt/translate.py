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
from lightning_nmt.backends import Backend, Hypothesis, TorchBackend, load_backend
from lightning_nmt.cli import decoding_overrides, run_cli
from lightning_nmt.config import CONF_DIR, register_configs
from lightning_nmt.data.errors import DataError
from lightning_nmt.errors import ConfigError
from lightning_nmt.module import TranslationModule
from lightning_nmt.plotting import plot_attention

register_configs()
log = logging.getLogger("lightning_nmt")

Hypotheses = list[tuple[str, float]]
"""The n best translations of one line, best first: (translation, score)."""


def translate_lines(module: TranslationModule, lines: Sequence[str], beam_size: int | None = None, nbest: int = 1,
                    max_tokens: int = 8192, attention_dir: str | Path | None = None,
                    first_line: int = 1) -> list[Hypotheses]:
    """Translate raw sentences with a module (see `Translator.translate_nbest`): [line][nbest] (translation, score)."""
    return Translator(TorchBackend(module, "module"), max_tokens).translate_nbest(lines, nbest, attention_dir,
                                                                                  first_line, beam_size)


def _batches(pieces: dict[int, int], max_tokens: int) -> Iterator[list[int]]:
    """Length-sorted batches of the lines of `pieces` (line index -> source pieces), at most `max_tokens` padded
    source pieces each (one line at least)."""
    batch: list[int] = []
    for i in sorted(pieces, key=pieces.__getitem__):
        if batch and (len(batch) + 1) * pieces[i] > max_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _warn_long(pieces: dict[int, int], first_line: int, limit: int | None) -> None:
    long = [(first_line + i, n) for i, n in pieces.items() if limit and n > limit]
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
    """A trained model as a translator, on either backend (`lightning_nmt.backends`):

        translator = Translator.from_checkpoint("run/checkpoints/last.ckpt", beam_size=5)   # PyTorch
        translator = Translator.from_ctranslate2("exported/", beam_size=5)                  # lnmt-export's output
        translator.translate(["A man is riding a bike."])          # -> ["Ein Mann fährt Fahrrad."]
        translator.translate_nbest(lines, nbest=3)                 # -> [[(translation, score), ...], ...]
        translator.hypotheses(lines, attention=True)               # -> [[Hypothesis(tgt, score, pieces, weights)]]
        for line in translator.stream(open("big.txt")): ...        # constant memory, input order
    """

    def __init__(self, backend: Backend, max_tokens: int = 8192, **decoding: Any) -> None:
        """`max_tokens`: padded source pieces per batch; `decoding`: `DecodingConfig` fields replacing the model's
        (e.g. `beam_size=5`), None: keep."""
        self.backend, self.max_tokens = backend, max_tokens
        backend.decoding = decoding_overrides(backend.decoding, **decoding)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", speedups: str | None = None,
                        **settings: Any) -> Translator:
        """Load `path` (`TranslationModule.load`) onto `device` (`cpu`, `gpu`/`cuda`, `auto`); `speedups`
        (`auto`/`off`) replaces the checkpoint's; `settings` are the constructor's keywords."""
        return cls(TorchBackend.load(path, device, speedups=speedups), **settings)

    @classmethod
    def from_ctranslate2(cls, path: str | Path, device: str = "cpu", threads: int = 0, compute_type: str = "default",
                         **settings: Any) -> Translator:
        """Load a directory written by `lnmt-export` into CTranslate2 (`pip install 'lightning-nmt[serve]'`);
        `threads`: CPU threads (0: one per core; see `CTranslate2Model`); `settings` are the constructor's keywords."""
        return cls(load_backend(path, device, threads, compute_type=compute_type), **settings)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", speedups: str | None = None, **settings: Any) -> Translator:
        """A checkpoint file (`from_checkpoint`) or an exported directory (`from_ctranslate2`)."""
        return cls(load_backend(path, device, speedups=speedups), **settings)

    @property
    def module(self) -> TranslationModule:
        """The PyTorch module (`from_checkpoint` only)."""
        return self.backend.module

    def hypotheses(self, lines: Sequence[str], nbest: int = 1, attention: bool = False, first_line: int = 1,
                   beam_size: int | None = None) -> list[list[Hypothesis]]:
        """The `nbest` best translations of each line, batched by length. Empty (or whitespace-only) lines give an
        empty translation without running the model; a line longer than `max_input_len` pieces is translated in
        segments, with a warning naming its line number (`first_line` is the number of `lines[0]`)."""
        beam_size = beam_size or self.backend.decoding.beam_size
        results: list[list[Hypothesis]] = [[Hypothesis("", 0.0, [], [], None)] for _ in lines]
        pieces = {i: self.backend.count_pieces(line) for i, line in enumerate(lines) if line.strip()}
        _warn_long(pieces, first_line, self.backend.max_input_len)
        for batch in _batches(pieces, self.max_tokens):
            found = self.backend.translate_batch([lines[i] for i in batch], beam_size, nbest, attention)
            for i, hyps in zip(batch, found, strict=True):
                results[i] = hyps
        return results

    def translate(self, lines: Sequence[str]) -> list[str]:
        """The best translation of each line."""
        return [hyps[0][0] for hyps in self.translate_nbest(lines)]

    def translate_nbest(self, lines: Sequence[str], nbest: int = 1, attention_dir: str | Path | None = None,
                        first_line: int = 1, beam_size: int | None = None) -> list[Hypotheses]:
        """The `nbest` best translations of each line with their scores (see `hypotheses`). With `attention_dir`,
        one heatmap per translated line is written there (`<line number>.png`)."""
        found = self.hypotheses(lines, nbest, attention_dir is not None, first_line, beam_size)
        for i, hyps in enumerate(found):
            best = hyps[0]
            if attention_dir is not None and best.attention is not None:
                plot_attention(torch.tensor(best.attention), best.src_pieces, [*best.tgt_pieces, "</s>"],
                               Path(attention_dir) / f"{first_line + i:05d}.png", title=best.tgt[:80])
        return [[(hyp.tgt, hyp.score) for hyp in hyps] for hyps in found]

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
    translator = Translator.load(cfg.ckpt_path, cfg.accelerator, speedups=cfg.speedups,
                                 max_tokens=cfg.batch_max_tokens, beam_size=cfg.beam_size,
                                 length_penalty=cfg.length_penalty, max_input_len=cfg.max_input_len)
    beam_size = translator.backend.decoding.beam_size
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
