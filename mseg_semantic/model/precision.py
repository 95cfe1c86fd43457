"""Numeric precision of the forward pass: fp32, or bf16 / fp16 autocast (native ``torch.autocast``, no apex).

Training and inference both run the model through :func:`autocast_context`; the weights stay fp32.
bf16 needs no loss scaling and also runs on CPUs; fp16 needs a GradScaler when training
(:func:`mseg_semantic.training.optim.make_grad_scaler`).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device_type: str, cache_enabled: bool = True) -> ContextManager:
    """The context to run a forward pass in at ``precision`` on a device of ``device_type``.

    ``cache_enabled=False``: no cache of the weights' low-precision copies, which a CUDA-graph capture needs.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=device_type, dtype=_DTYPES[precision], cache_enabled=cache_enabled)
