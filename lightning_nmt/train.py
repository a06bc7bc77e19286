"""`lnmt-train [overrides]`: train a model from composed configs, then test its best checkpoint."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from lightning_nmt.app import run_cli, train
from lightning_nmt.config import CONF_DIR, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> Any:
    metrics = run_cli(train, cfg)
    return metrics.get("val", {}).get("bleu") if metrics else None  # the objective of hparams_search


if __name__ == "__main__":
    main()
