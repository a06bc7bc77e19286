"""Exact resume: atomic checkpoint files, the data position and RNG states inside every checkpoint, and a
clean stop (checkpoint first) on SIGTERM / SIGUSR1 / SIGUSR2.

Everything stored here is plain Python data or tensors, so checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_nmt.atomic import atomic_path
from lightning_nmt.errors import WriteError

log = logging.getLogger("lightning_nmt")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
RESUME_KEY = "resume_state"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file in the checkpoint's directory, fsync, then `os.replace`: a kill during
    a save leaves the previous file intact (Lightning's own save goes through a temporary file in the
    system temp dir and `shutil.move`, a copy without fsync when /tmp is another filesystem).
    Loads with `weights_only=True` unless asked otherwise, so a checkpoint cannot run code."""

    def __init__(self, last: Path | None = None) -> None:
        super().__init__()
        self.last = last  # the run's last.ckpt, which may predate this process (a resumed run)
        self.saved: dict[Path, int] = {}  # checkpoint written by this process -> its global step

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        """Write atomically. A failed write the user can fix (a full disk, a directory that cannot be written)
        is a `WriteError` naming the file and the complete checkpoint that is intact."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(path)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                writer = _WriteRecorder(f)
                try:
                    torch.save(checkpoint, writer)
                except RuntimeError:  # torch reports a failed write as "[enforce fail ...] unexpected pos"
                    if writer.error is None:
                        raise
                    raise writer.error from None
                f.flush()
                os.fsync(f.fileno())
        except WriteError as err:
            raise err.with_intact(self.intact(path)) from None
        self.saved.pop(path, None)  # re-inserted: the dict's order is the order of the latest writes
        self.saved[path] = int(checkpoint.get("global_step", 0))

    def intact(self, failed: Path | None = None) -> str:
        """Which complete checkpoint is left after a failed write (of checkpoint `failed`, or of another file)."""
        if failed is not None and failed.is_file():
            step = self.saved.get(failed)
            return f"the previous {failed.name} is intact" + (f" (step {step})" if step is not None else "")
        # the highest step; of files at the same step, the last written (last.ckpt, which resume=auto reads)
        for path, step in sorted(reversed(self.saved.items()), key=lambda item: -item[1]):
            if path.is_file():
                return f"the last complete checkpoint is {path} (step {step})"
        if self.last is not None and self.last.is_file():
            return f"the last complete checkpoint is {self.last}"
        return "no checkpoint of this run was written"

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """`torch.load` of a local file, `weights_only=True` unless asked otherwise (Lightning's own method takes
        `weights_only` from 2.6 on)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return torch.load(path, map_location=map_location or (lambda storage, loc: storage),
                          weights_only=True if weights_only is None else weights_only)


class _WriteRecorder:
    """A file object for `torch.save` that keeps the OSError of a failed write (torch replaces it with a
    RuntimeError that does not say why)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors and plain Python values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`; CUDA states are restored when the device count matches."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class ResumeState(L.Callback):
    """Stores the position inside the epoch and the RNG states in each checkpoint; on resume the train
    batch sampler continues with the batch after the last one trained, and the RNG states are restored
    just before that batch, so a resumed run takes the same steps as an uninterrupted one.

    The position is the trainer's count of batches processed in the epoch, not the sampler's own count
    (which includes batches prefetched by DataLoader workers).
    """

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None
        self._behind = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        checkpoint[RESUME_KEY] = {
            "sampler": {"epoch": trainer.current_epoch, "batches_done": progress.processed},
            "rng": rng_state(),
            "in_batch_end": progress.processed > progress.completed,  # saved by on_train_batch_end
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(RESUME_KEY)
        if state is None:
            log.warning("the checkpoint has no data position or RNG state: the epoch restarts")
            return
        sampler = getattr(trainer.datamodule, "train_sampler", None)
        if sampler is not None:
            sampler.load_state_dict(state["sampler"])
            # Lightning then warns that a mid-epoch resume "can cause unreliable results": not so here, the
            # sampler continues after the last trained batch.
            warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
        self._pending_rng = state["rng"]
        # Lightning < 2.5 restores the logging step of a checkpoint saved in on_train_batch_end one behind (later
        # releases correct it themselves, `restarted_on_train_batch_end`): the logs of a resumed run would repeat
        # a step and shift the rest.
        self._behind = state.get("in_batch_end", False) and not hasattr(trainer.fit_loop.epoch_loop,
                                                                        "restarted_on_train_batch_end")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._behind:
            trainer.fit_loop.epoch_loop._batches_that_stepped += 1
            self._behind = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint: {path}")
        self.signum, self.step, self.path = signum, step, path

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention for a process ended by that signal."""
        return 128 + self.signum


class LastCheckpoint(Checkpoint):
    """Keeps `path` (last.ckpt) the latest state of the run: after each validation, every
    `every_n_train_steps` steps, at the end of training, and on SIGTERM, SIGUSR1 or SIGUSR2 (SLURM preemption
    or time limit), after which training stops by raising `Preempted`. All ranks call
    `trainer.save_checkpoint` together; rank 0 writes.

    A `Checkpoint` subclass because Lightning runs checkpoint callbacks after all others, in list order: placed
    after the best-k ModelCheckpoint, the save after a validation holds that validation's best-k entry and
    early-stopping count (as a plain callback it ran before them: a run resumed from it forgot the checkpoint
    that validation kept). (ModelCheckpoint's `save_last` only refreshes last.ckpt when a top-k checkpoint was
    saved at that step.)
    Signals are acted on at the next training batch end. The handlers replace Lightning's while training runs;
    a Python handler installed before the run (submitit's requeue handler on SIGUSR2) is called after the
    checkpoint is saved.
    """

    def __init__(self, path: str | os.PathLike, every_n_train_steps: int | None = None) -> None:
        self.path = Path(path)
        self.every_n_train_steps = every_n_train_steps
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        if getattr(getattr(trainer.lightning_module, "guard", None), "streak", 0):
            log.warning("step %d: not refreshing %s while training steps are NaN/inf", trainer.global_step,
                        self.path.name)
            return
        for logger in trainer.loggers:  # the logs on disk cover every step the checkpoint does: a kill loses neither
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
        self._saved_step = trainer.global_step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        for signum in self._previous:
            signal.signal(signum, self._notify)

    def _notify(self, signum: int, frame: Any) -> None:
        log.warning("received %s: saving a checkpoint at the end of this batch", signal.Signals(signum).name)
        self.received = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._stop(trainer, self.received or signal.SIGTERM)
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step != self._saved_step:
            self._save(trainer)

    def _stop(self, trainer: L.Trainer, signum: int) -> None:
        self._save(trainer)
        previous = self._previous.get(signum)
        self._restore_handlers()
        if callable(previous):
            previous(signum, None)  # e.g. submitit: requeue the job (and exit)
        raise Preempted(signum, trainer.global_step, self.path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if trainer.global_step != self._saved_step:
            self._save(trainer)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's own requeue (an `hpc_ckpt_*.ckpt` on SIGUSR1) is switched off: signals are
    handled by `LastCheckpoint` and the requeue by submitit or SLURM itself."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class ResumedCSVLogger(CSVLogger):
    """Lightning's `CSVLogger` deletes an existing metrics.csv when it starts writing. A run resumed from a
    checkpoint at `resume_step` keeps the rows logged before that step instead (it logs the later ones again)."""

    def __init__(self, *args: Any, resume_step: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumedWriter(self.log_dir, self.resume_step)
        return self._experiment


class _ResumedWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Called by the writer's constructor: keep the rows before `resume_step` (atomically rewritten)."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if int(float(row["step"])) < self.resume_step]
            header = list(reader.fieldnames or [])
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(header)
