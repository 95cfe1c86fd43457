"""Datasets on disk, MSeg's augmentation as one affine warp, multi-dataset mixing, and the synthetic demo world."""

from mseg_semantic.data.datasets import TrainSampleReader, ValDataset, collate_train_batch
from mseg_semantic.data.lists import BadSampleError, read_image_rgb, read_label, read_list_file, read_pair
from mseg_semantic.data.loader import TrainLoader, build_train_loader
from mseg_semantic.data.sampler import MixingSampler, SampleRef, SamplerCursor, check_dataset_gpu_mapping
from mseg_semantic.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    AugmentParams,
    augment_crop,
    normalize_images,
    sample_augment_params,
)

__all__ = [
    "TrainSampleReader", "ValDataset", "collate_train_batch", "BadSampleError", "read_image_rgb", "read_label",
    "read_list_file", "read_pair", "TrainLoader", "build_train_loader", "MixingSampler",
    "SampleRef", "SamplerCursor", "check_dataset_gpu_mapping", "IMAGENET_MEAN", "IMAGENET_STD", "AugmentConfig", "AugmentParams",
    "augment_crop", "normalize_images", "sample_augment_params",
]
