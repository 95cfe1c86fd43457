"""From class probabilities to what the tools write: labels, confidence maps, probability files.

Probabilities here are the ``K x H x W`` output of :func:`~mseg_semantic.evaluation.inference.predict_probabilities`
in an :class:`~mseg_semantic.evaluation.model_space.OutputSpace`. The distribution the confidence is read from:

- ``uncovered_classes=ignore``: the K output classes plus 'other' (1 - their sum: the model classes no output class
  receives), K + 1 values summing to 1; the label is 255 where 'other' is the largest.
- ``drop`` (MSeg's rule) or the model's own classes: the K values renormalised to sum to 1 (when a projection
  drops classes they sum to less), i.e. the probability of each class given that the pixel is one of them.

Confidence maps are 16-bit PNGs, ``value / 65535``: ``*_maxprob.png`` the largest probability, ``*_entropy.png``
the entropy divided by its maximum ``ln(number of values)`` (0: certain, 1: uniform). ``*_probs.npz`` (numpy
``savez_compressed``) holds ``probabilities`` (uint16 ``K x H x W``, value / 65535: the K output classes as above,
without 'other'), ``class_names`` and ``scale`` (65535).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mseg_semantic.atomic import atomic_write_bytes
from mseg_semantic.evaluation.inference import ImageProbabilities
from mseg_semantic.evaluation.model_space import OutputSpace, label_dtype
from mseg_semantic.evaluation.visualize import write_png
from mseg_semantic.taxonomy import IGNORE_INDEX

__all__ = ["UINT16_SCALE", "PixelOutputs", "distribution", "pixel_outputs", "to_uint16", "write_confidence", "write_probabilities"]

UINT16_SCALE = 65535


def distribution(probs: torch.Tensor, space: OutputSpace) -> torch.Tensor:
    """The values confidence is read from (module docstring): K (+1 'other') channels summing to 1."""
    total = probs.sum(0, keepdim=True)
    if space.has_other:
        return torch.cat([probs, (1.0 - total).clamp_(min=0.0)])
    return probs / total.clamp(min=torch.finfo(probs.dtype).tiny)


@dataclass
class PixelOutputs:
    """Per-pixel results of one image, on the device they were computed on."""

    label: torch.Tensor  # H x W int64; 255 where 'other' wins
    num_classes: int  # K: sets the dtype labels are written in
    max_probability: torch.Tensor | None = None  # H x W float32 in [0, 1]
    entropy: torch.Tensor | None = None  # H x W float32 in [0, 1]: entropy / ln(number of values)
    probabilities: torch.Tensor | None = None  # K x H x W float32 (the renormalised / 'other' distribution, K classes)

    def label_array(self) -> np.ndarray:
        """The label as written: uint8 (uint16 for more than 255 classes)."""
        return self.label.to("cpu").numpy().astype(label_dtype(self.num_classes))


def pixel_outputs(image: ImageProbabilities | torch.Tensor, space: OutputSpace, confidence: bool = False,
                  probabilities: bool = False) -> PixelOutputs:
    """Labels (and, on request, confidence maps and the class probabilities) of one image.

    Labels alone are computed from the probabilities before their resize to the image's size, resizing only the
    classes that can win (:func:`~mseg_semantic.evaluation.inference.resized_argmax`): 'other' is 1 - the sum of
    the classes, linear, so it is resized like them. Confidence and probabilities need every class at full size.
    """
    if isinstance(image, torch.Tensor):
        image = ImageProbabilities(image, tuple(image.shape[-2:]))
    if not (confidence or probabilities):
        index = image.labels(other=space.has_other)
        return PixelOutputs(torch.where(index == space.num_classes, torch.full_like(index, IGNORE_INDEX), index), space.num_classes)
    dist = distribution(image.full(), space)
    top, index = dist.max(0)
    label = torch.where(index == space.num_classes, torch.full_like(index, IGNORE_INDEX), index)  # 'other' -> 255
    out = PixelOutputs(label, space.num_classes)
    if confidence:
        logs = torch.where(dist > 0, dist.log(), torch.zeros_like(dist))
        out.max_probability = top
        out.entropy = (-(dist * logs).sum(0) / math.log(max(dist.shape[0], 2))).clamp_(0.0, 1.0)
    if probabilities:
        out.probabilities = dist[: space.num_classes]
    return out


def to_uint16(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] -> 0..65535 (rounded to nearest), as numpy."""
    if isinstance(values, torch.Tensor):
        values = values.to("cpu").numpy()
    return np.rint(np.clip(values, 0.0, 1.0) * UINT16_SCALE).astype(np.uint16)


def write_confidence(stem_path: str | os.PathLike, outputs: PixelOutputs) -> list[Path]:
    """``<stem>_maxprob.png`` and ``<stem>_entropy.png`` (16-bit)."""
    stem = Path(stem_path)
    return [write_png(stem.with_name(stem.name + "_maxprob.png"), to_uint16(outputs.max_probability)),
            write_png(stem.with_name(stem.name + "_entropy.png"), to_uint16(outputs.entropy))]


def write_probabilities(stem_path: str | os.PathLike, outputs: PixelOutputs, class_names: Sequence[str]) -> Path:
    """``<stem>_probs.npz``: uint16 K x H x W probabilities, the class names and the scale, compressed."""
    stem = Path(stem_path)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=to_uint16(outputs.probabilities), class_names=np.array(list(class_names)),
                        scale=np.array(UINT16_SCALE))
    return atomic_write_bytes(stem.with_name(stem.name + "_probs.npz"), buffer.getvalue())
