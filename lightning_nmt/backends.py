"""The models a `Translator` and `lnmt-serve` translate with, behind one interface (`Backend`, in
`lightning_nmt.backend_api`): one checkpoint or an ensemble of several, of any model type (`TorchBackend`, plain
PyTorch, no training stack), or an exported CTranslate2 directory (`lightning_nmt.ct2.CTranslate2Model`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_nmt.backend_api import Backend, Hypothesis, rounded
from lightning_nmt.cli import decoding_overrides, inference_device
from lightning_nmt.data.batching import collate
from lightning_nmt.data.dataset import Example
from lightning_nmt.errors import ConfigError
from lightning_nmt.inference import InferenceModel
from lightning_nmt.search import DecodingConfig
from lightning_nmt.tokens import EOS_ID

__all__ = ["Backend", "Hypothesis", "TorchBackend", "load_backend"]


class TorchBackend:
    """An `InferenceModel` (one checkpoint, or an ensemble) as a `Backend`: `lightning_nmt.search`, with pieces and
    attention weights per hypothesis. An ensemble's attention is the mean of its members' (see
    `lightning_nmt.models.ensemble`)."""

    backend = "torch"
    parallel_calls = 1  # one model, one search at a time: torch parallelises each call
    per_request_seed = True  # each sampled sentence has its own generator (`lightning_nmt.search.sampling`)

    def __init__(self, model: InferenceModel, threads: int | None = None) -> None:
        self.model = model
        self.threads = threads  # torch intra-op threads of the model thread; None: torch's default
        self.tokenizer = model.tokenizer
        self.decoding = model.decoding
        self.name = "+".join(model.names)
        self.model_type = model.model_type
        self.device = str(next(model.model.parameters()).device)

    @property
    def max_input_len(self) -> int | None:
        return self.model.max_input_len

    @property
    def training_data(self) -> dict:
        """The `data:` config the (first) checkpoint was trained with."""
        return self.model.data

    @classmethod
    def load(cls, paths: str | Path | Sequence[str | Path], device: str = "cpu", threads: int | None = None,
             speedups: str | None = None) -> TorchBackend:
        """Load a checkpoint, or several as an ensemble (`InferenceModel.load`), onto `device` (cpu, gpu/cuda,
        auto): a missing or unreadable file, or a GPU that is not there, is a one-line `UserError`. `threads`: torch's
        intra-op threads for the model calls (None: torch's default, one per core); `speedups` (auto/off) replaces the
        checkpoint's."""
        return cls(InferenceModel.load(paths, inference_device(device), speedups), threads)

    def check(self, decoding: DecodingConfig) -> None:
        try:
            decoding.check()
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def count_pieces(self, line: str) -> int:
        return len(self.tokenizer.encode_src([line])[0]) + 1

    def translate_batch(self, lines: Sequence[str], decoding: DecodingConfig | None = None,
                        **overrides: Any) -> list[list[Hypothesis]]:
        """Translate `lines` in one batch as `decoding` says (None: the model's settings; flat keys `overrides` over
        it); empty or whitespace-only lines are not run: one empty hypothesis."""
        decoding = decoding or self.decoding
        if overrides:
            decoding = decoding_overrides(decoding, **overrides)
        self.check(decoding)
        results: list[list[Hypothesis]] = [[Hypothesis("", 0.0, [], [], None)] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        if not todo:
            return results
        tokenizer = self.tokenizer
        if self.threads and torch.get_num_threads() != self.threads:  # per thread under OpenMP: set it in this one
            torch.set_num_threads(self.threads)
        encoded = tokenizer.encode_src([lines[i] for i in todo])
        with torch.inference_mode():
            batch = collate([Example(j, ids, None) for j, ids in enumerate(encoded)])
            src, src_lengths = batch["src"].to(self.device), batch["src_lengths"].to(self.device)
            found = self.model.translate_ids(src, src_lengths, decoding)
            scores = found.scores.float().cpu().tolist()
            for row, example in enumerate(batch["ids"].tolist()):
                src_pieces = tokenizer.src_pieces_from_ids([*encoded[example], EOS_ID])  # one per source position
                texts = tokenizer.decode_tgt(found.tokens[row])
                hyps = []
                for k, text in enumerate(texts):
                    weights = None
                    if decoding.attention and found.attention is not None:
                        weights = rounded(found.attention[row][k])
                    hyps.append(Hypothesis(text, scores[row][k], src_pieces,
                                           tokenizer.tgt_pieces_from_ids(found.tokens[row][k]), weights))
                results[todo[example]] = hyps
        return results


def load_backend(model: str | Path | Sequence[str | Path], device: str = "cpu", threads: int | None = None,
                 speedups: str | None = None, compute_type: str = "default", seed: int | None = None) -> Backend:
    """Checkpoint files (several: an ensemble) -> `TorchBackend` (`speedups`: auto/off replaces the checkpoint's); a
    directory (an `lnmt-export`ed model) -> `lightning_nmt.ct2.CTranslate2Model` (`compute_type`: CTranslate2's;
    `seed`: its random numbers, seeded once at load), imported only then. An exported directory in an ensemble is a
    one-line `ConfigError`. `threads`: CPU threads of the model calls (None: torch's default; for CTranslate2 one per
    core)."""
    paths = [Path(model)] if isinstance(model, (str, Path)) else [Path(m) for m in model]
    directories = [str(path) for path in paths if path.is_dir()]
    if directories and len(paths) > 1:
        raise ConfigError(f"{directories[0]} is an exported CTranslate2 directory: an ensemble takes checkpoints "
                          "(.ckpt) only (CTranslate2 has no ensembles)")
    if not directories:
        return TorchBackend.load(paths, device, threads, speedups)
    try:
        from lightning_nmt import ct2
    except ModuleNotFoundError as err:
        if err.name != "lightning_nmt.ct2":
            raise ConfigError(f"{model} is a directory (an exported CTranslate2 model), but serving it needs the "
                              f"'{err.name}' package: {err}") from None
        raise ConfigError(f"{model} is a directory (an exported CTranslate2 model), but this installation has no "
                          "CTranslate2 backend (lightning_nmt.ct2); give a .ckpt checkpoint instead") from None
    return ct2.CTranslate2Model(paths[0], {"gpu": "cuda"}.get(device, device), compute_type, threads=threads or 0,
                                seed=seed)
