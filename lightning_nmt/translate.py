"""`lnmt-translate ckpt_path=PATH|[A.ckpt,B.ckpt] input=FILE|- output=FILE|- [beam_size=N] [nbest=N] [strategy=sampling
top_k=N seed=N ...] [attention_dir=DIR]`, and `Translator`, the same as a Python API. Imports no training code: the
model is the plain `Seq2Seq` of the checkpoint (`lightning_nmt.inference`), or an exported CTranslate2 model.

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
from dataclasses import make_dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from lightning_nmt.atomic import atomic_path
from lightning_nmt.backends import Backend, Hypothesis, TorchBackend, load_backend
from lightning_nmt.cli import decoding_overrides, run_cli
from lightning_nmt.data.errors import DataError
from lightning_nmt.errors import ConfigError
from lightning_nmt.kernels.cpu import Speedups
from lightning_nmt.search.schema import flat_decoding_keys

if TYPE_CHECKING:
    from lightning_nmt.module import TranslationModule

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("lightning_nmt")


TranslateConfig = make_dataclass("TranslateConfig", [
    ("ckpt_path", Any, "???"),  # a checkpoint, a list of checkpoints (an ensemble), or an exported directory
    ("input", str, "-"),
    ("output", str, "-"),
    *flat_decoding_keys(),  # beam_size=, nbest=, strategy=, top_k=, seed=, ...: None keeps the checkpoint's
    ("attention_dir", Optional[str], None),  # noqa: UP045
    ("batch_max_tokens", int, 8192),
    ("chunk_lines", int, 1000),  # the input is read and translated this many lines at a time ...
    ("chunk_tokens", int, 50000),  # ... or this many words, whichever comes first (or when the input pauses)
    ("accelerator", str, "cpu"),
    ("speedups", Speedups, Speedups.auto),  # auto: the CPU kernels with accelerator=cpu; off: plain PyTorch
])
"""`lnmt-translate`'s keys (conf/translate.yaml)."""
ConfigStore.instance().store(name="translate_schema", node=TranslateConfig)

Hypotheses = list[tuple[str, float]]
"""The n best translations of one line, best first: (translation, score)."""


def translate_lines(module: TranslationModule, lines: Sequence[str], beam_size: int | None = None, nbest: int = 1,
                    max_tokens: int = 8192, attention_dir: str | Path | None = None,
                    first_line: int = 1) -> list[Hypotheses]:
    """Translate raw sentences with a module (see `Translator.translate_nbest`): [line][nbest] (translation, score)."""
    translator = Translator(TorchBackend(module.inference_model()), max_tokens, beam_size=beam_size)
    return translator.translate_nbest(lines, nbest, attention_dir, first_line)


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
        translator = Translator.from_checkpoint(["a.ckpt", "b.ckpt"])                       # an ensemble
        translator = Translator.from_ctranslate2("exported/", beam_size=5)                  # lnmt-export's output
        translator.translate(["A man is riding a bike."])          # -> ["Ein Mann fährt Fahrrad."]
        translator.translate_nbest(lines, nbest=3)                 # -> [[(translation, score), ...], ...]
        translator.hypotheses(lines, attention=True)               # -> [[Hypothesis(tgt, score, pieces, weights)]]
        translator.hypotheses(lines, strategy="sampling", top_p=0.9, seed=1, nbest=4)      # any decoding key
        for line in translator.stream(open("big.txt")): ...        # constant memory, input order
    """

    def __init__(self, backend: Backend, max_tokens: int = 8192, **decoding: Any) -> None:
        """`max_tokens`: padded source pieces per batch; `decoding`: flat decoding keys over the model's own settings
        (e.g. `beam_size=5`, `strategy="sampling"`; None: keep), checked here: a value the backend cannot run is a
        one-line `ConfigError`."""
        self.backend, self.max_tokens = backend, max_tokens
        self.decoding = decoding_overrides(backend.decoding, **decoding)
        backend.check(self.decoding)

    @classmethod
    def from_checkpoint(cls, path: str | Path | Sequence[str | Path], device: str = "cpu",
                        speedups: str | None = None, **settings: Any) -> Translator:
        """Load `path` (several: an ensemble; `lightning_nmt.inference.InferenceModel.load`) onto `device` (`cpu`,
        `gpu`/`cuda`, `auto`); `speedups` (`auto`/`off`) replaces the checkpoint's; `settings` are the constructor's
        keywords."""
        return cls(TorchBackend.load(path, device, speedups=speedups), **settings)

    @classmethod
    def from_ctranslate2(cls, path: str | Path, device: str = "cpu", threads: int = 0, compute_type: str = "default",
                         **settings: Any) -> Translator:
        """Load a directory written by `lnmt-export` into CTranslate2 (`pip install -e '.[serve]'`); `threads`: CPU
        threads (0: one per core; see `CTranslate2Model`); `settings` are the constructor's keywords (a `seed` is
        CTranslate2's, set at load)."""
        return cls(load_backend(path, device, threads, compute_type=compute_type, seed=settings.get("seed")),
                   **settings)

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], device: str = "cpu", speedups: str | None = None,
             **settings: Any) -> Translator:
        """Checkpoint files (`from_checkpoint`) or an exported directory (`from_ctranslate2`)."""
        return cls(load_backend(path, device, speedups=speedups, seed=settings.get("seed")), **settings)

    def hypotheses(self, lines: Sequence[str], nbest: int | None = None, attention: bool = False,
                   first_line: int = 1, **decoding: Any) -> list[list[Hypothesis]]:
        """The `nbest` best translations of each line, batched by length, with this translator's decoding settings
        and the flat keys `decoding` over them. Empty (or whitespace-only) lines give an empty translation without
        running the model; a line longer than `max_input_len` pieces is translated in segments, with a warning naming
        its line number (`first_line` is the number of `lines[0]`)."""
        settings = decoding_overrides(self.decoding, nbest=nbest, attention=attention, **decoding)
        self.backend.check(settings)
        results: list[list[Hypothesis]] = [[Hypothesis("", 0.0, [], [], None)] for _ in lines]
        pieces = {i: self.backend.count_pieces(line) for i, line in enumerate(lines) if line.strip()}
        _warn_long(pieces, first_line, settings.max_input_len or self.backend.max_input_len)
        for batch in _batches(pieces, self.max_tokens):
            found = self.backend.translate_batch([lines[i] for i in batch], settings)
            for i, hyps in zip(batch, found, strict=True):
                results[i] = hyps
        return results

    def translate(self, lines: Sequence[str]) -> list[str]:
        """The best translation of each line."""
        return [hyps[0][0] for hyps in self.translate_nbest(lines)]

    def translate_nbest(self, lines: Sequence[str], nbest: int | None = None, attention_dir: str | Path | None = None,
                        first_line: int = 1, **decoding: Any) -> list[Hypotheses]:
        """The `nbest` best translations of each line with their scores (see `hypotheses`). With `attention_dir`,
        one heatmap per translated line is written there (`<line number>.png`)."""
        found = self.hypotheses(lines, nbest, attention_dir is not None, first_line, **decoding)
        if attention_dir is not None:
            from lightning_nmt.plotting import plot_attention  # matplotlib: only when heatmaps are asked for

            for i, hyps in enumerate(found):
                best = hyps[0]
                if best.attention is not None:
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


def model_paths(ckpt_path: Any) -> str | list[str]:
    """`ckpt_path` of a command line: one path, or a list of them (an ensemble: `ckpt_path=[a.ckpt,b.ckpt]`)."""
    if isinstance(ckpt_path, ListConfig):
        ckpt_path = OmegaConf.to_container(ckpt_path)
    if isinstance(ckpt_path, (list, tuple)):
        if not ckpt_path:
            raise ConfigError("ckpt_path=[] names no checkpoint")
        return [str(path) for path in ckpt_path] if len(ckpt_path) > 1 else str(ckpt_path[0])
    return str(ckpt_path)


def decoding_keys(cfg: DictConfig) -> dict[str, Any]:
    """The flat decoding keys a command line set (None: the checkpoint's), as plain values."""
    values = {name: cfg.get(name) for name, *_ in flat_decoding_keys()}
    return {name: getattr(value, "value", value) for name, value in values.items() if value is not None}


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
    decoding = decoding_keys(cfg)
    translator = Translator.load(model_paths(cfg.ckpt_path), cfg.accelerator, speedups=cfg.speedups,
                                 max_tokens=cfg.batch_max_tokens, **decoding)
    nbest = translator.decoding.nbest
    if cfg.input == "-":
        lines, name = stdin_lines(sys.stdin.fileno()), "standard input"
    else:
        lines, name = file_lines(Path(cfg.input)), cfg.input
    done = 0
    with _open_output(cfg.output) as out, tqdm(unit=" lines", disable=True if cfg.output == "-" else None,
                                               file=sys.stderr) as progress:
        for chunk in read_chunks(lines, name, cfg.chunk_lines, cfg.chunk_tokens):
            results = translator.translate_nbest(chunk, nbest, cfg.attention_dir, first_line=done + 1)
            out.write(format_results(results, nbest, first_index=done))
            out.flush()
            done += len(chunk)
            progress.update(len(chunk))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="translate")
def main(cfg: DictConfig) -> Any:
    run_cli(translate, cfg)


if __name__ == "__main__":
    main()
