"""MSeg's optimisation recipe: SGD with a per-iteration poly learning rate, the iteration count, loss scaling; and
the ViT recipe beside it: AdamW over layer-decay parameter groups.

The learning rate of (0-based) iteration ``t`` is ``base_lr * (1 - t / max_iters) ** power``, the value MSeg
sets after each step; it is a closed form of ``t``, so resuming or lengthening a run keeps the curve exact. With
several parameter groups each has its own base (``base_lr * lr_scale``) on the same curve.

Every group the trainer builds (:func:`parameter_groups`) says how it relates to the config: ``lr_scale`` (its
learning rate over ``TRAIN.base_lr``) and ``weight_decay_scale`` (1: ``TRAIN.weight_decay`` applies, 0: the group
is never decayed), so that a resume can apply the resumed run's values group by group.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch

from mseg_semantic.errors import UserError
from mseg_semantic.model import unwrap_model
from mseg_semantic.model.vit_seg import DinoV2Segmenter, layer_decay_param_groups

OPTIMIZERS = ("sgd", "adamw")


def poly_learning_rate(base_lr: float, iteration: int, max_iters: int, power: float = 0.9) -> float:
    if iteration >= max_iters:
        return 0.0
    return base_lr * (1.0 - iteration / max_iters) ** power


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Poly decay stepped once per iteration (``scheduler.step()`` after ``optimizer.step()``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, power: float = 0.9, last_epoch: int = -1):
        if max_iters <= 0:
            raise ValueError(f"max_iters must be positive, got {max_iters}")
        self.max_iters = max_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [poly_learning_rate(base, self.last_epoch, self.max_iters, self.power) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


def build_sgd(params: Iterable[torch.nn.Parameter], base_lr: float | torch.Tensor, momentum: float, weight_decay: float,
              fused: bool = False) -> torch.optim.SGD:
    """One parameter group, as MSeg trains HRNet (no backbone/head learning-rate split): :func:`build_optimizer`'s SGD
    over the trainable ``params`` (a tensor ``base_lr`` keeps the learning rate on its device, for a CUDA graph)."""
    trainable = [p for p in params if p.requires_grad]
    group = {"params": trainable, "lr": float(base_lr), "weight_decay": weight_decay, "lr_scale": 1.0, "weight_decay_scale": 1.0}
    return build_optimizer("sgd", [group], momentum, fused=fused,
                           lr_on_device=base_lr.device if isinstance(base_lr, torch.Tensor) else None)


def parameter_groups(model: torch.nn.Module, base_lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """The trainable parameters in optimizer groups, each with ``lr``, ``weight_decay``, ``lr_scale`` and
    ``weight_decay_scale``.

    HRNet: one group, as MSeg trains it (weight decay on every parameter). A DINOv2 segmenter: one group per layer
    and decay kind (:func:`~mseg_semantic.model.vit_seg.layer_decay_param_groups`), no weight decay on norms,
    biases, LayerScale and the learned tokens, whatever ``layer_decay`` (1.0 gives every group the same rate).
    """
    inner = unwrap_model(model)
    if isinstance(inner, DinoV2Segmenter):
        # built with a unit decay, so that each group records whether it decays even when weight_decay is 0
        groups = layer_decay_param_groups(inner, base_lr, layer_decay, weight_decay=1.0)
        for group in groups:
            group["weight_decay_scale"] = group["weight_decay"]
            group["weight_decay"] = weight_decay * group["weight_decay_scale"]
        return groups
    if layer_decay != 1.0:
        raise ValueError(f"layer_decay={layer_decay} applies to the DINOv2 models; {type(inner).__name__} has no layers to decay")
    trainable = [p for p in inner.parameters() if p.requires_grad]
    return [{"params": trainable, "lr": base_lr, "weight_decay": weight_decay, "lr_scale": 1.0, "weight_decay_scale": 1.0}]


def build_optimizer(kind: str, groups: list[dict], momentum: float = 0.9, betas: Sequence[float] = (0.9, 0.999),
                    fused: bool = False, lr_on_device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over ``groups`` (:func:`parameter_groups`).

    ``fused``: one kernel for the update, which also skips it on the device when the loop sets
    ``optimizer.found_inf``; its state is made up front (zeros, as a first step would make it), so that a skipped
    first update leaves no state missing and a CUDA graph captures a step over existing tensors. ``lr_on_device``:
    each group's learning rate is a tensor there (a CUDA graph replays the update reading it), and AdamW's step
    count lives there too (``capturable``).
    """
    if kind not in OPTIMIZERS:
        raise UserError(f"TRAIN.optimizer={kind!r} is not one of {', '.join(OPTIMIZERS)}")
    groups = [dict(group) for group in groups]
    if lr_on_device is not None:
        for group in groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=lr_on_device)
    default_lr = groups[0]["lr"] if groups else 0.0
    if kind == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=default_lr, momentum=momentum, fused=fused or None)
    else:
        optimizer = torch.optim.AdamW(groups, lr=default_lr, betas=tuple(betas), fused=fused or None,
                                      capturable=lr_on_device is not None)
    if fused:
        for group in optimizer.param_groups:
            for param in group["params"]:
                state = optimizer.state[param]
                if kind == "sgd":
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                else:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return optimizer


def make_grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler | None:
    """Dynamic loss scaling, for fp16 only (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device_type) if precision == "fp16" else None


def derive_max_iters(
    num_examples: int,
    batch_size: int,
    datasets: Sequence[str],
    dataset_gpu_mapping: Mapping[str, Sequence[int]] | None = None,
    world_size: int = 1,
) -> int:
    """Iterations for every dataset to contribute ``num_examples`` crops (MSeg's meaning of num_examples).

    MSeg puts each dataset on its own GPUs: ``max_iters = floor(num_examples / (per-GPU batch x GPUs of the
    dataset))``. Mixing every batch uniformly gives each dataset ``batch_size / len(datasets)`` crops per
    iteration, so ``max_iters = floor(num_examples * len(datasets) / batch_size)``: the same count for MSeg's
    releases (1080p-1m: 1e6 * 7 / 14 = 500,000). With a GPU mapping whose datasets have unequal GPU counts,
    the dataset with the fewest crops per iteration sets the count.
    """
    if num_examples <= 0 or batch_size <= 0:
        raise UserError(f"TRAIN.num_examples ({num_examples}) and TRAIN.batch_size ({batch_size}) must be positive")
    if dataset_gpu_mapping and len(datasets) > 1:
        per_rank = batch_size // world_size
        return max(1, max(math.floor(num_examples / (per_rank * len(dataset_gpu_mapping[d]))) for d in datasets))
    return max(1, math.floor(num_examples * len(datasets) / batch_size))
