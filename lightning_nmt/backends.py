"""The models a `Translator` and `lnmt-serve` translate with, behind one interface (`Backend`): a checkpoint of any
model type (`TorchBackend`, PyTorch) or an exported CTranslate2 directory (`lightning_nmt.ct2.CTranslate2Model`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from lightning_nmt.cli import inference_device
from lightning_nmt.data.batching import collate
from lightning_nmt.data.dataset import Example
from lightning_nmt.errors import ConfigError
from lightning_nmt.kernels import cpu as cpu_kernels
from lightning_nmt.models.search import DecodingConfig
from lightning_nmt.tokens import EOS_ID


@dataclass
class Hypothesis:
    """One translation of one source line.

    `src_pieces`: the pieces the model read, `</s>` included; `tgt_pieces`: the output pieces, without `</s>`;
    `attention` (None when the model has none, or when it was not asked for): one row per output piece and one for
    `</s>`, one column per source piece: (len(tgt_pieces) + 1) x len(src_pieces). An empty (or whitespace-only)
    line: `Hypothesis("", 0.0, [], [], None)`, the model is not run."""

    tgt: str
    score: float
    src_pieces: list[str]
    tgt_pieces: list[str]
    attention: list[list[float]] | None = None


@runtime_checkable
class Backend(Protocol):
    """A model that translates: `TorchBackend` (a checkpoint, any model type) or `lightning_nmt.ct2.CTranslate2Model`
    (an `lnmt-export`ed Transformer). `Translator` and `lnmt-serve` use either.

    `translate_batch` translates the lines in one batch, from at most `parallel_calls` threads at a time;
    `count_pieces` (source pieces of a line, `</s>` included) does not need the model (`lnmt-serve` calls it from
    its event loop meanwhile).
    `decoding`: the `DecodingConfig` the model translates with (its beam size is the default). `max_input_len`:
    longest input translated in one piece (longer ones are translated in segments), None: no bound."""

    name: str
    backend: str
    model_type: str
    max_input_len: int | None
    decoding: DecodingConfig
    parallel_calls: int

    def translate_batch(self, lines: list[str], beam_size: int, nbest: int,
                        attention: bool) -> list[list[Hypothesis]]: ...

    def count_pieces(self, line: str) -> int: ...


class TorchBackend:
    """A `TranslationModule` as a `Backend`: its search (`TranslationModule.translate`), with pieces and attention
    weights per hypothesis."""

    backend = "torch"
    parallel_calls = 1  # one model, one search at a time: torch parallelises each call

    def __init__(self, module: Any, name: str, threads: int | None = None) -> None:
        self.module = module.eval()
        self.threads = threads  # torch intra-op threads of the model thread; None: torch's default
        self.tokenizer = module.tokenizer
        self.name = name
        self.model_type = str((module.hparams.get("model") or {}).get("type", type(module.model).__name__))
        self.device = str(module.device)

    @property
    def decoding(self) -> DecodingConfig:
        return self.module.decoding

    @decoding.setter
    def decoding(self, value: DecodingConfig) -> None:
        self.module.decoding = value

    @property
    def max_input_len(self) -> int | None:
        return self.module.max_input_len

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
             speedups: str | None = None) -> TorchBackend:
        """Load a checkpoint (`TranslationModule.load`) onto `device` (cpu, gpu/cuda, auto): a missing or
        unreadable file, or a GPU that is not there, is a one-line `UserError`. `threads`: torch's intra-op
        threads for the model calls (None: torch's default, one per core); `speedups` (auto/off) replaces the
        checkpoint's."""
        from lightning_nmt.module import TranslationModule

        module = TranslationModule.load(path, map_location=inference_device(device))
        if speedups is not None:
            cpu_kernels.apply(module.model, speedups)
        return cls(module, Path(path).name, threads)

    def count_pieces(self, line: str) -> int:
        return len(self.tokenizer.encode_src([line])[0]) + 1

    def translate_batch(self, lines: list[str], beam_size: int, nbest: int,
                        attention: bool) -> list[list[Hypothesis]]:
        """Translate `lines` in one batch (empty or whitespace-only lines are not run: one empty hypothesis);
        attention weights are rounded to 4 decimals."""
        results: list[list[Hypothesis]] = [[Hypothesis("", 0.0, [], [], None)] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        if not todo:
            return results
        tokenizer, module = self.tokenizer, self.module
        if self.threads and torch.get_num_threads() != self.threads:  # per thread under OpenMP: set it in this one
            torch.set_num_threads(self.threads)
        encoded = tokenizer.encode_src([lines[i] for i in todo])
        with torch.inference_mode():
            batch = collate([Example(j, ids, None) for j, ids in enumerate(encoded)])
            src, src_lengths = batch["src"].to(module.device), batch["src_lengths"]
            found = module.translate(src, src_lengths.to(module.device), beam_size=beam_size, nbest=nbest)
            scores = found.scores.float().cpu().tolist()
            for row, example in enumerate(batch["ids"].tolist()):
                src_pieces = tokenizer.src_pieces_from_ids([*encoded[example], EOS_ID])  # one per source position
                texts = tokenizer.decode_tgt(found.tokens[row])
                hyps = []
                for k, text in enumerate(texts):
                    weights = None
                    if attention and found.attention is not None:
                        weights = ((found.attention[row][k].double() * 1e4).round() / 1e4).tolist()
                    hyps.append(Hypothesis(text, scores[row][k], src_pieces,
                                           tokenizer.tgt_pieces_from_ids(found.tokens[row][k]), weights))
                results[todo[example]] = hyps
        return results


def load_backend(model: str | Path, device: str = "cpu", threads: int | None = None, speedups: str | None = None,
                 compute_type: str = "default") -> Backend:
    """A checkpoint file -> `TorchBackend` (`speedups`: auto/off replaces the checkpoint's); a directory (an
    `lnmt-export`ed model) -> `lightning_nmt.ct2.CTranslate2Model` (`compute_type`: CTranslate2's), imported only
    then. `threads`: CPU threads of the model calls (None: torch's default; for CTranslate2 one per core)."""
    path = Path(model)
    if not path.is_dir():
        return TorchBackend.load(path, device, threads, speedups)
    try:
        from lightning_nmt import ct2
    except ModuleNotFoundError as err:
        if err.name != "lightning_nmt.ct2":
            raise ConfigError(f"{model} is a directory (an exported CTranslate2 model), but serving it needs the "
                              f"'{err.name}' package: {err}") from None
        raise ConfigError(f"{model} is a directory (an exported CTranslate2 model), but this installation has no "
                          "CTranslate2 backend (lightning_nmt.ct2); give a .ckpt checkpoint instead") from None
    return ct2.CTranslate2Model(path, {"gpu": "cuda"}.get(device, device), compute_type, threads=threads or 0)
