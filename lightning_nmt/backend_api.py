"""What every backend gives and takes, apart from any backend: a `Hypothesis`, the `Backend` protocol, the rounding
of attention weights. `lightning_nmt.backends` (PyTorch) and `lightning_nmt.ct2` (CTranslate2) both implement it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from lightning_nmt.search import DecodingConfig

ATTENTION_DECIMALS = 4
"""Attention weights come back rounded to this many decimals, on every backend."""


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


def rounded(weights: Tensor) -> list[list[float]]:
    """Attention weights (T, S) as lists, rounded to `ATTENTION_DECIMALS` decimals."""
    return weights.double().round(decimals=ATTENTION_DECIMALS).tolist()


@runtime_checkable
class Backend(Protocol):
    """A model that translates: `lightning_nmt.backends.TorchBackend` (checkpoints, any model type, ensembles) or
    `lightning_nmt.ct2.CTranslate2Model` (an `lnmt-export`ed Transformer). `Translator` and `lnmt-serve` use either.

    `translate_batch(lines, decoding)` translates the lines in one batch as the one `DecodingConfig` says (strategy,
    beam size, nbest, attention, ...), from at most `parallel_calls` threads at a time; `check(decoding)` raises a
    `ConfigError` naming the option for settings this backend cannot run, before anything runs; `count_pieces`
    (source pieces of a line, `</s>` included) does not need the model (`lnmt-serve` calls it from its event loop).
    `decoding`: the model's own settings (the defaults); `max_input_len`: longest input translated in one piece
    (longer ones are translated in segments), None: no bound. `per_request_seed`: whether a seed given with one
    call fixes that call's samples whatever else runs (else a seed is the backend's, fixed when it was loaded)."""

    name: str
    backend: str
    model_type: str
    max_input_len: int | None
    decoding: DecodingConfig
    parallel_calls: int
    per_request_seed: bool

    def translate_batch(self, lines: list[str], decoding: DecodingConfig) -> list[list[Hypothesis]]: ...

    def check(self, decoding: DecodingConfig) -> None: ...

    def count_pieces(self, line: str) -> int: ...
