"""`lnmt-export CKPT OUTPUT_DIR [--quantization float32|int8|int8_float32] [--force]`: a Transformer checkpoint as a
CTranslate2 model directory, served by `lightning_nmt.ct2.CTranslate2Model`.

The directory holds CTranslate2's own files (`model.bin`, `config.json`, `shared_vocabulary.json` or
`source_vocabulary.json` + `target_vocabulary.json`), the sentencepiece model(s) and their settings as
`Tokenizer.save` writes them (`joint.model` or `src.model` + `tgt.model`, `tokenizer.json`), and `lightning_nmt.json`:
the checkpoint's decoding settings, `max_input_len`, the model options and where the export came from.

The converter is written against `ctranslate2.specs` as CTranslate2's fairseq and OpenNMT-py converters are. What it
maps, and why (`lightning_nmt.models.transformer` is the reference):

- pre- or post-norm (`model.norm_first`): CTranslate2's `pre_norm`; a pre-norm stack ends with one LayerNorm
  (`encoder.norm`, `decoder_norm`), a post-norm one has none (CTranslate2 adds a final norm only with `pre_norm`).
  LayerNorm epsilon 1e-5 (PyTorch's default) is written into the config.
- positions: ours are interleaved sin/cos from position 0 (`PositionalEncoding`, not stored in the checkpoint);
  CTranslate2's built-in sinusoid differs (concatenated halves), so our table (5000 positions, as ours) is stored
  as `position_encodings` of the encoder and the decoder (one copy: CTranslate2 aliases equal variables).
- embeddings are scaled by sqrt(d_model) (`scale_embeddings`), as ours; separate, shared (`share_embeddings`: one
  matrix for both sides) and tied (`tie_embeddings`: the output layer's weight) matrices are all written as
  variables and aliased by CTranslate2 when equal; the output layer's bias is kept (ours has one even when tied).
- attention: PyTorch's fused q/k/v in-projection is CTranslate2's fused self-attention projection (same q, k, v
  order); the cross-attention's k/v rows are its fused memory projection. `alignment_layer=-1, alignment_heads=0`:
  `return_attention` gives the last decoder layer's cross-attention averaged over all heads, as ours.
- special tokens: our ids are the sentencepiece ids and the vocabulary files list the pieces by id, so ids map 1:1;
  `<s>` (BOS, id 2) starts decoding. Our sources end with `</s>` (`collate`): the client appends it
  (`CTranslate2Model` does; `lightning_nmt.json` says so in `source_suffix`), not CTranslate2's `add_source_eos`,
  which drops the EOS column from the attention it returns, while ours has one. `<pad>` and `<s>` are kept out of
  the output by `CTranslate2Model` (`suppress_sequences`), as our search does.

A recurrent checkpoint (model.type basic/attention) cannot be exported: CTranslate2 has no recurrent models.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_nmt.ct2 import FORMAT_VERSION, METADATA_FILE
from lightning_nmt.errors import CheckpointError, UserError, WriteError, is_write_error
from lightning_nmt.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

QUANTIZATIONS = ("float32", "int8", "int8_float32")
RECURRENT_TYPES = ("basic", "attention")
RECURRENT_MESSAGE = ("CTranslate2 has no recurrent models: serve this checkpoint with the PyTorch backend "
                     "(lnmt-serve CHECKPOINT.ckpt)")
LAYER_NORM_EPSILON = 1e-5  # nn.LayerNorm's default, which every norm of our Transformer uses


class ExportError(UserError):
    """A checkpoint that cannot be exported, or an output directory that cannot be written."""


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:
        raise ExportError("lnmt-export needs CTranslate2: pip install 'lightning-nmt[serve]'") from None
    return ctranslate2


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().contiguous().numpy().copy()


def _linear(spec: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    spec.weight = _array(weight)
    if bias is not None:
        spec.bias = _array(bias)


def _norm(spec: Any, norm: nn.LayerNorm) -> None:
    if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
        raise ExportError(f"unexpected normalisation layer {type(norm).__name__}: only LayerNorm with weight and bias "
                          "can be exported")
    if abs(norm.eps - LAYER_NORM_EPSILON) > 1e-12:
        raise ExportError(f"a LayerNorm has eps={norm.eps}; the export writes {LAYER_NORM_EPSILON} for all")
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _attention(spec: Any, attention: nn.MultiheadAttention, self_attention: bool) -> None:
    """nn.MultiheadAttention (fused in_proj q, k, v) -> CTranslate2's MultiHeadAttentionSpec: self-attention
    linear[0] = q|k|v fused, cross-attention linear[0] = q and linear[1] = k|v fused; the last is the out-projection."""
    if attention.in_proj_weight is None or attention.in_proj_bias is None:
        raise ExportError("attention layers with separate q/k/v projections or no bias cannot be exported")
    dim = attention.embed_dim
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if self_attention:
        _linear(spec.linear[0], weight, bias)
    else:
        _linear(spec.linear[0], weight[:dim], bias[:dim])
        _linear(spec.linear[1], weight[dim:], bias[dim:])
    _linear(spec.linear[-1], attention.out_proj.weight, attention.out_proj.bias)


def transformer_spec(model: nn.Module, src_pieces: Sequence[str], tgt_pieces: Sequence[str]) -> Any:
    """A `TransformerSeq2Seq` as a `ctranslate2.specs.TransformerSpec` (weights in float32, vocabularies registered,
    config set; not validated, optimized nor saved)."""
    _ctranslate2()
    from ctranslate2.specs import common_spec
    from ctranslate2.specs import transformer_spec as ts

    from lightning_nmt.models.transformer import TransformerSeq2Seq

    if not isinstance(model, TransformerSeq2Seq):
        raise ExportError(f"not a Transformer ({type(model).__name__}): only model.type=transformer can be exported")
    enc_layers, dec_layers = list(model.encoder.layers), list(model.decoder_layers)
    norm_first = dec_layers[0].norm_first
    if any(layer.norm_first != norm_first for layer in [*enc_layers, *dec_layers]):
        raise ExportError("the encoder and decoder layers mix pre-norm and post-norm")
    heads = dec_layers[0].self_attn.num_heads
    for layer in enc_layers:
        if layer.self_attn.num_heads != heads or layer.activation_relu_or_gelu != 1:
            raise ExportError("only ReLU encoder layers with as many heads as the decoder's can be exported")
    if not isinstance(model.output, nn.Linear):  # tied to an embedding of another size: not built by our config
        raise ExportError("the output layer is not a single linear layer (projected tied embeddings)")

    spec = ts.TransformerSpec.from_config(
        (len(enc_layers), len(dec_layers)), heads, pre_norm=norm_first, activation=common_spec.Activation.RELU,
        alignment_layer=-1, alignment_heads=0)  # attention: the last layer's, averaged over all heads (ours)
    positions = _array(model.positions.encoding)  # ours: not in the state_dict, interleaved sin/cos from 0

    encoder = spec.encoder
    encoder.embeddings[0].weight = _array(model.src_embed.weight)
    encoder.scale_embeddings = True  # x sqrt(d_model), as `TransformerSeq2Seq._embed`
    encoder.position_encodings.encodings = positions
    for layer_spec, layer in zip(encoder.layer, enc_layers, strict=True):
        _attention(layer_spec.self_attention, layer.self_attn, self_attention=True)
        _norm(layer_spec.self_attention.layer_norm, layer.norm1)
        _linear(layer_spec.ffn.linear_0, layer.linear1.weight, layer.linear1.bias)
        _linear(layer_spec.ffn.linear_1, layer.linear2.weight, layer.linear2.bias)
        _norm(layer_spec.ffn.layer_norm, layer.norm2)
    if norm_first:
        _norm(encoder.layer_norm, model.encoder.norm)

    decoder = spec.decoder
    decoder.embeddings.weight = _array(model.tgt_embed.weight)
    decoder.scale_embeddings = True
    decoder.position_encodings.encodings = positions
    for layer_spec, layer in zip(decoder.layer, dec_layers, strict=True):
        _attention(layer_spec.self_attention, layer.self_attn, self_attention=True)
        _norm(layer_spec.self_attention.layer_norm, layer.norm_self)
        _attention(layer_spec.attention, layer.cross_attn, self_attention=False)
        _norm(layer_spec.attention.layer_norm, layer.norm_cross)
        first, last = layer.ffn[0], layer.ffn[-1]
        _linear(layer_spec.ffn.linear_0, first.weight, first.bias)
        _linear(layer_spec.ffn.linear_1, last.weight, last.bias)
        _norm(layer_spec.ffn.layer_norm, layer.norm_ffn)
    if norm_first:
        _norm(decoder.layer_norm, model.decoder_norm)
    _linear(decoder.projection, model.output.weight, model.output.bias)

    spec.register_source_vocabulary(list(src_pieces))
    spec.register_target_vocabulary(list(tgt_pieces))
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = (
        src_pieces[UNK_ID], tgt_pieces[BOS_ID], tgt_pieces[EOS_ID])
    spec.config.decoder_start_token = tgt_pieces[BOS_ID]  # `<s>`: our decoder reads BOS first
    # our sources end with EOS (`collate`): appended by the client, so that the attention keeps its EOS column
    spec.config.add_source_bos = spec.config.add_source_eos = False
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    return spec


def _check_pieces(name: str, pieces: Sequence[str]) -> None:
    """Our ids are the pieces' positions in CTranslate2's vocabulary: the pieces must be unique, and the special ones
    where `lightning_nmt.tokens` says."""
    duplicates = len(pieces) - len(set(pieces))
    if duplicates:
        raise ExportError(f"the {name} vocabulary has {duplicates} duplicate piece(s): ids would not map 1:1")
    expected = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}
    wrong = {i: pieces[i] for i, piece in expected.items() if pieces[i] != piece}
    if wrong:
        raise ExportError(f"the {name} vocabulary has unexpected special pieces {wrong}; expected {expected}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(module: Any, checkpoint: dict[str, Any], ckpt: Path, quantization: str) -> dict[str, Any]:
    import ctranslate2

    hparams = checkpoint["hyper_parameters"]
    decoding = asdict(module.decoding)
    decoding["beam_stop"] = str(getattr(decoding["beam_stop"], "value", decoding["beam_stop"]))
    data = hparams.get("data") or {}
    try:
        from importlib.metadata import version

        package_version = version("lightning-nmt")
    except Exception:  # not installed (a checkout on PYTHONPATH)
        package_version = None
    return {
        "format_version": FORMAT_VERSION,
        "backend": "ctranslate2",
        "model_type": hparams["model"]["type"],
        "model": dict(hparams["model"]),
        "quantization": quantization,
        "decoding": decoding,  # the checkpoint's `decoding:` settings (beam_size, length_penalty, max_len_*...)
        "max_input_len": module.max_input_len,  # decoding.max_input_len, else the training data.max_len
        "data": dict(data),  # the training corpus: lnmt-eval's default test sets
        "src_lang": data.get("src_lang"),
        "tgt_lang": data.get("tgt_lang"),
        "lowercase": module.tokenizer.settings["lowercase"],
        "source_suffix": [module.tokenizer.src_pieces_from_ids([EOS_ID])[0]],  # append to every source
        "target_start": module.tokenizer.tgt_pieces_from_ids([BOS_ID])[0],
        "suppress": module.tokenizer.tgt_pieces_from_ids([PAD_ID, BOS_ID]),  # never in the output (our search)
        "source": {
            "checkpoint": str(ckpt.resolve()),
            "sha256": _sha256(ckpt),
            "global_step": checkpoint.get("global_step"),
            "epoch": checkpoint.get("epoch"),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "lightning_nmt": package_version,
            "ctranslate2": ctranslate2.__version__,
        },
    }


def export(ckpt: str | os.PathLike, output_dir: str | os.PathLike, quantization: str = "float32",
           force: bool = False) -> Path:
    """Write the Transformer checkpoint `ckpt` as a CTranslate2 model directory `output_dir` (see the module
    docstring); returns the directory. The directory appears complete or not at all (written next to it, then
    renamed); an existing non-empty one is replaced only with `force`. A user error is an `ExportError` or a
    `CheckpointError` (one line)."""
    _ctranslate2()
    from lightning_nmt.module import TranslationModule, read_checkpoint

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantization!r}; valid values: {', '.join(QUANTIZATIONS)}")
    ckpt, output = Path(ckpt), Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ExportError(f"{output} exists and is not empty (use --force to replace it)")
    checkpoint = read_checkpoint(ckpt)
    model_type = (checkpoint["hyper_parameters"].get("model") or {}).get("type")
    if model_type in RECURRENT_TYPES:
        raise ExportError(RECURRENT_MESSAGE)
    if model_type != "transformer":
        raise ExportError(f"cannot export model.type={model_type!r}: only Transformer checkpoints can be exported")
    try:
        module = TranslationModule.load(ckpt, map_location="cpu")
    except (KeyError, RuntimeError, TypeError, ValueError) as err:  # a state_dict that does not fit its config
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{ckpt} cannot be loaded: {first[:200]}") from None
    tokenizer = module.tokenizer
    src_pieces = tokenizer.src_pieces_from_ids(range(tokenizer.src_vocab_size))
    tgt_pieces = tokenizer.tgt_pieces_from_ids(range(tokenizer.tgt_vocab_size))
    _check_pieces("source", src_pieces)
    _check_pieces("target", tgt_pieces)
    with torch.no_grad():
        spec = transformer_spec(module.model, src_pieces, tgt_pieces)
    try:
        spec.validate()
    except ValueError as err:
        raise ExportError(f"the checkpoint does not fit CTranslate2's Transformer: {err}") from None
    spec.optimize(quantization=quantization)
    metadata = _metadata(module, checkpoint, ckpt, quantization)

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    except OSError as err:
        raise (WriteError(output, err) if is_write_error(err) else err) from None
    old: Path | None = None
    try:
        spec.save(str(tmp))
        tokenizer.save(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        if output.exists():  # empty, or replaced with --force: moved aside, removed once the new one is in place
            old = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".old"))
            os.replace(output, old / "previous")
        os.replace(tmp, output)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "previous").exists() and not output.exists():
            os.replace(old / "previous", output)  # put the previous directory back
        if is_write_error(err):
            raise WriteError(output, err) from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lnmt-export",
        description="Write a Transformer checkpoint as a CTranslate2 model directory (with its sentencepiece models "
                    "and decoding settings), for serving with lightning_nmt.ct2.")
    parser.add_argument("ckpt", type=Path, metavar="CKPT", help="a lightning-nmt Transformer checkpoint")
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR", help="the model directory to write")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="float32",
                        help="weight type: float32 (default, exact), int8 (int8 weights, int8 matmuls on the CPU) or "
                             "int8_float32 (int8 weights, float32 for what is not quantized)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT_DIR if it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        output = export(args.ckpt, args.output_dir, args.quantization, args.force)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if not is_write_error(err):
            raise
        print(f"error: {WriteError(err.filename, err)}", file=sys.stderr)
        sys.exit(2)
    print(output)


if __name__ == "__main__":
    main()
