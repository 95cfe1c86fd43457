"""MSeg's training augmentation as one affine warp of the crop window, on uint8.

MSeg's recipe (``mseg_semantic/utils/transform.py`` upstream) runs every step over the whole float32 image:
ResizeShort -> RandScale -> RandRotate (p=0.5, about the canvas centre, canvas size kept) -> RandomGaussianBlur
(p=0.5, 5x5, sigma from the kernel size) -> RandomHorizontalFlip (p=0.5) -> Crop 'rand' (pad with the mean /
255 when the canvas is smaller than the crop, then a uniform random offset) -> ToTensor -> Normalize.

Here all random parameters are drawn first (same draws, same order), the geometry (short-side resize, scale,
rotation, flip, crop offset) becomes one 2x3 matrix from crop pixel to source pixel, and ``cv2.warpAffine``
computes only the crop window: bilinear for the image, nearest for the label, constant mean / 255 outside.
Crop pixels outside the scaled canvas are set to the mean / 255 afterwards, exactly where MSeg's Crop pads.
Normalisation is left to :func:`normalize_images` on the training device.

Where this differs from the sequential float32 recipe (by design, measured in tests/data):
- one bilinear resampling instead of two or three, on uint8 (rounding <= 0.5 grey level), so slightly sharper;
- the label is sampled at pixel centres, like the image; MSeg's INTER_NEAREST resizes sample it off-centre,
  so MSeg's label sits up to ~1-3 px from its own image at large scales;
- the blur runs on the crop window plus a 2 px margin; the result only differs within 2 px of a canvas edge
  that falls inside the crop (MSeg blurs the whole canvas with reflected borders before cropping);
- the padding value is the mean rounded to uint8 (normalises to <= 0.006 instead of 0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on the 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_RGB_255 = tuple(255.0 * m for m in IMAGENET_MEAN)
MEAN_RGB_UINT8 = tuple(int(round(m)) for m in MEAN_RGB_255)  # (124, 116, 104)
BLUR_KERNEL = 5  # MSeg's RandomGaussianBlur(radius=5): a 5x5 kernel, sigma derived by OpenCV (1.1)
_BLUR_MARGIN = BLUR_KERNEL // 2
_FOUR_CHANNEL_MAX_FOOTPRINT = 8  # source rectangle / crop area up to which the 4-channel path pays


@dataclass(frozen=True)
class AugmentConfig:
    """The numbers of MSeg's training recipe: the TRAIN keys of the same names (their defaults live in the schema)."""

    train_h: int
    train_w: int
    short_size: int
    scale_min: float
    scale_max: float
    rotate_min: float
    rotate_max: float
    rotate_prob: float
    blur_prob: float
    flip_prob: float

    @classmethod
    def from_config(cls, train: Mapping[str, Any]) -> "AugmentConfig":
        """From a config's TRAIN section."""
        return cls(**{field.name: train[field.name] for field in fields(cls)})

    def __post_init__(self) -> None:
        for key in ("train_h", "train_w", "short_size"):
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise UserError(f"augmentation: {key} must be a positive integer, got {value!r}")
        if not 0 < self.scale_min <= self.scale_max:
            raise UserError(f"augmentation: need 0 < scale_min <= scale_max, got scale_min={self.scale_min} scale_max={self.scale_max}")
        if self.rotate_min > self.rotate_max:
            raise UserError(f"augmentation: need rotate_min <= rotate_max, got {self.rotate_min} > {self.rotate_max}")
        for key in ("rotate_prob", "blur_prob", "flip_prob"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"augmentation: {key} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class AugmentParams:
    """Every random choice of one training crop (the canvas is the image after short-side resize and scale)."""

    scale: float
    angle: float | None  # degrees, counter-clockwise as cv2.getRotationMatrix2D; None: no rotation
    blur: bool
    flip: bool
    crop_top: int  # offset of the crop in the (possibly padded) canvas, as MSeg's Crop draws it
    crop_left: int


def short_side_size(src_h: int, src_w: int, short_size: int) -> tuple[int, int]:
    """Size after MSeg's ResizeShort (the long side truncated, as MSeg does)."""
    if src_h <= src_w:
        return short_size, int(src_w * (short_size / float(src_h)))
    return int(src_h * (short_size / float(src_w))), short_size


def scaled_size(h1: int, w1: int, scale: float) -> tuple[int, int]:
    """Size cv2.resize(fx=fy=scale) produces (rounded to nearest, as OpenCV's saturate_cast)."""
    return max(1, int(round(h1 * scale))), max(1, int(round(w1 * scale)))


def sample_augment_params(rng: np.random.Generator, src_h: int, src_w: int, cfg: AugmentConfig) -> AugmentParams:
    """Draw one crop's parameters with MSeg's distribution (and MSeg's draw order)."""
    scale = cfg.scale_min + (cfg.scale_max - cfg.scale_min) * rng.random()
    angle = None
    if rng.random() < cfg.rotate_prob:
        angle = cfg.rotate_min + (cfg.rotate_max - cfg.rotate_min) * rng.random()
    blur = bool(rng.random() < cfg.blur_prob)
    flip = bool(rng.random() < cfg.flip_prob)
    h1, w1 = short_side_size(src_h, src_w, cfg.short_size)
    h2, w2 = scaled_size(h1, w1, scale)
    # MSeg's Crop pads to at least the crop size, then picks a uniform integer offset (both ends included).
    crop_top = int(rng.integers(0, max(h2, cfg.train_h) - cfg.train_h + 1))
    crop_left = int(rng.integers(0, max(w2, cfg.train_w) - cfg.train_w + 1))
    return AugmentParams(scale=scale, angle=angle, blur=blur, flip=flip, crop_top=crop_top, crop_left=crop_left)


def _resize_inverse(scale_x: float, scale_y: float) -> np.ndarray:
    """Destination pixel -> source pixel of a bilinear resize (pixel-centre convention, as cv2.resize)."""
    return np.array([[1.0 / scale_x, 0.0, 0.5 / scale_x - 0.5], [0.0, 1.0 / scale_y, 0.5 / scale_y - 0.5], [0.0, 0.0, 1.0]])


def crop_to_source_matrix(src_h: int, src_w: int, params: AugmentParams, cfg: AugmentConfig) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """3x3 matrix mapping crop pixel (x, y, 1) to source pixel, and the canvas rectangle in crop coordinates.

    The rectangle (top, left, bottom, right), half-open, is where the crop sees the scaled canvas; outside it
    MSeg's Crop padded with the mean / ignore label.
    """
    h1, w1 = short_side_size(src_h, src_w, cfg.short_size)
    h2, w2 = scaled_size(h1, w1, params.scale)
    pad_top = max(cfg.train_h - h2, 0) // 2
    pad_left = max(cfg.train_w - w2, 0) // 2
    # crop pixel -> canvas pixel (after rotation and flip)
    to_canvas = np.array([[1.0, 0.0, params.crop_left - pad_left], [0.0, 1.0, params.crop_top - pad_top], [0.0, 0.0, 1.0]])
    unflip = np.eye(3)
    if params.flip:
        unflip = np.array([[-1.0, 0.0, w2 - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    unrotate = np.eye(3)
    if params.angle is not None:
        # MSeg rotates about (w/2, h/2) of the canvas, keeping the canvas size
        forward = np.vstack([cv2.getRotationMatrix2D((w2 / 2, h2 / 2), params.angle, 1.0), [0.0, 0.0, 1.0]])
        unrotate = np.linalg.inv(forward)
    unscale = _resize_inverse(params.scale, params.scale)  # cv2.resize(fx=scale) maps with scale itself
    unshort = _resize_inverse(w1 / src_w, h1 / src_h)  # cv2.resize(dsize) maps with dsize / size
    matrix = unshort @ unscale @ unrotate @ unflip @ to_canvas
    top, left = pad_top - params.crop_top, pad_left - params.crop_left
    return matrix, (top, left, top + h2, left + w2)


def _shifted(matrix: np.ndarray, margin: int) -> np.ndarray:
    """The same map for a window that starts ``margin`` pixels before the crop."""
    return matrix @ np.array([[1.0, 0.0, -margin], [0.0, 1.0, -margin], [0.0, 0.0, 1.0]])


def _warp_image(image: np.ndarray, matrix: np.ndarray, out_w: int, out_h: int, pad_value: tuple[int, int, int]) -> np.ndarray:
    """Bilinear warp of the output window; H x W x 4 (alpha unused) when the fast path applies, else x 3.

    OpenCV's 4-channel bilinear warp is about twice as fast as its 3-channel one, and converting just the
    source rectangle the window reads (a few times the crop area at most) to 4 channels costs far less than
    that saving. The result is the same up to the rounding of a few sampling coordinates (1 grey level).
    """
    src_h, src_w = image.shape[:2]
    corners = matrix @ np.array([[0.0, out_w - 1.0, 0.0, out_w - 1.0], [0.0, 0.0, out_h - 1.0, out_h - 1.0], [1.0, 1.0, 1.0, 1.0]])
    x0, y0 = max(int(np.floor(corners[0].min())) - 1, 0), max(int(np.floor(corners[1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(corners[0].max())) + 2, src_w), min(int(np.ceil(corners[1].max())) + 2, src_h)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if x1 > x0 and y1 > y0 and (x1 - x0) * (y1 - y0) <= _FOUR_CHANNEL_MAX_FOOTPRINT * out_w * out_h:
        source = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_BGR2BGRA)  # keeps the channel order, adds alpha
        shifted = matrix.copy()
        shifted[0, 2] -= x0
        shifted[1, 2] -= y0
        border = tuple(float(v) for v in pad_value) + (255.0,)
        return cv2.warpAffine(source, shifted[:2], (out_w, out_h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    border = tuple(float(v) for v in pad_value)
    return cv2.warpAffine(image, matrix[:2], (out_w, out_h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def _augment(image, label, params, cfg, pad_value) -> tuple[np.ndarray, np.ndarray]:
    """(train_h x train_w x 3 or 4 uint8, train_h x train_w uint8 label)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"augment_crop: expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    if label.dtype not in (np.uint8, np.uint16) or label.shape != image.shape[:2]:
        raise ValueError(f"augment_crop: expected an H x W uint8/uint16 label matching the image {image.shape[:2]}, got {label.dtype} {label.shape}")
    src_h, src_w = label.shape
    matrix, (top, left, bottom, right) = crop_to_source_matrix(src_h, src_w, params, cfg)
    margin = _BLUR_MARGIN if params.blur else 0
    out_h, out_w = cfg.train_h, cfg.train_w
    crop = _warp_image(image, _shifted(matrix, margin), out_w + 2 * margin, out_h + 2 * margin, pad_value)
    if params.blur:
        crop = cv2.GaussianBlur(crop, (BLUR_KERNEL, BLUR_KERNEL), 0)[margin:-margin, margin:-margin]
    crop_label = cv2.warpAffine(
        label,
        matrix[:2],
        (out_w, out_h),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float(IGNORE_INDEX),
    )
    if top > 0 or left > 0 or bottom < out_h or right < out_w:
        inside = np.zeros((out_h, out_w), dtype=bool)
        inside[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = True
        crop[~inside, :3] = pad_value
        crop_label[~inside] = IGNORE_INDEX
    return crop, crop_label


def augment_crop(
    image: np.ndarray,
    label: np.ndarray,
    params: AugmentParams,
    cfg: AugmentConfig,
    pad_value: tuple[int, int, int] = MEAN_RGB_UINT8,
) -> tuple[np.ndarray, np.ndarray]:
    """One training crop: uint8 image (H x W x 3, any channel order; ``pad_value`` in the same order) and
    uint8/uint16 label (H x W) -> (train_h x train_w x 3 uint8, train_h x train_w label of the same dtype)."""
    crop, crop_label = _augment(image, label, params, cfg, pad_value)
    return np.ascontiguousarray(crop[:, :, :3]), crop_label


def augment_crop_chw(image_bgr: np.ndarray, label: np.ndarray, params: AugmentParams, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training path: a BGR image as OpenCV decodes it -> (3 x H x W uint8 RGB, H x W uint8 label).

    The channel swap and the layout change happen once, on the small crop.
    """
    crop, crop_label = _augment(image_bgr, label, params, cfg, MEAN_RGB_UINT8[::-1])
    blue, green, red = cv2.split(crop)[:3]
    return np.stack([red, green, blue]), crop_label


@functools.lru_cache(maxsize=8)
def _mean_std_255(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Made once per device: building them per batch would copy from the host and wait for the CUDA stream."""
    with torch.inference_mode(False):  # usable outside inference mode even when first made inside it
        mean = torch.tensor(MEAN_RGB_255, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor([255.0 * s for s in IMAGENET_STD], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) N x 3 x H x W RGB on any device -> float32 normalised with ImageNet mean/std."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"normalize_images: expected N x 3 x H x W, got shape {tuple(images.shape)}")
    mean, std = _mean_std_255(images.device)
    return (images.to(torch.float32) - mean) / std

