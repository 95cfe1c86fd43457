"""The training loop: batch -> backward step -> clip -> optimizer step -> poly LR -> log -> checkpoint.

Everything arrives as plain objects (model, optimizer, loader, ...); the tool builds them from the config.
One iteration is one optimizer step on one global batch. The loop runs from ``start_iteration`` to
``max_iters`` and writes a checkpoint every ``checkpoint_every`` iterations and after the last one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from mseg_semantic.training.checkpoint import capture_rng_state, save_checkpoint
from mseg_semantic.training.distributed import DistInfo, all_gather_objects, all_reduce_sum, unwrap
from mseg_semantic.training.logging import TrainingReporter
from mseg_semantic.training.step import BackwardStep, StepContext, StepOutput, global_pixel_mean, per_dataset_mean

log = logging.getLogger("mseg_semantic.training")


class NonFiniteLossError(RuntimeError):
    """The loss became nan or inf; the run stops before the optimizer applies the step."""


def ce_backward_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, ctx: StepContext) -> StepOutput:
    """Cross-entropy over the valid (non-ignore) pixels of the *global* batch (see :func:`global_pixel_mean`)."""
    with ctx.autocast():
        logits = model(images)
    pixel_loss = F.cross_entropy(logits.float(), labels, ignore_index=ctx.ignore_index, reduction="none")
    valid_per_image = (labels != ctx.ignore_index).flatten(1).sum(1)
    loss = global_pixel_mean(pixel_loss.sum(), valid_per_image.sum(), ctx)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
    else:
        loss.backward()
    per_dataset = per_dataset_mean(pixel_loss.detach().flatten(1).sum(1), valid_per_image, dataset_index, ctx.num_datasets)
    return StepOutput(loss=loss.detach(), per_dataset_loss=per_dataset)


@dataclass
class LoopSettings:
    max_iters: int
    checkpoint_dir: Path
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    grad_clip: float | None = None
    channels_last: bool = False
    freeze_bn: bool = False


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


def training_state(model, optimizer, scheduler, scaler, loader, iteration: int, info: DistInfo, extra: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint dict (on rank 0; ``None`` elsewhere). Every rank must call it: RNG and sampler states are gathered."""
    rng_states = all_gather_objects(capture_rng_state(info.device), info)
    sampler_states = all_gather_objects(loader.state_dict() if hasattr(loader, "state_dict") else None, info)
    if not info.is_main:
        return None
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "sampler": sampler_states,  # one entry per rank
        "rng": rng_states,  # one entry per rank
        "iteration": iteration,
        "world_size": info.world_size,
    }
    state.update(extra)
    return state


def _reduce_for_log(out: StepOutput, info: DistInfo) -> tuple[float, list[float]]:
    """Mean loss over ranks and per-dataset means over the ranks that saw the dataset (nan: none did)."""
    per_dataset = out.per_dataset_loss.detach().float()
    seen = ~torch.isnan(per_dataset)
    packed = torch.cat([out.loss.detach().float().reshape(1), torch.where(seen, per_dataset, torch.zeros_like(per_dataset)), seen.float()])
    all_reduce_sum(packed, info)
    n = per_dataset.numel()
    loss = packed[0].item() / info.world_size
    sums, counts = packed[1 : 1 + n].tolist(), packed[1 + n :].tolist()
    return loss, [s / c if c > 0 else float("nan") for s, c in zip(sums, counts)]


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    loader: Iterable[dict[str, torch.Tensor]],
    backward_step: BackwardStep,
    step_context: StepContext,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    settings: LoopSettings,
    info: DistInfo,
    reporter: TrainingReporter,
    start_iteration: int = 0,
    checkpoint_extra: dict[str, Any] | None = None,
    on_iteration: Callable[[int], None] | None = None,
    stats: LoopStats | None = None,
) -> LoopStats:
    """Train from ``start_iteration`` to ``settings.max_iters``; returns timing statistics.

    ``on_iteration(done)`` is called after each step, with ``stats`` (pass your own to read it live) up to date.
    Raises :class:`NonFiniteLossError` (on every rank) when the loss is not finite; the step is not applied
    and no checkpoint is written, so the newest checkpoint on disk is the last good state.
    """
    stats = stats if stats is not None else LoopStats()
    extra = dict(checkpoint_extra or {})
    params = [p for p in model.parameters() if p.requires_grad]
    set_train_mode(model, settings.freeze_bn)
    batches = iter(loader)
    started = time.perf_counter()
    last_saved = start_iteration
    for iteration in range(start_iteration, settings.max_iters):
        waited = time.perf_counter()
        batch = next(batches)
        stats.data_wait_seconds += time.perf_counter() - waited

        images = normalize(batch["image"].to(info.device, non_blocking=True))
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["label"].to(info.device, non_blocking=True)
        dataset_index = batch["dataset_index"].to(info.device, non_blocking=True)

        optimizer.zero_grad(set_to_none=True)
        out = backward_step(model, images, labels, dataset_index, step_context)
        lr = optimizer.param_groups[0]["lr"]
        loss, per_dataset = _reduce_for_log(out, info)
        if not math.isfinite(loss):
            named = ", ".join(f"{step_context.dataset_name(i)}={v:.4g}" for i, v in enumerate(per_dataset))
            raise NonFiniteLossError(
                f"non-finite loss {loss} at iteration {iteration + 1} (lr {lr:.6g}; per dataset: {named}). "
                f"The step was not applied and no checkpoint was written; the newest checkpoint in {settings.checkpoint_dir} "
                f"(iteration {last_saved}) is the last good state. Lower TRAIN.base_lr, set TRAIN.grad_clip, or use precision=fp32/bf16."
            )
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
        done = iteration + 1
        stats.iterations += 1

        scalars = dict(out.scalars)
        if scaler is not None:
            scalars["amp/loss_scale"] = float(scaler.get_scale())
        reporter.iteration(done, loss, lr, {step_context.dataset_name(i): v for i, v in enumerate(per_dataset)}, scalars)
        if on_iteration is not None:
            on_iteration(done)

        if done % settings.checkpoint_every == 0 or done == settings.max_iters:
            state = training_state(model, optimizer, scheduler, scaler, loader, done, info, extra)
            if state is not None:
                path = save_checkpoint(state, settings.checkpoint_dir, done, settings.keep_checkpoints)
                log.info(f"checkpoint {path}")
            last_saved = done
    stats.wall_seconds = time.perf_counter() - started
    return stats


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    iterations: int,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    info: DistInfo,
    channels_last: bool = False,
) -> int:
    """Replace BatchNorm running statistics by their plain mean over ``iterations`` training batches ("precise BN").

    With MSeg's BN momentum of 0.01 the running statistics trail the weights by a few hundred iterations, which
    matters only for short runs. Forward passes only (no gradient, weights unchanged); the statistics are
    averaged over ranks. Returns the number of BatchNorm layers updated.
    """
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
        images = normalize(next(batches)["image"].to(info.device, non_blocking=True))
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

