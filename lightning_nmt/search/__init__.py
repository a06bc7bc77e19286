"""Decoding: the strategies that turn a model into translations (greedy, beam, sampling, ...), behind one
function, `search`, and one object, `DecodingConfig`, which travels whole from the `decoding:` config, the command
lines and a server request down to the backend.

Each strategy declares its keys (`SearchOptions`) next to its code and registers them (`register_search`);
`conf/decoding/<name>.yaml` holds its values. Every module of this package is imported here, so a new module that
registers a strategy needs no import elsewhere. See docs/extending.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import torch
from torch import Tensor

from lightning_nmt.models.base import Seq2Seq
from lightning_nmt.search.base import (
    SEARCHES,
    DecodingConfig,
    SearchOptions,
    SearchResult,
    TopK,
    length_penalty,
    max_lengths,
    min_lengths,
    register_search,
    row_topk,
)

for _module in pkgutil.iter_modules(__path__):  # each module registers its strategies
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SEARCHES", "DecodingConfig", "SearchOptions", "SearchResult", "TopK", "length_penalty", "max_lengths",
           "min_lengths", "register_search", "row_topk", "search"]


@torch.no_grad()
def search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, decoding: DecodingConfig | None = None,
           topk: TopK | None = None, **overrides: Any) -> SearchResult:
    """Translate src (B, S) with src_lengths (B,) as `decoding` says (`DecodingConfig()` by default; keyword
    `overrides` are flat keys over it, e.g. `beam_size=1`, `strategy="sampling"`), with the model in eval mode.

    Returns the `decoding.nbest` best hypotheses of each sentence (see `lightning_nmt.search.base` for the rules
    every strategy follows); `topk` (None: `torch.topk`) is the per-row top-k of the strategies that use one. A
    value no search can use is a ValueError naming the key."""
    decoding = decoding or DecodingConfig()
    if overrides:
        decoding = DecodingConfig.from_dict(overrides, decoding)
    decoding.check()
    return decoding.options.run(model, src, src_lengths, decoding, topk or row_topk)

