"""The CPU speed-up layer (`lightning_nmt.kernels.cpu`, `speedups: auto|off`): `off` is the plain models, `auto`
swaps in the kernels and trains and decodes alike; each kernel against what it replaces; the process settings."""

import copy
import logging
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.profiler import profile

from lightning_nmt.app import build_run
from lightning_nmt.cli import run_cli
from lightning_nmt.config import Speedups, TrainConfig
from lightning_nmt.data.tokenizer import EOS_ID, PAD_ID
from lightning_nmt.kernels import cpu
from lightning_nmt.kernels.cpu import Dropout, Linear, packable_dtypes, packed_linears, row_top
from lightning_nmt.module import TranslationModule
from lightning_nmt.search import search
from tests.conftest import compose_config
from tests.test_models_build import MODEL_KINDS, SMALL, random_batch, small_model

BF16 = torch.bfloat16 in packable_dtypes()
# every model the layer must leave unchanged: basic, attention with each score (and input feeding), transformer
KINDS = {
    "basic": {"type": "basic"},
    **{f"attention-{score}": {"attention": score} for score in ("dot", "general", "concat", "scaled_dot")},
    "input_feeding": MODEL_KINDS["input_feeding"],
    "transformer": {"type": "transformer"},
}


def pair(vocab: int = 20, **overrides) -> tuple[nn.Module, nn.Module]:
    """The same small model twice: `speedups=off` (as built) and `speedups=auto` (a copy, kernels swapped in)."""
    off = small_model(src_vocab=vocab, tgt_vocab=vocab, **overrides)
    return off, cpu.apply(copy.deepcopy(off), "auto")


def loss_and_gradients(model: nn.Module, batch: dict, bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training mode: summed cross-entropy of the real target tokens (as `TranslationModule.token_loss`), and
    the gradient of every parameter."""
    model.train()
    model.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        hidden, _ = model(batch["src"], batch["src_lengths"], batch["tgt_in"])
        real = batch["tgt_out"].ne(PAD_ID)
        logits = model.project(hidden[real])
    loss = F.cross_entropy(logits.float(), batch["tgt_out"][real], reduction="sum")
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("precision", ["32", pytest.param("bf16", marks=pytest.mark.skipif(
    not BF16, reason="no bf16 oneDNN matmul on this CPU"))])
@pytest.mark.parametrize("kind", list(KINDS))
def test_off_and_auto_give_the_same_loss_and_gradients(kind, precision):
    """fp32: the same loss and gradients to 1e-6 (relative). bf16 autocast, where `auto` runs the output layer on
    the 1,600 target tokens through oneDNN's packed matmul: the loss to 1e-3 and each parameter's gradient to 2%
    of its norm (bf16 keeps 8 bits of mantissa; a different summation order moves the last ones)."""
    off, auto = pair(vocab=60, **KINDS[kind])
    bf16 = precision == "bf16"
    # bf16: ~1,600 target tokens, at least Linear.PACK_ROWS
    batch = random_batch(3, size=160 if bf16 else 16, vocab=60, min_len=9, max_len=11)
    want_loss, want_grads = loss_and_gradients(off, batch, bf16)
    with profile() as prof:
        loss, grads = loss_and_gradients(auto, batch, bf16)
    assert ("mkldnn::_linear_pointwise" in {e.name for e in prof.events()}) == bf16
    assert grads.keys() == want_grads.keys()
    tolerance = 2e-2 if bf16 else 1e-6
    torch.testing.assert_close(loss, want_loss, rtol=tolerance / 20 if bf16 else tolerance, atol=0)
    for name, want in want_grads.items():
        error = (grads[name] - want).norm() / want.norm().clamp(min=1e-12)
        assert error <= tolerance, f"{name}: relative gradient error {error:.2e}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_off_and_auto_give_the_same_hypotheses(kind):
    """Greedy and beam 5, fp32, through `TranslationModule.translate`: `auto` packs the weights and searches with
    the two-level top-k (800 words: more than 2k blocks of 64), `off` runs `torch.topk`; the same
    hypotheses, scores to 1e-5."""
    model = {**SMALL, **KINDS[kind]}
    modules = {}
    for speedups in ("off", "auto"):
        torch.manual_seed(0)
        modules[speedups] = TranslationModule(model, 20, 800, optim={}, scheduler={}, decoding={},
                                              speedups=speedups).eval()
        modules[speedups]._boundary_ids = frozenset()  # no tokenizer: no sentence ends to cut long inputs at
    batch = random_batch(5, size=6, min_len=3, max_len=12)
    for beam in (1, 5):
        off = modules["off"].translate(batch["src"], batch["src_lengths"], beam_size=beam, nbest=beam)
        auto = modules["auto"].translate(batch["src"], batch["src_lengths"], beam_size=beam, nbest=beam)
        assert auto.tokens == off.tokens
        torch.testing.assert_close(auto.scores, off.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_swap_keeps_the_state_dict_and_off_leaves_plain_modules(kind):
    """`auto` turns every plain `nn.Linear` / `nn.Dropout` into the kernels' subclass, in place: the same
    parameters (shared ones still shared), the same state_dict keys, so checkpoints load either way; `off` (or
    `apply(..., "off")` after `auto`) leaves plain PyTorch modules only."""
    off, auto = pair(**KINDS[kind], tie_embeddings=True)
    kernel_types = (Linear, Dropout)
    assert not any(isinstance(m, kernel_types) for m in off.modules())
    assert {type(m) for m in auto.modules()} & {Linear, Dropout} == {Linear, Dropout}
    assert not any(type(m) in (nn.Linear, nn.Dropout) for m in auto.modules())
    assert list(auto.state_dict()) == list(off.state_dict())
    for name, tensor in off.state_dict().items():
        assert torch.equal(auto.state_dict()[name], tensor)
    output = auto.output[-1] if isinstance(auto.output, nn.Sequential) else auto.output
    assert output.weight is (auto.tgt_embed if kind == "transformer" else auto.decoder.embed).weight
    auto.load_state_dict(off.state_dict())  # strict: the same keys
    cpu.apply(auto, "off")
    assert not cpu.applied(auto) and [type(m) for m in auto.modules()] == [type(m) for m in off.modules()]


def test_the_module_stores_the_setting():
    """`speedups` is a hyperparameter (in every checkpoint, so `TranslationModule.load` builds the same); it
    decides the swap. Old checkpoints without it get `auto`."""
    for speedups, swapped in (("auto", True), ("off", False)):
        module = TranslationModule(SMALL, 20, 20, optim={}, scheduler={}, decoding={}, speedups=speedups)
        assert module.hparams.speedups == speedups and cpu.applied(module.model) == swapped
    assert cpu.applied(TranslationModule(SMALL, 20, 20, optim={}, scheduler={}, decoding={}).model)
    with pytest.raises(ValueError, match="auto, off"):
        TranslationModule(SMALL, 20, 20, optim={}, scheduler={}, decoding={}, speedups="on")
    assert OmegaConf.structured(TrainConfig).speedups == Speedups.auto


def test_the_plain_search_uses_torch_topk():
    """Without the layer nothing wraps the search: `decoding` yields no top-k (so `search` uses `torch.topk`)."""
    off, auto = pair()
    with cpu.decoding(off) as topk:
        assert topk is None and torch.is_inference_mode_enabled() is False
    with torch.inference_mode(), cpu.decoding(auto) as topk:
        assert topk is row_top and not torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
        assert all(m.packed is not None for m in auto.modules() if isinstance(m, Linear))
    assert all(m.packed is None for m in auto.modules() if isinstance(m, Linear))


def test_models_import_no_private_torch_op():
    """The model code is plain PyTorch: no `torch.ops.*` and no `torch._C` in `lightning_nmt/models/`."""
    models = Path(__file__).resolve().parents[1] / "lightning_nmt" / "models"
    for path in sorted(models.glob("*.py")):
        text = path.read_text()
        assert "torch.ops" not in text and not re.search(r"\b_C\.", text), path.name


# ---- the kernels against what they replace -------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_zeroes_a_fraction_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    kept = y.ne(0)
    assert abs(1 - kept.float().mean().item() - p) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    y.sum().backward()  # the gradient flows through the kept units only, scaled the same way
    assert torch.equal(x.grad, y.detach())
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_mask_bits_are_unbiased_in_every_lane(dtype):
    """Four mask elements come from one 64-bit draw: each of the four 16-bit lanes (and an odd-sized
    tensor's tail) keeps a fraction 1 - p, and the output keeps the input's dtype."""
    torch.manual_seed(1)
    y = Dropout(0.5)(torch.ones(1001, 403, dtype=dtype))  # 403,403 elements: not a multiple of 4
    assert y.dtype == dtype
    kept = y.ne(0).flatten().float()
    for lane in range(4):
        assert abs(kept[lane::4].mean().item() - 0.5) < 0.01
    assert not torch.equal(Dropout(0.5)(torch.ones(64)), Dropout(0.5)(torch.ones(64)))


def test_dropout_of_one_zeroes_everything():
    assert Dropout(1.0)(torch.ones(3, 4)).abs().sum() == 0


@pytest.mark.skipif(not BF16, reason="no bf16 oneDNN matmul on this CPU")
@pytest.mark.parametrize("bias", [True, False])
def test_linear_trains_bf16_through_onednn_on_many_rows_with_the_same_values_and_gradients(bias):
    """Under bf16 autocast, on at least `Linear.PACK_ROWS` rows (the whole target through the output layer),
    training runs oneDNN's packed matmul; outputs and the gradients of input, weight and bias are those of
    `nn.Linear`. Few rows (a step-by-step decoder) and fp32 stay on `F.linear`."""
    torch.manual_seed(0)
    layer, plain = Linear(24, 40, bias=bias), nn.Linear(24, 40, bias=bias)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(3, Linear.PACK_ROWS // 3 + 1, 24)  # (..., in)
    grad = torch.randn(3, Linear.PACK_ROWS // 3 + 1, 40)

    def run(module: nn.Module, inputs: torch.Tensor, bf16: bool = True) -> tuple[list[str], torch.Tensor, list]:
        inputs = inputs.clone().requires_grad_()
        with profile() as prof, torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = module(inputs)
        (out.float() * grad[:, : inputs.size(1)]).sum().backward()
        grads = [inputs.grad, *(p.grad for p in module.parameters())]
        return [e.name for e in prof.events()], out, grads

    ops, out, grads = run(layer, x)
    _, want_out, want_grads = run(plain, x)
    assert "mkldnn::_linear_pointwise" in ops and out.dtype == want_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want_out, atol=2e-2, rtol=2e-2)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    assert "mkldnn::_linear_pointwise" not in run(layer, x[:, :2])[0]
    assert "mkldnn::_linear_pointwise" not in run(layer, x, bf16=False)[0]


@pytest.mark.parametrize("precision", ["32", "bf16"])
@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_packed_linears_give_the_same_steps_and_leave_no_trace(kind, precision):
    """Inside `packed_linears` (entered by `decoding`) the linear layers run oneDNN's packed matmul: the same
    logits as the plain layers; with gradients on they take the training path (gradients flow); on leaving,
    no packed weight is kept (it would go stale when the weights change)."""
    model = cpu.apply(small_model(**MODEL_KINDS[kind]), "auto")
    batch = random_batch(8, size=3)
    tokens = torch.randint(4, 20, (3,), generator=torch.Generator().manual_seed(2))

    def step_logits():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            enc = model.encode(batch["src"], batch["src_lengths"])
            return model.decode_step(tokens, enc, model.init_state(enc))[0].float()

    with torch.no_grad():
        plain = step_logits()
        with packed_linears(model), profile() as prof:
            packed = step_logits()
    assert any(e.name == "mkldnn::_linear_pointwise" for e in prof.events())
    tolerance = 1e-5 if precision == "32" else 2e-2
    torch.testing.assert_close(packed, plain, atol=tolerance, rtol=tolerance)
    assert all(m.packed is None for m in model.modules() if isinstance(m, Linear))
    with packed_linears(model):
        step_logits().sum().backward()
    assert model.output.weight.grad is not None and model.output.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("beam_size", [1, 3])
def test_bf16_weights_are_cast_once_per_search_even_in_inference_mode(beam_size):
    """Autocast keeps its bf16 copy of each weight only outside inference mode, where Lightning evaluates:
    inside `decoding` the output layer's weight is cast once per search, not at every step (results unchanged)."""
    model = cpu.apply(small_model(tgt_vocab=37), "auto")  # output weight (37, 20): a shape no activation has
    batch = random_batch(4, size=7)
    results = []
    for mode in (torch.inference_mode, torch.no_grad):
        with mode(), torch.autocast("cpu", torch.bfloat16), profile(record_shapes=True) as prof:
            with cpu.decoding(model) as topk:
                results.append(search(model, batch["src"], batch["src_lengths"], beam_size=beam_size, topk=topk))
        weight_casts = [e for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes[:1] == [[37, 20]]]
        assert len(weight_casts) == 1
    assert results[0].tokens == results[1].tokens
    torch.testing.assert_close(results[0].scores, results[1].scores)


@pytest.mark.parametrize("width", [8000, 8001, 8063, 700, 640, 100])
def test_two_level_top_k_finds_each_rows_best(width):
    """Every row's k best values and their columns, as `topk` finds them: with the best values bunched in
    one block, spread over many, or with a row that may only end (all -inf but EOS)."""
    g = torch.Generator().manual_seed(width)
    x = torch.randn(6, width, generator=g).log_softmax(-1)
    x[1, 64:74] += 20.0  # the 10 best in one block
    x[4, -5:] += 20.0  # the 5 best in the last columns (beyond the whole blocks when width % 64 > 0)
    x[2, torch.randperm(width, generator=g)[:10]] += 20.0  # in 10 blocks
    x[3] = float("-inf")
    x[3, EOS_ID] = -1.5
    values, columns = row_top(x, 10)
    want_values, want_columns = x.topk(10, dim=1)
    torch.testing.assert_close(values, want_values)
    assert torch.equal(columns[[0, 1, 2, 4, 5]], want_columns[[0, 1, 2, 4, 5]])
    assert columns[3, 0] == EOS_ID
    assert torch.equal(x.gather(1, columns), values)


# ---- the process settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "default"), [("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8"), ("LRU_CACHE_CAPACITY", "32")])
@pytest.mark.parametrize("preset", [None, "256"])
def test_matmul_caches_are_limited_unless_set(monkeypatch, name, default, preset):
    if preset is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, preset)
    cpu.tune_process("auto", "cpu")
    assert os.environ[name] == (preset or default)


@pytest.mark.parametrize(("speedups", "accelerator"), [("off", "cpu"), ("auto", "gpu"), ("auto", "cuda")])
def test_process_settings_only_when_the_speedups_apply(monkeypatch, speedups, accelerator):
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        monkeypatch.delenv(name, raising=False)
    assert cpu.tune_process(speedups, accelerator) is False
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ and "LRU_CACHE_CAPACITY" not in os.environ


def test_process_settings_are_logged_once(monkeypatch, caplog):
    """One INFO line naming what was set, the first time only."""
    monkeypatch.setattr(cpu, "_logged", False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "64")
    with caplog.at_level(logging.INFO, logger="lightning_nmt"):
        cpu.tune_process("auto", "cpu")
        cpu.tune_process(Speedups.auto, "cpu")
    lines = [r.getMessage() for r in caplog.records if r.name == "lightning_nmt"]
    assert len(lines) == 1 and "ONEDNN_PRIMITIVE_CACHE_CAPACITY=8" in lines[0] and "LRU_CACHE_CAPACITY=64" in lines[0]
    assert "mallopt" in lines[0] or "allocator unchanged" in lines[0]


@pytest.mark.parametrize(("cfg", "want"), [
    ({"trainer": {"accelerator": "gpu"}}, ("auto", "gpu")),
    ({"trainer": {"accelerator": "cpu"}, "speedups": "off"}, ("off", "cpu")),
    ({"accelerator": "cpu"}, ("auto", "cpu")),
])
def test_entry_points_apply_the_process_settings_of_their_config(monkeypatch, cfg, want):
    """`run_cli` reads `speedups` and the accelerator (`trainer.accelerator` for lnmt-train, `accelerator` for
    lnmt-eval / lnmt-translate) before the entry point runs."""
    seen = []
    monkeypatch.setattr(cpu, "tune_process", lambda speedups, accelerator: seen.append((speedups, accelerator)))
    assert run_cli(lambda _: "ran", OmegaConf.create(cfg)) == "ran"
    assert seen == [want]


X86_CPUINFO = """processor\t: 0
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni
processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni
"""


@pytest.mark.parametrize(("cpuinfo", "native"), [
    (X86_CPUINFO, False),                                                    # Ice Lake: AVX-512 without BF16
    (X86_CPUINFO.replace("avx512_vnni", "avx512_vnni avx512_bf16 amx_bf16 amx_tile"), True),  # Sapphire Rapids
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),         # Arm Neoverse V1
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
])
def test_cpu_flags_tell_native_bf16(cpuinfo, native):
    assert bool(cpu.cpu_flags(cpuinfo) & cpu.BF16_FLAGS) is native


def test_cpu_flags_come_from_flag_lines_only():
    assert "avx512_bf16" not in cpu.cpu_flags("model name\t: avx512_bf16 in a name\n")


@pytest.mark.parametrize(("text", "native"), [(X86_CPUINFO, False), ("Features\t: fp bf16\n", True), ("", None),
                                              (None, None)])
def test_native_bf16_reads_proc_cpuinfo(monkeypatch, tmp_path, text, native):
    """True / False from the flags; None (no guess) for a file without flags or no file (not Linux)."""
    cpuinfo = tmp_path / "cpuinfo"
    if text is not None:
        cpuinfo.write_text(text)
    monkeypatch.setattr(cpu, "CPUINFO", cpuinfo)
    cpu.native_bf16.cache_clear()
    try:
        assert cpu.native_bf16() is native
    finally:
        cpu.native_bf16.cache_clear()


@pytest.mark.parametrize(("native", "precision", "on_cpu", "warned"), [
    (False, "bf16-mixed", True, True),
    (False, "bf16-true", True, True),
    (False, "32-true", True, False),
    (False, "bf16-mixed", False, False),   # a GPU run
    (True, "bf16-mixed", True, False),
    (None, "bf16-mixed", True, False),     # unknown (no /proc/cpuinfo): no guess
])
def test_emulated_bf16_is_warned_with_the_fix(monkeypatch, native, precision, on_cpu, warned):
    monkeypatch.setattr(cpu, "native_bf16", lambda: native)
    message = cpu.emulated_bf16_warning(precision, on_cpu)
    assert (message is not None) is warned
    if warned:
        assert f"trainer.precision={precision}" in message and "trainer.precision=32-true" in message


@pytest.mark.parametrize(("native", "precision", "warned"), [
    (False, "bf16-mixed", True), (True, "bf16-mixed", False), (False, "32-true", False),
])
def test_training_run_warns_of_emulated_bf16_once(monkeypatch, caplog, tmp_path, native, precision, warned):
    """`build_run` (lnmt-train) logs one WARNING naming the override when a CPU run asks for bf16 on a CPU
    without it, whatever `speedups` is; nothing otherwise."""
    monkeypatch.setattr(cpu, "native_bf16", lambda: native)
    cfg = compose_config("train", ["data=sample", "model=basic", "trainer=cpu", f"trainer.precision={precision}",
                                   "speedups=off", "logger=none"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="lightning_nmt"):
        build_run(cfg, tmp_path / "run")
    records = [r for r in caplog.records if "without native bf16" in r.getMessage()]
    assert len(records) == int(warned)
    if warned:
        assert records[0].levelno == logging.WARNING and "trainer.precision=32-true" in records[0].getMessage()
