"""How batches of windows go through the model at inference time, faster than a plain ``model(x)``.

- :func:`fold_batchnorm`: every BatchNorm that directly follows a convolution (HRNet's ``convN``/``bnN`` pairs
  and ``Conv2d, BatchNorm2d`` inside ``nn.Sequential``) is folded into that convolution's weight and bias, so an
  eval-mode forward runs one kernel instead of two. Equal to the unfolded model up to float rounding (tested).
- :func:`cast_conv_weights`: bf16 autocast casts every convolution weight on every pass; casting them once
  beforehand gives bit-identical results without those casts (BatchNorm, when not folded, stays fp32).
- :func:`low_res_logits`: HRNet's (and the DINOv2 segmenter's) logits before the final upsampling to the input size
  (``model(x, upsample=False)``), so the upsampling, softmax and projection can be done together (and only for the
  classes needed; see ``inference.py``).

A DINOv2 segmenter has BatchNorm in its head only (``head.smooth.K`` Sequentials and ``head.conv``/``head.bn``, both
folded); its transformer has LayerNorm, which folding leaves alone, and its patch embedding is a convolution that
the bf16 cast and channels_last treat as any other.
- :class:`FixedBatchRunner`: runs a function on batches of a fixed shape (a short last batch is padded with
  zeros and the padding's outputs dropped), optionally replayed as a CUDA graph, which removes the host's
  per-kernel launch cost for small per-window batches.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
import torch.nn as nn

from mseg_semantic.model.hrnet import HRNet
from mseg_semantic.model.vit_seg import DinoV2Segmenter

__all__ = ["FixedBatchRunner", "cast_conv_weights", "fold_batchnorm", "input_multiple", "low_res_logits"]

log = logging.getLogger(__name__)


def _fold_into(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """conv(x) then bn(.) in eval mode == conv'(x) with w' = w * s, b' = (b - mean) * s + beta, s = gamma / std."""
    with torch.no_grad():
        # in float64: the folded weights then carry only the final fp32 rounding
        std = (bn.running_var.double() + bn.eps).sqrt()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
        scale = gamma / std
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        conv.weight.copy_(weight.to(conv.weight.dtype))
        folded_bias = ((bias - bn.running_mean.double()) * scale + beta).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(folded_bias, requires_grad=False)
        else:
            conv.bias.copy_(folded_bias)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, each BatchNorm that directly follows a convolution; returns how many were folded.

    The model must be in eval mode and stay there (a folded model has no batch statistics to train). Pairs are
    found by structure: ``nn.Sequential`` children ``Conv2d, BatchNorm`` and sibling attributes ``convX``/``bnX``
    (HRNet's blocks, stem and head: each calls ``bnX(convX(x))`` directly). A BatchNorm in another position is
    left as it is (correct, only slower).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (folding uses the running statistics)")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (_, conv), (bn_name, bn) in zip(children, children[1:]):
                if _foldable(conv, bn):
                    _fold_into(conv, bn)
                    module._modules[bn_name] = nn.Identity()
                    folded += 1
            continue
        for name, conv in list(module._modules.items()):
            if not name.startswith("conv"):
                continue
            bn_name = "bn" + name[len("conv"):]
            bn = module._modules.get(bn_name)
            if bn is not None and _foldable(conv, bn):
                _fold_into(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def cast_conv_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Convolution weights and biases to ``dtype`` once (for a model run under autocast to ``dtype``)."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.to(dtype)
            count += 1
    return count


def low_res_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits before the final upsampling to ``x``'s size: an HRNet's or a DINOv2 segmenter's 1/4-resolution
    head output (``model(x, upsample=False)``, so that the caller can upsample only the classes it needs). Any other
    model: its output as it is (upsampled by the caller when smaller than ``x``)."""
    if isinstance(model, (HRNet, DinoV2Segmenter)):
        return model(x, upsample=False)
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def input_multiple(model: nn.Module) -> int | None:
    """The size every input side must be a multiple of (a ViT's patch size), or None when any size runs."""
    return model.spec.patch_size if isinstance(model, DinoV2Segmenter) else None


def prepared_copy(model: nn.Module, fold: bool, cast_to: torch.dtype | None, channels_last: bool, inplace: bool) -> nn.Module:
    """The module inference runs: folded / cast / NHWC as asked, on a copy unless ``inplace`` (the caller's model,
    e.g. the one being trained, is left untouched)."""
    changes = (fold and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())) or cast_to is not None or channels_last
    if not changes:
        return model
    module = model if inplace else copy.deepcopy(model)
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    if fold:
        fold_batchnorm(module)
    if cast_to is not None:
        cast_conv_weights(module, cast_to)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


class FixedBatchRunner:
    """``fn`` on batches of exactly ``batch`` items along dim 0: shorter inputs are padded with zeros and the
    padding's outputs dropped. With ``cuda_graph`` the first call of each input shape captures ``fn`` in a CUDA
    graph and later calls replay it (input copied into a static buffer; the output is a view of a static buffer,
    valid until the next call). Padding cannot change the other items' outputs as long as ``fn`` treats items
    independently (eval-mode networks do).
    """

    MAX_GRAPHS = 4  # distinct window shapes (e.g. two image orientations); more fall back to eager

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], batch: int, cuda_graph: bool = False, warmup: int = 2):
        self.fn = fn
        self.batch = int(batch)
        self.cuda_graph = cuda_graph
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.replays = 0

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n > self.batch:
            raise ValueError(f"a batch of {n} items does not fit the fixed batch of {self.batch}")
        if n == self.batch:
            return x
        return torch.cat([x, x.new_zeros((self.batch - n, *x.shape[1:]))])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        padded = self.pad(x)
        if not self.cuda_graph:
            return self.fn(padded)[:n]
        key = (tuple(padded.shape), padded.dtype, str(padded.device))
        if key not in self._graphs:
            if len(self._graphs) >= self.MAX_GRAPHS:
                return self.fn(padded)[:n]
            self._graphs[key] = self._capture(padded)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(padded)
        graph.replay()
        self.replays += 1
        return static_out[:n]

    def _capture(self, example: torch.Tensor):
        static_in = example.clone()
        stream = torch.cuda.Stream(device=example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):  # warm-up outside the graph: cuDNN autotuning, lazy initialisation
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        log.info(f"captured a CUDA graph of the window batch {tuple(example.shape)}")
        return graph, static_in, static_out
