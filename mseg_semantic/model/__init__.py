"""HRNetV2 segmentation models (MSeg's checkpoint layout), checkpoint loading, and released weights."""

from mseg_semantic.model.hrnet import (
    HRNET_SPECS,
    MODEL_NAMES,
    HRNet,
    HRNetSpec,
    build_model,
    init_weights,
    maybe_sync_batchnorm,
)
from mseg_semantic.model.loading import CheckpointMismatchError, LoadReport, load_weights

__all__ = [
    "HRNET_SPECS",
    "MODEL_NAMES",
    "CheckpointMismatchError",
    "HRNet",
    "HRNetSpec",
    "LoadReport",
    "build_model",
    "init_weights",
    "load_weights",
    "maybe_sync_batchnorm",
]
