"""What a validation or test pass collects: the loss states summed across ranks (`EvalMetrics`), and each rank's
translations, gathered in the split's order (`EvalCollector`), scored on the whole split."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import SumMetric

from lightning_nmt import metrics
from lightning_nmt.tokens import PAD_ID

log = logging.getLogger("lightning_nmt")


@dataclass
class Translations:
    """What one evaluation pass produced, in the split's original order (the same on every rank)."""

    hypotheses: list[str]
    references: list[str]


class EvalMetrics(nn.Module):
    """The loss of one evaluation set: states summed across DDP ranks, so each sentence counts exactly once when
    the ranks hold disjoint shards. BLEU and chrF are scored on the gathered translations (`lightning_nmt.metrics`,
    one implementation for training, `lnmt-eval` and the literature's metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.nll = SumMetric()
        self.tokens = SumMetric()

    def compute(self, translations: Translations, tgt_lang: str | None, lowercase: bool) -> dict[str, float]:
        """`lowercase`: the model writes lowercase text (`data.tokenizer.lowercase`), so BLEU and chrF ignore case."""
        nll, tokens = self.nll.compute(), self.tokens.compute().clamp(min=1)
        loss = (nll / tokens).item()
        hyps, refs = translations.hypotheses, translations.references
        scores = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bleu": metrics.bleu(hyps, refs, lowercase).score,
                  "chrf": metrics.chrf(hyps, refs, lowercase).score}
        if tgt_lang:
            scores["bleu_tok_lc"] = metrics.bleu_tok_lc(hyps, refs, tgt_lang).score
        return scores

    def reset(self) -> None:
        self.nll.reset()
        self.tokens.reset()


class EvalCollector:
    """Per split, this rank's (example id, hypothesis, reference) triples; `gather` joins all ranks' in the
    split's order. Long sources are named once per split (`long_sources`)."""

    def __init__(self) -> None:
        self._pending: dict[str, list[tuple[int, str, str]]] = {}
        self._warned_long: set[tuple[str, int]] = set()

    def reset(self, split: str) -> None:
        self._pending.pop(split, None)

    def add(self, split: str, ids: list[int], hypotheses: list[str], references: list[str]) -> None:
        self._pending.setdefault(split, []).extend(zip(ids, hypotheses, references, strict=True))

    def gather(self, split: str, world_size: int) -> Translations:
        """All ranks' translations of `split`, in its order (a collective call under DDP)."""
        local = self._pending.pop(split, [])
        gathered: list[Any] = [local]
        if world_size > 1:
            gathered = [None] * world_size
            torch.distributed.all_gather_object(gathered, local)
        triples = sorted(triple for part in gathered for triple in part)
        return Translations([hyp for _, hyp, _ in triples], [ref for _, _, ref in triples])

    def within_input_limit(self, batch: dict[str, torch.Tensor], split: str,
                           limit: int | None) -> torch.Tensor | None:
        """None when every source fits `limit` pieces; else the mask of those that do (the loss is computed on them
        only: a teacher-forced pass over an unbounded pair is unbounded too), after a warning naming the others
        (once each; they are translated in segments)."""
        if limit is None or int(batch["src_lengths"].max()) <= limit:
            return None
        within = batch["src_lengths"] <= limit
        lines = [i + 1 for i in batch["ids"][~within].tolist() if (split, i) not in self._warned_long]
        if lines:
            self._warned_long.update((split, i - 1) for i in lines)
            log.warning("%s: sentence(s) %s longer than max_input_len=%d pieces: translated in segments, left "
                        "out of the loss", split, lines, limit)
        return within


def references(trainer: L.Trainer | None, split: str, ids: list[int], batch: dict[str, torch.Tensor],
               decode: Any) -> list[str]:
    """The raw references of examples `ids` from the datamodule; without one, the decoded target ids."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and hasattr(datamodule, "references"):
        refs = datamodule.references(split)
        return [refs[i] for i in ids]
    return decode(batch["tgt_out"].tolist())


def trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch whose longest rows were taken out, cut to the width of the longest left (padding removed)."""
    src_width = int(batch["src_lengths"].max())
    tgt_width = int(batch["tgt_out"].ne(PAD_ID).sum(1).max())
    return {**batch, "src": batch["src"][:, :src_width], "tgt_in": batch["tgt_in"][:, :tgt_width],
            "tgt_out": batch["tgt_out"][:, :tgt_width]}
