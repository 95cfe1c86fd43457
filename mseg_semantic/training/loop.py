"""The training loop: batch -> optimizer step -> poly LR -> report -> hooks -> checkpoint, in the shape of detectron2's
SimpleTrainer.

Everything arrives as plain objects (the run's :class:`~mseg_semantic.training.checkpoint.TrainingParts`, a
backward step, a checkpointer, a reporter); :mod:`mseg_semantic.training.setup` builds them from the config. One
iteration is one optimizer step (:mod:`mseg_semantic.training.step`: eager, or graphed with ``cuda_graphs``) on one
global batch, from ``start_iteration`` to ``settings.max_iters``. The host never waits for the device between report
iterations; report and checkpoint iterations are the sync points, where a non-finite loss is raised and the ranks
agree on a preemption signal.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from mseg_semantic.data.transforms import normalize_images
from mseg_semantic.distributed import DistInfo, all_reduce_sum
from mseg_semantic.model import unwrap_model
from mseg_semantic.training.checkpoint import Checkpointer, TrainingParts
from mseg_semantic.training.gradients import BackwardStep, StepContext, StepOutput
from mseg_semantic.training.preemption import Preempted, PreemptionSignal
from mseg_semantic.training.report import TrainingReporter
from mseg_semantic.training.speed import GraphedStep
from mseg_semantic.training.step import EagerStep, NonFiniteLossError, OptimizerStep

log = logging.getLogger("mseg_semantic.training")

__all__ = ["LoopSettings", "LoopStats", "NonFiniteLossError", "optimizer_step_for", "recalibrate_batchnorm", "set_train_mode", "train_loop"]


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


def optimizer_step_for(parts: TrainingParts, backward_step: BackwardStep, ctx: StepContext, settings: LoopSettings, info: DistInfo,
                       checkpoints: str) -> OptimizerStep:
    """The graphed step with ``cuda_graphs`` (captured on CUDA, eager elsewhere), else the eager one."""
    if settings.cuda_graphs:
        return GraphedStep(parts.model, parts.optimizer, backward_step, ctx, settings.grad_clip, capture=info.device.type == "cuda",
                           info=info, checkpoints=checkpoints)
    return EagerStep(parts.model, parts.optimizer, backward_step, ctx, settings.grad_clip, parts.scaler, info, checkpoints)


def to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch contract on the device: normalised float images, int64 labels, dataset indices."""
    images = normalize_images(batch["image"].to(device, non_blocking=True))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["label"].to(device, non_blocking=True).long(), batch["dataset_index"].to(device, non_blocking=True)


def report_step(reporter: TrainingReporter, iteration: int, out: StepOutput, parts: TrainingParts, ctx: StepContext, info: DistInfo) -> None:
    """One log line: the mean loss over ranks and per-dataset means over the ranks that saw the dataset (nan: none did)."""
    per_dataset = out.per_dataset_loss.detach().float()
    seen = ~torch.isnan(per_dataset)
    packed = torch.cat([out.loss.detach().float().reshape(1), torch.where(seen, per_dataset, torch.zeros_like(per_dataset)), seen.float()])
    values = all_reduce_sum(packed, info).tolist()
    n = per_dataset.numel()
    means = [s / c if c > 0 else float("nan") for s, c in zip(values[1 : 1 + n], values[1 + n :])]
    scalars = dict(out.scalars)
    if parts.scaler is not None:
        scalars["amp/loss_scale"] = float(parts.scaler.get_scale())
    # the last group runs at base_lr's schedule (layer-decay groups are ordered by layer, the head last)
    reporter.report(iteration, values[0] / info.world_size, float(parts.optimizer.param_groups[-1]["lr"]),
                    {ctx.dataset_name(i): v for i, v in enumerate(means)}, scalars)


def stop_requested(preemption: PreemptionSignal | None, info: DistInfo, sync_point: bool = True) -> bool:
    """Whether every rank agrees to stop now (ranks compare their signals at sync points only)."""
    if preemption is None:
        return False
    if not info.distributed:
        return preemption.received is not None
    if not sync_point:
        return False
    flag = torch.tensor([1.0 if preemption.received else 0.0], device=info.device)
    return bool(all_reduce_sum(flag, info).item() > 0)


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
    step = optimizer_step_for(parts, backward_step, step_context, settings, info, str(checkpointer.directory))
    set_train_mode(parts.model, settings.freeze_bn)
    batches = iter(parts.loader)
    started = time.perf_counter()
    for iteration in range(start_iteration, settings.max_iters):
        waited = time.perf_counter()
        batch = next(batches)
        stats.data_wait_seconds += time.perf_counter() - waited

        done = iteration + 1
        out = step(*to_device(batch, info.device, settings.channels_last), iteration=done)
        parts.scheduler.step()
        stats.iterations += 1
        reporter.tick()

        checkpoint_due = done % settings.checkpoint_every == 0 or done == settings.max_iters
        sync_point = reporter.is_report_iteration(done) or checkpoint_due
        if sync_point:
            step.check_finite()
        if reporter.is_report_iteration(done):
            report_step(reporter, done, out, parts, step_context, info)
        for hook in hooks:
            hook(done, stats)
        if checkpoint_due:
            checkpointer.save(parts, done)
        if stop_requested(preemption, info, sync_point) and done < settings.max_iters:
            step.check_finite()
            if checkpointer.last_saved_iteration != done:
                checkpointer.save(parts, done)
            stats.wall_seconds = time.perf_counter() - started
            raise Preempted(f"stopped by {preemption.received} after iteration {done} of {settings.max_iters}; "
                            f"checkpoint written to {checkpointer.directory}: {settings.resume_hint}")
    step.check_finite()
    stats.wall_seconds = time.perf_counter() - started
    return stats


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    iterations: int,
    info: DistInfo,
    channels_last: bool = False,
    preemption: PreemptionSignal | None = None,
    resume_hint: str = LoopSettings.resume_hint,
) -> int:
    """Replace BatchNorm running statistics by their plain mean over ``iterations`` training batches ("precise BN").

    With MSeg's BN momentum of 0.01 the running statistics trail the weights by a few hundred iterations, which
    matters only for short runs. Forward passes only (no gradient, weights unchanged); the statistics are
    averaged over ranks. Returns the number of BatchNorm layers updated. A preemption signal stops it between
    batches (:class:`Preempted`: the last checkpoint holds the trained weights, and a rerun does the rest).
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
        if stop_requested(preemption, info):
            raise Preempted(f"stopped by {preemption.received} during precise BN, after the last training iteration; the "
                            f"last checkpoint holds the trained weights: {resume_hint} (precise BN and model_final.pth)")
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
