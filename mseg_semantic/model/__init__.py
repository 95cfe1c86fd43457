"""HRNetV2 segmentation models, weights files (MSeg releases, ImageNet backbones, this project's), released weights."""

from mseg_semantic.model.hrnet import HRNET_SPECS, MODEL_NAMES, HRNet, HRNetSpec, build_model, init_weights
from mseg_semantic.model.loading import (
    CheckpointMismatchError,
    LoadReport,
    WeightsFileError,
    load_weights,
    read_state_dict,
    save_weights,
    unwrap_model,
)
from mseg_semantic.model.precision import PRECISIONS, autocast_context

__all__ = [
    "HRNET_SPECS",
    "MODEL_NAMES",
    "PRECISIONS",
    "CheckpointMismatchError",
    "HRNet",
    "HRNetSpec",
    "LoadReport",
    "WeightsFileError",
    "autocast_context",
    "build_model",
    "init_weights",
    "load_weights",
    "read_state_dict",
    "save_weights",
    "unwrap_model",
]
