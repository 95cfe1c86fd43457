"""MGDA baseline: multi-task learning as multi-objective optimisation (Sener & Koltun, NeurIPS 2018).

Each training dataset is a task. Per iteration the step computes every task's loss on that dataset's
share of the batch, each task's gradient on the shared parameters, the minimum-norm convex combination
of those gradients (Frank-Wolfe on their Gram matrix, the paper's Algorithm 2, with the exact two-point
line search of its Algorithm 1), and writes the combined gradient into ``param.grad``.

All parameters are shared: MSeg trains one network with one universal classifier for every dataset, so
there are no task-specific heads, and the paper's "shared representation" upper bound (gradients with
respect to an encoder output feeding per-task decoders) has nothing to apply to. This is also what
MSeg's own MGDA code did (full-parameter gradients, one dataset per GPU).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from mseg_semantic.distributed import all_reduce_sum, broadcast_tensor
from mseg_semantic.model import unwrap_model
from mseg_semantic.training.gradients.common import PixelLoss, StepContext, StepOutput, check_dataset_index, cross_entropy_pixels

__all__ = [
    "NORMALIZATIONS",
    "MGDAOptions",
    "two_point_min_norm",
    "min_norm_weights",
    "gradient_normalizers",
    "gram_matrix",
    "mgda_backward_step",
]

NORMALIZATIONS = ("none", "l2", "loss", "loss+")

# Flattened gradients are multiplied in float64 blocks of this many entries, so the Gram matrix is
# exact to float64 without a float64 copy of every task gradient.
_GRAM_BLOCK = 1 << 22


@dataclass(frozen=True)
class MGDAOptions:
    """The config's MGDA section (its defaults live in the schema)."""

    normalization: str  # none (MSeg's MGDA: the raw gradients) | l2 | loss | loss+
    solver_iters: int  # Frank-Wolfe iterations (at most a few ms for 7 tasks)
    tolerance: float  # stop when the Frank-Wolfe gap is below this fraction of the largest |g_t|^2
    away_steps: bool  # False: the paper's Algorithm 2 exactly (slower to converge)

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"MGDA normalization {self.normalization!r} is not valid; use one of {', '.join(NORMALIZATIONS)}")
        if self.solver_iters < 1:
            raise ValueError(f"MGDA solver_iters must be >= 1, got {self.solver_iters}")
        if not self.tolerance >= 0:
            raise ValueError(f"MGDA tolerance must be >= 0, got {self.tolerance}")

    @classmethod
    def from_config(cls, section: Mapping) -> "MGDAOptions":
        """From the config's MGDA section."""
        return cls(**{name: section[name] for name in cls.__dataclass_fields__})


def two_point_min_norm(v1v1: float, v1v2: float, v2v2: float) -> float:
    """Algorithm 1: the ``gamma`` in [0, 1] minimising ``||gamma * v1 + (1 - gamma) * v2||^2``.

    Arguments are the inner products <v1,v1>, <v1,v2>, <v2,v2>.
    """
    if v1v2 >= v1v1:
        return 1.0
    if v1v2 >= v2v2:
        return 0.0
    # Both tests failed, so the denominator ||v1 - v2||^2 is strictly positive.
    return float(min(1.0, max(0.0, (v2v2 - v1v2) / (v1v1 + v2v2 - 2.0 * v1v2))))


def min_norm_weights(gram: np.ndarray | torch.Tensor, max_iter: int = 1000, tolerance: float = 1e-8, away_steps: bool = True) -> np.ndarray:
    """Weights on the simplex minimising ``||sum_t w_t g_t||^2`` given the Gram matrix ``G_ij = <g_i, g_j>``.

    Two tasks: Algorithm 1 in closed form. More: Algorithm 2, Frank-Wolfe from uniform weights towards
    the vertex with the smallest directional derivative with the exact line search of Algorithm 1. With
    ``away_steps`` (default) an iteration instead moves weight *away* from the worst vertex in use when
    that direction is steeper (Lacoste-Julien & Jaggi, 2015): plain Frank-Wolfe converges only as 1/k
    when the optimum has zero weights, away steps make it linear. ``away_steps=False`` is Algorithm 2
    exactly. Stops when the Frank-Wolfe gap ``w'Gw - min_t (Gw)_t`` (an upper bound on the excess squared
    norm) is below ``tolerance * max_t G_tt``, or after ``max_iter`` iterations. Returns float64 [T].
    """
    if isinstance(gram, torch.Tensor):
        gram = gram.detach().cpu().double().numpy()
    matrix = np.asarray(gram, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"the Gram matrix must be square T x T with T >= 1, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("the Gram matrix has non-finite entries (an overflowed or NaN task gradient)")
    matrix = 0.5 * (matrix + matrix.T)  # float round-off can make it slightly asymmetric
    num_tasks = matrix.shape[0]
    if num_tasks == 1:
        return np.ones(1)
    if num_tasks == 2:
        gamma = two_point_min_norm(matrix[0, 0], matrix[0, 1], matrix[1, 1])
        return np.array([gamma, 1.0 - gamma])

    threshold = tolerance * max(float(np.max(np.diag(matrix))), np.finfo(np.float64).tiny)
    weights = np.full(num_tasks, 1.0 / num_tasks)
    for _ in range(max_iter):
        directional = matrix @ weights  # (G w)_t = <g_t, combined>
        squared_norm = float(weights @ directional)
        toward = int(np.argmin(directional))
        fw_gap = squared_norm - float(directional[toward])
        if fw_gap <= threshold:
            break
        in_use = np.flatnonzero(weights > 0)
        away = int(in_use[np.argmax(directional[in_use])])
        away_gap = float(directional[away]) - squared_norm
        if away_steps and away_gap > fw_gap and weights[away] < 1.0:
            # w + gamma (w - e_away): the combination moves along u - g_away; exact line search, capped
            # where the away vertex's weight reaches zero.
            curvature = squared_norm - 2.0 * float(directional[away]) + matrix[away, away]
            cap = weights[away] / (1.0 - weights[away])
            gamma = min(cap, away_gap / curvature) if curvature > 0 else cap
            weights = (1.0 + gamma) * weights
            weights[away] -= gamma
            if gamma == cap:
                weights[away] = 0.0
            continue
        # Line search between the vertex g_toward (gamma = 1) and the current combination (gamma = 0).
        gamma = two_point_min_norm(matrix[toward, toward], float(directional[toward]), squared_norm)
        if gamma <= 0.0:
            break
        weights = (1.0 - gamma) * weights
        weights[toward] += gamma
    weights = np.clip(weights, 0.0, None)
    return weights / weights.sum()


def gradient_normalizers(grad_norms: Sequence[float], losses: Sequence[float], normalization: str) -> np.ndarray:
    """The per-task divisors of the paper's gradient normalisation options.

    ``l2``: the gradient's norm; ``loss``: the task loss; ``loss+``: loss x gradient norm; ``none``: 1.
    A divisor that is not a positive finite number (zero loss or zero gradient) is replaced by 1.
    """
    norms = np.asarray(grad_norms, dtype=np.float64)
    loss_values = np.asarray(losses, dtype=np.float64)
    if normalization == "none":
        divisors = np.ones_like(norms)
    elif normalization == "l2":
        divisors = norms
    elif normalization == "loss":
        divisors = loss_values
    elif normalization == "loss+":
        divisors = loss_values * norms
    else:
        raise ValueError(f"unknown gradient normalization {normalization!r}; use one of {', '.join(NORMALIZATIONS)}")
    usable = np.isfinite(divisors) & (divisors > 1e-12)
    return np.where(usable, divisors, 1.0)


def gram_matrix(flat_grads: Sequence[torch.Tensor]) -> np.ndarray:
    """``G_ij = <g_i, g_j>`` in float64 for equally long 1-D gradients."""
    num_tasks = len(flat_grads)
    if num_tasks == 0:
        return np.zeros((0, 0))
    length = flat_grads[0].numel()
    gram = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=flat_grads[0].device)
    for start in range(0, length, _GRAM_BLOCK):
        block = torch.stack([g[start : start + _GRAM_BLOCK] for g in flat_grads]).double()
        gram += block @ block.T
    return gram.cpu().numpy()


def _flat_gradient(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for g, p in zip(grads, params)])


def _write_gradient(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Add ``flat`` into ``param.grad`` the way ``backward()`` would accumulate it."""
    offset = 0
    for p in params:
        piece = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.add_(piece)


def mgda_backward_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset_index: torch.Tensor, ctx: StepContext,
                       options: MGDAOptions, pixel_loss_fn: PixelLoss = cross_entropy_pixels) -> StepOutput:
    """One MGDA step (see :mod:`mseg_semantic.training.gradients.common` for the contract).

    Task t's loss is the mean pixel loss (cross-entropy, or the partial-label loss) over the valid pixels of the
    batch images from dataset t.
    One forward pass over the whole batch, then one backward pass per task present in the global batch
    (tasks with no valid pixel anywhere are dropped this iteration). Weights are solved on the
    (optionally normalised) task gradients; as in Sener & Koltun's code, the update is the weighted sum
    of the *raw* task gradients (identical to the min-norm element for ``normalization: none``).

    Distributed (``ctx.distributed``, ``model`` a DDP wrapper): the forward runs under ``no_sync`` and the
    per-task gradients are summed over ranks; each rank's share of task t is divided by the pixel count
    of task t in the *global* batch, so the reduced gradient is exactly the gradient of task t's mean
    loss over the global batch (a rank without task t contributes zero), the same as one process with
    the whole batch. Every rank then solves the same problem; the weights are broadcast from rank 0 so
    they are bit-identical. DDP's own gradient reduction is not used. With SyncBatchNorm every rank runs
    every task's backward pass (see the comment in the body): with one dataset per GPU that is T backward
    passes per rank instead of one.

    With ``ctx.scaler`` the task losses are scaled before differentiation, so ``param.grad`` holds scaled
    gradients for the loop to unscale; the weights are unaffected by the common scale. A non-finite Gram
    matrix (fp16 overflow) falls back to uniform weights, leaving the inf/nan in the gradient for the
    scaler to detect and skip.
    """
    num_datasets = ctx.num_datasets
    check_dataset_index(dataset_index, num_datasets)
    module = unwrap_model(model)
    params = [p for p in module.parameters() if p.requires_grad]
    # SyncBatchNorm normalises with the global batch's statistics, so a rank's weights also act on the other ranks'
    # losses, and its backward pass exchanges statistics with every rank: then each rank differentiates every task,
    # even one it holds no pixel of (its local loss is zero, SyncBN brings in the rest), in the same order.
    every_task_on_every_rank = ctx.distributed and any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())

    forward_context = model.no_sync() if ctx.distributed else contextlib.nullcontext()
    with forward_context:
        with ctx.autocast():
            logits = model(images)
        pixel_loss, valid_per_image = pixel_loss_fn(logits, labels)
        loss_sums = torch.zeros(num_datasets, device=pixel_loss.device).index_add(0, dataset_index, pixel_loss.flatten(1).sum(1))
        local_counts = torch.zeros(num_datasets, device=pixel_loss.device, dtype=torch.float64).index_add(0, dataset_index, valid_per_image.double())

        totals = torch.stack([loss_sums.detach().double(), local_counts])
        all_reduce_sum(totals, ctx.info)
        global_sums, global_counts = totals[0], totals[1]
        tasks = [t for t in range(num_datasets) if global_counts[t] > 0]
        per_dataset_loss = torch.where(global_counts > 0, global_sums / global_counts.clamp_min(1), torch.full_like(global_sums, math.nan)).float()
        if not tasks:
            return StepOutput(loss=torch.zeros((), device=pixel_loss.device), per_dataset_loss=per_dataset_loss, scalars={"mgda/num_tasks": 0.0})

        scaler = ctx.scaler if ctx.scaler is not None and ctx.scaler.is_enabled() else None
        task_grads = []
        for t in tasks:
            if local_counts[t] > 0 or every_task_on_every_rank:
                task_loss = loss_sums[t] / global_counts[t].float()
                grad = _flat_gradient(scaler.scale(task_loss) if scaler else task_loss, params)
            else:
                grad = torch.zeros(sum(p.numel() for p in params), device=pixel_loss.device)
            all_reduce_sum(grad, ctx.info)
            task_grads.append(grad)
        del logits, pixel_loss, loss_sums

    scale = float(scaler.get_scale()) if scaler else 1.0
    gram = gram_matrix(task_grads)
    task_losses = (global_sums[tasks] / global_counts[tasks]).cpu().numpy()
    finite = bool(np.all(np.isfinite(gram)))
    grad_norms = np.sqrt(np.clip(np.diag(gram), 0.0, None)) / scale if finite else np.full(len(tasks), math.inf)
    if finite:
        divisors = gradient_normalizers(grad_norms, task_losses, options.normalization)
        weights = min_norm_weights(gram / np.outer(divisors, divisors), options.solver_iters, options.tolerance, options.away_steps)
    else:
        weights = np.full(len(tasks), 1.0 / len(tasks))
    if ctx.distributed:
        weights = broadcast_tensor(torch.as_tensor(weights, dtype=torch.float64, device=task_grads[0].device), ctx.info).cpu().numpy()

    combined = torch.zeros_like(task_grads[0])
    for weight, grad in zip(weights, task_grads):
        combined.add_(grad, alpha=float(weight))
    del task_grads
    _write_gradient(params, combined)

    objective = float(np.dot(weights, task_losses))
    combined_norm = math.sqrt(max(float(weights @ gram @ weights), 0.0)) / scale if finite else math.inf
    scalars = {"mgda/num_tasks": float(len(tasks)), "mgda/combined_grad_norm": combined_norm}
    for t, weight, norm in zip(tasks, weights, grad_norms):
        scalars[f"mgda/weight/{ctx.dataset_name(t)}"] = float(weight)
        scalars[f"mgda/grad_norm/{ctx.dataset_name(t)}"] = float(norm)
    return StepOutput(
        loss=torch.tensor(objective, dtype=torch.float32, device=combined.device),
        per_dataset_loss=per_dataset_loss,
        scalars=scalars,
    )

