"""HRNet's last upsampling (1/4 resolution -> input size, bilinear, ``align_corners=True``) as exact x4 arithmetic.

With ``align_corners=True`` output pixel ``j`` of an axis reads input position ``j * (n - 1) / (m - 1)``. When the
output size is ``m = 4 * (n - 1) + 1`` (a 713 crop gives 179 logits: 713 = 4 * 178 + 1) that position is
``j / 4``: output ``4 * i + r`` is ``(1 - r/4) * x[i] + (r/4) * x[i + 1]`` for ``r`` in 0..3, and the last output is
``x[n - 1]``. So the upsampling is a broadcast product with the four weights {0, .25, .5, .75} per axis (rows, then
columns). Its backward is then a sum over the four phases (a strided reduction) instead of the scatter of atomic adds
that ``F.interpolate``'s backward is on a GPU, and ``torch.compile`` sees plain pointwise arithmetic it can fuse
into whatever consumes the upsampled logits (a softmax, a loss).

The same numbers as ``F.interpolate(x.float(), size, mode="bilinear", align_corners=True)`` up to float rounding
(F.interpolate computes the same weights, in another order of the two axes); the output is fp32 as there.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["exact_x4", "upsample_logits", "upsample_logits_nhwc", "upsample_x4", "upsample_x4_nhwc"]


def exact_x4(low_hw: Sequence[int], size: Sequence[int]) -> bool:
    """Whether ``align_corners=True`` upsampling from ``low_hw`` to ``size`` is the exact x4 map (``m = 4n - 3``)."""
    return len(low_hw) == len(size) == 2 and all(int(m) == 4 * int(n) - 3 and int(n) >= 1 for n, m in zip(low_hw, size))


def _x4_along(x: torch.Tensor, dim: int, fusable: bool = False) -> torch.Tensor:
    """Exact x4 ``align_corners=True`` upsampling of one axis (size n -> 4n - 3).

    Output ``4i + r`` (r = 0..3) is ``x[i] * (1 - r/4) + x[i + 1] * r/4``, the last one ``x[n - 1]``. Eager
    (``fusable=False``): the 4(n - 1) blended outputs, then the last row appended (a contiguous result, whose backward
    only slices). ``fusable``: every output blended, the (n+1)-th input being the last one repeated (appended at the
    low resolution), then the first 4n - 3 kept: a view, so that a compiler computes the outputs inside their
    consumer instead of writing them out for the concatenation.
    """
    n = x.shape[dim]
    if n == 1:
        return x
    shape = [1] * (x.dim() + 1)
    shape[dim + 1] = 4
    # made on the device (not copied from the host): a CUDA graph can capture it, and compile folds it
    weight = torch.arange(4, device=x.device, dtype=x.dtype).mul_(0.25).view(shape)
    if fusable:
        following = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim=dim)
        phases = x.unsqueeze(dim + 1) * (1.0 - weight) + following.unsqueeze(dim + 1) * weight  # ..., n, 4, ...
        return phases.flatten(dim, dim + 1).narrow(dim, 0, 4 * n - 3)
    lo = x.narrow(dim, 0, n - 1).unsqueeze(dim + 1)
    hi = x.narrow(dim, 1, n - 1).unsqueeze(dim + 1)
    phases = lo * (1.0 - weight) + hi * weight  # ..., n - 1, 4, ...
    return torch.cat([phases.flatten(dim, dim + 1), x.narrow(dim, n - 1, 1)], dim=dim)


def upsample_x4_nhwc(x: torch.Tensor, fusable: bool = False) -> torch.Tensor:
    """N x C x h x w (any dtype and memory format) -> fp32 N x (4h-3) x (4w-3) x C with the class dimension innermost,
    as a softmax over classes wants it: contiguous, or with ``fusable`` a view for a compiler to fuse (above)."""
    nhwc = x.float().permute(0, 2, 3, 1).contiguous()  # at 1/4 resolution: a small copy, or none for channels_last input
    return _x4_along(_x4_along(nhwc, 1, fusable), 2, fusable)


def upsample_x4(x: torch.Tensor) -> torch.Tensor:
    """N x C x h x w -> fp32 N x C x (4h-3) x (4w-3) in the input's memory format (channels_last stays channels_last)."""
    if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return upsample_x4_nhwc(x).permute(0, 3, 1, 2)
    nchw = x.float().contiguous()
    return _x4_along(_x4_along(nchw, 2), 3)


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """1/4-resolution logits -> fp32 logits at ``size`` (bilinear, ``align_corners=True``, as MSeg), N x C x H x W in
    the logits' memory format: the exact x4 arithmetic when the sizes allow it, else ``F.interpolate``."""
    if exact_x4(logits.shape[-2:], size):
        return upsample_x4(logits)
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=True)


def upsample_logits_nhwc(logits: torch.Tensor, size, fusable: bool = False) -> torch.Tensor:
    """As :func:`upsample_logits`, laid out N x H x W x C (contiguous; ``fusable``: see :func:`upsample_x4_nhwc`);
    logits already at ``size`` are only laid out."""
    if exact_x4(logits.shape[-2:], size):
        return upsample_x4_nhwc(logits, fusable)
    x = logits.float().contiguous(memory_format=torch.channels_last)  # F.interpolate keeps channels_last
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    return x.permute(0, 2, 3, 1).contiguous()
