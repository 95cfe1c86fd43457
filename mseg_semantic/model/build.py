"""``build_model(name, num_classes)`` for every architecture: a plain dict from model name to its builder."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from mseg_semantic.errors import UnknownNameError, did_you_mean
from mseg_semantic.model.dinov2 import DINOV2_SPECS
from mseg_semantic.model.hrnet import HRNET_SPECS, HRNet
from mseg_semantic.model.vit_seg import build_dinov2_segmenter

__all__ = ["MODEL_BUILDERS", "MODEL_NAMES", "build_model"]


def _hrnet_builder(name: str) -> Callable[[int], nn.Module]:
    return lambda num_classes: HRNet(HRNET_SPECS[name], num_classes, name=name)


def _dinov2_builder(name: str) -> Callable[[int], nn.Module]:
    return lambda num_classes: build_dinov2_segmenter(name, num_classes)


MODEL_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    **{name: _hrnet_builder(name) for name in HRNET_SPECS},
    **{name: _dinov2_builder(name) for name in DINOV2_SPECS},
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_BUILDERS)


def build_model(name: str, num_classes: int) -> nn.Module:
    """``build_model("hrnet_w48", num_classes=194)``, ``build_model("dinov2_vitb14", 194)``; names: :data:`MODEL_NAMES`."""
    builder = MODEL_BUILDERS.get(name)
    if builder is None:
        raise UnknownNameError(f"unknown model {name!r}{did_you_mean(str(name), MODEL_NAMES)}; valid names: {', '.join(MODEL_NAMES)}")
    return builder(num_classes)
