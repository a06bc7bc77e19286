"""`python -m tests.ddp_probe [overrides]`: exactly `lnmt-train`, plus a callback that records, per rank,
the example ids of every training batch in `<run dir>/train_ids.rank<k>.json`.

Run as a module (not inside pytest) because `strategy=ddp` relaunches the command line for rank 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from lightning_nmt import app, train


class RecordTrainIds(L.Callback):
    """Writes [[epoch, [ids...]], ...] of this rank's training batches at the end of training."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.batches: list[tuple[int, list[int]]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.batches.append((trainer.current_epoch, batch["ids"].tolist()))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.output_dir / f"train_ids.rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.batches))


_build_callbacks = app.build_callbacks


def build_callbacks(cfg: DictConfig, output_dir: Path, has_logger: bool) -> list[L.Callback]:
    return [*_build_callbacks(cfg, output_dir, has_logger), RecordTrainIds(output_dir)]


app.build_callbacks = build_callbacks

if __name__ == "__main__":
    train.main()
