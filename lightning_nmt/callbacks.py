"""Callbacks: what a run leaves in its directory and on its logger. Only global rank 0 writes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger

from lightning_nmt.atomic import atomic_write_text
from lightning_nmt.module import TranslationModule
from lightning_nmt.plotting import plot_attention
from lightning_nmt.search import SearchResult
from lightning_nmt.tokens import PAD_ID

log = logging.getLogger(__name__)


def hypothesis_file(output_dir: Path, name: str, kind: str = "hyp") -> Path:
    """`test.hyp.txt` for the main test set, `test_<name>.hyp.txt` for extra ones; `kind="ref"`: its references."""
    return output_dir / (f"test.{kind}.txt" if name == "test" else f"test_{name}.{kind}.txt")


class TestOutputs(L.Callback):
    """After testing: the test translations and their references as text, one pair of files per test set (the
    references too, so that `lnmt-compare` tests significance without the corpus being where it was)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)

    def on_test_end(self, trainer: L.Trainer, pl_module: TranslationModule) -> None:
        if not trainer.is_global_zero:
            return
        for name in pl_module.eval_names:
            translations = pl_module.translations[name]
            for kind, lines in (("hyp", translations.hypotheses), ("ref", translations.references)):
                atomic_write_text(hypothesis_file(self.output_dir, name, kind), "".join(f"{line}\n" for line in lines))


class AttentionHeatmaps(L.Callback):
    """After testing: the attention weights of the first `num_heatmaps` sentences of each test set as heatmaps,
    `<output_dir>/attention/<test set>_<id>.png` (output pieces by source pieces), and on wandb."""

    def __init__(self, output_dir: str | Path, num_heatmaps: int) -> None:
        self.output_dir = Path(output_dir)
        self.num_heatmaps = num_heatmaps
        # test set -> example id -> (source pieces, output pieces, (T_out, S) weights)
        self.kept: dict[str, dict[int, tuple[list[str], list[str], torch.Tensor]]] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: TranslationModule) -> None:
        self.kept = {}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: TranslationModule, outputs: SearchResult,
                          batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs is None or outputs.attention is None:
            return
        tokenizer = pl_module.tokenizer
        kept = self.kept.setdefault(pl_module.eval_names[dataloader_idx], {})
        for row, example_id in enumerate(batch["ids"].tolist()):
            if example_id < self.num_heatmaps:
                src = batch["src"][row, : int(batch["src_lengths"][row])].tolist()
                pieces = [*tokenizer.tgt_pieces_from_ids(outputs.tokens[row][0]), "</s>"]
                kept[example_id] = (tokenizer.src_pieces_from_ids(src), pieces, outputs.attention[row][0].float().cpu())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: TranslationModule) -> None:
        if trainer.world_size > 1:  # each rank translated its shard: rank 0 draws them all
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, self.kept)
            self.kept = {}
            for part in gathered:
                for name, heatmaps in part.items():
                    self.kept.setdefault(name, {}).update(heatmaps)

    def on_test_end(self, trainer: L.Trainer, pl_module: TranslationModule) -> None:
        if not trainer.is_global_zero:
            return
        images: list[str] = []
        for name, heatmaps in self.kept.items():
            for example_id, (src_pieces, out_pieces, weights) in sorted(heatmaps.items()):
                path = self.output_dir / "attention" / f"{name}_{example_id:03d}.png"
                plot_attention(weights, src_pieces, out_pieces, path, title=f"{name} #{example_id}")
                images.append(str(path))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and images:
                logger.log_image(key="attention", images=images, caption=[Path(p).stem for p in images])


class RunSummary(L.Callback):
    """Training target tokens per second, and the validation scores after each validation (for
    BLEU-against-steps curves).

    Throughput counts the time from the start to the end of each training batch (forward, backward,
    optimizer step), so validation and checkpointing do not dilute it; data loading is measured apart
    (benchmarks/). Tokens are summed on the device and read once at the end: no host-device sync per step.
    """

    def __init__(self) -> None:
        self.tokens: torch.Tensor | None = None
        self.train_seconds = 0.0
        self._batch_start = 0.0
        self.result: dict[str, float] = {}
        self.val_history: list[dict[str, float]] = []
        self._restored = {"train_tgt_tokens": 0, "train_seconds": 0.0}

    def state_dict(self) -> dict[str, Any]:
        """Kept in checkpoints, so that metrics.json of a resumed run covers the whole run."""
        tokens = int(self.tokens.item()) if self.tokens is not None else 0
        return {"train_tgt_tokens": tokens, "train_seconds": self.train_seconds, "val_history": self.val_history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = {k: state_dict[k] for k in self._restored}
        self.val_history = list(state_dict["val_history"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tokens = torch.tensor(self._restored["train_tgt_tokens"], dtype=torch.long, device=pl_module.device)
        self.train_seconds = self._restored["train_seconds"]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.tokens += batch["tgt_out"].ne(PAD_ID).sum()
        self.train_seconds += time.perf_counter() - self._batch_start

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        scores = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith("val/")}
        self.val_history.append({"step": trainer.global_step, **scores})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tokens = int(self.tokens.item()) * trainer.world_size if self.tokens is not None else 0
        seconds = max(self.train_seconds, 1e-9)
        self.result = {"train_tgt_tokens": tokens, "train_seconds": seconds,
                       "train_tgt_tokens_per_sec": tokens / seconds}


class ExampleTranslations(L.Callback):
    """After each validation: a few source / reference / hypothesis triples, to the log and the logger."""

    def __init__(self, num_examples: int = 5) -> None:
        self.num_examples = num_examples

    def on_validation_end(self, trainer: L.Trainer, pl_module: TranslationModule) -> None:
        if not trainer.is_global_zero or self.num_examples <= 0 or "val" not in pl_module.translations:
            return
        datamodule = trainer.datamodule
        hyps = pl_module.translations["val"].hypotheses[: self.num_examples]
        srcs = datamodule.sources("val")[: len(hyps)]
        refs = datamodule.references("val")[: len(hyps)]
        rows = [[trainer.global_step, s, r, h] for s, r, h in zip(srcs, refs, hyps, strict=False)]
        for _, s, r, h in rows[:2]:
            log.info("step %d\n  src: %s\n  ref: %s\n  hyp: %s", trainer.global_step, s, r, h)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="val/examples", columns=["step", "source", "reference", "hypothesis"],
                                 data=rows)


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting optimizer steps (`step 420/800`) over the whole run when training is
    bounded by `max_steps` alone (the epoch count is then unknown); epochs otherwise."""

    @staticmethod
    def _by_steps(trainer: L.Trainer) -> bool:
        return trainer.max_epochs in (None, -1) and trainer.max_steps > 0

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if self._by_steps(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step
            bar.set_description("step")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Close the bars, so the error line that follows starts on a line of its own and no bar is redrawn."""
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar):
            if bar is not None:
                bar.close()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._by_steps(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if not bar.disable and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
