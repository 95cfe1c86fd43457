"""HRNetV2 and DINOv2 segmentation models, weights files (MSeg releases, ImageNet backbones, this project's), released weights."""

from mseg_semantic.model.build import MODEL_BUILDERS, MODEL_NAMES, build_model
from mseg_semantic.model.dinov2 import DINOV2_SPECS, DinoV2Backbone, ViTSpec, build_backbone
from mseg_semantic.model.hrnet import HRNET_SPECS, HRNet, HRNetSpec, init_weights
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
from mseg_semantic.model.vit_seg import BACKBONE_MODES, DinoV2Segmenter, layer_decay_param_groups, set_backbone_mode

__all__ = [
    "BACKBONE_MODES",
    "DINOV2_SPECS",
    "DinoV2Backbone",
    "DinoV2Segmenter",
    "MODEL_BUILDERS",
    "ViTSpec",
    "build_backbone",
    "layer_decay_param_groups",
    "set_backbone_mode",
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
