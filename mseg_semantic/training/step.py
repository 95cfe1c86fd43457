"""The optimizer step: one global batch -> zeroed gradients, the backward step, clipping, the update.

:class:`OptimizerStep` is the one interface the loop calls; :class:`EagerStep` (the grad scaler, clipping) runs it
as Python launches every iteration, :class:`~mseg_semantic.training.speed.GraphedStep` replays it as one CUDA graph.
Each owns how a non-finite loss is caught:

- on the host, every step (the plain optimizer, the CPU default): reading the loss costs nothing there, and the
  step raises :class:`NonFiniteLossError` before the update is applied;
- on the device (the fused optimizer, the graphed step): the update of that step is skipped on the device
  (``optimizer.found_inf``), the first bad iteration is remembered in a device tensor, and :meth:`check_finite`
  (called by the loop at report and checkpoint iterations, its sync points) raises, before any checkpoint is written.

Every rank reaches the same verdict (the flags are reduced over ranks), so every rank raises together.
"""

from __future__ import annotations

from typing import Protocol

import torch

from mseg_semantic.distributed import DistInfo, all_reduce_max, all_reduce_sum
from mseg_semantic.errors import EXIT_NON_FINITE
from mseg_semantic.training.gradients import BackwardStep, StepContext, StepOutput

__all__ = ["EagerStep", "NonFiniteLossError", "OptimizerStep"]

_WAY_OUT = "Lower TRAIN.base_lr, set TRAIN.grad_clip, or use precision=fp32/bf16."
_BATCHNORM = ("BatchNorm running statistics had already seen that batch in its forward pass; the checkpoint's are "
              "those of the last good step.")


class NonFiniteLossError(RuntimeError):
    """The loss became nan or inf; that step was not applied and no checkpoint was written after it."""

    exit_code = EXIT_NON_FINITE


class OptimizerStep(Protocol):
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, iteration: int | None = None) -> StepOutput:
        """One optimizer step on one batch (``iteration``: its 1-based number, for the non-finite message)."""

    def check_finite(self) -> None:
        """A sync point: raise :class:`NonFiniteLossError` if a step so far had a non-finite loss."""


class DeviceNonFiniteFlag:
    """The first iteration whose loss was not finite, kept on the device until a sync point reads it."""

    def __init__(self, info: DistInfo, checkpoints: str, diagnostics: tuple = ()):
        self.info = info
        self.checkpoints = checkpoints
        self.diagnostics = diagnostics
        self.first_bad = torch.full((1,), -1, dtype=torch.int64, device=info.device)

    def record(self, bad: torch.Tensor, iteration: int) -> None:
        self.first_bad = torch.where(bad.reshape(1) & (self.first_bad < 0), torch.full_like(self.first_bad, iteration), self.first_bad)

    def check(self) -> None:
        first_bad = int(all_reduce_max(self.first_bad.clone(), self.info).item())
        if first_bad >= 0:
            for diagnose in self.diagnostics:
                diagnose()
            raise NonFiniteLossError(
                f"non-finite loss at iteration {first_bad}; that update was skipped on the device and no checkpoint "
                f"was written after it: {self.checkpoints} holds the last good state. {_WAY_OUT} {_BATCHNORM}")


class EagerStep:
    """The step as Python launches: zero, backward step, (unscale,) clip, update through the grad scaler when there is one."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, backward_step: BackwardStep, ctx: StepContext,
                 grad_clip: float | None = None, scaler: torch.amp.GradScaler | None = None, info: DistInfo = DistInfo(),
                 checkpoints: str = "the checkpoint directory"):
        self.model, self.optimizer, self.backward_step, self.ctx = model, optimizer, backward_step, ctx
        self.grad_clip, self.scaler, self.info, self.checkpoints = grad_clip, scaler, info, checkpoints
        self.params = [p for p in model.parameters() if p.requires_grad]
        # the fused optimizer skips a flagged update on the device; a grad scaler flags inf gradients itself
        self.device_flag = DeviceNonFiniteFlag(info, checkpoints, ctx.diagnostics) if optimizer.defaults.get("fused") else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, iteration: int | None = None) -> StepOutput:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.backward_step(self.model, images, labels, dataset_index, self.ctx)
        bad = torch.logical_not(torch.isfinite(out.loss.detach())).reshape(1)
        if self.device_flag is None:
            if bool(all_reduce_sum(bad.float(), self.info).item() > 0):
                for diagnose in self.ctx.diagnostics:
                    diagnose()
                raise self._non_finite(out, iteration)
        else:
            if self.scaler is None:
                self.optimizer.found_inf = bad.to(torch.float32).reshape(())
            self.device_flag.record(bad, -1 if iteration is None else iteration)
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return out

    def check_finite(self) -> None:
        if self.device_flag is not None:
            self.device_flag.check()

    def _non_finite(self, out: StepOutput, iteration: int | None) -> NonFiniteLossError:
        per_dataset = ", ".join(f"{self.ctx.dataset_name(i)}={v:.4g}" for i, v in enumerate(out.per_dataset_loss.tolist()))
        lr = float(self.optimizer.param_groups[0]["lr"])
        return NonFiniteLossError(
            f"non-finite loss {float(out.loss)} at iteration {iteration} (lr {lr:.6g}; per dataset: {per_dataset}). The step was not "
            f"applied and no checkpoint was written: {self.checkpoints} holds the last good state. {_WAY_OUT} {_BATCHNORM}")
