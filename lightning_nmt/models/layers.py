"""The recurrent building blocks of `lightning_nmt.models.rnn`: the GRU/LSTM registry (`RNNS`, `build_rnn`), an
LSTM that runs on every CPU under bf16 autocast, and word dropout."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lightning_nmt.models.base import cpu_autocast_dtype, lookup


class LSTM(nn.LSTM):
    """`nn.LSTM` that runs in fp32 under CPU bf16 autocast where oneDNN has no bf16 LSTM (CPUs without AVX-512,
    where `nn.LSTM` raises "could not create a primitive descriptor"); elsewhere exactly `nn.LSTM`. fp32 is what
    a GRU, and an LSTM over a packed sequence, compute under CPU autocast anyway (autocast casts only oneDNN's
    LSTM to bf16). The first failing call tells, for the whole process."""

    fp32_under_cpu_autocast: ClassVar[bool] = False

    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None):  # type: ignore[override]
        device = input.data.device if isinstance(input, PackedSequence) else input.device
        if not (device.type == "cpu" and cpu_autocast_dtype() == torch.bfloat16):
            return super().forward(input, hx)
        if not LSTM.fp32_under_cpu_autocast:
            try:
                return super().forward(input, hx)
            except RuntimeError as err:
                if "could not create a primitive descriptor" not in str(err):
                    raise
                LSTM.fp32_under_cpu_autocast = True
        hx = None if hx is None else (hx[0].float(), hx[1].float())
        with torch.autocast("cpu", enabled=False):
            return super().forward(input.float(), hx)


RNNS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": LSTM}
RNNType = Enum("RNNType", {name: name for name in RNNS}, type=str)
"""`model.rnn_type` values: the names in `RNNS`."""


def build_rnn(
    rnn_type: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    bidirectional: bool = False,
) -> nn.RNNBase:
    """A batch-first GRU or LSTM with dropout between layers; ValueError for another `rnn_type`."""
    return lookup(RNNS, rnn_type, "rnn_type")(
        input_size,
        hidden_size,
        num_layers,
        batch_first=True,
        dropout=dropout if num_layers > 1 else 0.0,
        bidirectional=bidirectional,
    )


class WordDropout(nn.Module):
    """Drops whole words in training (Gal & Ghahramani, 2016; Sennrich & Zhang, 2019): each position's
    embedding is zeroed with probability p and the others scaled by 1 / (1 - p). emb (B, T, E) -> (B, T, E)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, emb: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return emb
        keep = emb.new_empty(*emb.shape[:-1], 1).bernoulli_(1.0 - self.p)  # (B, T, 1)
        return emb * keep / (1.0 - self.p)
