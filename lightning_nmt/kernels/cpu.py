"""CPU speed-ups: an opt-in layer over the plain-PyTorch models, switched by `speedups: auto|off`.

`auto` (the default) turns it on for CPU runs (`trainer.accelerator=cpu`, or `accelerator=cpu` for `lnmt-eval`
and `lnmt-translate`); on any other device the kernels step aside. `off` runs the models exactly as
`lightning_nmt/models/` writes them. The model code knows nothing of this layer: after `build_model`,
`apply` swaps every `nn.Linear` for `Linear` and every `nn.Dropout` for `Dropout` (subclasses with the same
parameters, so the state_dict keys, and thus checkpoints, are the same either way), and `decoding` is entered
around a search. The module stores the setting in its hyperparameters; the entry points' value wins.

What each kernel replaces, and why (the figures, measured against what they replace: benchmarks/README.md,
"The CPU speed-up layer"):

- `Linear`, training: under bf16 autocast, on at least `Linear.PACK_ROWS` rows (the whole target of a batch
  through the output layer), the weight is packed for oneDNN at each call (about the cost of multiplying ~50
  rows) and multiplied with oneDNN's packed matmul, faster than `F.linear`; the backward pass is two plain
  matmuls. Fewer rows (step-by-step decoders) and fp32 keep `F.linear`: through oneDNN, ideep's per-shape cache
  would keep ~10 MB per batch shape.
- `Linear`, decoding (`packed_linears`, entered by `decoding`): every weight is read at every step, so each is
  packed once per search instead of being reordered at every call.
- `decoding` also runs the search outside inference mode (gradients still off): autocast keeps its bf16 copy
  of each weight for the whole search there, while in inference mode (Lightning's evaluation loops,
  `translate_lines`) it casts every weight again at every step.
- `row_top`, the per-row top-k of beam search, in two levels (64-column blocks). Equal scores may come in another
  order than `torch.topk`'s.
- `Dropout`: a cheaper mask, 16 random bits per element drawn as 64-bit integers (one generator call per four
  elements), so the rate is p rounded to 1/65,536.
- `tune_process`, once per process: glibc keeps freed large blocks in the heap instead of returning blocks over
  32 MB to the OS and page-faulting them in again at every step (a training step allocates the same large
  activations every time). And oneDNN's primitive cache and PyTorch's ideep cache above it, each up to 1,024
  entries (one per matmul shape, with their buffers; token batches bring ever new shapes), are limited to 8
  (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`) and 32 (`LRU_CACHE_CAPACITY`), which bounds peak memory under bf16-mixed
  (8 for ideep would slow bf16 decoding). Values the user set win; it must run before the first bf16 matmul.

Not switched by `speedups`: `emulated_bf16_warning`, which `lnmt-train` logs when a CPU run asks for bf16 on a
CPU without native bf16 (benchmarks/README.md, "Precision on a CPU without native bf16").
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nmt.models.base import cpu_autocast_dtype
from lightning_nmt.search.base import TopK

log = logging.getLogger("lightning_nmt")

class Speedups(str, Enum):
    """The `speedups` setting of every command: `auto` turns these kernels on for CPU runs, `off` keeps the plain
    models."""

    auto = "auto"
    off = "off"


SETTINGS = tuple(value.value for value in Speedups)
"""The values of `speedups`."""


def setting(speedups: str | Enum) -> str:
    """`speedups` as a plain string (an Enum counts by its value); ValueError for an unknown value."""
    value = speedups.value if isinstance(speedups, Enum) else speedups
    if value not in SETTINGS:
        raise ValueError(f"unknown speedups {value!r}; valid values: {', '.join(SETTINGS)}")
    return value


def wanted(speedups: str | Enum, accelerator: str) -> bool:
    """Whether the speed-ups apply to a run on `accelerator`: `auto` on the CPU (`cpu`, or `auto` on a machine
    with no GPU), never with `off`."""
    if setting(speedups) == "off":
        return False
    if accelerator == "auto":
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return accelerator == "cpu"


# ---- module swap -------------------------------------------------------------------------------------------
def apply(model: nn.Module, speedups: str | Enum) -> nn.Module:
    """With `auto`, every plain `nn.Linear` of `model` becomes a `Linear` and every `nn.Dropout` a `Dropout`;
    with `off`, back. In place (the class of each module changes; its parameters, their sharing and the
    state_dict keys stay), so it may be applied again to switch. Returns `model`."""
    on = setting(speedups) == "auto"
    swaps = {nn.Linear: Linear, nn.Dropout: Dropout} if on else {Linear: nn.Linear, Dropout: nn.Dropout}
    for module in model.modules():
        if type(module) in swaps:  # exact types: nn.MultiheadAttention's out_proj is another subclass
            module.__class__ = swaps[type(module)]
    return model


def applied(model: nn.Module) -> bool:
    """Whether `apply` turned the speed-ups on for `model`."""
    return any(type(module) in (Linear, Dropout) for module in model.modules())


class Linear(nn.Linear):
    """`nn.Linear` that multiplies by its weight in oneDNN's packed layout on the CPU: in bf16 training on at
    least `PACK_ROWS` rows (packed at each call), and inside `packed_linears` with gradients off (`packed`: the
    weight packed once, and the bias, in the compute dtype). Elsewhere, and on other devices, `nn.Linear`."""

    packed: tuple[Tensor, Tensor | None] | None = None
    PACK_ROWS = 1024

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None and not torch.is_grad_enabled():
            weight, bias = self.packed
            return torch.ops.mkldnn._linear_pointwise(x.to(weight.dtype), weight, bias, "none", [], "")
        if x.device.type == "cpu" and x.numel() >= self.PACK_ROWS * self.in_features:
            dtype = _compute_dtype(self.weight, cpu_autocast_dtype())
            if dtype == torch.bfloat16 and dtype in packable_dtypes():
                bias = None if self.bias is None else self.bias.to(dtype)
                return _PackedLinear.apply(x.to(dtype), self.weight.to(dtype), bias)
        return super().forward(x)


class _PackedLinear(torch.autograd.Function):
    """y = x @ weight.T + bias with the weight packed for oneDNN in the forward pass; x (..., in)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_2d = grad.reshape(-1, grad.size(-1))  # (N, out)
        grad_x = grad @ weight if needs_x else None
        grad_weight = grad_2d.t() @ x.reshape(-1, x.size(-1)) if needs_weight else None
        return grad_x, grad_weight, grad_2d.sum(0) if needs_bias else None


def _compute_dtype(weight: Tensor, autocast: torch.dtype | None) -> torch.dtype:
    """The dtype a CPU matmul with `weight` runs in: `autocast`'s for fp32 weights when it is on, else the
    weight's."""
    return autocast if autocast is not None and weight.dtype == torch.float32 else weight.dtype


@functools.cache
def packable_dtypes() -> frozenset[torch.dtype]:
    """The dtypes oneDNN runs packed matmuls in on this CPU: none without oneDNN, bf16 only with CPU support.
    Asked once per process (`Linear` asks at every training call)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return frozenset()
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return frozenset({torch.float32, torch.bfloat16} if bf16 else {torch.float32})


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Inside, every `Linear` of `model` on the CPU multiplies by its weight packed once for oneDNN (fp32 or
    bf16, the dtype autocast runs it in), instead of the weight being reordered at every call. No-op where
    oneDNN has no kernel for the dtype. The weights must not change inside."""
    linears = [m for m in model.modules() if isinstance(m, Linear) and m.weight.device.type == "cpu"]
    dtypes, autocast = packable_dtypes(), cpu_autocast_dtype()
    try:
        with torch.no_grad():
            for m in linears:
                dtype = _compute_dtype(m.weight, autocast)
                if dtype in dtypes:
                    bias = None if m.bias is None else m.bias.to(dtype)
                    m.packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.to(dtype), None), bias
        yield
    finally:
        for m in linears:
            m.packed = None


class Dropout(nn.Dropout):
    """`nn.Dropout` with a cheaper mask on the CPU: 16 random bits per element, drawn as 64-bit integers (one
    generator call per 4 elements), so the dropout rate is p rounded to 1/65,536. Other devices: `nn.Dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return super().forward(x)
        if self.p >= 1.0:
            return x * 0.0
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= round(-32768 + self.p * 65536)
        return x * keep * (1.0 / (1.0 - self.p))


# ---- search ------------------------------------------------------------------------------------------------
def row_top(x: Tensor, k: int, block: int = 64) -> tuple[Tensor, Tensor]:
    """x.topk(k, dim=1) for x (R, V), in two levels: the k blocks of `block` columns with the largest maxima
    hold every row's k largest values (an element outside them is beaten by those k maxima), so only they and
    the last V % block columns are searched. Equal values may come in another order than topk's."""
    rows, width = x.shape
    whole = width // block * block
    if whole // block <= k:
        return x.topk(k, dim=1)
    blocks = x[:, :whole].view(rows, -1, block)
    best = blocks.amax(dim=2).topk(k, dim=1).indices  # (R, k) blocks
    picked = blocks.gather(1, best.unsqueeze(2).expand(-1, -1, block)).view(rows, k * block)
    values, at = torch.cat([picked, x[:, whole:]], dim=1).topk(k, dim=1)
    columns = best.gather(1, (at // block).clamp(max=k - 1)) * block + at % block
    return values, torch.where(at < k * block, columns, at - k * block + whole)


@contextmanager
def decoding(model: nn.Module) -> Iterator[TopK | None]:
    """Around a search of `model` (`lightning_nmt.search.search`): yields the top-k function to pass it
    as `topk`. When `apply` turned the speed-ups on and the model is on the CPU: outside inference mode with
    gradients off, every `Linear` packed once (`packed_linears`), and `row_top`; else nothing changes (None:
    `torch.topk`)."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or not applied(model):
        yield None
        return
    with torch.inference_mode(False), torch.no_grad(), packed_linears(model):
        yield row_top


# ---- hardware ----------------------------------------------------------------------------------------------
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""CPU flags of native bf16 arithmetic in /proc/cpuinfo: x86 AVX-512 BF16 and AMX (`flags`), Arm (`Features`)."""
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of every processor in the text of /proc/cpuinfo (x86 `flags`, Arm `Features` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.cache
def native_bf16() -> bool | None:
    """Whether this CPU computes in bf16 natively (`BF16_FLAGS`); None where /proc/cpuinfo is missing (not
    Linux) or lists no flags. Without it, oneDNN still runs bf16 matmuls (`_is_mkldnn_bf16_supported` is true
    on any AVX-512 CPU), but through conversions to fp32."""
    try:
        flags = cpu_flags(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return bool(flags & BF16_FLAGS) if flags else None


def emulated_bf16_warning(precision: str, on_cpu: bool) -> str | None:
    """The warning for training in bf16 on a CPU without native bf16 (a step slower than in fp32 there,
    benchmarks/README.md "Precision on a CPU without native bf16"), else None. Given whatever `speedups` is."""
    if not (on_cpu and precision.startswith("bf16") and native_bf16() is False):
        return None
    return (f"trainer.precision={precision} on a CPU without native bf16 (/proc/cpuinfo lists none of "
            f"{', '.join(sorted(BF16_FLAGS))}): bf16 matmuls are emulated and training runs slower than in fp32; "
            "add trainer.precision=32-true")


# ---- process -----------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_CACHES = (("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8"), ("LRU_CACHE_CAPACITY", "32"))
_logged = False


def tune_process(speedups: str | Enum, accelerator: str) -> bool:
    """When the speed-ups apply (`wanted`): limit oneDNN's and ideep's caches (environment variables the user
    set win) and let glibc keep freed large blocks in the heap (Linux). Logs what it set, once per process.
    Returns whether the allocator setting applied."""
    global _logged
    if not wanted(speedups, accelerator):
        return False
    for name, capacity in _CACHES:
        os.environ.setdefault(name, capacity)
    allocator = _keep_freed_blocks()
    if not _logged:
        _logged = True
        caches = ", ".join(f"{name}={os.environ[name]}" for name, _ in _CACHES)
        malloc = ("glibc mallopt M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2 GiB" if allocator
                  else "allocator unchanged (not glibc)")
        log.info("speedups=auto (CPU): %s; %s", caches, malloc)
    return allocator


def _keep_freed_blocks() -> bool:
    """glibc: blocks up to 1 GiB from the heap (not mmap), and the heap not trimmed below 2 GiB of free space."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False
