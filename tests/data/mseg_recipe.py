"""MSeg's sequential float32 training recipe, step by step over the whole image (test and benchmark code).

This is the baseline the fused pipeline in :mod:`mseg_semantic.data.transforms` is measured and tested
against (benchmarks/bench_augment.py, tests/data/test_data_transforms.py); the package never uses it.
Each step follows MSeg's transform classes: ResizeShort, RandScale, RandRotate, RandomGaussianBlur,
RandomHorizontalFlip, Crop('rand'), ToTensor, Normalize. Random numbers come from a numpy Generator in the
same order as :func:`~mseg_semantic.data.transforms.sample_augment_params`, so one seed gives both pipelines
the same parameters; ``params`` forces them.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from mseg_semantic.data.transforms import (
    BLUR_KERNEL,
    IMAGENET_STD,
    MEAN_RGB_255,
    AugmentConfig,
    AugmentParams,
    short_side_size,
)
from mseg_semantic.taxonomy import IGNORE_INDEX


def augment_config(**values) -> AugmentConfig:
    """The schema's TRAIN defaults with ``values`` changed (AugmentConfig itself has no defaults)."""
    from mseg_semantic.config import load_config

    return AugmentConfig.from_config(load_config(None, [f"TRAIN.{k}={v}" for k, v in values.items()]).TRAIN)


def sequential_augment(
    image: np.ndarray,
    label: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator | None = None,
    params: AugmentParams | None = None,
) -> tuple[np.ndarray, np.ndarray, AugmentParams]:
    """uint8 RGB image + uint8 label -> (float32 crop H x W x 3 on 0..255, uint8 label crop, the parameters)."""
    if (rng is None) == (params is None):
        raise ValueError("sequential_augment: pass exactly one of rng or params")
    image = image.astype(np.float32)  # MSeg's dataset converts to float32 before any transform

    # ResizeShort
    h, w = label.shape
    new_h, new_w = short_side_size(h, w, cfg.short_size)
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)

    # RandScale
    scale = params.scale if params else cfg.scale_min + (cfg.scale_max - cfg.scale_min) * rng.random()
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)

    # RandRotate about the canvas centre, canvas size kept
    if params:
        angle = params.angle
    else:
        angle = cfg.rotate_min + (cfg.rotate_max - cfg.rotate_min) * rng.random() if rng.random() < cfg.rotate_prob else None
    if angle is not None:
        h, w = label.shape
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=MEAN_RGB_255)
        label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE_INDEX)

    # RandomGaussianBlur
    blur = params.blur if params else bool(rng.random() < cfg.blur_prob)
    if blur:
        image = cv2.GaussianBlur(image, (BLUR_KERNEL, BLUR_KERNEL), 0)

    # RandomHorizontalFlip
    flip = params.flip if params else bool(rng.random() < cfg.flip_prob)
    if flip:
        image = cv2.flip(image, 1)
        label = cv2.flip(label, 1)

    # Crop('rand'): pad to the crop size (centred), then a uniform offset
    h, w = label.shape
    pad_h, pad_w = max(cfg.train_h - h, 0), max(cfg.train_w - w, 0)
    if pad_h or pad_w:
        top, left = pad_h // 2, pad_w // 2
        image = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=MEAN_RGB_255)
        label = cv2.copyMakeBorder(label, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    h, w = label.shape
    if params:
        crop_top, crop_left = params.crop_top, params.crop_left
    else:
        crop_top = int(rng.integers(0, h - cfg.train_h + 1))
        crop_left = int(rng.integers(0, w - cfg.train_w + 1))
    image = image[crop_top : crop_top + cfg.train_h, crop_left : crop_left + cfg.train_w]
    label = label[crop_top : crop_top + cfg.train_h, crop_left : crop_left + cfg.train_w]
    used = AugmentParams(scale=scale, angle=angle, blur=blur, flip=flip, crop_top=crop_top, crop_left=crop_left)
    return np.ascontiguousarray(image), np.ascontiguousarray(label), used


def to_normalized_tensor(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """MSeg's ToTensor + Normalize on the float32 crop."""
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()
    for channel, mean, std in zip(tensor, MEAN_RGB_255, IMAGENET_STD):
        channel.sub_(mean).div_(255.0 * std)
    return tensor, torch.from_numpy(label).long()

