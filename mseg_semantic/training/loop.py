"""The training loop: batch -> backward step -> clip -> optimizer step -> poly LR -> report -> checkpoint.

Everything arrives as plain objects (the run's :class:`~mseg_semantic.training.checkpoint.TrainingParts`, a
backward step, a checkpointer, a reporter); :mod:`mseg_semantic.training.run` builds them from the config. One
iteration is one optimizer step on one global batch, from ``start_iteration`` to ``settings.max_iters``.

The host never waits for the device between report iterations. With a fused optimizer a non-finite loss is
caught on the device: the optimizer skips that update (``optimizer.found_inf``) and the loop raises
:class:`NonFiniteLossError` at the next report iteration, before any checkpoint; without one (the CPU default)
the loss is checked on the host every iteration, where reading it costs nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from mseg_semantic.data.transforms import normalize_images
from mseg_semantic.errors import EXIT_NON_FINITE
from mseg_semantic.model import unwrap_model
from mseg_semantic.training.checkpoint import Checkpointer, TrainingParts
from mseg_semantic.training.distributed import DistInfo, all_reduce_max, all_reduce_sum
from mseg_semantic.training.gradients import BackwardStep, StepContext, StepOutput
from mseg_semantic.training.preemption import Preempted, PreemptionSignal
from mseg_semantic.training.report import TrainingReporter
from mseg_semantic.training.speed import GraphedStep

log = logging.getLogger("mseg_semantic.training")

__all__ = ["LoopSettings", "LoopStats", "NonFiniteLossError", "recalibrate_batchnorm", "set_train_mode", "train_loop"]


class NonFiniteLossError(RuntimeError):
    """The loss became nan or inf; that step was not applied and no checkpoint was written after it."""

    exit_code = EXIT_NON_FINITE


@dataclass(frozen=True)
class LoopSettings:
    max_iters: int
    checkpoint_every: int
    grad_clip: float | None = None
    channels_last: bool = False
    freeze_bn: bool = False
    cuda_graphs: bool = False  # replay the step as one CUDA graph (captured on the first batch; eager off CUDA)
    resume_hint: str = "run the same command again to resume"  # the last words of a preemption's message


@dataclass
class LoopStats:
    """Wall time split, for the benchmark and the final log line."""

    iterations: int = 0
    data_wait_seconds: float = 0.0
    wall_seconds: float = 0.0


def set_train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    """``model.train()``; with ``freeze_bn`` BatchNorm layers keep their running statistics (eval mode)."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _reduce_for_log(out: StepOutput, info: DistInfo) -> tuple[float, list[float]]:
    """Mean loss over ranks and per-dataset means over the ranks that saw the dataset (nan: none did)."""
    per_dataset = out.per_dataset_loss.detach().float()
    seen = ~torch.isnan(per_dataset)
    packed = torch.cat([out.loss.detach().float().reshape(1), torch.where(seen, per_dataset, torch.zeros_like(per_dataset)), seen.float()])
    all_reduce_sum(packed, info)
    n = per_dataset.numel()
    values = packed.tolist()
    sums, counts = values[1 : 1 + n], values[1 + n :]
    return values[0] / info.world_size, [s / c if c > 0 else float("nan") for s, c in zip(sums, counts)]


class _NonFiniteWatch:
    """Where a non-finite loss is looked for: on the host every step, or on the device until a sync point.

    Every rank reaches the same verdict (the flags are reduced over ranks), so every rank raises together.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, flagged_elsewhere: bool, info: DistInfo):
        # the fused optimizer skips a flagged update on the device; a grad scaler (inf gradients) and the graphed
        # step (inside the graph) set the flag themselves
        self.on_device = bool(optimizer.defaults.get("fused"))
        self.flag_optimizer = self.on_device and not flagged_elsewhere
        self.optimizer = optimizer
        self.info = info
        self.first_bad = torch.full((1,), -1, dtype=torch.int64, device=info.device) if self.on_device else None

    def after_backward(self, out: StepOutput, iteration: int, checkpoints: str, step_context: StepContext) -> None:
        if not self.on_device:
            bad = torch.logical_not(torch.isfinite(out.loss.detach())).float().reshape(1)
            if bool(all_reduce_sum(bad, self.info).item() > 0):
                raise _non_finite(float(out.loss), iteration, float(self.optimizer.param_groups[0]["lr"]), out, step_context, checkpoints)
            return
        bad = ~torch.isfinite(out.loss.detach().reshape(1))
        if self.flag_optimizer:
            self.optimizer.found_inf = bad.to(torch.float32).reshape(())
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, iteration), self.first_bad)

    def check(self, checkpoints: str) -> None:
        """A sync point: raise if any step since the start was non-finite."""
        if not self.on_device:
            return
        first_bad = int(all_reduce_max(self.first_bad.clone(), self.info).item())
        if first_bad >= 0:
            raise NonFiniteLossError(
                f"non-finite loss at iteration {first_bad}; that update was skipped on the device and no checkpoint "
                f"was written after it: {checkpoints} holds the last good state. Lower TRAIN.base_lr, set TRAIN.grad_clip, "
                f"or use precision=fp32/bf16."
            )


def _non_finite(loss: float, iteration: int, lr: float, out: StepOutput, ctx: StepContext, checkpoints: str) -> NonFiniteLossError:
    per_dataset = ", ".join(f"{ctx.dataset_name(i)}={v:.4g}" for i, v in enumerate(out.per_dataset_loss.tolist()))
    return NonFiniteLossError(
        f"non-finite loss {loss} at iteration {iteration} (lr {lr:.6g}; per dataset: {per_dataset}). The step was not "
        f"applied and no checkpoint was written: {checkpoints} holds the last good state. Lower TRAIN.base_lr, set "
        f"TRAIN.grad_clip, or use precision=fp32/bf16."
    )


def _stop_requested(preemption: PreemptionSignal | None, info: DistInfo, sync_point: bool) -> bool:
    """Whether every rank agrees to stop now (ranks compare their signals at sync points only)."""
    if preemption is None:
        return False
    if not info.distributed:
        return preemption.received is not None
    if not sync_point:
        return False
    flag = torch.tensor([1.0 if preemption.received else 0.0], device=info.device)
    all_reduce_sum(flag, info)
    return bool(flag.item() > 0)


def train_loop(
    parts: TrainingParts,
    backward_step: BackwardStep,
    step_context: StepContext,
    checkpointer: Checkpointer,
    settings: LoopSettings,
    info: DistInfo,
    reporter: TrainingReporter,
    start_iteration: int = 0,
    hooks: Sequence[Callable[[int, LoopStats], None]] = (),
    preemption: PreemptionSignal | None = None,
) -> LoopStats:
    """Train from ``start_iteration`` to ``settings.max_iters``; returns timing statistics.

    ``hooks``: called as ``hook(finished iterations, stats so far)`` after each step (validation, benchmarks).
    Raises :class:`NonFiniteLossError` (on every rank) when the loss is not finite, and
    :class:`~mseg_semantic.training.preemption.Preempted` after writing a checkpoint when ``preemption`` received
    a signal.
    """
    stats = LoopStats()
    model, optimizer, scheduler, scaler = parts.model, parts.optimizer, parts.scheduler, parts.scaler
    params = [p for p in model.parameters() if p.requires_grad]
    watch = _NonFiniteWatch(optimizer, scaler is not None or settings.cuda_graphs, info)
    graphed: GraphedStep | None = None
    set_train_mode(model, settings.freeze_bn)
    batches = iter(parts.loader)
    started = time.perf_counter()
    checkpoints = str(checkpointer.directory)
    for iteration in range(start_iteration, settings.max_iters):
        waited = time.perf_counter()
        batch = next(batches)
        stats.data_wait_seconds += time.perf_counter() - waited

        images = normalize_images(batch["image"].to(info.device, non_blocking=True))
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["label"].to(info.device, non_blocking=True).long()
        dataset_index = batch["dataset_index"].to(info.device, non_blocking=True)

        done = iteration + 1
        if settings.cuda_graphs:
            if graphed is None:
                example = {"image": images, "label": labels, "dataset_index": dataset_index}
                graphed = GraphedStep(model, optimizer, backward_step, step_context, settings.grad_clip, example,
                                      capture=info.device.type == "cuda")
            out = graphed(images, labels, dataset_index)
            watch.after_backward(out, done, checkpoints, step_context)
        else:
            optimizer.zero_grad(set_to_none=True)
            out = backward_step(model, images, labels, dataset_index, step_context)
            watch.after_backward(out, done, checkpoints, step_context)
            if settings.grad_clip is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        scheduler.step()
        stats.iterations += 1
        reporter.tick()

        checkpoint_due = done % settings.checkpoint_every == 0 or done == settings.max_iters
        sync_point = reporter.is_report_iteration(done) or checkpoint_due
        if sync_point:
            watch.check(checkpoints)
        if reporter.is_report_iteration(done):
            loss, per_dataset = _reduce_for_log(out, info)
            scalars = dict(out.scalars)
            if scaler is not None:
                scalars["amp/loss_scale"] = float(scaler.get_scale())
            lr = float(optimizer.param_groups[0]["lr"])
            reporter.report(done, loss, lr, {step_context.dataset_name(i): v for i, v in enumerate(per_dataset)}, scalars)
        for hook in hooks:
            hook(done, stats)
        if checkpoint_due:
            checkpointer.save(parts, done)
        if _stop_requested(preemption, info, sync_point) and done < settings.max_iters:
            watch.check(checkpoints)
            if checkpointer.last_saved_iteration != done:
                checkpointer.save(parts, done)
            stats.wall_seconds = time.perf_counter() - started
            raise Preempted(f"stopped by {preemption.received} after iteration {done} of {settings.max_iters}; "
                            f"checkpoint written to {checkpoints}: {settings.resume_hint}")
    watch.check(checkpoints)
    stats.wall_seconds = time.perf_counter() - started
    return stats


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    iterations: int,
    info: DistInfo,
    channels_last: bool = False,
) -> int:
    """Replace BatchNorm running statistics by their plain mean over ``iterations`` training batches ("precise BN").

    With MSeg's BN momentum of 0.01 the running statistics trail the weights by a few hundred iterations, which
    matters only for short runs. Forward passes only (no gradient, weights unchanged); the statistics are
    averaged over ranks. Returns the number of BatchNorm layers updated.
    """
    model = unwrap_model(model)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if iterations <= 0 or not layers:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: the plain mean over the batches seen
    model.train()
    batches = iter(loader)
    for _ in range(iterations):
        images = normalize_images(next(batches)["image"].to(info.device, non_blocking=True))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        model(images)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
        if info.distributed:
            for buffer in (layer.running_mean, layer.running_var):
                all_reduce_sum(buffer, info)
                buffer /= info.world_size
    model.train(was_training)
    return len(layers)
