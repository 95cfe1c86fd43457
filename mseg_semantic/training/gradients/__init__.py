"""The ways to make gradients, side by side behind one contract (:mod:`.common`):

- ``ce``: the plain step, MSeg's objective (:mod:`.cross_entropy`);
- ``mgda``: the MGDA multi-task baseline (:mod:`.mgda`, ``DATA.use_mgda``);
- ``ccsa``: the CCSA domain-generalization baseline (:mod:`.ccsa`, ``CCSA.use_ccsa``).

and the pixel losses they average (``TRAIN.loss``): ``ce`` (cross-entropy) or ``partial_label`` (a label names a
set of classes, :mod:`.partial_label`), which ``ce`` and ``mgda`` take and ``ccsa`` does not.

:func:`backward_step_for` binds a method's typed options and its pixel loss once, from the config.
"""

from __future__ import annotations

import functools
from typing import Any

from mseg_semantic.taxonomy import LabelSets
from mseg_semantic.training.gradients.ccsa import CCSAOptions, ccsa_backward_step
from mseg_semantic.training.gradients.common import BackwardStep, PixelLoss, StepContext, StepOutput, cross_entropy_pixels
from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
from mseg_semantic.training.gradients.mgda import MGDAOptions, mgda_backward_step
from mseg_semantic.training.gradients.partial_label import PartialLabelLoss

__all__ = ["LOSSES", "METHODS", "BackwardStep", "PixelLoss", "StepContext", "StepOutput", "backward_step_for", "pixel_loss_for"]

METHODS = ("ce", "mgda", "ccsa")
LOSSES = ("ce", "partial_label")
# the methods whose loss is a mean of a pixel loss that another one can replace (CCSA pairs pixels by class id,
# which a label-set code is not)
METHODS_WITH_PIXEL_LOSS = ("ce", "mgda")


def pixel_loss_for(loss: str, label_sets: LabelSets | None = None) -> PixelLoss:
    """``ce``: cross-entropy over model ids; ``partial_label``: over the label-set codes of ``label_sets`` (the
    run's set-valued converter's)."""
    if loss == "ce":
        return cross_entropy_pixels
    if loss == "partial_label":
        if label_sets is None:
            raise ValueError("the partial_label loss needs the label sets of the run's converter")
        return PartialLabelLoss(label_sets)
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")


def backward_step_for(method: str, cfg: Any, pixel_loss: PixelLoss = cross_entropy_pixels, loss_head: PixelLoss | None = None) -> BackwardStep:
    """The backward step of ``method`` with its options read from the config's section of the same name, averaging
    ``pixel_loss`` (the run checks the combination first: a refused one raises here too). ``loss_head``: the plain
    step's upsample-and-loss on 1/4-resolution logits (``TRAIN.compile`` compiles one)."""
    if pixel_loss is not cross_entropy_pixels and method not in METHODS_WITH_PIXEL_LOSS:
        raise ValueError(f"method {method!r} trains with cross-entropy only; {', '.join(METHODS_WITH_PIXEL_LOSS)} take another pixel loss")
    if method == "mgda":
        return functools.partial(mgda_backward_step, options=MGDAOptions.from_config(cfg.MGDA), pixel_loss_fn=pixel_loss)
    if method == "ccsa":
        return functools.partial(ccsa_backward_step, options=CCSAOptions.from_config(cfg.CCSA))
    if method == "ce":
        return functools.partial(ce_backward_step, pixel_loss_fn=pixel_loss, loss_head=loss_head)
    raise ValueError(f"unknown training method {method!r}; valid: {', '.join(METHODS)}")
