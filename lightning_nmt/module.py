"""TranslationModule: the LightningModule that trains, validates and tests any `Seq2Seq` model.

It reads as a training step (label-smoothed cross-entropy), validation and test steps (loss and translations,
scored in `lightning_nmt.evaluation`) and `configure_optimizers` (`lightning_nmt.optim`); the non-finite guard is
`lightning_nmt.guard`. It knows nothing about files: the datamodule gives batches (and raw references),
callbacks write outputs. The tokenizer travels inside every checkpoint, so `TranslationModule.load(path)` alone
rebuilds a translator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_nmt.checkpoint import module_arguments, read_checkpoint
from lightning_nmt.data.tokenizer import Tokenizer
from lightning_nmt.errors import TrainingDiverged
from lightning_nmt.evaluation import EvalCollector, EvalMetrics, Translations, references, trim
from lightning_nmt.guard import NonFiniteGuard
from lightning_nmt.inference import InferenceModel, translate_ids
from lightning_nmt.kernels import cpu as cpu_kernels
from lightning_nmt.models import build_model
from lightning_nmt.optim import configure_optimizers, rescale_learning_rates
from lightning_nmt.search import DecodingConfig, SearchResult, segments
from lightning_nmt.tokens import PAD_ID


class TranslationModule(L.LightningModule):
    """Wraps a seq2seq model: label-smoothed cross-entropy training, BLEU/chrF evaluation.

    `model`, `optim`, `scheduler`, `decoding` are the config groups of the same names (plain dicts);
    `data` (the corpus config) is only recorded, so `lnmt-eval` can find the training corpus; `speedups`
    (auto|off): the CPU kernels of `lightning_nmt.kernels.cpu` swapped in, or the plain model.
    """

    def __init__(self, model: dict[str, Any], src_vocab_size: int, tgt_vocab_size: int, optim: dict[str, Any],
                 scheduler: dict[str, Any], decoding: dict[str, Any], label_smoothing: float = 0.1,
                 data: dict[str, Any] | None = None, tokenizer: Tokenizer | None = None,
                 speedups: str = "auto") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.model = cpu_kernels.apply(build_model(model, src_vocab_size, tgt_vocab_size), speedups)
        self.decoding = DecodingConfig.from_dict(decoding)  # eval and translate may replace fields
        self.tokenizer = tokenizer
        self.guard = NonFiniteGuard(optim.get("max_nonfinite_steps", 5))
        self.val_metrics = EvalMetrics()
        self.test_metrics = nn.ModuleList()
        self.collector = EvalCollector()
        self.translations: dict[str, Translations] = {}  # split name -> last evaluation's output
        self.eval_names: list[str] = []  # the test sets of the current test pass, by dataloader index
        self._checkpoint_lr: float | None = None  # optim.lr of the checkpoint a resumed run started from
        self._boundary_ids: frozenset[int] | None = None  # source pieces a long input may be cut after

    # ---- training -----------------------------------------------------------------------------
    def token_loss(self, batch: dict[str, torch.Tensor],
                   label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over the real target tokens and their count (padding ignored). The output layer
        (the largest matmul of an RNN model) is applied to real tokens only."""
        hidden, _ = self.model(batch["src"], batch["src_lengths"], batch["tgt_in"])  # (B, T, D)
        real = batch["tgt_out"].ne(PAD_ID)
        logits = self.model.project(hidden[real])  # (N_real, V)
        loss = F.cross_entropy(logits.float(), batch["tgt_out"][real], label_smoothing=label_smoothing,
                               reduction="sum")
        return loss, real.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        """Loss summed over this rank's target tokens / target tokens of all ranks.

        Data-parallel strategies average gradients over ranks, so the returned value is scaled by the world size:
        the step is then the gradient of the mean over every real token of the global batch, whatever each rank's
        share of tokens (as one process with the whole batch would take). None: a skipped step (`guard`).
        """
        loss_sum, n_tokens = self.token_loss(batch, self.hparams.label_smoothing)
        totals = self.trainer.strategy.reduce(torch.stack([loss_sum.detach(), n_tokens.to(loss_sum.dtype)]),
                                              reduce_op="sum")
        mean_loss = totals[0] / totals[1]  # the same on every rank: so is every decision on it
        if not self.guard.check_loss(mean_loss, self.global_step, self.trainer.world_size):
            return None
        self.log("train/loss", mean_loss, prog_bar=True, batch_size=batch["src"].size(0))
        if self.guard.steps:
            self.log("train/nonfinite_steps", float(self.guard.steps), batch_size=1)
        return loss_sum * self.trainer.world_size / totals[1]

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        self.guard.clip_and_check(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self.parameters(), self.hparams.optim, self.hparams.scheduler, self._trainer)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Lightning steps an epoch-interval plateau scheduler at every epoch end with the last logged val/bleu,
        which is stale when validation runs every N steps; the plateau scheduler is stepped in
        `on_validation_epoch_end` instead, once per validation."""
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()

    # ---- decoding -----------------------------------------------------------------------------
    def translate(self, src: torch.Tensor, src_lengths: torch.Tensor, decoding: DecodingConfig | None = None,
                  **overrides: Any) -> SearchResult:
        """Search with `decoding` (None: the configured settings), flat keys `overrides` over it (`beam_size=3`). A
        source longer than `max_input_len` pieces is translated in segments (`lightning_nmt.search.segments`)."""
        decoding = (decoding or self.decoding).with_overrides(**overrides) if overrides else decoding or self.decoding
        limit = decoding.max_input_len or (self.hparams.data or {}).get("max_len")
        return translate_ids(self.model, src, src_lengths, decoding, limit, self._boundaries())

    def inference_model(self) -> InferenceModel:
        """This module's model, tokenizer and settings, for a `Translator` (shared, not copied)."""
        model_type = str(self.hparams.model.get("type", type(self.model).__name__))
        return InferenceModel(self.model.eval(), self.tokenizer, self.decoding, dict(self.hparams.data or {}),
                              model_type, ["module"])

    @property
    def validation_decoding(self) -> DecodingConfig:
        """Validation's search: beam search of `decoding.val_beam_size` (1: greedy), one hypothesis."""
        return DecodingConfig.from_dict({"strategy": "beam", "beam_size": self.decoding.val_beam_size, "nbest": 1},
                                        self.decoding)

    @property
    def max_input_len(self) -> int | None:
        """Longest source (pieces, EOS included) translated in one piece: `decoding.max_input_len`, else the
        training `data.max_len` stored in the checkpoint; None: no bound."""
        return self.decoding.max_input_len or (self.hparams.data or {}).get("max_len")

    def _boundaries(self) -> frozenset[int]:
        if self._boundary_ids is None:
            self._boundary_ids = segments.boundary_ids(
                self.tokenizer.src_pieces_from_ids(range(self.tokenizer.src_vocab_size)))
        return self._boundary_ids

    # ---- validation and test ------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, torch.Tensor], metrics: EvalMetrics, split: str,
                   decoding: DecodingConfig) -> SearchResult:
        """Loss (of the sources within `max_input_len`) and translations of one batch; returns the search result
        (callbacks read its attention in `on_test_batch_end`)."""
        within = self.collector.within_input_limit(batch, split, self.max_input_len)
        if within is None:
            nll, n_tokens = self.token_loss(batch)
        elif bool(within.any()):
            nll, n_tokens = self.token_loss(trim({k: v[within] for k, v in batch.items()}))
        else:
            nll, n_tokens = torch.zeros((), device=self.device), torch.zeros((), dtype=torch.long, device=self.device)
        metrics.nll.update(nll)
        metrics.tokens.update(n_tokens)
        result = self.translate(batch["src"], batch["src_lengths"], decoding)
        ids = batch["ids"].tolist()
        hyps = self.tokenizer.decode_tgt([nbest[0] for nbest in result.tokens])
        self.collector.add(split, ids, hyps, references(self._trainer, split, ids, batch, self.tokenizer.decode_tgt))
        return result

    def on_validation_epoch_start(self) -> None:
        self.collector.reset("val")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val", self.validation_decoding)

    def on_validation_epoch_end(self) -> None:
        self.translations["val"] = self.collector.gather("val", self.trainer.world_size)
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
        self.eval_names = list(getattr(datamodule, "test_names", ["test"]))[:n] or ["test"]
        self.test_metrics = nn.ModuleList(EvalMetrics() for _ in range(n)).to(self.device)
        for name in self.eval_names:
            self.collector.reset(name)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> SearchResult:
        return self._eval_step(batch, self.test_metrics[dataloader_idx], self.eval_names[dataloader_idx],
                               self.decoding)

    def on_test_epoch_end(self) -> None:
        tgt_lang = (self.hparams.data or {}).get("tgt_lang")
        for name, split_metrics in zip(self.eval_names, self.test_metrics, strict=False):
            prefix = "test" if name == "test" else f"test_{name}"
            self.translations[name] = self.collector.gather(name, self.trainer.world_size)
            scores = split_metrics.compute(self.translations[name], tgt_lang, self.tokenizer.settings["lowercase"])
            self.log_dict({f"{prefix}/{k}": v for k, v in scores.items()}, sync_dist=False,
                          add_dataloader_idx=False)

    # ---- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            raise TrainingDiverged(f"training diverged: the weights at step {self.global_step} are NaN/inf; "
                                   "no checkpoint was written")
        checkpoint["tokenizer"] = self.tokenizer.to_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokenizer = Tokenizer.from_state(checkpoint["tokenizer"])
        self._checkpoint_lr = checkpoint["hyper_parameters"]["optim"]["lr"]

    def on_train_start(self) -> None:
        """A run resumed with another `optim.lr` uses it (`lightning_nmt.optim.rescale_learning_rates`)."""
        if self._checkpoint_lr is not None and self._checkpoint_lr != self.hparams.optim["lr"]:
            rescale_learning_rates(self.trainer, self._checkpoint_lr, self.hparams.optim["lr"])

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> TranslationModule:
        """Rebuild model and tokenizer from a checkpoint alone (`read_checkpoint`: `weights_only=True`, one-line
        `CheckpointError` for a missing, corrupt or foreign file)."""
        checkpoint = read_checkpoint(path, map_location)
        module = cls(**module_arguments(checkpoint))
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
        return module.to(map_location).eval()
