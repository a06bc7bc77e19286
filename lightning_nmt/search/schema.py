"""The config keys of decoding, derived from `DecodingConfig` and the registered strategies: the `decoding:` group
of `lnmt-train` (`decoding_schema`), and the flat keys of `lnmt-eval` and `lnmt-translate` (`flat_decoding_keys`),
where None keeps the checkpoint's value."""

from __future__ import annotations

from dataclasses import MISSING, fields, make_dataclass
from enum import Enum
from typing import Any, Optional, get_type_hints

from lightning_nmt.registry import option_keys
from lightning_nmt.search.base import SEARCHES, DecodingConfig

REQUEST_ONLY = ("attention",)
"""`DecodingConfig` keys that are not config keys: what a caller asks to get back."""


def strategy_names() -> type[Enum]:
    """`decoding.strategy` values: the registered strategies."""
    return Enum("SearchStrategy", {name: name for name in SEARCHES}, type=str)


def _common() -> list[tuple[str, Any, Any]]:
    """(name, type, default) of the keys every strategy reads."""
    hints = get_type_hints(DecodingConfig)
    return [(f.name, hints[f.name], f.default) for f in fields(DecodingConfig)
            if f.name != "options" and f.name not in REQUEST_ONLY and f.default is not MISSING]


def _options() -> dict[str, Any]:
    """name -> type of every key some strategy reads besides the common ones."""
    return option_keys(SEARCHES.values(), "decoding")


def decoding_schema() -> type:
    """The `decoding:` schema: `strategy`, the common keys with their defaults, then every key some strategy reads,
    each optional (None: the chosen strategy's default; a key it does not read must stay None). Values live in
    conf/decoding/<strategy>.yaml."""
    return make_dataclass("DecodingSchema", [
        ("strategy", strategy_names(), DecodingConfig().strategy), *_common(),
        *((key, Optional[kind], None) for key, kind in _options().items())])  # noqa: UP045 (OmegaConf reads Optional)


def flat_decoding_keys() -> list[tuple[str, Any, Any]]:
    """(name, type, None) of every decoding key a command line may give, `strategy` included; None: the
    checkpoint's."""
    keys = [("strategy", strategy_names(), None), *((name, kind, None) for name, kind, _ in _common()),
            *_options().items()]
    return [(name, Optional[kind], None) for name, kind, *_ in keys]  # noqa: UP045
