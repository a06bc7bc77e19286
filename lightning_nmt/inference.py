"""A trained model for inference without the training stack (no Lightning, no torchmetrics): the plain `Seq2Seq`
of a checkpoint, or an `Ensemble` of several, with its tokenizer and decoding settings, and the one function that
translates source ids with it (`translate_ids`), which the LightningModule's test step uses too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_nmt.checkpoint import module_arguments, read_checkpoint
from lightning_nmt.data.tokenizer import Tokenizer
from lightning_nmt.errors import CheckpointError
from lightning_nmt.kernels import cpu as cpu_kernels
from lightning_nmt.models import build_model
from lightning_nmt.models.base import Seq2Seq
from lightning_nmt.models.ensemble import Ensemble
from lightning_nmt.search import DecodingConfig, SearchResult, search, segments


def translate_ids(model: Seq2Seq, src: torch.Tensor, src_lengths: torch.Tensor, decoding: DecodingConfig,
                  max_input_len: int | None, boundaries: frozenset[int]) -> SearchResult:
    """Search src (B, S) with src_lengths (B,) as `decoding` says; a source longer than `max_input_len` pieces is
    translated in segments cut after the `boundaries` pieces (`lightning_nmt.search.segments`). With the CPU
    kernels on (`speedups=auto`), their packed weights and top-k are used."""

    def run(rows: torch.Tensor, lengths: torch.Tensor) -> SearchResult:
        with cpu_kernels.decoding(model) as topk:
            return search(model, rows, lengths, decoding, topk)

    return segments.bounded(run, src, src_lengths, max_input_len, boundaries)


@dataclass
class InferenceModel:
    """What translating needs: `model` (eval mode), `tokenizer`, the checkpoint's `decoding` settings and its
    training corpus config `data` (`max_input_len` falls back to its `max_len`); `names` are the checkpoints' file
    names."""

    model: Seq2Seq
    tokenizer: Tokenizer
    decoding: DecodingConfig
    data: dict[str, Any]
    model_type: str
    names: list[str]
    _boundaries: frozenset[int] | None = None

    @property
    def data_max_len(self) -> int | None:
        return self.data.get("max_len")

    @property
    def max_input_len(self) -> int | None:
        """Longest source (pieces, EOS included) translated in one piece: `decoding.max_input_len`, else the
        training `data.max_len`; None: no bound."""
        return self.decoding.max_input_len or self.data_max_len

    def boundaries(self) -> frozenset[int]:
        if self._boundaries is None:
            pieces = self.tokenizer.src_pieces_from_ids(range(self.tokenizer.src_vocab_size))
            self._boundaries = segments.boundary_ids(pieces)
        return self._boundaries

    def translate_ids(self, src: torch.Tensor, src_lengths: torch.Tensor, decoding: DecodingConfig) -> SearchResult:
        """`translate_ids` with this model; `decoding.max_input_len` None: the training data.max_len."""
        limit = decoding.max_input_len or self.data_max_len
        return translate_ids(self.model, src, src_lengths, decoding, limit, self.boundaries())

    @classmethod
    def load(cls, paths: str | Path | Sequence[str | Path], map_location: str | torch.device = "cpu",
             speedups: str | None = None) -> InferenceModel:
        """One checkpoint, or several as an `Ensemble` (their tokenizers must be the same; the decoding settings and
        data.max_len are the first's). A missing, corrupt or foreign file, or an ensemble member whose tokenizer
        differs, is a one-line `CheckpointError` naming it. `speedups` (auto/off) replaces the checkpoints'."""
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise CheckpointError("no checkpoint given")
        loaded = [_load_one(Path(path), map_location, speedups) for path in paths]
        first = loaded[0]
        for path, other in zip(paths[1:], loaded[1:], strict=True):
            differ = first.tokenizer.differences(other.tokenizer)
            if differ:
                raise CheckpointError(f"ensemble member {path} does not share the tokenizer of {paths[0]}: "
                                      f"{', '.join(differ)} differ")
        if len(loaded) == 1:
            return first
        model = Ensemble([member.model for member in loaded]).eval()
        return cls(model, first.tokenizer, first.decoding, first.data,
                   "ensemble(" + ",".join(member.model_type for member in loaded) + ")",
                   [name for member in loaded for name in member.names])


def _load_one(path: Path, map_location: str | torch.device, speedups: str | None) -> InferenceModel:
    """One checkpoint's model (its `model.*` weights, in eval mode), tokenizer and settings."""
    checkpoint = read_checkpoint(path, map_location)
    arguments = module_arguments(checkpoint)
    try:
        model = build_model(arguments["model"], arguments["src_vocab_size"], arguments["tgt_vocab_size"])
        weights = {key[len("model."):]: value for key, value in checkpoint["state_dict"].items()
                   if key.startswith("model.")}
        model.load_state_dict(weights)
        tokenizer = Tokenizer.from_state(checkpoint["tokenizer"])
        decoding = DecodingConfig.from_dict(arguments.get("decoding") or {})
    except (KeyError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} cannot be loaded as a lightning-nmt model: {first[:200]}") from None
    cpu_kernels.apply(model, speedups or arguments.get("speedups", "auto"))
    data: dict[str, Any] = arguments.get("data") or {}
    model_type = str(arguments["model"].get("type", type(model).__name__))
    return InferenceModel(model.to(map_location).eval(), tokenizer, decoding, data, model_type, [path.name])
