"""`lnmt-eval ckpt_path=PATH|[A.ckpt,B.ckpt] [data=...] [beam_size=N] [strategy=... seed=N] [split=val]`: score a
checkpoint, an ensemble of checkpoints, or a model exported by `lnmt-export` on a corpus's test sets (or, to choose
decoding settings without touching them, its validation set)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from lightning_nmt.atomic import atomic_write_text
from lightning_nmt.cli import decoding_overrides, inference_device, run_cli, to_dict
from lightning_nmt.config import CONF_DIR, register_configs
from lightning_nmt.data import ParallelDataModule
from lightning_nmt.errors import ConfigError
from lightning_nmt.kernels import cpu as cpu_kernels
from lightning_nmt.metrics import bleu, bleu_tok_lc, chrf
from lightning_nmt.module import TranslationModule
from lightning_nmt.translate import Translator, decoding_keys, model_paths

register_configs()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test a checkpoint, an ensemble of checkpoints (`ckpt_path=[a.ckpt,b.ckpt]`), or a directory written by
    `lnmt-export` (CTranslate2), on every test set of `data`
    (default: the corpus it was trained on); with `split=val` on its validation set instead.

    Returns {test set: {bleu, signature, bleu_tok_lc, signature_tok_lc, chrf, loss, ppl, sentences, hypotheses,
    ...}} (`hypotheses`: the file of its translations, `<output stem>.<test set>.hyp.txt`):
    `bleu` and `chrf` are sacreBLEU's corpus scores (the torchmetrics values logged during training agree with
    them), `bleu_tok_lc` the lowercased Moses-tokenised BLEU of published Multi30k results (`metrics.py`);
    `loss` and `ppl` (teacher-forced) are those of a checkpoint only, None for an exported model or an ensemble.
    """
    decoding = decoding_keys(cfg)
    device = inference_device(cfg.accelerator)  # a GPU that is not there: the first error
    paths = model_paths(cfg.ckpt_path)
    single = isinstance(paths, str) and not Path(paths).is_dir()  # a checkpoint: tested by Lightning, with its loss
    if single:
        model = TranslationModule.load(paths)
        cpu_kernels.apply(model.model, cfg.speedups)  # the command line's speedups, not the checkpoint's
        model.decoding = decoding_overrides(model.decoding, **decoding)
        tokenizer, settings, trained_data = model.tokenizer, model.decoding, model.hparams.data or {}
    else:  # an exported model (CTranslate2) or an ensemble
        translator = Translator.load(paths, cfg.accelerator, speedups=cfg.speedups, max_tokens=cfg.batch_max_tokens,
                                     **decoding)
        backend = translator.backend
        tokenizer, settings = backend.tokenizer, translator.decoding
        trained_data = backend.training_data
    data_cfg = to_dict(cfg.data) if cfg.data is not None else dict(trained_data)
    check_direction(trained_data, data_cfg)
    data_cfg["eval_max_tokens"] = cfg.batch_max_tokens
    datamodule = ParallelDataModule(**data_cfg)
    datamodule.prepare_data()
    datamodule.setup_eval(tokenizer, cfg.split)
    if single:
        hypotheses, losses = _test(model, datamodule, device)
    else:
        hypotheses = {name: translator.translate(datamodule.sources(name)) for name in datamodule.test_names}
        losses: dict[str, tuple[float | None, float | None]] = {name: (None, None) for name in hypotheses}
    results: dict[str, Any] = {}
    lowercase = tokenizer.settings["lowercase"]  # a model trained on lowercased text: case is not scored
    for name, hyps in hypotheses.items():
        refs = datamodule.references(name)
        sacre, tok_lc = bleu(hyps, refs, lowercase), bleu_tok_lc(hyps, refs, datamodule.tgt_lang)
        results[name] = {
            "bleu": sacre.score,
            "signature": sacre.signature,
            "bleu_tok_lc": tok_lc.score,
            "signature_tok_lc": tok_lc.signature,
            "chrf": chrf(hyps, refs, lowercase).score,
            "loss": losses[name][0],
            "ppl": losses[name][1],
            "sentences": len(hyps),
            "beam_size": settings.beam_size,
            "length_penalty": settings.length_penalty,
            "decoding": {key: value for key, value in settings.to_dict().items() if key != "attention"},
            "by_source_length": bleu_by_length(datamodule.sources(name), hyps, refs, cfg.length_buckets,
                                               datamodule.tgt_lang, lowercase),
        }
    output = Path(cfg.output) if cfg.output else Path(cfg.paths.output_dir) / "eval.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in results:  # translations and references, one per line, next to the scores: <output stem>.<set>.hyp.txt
        written = (("hyp", "hypotheses", hypotheses[name]), ("ref", "references", datamodule.references(name)))
        for kind, key, lines in written:
            path = output.with_name(f"{output.stem}.{name}.{kind}.txt")
            atomic_write_text(path, "".join(f"{line}\n" for line in lines))
            results[name][key] = str(path)
    text = json.dumps({"ckpt_path": paths, "results": results}, indent=2, default=str)
    atomic_write_text(output, text + "\n")
    print(text)
    return results


def _test(module: TranslationModule, datamodule: ParallelDataModule,
          device: torch.device) -> tuple[dict[str, list[str]], dict[str, tuple[float, float]]]:
    """A checkpoint's translations and teacher-forced loss and perplexity of each test set (`Trainer.test`)."""
    trainer = L.Trainer(accelerator=device.type.replace("cuda", "gpu"), devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    hypotheses, losses = {}, {}
    for name in datamodule.test_names:
        prefix = "test" if name == "test" else f"test_{name}"
        hypotheses[name] = module.translations[name].hypotheses
        losses[name] = (float(trainer.callback_metrics[f"{prefix}/loss"]),
                        float(trainer.callback_metrics[f"{prefix}/ppl"]))
    return hypotheses, losses


def check_direction(trained: dict[str, Any], data: dict[str, Any]) -> None:
    """`data` must not be the checkpoint's language pair reversed: a model trained en->de scored on de->en would
    print a BLEU near 0, not an error. (Other pairs pass: a corpus may label its languages differently.)"""
    trained_pair = (trained.get("src_lang"), trained.get("tgt_lang"))
    if None not in trained_pair and trained_pair[0] != trained_pair[1] \
            and (data.get("src_lang"), data.get("tgt_lang")) == trained_pair[::-1]:
        src, tgt = trained_pair
        raise ConfigError(f"the checkpoint translates {src}->{tgt}, but data is {tgt}->{src}: "
                          f"pass data.src_lang={src} data.tgt_lang={tgt}")


def bleu_by_length(sources: list[str], hyps: list[str], refs: list[str], buckets: int,
                   tgt_lang: str, lowercase: bool = False) -> list[dict[str, Any]]:
    """Corpus BLEU (`bleu`, and `bleu_tok_lc` for target language `tgt_lang`) of `buckets` equal-sized groups
    of sentences, from the shortest sources to the longest (source length in words); shows whether a model
    forgets long sentences. `lowercase`: case-insensitive `bleu` (a model trained on lowercased text)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i].split()))
    groups = [order[k * len(order) // buckets:(k + 1) * len(order) // buckets] for k in range(buckets)]
    out = []
    for group in groups:
        if not group:
            continue
        lengths = [len(sources[i].split()) for i in group]
        group_hyps, group_refs = [hyps[i] for i in group], [refs[i] for i in group]
        out.append({"min_words": min(lengths), "max_words": max(lengths), "sentences": len(group),
                    "bleu": bleu(group_hyps, group_refs, lowercase).score,
                    "bleu_tok_lc": bleu_tok_lc(group_hyps, group_refs, tgt_lang).score})
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> Any:
    run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
