"""The contract between the training loop and the ways to make gradients, and what those ways share.

A *backward step* takes one batch, runs the forward pass under ``ctx.autocast()``, and leaves the gradients in
``param.grad`` (through ``ctx.scaler`` when one is given). The loop owns everything else: zeroing, unscaling,
clipping, ``optimizer.step()``, the learning rate, logging and checkpoints. A step's own options (MGDA's
solver settings, CCSA's pairs) are typed and bound once, when the run is built
(:func:`mseg_semantic.training.gradients.backward_step_for`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Protocol

import torch
import torch.nn.functional as F

from mseg_semantic.distributed import DistInfo, all_reduce_sum
from mseg_semantic.model.upsample import upsample_logits_nhwc
from mseg_semantic.taxonomy import IGNORE_INDEX

__all__ = [
    "BackwardStep",
    "PixelLoss",
    "StepContext",
    "StepOutput",
    "backward",
    "check_dataset_index",
    "cross_entropy_nhwc",
    "cross_entropy_pixels",
    "global_pixel_mean",
    "per_dataset_mean",
]


@dataclass
class StepContext:
    """What every backward step needs to know about the run (not about its method)."""

    num_datasets: int
    dataset_names: list[str] = field(default_factory=list)  # by dataset index, for readable logged names
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    info: DistInfo = DistInfo()  # the processes: several means the model is wrapped in DistributedDataParallel
    # called before a non-finite loss is reported: a more precise error (e.g. a label code that names no set) raises first
    diagnostics: tuple[Callable[[], None], ...] = ()

    @property
    def distributed(self) -> bool:
        return self.info.distributed

    def dataset_name(self, index: int) -> str:
        return self.dataset_names[index] if index < len(self.dataset_names) else str(index)


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached scalar: the objective that was minimised
    per_dataset_loss: torch.Tensor  # detached [num_datasets]; nan where a dataset had no pixels in the batch
    scalars: dict[str, float] = field(default_factory=dict)  # extra values to log (e.g. MGDA task weights)


class BackwardStep(Protocol):
    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor,
                 ctx: StepContext) -> StepOutput:
        """``images``: normalised float N x 3 x H x W; ``labels``: int64 N x H x W (255 ignore)."""


class PixelLoss(Protocol):
    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-pixel loss N x H x W in fp32, 0 at ignore pixels; valid pixels per image [N]), as
        :func:`cross_entropy_pixels`; the steps average it over the global batch's valid pixels."""


def check_dataset_index(dataset_index: torch.Tensor, num_datasets: int) -> None:
    if dataset_index.numel() and (int(dataset_index.min()) < 0 or int(dataset_index.max()) >= num_datasets):
        raise ValueError(f"dataset_index values must lie in [0, {num_datasets}), got {sorted(set(dataset_index.tolist()))}")


def cross_entropy_pixels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pixel cross-entropy N x H x W in fp32, 0 at ignore pixels; valid pixels per image [N]).

    Channels-last logits are read as N*H*W rows of C classes: the softmax then runs along contiguous memory instead
    of copying the logits to NCHW first (the largest tensor of a step).
    """
    logits = logits.float()
    n, c, h, w = logits.shape
    if c > 1 and logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous():
        rows = logits.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: NHWC memory read as rows
        pixel_loss = F.cross_entropy(rows, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none").view(n, h, w)
    else:
        pixel_loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    return pixel_loss, (labels != IGNORE_INDEX).flatten(1).sum(1)


class UpsampledPixelLoss:
    """A pixel loss on the model's 1/4-resolution logits: upsample them to the labels' size (fp32, as the model
    would), then the loss. One function, so that ``TRAIN.compile`` can fuse the upsampling with the loss and never
    keep full-resolution fp32 logits for the backward pass.

    The upsampled logits are laid out channels-last (each pixel's classes contiguous: the softmax reads rows) and, for
    a crop of 4k + 1 pixels (713), computed by the exact x4 arithmetic of :mod:`mseg_semantic.model.upsample`: its
    backward sums the four phases instead of scattering atomic adds. Eagerly the loss is ``pixel_loss_fn`` on them
    (stock fused softmax kernels). Under ``torch.compile`` cross-entropy is written as arithmetic instead
    (:func:`cross_entropy_nhwc`) on a view of the upsampling, which the compiler fuses into the log-sum-exp: the
    forward then keeps per-pixel scalars only, not the full-resolution logits or log-probabilities.
    """

    def __init__(self, pixel_loss_fn: PixelLoss):
        self.pixel_loss_fn = pixel_loss_fn

    def __call__(self, low_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = labels.shape[-2:]
        if self.pixel_loss_fn is cross_entropy_pixels and torch.compiler.is_compiling():
            logits = upsample_logits_nhwc(low_logits, size, fusable=True)
            return cross_entropy_nhwc(logits, labels), (labels != IGNORE_INDEX).flatten(1).sum(1)
        logits = upsample_logits_nhwc(low_logits, size).permute(0, 3, 1, 2)  # N x C x H x W, channels_last
        return self.pixel_loss_fn(logits, labels)


def cross_entropy_nhwc(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy (fp32, 0 at ignore pixels) of N x H x W x C logits, as :func:`cross_entropy_pixels`,
    written as log-sum-exp minus the label's logit picked by comparison (no gather, whose backward is a scatter): the
    pointwise arithmetic a compiler fuses with the ops that made the logits. A label outside 0..C-1 (other than
    ignore) makes that pixel's loss nan, which the loop reports, instead of an error (compiled code cannot raise
    without waiting for the device)."""
    logits = logits.float()
    classes = torch.arange(logits.shape[-1], device=logits.device)
    picked = torch.where(classes == labels.unsqueeze(-1), logits, torch.zeros_like(logits)).sum(-1)
    loss = torch.logsumexp(logits, dim=-1) - picked
    unknown = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= logits.shape[-1]))
    loss = torch.where(unknown, torch.full_like(loss, float("nan")), loss)
    return torch.where(labels == IGNORE_INDEX, torch.zeros_like(loss), loss)


def backward(loss: torch.Tensor, ctx: StepContext) -> None:
    """``loss.backward()``, through the grad scaler when the run has one (fp16)."""
    (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()


def global_pixel_mean(loss_sum: torch.Tensor, valid_count: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """``loss_sum`` over the valid-pixel count of the *global* batch, times the number of ranks.

    DDP averages the ranks' gradients, so the averaged gradient is that of the mean over all valid pixels: N ranks
    with B/N crops take the same step as one rank with B crops (MSeg's per-GPU mean differs slightly when ranks
    hold different numbers of ignored pixels).
    """
    if ctx.distributed:
        valid_count = all_reduce_sum(valid_count.detach().clone(), ctx.info)
    return loss_sum * (ctx.info.world_size / valid_count.float().clamp(min=1.0))


def per_dataset_mean(values: torch.Tensor, counts: torch.Tensor, dataset_index: torch.Tensor, num_datasets: int) -> torch.Tensor:
    """Sum per image -> mean per dataset (nan for a dataset without valid pixels)."""
    sums = torch.zeros(num_datasets, dtype=torch.float64, device=values.device).index_add_(0, dataset_index, values.double())
    totals = torch.zeros(num_datasets, dtype=torch.float64, device=values.device).index_add_(0, dataset_index, counts.double())
    return torch.where(totals > 0, sums / totals.clamp(min=1), torch.full_like(sums, float("nan"))).float()
