"""Every model type x `rnn_type` x precision a CPU run can be configured with trains and decodes; on a CPU whose
oneDNN has no bf16 (no AVX-512, emulated with ONEDNN_MAX_CPU_ISA=AVX2) an LSTM in bf16 runs in fp32 instead of
failing."""

from __future__ import annotations

import os
import subprocess
import sys
import typing

import lightning as L
import pytest
import torch
from lightning.fabric.connector import _PRECISION_INPUT_STR
from torch.profiler import profile

from lightning_nmt.app import build_run
from lightning_nmt.models import MODEL_TYPES, model_keys
from lightning_nmt.models.layers import RNNS
from lightning_nmt.search import search
from tests.conftest import ROOT
from tests.test_faults import config
from tests.test_models_build import MODEL_KINDS, random_batch, small_model


def cpu_precisions() -> list[str]:
    """The precisions Lightning accepts for a CPU run on this machine (it refuses 16-mixed on a CPU, and
    transformer-engine without its package)."""
    accepted = []
    for precision in typing.get_args(_PRECISION_INPUT_STR):
        try:
            L.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
        except Exception:  # noqa: BLE001 (any refusal: MisconfigurationException, ValueError, ImportError)
            continue
        accepted.append(precision)
    return accepted


SMALL_TRANSFORMER = {"d_model": 32, "ffn_dim": 64, "nhead": 2, "transformer_layers": 1}


def model_variants() -> list[list[str]]:
    """`model=<type>` for every registered type, crossed with every `rnn_type` for the types that read it."""
    variants = []
    for kind in MODEL_TYPES:
        keys = model_keys(kind)
        small = [f"model.{key}={value}" for key, value in SMALL_TRANSFORMER.items() if key in keys]
        rnn_types = list(RNNS) if "rnn_type" in keys else [None]
        variants += [[f"model={kind}", *small, *([f"model.rnn_type={r}"] if r else [])] for r in rnn_types]
    return variants


def variant_id(variant: list[str]) -> str:
    return "-".join(o.split("=")[1] for o in variant if o.startswith(("model=", "model.rnn_type=")))


PRECISIONS = cpu_precisions()


def test_the_matrix_covers_fp32_and_bf16():
    assert {"32-true", "bf16-mixed"} <= set(PRECISIONS)
    assert len(model_variants()) >= 5  # basic and attention x {gru, lstm}, transformer


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", model_variants(), ids=variant_id)
def test_two_training_steps_and_a_greedy_decode(tmp_path, cache, variant, precision):
    cfg = config(tmp_path, cache, *variant, f"trainer.precision={precision}", "trainer.max_steps=2",
                 "trainer.limit_val_batches=0", "test_after_training=false")
    run = build_run(cfg, tmp_path / "run")
    run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.trainer.global_step == 2
    batch = next(iter(run.datamodule.val_dataloader()))
    model = run.module.model.eval()
    with torch.no_grad(), run.trainer.precision_plugin.forward_context():
        result = search(model, batch["src"], batch["src_lengths"], run.module.decoding)
    assert len(result.tokens) == batch["src"].size(0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


LSTM_BF16 = """
import torch
from lightning_nmt.models.layers import LSTM
print("onednn bf16:", torch.ops.mkldnn._is_mkldnn_bf16_supported())
torch.manual_seed(0)
lstm, x = LSTM(8, 16, batch_first=True), torch.randn(3, 5, 8)
h0 = torch.zeros(1, 3, 16, dtype=torch.bfloat16)
want = lstm(x, (h0.float(), h0.float()))[0]
with torch.autocast("cpu", dtype=torch.bfloat16):
    got = lstm(x, (h0, h0))[0]
    print("ours:", got.dtype, torch.equal(got, want))
    try:
        torch.nn.LSTM.forward(lstm, x, (h0, h0))
        print("nn.LSTM: ran")
    except RuntimeError as err:
        print("nn.LSTM:", str(err).splitlines()[0])
encoder = LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)  # as RNNEncoder runs it
packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 5, 5]), batch_first=True)  # oneDNN's path
want = encoder(packed)[0].data
with torch.autocast("cpu", dtype=torch.bfloat16):
    got = encoder(packed)[0].data
print("ours, packed:", got.dtype, torch.equal(got, want))
"""


def test_lstm_in_bf16_runs_in_fp32_where_onednn_has_no_bf16():
    """oneDNN limited to AVX2 (a CPU without AVX-512): `nn.LSTM` under bf16 autocast raises; ours computes what it
    computes in fp32."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", LSTM_BF16], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["onednn bf16: False", "ours: torch.float32 True"]
    assert lines[2].startswith("nn.LSTM: could not create a primitive descriptor for the LSTM"), lines[2]
    assert lines[3] == "ours, packed: torch.float32 True"


FUSED = "aten::_transformer_encoder_layer_fwd"


@pytest.mark.parametrize("kind", ["transformer", "transformer_post_norm"])
def test_transformer_encoder_under_cpu_autocast_runs_layer_by_layer_in_eval(kind):
    """torch's fused encoder kernel ignores CPU autocast (it fails on torch 2.5, skips the casts on 2.13): in eval
    under CPU autocast the encoder runs its layers' plain path, with autocast's bf16 matmuls; without autocast, and
    for `nn.TransformerEncoder` called directly, torch's own choice stands."""
    model = small_model(**MODEL_KINDS[kind])
    batch = random_batch(3, size=4)
    mask = torch.arange(batch["src"].size(1))[None] >= batch["src_lengths"][:, None]

    def encoder_ops(fn) -> set[str]:
        with torch.no_grad(), profile() as prof:
            fn()
        return {e.name for e in prof.events()}

    with torch.autocast("cpu", torch.bfloat16):
        ops = encoder_ops(lambda: model.encode(batch["src"], batch["src_lengths"]))
        direct = encoder_ops(lambda: model.encoder(model.src_embed(batch["src"]), src_key_padding_mask=mask))
    assert FUSED not in ops and "aten::linear" in ops
    assert FUSED in direct  # the fused kernel is what torch picks by itself: the test discriminates
    assert torch.backends.mha.get_fastpath_enabled()  # the switch is restored
    assert FUSED in encoder_ops(lambda: model.encode(batch["src"], batch["src_lengths"]))  # fp32: unchanged
