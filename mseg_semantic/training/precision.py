"""Numeric precision of training: fp32, bf16 or fp16, with native autocast instead of Apex.

MSeg trained with Apex ``opt_level`` O0..O3. The levels map onto native mixed precision as follows
(the weights and the optimizer state always stay fp32, which is what O1/O2 did and what O3 lacked):

=========  ===========================================================
opt_level  here
=========  ===========================================================
O0         fp32 (no autocast)
O1, O2     fp16 autocast + dynamic loss scaling (``torch.amp.GradScaler``)
O3         fp16 autocast + dynamic loss scaling (fp32 master weights kept for stability)
=========  ===========================================================

bf16 needs no loss scaling and also runs on CPUs.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, ContextManager

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
OPT_LEVEL_TO_PRECISION = {"O0": "fp32", "O1": "fp16", "O2": "fp16", "O3": "fp16"}

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str | None, opt_level: str | None = "O0") -> str:
    """``TRAIN.precision`` when set, else the mapping of MSeg's ``Distributed.opt_level``."""
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"TRAIN.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
        return precision
    level = (opt_level or "O0").strip().upper()
    if level not in OPT_LEVEL_TO_PRECISION:
        raise ValueError(f"Distributed.opt_level={opt_level!r} is not one of {', '.join(OPT_LEVEL_TO_PRECISION)} (or set TRAIN.precision=fp32|bf16|fp16)")
    return OPT_LEVEL_TO_PRECISION[level]


def autocast_factory(precision: str, device_type: str) -> Callable[[], ContextManager]:
    """A zero-argument callable returning the autocast context for the forward pass."""
    if precision == "fp32":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device_type, dtype=_DTYPES[precision])


def make_grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler | None:
    """Loss scaling only for fp16; bf16 has fp32's exponent range."""
    return torch.amp.GradScaler(device_type) if precision == "fp16" else None
