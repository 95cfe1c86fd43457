"""MSeg's post-processing in MSeg's order: the reference that the reordered inference (``inference.py``) is tested
and benchmarked against. Not used by the tools.

Per window: upsample the logits of the window and of its mirror to full resolution (N x C x H x W), softmax over
the classes, project, mirror the mirrored pass's probabilities back and average the two; sum each window into a
K x H x W canvas, divide by the number of windows covering each pixel, cut the padding off. The model runs as in
:func:`~mseg_semantic.evaluation.inference.predict_image_probabilities` (same windows, same passes).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mseg_semantic.evaluation.engine import FixedBatchRunner
from mseg_semantic.evaluation.inference import (
    ImageProbabilities,
    InferenceModel,
    InferenceSettings,
    _Canvas,
    _chunks,
    _coverage,
    _module_modes,
    _pad,
    _prepare,
    _restore_modes,
    _to_chw_tensor,
    _windows,
    class_probabilities,
    resized_hw,
)
from mseg_semantic.taxonomy import Projection

__all__ = ["mseg_order_image_probabilities", "mseg_order_window_probabilities"]


def mseg_order_window_probabilities(logits: torch.Tensor, windows: int, size: tuple[int, int], projection: Projection | None,
                                    subset: str, flip: bool) -> torch.Tensor:
    """As :func:`~mseg_semantic.evaluation.inference.window_probabilities_nhwc` in MSeg's order: ``windows`` x K x H x W.
    The upsampling is ``F.interpolate``'s, as before the exact x4 arithmetic (the subset paths: as they are)."""
    if projection is not None and subset != "full" and len(projection.used_inputs) < projection.num_inputs:
        probs = class_probabilities(logits, size, projection, subset)
    else:
        if projection is not None and projection.num_inputs != logits.shape[1]:
            raise ValueError(f"the projection takes {projection.num_inputs} classes but the model outputs {logits.shape[1]}")
        upsampled = logits.float()
        if tuple(upsampled.shape[-2:]) != tuple(size):
            upsampled = F.interpolate(upsampled, size=size, mode="bilinear", align_corners=True)
        probs = torch.softmax(upsampled, dim=1)
        probs = projection(probs) if projection is not None else probs
    if flip:
        probs = probs[:windows].add_(probs[windows:].flip(-1)).mul_(0.5)
    return probs


@torch.inference_mode()
def mseg_order_image_probabilities(engine: InferenceModel, images: Sequence[np.ndarray | torch.Tensor], settings: InferenceSettings,
                                   projection: Projection | None = None) -> list[ImageProbabilities]:
    """:func:`~mseg_semantic.evaluation.inference.predict_image_probabilities` in MSeg's order (module docstring)."""
    engine.check(settings)
    settings = replace(settings, precision=engine.settings.precision, channels_last=engine.settings.channels_last,
                       window_batch=settings.window_batch or engine.settings.window_batch)
    device = engine.device
    tensors = [_to_chw_tensor(im, device) for im in images]
    totals: list[ImageProbabilities | None] = [None] * len(tensors)
    modes = _module_modes(engine.module)
    engine.module.eval()

    def window_probabilities(crops: torch.Tensor) -> torch.Tensor:
        logits = engine.window_logits(crops, settings.flip)
        return mseg_order_window_probabilities(logits, crops.shape[0], tuple(crops.shape[-2:]), projection, settings.subset, settings.flip)

    runner = None
    if engine.fixed_batches:  # kept beside the engine's own runners: a CUDA graph is captured once per shape
        projection_key = None if projection is None else (projection.num_inputs, projection.members)
        key = ("mseg_order", projection_key, settings.flip, settings.subset, settings.windows_per_pass)
        if key not in engine._runners:
            engine._runners[key] = FixedBatchRunner(window_probabilities, settings.windows_per_pass, cuda_graph=engine.settings.cuda_graphs)
        runner = engine._runners[key]
    try:
        for scale in settings.scales:
            canvases = []
            for index, image in enumerate(tensors):
                inner = resized_hw(*image.shape[1:], settings.base_size, scale)
                x = _prepare(image, inner)
                if settings.mode == "whole":
                    d = settings.size_divisor
                    target = (math.ceil(inner[0] / d) * d, math.ceil(inner[1] / d) * d)
                else:
                    target = (settings.crop_h, settings.crop_w)
                padded, top, left = _pad(x, *target)
                canvases.append(_Canvas(index, inner, top, left, padded, _windows(*padded.shape[1:], settings)))
            for chunk in _chunks(canvases, settings.windows_per_pass):
                crops = torch.stack([canvases[ci].padded[:, y : y + h, x : x + w] for ci, y, x, h, w in chunk])
                probs = runner(crops) if runner is not None else window_probabilities(crops)
                for (ci, y, x, h, w), p in zip(chunk, probs):
                    canvas = canvases[ci]
                    if canvas.probs is None:
                        canvas.probs = torch.zeros((p.shape[0], *canvas.padded.shape[1:]), device=device)
                    canvas.probs[:, y : y + h, x : x + w] += p
            for canvas in canvases:
                probs = canvas.probs.div_(_coverage(canvas, device))
                ih, iw = canvas.inner_hw
                probs = probs[:, canvas.pad_top : canvas.pad_top + ih, canvas.pad_left : canvas.pad_left + iw].contiguous()
                scaled = ImageProbabilities(probs, tuple(tensors[canvas.image_index].shape[1:]))
                i = canvas.image_index
                if len(settings.scales) == 1:
                    totals[i] = scaled
                elif totals[i] is None:
                    totals[i] = ImageProbabilities(scaled.full(), scaled.size)
                else:
                    totals[i].values.add_(scaled.full())
                canvas.probs = None
    finally:
        _restore_modes(modes)
    if len(settings.scales) > 1:
        for total in totals:
            total.values.div_(len(settings.scales))
    return totals  # type: ignore[return-value]
