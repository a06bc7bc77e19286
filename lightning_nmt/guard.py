"""The non-finite guard: a training step whose loss or gradient norm is NaN/inf is skipped (no update); after
`optim.max_nonfinite_steps` of them in a row, training stops with `TrainingDiverged`."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from lightning_nmt.errors import TrainingDiverged


class NonFiniteGuard:
    """Counts the skipped steps of one run: `steps` in all, `streak` in a row (last.ckpt is not refreshed during a
    streak, `resume.LastCheckpoint`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.steps = 0
        self.streak = 0
        self.first_bad_step = 0
        self.loss_finite = True

    def check_loss(self, mean_loss: torch.Tensor, step: int, world_size: int) -> bool:
        """Whether the step goes on to its backward pass. A non-finite loss on one device skips the step here;
        under DDP every rank needs its backward pass, and `clip_and_check` drops the update after it."""
        self.loss_finite = bool(torch.isfinite(mean_loss))
        if not self.loss_finite and world_size == 1:
            self.bad_step("loss", step)
            return False
        return True

    def clip_and_check(self, module: L.LightningModule, optimizer: torch.optim.Optimizer,
                       gradient_clip_val: float | None, gradient_clip_algorithm: str | None) -> None:
        """Clip as configured, then drop the update if the gradient norm (or the loss) is NaN/inf.

        Under 16-mixed the GradScaler already skips such steps and lowers its scale, as Lightning users expect;
        those are not counted. On one device or DDP the clipping norm is the one checked (one pass over the
        gradients); other strategies clip their own way and the norm is computed apart.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:  # the step was skipped before its backward pass
            return
        trainer = module.trainer
        plain = isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and plain:
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            norm = torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]).norm()
        finite = getattr(trainer.precision_plugin, "scaler", None) is not None or bool(torch.isfinite(norm))
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite and self.loss_finite:
            self.streak = 0
            return
        optimizer.zero_grad(set_to_none=True)  # Adam skips parameters without a gradient: no update at all
        self.bad_step("gradient norm" if self.loss_finite else "loss", module.global_step)

    def bad_step(self, what: str, step: int) -> None:
        """Count a skipped step; raise `TrainingDiverged` at `limit` in a row."""
        self.streak += 1
        self.steps += 1
        if self.streak == 1:
            self.first_bad_step = step + 1
        if self.streak >= self.limit:
            raise TrainingDiverged(
                f"training diverged: the {what} was NaN/inf at {self.streak} consecutive steps, from step "
                f"{self.first_bad_step} (optim.max_nonfinite_steps={self.limit}); none of them was applied")
