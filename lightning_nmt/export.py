"""`lnmt-export CKPT OUTPUT_DIR [--quantization float32|int8|int8_float32] [--eval-json EVAL_JSON] [--force]`: a
Transformer checkpoint as a CTranslate2 model directory, served by `lightning_nmt.ct2.CTranslate2Model`.

The directory holds CTranslate2's own files (`model.bin`, `config.json`, `shared_vocabulary.json` or
`source_vocabulary.json` + `target_vocabulary.json`), the sentencepiece model(s) and their settings as
`Tokenizer.save` writes them (`joint.model` or `src.model` + `tgt.model`, `tokenizer.json`), `lightning_nmt.json`:
the checkpoint's decoding settings, `max_input_len`, the model options and where the export came from, and
`README.md`: a model card in the Hugging Face layout (`model_card`): YAML front matter (languages, library, tags,
dataset, `model-index` results when there are scores), then the model, its training data, its scores with their
sacreBLEU signatures, its decoding defaults and how to use it. The scores are recorded ones, never computed here:
those of an `lnmt-eval` output given with `--eval-json`, else the test scores of the training run when the
checkpoint lies in `<run>/checkpoints/` and `<run>/metrics.json` says the run tested this checkpoint; else the card
says that no scores were recorded and how to get them.

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
import math
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_nmt import record
from lightning_nmt.atomic import atomic_write_text
from lightning_nmt.ct2 import FORMAT_VERSION, METADATA_FILE
from lightning_nmt.errors import CheckpointError, UserError, WriteError, is_write_error
from lightning_nmt.record import RunRecord
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
        raise ExportError("lnmt-export needs CTranslate2: pip install -e '.[serve]'") from None
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
    decoding = {key: getattr(value, "value", value) for key, value in module.decoding.to_dict().items()
                if key != "attention"}  # flat: the strategy and its keys, enums as their values
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


# ---- the model card (README.md) -----------------------------------------------------------------------------------
CARD_FILE = "README.md"
LIBRARY_NAME = "lightning-nmt"
TRAINING_DATA_KEYS = ("train", "val", "test", "extra_tests", "hf_name", "hf_config", "sample_sizes", "sample_seed",
                      "max_len")
"""The checkpoint's `data:` settings the card lists (besides corpus, languages and tokenizer): what was read."""


@dataclass
class Scores:
    """What the card says about scores. `origin`: where they were recorded (Markdown), None when there are none;
    `sets`: per test set `bleu`, `signature`, and where recorded `chrf`, `chrf_signature`, `bleu_tok_lc`,
    `signature_tok_lc`, `sentences`, `beam_size`, `length_penalty`; `notes`: what the reader must know about them."""

    origin: str | None
    sets: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_eval_json(path: str | os.PathLike) -> dict[str, Any]:
    """An `lnmt-eval` output (`{"ckpt_path": ..., "results": {test set: {"bleu", "signature", "chrf", ...}}}`),
    checked; anything else is a one-line `ExportError`."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"--eval-json {path}: " + ("a directory, not an lnmt-eval output file" if path.is_dir()
                                                     else "file not found"))

    def malformed(reason: str) -> ExportError:
        return ExportError(f"{path} is not an lnmt-eval output (eval.json): {reason}")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ExportError(f"{path} cannot be read: {err.strerror or err}") from None
    except ValueError as err:  # invalid JSON or UTF-8
        raise malformed(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(data, dict):
        raise malformed(f"a JSON {type(data).__name__}, not an object")
    if not isinstance(data.get("ckpt_path"), str) or not data["ckpt_path"]:
        raise malformed('no "ckpt_path" (the model it scored)')
    results = data.get("results")
    if not isinstance(results, dict) or not results:
        raise malformed('no "results" (an object of test sets)')
    for name, result in results.items():
        if not isinstance(result, dict):
            raise malformed(f"results[{name!r}] is not an object")
        if not _number(result.get("bleu")):
            raise malformed(f"results[{name!r}].bleu is not a number: {result.get('bleu')!r}")
        if not isinstance(result.get("signature"), str) or not result["signature"].strip():
            raise malformed(f"results[{name!r}] has no sacreBLEU signature")
        for key in ("chrf", "bleu_tok_lc"):
            if result.get(key) is not None and not _number(result[key]):
                raise malformed(f"results[{name!r}].{key} is not a number: {result[key]!r}")
    return data


def read_run_record(ckpt: Path) -> tuple[Path | None, RunRecord | None]:
    """The training run of a checkpoint in `<run>/checkpoints/` and its record (`<run>/metrics.json`, `record`);
    (None, None) for a checkpoint elsewhere, (run, None) for a run without a record (interrupted, running)."""
    path = Path(os.path.abspath(ckpt))
    if path.parent.name != "checkpoints":
        return None, None
    run_dir = path.parent.parent
    try:
        return run_dir, record.read(run_dir)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ExportError(f"{record.path(run_dir)} cannot be read ({type(err).__name__}: {err}); fix or move it, "
                          "or give the scores with --eval-json") from None


def sacrebleu_signatures(scoring: dict[str, Any]) -> tuple[str | None, str | None]:
    """The BLEU and chrF signatures of a run record's `scoring` (`lightning_nmt.metrics.scoring`: case, BLEU
    tokenisation, chrF word order, sacreBLEU version; one reference, as `lightning_nmt.metrics` scores); (None, None)
    for a record without one (written before schema version 2)."""
    version = scoring.get("sacrebleu")
    if not version:
        return None, None
    import sacrebleu

    lowercase = bool(scoring.get("lowercase", False))
    try:
        metrics = (sacrebleu.metrics.BLEU(lowercase=lowercase, tokenize=str(scoring.get("bleu_tokenize", "13a"))),
                   sacrebleu.metrics.CHRF(lowercase=lowercase, word_order=int(scoring.get("chrf_word_order", 0))))
    except (ValueError, TypeError, KeyError, AttributeError):  # settings this sacreBLEU does not know
        return None, None
    signatures = []
    for metric in metrics:
        metric.corpus_score(["a"], [["a"]])  # a signature needs the number of references: one, as ours
        signature = metric.get_signature()
        signature.update("version", str(version))  # the version that scored the run
        signatures.append(str(signature))
    return signatures[0], signatures[1]


def record_scores(rec: RunRecord, run_dir: Path, ckpt: Path) -> Scores:
    """The test scores of a run record (`test`, `test_<set>`), when the run tested this checkpoint (the averaged
    one when it averaged, else its best)."""
    where = f"`{record.path(run_dir)}`"
    sets = {("test" if key == "test" else key.removeprefix("test_")): value for key, value in rec.results.items()
            if (key == "test" or key.startswith("test_")) and isinstance(value, dict) and _number(value.get("bleu"))}
    if not rec.finished:
        return Scores(None, {}, [f"The training run ({where}) did not finish (status: {rec.status}"
                                 + (f", {rec.error}" if rec.error else "") + ")."])
    if not sets:
        return Scores(None, {}, [f"The training run ({where}) recorded no test scores."])
    tested = rec.results.get("averaged_checkpoint") or rec.results.get("best_checkpoint")
    notes = []
    if tested and Path(tested).name != ckpt.name:
        return Scores(None, {}, [f"The training run tested `{Path(tested).name}`, not this checkpoint "
                                 f"(`{ckpt.name}`): its scores ({where}) are not this model's."])
    if not tested:
        notes.append("The run record does not say which checkpoint it tested.")
    bleu_signature, chrf_signature = sacrebleu_signatures(rec.scoring)
    if bleu_signature is None:
        notes.append("The run record has no `scoring` section (written by an older version): the signatures "
                     "are unknown; `lnmt-eval` scores with them.")
    out = {name: {"bleu": value["bleu"], "signature": bleu_signature,
                  "chrf": value.get("chrf") if _number(value.get("chrf")) else None, "chrf_signature": chrf_signature,
                  "bleu_tok_lc": value.get("bleu_tok_lc") if _number(value.get("bleu_tok_lc")) else None}
           for name, value in sets.items()}
    return Scores(f"the test scores of its training run ({where}), decoded with the decoding defaults below",
                  out, notes)


def eval_scores(data: dict[str, Any], path: Path, ckpt: Path, sha256: str) -> Scores:
    """The scores of an `lnmt-eval` output (`read_eval_json`); an `ExportError` when it scored another model (a
    checkpoint or an export of one whose sha256 is not this checkpoint's)."""
    scored, notes = Path(data["ckpt_path"]), []
    if scored.is_file():
        if scored.resolve() != ckpt.resolve() and _sha256(scored) != sha256:
            raise ExportError(f"{path} scores {scored}, not {ckpt} (their sha256 differ)")
    elif scored.is_dir() and (scored / METADATA_FILE).is_file():
        try:
            meta = json.loads((scored / METADATA_FILE).read_text(encoding="utf-8"))
            source = meta.get("source") or {}
        except (OSError, ValueError, AttributeError):
            meta, source = {}, {}
        if source.get("sha256") and source["sha256"] != sha256:
            raise ExportError(f"{path} scores {scored}, an export of another checkpoint ({source.get('checkpoint')})")
        if meta.get("quantization"):
            notes.append(f"`lnmt-eval` scored an export of this checkpoint with {meta['quantization']} weights.")
    else:
        notes.append(f"`{scored}`, the model `lnmt-eval` scored, is not there any more: that it is this "
                     "checkpoint was not checked.")
    sets = {}
    for name, result in data["results"].items():
        sets[name] = {"bleu": result["bleu"], "signature": result["signature"],
                      **{key: result.get(key) for key in ("chrf", "bleu_tok_lc", "signature_tok_lc", "sentences",
                                                          "beam_size", "length_penalty")}}
    return Scores(f"`lnmt-eval` of `{scored}` (`{path}`)", sets, notes)


def dataset_name(data: dict[str, Any]) -> str | None:
    """The training corpus's name: a Hugging Face dataset's (its directory's name for a local one), a text corpus's
    train file, else the corpus (multi30k, sample)."""
    corpus = data.get("corpus")
    if corpus == "hf" and data.get("hf_name"):
        name = str(data["hf_name"])
        return Path(name).name if name.startswith(("/", ".", "~")) or os.path.isdir(name) else name
    if corpus in ("files", "tsv") and data.get("train"):
        return Path(str(data["train"])).name
    return str(corpus) if corpus else None


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return repr(value)  # 1.0 as the config writes it
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, sort_keys=False) + "`"
    return str(value).replace("|", "\\|")


def _score(value: Any) -> str:
    return f"{value:.2f}" if _number(value) else "-"


def _table(rows: Sequence[tuple[str, Any]], header: tuple[str, str] = ("setting", "value")) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {key} | {_fmt(value)} |" for key, value in rows)]


def _front_matter(metadata: dict[str, Any], name: str, scores: Scores) -> dict[str, Any]:
    data = metadata.get("data") or {}
    src, tgt = metadata.get("src_lang"), metadata.get("tgt_lang")
    front: dict[str, Any] = {}
    languages = list(dict.fromkeys(lang for lang in (src, tgt) if lang))
    if languages:
        front["language"] = languages
    front.update({"license": "unknown", "library_name": LIBRARY_NAME, "pipeline_tag": "translation",
                  "tags": ["translation", "ctranslate2", str(metadata["model_type"])]})
    dataset = dataset_name(data)
    if dataset:
        front["datasets"] = [dataset]
    if scores.sets:
        results = []
        for set_name, result in scores.sets.items():
            metrics = [{"type": "bleu", "value": round(float(result["bleu"]), 2), "name": "BLEU (sacreBLEU)"}]
            if _number(result.get("chrf")):
                metrics.append({"type": "chrf", "value": round(float(result["chrf"]), 2), "name": "chrF"})
            results.append({
                "task": {"type": "translation", "name": f"Translation {src}-{tgt}" if src and tgt else "Translation"},
                "dataset": {"type": dataset or "unknown", "name": f"{dataset or 'unknown'} ({set_name})",
                            "split": set_name},
                "metrics": metrics})
        front["model-index"] = [{"name": name, "results": results}]
    return front


def model_card(metadata: dict[str, Any], output: Path, parameters: int, vocab_sizes: tuple[int, int],
               scores: Scores, run_dir: Path | None = None, rec: RunRecord | None = None) -> str:
    """The exported directory's README.md, in the Hugging Face model card layout: YAML front matter, then the
    model, its training data, its scores (only recorded ones: `scores`), its decoding defaults and its use.
    `metadata`: what `lightning_nmt.json` holds; `rec`: the training run's record, when there is one."""
    import yaml

    data, model, decoding = metadata.get("data") or {}, metadata.get("model") or {}, metadata["decoding"]
    src, tgt = metadata.get("src_lang") or "?", metadata.get("tgt_lang") or "?"
    source = metadata.get("source") or {}
    name = output.name or str(output)
    shell_dir = shlex.quote(str(output))
    tokenizer = data.get("tokenizer") or {}
    lines = ["---", yaml.safe_dump(_front_matter(metadata, name, scores), sort_keys=False, allow_unicode=True,
                                   default_flow_style=False).rstrip("\n"), "---", ""]
    lines += [f"# {name}", "",
              f"A {metadata['model_type']} model translating {src} to {tgt}, trained with lightning-nmt and exported "
              f"by `lnmt-export` as a CTranslate2 model ({metadata['quantization']} weights), with its sentencepiece "
              f"model(s) and `{METADATA_FILE}` (its decoding settings and where it came from).", ""]

    # the model
    rows: list[tuple[str, Any]] = [("type", metadata["model_type"]), ("parameters", f"{parameters:,}")]
    rows += [(key, value) for key, value in model.items() if key != "type" and value is not None]
    rows += [("vocabulary (source / target)", f"{vocab_sizes[0]:,} / {vocab_sizes[1]:,} sentencepiece pieces"
              + (f" ({tokenizer.get('type')}, {'joint' if tokenizer.get('joint') else 'separate'})"
                 if tokenizer.get("type") else "")),
             ("lowercase", metadata.get("lowercase")),
             ("quantization", metadata["quantization"]),
             ("checkpoint", f"`{Path(str(source.get('checkpoint', '?'))).name}` (sha256 `{source.get('sha256')}`)"),
             ("trained steps / epochs", f"{source.get('global_step')} / {source.get('epoch')}"),
             ("exported", f"{source.get('exported_at')} (lightning-nmt {source.get('lightning_nmt')}, "
                          f"CTranslate2 {source.get('ctranslate2')})")]
    lines += ["## Model", "", "The checkpoint's `model:` settings:", "", *_table(rows), ""]

    # the training data
    rows = [("corpus", data.get("corpus")), ("languages", f"{src} → {tgt}")]
    rows += [(key, data[key]) for key in TRAINING_DATA_KEYS if data.get(key) not in (None, {}, [])]
    if tokenizer:
        rows.append(("tokenizer", {k: v for k, v in tokenizer.items() if v is not None}))
    if rec is not None and rec.seed is not None:
        rows.append(("training seed", rec.seed))
    lines += ["## Training data", "", "The checkpoint's `data:` settings:", "", *_table(rows), ""]
    splits = (rec.data.get("splits") if rec is not None else None) or {}
    if splits:
        lines += [f"The data's fingerprint (`{record.path(run_dir)}`):" if run_dir else "The data's fingerprint:", "",
                  "| split | file | bytes | sha256 |", "|---|---|---|---|"]
        for split, files in splits.items():
            if isinstance(files, list):
                lines += [f"| {split} | {_fmt(f.get('name'))} | {_fmt(f.get('size'))} | `{f.get('sha256')}` |"
                          for f in files if isinstance(f, dict)]
            else:
                lines.append(f"| {split} | {_fmt(files)} | | |")
        lines.append("")
    if rec is not None and rec.provenance:
        lines += ["Trained with:", "", *_table([(key, value) for key, value in rec.provenance.items()
                                                 if value is not None], ("provenance", "")), ""]

    # the scores
    lines += ["## Scores", ""]
    if scores.sets:
        lines += [f"From {scores.origin}. BLEU and chrF are sacreBLEU's corpus scores of detokenized text; "
                  "compare them only with scores of the same signature.", ""]
        columns = [("BLEU", "bleu"), ("chrF", "chrf"), ("BLEU (Moses-tokenised, lowercased)", "bleu_tok_lc"),
                   ("sentences", "sentences"), ("beam size", "beam_size"), ("length penalty", "length_penalty")]
        columns = [(title, key) for title, key in columns
                   if any(result.get(key) is not None for result in scores.sets.values())]
        lines += ["| test set | " + " | ".join(title for title, _ in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for set_name, result in scores.sets.items():
            cells = [_score(result.get(key)) if key in ("bleu", "chrf", "bleu_tok_lc")
                     else _fmt(result.get(key)) if result.get(key) is not None else "-" for _, key in columns]
            lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
        lines += ["", "Signatures:", ""]
        for set_name, result in scores.sets.items():
            for title, key in (("BLEU", "signature"), ("chrF", "chrf_signature"),
                               ("BLEU (Moses-tokenised, lowercased)", "signature_tok_lc")):
                if result.get(key):
                    lines.append(f"- {set_name}, {title}: `{result[key]}`")
                elif key == "signature":
                    lines.append(f"- {set_name}, {title}: not recorded")
        lines.append("")
        lines += [*(f"{note}" for note in scores.notes), *([""] if scores.notes else [])]
    else:
        lines += ["No scores were recorded for this checkpoint.", ""]
        lines += [*(f"{note}" for note in scores.notes), *([""] if scores.notes else [])]
        lines += ["Score it (on its training corpus's test sets; `data=...` for another), then put the scores "
                  "here:", "",
                  "```bash", f"lnmt-eval ckpt_path={shell_dir} output=eval.json",
                  f"lnmt-export {shlex.quote(str(source.get('checkpoint', 'CKPT')))} {shell_dir} "
                  "--eval-json eval.json --force"
                  + (f" --quantization {metadata['quantization']}" if metadata["quantization"] != "float32" else ""),
                  "```", ""]

    # the decoding defaults
    descriptions = {
        "beam_size": "beams of a translation (1: greedy)",
        "val_beam_size": "beams of the validations during training",
        "length_penalty": "GNMT length penalty alpha (0: the plain sum of log-probabilities)",
        "max_len_ratio": "at most ceil(source length x ratio) + offset output pieces",
        "max_len_offset": "",
        "min_len_ratio": "no end of sentence before ceil(source length x ratio) pieces",
        "beam_stop": "when a beam search stops",
        "max_input_len": "longer sources are translated in segments (null: the training max_len)",
    }
    lines += ["## Decoding defaults", "",
              "The checkpoint's `decoding:` settings, which `lnmt-translate`, `lnmt-eval` and `lnmt-serve` use unless "
              "told otherwise (e.g. `beam_size=1`, `--beam-size 1`):", "",
              "| setting | value | |", "|---|---|---|"]
    lines += [f"| {key} | {_fmt(value) if value is not None else 'null'} | {descriptions.get(key, '')} |"
              for key, value in decoding.items()]
    lines += [f"| max_input_len (in effect) | {metadata.get('max_input_len')} | source pieces per segment |", ""]

    # its use
    lines += ["## Usage", "",
              "```bash", "pip install -e '.[serve]'   # in a clone of lightning-nmt",
              f"lnmt-serve {shell_dir} --port 8000   # HTTP: POST /translate {{\"src\": [\"...\"]}}; a page at /",
              f"lnmt-translate ckpt_path={shell_dir} input=test.{src} output=test.hyp",
              f"lnmt-eval ckpt_path={shell_dir}   # its scores on its training corpus's test sets",
              "```", "",
              "```python", "from lightning_nmt.translate import Translator", "",
              f"translator = Translator.load({json.dumps(str(output))})  # or Translator.from_ctranslate2(path, "
              "threads=2)",
              "translator.translate([\"...\"])  # one translation per line", "```", ""]
    return "\n".join(lines)


def export(ckpt: str | os.PathLike, output_dir: str | os.PathLike, quantization: str = "float32",
           force: bool = False, eval_json: str | os.PathLike | None = None) -> Path:
    """Write the Transformer checkpoint `ckpt` as a CTranslate2 model directory `output_dir` (see the module
    docstring); returns the directory. The directory appears complete or not at all (written next to it, then
    renamed); an existing non-empty one is replaced only with `force`. `eval_json`: an `lnmt-eval` output of this
    checkpoint (or of an export of it), whose scores the model card shows. A user error is an `ExportError` or a
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
    evaluation = read_eval_json(eval_json) if eval_json is not None else None  # a bad file: before any work
    run_dir, run_record = read_run_record(ckpt)
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
    if evaluation is not None:
        scores = eval_scores(evaluation, Path(eval_json), ckpt, metadata["source"]["sha256"])
    elif run_record is not None:
        scores = record_scores(run_record, run_dir, ckpt)
    else:
        scores = Scores(None, {})
    parameters = sum(p.numel() for p in module.model.parameters())  # a tied or shared matrix counts once
    card = model_card(metadata, output, parameters, (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size), scores,
                      run_dir, run_record)

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
        atomic_write_text(tmp / CARD_FILE, card)
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
        if isinstance(err, WriteError) and err.path != output:  # atomic_write_text's: named as the others are
            raise WriteError(output, err.cause) from None
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
    parser.add_argument("--eval-json", type=Path, metavar="EVAL_JSON", default=None,
                        help="an lnmt-eval output (eval.json) of this checkpoint: its scores go into the model card "
                             "(README.md; default: the training run's test scores, when its metrics.json has them)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT_DIR if it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        output = export(args.ckpt, args.output_dir, args.quantization, args.force, args.eval_json)
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
