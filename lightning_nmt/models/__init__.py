"""Translation models: `build_model` makes one from the `model:` config group; `lightning_nmt.search` decodes.

Each model type declares what it reads (`ModelOptions`) next to its code and registers it (`MODEL_TYPES`);
`conf/model/<type>.yaml` holds its values. Every module of this package is imported here, so a new module that
registers a model type or an attention score needs no import elsewhere. See docs/extending.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import MISSING, asdict, fields
from typing import Any

from lightning_nmt.models.base import MODEL_TYPES, EncoderOutput, ModelOptions, Seq2Seq, lookup, register_model

for _module in pkgutil.iter_modules(__path__):  # each module registers its model types and attention scores
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODEL_TYPES", "EncoderOutput", "ModelOptions", "Seq2Seq", "build_model", "model_differences",
           "model_options", "model_keys", "register_model"]


def model_keys(model_type: str) -> list[str]:
    """The `model.*` keys `model_type` reads (besides `type`); ValueError for an unknown type."""
    return [f.name for f in fields(lookup(MODEL_TYPES, model_type, "model type"))]


def model_options(cfg: Mapping[str, Any] | Any) -> ModelOptions:
    """The options of `cfg["type"]` from a mapping (dict, DictConfig) or object with the `model:` fields; the
    keys other model types read are ignored."""
    get = cfg.__getitem__ if isinstance(cfg, Mapping) else lambda name: getattr(cfg, name)
    model_type = get("type")
    options = lookup(MODEL_TYPES, model_type, "model type")
    values = {}
    for option in fields(options):
        try:
            values[option.name] = get(option.name)
        except (KeyError, AttributeError):  # an option newer than the checkpoint: its default, if it has one
            if option.default is MISSING:
                raise
    return options(**values)


def build_model(cfg: Mapping[str, Any] | Any, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    """The model described by `cfg` (see `model_options`). An unknown type, attention or rnn_type, or a value
    `ModelOptions.check` refuses, is a ValueError naming the key and the valid values."""
    options = model_options(cfg)
    options.check()
    return options.build(src_vocab_size, tgt_vocab_size)


def model_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for what makes the models of two checkpoints' `hyper_parameters` differ: the
    vocabulary sizes, the model type, else the options that type reads (one a checkpoint predates at its default)."""
    diffs = [(key, a.get(key), b.get(key)) for key in ("src_vocab_size", "tgt_vocab_size") if a.get(key) != b.get(key)]
    if a["model"].get("type") != b["model"].get("type"):
        return [*diffs, ("model.type", a["model"].get("type"), b["model"].get("type"))]
    options_a, options_b = asdict(model_options(a["model"])), asdict(model_options(b["model"]))
    return diffs + [(f"model.{key}", options_a[key], options_b[key]) for key in options_a
                    if options_a[key] != options_b[key]]
