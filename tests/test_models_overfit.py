"""Every model learns a small batch by heart, and greedy search then reproduces its targets."""

import pytest
import torch
import torch.nn.functional as F

from lightning_nmt.data.tokenizer import PAD_ID
from lightning_nmt.search import search
from tests.test_models_build import MODEL_KINDS, random_batch, small_model

SIZES = {"embedding_dim": 32, "encoder_hidden": 32, "decoder_hidden": 64, "d_model": 32, "ffn_dim": 64}


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_overfits_a_small_batch(kind):
    model = small_model(**SIZES, **MODEL_KINDS[kind]).train()
    batch = random_batch(8, size=8, vocab=20)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        hidden, _ = model(batch["src"], batch["src_lengths"], batch["tgt_in"])
        loss = F.cross_entropy(model.project(hidden).transpose(1, 2), batch["tgt_out"], ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.02
    result = search(model.eval(), batch["src"], batch["src_lengths"], beam_size=1)
    targets = [[t for t in row if t != PAD_ID] for row in batch["tgt_in"][:, 1:].tolist()]
    assert [hyps[0] for hyps in result.tokens] == targets
