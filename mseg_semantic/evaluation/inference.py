"""Sliding-window and whole-image inference, with flip and multi-scale averaging, batched.

The procedure follows MSeg's evaluation (mseg_semantic/tool/inference_task.py), done in batches:

1. For each scale ``s``: resize the image so its short side is ``round(s * base_size)`` (aspect kept, bilinear).
2. Pad it to at least the crop size with the ImageNet mean (0 after normalisation), the extra split between
   top/bottom and left/right as MSeg does (``pad // 2`` before).
3. Windows of the crop size with stride ``ceil(crop * 2/3)``; the last window of a row/column is shifted back
   so it ends at the border. Every window, and its horizontal flip when ``flip``, is one item of a batch; all
   items of an image (and of the other images of the call) are run in chunks of ``window_batch``.
4. Each item's logits -> softmax probabilities (-> projected to the output taxonomy when a
   :class:`~mseg_semantic.taxonomy.Projection` is given: the sum of the model classes' probabilities per output
   class, exactly as TaxonomyConverter does).
   A window's output is the mean of its plain and flipped probabilities; overlapping windows are averaged.
5. The padding is cut off and the probabilities resized (bilinear) to the original image size; the scales
   are averaged there and the label is the argmax.

Whole-image mode replaces step 3 by one forward of the whole padded image (padded to a multiple of
``size_divisor``). Images are uint8 RGB ``H x W x 3`` numpy arrays (or ``3 x H x W`` uint8 tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mseg_semantic.data.transforms import normalize_images
from mseg_semantic.errors import UserError
from mseg_semantic.model import autocast_context
from mseg_semantic.taxonomy import Projection

__all__ = [
    "InferenceSettings",
    "window_starts",
    "resized_hw",
    "predict_probabilities",
    "segment_images",
]

PRECISIONS = ("fp32", "bf16")
MODES = ("sliding", "whole")


@dataclass(frozen=True)
class InferenceSettings:
    """How an image is run through the model; the config's TEST keys (their defaults live in the schema)."""

    crop_h: int  # TEST.test_h
    crop_w: int  # TEST.test_w
    base_size: int | None  # short side before scaling; None keeps the image's own size
    scales: tuple[float, ...]
    flip: bool
    mode: str  # TEST.inference_mode: sliding | whole
    window_batch: int  # items (windows or flipped windows) per forward pass
    precision: str  # TEST.test_precision: fp32 | bf16 (autocast; bf16 is meant for CUDA)
    stride_rate: float = 2.0 / 3.0  # MSeg's, not a config key
    size_divisor: int = 32  # whole-image mode pads to a multiple of this

    @classmethod
    def from_config(cls, test: Mapping[str, Any]) -> "InferenceSettings":
        """From a config's TEST section."""
        return cls(crop_h=test["test_h"], crop_w=test["test_w"], base_size=test["base_size"], scales=tuple(test["scales"]),
                   flip=test["flip"], mode=test["inference_mode"], window_batch=test["window_batch"], precision=test["test_precision"])

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"inference mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.crop_h <= 0 or self.crop_w <= 0:
            raise UserError(f"crop size must be positive, got {self.crop_h} x {self.crop_w}")
        if self.base_size is not None and self.base_size <= 0:
            raise UserError(f"base_size must be positive or None, got {self.base_size}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise UserError(f"scales must be a non-empty list of positive numbers, got {list(self.scales)}")
        if self.window_batch <= 0:
            raise UserError(f"window_batch must be positive, got {self.window_batch}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    @property
    def stride_h(self) -> int:
        return int(math.ceil(self.crop_h * self.stride_rate))

    @property
    def stride_w(self) -> int:
        return int(math.ceil(self.crop_w * self.stride_rate))


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of a (padded) length >= crop, MSeg's placement."""
    if length < crop:
        raise ValueError(f"length {length} is smaller than the crop {crop}; pad first")
    count = int(math.ceil((length - crop) / stride)) + 1
    return [min(i * stride + crop, length) - crop for i in range(count)]


def resized_hw(h: int, w: int, base_size: int | None, scale: float) -> tuple[int, int]:
    """Size after resizing the short side to ``round(scale * base_size)`` (``base_size`` None: the short side)."""
    short = round(scale * (base_size if base_size is not None else min(h, w)))
    if h > w:
        return round(short / w * h), short
    return short, round(short / h * w)


def _to_chw_tensor(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
    return image.to(device, non_blocking=True)


def _prepare(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8/float 3 x H x W -> normalised float 3 x h x w at ``size``."""
    x = image.float().unsqueeze(0)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return normalize_images(x)[0]


@dataclass
class _Canvas:
    """One image at one scale: the padded input and the accumulated probabilities."""

    image_index: int
    inner_hw: tuple[int, int]
    pad_top: int
    pad_left: int
    padded: torch.Tensor  # 3 x PH x PW normalised
    probs: torch.Tensor | None = None  # K x PH x PW
    counts: torch.Tensor | None = None  # PH x PW


def _pad(x: torch.Tensor, target_h: int, target_w: int) -> tuple[torch.Tensor, int, int]:
    pad_h = max(target_h - x.shape[1], 0)
    pad_w = max(target_w - x.shape[2], 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        # zero after normalisation == the ImageNet mean before it, MSeg's padding value
        x = F.pad(x, (left, pad_w - left, top, pad_h - top), value=0.0)
    return x, top, left


def _items(canvases: Sequence[_Canvas], settings: InferenceSettings) -> Iterator[tuple[int, int, int, int, int, bool]]:
    """(canvas index, y, x, h, w, flipped) for every forward item."""
    flips = (False, True) if settings.flip else (False,)
    for ci, canvas in enumerate(canvases):
        ph, pw = canvas.padded.shape[1:]
        if settings.mode == "whole":
            windows = [(0, 0, ph, pw)]
        else:
            windows = [
                (y, x, settings.crop_h, settings.crop_w)
                for y in window_starts(ph, settings.crop_h, settings.stride_h)
                for x in window_starts(pw, settings.crop_w, settings.stride_w)
            ]
        for y, x, h, w in windows:
            for flipped in flips:
                yield ci, y, x, h, w, flipped


def _chunks(items: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    """Consecutive items of equal window shape, at most ``size`` per chunk."""
    chunk: list[tuple] = []
    for item in items:
        if chunk and (len(chunk) == size or chunk[-1][3:5] != item[3:5]):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


@torch.inference_mode()
def predict_probabilities(
    model: torch.nn.Module,
    images: Sequence[np.ndarray | torch.Tensor],
    settings: InferenceSettings,
    projection: Projection | None = None,
) -> list[torch.Tensor]:
    """Per image, float32 ``K x H x W`` class probabilities at the image's own resolution, on the model's device.

    ``projection``: how the C softmax probabilities of the model become K output classes (e.g.
    ``TaxonomyConverter.projection(dataset)``); without it K = C.
    """
    if len(images) == 0:
        return []
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    tensors = [_to_chw_tensor(im, device) for im in images]
    totals: list[torch.Tensor | None] = [None] * len(tensors)
    was_training = model.training
    model.eval()
    try:
        for scale in settings.scales:
            canvases = []
            for index, image in enumerate(tensors):
                h, w = image.shape[1:]
                inner = resized_hw(h, w, settings.base_size, scale)
                x = _prepare(image, inner)
                if settings.mode == "whole":
                    d = settings.size_divisor
                    target = (math.ceil(inner[0] / d) * d, math.ceil(inner[1] / d) * d)
                else:
                    target = (settings.crop_h, settings.crop_w)
                padded, top, left = _pad(x, *target)
                canvases.append(_Canvas(index, inner, top, left, padded))
            for chunk in _chunks(_items(canvases, settings), settings.window_batch):
                _run_chunk(model, canvases, chunk, settings, projection, device)
            for canvas in canvases:
                probs = canvas.probs / canvas.counts
                ih, iw = canvas.inner_hw
                probs = probs[:, canvas.pad_top : canvas.pad_top + ih, canvas.pad_left : canvas.pad_left + iw]
                out_hw = tuple(tensors[canvas.image_index].shape[1:])
                if tuple(probs.shape[1:]) != out_hw:
                    probs = F.interpolate(probs.unsqueeze(0), size=out_hw, mode="bilinear", align_corners=False)[0]
                i = canvas.image_index
                totals[i] = probs if totals[i] is None else totals[i].add_(probs)
                canvas.probs = canvas.counts = None  # free before the next scale
    finally:
        model.train(was_training)
    if len(settings.scales) > 1:
        for total in totals:
            total.div_(len(settings.scales))
    return totals  # type: ignore[return-value]


def _run_chunk(
    model: torch.nn.Module,
    canvases: Sequence[_Canvas],
    chunk: list[tuple[int, int, int, int, int, bool]],
    settings: InferenceSettings,
    projection: Projection | None,
    device: torch.device,
) -> None:
    crops = []
    for ci, y, x, h, w, flipped in chunk:
        crop = canvases[ci].padded[:, y : y + h, x : x + w]
        crops.append(crop.flip(-1) if flipped else crop)
    batch = torch.stack(crops)
    with autocast_context(settings.precision, device.type):  # the forward only: softmax and sums stay fp32
        logits = model(batch)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = logits.float()
    if logits.shape[-2:] != batch.shape[-2:]:
        logits = F.interpolate(logits, size=batch.shape[-2:], mode="bilinear", align_corners=True)
    probs = torch.softmax(logits, dim=1)
    if projection is not None:
        if projection.num_inputs != probs.shape[1]:
            raise ValueError(f"the projection takes {projection.num_inputs} classes but the model outputs {probs.shape[1]}")
        probs = projection(probs)
    weight = 0.5 if settings.flip else 1.0  # a window's result is the mean of its plain and flipped passes
    for (ci, y, x, h, w, flipped), p in zip(chunk, probs):
        canvas = canvases[ci]
        if canvas.probs is None:
            ph, pw = canvas.padded.shape[1:]
            canvas.probs = torch.zeros((p.shape[0], ph, pw), device=device)
            canvas.counts = torch.zeros((ph, pw), device=device)
        canvas.probs[:, y : y + h, x : x + w].add_(p.flip(-1) if flipped else p, alpha=weight)
        if not flipped:
            canvas.counts[y : y + h, x : x + w] += 1


def segment_images(
    model: torch.nn.Module,
    images: Sequence[np.ndarray | torch.Tensor],
    settings: InferenceSettings,
    projection: Projection | None = None,
) -> list[torch.Tensor]:
    """Per image, the int64 ``H x W`` label map (argmax of :func:`predict_probabilities`), on the model's device."""
    return [p.argmax(0) for p in predict_probabilities(model, images, settings, projection)]

