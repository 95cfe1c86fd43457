"""The contract between the training loop and the methods that compute gradients.

A *backward step* takes one batch, runs the forward pass under ``ctx.autocast()``, and leaves the
gradients in ``param.grad`` (through ``ctx.scaler`` when one is given). The loop owns everything else:
zeroing, unscaling, clipping, ``optimizer.step()``, the learning rate, logging and checkpoints. The plain
cross-entropy step lives in :mod:`mseg_semantic.training.loop`; MGDA and CCSA provide their own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch


@dataclass
class StepContext:
    num_datasets: int
    ignore_index: int = 255
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    distributed: bool = False  # True under DistributedDataParallel (the model is wrapped)
    options: dict = field(default_factory=dict)  # method-specific settings from the config
    dataset_names: list[str] = field(default_factory=list)  # by dataset index, for readable logged names

    def dataset_name(self, index: int) -> str:
        return self.dataset_names[index] if index < len(self.dataset_names) else str(index)


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached scalar: the objective that was minimised
    per_dataset_loss: torch.Tensor  # detached [num_datasets]; nan where a dataset had no pixels in the batch
    scalars: dict[str, float] = field(default_factory=dict)  # extra values to log (e.g. MGDA task weights)


BackwardStep = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, StepContext], StepOutput]
"""``step(model, images, labels, dataset_index, ctx) -> StepOutput``; images are normalised float N x 3 x H x W."""
