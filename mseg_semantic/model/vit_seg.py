"""Semantic segmentation on a DINOv2 backbone, with HRNet's interface; ways to train it (backbone modes, layer decay).

``DinoV2Segmenter(x)`` -> logits N x C x H x W at the input size (fp32, bilinear, ``align_corners=True``, as HRNet);
``upsample=False`` -> at ceil(H/4) x ceil(W/4); ``return_features=True`` -> ``(logits, emb)``, ``emb`` the
``embedding_dim``-channel map before ``head.classifier``. ``backbone`` is a :class:`DinoV2Backbone` whose state dict is
the official layout (under ``backbone.`` here). H and W must be multiples of 14 (a UserError names the nearest ones).

The decode head (``head.*``), and why:
- taps: the patch tokens after 4 evenly spaced blocks (2, 5, 8, 11 of 12; 5, 11, 17, 23 of 24) through the
  backbone's final LayerNorm, as DINOv2's own segmentation heads take them;
- a ViTDet-style simple pyramid (Li et al., 2022: one plain ViT feature map is enough when rescaled per level), early to
  late tap -> stride 4, 8, 16, 32 (early blocks keep more local detail, late ones more semantics). The ViT grid is at
  stride 14, which no chain of 2x deconvolutions reaches, so each tap is projected (``head.lateral.K``, 1x1 conv to
  ``width`` channels) and resized bilinearly to exactly ceil(H/s) x ceil(W/s): the levels then line up with HRNet's
  1/4 output with no final resize, cost no parameters, and the 3x3 convs that follow learn the refinement. No
  antialiasing when shrinking to 1/16 and 1/32 (not exportable to ONNX; after global attention each token already
  carries context);
- FPN-lite fusion: a top-down pass (each level plus the upsampled coarser one), a 3x3 conv + BN + ReLU per level
  (``head.smooth.K``), all levels upsampled to 1/4 and concatenated -> ``head.conv`` (1x1) + ``head.bn`` + ReLU = the
  pixel embedding -> ``head.classifier`` (1x1), the names HRNet's head has, which ``load_weights(reinit_head=True)``,
  the classifier-key checks and the head-shape checks rely on. This is a light UPerNet without its pooling module:
  the ViT's global attention already supplies image-level context.

Backbone modes (:func:`set_backbone_mode`): ``finetune`` trains everything; ``frozen`` trains the head only and runs the
backbone under ``torch.no_grad`` (no activations kept for it); ``adapters`` freezes the backbone's own weights and trains
LoRA adapters on every block's qkv (:func:`mseg_semantic.model.dinov2.insert_lora`) plus the head. The ViT has no
BatchNorm, dropout or drop path, so ``model.train()`` leaves a frozen backbone computing exactly what it computes in
eval mode: nothing needs switching to eval.

ONNX: ``torch.onnx.export(..., dynamo=True)`` at a fixed input size matches eager. A dynamic-size export does not
work: the positional-embedding resampling is specialised to the export size (the graph then fails at other sizes),
and the TorchScript-based exporter (``dynamo=False``) cannot trace the scale-factor form of that resampling.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mseg_semantic.model.dinov2 import (
    ADAPTER_KEY,
    DINOV2_SPECS,
    DinoV2Backbone,
    adapter_parameters,
    build_backbone,
    evenly_spaced_blocks,
    insert_lora,
)
from mseg_semantic.model.hrnet import BN_MOMENTUM, init_weights, upsample_logits

__all__ = [
    "BACKBONE_MODES",
    "DinoV2Segmenter",
    "PyramidHead",
    "build_dinov2_segmenter",
    "deployable_state_dict",
    "layer_decay_param_groups",
    "set_backbone_mode",
]

BACKBONE_MODES = ("finetune", "frozen", "adapters")
PYRAMID_STRIDES = (4, 8, 16, 32)
# name -> (pyramid width, embedding width)
HEAD_WIDTHS = {"dinov2_tiny_test": (16, 24)}
DEFAULT_HEAD_WIDTHS = (256, 256)
NO_WEIGHT_DECAY_TOKENS = ("cls_token", "pos_embed", "register_tokens", "mask_token")


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize that keeps the input's dtype (autocast runs it in fp32), as HRNet's fusion does."""
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


class PyramidHead(nn.Module):
    """Four ViT taps -> pyramid at strides 4/8/16/32 -> top-down fusion -> 1/4-resolution embedding -> classifier."""

    def __init__(self, in_dim: int, width: int, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        levels = len(PYRAMID_STRIDES)
        self.lateral = nn.ModuleList(nn.Conv2d(in_dim, width, kernel_size=1) for _ in range(levels))
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width) for _ in range(levels))
        self.conv = nn.Conv2d(levels * width, embedding_dim, kernel_size=1)
        self.bn = nn.BatchNorm2d(embedding_dim, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(embedding_dim, num_classes, kernel_size=1)

    def forward(self, taps: list[torch.Tensor], image_size) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = image_size
        sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in PYRAMID_STRIDES]
        levels = [_resize(lateral(tap), size) for lateral, tap, size in zip(self.lateral, taps, sizes)]
        for k in range(len(levels) - 2, -1, -1):  # top-down: coarse semantics into finer levels
            levels[k] = levels[k] + _resize(levels[k + 1], sizes[k])
        finest = sizes[0]
        smoothed = [smooth(level) for smooth, level in zip(self.smooth, levels)]
        fused = torch.cat([smoothed[0]] + [_resize(s, finest) for s in smoothed[1:]], dim=1)
        emb = self.relu(self.bn(self.conv(fused)))
        return self.classifier(emb), emb


class DinoV2Segmenter(nn.Module):
    """A DINOv2 backbone (``backbone``) with :class:`PyramidHead` (``head``); HRNet's forward interface."""

    def __init__(self, backbone: DinoV2Backbone, num_classes: int, name: str = "", taps: list[int] | None = None,
                 head_width: int = 256, embedding_dim: int = 256) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.name = name
        self.spec = backbone.spec
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.taps = list(taps) if taps is not None else evenly_spaced_blocks(backbone.n_blocks, len(PYRAMID_STRIDES))
        self.backbone_mode = "finetune"
        self.backbone = backbone
        # only masked-image pretraining reads the mask token: it gets no gradient here, and DDP (without
        # find_unused_parameters) fails on a trainable parameter that gets none
        backbone.mask_token.requires_grad_(False)
        self.head = PyramidHead(backbone.embed_dim, head_width, embedding_dim, num_classes)
        init_weights(self.head)

    def forward_backbone(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four taps, N x D x H/14 x W/14 each (no graph in frozen mode)."""
        frozen = self.backbone_mode == "frozen" and torch.is_grad_enabled()
        with torch.no_grad() if frozen else nullcontext():
            return list(self.backbone.get_intermediate_layers(x, n=self.taps, reshape=True, norm=True))

    def forward(self, x: torch.Tensor, return_features: bool = False, upsample: bool = True):
        """Logits at the input size (``upsample=False``: at ceil(H/4) x ceil(W/4), for a loss that upsamples them)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got shape {tuple(x.shape)}")
        logits, emb = self.head(self.forward_backbone(x), x.shape[-2:])
        if upsample:
            logits = upsample_logits(logits, x.shape[-2:])
        if return_features:
            return logits, emb
        return logits


def build_dinov2_segmenter(name: str, num_classes: int) -> DinoV2Segmenter:
    """The backbone ``name`` (randomly initialised; official weights: ``load_weights``) with the pyramid head."""
    width, embedding = HEAD_WIDTHS.get(name, DEFAULT_HEAD_WIDTHS)
    return DinoV2Segmenter(build_backbone(name), num_classes, name=name, head_width=width, embedding_dim=embedding)


def _backbone_of(model: nn.Module) -> DinoV2Backbone:
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, DinoV2Backbone):
        raise TypeError(f"{type(model).__name__} ({getattr(model, 'name', '')!r}) has no DINOv2 backbone: backbone modes "
                        f"and layer decay apply to the dinov2_* models ({', '.join(n for n in DINOV2_SPECS)})")
    return backbone


def set_backbone_mode(model: nn.Module, mode: str, lora_rank: int = 8, lora_alpha: float | None = None) -> list[nn.Parameter]:
    """Make ``model`` (a :class:`DinoV2Segmenter`, unwrapped) train in ``mode``; returns the trainable parameters.

    ``finetune``: every parameter trains (but ``backbone.mask_token``, which segmentation never reads). ``frozen``: the backbone's do not (the head's do). ``adapters``: LoRA of rank
    ``lora_rank`` (scale ``lora_alpha / lora_rank``, default 1) is inserted on every block's qkv if not already there;
    the adapters and the head train, the backbone's own weights do not. Once adapters are inserted the model cannot
    go back to another mode (build a new one). Call it before building the optimizer (and before DDP, which fixes the
    set of parameters that need gradients), after or before loading weights: both orders give the same model.
    """
    if mode not in BACKBONE_MODES:
        raise ValueError(f"unknown backbone mode {mode!r}; valid modes: {', '.join(BACKBONE_MODES)}")
    backbone = _backbone_of(model)
    has_adapters = bool(adapter_parameters(backbone))
    if has_adapters and mode != "adapters":
        raise ValueError(f"the backbone has LoRA adapters already; mode {mode!r} needs a model built without them")
    if mode == "adapters":
        insert_lora(backbone, lora_rank, lora_alpha)
    for name, param in backbone.named_parameters():
        param.requires_grad_((mode == "finetune" and name != "mask_token") or ADAPTER_KEY in "." + name)
    for param in model.head.parameters():
        param.requires_grad_(True)
    model.backbone_mode = mode
    return [p for p in model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class _Group:
    layer: int
    decay: bool


def _layer_of(name: str, depth: int) -> int:
    """0: patch embedding and tokens; i+1: block i (its adapters included); depth+1: final norm and the head."""
    if name.startswith("backbone."):
        rest = name[len("backbone."):]
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
        if rest.startswith(("patch_embed.",) + NO_WEIGHT_DECAY_TOKENS):
            return 0
    return depth + 1


def _decays(name: str, param: torch.Tensor) -> bool:
    """No weight decay on norms, biases, LayerScale gammas, BN (all 1-d) and the learned tokens."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim > 1 and leaf not in NO_WEIGHT_DECAY_TOKENS


def layer_decay_param_groups(model: nn.Module, base_lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """Optimizer param groups with BEiT/timm layer-wise learning-rate decay, trainable parameters only.

    Layer ids: patch embedding, ``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token`` = 0; block i = i+1;
    the backbone's final norm and the head = depth+1 (= L). A parameter of layer l gets ``lr_scale = layer_decay **
    (L - l)`` and ``lr = base_lr * lr_scale``; ``weight_decay`` applies to matrices and conv kernels, not to norms,
    biases, tokens or LayerScale gammas. Each group also names its ``layer``. ``layer_decay=1`` gives one scale.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depth = _backbone_of(model).n_blocks
    groups: dict[_Group, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = _Group(_layer_of(name, depth), _decays(name, param))
        if key not in groups:
            scale = layer_decay ** (depth + 1 - key.layer)
            groups[key] = {"params": [], "param_names": [], "lr": base_lr * scale, "lr_scale": scale,
                           "weight_decay": weight_decay if key.decay else 0.0, "layer": key.layer}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda g: (g.layer, not g.decay))]


@torch.no_grad()
def deployable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every LoRA adapter folded into its ``qkv.weight`` (as :func:`merge_lora` folds it)
    and the adapter keys left out: what a final-weights file of an adapters run holds, so that the tools build the
    plain model. ``model`` keeps its adapters (training may go on); a model without adapters gives its state dict."""
    state = model.state_dict()
    for name, module in model.named_modules():
        lora = module._modules.get("lora") if name.endswith("attn") else None
        if lora is None:
            continue
        weight = state[f"{name}.qkv.weight"]
        state[f"{name}.qkv.weight"] = weight + (lora.up @ lora.down).to(weight.dtype) * lora.scale
        del state[f"{name}.lora.down"], state[f"{name}.lora.up"]
    return state
