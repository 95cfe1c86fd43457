"""The ways to make gradients and the pixel losses they average, as two plain tables.

:data:`METHODS` (``TRAIN.method``):

- ``ce``: the plain step, MSeg's objective (:mod:`.cross_entropy`);
- ``mgda``: the MGDA multi-task baseline (:mod:`.mgda`, options in the ``MGDA`` section);
- ``ccsa``: the CCSA domain-generalization baseline (:mod:`.ccsa`, options in the ``CCSA`` section).

:data:`LOSSES` (``TRAIN.loss``): ``ce`` (cross-entropy) or ``partial_label`` (a label names a set of classes,
:mod:`.partial_label`).

Each row declares what its method or loss can do; :func:`check_capabilities` is the one check of a run against
them. A new method is one module (its step, its options class) plus one row here. :func:`backward_step_for` binds a
method's typed options and its pixel loss once, from the config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from mseg_semantic.config import ConfigError
from mseg_semantic.distributed import DistInfo, all_reduce_sum
from mseg_semantic.errors import did_you_mean
from mseg_semantic.taxonomy import LabelSets
from mseg_semantic.training.gradients.ccsa import CCSAOptions, ccsa_backward_step
from mseg_semantic.training.gradients.common import BackwardStep, PixelLoss, StepContext, StepOutput, cross_entropy_pixels
from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
from mseg_semantic.training.gradients.mgda import MGDAOptions, mgda_backward_step
from mseg_semantic.training.gradients.partial_label import PartialLabelLoss

__all__ = ["LOSSES", "METHODS", "BackwardStep", "LossSpec", "MethodSpec", "PixelLoss", "StepContext", "StepOutput",
           "backward_step_for", "check_capabilities", "pixel_loss_for"]


@dataclass(frozen=True)
class MethodSpec:
    """A way to make gradients: its step, its options and what it can do."""

    step: Callable[..., StepOutput]  # (model, images, labels, dataset_index, ctx, **bound) -> StepOutput
    switch: str  # how messages name it: the key a user sets (MSeg's switch first, where MSeg had one)
    options: Callable[[Any], Any] | None = None  # the config section -> its typed options
    section: str | None = None  # the config section its options come from
    takes_pixel_loss: bool = True  # averages a pixel loss that another one (partial_label) can replace
    takes_loss_head: bool = False  # can take a (compiled) upsample-and-loss on the 1/4-resolution logits
    compiles: bool = True  # TRAIN.compile: its backward works through compiled regions
    graphs: bool = False  # TRAIN.cuda_graphs: it decides nothing on the host during a step
    needs_mixed_batches: bool = False  # a process must see several datasets in one batch (no dataset_gpu_mapping)
    why_not_compiled: str = ""
    why_not_pixel_loss: str = ""


@dataclass(frozen=True)
class LossSpec:
    """A pixel loss: how it is built from the run's label sets and the TRAIN section, and what it needs."""

    build: Callable[..., PixelLoss]  # (label_sets, train section or None, info) -> PixelLoss
    needs_label_sets: bool = False  # labels are label-set codes: the universal taxonomy only


def _partial_label(label_sets: LabelSets | None, train: Any = None, info: DistInfo = DistInfo()) -> PixelLoss:
    if label_sets is None:
        raise ValueError("the partial_label loss needs the label sets of the run's converter")
    if train is None:
        return PartialLabelLoss(label_sets)
    reduce_fn = (lambda tensor: all_reduce_sum(tensor, info)) if info.distributed else None
    return PartialLabelLoss(label_sets, train["label_set_weights"], train["set_prior_correction"], reduce_fn=reduce_fn)


METHODS: dict[str, MethodSpec] = {
    "ce": MethodSpec(ce_backward_step, "TRAIN.method=ce", graphs=True, takes_loss_head=True),
    "mgda": MethodSpec(mgda_backward_step, "DATA.use_mgda=True (TRAIN.method=mgda)", MGDAOptions.from_config, "MGDA", compiles=False,
                       why_not_compiled="MGDA differentiates each task through the same graph (retain_graph), which compiled "
                                        "regions do not support"),
    "ccsa": MethodSpec(ccsa_backward_step, "CCSA.use_ccsa=True (TRAIN.method=ccsa)", CCSAOptions.from_config, "CCSA",
                       takes_pixel_loss=False, needs_mixed_batches=True,
                       why_not_pixel_loss="CCSA pairs pixels by class id, and a set-valued label names several"),
}

LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(lambda label_sets=None, train=None, info=None: cross_entropy_pixels),
    "partial_label": LossSpec(_partial_label, needs_label_sets=True),
}


def pixel_loss_for(loss: str, label_sets: LabelSets | None = None, train: Any = None, info: DistInfo = DistInfo()) -> PixelLoss:
    """``ce``: cross-entropy over model ids; ``partial_label``: over the label-set codes of ``label_sets`` (the
    run's set-valued converter's), with the options of the ``train`` section (``label_set_weights``,
    ``set_prior_correction``; default: uniform, no correction); ``info``: the ranks a running estimate is summed over."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[loss].build(label_sets, train, info)


def backward_step_for(method: str, cfg: Any, pixel_loss: PixelLoss = cross_entropy_pixels, loss_head: PixelLoss | None = None) -> BackwardStep:
    """The backward step of ``method`` with its options read from its config section, averaging ``pixel_loss``
    (the run checks the combination first: a refused one raises here too). ``loss_head``: an upsample-and-loss on
    1/4-resolution logits (``TRAIN.compile`` compiles one), for the methods that take one."""
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; valid: {', '.join(METHODS)}")
    spec = METHODS[method]
    if pixel_loss is not cross_entropy_pixels and not spec.takes_pixel_loss:
        takers = [name for name, m in METHODS.items() if m.takes_pixel_loss]
        raise ValueError(f"method {method!r} trains with cross-entropy only; {', '.join(takers)} take another pixel loss")
    bound: dict[str, Any] = {}
    if spec.options is not None:
        bound["options"] = spec.options(cfg[spec.section])
    if spec.takes_pixel_loss:
        bound["pixel_loss_fn"] = pixel_loss
    if loss_head is not None and spec.takes_loss_head:
        bound["loss_head"] = loss_head
    return functools.partial(spec.step, **bound)


def check_capabilities(method: str, loss: str, *, model_taxonomy: str, compile: bool, cuda_graphs: bool, precision: str,
                       world_size: int, one_dataset_per_process: bool, label_set_weights: str = "uniform",
                       set_prior_correction: bool = False) -> None:
    """The one check of a run's method, loss and speed options against what the tables declare; raises
    ConfigError naming the keys."""
    if method not in METHODS:
        raise ConfigError(f"TRAIN.method={method!r} is not a training method{did_you_mean(method, METHODS)}; valid: {', '.join(METHODS)}")
    if loss not in LOSSES:
        raise ConfigError(f"TRAIN.loss={loss!r} is not a loss{did_you_mean(loss, LOSSES)}; valid: {', '.join(LOSSES)}")
    spec = METHODS[method]
    if spec.needs_mixed_batches and one_dataset_per_process:
        raise ConfigError(
            f"{spec.switch} with TRAIN.dataset_gpu_mapping: with one dataset per GPU no process sees two domains, so the "
            "contrastive term would always be zero; set dataset_gpu_mapping=null to mix datasets in every batch")
    if compile and not spec.compiles:
        raise ConfigError(f"TRAIN.compile=True with {spec.switch}: {spec.why_not_compiled}; set compile=False")
    if cuda_graphs:
        graphed = [m for m, s in METHODS.items() if s.graphs]
        refusal = ("one process (use TRAIN.compile under torchrun)" if world_size > 1 else
                   "precision fp32 or bf16 (fp16's loss scaler decides on the host)" if precision == "fp16" else
                   f"the cross-entropy step (TRAIN.method={' or '.join(graphed)}: the others decide on the host)" if not spec.graphs else None)
        if refusal:
            raise ConfigError(f"TRAIN.cuda_graphs=True needs {refusal}; set cuda_graphs=False")
        if set_prior_correction:  # the warm-up steps before capture would move the running marginal a resume restores
            raise ConfigError("TRAIN.cuda_graphs=True with TRAIN.set_prior_correction=True: the loss keeps a running class "
                              "marginal that the graph's warm-up steps would move; set cuda_graphs=False (TRAIN.compile works)")
    if not LOSSES[loss].needs_label_sets and (set_prior_correction or label_set_weights != "uniform"):
        given = "TRAIN.set_prior_correction=True" if set_prior_correction else f"TRAIN.label_set_weights={label_set_weights}"
        raise ConfigError(f"{given} with TRAIN.loss={loss}: it is an option of the label-set loss and would change nothing; "
                          f"set loss=partial_label, or leave it unset")
    if LOSSES[loss].needs_label_sets and model_taxonomy != "universal":
        key = "TRAIN.use_naive_taxonomy=True" if model_taxonomy == "naive" else "DATA.universal=False"
        raise ConfigError(f"TRAIN.loss={loss} with {key}: label sets exist in the universal taxonomy only (the "
                          f"{model_taxonomy} taxonomy maps every class to one model class); use loss=ce, or train universal")
    if loss != "ce" and not spec.takes_pixel_loss:
        takers = ", ".join(m for m, s in METHODS.items() if s.takes_pixel_loss)
        raise ConfigError(f"TRAIN.loss={loss} with {spec.switch}: {spec.why_not_pixel_loss}; use loss=ce with {method}, or "
                          f"another method (TRAIN.method={takers} take {loss})")
