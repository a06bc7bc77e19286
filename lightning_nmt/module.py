"""TranslationModule: the LightningModule that trains, validates and tests any `Seq2Seq` model.

It knows nothing about files: the datamodule gives batches (and raw references), callbacks write outputs.
The tokenizer travels inside every checkpoint, so `TranslationModule.load(path)` alone rebuilds a
translator.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn
from torchmetrics import SumMetric

from lightning_nmt import metrics
from lightning_nmt.data.tokenizer import Tokenizer
from lightning_nmt.errors import CheckpointError, TrainingDiverged
from lightning_nmt.kernels import cpu as cpu_kernels
from lightning_nmt.models import build_model, segments
from lightning_nmt.models.search import DecodingConfig, SearchResult, search
from lightning_nmt.tokens import PAD_ID

log = logging.getLogger("lightning_nmt")


class EvalMetrics(nn.Module):
    """The loss of one evaluation set: states summed across DDP ranks, so each sentence counts exactly once when
    the ranks hold disjoint shards. BLEU and chrF are scored on the gathered translations (`lightning_nmt.metrics`,
    one implementation for training, `lnmt-eval` and the literature's metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.nll = SumMetric()
        self.tokens = SumMetric()

    def compute(self, translations: Translations, tgt_lang: str | None, lowercase: bool) -> dict[str, float]:
        """`lowercase`: the model writes lowercase text (`data.tokenizer.lowercase`), so BLEU and chrF ignore case."""
        nll, tokens = self.nll.compute(), self.tokens.compute().clamp(min=1)
        loss = (nll / tokens).item()
        hyps, refs = translations.hypotheses, translations.references
        scores = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bleu": metrics.bleu(hyps, refs, lowercase).score,
                  "chrf": metrics.chrf(hyps, refs, lowercase).score}
        if tgt_lang:
            scores["bleu_tok_lc"] = metrics.bleu_tok_lc(hyps, refs, tgt_lang).score
        return scores

    def reset(self) -> None:
        self.nll.reset()
        self.tokens.reset()


@dataclass
class Translations:
    """What one evaluation pass produced, in the split's original order (filled on every rank)."""

    hypotheses: list[str]
    references: list[str]
    sources_pieces: dict[int, list[str]]  # example id -> source pieces, for the heatmaps
    attention: dict[int, tuple[list[str], torch.Tensor]]  # id -> (output pieces, (T_out, S) weights)


class TranslationModule(L.LightningModule):
    """Wraps a seq2seq model: label-smoothed cross-entropy training, BLEU/chrF evaluation.

    `model`, `optim`, `scheduler`, `decoding` are the config groups of the same names (plain dicts);
    `data` (the corpus config) is only recorded, so `lnmt-eval` can find the training corpus.
    """

    def __init__(
        self,
        model: dict[str, Any],
        src_vocab_size: int,
        tgt_vocab_size: int,
        optim: dict[str, Any],
        scheduler: dict[str, Any],
        decoding: dict[str, Any],
        label_smoothing: float = 0.1,
        num_heatmaps: int = 4,
        data: dict[str, Any] | None = None,
        tokenizer: Tokenizer | None = None,
        speedups: str = "auto",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        # speedups (auto|off): the CPU kernels of lightning_nmt/kernels/cpu.py swapped in, or the plain model
        self.model = cpu_kernels.apply(build_model(model, src_vocab_size, tgt_vocab_size), speedups)
        self.decoding = DecodingConfig.from_dict(decoding)  # eval and translate may replace fields
        self.tokenizer = tokenizer
        self.val_metrics = EvalMetrics()
        self.test_metrics = nn.ModuleList()
        self.translations: dict[str, Translations] = {}  # split name -> last evaluation's output
        self._pending: dict[str, list[tuple[int, str, str]]] = {}  # split -> (example id, hypothesis, reference)
        self._eval_names: list[str] = []
        # split -> example id -> (source ids, output pieces, (T_out, S) attention weights)
        self._attention_store: dict[str, dict[int, tuple[list[int], list[str], torch.Tensor]]] = {}
        self.nonfinite_steps = 0  # training steps skipped for a NaN/inf loss or gradient norm
        self.nonfinite_streak = 0  # consecutive skipped steps; last.ckpt is not refreshed during a streak
        self._first_bad_step = 0
        self._loss_finite = True
        self._checkpoint_lr: float | None = None  # optim.lr of the checkpoint a resumed run started from
        self._boundary_ids: frozenset[int] | None = None  # source pieces a long input may be cut after
        self._warned_long: set[tuple[str, int]] = set()  # (split, example id) named in a warning already

    # ---- loss -------------------------------------------------------------------------------
    def token_loss(
        self, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over the real target tokens and their count (padding ignored).

        The output layer (the largest matmul of an RNN model) is applied to real tokens only.
        """
        hidden, _ = self.model(batch["src"], batch["src_lengths"], batch["tgt_in"])  # (B, T, D)
        tgt_out = batch["tgt_out"]
        real = tgt_out.ne(PAD_ID)
        logits = self.model.project(hidden[real])  # (N_real, V)
        loss = F.cross_entropy(
            logits.float(), tgt_out[real], label_smoothing=label_smoothing, reduction="sum"
        )
        return loss, real.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss summed over this rank's target tokens / target tokens of all ranks.

        Data-parallel strategies average gradients over ranks, so the returned value is scaled by the
        world size: the step is then the gradient of the mean over every real token of the global batch,
        whatever each rank's share of tokens (as one process with the whole batch would take).
        """
        loss_sum, n_tokens = self.token_loss(batch, self.hparams.label_smoothing)
        totals = self.trainer.strategy.reduce(torch.stack([loss_sum.detach(), n_tokens.to(loss_sum.dtype)]),
                                              reduce_op="sum")
        mean_loss = totals[0] / totals[1]  # the same on every rank: so is every decision on it
        self._loss_finite = bool(torch.isfinite(mean_loss))
        if not self._loss_finite and self.trainer.world_size == 1:
            self._bad_step("loss")
            return None  # no backward pass, no update; DDP needs its backward: `configure_gradient_clipping` skips
        self.log("train/loss", mean_loss, prog_bar=True, batch_size=batch["src"].size(0))
        if self.nonfinite_steps:
            self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)
        return loss_sum * self.trainer.world_size / totals[1]

    # ---- non-finite guard ---------------------------------------------------------------------
    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip as configured, then drop the update if the gradient norm is NaN/inf (`_bad_step`).

        Under 16-mixed the GradScaler already skips such steps and lowers its scale, as Lightning users expect;
        those are not counted. On one device or DDP the clipping norm is the one checked (one pass over the
        gradients); other strategies clip their own way and the norm is computed apart.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:  # training_step skipped this step
            return
        plain = isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and plain:
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            norm = torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]).norm()
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        finite = scaled or bool(torch.isfinite(norm))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite and self._loss_finite:
            self.nonfinite_streak = 0
            return
        optimizer.zero_grad(set_to_none=True)  # Adam skips parameters without a gradient: no update at all
        self._bad_step("gradient norm" if self._loss_finite else "loss")

    def _bad_step(self, what: str) -> None:
        """Count a skipped step; after `optim.max_nonfinite_steps` in a row, stop with `TrainingDiverged`."""
        self.nonfinite_streak += 1
        self.nonfinite_steps += 1
        self._first_bad_step = self.global_step + 1 if self.nonfinite_streak == 1 else self._first_bad_step
        limit = self.hparams.optim.get("max_nonfinite_steps", 5)
        if self.nonfinite_streak >= limit:
            raise TrainingDiverged(
                f"training diverged: the {what} was NaN/inf at {self.nonfinite_streak} consecutive steps, from step "
                f"{self._first_bad_step} (optim.max_nonfinite_steps={limit}); none of them was applied"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            raise TrainingDiverged(f"training diverged: the weights at step {self.global_step} are NaN/inf; "
                                   "no checkpoint was written")
        checkpoint["tokenizer"] = self.tokenizer.to_state()

    # ---- evaluation -------------------------------------------------------------------------
    def translate(self, src: torch.Tensor, src_lengths: torch.Tensor, beam_size: int | None = None,
                  nbest: int = 1) -> SearchResult:
        """Search with the configured decoding settings; `beam_size=1` is greedy. A source longer than
        `max_input_len` pieces is translated in segments (`lightning_nmt.models.segments`)."""
        decoding = self.decoding if beam_size is None else replace(self.decoding, beam_size=beam_size)

        def run(rows: torch.Tensor, lengths: torch.Tensor) -> SearchResult:
            with cpu_kernels.decoding(self.model) as topk:  # with speedups=auto on the CPU: packed weights, top-k
                return search(self.model, rows, lengths, decoding, nbest, topk)

        return segments.bounded(run, src, src_lengths, self.max_input_len, self._boundaries())

    @property
    def max_input_len(self) -> int | None:
        """Longest source (pieces, EOS included) translated in one piece: `decoding.max_input_len`, else the
        training `data.max_len` stored in the checkpoint; None: no bound."""
        data = self.hparams.data or {}
        return self.decoding.max_input_len or data.get("max_len")

    def _boundaries(self) -> frozenset[int]:
        if self._boundary_ids is None:
            self._boundary_ids = segments.boundary_ids(
                self.tokenizer.src_pieces_from_ids(range(self.tokenizer.src_vocab_size)))
        return self._boundary_ids

    def _eval_step(self, batch: dict[str, torch.Tensor], metrics: EvalMetrics, split: str,
                   beam_size: int) -> None:
        within = self._within_input_limit(batch, split)
        if within is None:
            nll, n_tokens = self.token_loss(batch)
        elif bool(within.any()):
            nll, n_tokens = self.token_loss(_trim({k: v[within] for k, v in batch.items()}))
        else:
            nll, n_tokens = torch.zeros((), device=self.device), torch.zeros((), dtype=torch.long, device=self.device)
        metrics.nll.update(nll)
        metrics.tokens.update(n_tokens)
        result = self.translate(batch["src"], batch["src_lengths"], beam_size=beam_size)
        hyps = self.tokenizer.decode_tgt([nbest[0] for nbest in result.tokens])
        ids = batch["ids"].tolist()
        refs = self._references(split, ids, batch)
        self._pending.setdefault(split, []).extend(zip(ids, hyps, refs, strict=True))
        self._keep_attention(split, ids, batch, result)

    def _within_input_limit(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor | None:
        """None when every source fits `max_input_len`; else the mask of those that do (the loss is computed on
        them only: a teacher-forced pass over an unbounded pair is unbounded too), after a warning naming the
        others (once each; they are translated in segments)."""
        limit = self.max_input_len
        if limit is None or int(batch["src_lengths"].max()) <= limit:
            return None
        within = batch["src_lengths"] <= limit
        lines = [i + 1 for i in batch["ids"][~within].tolist() if (split, i) not in self._warned_long]
        if lines:
            self._warned_long.update((split, i - 1) for i in lines)
            log.warning("%s: sentence(s) %s longer than max_input_len=%d pieces: translated in segments, left "
                        "out of the loss", split, lines, limit)
        return within

    def _references(self, split: str, ids: list[int], batch: dict[str, torch.Tensor]) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "references"):
            refs = datamodule.references(split)
            return [refs[i] for i in ids]
        return self.tokenizer.decode_tgt(batch["tgt_out"].tolist())

    def _keep_attention(self, split: str, ids: list[int], batch: dict[str, torch.Tensor],
                        result: SearchResult) -> None:
        """Keep the attention weights of the first `num_heatmaps` sentences of a test set."""
        if not split.startswith("test") or result.attention is None:
            return
        store = self._attention_store.setdefault(split, {})
        for row, example_id in enumerate(ids):
            if example_id < self.hparams.num_heatmaps:
                n_src = int(batch["src_lengths"][row])
                pieces = [*self.tokenizer.tgt_pieces_from_ids(result.tokens[row][0]), "</s>"]
                store[example_id] = (batch["src"][row, :n_src].tolist(), pieces,
                                     result.attention[row][0].float().cpu())

    def on_validation_epoch_start(self) -> None:
        self._pending.pop("val", None)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val", self.decoding.val_beam_size)

    def on_validation_epoch_end(self) -> None:
        self.translations["val"] = self._gather("val")
        scores = self.val_metrics.compute(self.translations["val"], None, self.tokenizer.settings["lowercase"])
        self.val_metrics.reset()
        self.log_dict({f"val/{k}": v for k, v in scores.items()}, sync_dist=False)
        fitting = self._trainer is not None and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        scheduler = self.lr_schedulers() if fitting else None
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(scores["bleu"])  # once per validation: see `lr_scheduler_step`

    def on_test_epoch_start(self) -> None:
        loaders = self.trainer.test_dataloaders
        n = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        datamodule = getattr(self.trainer, "datamodule", None)
        self._eval_names = list(getattr(datamodule, "test_names", ["test"]))[:n] or ["test"]
        self.test_metrics = nn.ModuleList(EvalMetrics() for _ in range(n)).to(self.device)
        self._attention_store = {}
        for name in self._eval_names:
            self._pending.pop(name, None)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.test_metrics[dataloader_idx], self._eval_names[dataloader_idx],
                        self.decoding.beam_size)

    def on_test_epoch_end(self) -> None:
        tgt_lang = (self.hparams.data or {}).get("tgt_lang")
        for name, split_metrics in zip(self._eval_names, self.test_metrics, strict=False):
            prefix = "test" if name == "test" else f"test_{name}"
            self.translations[name] = self._gather(name)
            scores = split_metrics.compute(self.translations[name], tgt_lang, self.tokenizer.settings["lowercase"])
            self.log_dict({f"{prefix}/{k}": v for k, v in scores.items()}, sync_dist=False,
                          add_dataloader_idx=False)

    def _gather(self, split: str) -> Translations:
        """Collect (id, hypothesis, reference) triples and heatmap data of all ranks, in the split's order."""
        local = (self._pending.pop(split, []), self._attention_store.get(split, {}))
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        triples = sorted(triple for part, _ in gathered for triple in part)
        attention: dict[int, Any] = {}
        for _, store in gathered:
            attention.update(store)
        sources = {i: self.tokenizer.src_pieces_from_ids(src) for i, (src, _, _) in attention.items()}
        return Translations(
            hypotheses=[hyp for _, hyp, _ in triples],
            references=[ref for _, _, ref in triples],
            sources_pieces=sources,
            attention={i: (pieces, weights) for i, (_, pieces, weights) in attention.items()},
        )

    # ---- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg, sched_cfg = self.hparams.optim, self.hparams.scheduler
        trainer = self._trainer
        # Lightning refuses to clip the gradients of a fused optimizer under mixed precision
        allow_fused = trainer is None or not (trainer.gradient_clip_val and "mixed" in str(trainer.precision))
        optimizer = _make_optimizer(self.parameters(), opt_cfg, allow_fused)
        name = sched_cfg["name"]
        if name == "none":
            return {"optimizer": optimizer}
        if name == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=sched_cfg["factor"], patience=sched_cfg["patience"],
                min_lr=sched_cfg["min_lr"],
            )
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": "val/bleu", "interval": "epoch",
                                     "strict": False}}
        warmup = max(1, sched_cfg["warmup_steps"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Lightning steps an epoch-interval plateau scheduler at every epoch end with the last logged
        val/bleu, stale when validation runs every N steps: with several epochs between validations the
        learning rate was halved again and again on an old score (Multi30k: to ~3e-5 by step 2,000). The
        plateau scheduler is stepped in `on_validation_epoch_end` instead, once per validation."""
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()

    # ---- checkpoints ----------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokenizer = Tokenizer.from_state(checkpoint["tokenizer"])
        self._checkpoint_lr = checkpoint["hyper_parameters"]["optim"]["lr"]

    def on_train_start(self) -> None:
        """A run resumed with another `optim.lr` (e.g. lower, after a divergence) uses it: the restored
        optimizer and scheduler learning rates are scaled by new / old."""
        old, new = self._checkpoint_lr, self.hparams.optim["lr"]
        if old is None or old == new:
            return
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= new / old
                if "initial_lr" in group:
                    group["initial_lr"] *= new / old
        for config in self.trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "base_lrs"):
                config.scheduler.base_lrs = [lr * new / old for lr in config.scheduler.base_lrs]
        log.warning("optim.lr is %g, the checkpoint's was %g: learning rates scaled by %g", new, old, new / old)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> TranslationModule:
        """Rebuild model and tokenizer from a checkpoint alone (read with `weights_only=True`, whatever Lightning's
        `load_from_checkpoint` does in the installed release); a missing, corrupt or foreign file is a one-line
        `CheckpointError`."""
        checkpoint = read_checkpoint(path, map_location)
        module = cls(**checkpoint["hyper_parameters"])
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
        return module.to(map_location).eval()


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch whose longest rows were taken out, cut to the width of the longest left (padding removed)."""
    src_width = int(batch["src_lengths"].max())
    tgt_width = int(batch["tgt_out"].ne(PAD_ID).sum(1).max())
    return {**batch, "src": batch["src"][:, :src_width], "tgt_in": batch["tgt_in"][:, :tgt_width],
            "tgt_out": batch["tgt_out"][:, :tgt_width]}


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)`, memory-mapped (tensors are read when touched), with clear errors for a
    missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the very end
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: not a complete "
                              "torch archive)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, pickle garbage, disallowed globals...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {first_line[:200]}"
        ) from None
    missing = [key for key in ("hyper_parameters", "state_dict", "tokenizer") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a lightning-nmt checkpoint (missing {', '.join(missing)})")
    return checkpoint


def _make_optimizer(params: Any, cfg: dict[str, Any], allow_fused: bool = True) -> torch.optim.Optimizer:
    name = cfg["name"]
    if name in ("adam", "adamw"):
        params = list(params)
        # The fused kernel updates all parameters in one pass: 24 -> 7 ms per step for the benchmark's model on
        # the CPU (benchmarks/README.md); CPU support came with torch 2.4.
        fused = allow_fused and _FUSED_ADAM and all(p.device.type in ("cpu", "cuda") for p in params)
        adam = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return adam(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"],
                    fused=fused or None)
    return torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])


_FUSED_ADAM = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
