"""An ensemble of trained models that read the same source and target vocabularies: at every step its
log-probabilities are the mean of its members' (the log of their geometric mean; the search's log-softmax then
renormalises it), and its attention weights the mean of the members' that have attention. Any strategy searches it
as one `Seq2Seq`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_nmt.models.base import DecoderState, EncoderOutput, Seq2Seq


@dataclass
class EnsembleOutput:
    """The members' encoder outputs; `mask` (B, S) is the first's (the same source for all)."""

    members: list[EncoderOutput]

    @property
    def mask(self) -> Tensor:
        return self.members[0].mask

    def index_select(self, index: Tensor) -> EnsembleOutput:
        return EnsembleOutput([enc.index_select(index) for enc in self.members])


def _mean_attention(weights: Sequence[Tensor | None]) -> Tensor | None:
    """The mean of the members' attention weights that are not None (None if none has attention)."""
    present = [w.float() for w in weights if w is not None]
    return None if not present else torch.stack(present).mean(dim=0)


class Ensemble(Seq2Seq):
    """Members' per-step log-probabilities averaged (see the module docstring). `decode` gives the averaged
    log-probabilities (B, T, V) as its features, and `project` passes them on: teacher-forced scoring works too."""

    def __init__(self, members: Sequence[Seq2Seq]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.output = nn.Identity()

    def encode(self, src: Tensor, src_lengths: Tensor) -> EnsembleOutput:  # type: ignore[override]
        return EnsembleOutput([member.encode(src, src_lengths) for member in self.members])

    def decode(self, tgt_in: Tensor, enc: EnsembleOutput,  # type: ignore[override]
               return_attention: bool) -> tuple[Tensor, Tensor | None]:
        log_probs, weights = [], []
        for member, member_enc in zip(self.members, enc.members, strict=True):
            hidden, attention = member.decode(tgt_in, member_enc, return_attention)
            log_probs.append(member.project(hidden).float().log_softmax(dim=-1))
            weights.append(attention)
        return torch.stack(log_probs).mean(dim=0), _mean_attention(weights) if return_attention else None

    def init_state(self, enc: EnsembleOutput) -> list[DecoderState]:  # type: ignore[override]
        return [member.init_state(member_enc) for member, member_enc in zip(self.members, enc.members, strict=True)]

    def decode_step(self, tokens: Tensor, enc: EnsembleOutput,  # type: ignore[override]
                    state: list[DecoderState]) -> tuple[Tensor, list[DecoderState], Tensor | None]:
        log_probs, states, weights = [], [], []
        for member, member_enc, member_state in zip(self.members, enc.members, state, strict=True):
            logits, new_state, attention = member.decode_step(tokens, member_enc, member_state)
            log_probs.append(logits.float().log_softmax(dim=-1))
            states.append(new_state)
            weights.append(attention)
        return torch.stack(log_probs).mean(dim=0), states, _mean_attention(weights)

    def reorder(self, state: list[DecoderState], index: Tensor) -> list[DecoderState]:
        return [member.reorder(s, index) for member, s in zip(self.members, state, strict=True)]
