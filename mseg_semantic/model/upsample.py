"""HRNet's last upsampling (1/4 resolution -> input size, bilinear, ``align_corners=True``) as exact x4 arithmetic.

With ``align_corners=True`` output pixel ``j`` of an axis reads input position ``j * (n - 1) / (m - 1)``. When the
output size is ``m = 4 * (n - 1) + 1`` (a 713 crop gives 179 logits: 713 = 4 * 178 + 1) that position is
``j / 4``: output ``4 * i + r`` is ``(1 - r/4) * x[i] + (r/4) * x[i + 1]`` for ``r`` in 0..3, and the last output is
``x[n - 1]``. So the upsampling is four fixed blends with the weights {0, .25, .5, .75} per axis (rows, then
columns). Its backward is then strided sums over the four phases instead of the scatter of atomic adds that
``F.interpolate``'s backward is on a GPU, and under ``torch.compile`` it is plain broadcast arithmetic the compiler
fuses into whatever consumes the upsampled logits (a softmax, a loss).

The same numbers as ``F.interpolate(x.float(), size, mode="bilinear", align_corners=True)`` up to float rounding
(F.interpolate computes the same weights, and blends them in another order); the output is fp32 as there.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["exact_x4", "upsample_logits", "upsample_logits_nhwc", "upsample_x4", "upsample_x4_nhwc"]


def exact_x4(low_hw: Sequence[int], size: Sequence[int]) -> bool:
    """Whether ``align_corners=True`` upsampling from ``low_hw`` to ``size`` is the exact x4 map (``m = 4n - 3``)."""
    return len(low_hw) == len(size) == 2 and all(int(m) == 4 * int(n) - 3 and int(n) >= 1 for n, m in zip(low_hw, size))


class _X4Along(torch.autograd.Function):
    """Eager x4 upsampling of one axis of a contiguous tensor: each phase written straight into the output (no
    temporaries), and a backward that adds the four phases' gradient slices into the two inputs they blend."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim = dim
        n = x.shape[dim]
        shape = list(x.shape)
        shape[dim] = 4 * n - 3
        out = x.new_empty(shape)
        phases = out.narrow(dim, 0, 4 * (n - 1)).unflatten(dim, (n - 1, 4))
        lo, hi = x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)
        phases.select(dim + 1, 0).copy_(lo)
        for r in (1, 2, 3):
            torch.lerp(lo, hi, r / 4, out=phases.select(dim + 1, r))
        out.narrow(dim, 4 * (n - 1), 1).copy_(x.narrow(dim, n - 1, 1))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        dim = ctx.dim
        grad_out = grad_out.contiguous()
        n = (grad_out.shape[dim] + 3) // 4
        shape = list(grad_out.shape)
        shape[dim] = n
        grad = grad_out.new_empty(shape)
        p0, p1, p2, p3 = grad_out.narrow(dim, 0, 4 * (n - 1)).unflatten(dim, (n - 1, 4)).unbind(dim + 1)
        lo, hi = grad.narrow(dim, 0, n - 1), grad.narrow(dim, 1, n - 1)
        lo.copy_(p0)
        grad.narrow(dim, n - 1, 1).copy_(grad_out.narrow(dim, 4 * (n - 1), 1))
        lo.add_(p1, alpha=0.75).add_(p2, alpha=0.5).add_(p3, alpha=0.25)  # x[i] feeds 4i + r with weight 1 - r/4
        hi.add_(p1, alpha=0.25).add_(p2, alpha=0.5).add_(p3, alpha=0.75)  # x[i + 1] feeds it with weight r/4
        return grad, None


def _x4_along(x: torch.Tensor, dim: int, fusable: bool) -> torch.Tensor:
    """Exact x4 ``align_corners=True`` upsampling of one axis (size n -> 4n - 3) of a contiguous tensor.

    Output ``4i + r`` (r = 0..3) is ``lerp(x[i], x[i + 1], r/4)``, the last one ``x[n - 1]``. Eagerly each phase is
    written into the output (:class:`_X4Along`). ``fusable``: the same as broadcast arithmetic for a compiler: every
    output blended, the (n+1)-th input being the last one repeated (appended at the low resolution), then the first
    4n - 3 kept, a view; the compiler computes the outputs inside their consumer, and autograd's backward is a sum
    over the four phases.
    """
    n = x.shape[dim]
    if n == 1:
        return x
    if not fusable:
        return _X4Along.apply(x, dim)
    shape = [1] * (x.dim() + 1)
    shape[dim + 1] = 4
    weight = torch.arange(4, device=x.device, dtype=x.dtype).mul_(0.25).view(shape)  # folded by the compiler
    following = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim=dim)
    phases = x.unsqueeze(dim + 1) * (1.0 - weight) + following.unsqueeze(dim + 1) * weight  # ..., n, 4, ...
    return phases.flatten(dim, dim + 1).narrow(dim, 0, 4 * n - 3)


def upsample_x4_nhwc(x: torch.Tensor, fusable: bool | None = None) -> torch.Tensor:
    """N x C x h x w (any dtype and memory format) -> fp32 N x (4h-3) x (4w-3) x C with the class dimension innermost,
    as a softmax over classes wants it: contiguous, or with ``fusable`` (default: while ``torch.compile`` traces) a
    view for the compiler to fuse (:func:`_x4_along`)."""
    fusable = torch.compiler.is_compiling() if fusable is None else fusable
    nhwc = x.float().permute(0, 2, 3, 1).contiguous()  # at 1/4 resolution: a small copy, or none for channels_last input
    return _x4_along(_x4_along(nhwc, 1, fusable), 2, fusable)


def upsample_x4(x: torch.Tensor) -> torch.Tensor:
    """N x C x h x w -> fp32 N x C x (4h-3) x (4w-3) in the input's memory format (channels_last stays channels_last)."""
    if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return upsample_x4_nhwc(x).permute(0, 3, 1, 2)
    fusable = torch.compiler.is_compiling()
    nchw = x.float().contiguous()
    return _x4_along(_x4_along(nchw, 2, fusable), 3, fusable)


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """1/4-resolution logits -> fp32 logits at ``size`` (bilinear, ``align_corners=True``, as MSeg), N x C x H x W in
    the logits' memory format: the exact x4 arithmetic when the sizes allow it, else ``F.interpolate``."""
    if exact_x4(logits.shape[-2:], size):
        return upsample_x4(logits)
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=True)


def upsample_logits_nhwc(logits: torch.Tensor, size, fusable: bool | None = None) -> torch.Tensor:
    """As :func:`upsample_logits`, laid out N x H x W x C (contiguous; ``fusable``: see :func:`upsample_x4_nhwc`);
    logits already at ``size`` are only laid out."""
    if exact_x4(logits.shape[-2:], size):
        return upsample_x4_nhwc(logits, fusable)
    x = logits.float().contiguous(memory_format=torch.channels_last)  # F.interpolate keeps channels_last
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    return x.permute(0, 2, 3, 1).contiguous()
