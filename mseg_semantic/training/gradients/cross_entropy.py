"""The plain step: cross-entropy over the valid pixels of the global batch (MSeg's training objective), or another
pixel loss with cross-entropy's contract (the partial-label loss, ``TRAIN.loss: partial_label``)."""

from __future__ import annotations

import torch

from mseg_semantic.model import HRNet, unwrap_model
from mseg_semantic.training.gradients.common import (
    PixelLoss,
    StepContext,
    StepOutput,
    UpsampledPixelLoss,
    backward,
    cross_entropy_pixels,
    global_pixel_mean,
    per_dataset_mean,
)

__all__ = ["ce_backward_step"]


def ce_backward_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, ctx: StepContext,
                     pixel_loss_fn: PixelLoss = cross_entropy_pixels, loss_head: PixelLoss | None = None) -> StepOutput:
    """The pixel loss (cross-entropy by default) averaged over the valid (non-ignore) pixels of the *global* batch
    (see :func:`global_pixel_mean`).

    ``loss_head``: a pixel loss that takes the model's 1/4-resolution logits (``model(x, upsample=False)``) and
    upsamples them itself, e.g. a compiled :class:`~.common.UpsampledPixelLoss`; ``pixel_loss_fn`` is then unused.
    Without one an HRNet still trains through ``UpsampledPixelLoss(pixel_loss_fn)`` (the same values and gradients
    as upsampling in the model, up to float rounding, with the class dimension contiguous); another model's
    ``model(x)`` output goes to ``pixel_loss_fn`` as it is.
    """
    if loss_head is None and isinstance(unwrap_model(model), HRNet):
        loss_head = UpsampledPixelLoss(pixel_loss_fn)
    if loss_head is not None:
        with ctx.autocast():
            low_logits = model(images, upsample=False)
        pixel_loss, valid_per_image = loss_head(low_logits, labels)
    else:
        with ctx.autocast():
            logits = model(images)
        pixel_loss, valid_per_image = pixel_loss_fn(logits, labels)
    loss = global_pixel_mean(pixel_loss.sum(), valid_per_image.sum(), ctx)
    backward(loss, ctx)
    per_dataset = per_dataset_mean(pixel_loss.detach().flatten(1).sum(1), valid_per_image, dataset_index, ctx.num_datasets)
    return StepOutput(loss=loss.detach(), per_dataset_loss=per_dataset)
