"""docs/extending.md's worked examples, run as they are written there: a cosine score function and a stub
model type, built, trained a step and decoded through the same code paths as the shipped ones."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from lightning_nmt.models import MODEL_TYPES, build_model, model_keys, search
from lightning_nmt.models.attention import ATTENTIONS
from tests.test_models_build import SMALL, make_batch

DOC = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
BLOCKS = re.findall(r"```(python|yaml)\n(.*?)```", DOC, flags=re.S)


@pytest.fixture
def registries(monkeypatch):
    """Run the doc's code with the registries restored afterwards."""
    monkeypatch.setattr("lightning_nmt.models.attention.ATTENTIONS", dict(ATTENTIONS))
    yield
    MODEL_TYPES.pop("bag_of_words", None)


def run_block(index: int) -> dict:
    namespace: dict = {}
    exec(compile([code for kind, code in BLOCKS if kind == "python"][index], "docs/extending.md", "exec"), namespace)
    return namespace


def train_step_and_decode(model: torch.nn.Module) -> None:
    batch = make_batch([[4, 5, 6], [7, 8]], [[9, 10], [11, 12, 13]])
    hidden, _ = model(batch["src"], batch["src_lengths"], batch["tgt_in"])
    loss = torch.nn.functional.cross_entropy(model.project(hidden).flatten(0, 1), batch["tgt_out"].flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    for beam_size in (1, 3):
        result = search(model.eval(), batch["src"], batch["src_lengths"], beam_size=beam_size)
        assert len(result.tokens) == 2 and all(len(hyps) == 1 for hyps in result.tokens)


def test_cosine_score_from_the_docs_builds_trains_and_decodes(registries):
    from lightning_nmt.models import attention

    namespace = run_block(0)
    assert attention.ATTENTIONS["cosine"] is namespace["CosineAttention"]
    model = build_model({**SMALL, "attention": "cosine"}, 20, 20)
    assert isinstance(model.decoder.attention, namespace["CosineAttention"])
    train_step_and_decode(model)


def test_model_type_from_the_docs_builds_trains_and_decodes(registries):
    namespace = run_block(1)
    values = yaml.safe_load(next(code for kind, code in BLOCKS if kind == "yaml"))
    assert MODEL_TYPES["bag_of_words"] is namespace["BagOfWordsOptions"]
    assert sorted(model_keys("bag_of_words")) == sorted(k for k in values if k != "type")
    train_step_and_decode(build_model(values, 20, 20))
