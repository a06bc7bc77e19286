"""docs/interfaces.md matches the code: every `lightning_nmt.<...>(params)` it writes is the object's signature
(names and defaults), and the token ids and field lists it names are the code's."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

from lightning_nmt import tokens
from lightning_nmt.models.base import EncoderOutput
from lightning_nmt.record import RunRecord
from lightning_nmt.search import SearchResult

DOC = (Path(__file__).resolve().parents[1] / "docs" / "interfaces.md").read_text()
SIGNATURES = re.findall(r"`(lightning_nmt\.[\w.]+)\(([^`]*)\)`", DOC.replace("\n  ", " "))


def resolve(dotted: str) -> object:
    """The object `dotted` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


def written(signature: inspect.Signature) -> str:
    """Parameters as the doc writes them: names, `*args`, `**kwargs`, `name=default`."""
    out = []
    for p in signature.parameters.values():
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        out.append(prefix + p.name + ("" if p.default is p.empty else f"={p.default!r}"))
    return ", ".join(out)


def test_the_doc_names_signatures() -> None:
    assert len(SIGNATURES) >= 10


@pytest.mark.parametrize(("dotted", "params"), SIGNATURES, ids=[d for d, _ in SIGNATURES])
def test_documented_signature_is_the_codes(dotted: str, params: str) -> None:
    target = resolve(dotted)
    assert params == written(inspect.signature(target)), dotted


def test_token_ids_and_fields_are_the_codes() -> None:
    for name in ("PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID"):
        assert f"`{name}={getattr(tokens, name)}`" in DOC
    for cls in (EncoderOutput, SearchResult, RunRecord):
        names = ", ".join(f"`{f.name}`" for f in dataclasses.fields(cls))
        assert f"fields {names}" in DOC.replace("\n  ", " ").replace("\n", " "), cls.__name__
