"""TranslationModule's optimiser: fused Adam where torch has it, with the same updates as the loop version."""

import pytest
import torch

from lightning_nmt.optim import FUSED_ADAM, make_optimizer


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_is_fused_on_the_cpu_and_updates_like_the_unfused_one(name):
    if not FUSED_ADAM:
        pytest.skip("torch < 2.4 has no fused Adam on the CPU")
    cfg = {"name": name, "lr": 1e-2, "betas": (0.9, 0.98), "weight_decay": 0.01}
    torch.manual_seed(0)
    a = torch.nn.Linear(7, 5)
    b = torch.nn.Linear(7, 5)
    b.load_state_dict(a.state_dict())
    fused = make_optimizer(a.parameters(), cfg)
    reference = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(
        b.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.01, foreach=False
    )
    assert fused.defaults["fused"] is True
    for _ in range(3):
        x = torch.randn(4, 7)
        for model, opt in ((a, fused), (b, reference)):
            model(x).square().sum().backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_adam_is_not_fused_when_lightning_must_clip_mixed_precision_gradients():
    cfg = {"name": "adam", "lr": 1e-2, "betas": (0.9, 0.98), "weight_decay": 0.0}
    opt = make_optimizer(torch.nn.Linear(3, 2).parameters(), cfg, allow_fused=False)
    assert not opt.defaults["fused"]
