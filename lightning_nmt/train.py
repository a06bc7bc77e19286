"""`lnmt-train [overrides]`: train a model from composed configs, then test its best checkpoint."""

from __future__ import annotations

import math
import sys

import hydra
from omegaconf import DictConfig

from lightning_nmt.app import train
from lightning_nmt.cli import run_cli
from lightning_nmt.config import CONF_DIR, register_configs
from lightning_nmt.distributed import torchrun_rank_overrides
from lightning_nmt.record import FAILED

register_configs()


def main() -> float | None:
    """`lnmt-train`; a rank > 0 that torchrun started writes only its own log (`torchrun_rank_overrides`)."""
    sys.argv += torchrun_rank_overrides(sys.argv[1:])
    return train_main()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Train; returns the objective of a sweep: the validation BLEU of the best checkpoint, NaN for a failed job
    (an Optuna search tells it to the study as a failed trial)."""
    metrics = run_cli(train, cfg)
    if metrics and metrics.get("status") == FAILED:
        return math.nan
    return metrics.get("val", {}).get("bleu") if metrics else None


if __name__ == "__main__":
    main()
