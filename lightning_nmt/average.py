"""`lnmt-average RUN_DIR_OR_CKPTS... [--last K | --best K] [--output PATH]`: checkpoint averaging.

The element-wise mean of the weights of several checkpoints of one run (Vaswani et al. 2017 average the last
5-20) is usually a better model than any of them. The result is an ordinary checkpoint without optimizer
state: `lnmt-eval ckpt_path=...` and `lnmt-translate ckpt_path=...` take it. `lnmt-train average_checkpoints=K`
averages the best K checkpoints after training and tests that model.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from lightning_nmt.atomic import atomic_path
from lightning_nmt.checkpoint import read_checkpoint
from lightning_nmt.errors import CheckpointError, ConfigError, UserError
from lightning_nmt.models import model_differences

log = logging.getLogger("lightning_nmt")

AVERAGED_NAME = "averaged.ckpt"
BEST_NAME = re.compile(r"best-step(\d+)-bleu(-?\d+(?:\.\d+)?)\.ckpt")
"""`app.build_callbacks`'s ModelCheckpoint file name: `best-step{step:06d}-bleu{val/bleu:.2f}.ckpt`."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""`lnmt-average --dtype` choices."""
KEPT_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "hparams_name", "hyper_parameters", "tokenizer")
"""What the averaged checkpoint keeps of the last input; optimizer, scheduler, loop and callback states go."""


def average_checkpoints(paths: Sequence[Path], output: Path, dtype: torch.dtype | None = None) -> Path:
    """Write to `output` (atomically) the checkpoint whose floating-point weights are the mean of those of
    `paths`, stored in `dtype` (None: the inputs' dtype; bfloat16 halves the file); integer and bool buffers,
    `hyper_parameters` and `tokenizer` are the last checkpoint's, and
    `averaged_from` lists `paths`. Checkpoints of different models, or an `output` that is a checkpoint but
    not an average (a training checkpoint), are a `CheckpointError`."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    if Path(output).exists() and "averaged_from" not in read_checkpoint(output):
        raise CheckpointError(f"{output} is a training checkpoint, not an average: choose another output")
    sums: dict[str, torch.Tensor] = {}
    first: tuple[Path, dict[str, Any]] | None = None
    for path in paths:
        checkpoint = read_checkpoint(path)
        if first is None:  # what the others are compared with (not its optimizer state)
            first = (Path(path), {key: checkpoint[key] for key in ("hyper_parameters", "state_dict", "tokenizer")})
        else:
            _check_same_model(*first, Path(path), checkpoint)
        for key, tensor in checkpoint["state_dict"].items():
            if tensor.is_floating_point():
                sums[key] = (sums[key] + tensor.double()) if key in sums else tensor.double()
    last_state = checkpoint["state_dict"]
    state_dict = {key: (sums[key] / len(paths)).to(dtype or t.dtype) if key in sums else t
                  for key, t in last_state.items()}
    averaged = {key: checkpoint[key] for key in KEPT_KEYS if key in checkpoint}
    averaged.update(state_dict=state_dict, averaged_from=[str(p) for p in paths])
    with atomic_path(output) as tmp, open(tmp, "wb") as f:
        torch.save(averaged, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(output)


def _check_same_model(path_a: Path, a: dict[str, Any], path_b: Path, b: dict[str, Any]) -> None:
    """Raise a one-line `CheckpointError` naming the first difference that forbids averaging `a` and `b`."""
    hp_a, hp_b = a["hyper_parameters"], b["hyper_parameters"]
    diffs = [f"{key} {value_a!r} vs {value_b!r}" for key, value_a, value_b in model_differences(hp_a, hp_b)]
    keys_a, keys_b = set(a["state_dict"]), set(b["state_dict"])
    if keys_a != keys_b:
        diffs.append(f"weights {sorted(keys_a ^ keys_b)[:3]} in only one of them")
    diffs += [f"{key} shape {tuple(a['state_dict'][key].shape)} vs {tuple(b['state_dict'][key].shape)}"
              for key in sorted(keys_a & keys_b) if a["state_dict"][key].shape != b["state_dict"][key].shape][:1]
    if not diffs and a["tokenizer"] != b["tokenizer"]:
        diffs.append("their tokenizers differ")
    if diffs:
        raise CheckpointError(f"cannot average {path_a} and {path_b}, different models: {'; '.join(diffs[:3])}")


@dataclass(frozen=True)
class Candidate:
    """A checkpoint file of a run, its global step, and the validation BLEU it was saved with (None: unknown)."""

    path: Path
    step: int
    bleu: float | None


def find_candidates(inputs: Sequence[Path]) -> list[Candidate]:
    """The checkpoints named by `inputs` (files, run directories or checkpoint directories; `*.ckpt`), without
    averaged checkpoints (such as an earlier output)."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            folder = item / "checkpoints" if (item / "checkpoints").is_dir() else item
            files += sorted(folder.glob("*.ckpt"))
        elif item.is_file():
            files.append(item)
        else:
            raise CheckpointError(f"{item} is neither a checkpoint nor a directory")
    candidates = []
    for path in files:
        checkpoint = read_checkpoint(path)
        if "averaged_from" not in checkpoint:
            candidates.append(Candidate(path, int(checkpoint.get("global_step", 0)), _recorded_bleu(path, checkpoint)))
    if not candidates:
        raise CheckpointError(f"no checkpoints in {', '.join(map(str, inputs))}")
    return candidates


def _recorded_bleu(path: Path, checkpoint: dict[str, Any]) -> float | None:
    """The val/bleu ModelCheckpoint saved `path` with (its callback state), else the one in the file name."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("monitor") == "val/bleu":
            scores = {Path(saved).name: float(score) for saved, score in state.get("best_k_models", {}).items()}
            if path.name in scores:
                return scores[path.name]
    match = BEST_NAME.fullmatch(path.name)
    return float(match.group(2)) if match else None


def select_last(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """The k checkpoints of the highest global steps (one per step: last.ckpt often repeats a best one)."""
    steps = _one_per_step(candidates)
    if not 0 < k <= len(steps):
        raise CheckpointError(f"--last {k}: there are {len(steps)} checkpoints of distinct steps "
                              f"(K: 1 to {len(steps)})")
    return steps[-k:]


def select_best(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """The k checkpoints of the highest validation BLEU (ties: the later one), in step order."""
    scored = [c for c in _one_per_step(candidates) if c.bleu is not None]
    if not 0 < k <= len(scored):
        raise CheckpointError(f"--best {k}: there are {len(scored)} checkpoints with a validation BLEU (K: 1 to "
                              f"{len(scored)}; a run keeps callbacks.model_checkpoint.save_top_k of them)")
    best = sorted(scored, key=lambda c: (c.bleu, c.step))[-k:]
    return sorted(best, key=lambda c: c.step)


def _one_per_step(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates in step order, one per global step (the one with a recorded BLEU when there is one)."""
    by_step: dict[int, Candidate] = {}
    for c in candidates:
        if c.step not in by_step or (by_step[c.step].bleu is None and c.bleu is not None):
            by_step[c.step] = c
    return [by_step[step] for step in sorted(by_step)]


def check_average_option(cfg: DictConfig) -> None:
    """`average_checkpoints=K` of lnmt-train needs the run to keep at least K best checkpoints."""
    k, keep = cfg.average_checkpoints, cfg.callbacks.model_checkpoint.save_top_k
    if k < 0 or (k > keep and keep != -1):
        raise ConfigError(f"average_checkpoints={k} needs 0 <= average_checkpoints <= "
                          f"callbacks.model_checkpoint.save_top_k (= {keep}; -1 keeps all)")


def average_best(trainer: L.Trainer, checkpoint_cb: ModelCheckpoint, k: int) -> dict[str, Any]:
    """After fit: average the k best checkpoints `checkpoint_cb` kept (by its monitor) into
    `<checkpoints>/averaged.ckpt`; rank 0 writes, the others wait. Returns what metrics.json records
    (`averaged_checkpoint`, `averaged_from`), or {} when k is 0 or no checkpoint was kept."""
    if k <= 0 or not checkpoint_cb.best_k_models:
        return {}
    ranked = sorted(checkpoint_cb.best_k_models.items(), key=lambda item: float(item[1]),
                    reverse=checkpoint_cb.mode == "max")
    paths = sorted(Path(path) for path, _ in ranked[:k])  # best-step{step:06d}...: step order
    if len(paths) < k:
        log.warning("average_checkpoints=%d: only %d best checkpoints were kept; averaging those", k, len(paths))
    output = Path(checkpoint_cb.dirpath) / AVERAGED_NAME
    if trainer.is_global_zero:
        average_checkpoints(paths, output)
    trainer.strategy.barrier()
    return {"averaged_checkpoint": str(output), "averaged_from": [str(p) for p in paths]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lnmt-average", description="Average the weights of checkpoints of one run.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="RUN_DIR_OR_CKPT",
                        help="a run directory (its checkpoints/), a checkpoint directory, or checkpoint files")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--last", type=int, metavar="K", help="the K checkpoints of the highest global steps")
    choice.add_argument("--best", type=int, metavar="K", help="the K checkpoints of the highest validation BLEU")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"default: <first directory>/checkpoints/{AVERAGED_NAME}, or next to the first file")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="store the weights in this dtype (default: as trained; bfloat16 halves the file, and "
                             "the model loads in float32 with the rounded weights)")
    args = parser.parse_args(argv)
    output = args.output or _default_output(args.inputs)
    try:
        sources = _choose(args)
        average_checkpoints(sources, output, DTYPES[args.dtype] if args.dtype else None)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(output)
    print(f"averaged {len(sources)} checkpoints: {', '.join(str(p) for p in sources)}", file=sys.stderr)


def _choose(args: argparse.Namespace) -> list[Path]:
    """The checkpoints to average: selected with --last / --best, else the files given, in their order."""
    if args.last is None and args.best is None:
        if any(item.is_dir() for item in args.inputs):
            raise UserError("a directory needs --last K or --best K to choose its checkpoints")
        return list(args.inputs)
    candidates = find_candidates(args.inputs)
    chosen = select_last(candidates, args.last) if args.last is not None else select_best(candidates, args.best)
    return [c.path for c in chosen]


def _default_output(inputs: Sequence[Path]) -> Path:
    folder = next((item for item in inputs if item.is_dir()), None)
    if folder is None:
        return inputs[0].parent / AVERAGED_NAME
    return (folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder) / AVERAGED_NAME


if __name__ == "__main__":
    main()
